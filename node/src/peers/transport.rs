//! The inter-node QUIC transport: one outbound connection per peer, every shard group's RPCs
//! multiplexed over it as short-lived streams, a deadline on every call, reconnect with
//! jittered exponential backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use natter_raft::types::NodeId;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use crate::env::{Clock, NodeEnv};
use crate::peers::rpc::{
    read_frame, read_raw, write_frame, write_raw, PeerRequest, PeerResponse, SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES,
};
use crate::peers::tls::{node_name, PeerTls, TlsError, CLIENT_ALPN, PEER_STREAMS_MAX};
use crate::spawn;

/// Deadline for establishing a connection to a peer.
/// (A peer still starting loses the first Initial packets; QUIC retransmits after about a
/// second, so a shorter deadline would abandon handshakes that were about to succeed.)
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Shortest wait before reconnecting to a peer that failed.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait before reconnecting.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Deadline for a callee to receive a whole request (a snapshot may be large).
pub const INBOUND_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No connection could be made (or we are backing off after failures).
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The deadline passed.
    #[error("call to node {node} timed out after {after:?}")]
    Timeout {
        /// The peer.
        node: NodeId,
        /// The deadline.
        after: Duration,
    },
    /// The stream failed mid-call; the request may or may not have been handled.
    #[error("call to node {node} failed: {reason}")]
    Failed {
        /// The peer.
        node: NodeId,
        /// Why.
        reason: String,
    },
}

/// Serves client sessions (ALPN `natter/1`) that arrive on the node's endpoint.
pub trait ClientHandler: Send + Sync + 'static {
    /// Takes over one client connection.
    fn serve(&self, connection: quinn::Connection) -> BoxFuture<'static, ()>;
}

/// Serves inbound RPCs.
pub trait PeerHandler: Send + Sync + 'static {
    /// Handles one request; `snapshot` holds the data of a [`PeerRequest::Snapshot`].
    fn handle(&self, request: PeerRequest, snapshot: Vec<u8>) -> BoxFuture<'static, PeerResponse>;
}

/// One peer's connection, shared by every caller. Connecting runs in its own task so that a
/// caller whose deadline passes (a 200 ms heartbeat, say) never aborts a handshake that the
/// next caller would need.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct SlotState {
    connection: Option<quinn::Connection>,
    connecting: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

/// Connection state of one peer, for metrics and the admin view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Connected.
    Connected,
    /// Not connected; backing off or never tried.
    Disconnected,
}

/// The node's QUIC endpoint for peers.
pub struct Transport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    addresses: BTreeMap<NodeId, SocketAddr>,
    slots: BTreeMap<NodeId, Slot>,
    states: Mutex<BTreeMap<NodeId, PeerState>>,
    rng: Mutex<StdRng>,
    clients: Mutex<Option<Arc<dyn ClientHandler>>>,
    clock: Arc<dyn Clock>,
}

impl Transport {
    /// Binds `listen` and prepares connections to `peers` (other nodes only).
    pub async fn bind(
        env: &NodeEnv,
        listen: SocketAddr,
        tls: &PeerTls,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> Result<Arc<Self>, TransportError> {
        let socket = env.network.bind_udp(listen).await.map_err(TransportError::Bind)?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            env.network.endpoint_config(&env.entropy),
            Some(tls.server_config()?),
            socket,
            env.network.runtime(),
        )
        .map_err(TransportError::Bind)?;
        let slots = peers.keys().map(|&id| (id, Slot::default())).collect();
        let states = peers.keys().map(|&id| (id, PeerState::Disconnected)).collect();
        Ok(Arc::new(Self {
            endpoint,
            client_config: tls.client_config()?,
            addresses: peers,
            slots,
            states: Mutex::new(states),
            rng: Mutex::new(env.entropy.rng("transport-backoff")),
            clients: Mutex::new(None),
            clock: env.clock.clone(),
        }))
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Each peer's connection state, by node id.
    pub fn peer_states(&self) -> BTreeMap<NodeId, PeerState> {
        self.states.lock().expect("states lock").clone()
    }

    fn set_state(&self, node: NodeId, state: PeerState) {
        self.states.lock().expect("states lock").insert(node, state);
    }

    async fn connection(self: &Arc<Self>, node: NodeId) -> Result<quinn::Connection, CallError> {
        let unreachable = |reason: String| CallError::Unreachable { node, reason };
        let slot = self.slots.get(&node).ok_or_else(|| unreachable("not a peer of this node".into()))?;
        loop {
            let notified = slot.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = slot.state.lock().expect("slot lock");
                if let Some(connection) = &state.connection {
                    if connection.close_reason().is_none() {
                        return Ok(connection.clone());
                    }
                    state.connection = None;
                    self.set_state(node, PeerState::Disconnected);
                }
                if !state.connecting {
                    if state.retry_at.is_some_and(|retry_at| self.clock.now() < retry_at) {
                        return Err(unreachable(format!("backing off after: {}", state.last_error)));
                    }
                    state.connecting = true;
                    let transport = self.clone();
                    spawn(async move { transport.connect(node).await });
                }
            }
            notified.await;
        }
    }

    async fn connect(self: Arc<Self>, node: NodeId) {
        let address = self.addresses[&node];
        let attempt = async {
            let connecting = self
                .endpoint
                .connect_with(self.client_config.clone(), address, &node_name(node))
                .map_err(|e| e.to_string())?;
            connecting.await.map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
        };
        let slot = &self.slots[&node];
        {
            let mut state = slot.state.lock().expect("slot lock");
            state.connecting = false;
            match result {
                Ok(connection) => {
                    state.connection = Some(connection);
                    state.failures = 0;
                    state.retry_at = None;
                    self.set_state(node, PeerState::Connected);
                }
                Err(reason) => {
                    state.failures = state.failures.saturating_add(1);
                    let exponent = state.failures.min(16) - 1;
                    let backoff = RECONNECT_BACKOFF_MIN.saturating_mul(1 << exponent).min(RECONNECT_BACKOFF_MAX);
                    let jitter: f64 = self.rng.lock().expect("rng lock").random_range(0.5..1.0);
                    state.retry_at = Some(self.clock.now() + backoff.mul_f64(jitter));
                    state.last_error = reason;
                }
            }
        }
        slot.changed.notify_waiters();
    }

    /// Sends `request` (with `snapshot` data after it, if any) to `node` and waits for the
    /// answer, at most `deadline` in all.
    pub async fn call(
        self: &Arc<Self>,
        node: NodeId,
        request: &PeerRequest,
        snapshot: Option<&[u8]>,
        deadline: Duration,
    ) -> Result<PeerResponse, CallError> {
        let exchange = async {
            let connection = self.connection(node).await?;
            let failed = |reason: String| CallError::Failed { node, reason };
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| failed(e.to_string()))?;
            write_frame(&mut send, request).await.map_err(|e| failed(e.to_string()))?;
            if let Some(data) = snapshot {
                for chunk in data.chunks(SNAPSHOT_CHUNK_BYTES) {
                    write_raw(&mut send, chunk).await.map_err(|e| failed(e.to_string()))?;
                }
            }
            send.finish().map_err(|e| failed(e.to_string()))?;
            read_frame::<PeerResponse>(&mut recv).await.map_err(|e| failed(e.to_string()))
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout { node, after: deadline }),
        }
    }

    /// Routes client connections (ALPN `natter/1`) to `handler` from now on; until this is
    /// called they are closed.
    pub fn serve_clients(&self, handler: Arc<dyn ClientHandler>) {
        *self.clients.lock().expect("clients lock") = Some(handler);
    }

    /// Stops routing client connections (drops the handler, which holds the cluster).
    pub fn stop_serving_clients(&self) {
        *self.clients.lock().expect("clients lock") = None;
    }

    /// Accepts connections until the endpoint closes: peers' RPCs go to `handler`, client
    /// sessions to the [`ClientHandler`].
    pub fn serve(self: &Arc<Self>, handler: Arc<dyn PeerHandler>) {
        let endpoint = self.endpoint.clone();
        let transport = self.clone();
        spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let handler = handler.clone();
                let transport = transport.clone();
                spawn(async move {
                    // A peer whose certificate the cluster CA did not sign fails here.
                    let connection = match incoming.await {
                        Ok(connection) => connection,
                        // A dialler that gave up mid-handshake (its peer was still starting)
                        // is routine; anything else (a bad certificate) is worth a warning.
                        Err(error @ quinn::ConnectionError::ApplicationClosed(_)) => {
                            tracing::debug!(%error, "peer abandoned its handshake");
                            return;
                        }
                        Err(quinn::ConnectionError::ConnectionClosed(close))
                            if close.error_code == quinn::TransportErrorCode::APPLICATION_ERROR =>
                        {
                            let error = quinn::ConnectionError::ConnectionClosed(close);
                            tracing::debug!(%error, "peer abandoned its handshake");
                            return;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "refused an inbound peer connection");
                            return;
                        }
                    };
                    let protocol = connection
                        .handshake_data()
                        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                        .and_then(|data| data.protocol);
                    if protocol.as_deref() == Some(CLIENT_ALPN) {
                        let clients = transport.clients.lock().expect("clients lock").clone();
                        match clients {
                            Some(clients) => clients.serve(connection).await,
                            None => connection.close(1u32.into(), b"not serving clients"),
                        }
                        return;
                    }
                    // Clients may connect without a certificate; a peer may not.
                    if connection.peer_identity().is_none() {
                        tracing::warn!(remote = %connection.remote_address(), "refused a peer connection without a certificate");
                        connection.close(2u32.into(), b"peer certificate required");
                        return;
                    }
                    // Accepted connections start with a client's one stream; a peer multiplexes
                    // every shard's RPCs over this connection.
                    connection.set_max_concurrent_bi_streams(PEER_STREAMS_MAX.into());
                    while let Ok((send, recv)) = connection.accept_bi().await {
                        let handler = handler.clone();
                        spawn(serve_stream(handler, send, recv));
                    }
                });
            }
        });
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

async fn serve_stream(handler: Arc<dyn PeerHandler>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let receive = async {
        let request: PeerRequest = read_frame(&mut recv).await?;
        let mut snapshot = Vec::new();
        if let PeerRequest::Snapshot { bytes, .. } = &request {
            if *bytes > SNAPSHOT_BYTES_MAX {
                return Err(crate::peers::rpc::FrameIoError::TooLarge {
                    length: *bytes as usize,
                    max: SNAPSHOT_BYTES_MAX as usize,
                });
            }
            while (snapshot.len() as u64) < *bytes {
                snapshot.extend_from_slice(&read_raw(&mut recv).await?);
            }
        }
        Ok((request, snapshot))
    };
    let response = match tokio::time::timeout(INBOUND_REQUEST_TIMEOUT, receive).await {
        Ok(Ok((request, snapshot))) => handler.handle(request, snapshot).await,
        Ok(Err(error)) => PeerResponse::Failed(error.to_string()),
        Err(_) => PeerResponse::Failed("request not received in time".into()),
    };
    if write_frame(&mut send, &response).await.is_ok() {
        let _ = send.finish();
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket or endpoint could not be set up.
    #[error("cannot bind peer endpoint: {0}")]
    Bind(std::io::Error),
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}
