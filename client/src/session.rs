//! One QUIC session to one node: TLS against the cluster CA, ALPN `natter/1`, one
//! bidirectional stream, `hello` → `welcome`. Writes go through a small writer task so the
//! client's loop never blocks on flow control while the server is blocked writing to it.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use natter_proto::codec::{encode_frame, FrameDecoder};
use natter_proto::{ClientFrame, ConversationSummary, ErrorCode, ServerFrame, UserId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::error::ClientError;
use crate::ALPN;

/// Bytes read from the stream at a time.
pub(crate) const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Encoded frames waiting for the writer task.
const WRITE_QUEUE_BATCHES_MAX: usize = 64;
/// How long closing waits for the last frames to be acknowledged by the server.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Keep-alive interval; with the idle timeout it bounds how long a dead server goes unnoticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A connection with no traffic (not even keep-alives) for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The QUIC client configuration every session uses: TLS 1.3 trusting only the certificates
/// in `ca_pem`, ALPN `natter/1`, keep-alives every second and a 5 s idle timeout. Public so
/// tools that hold many bare sessions (the load generator) connect exactly as clients do.
pub fn quic_config(ca_pem: &[u8]) -> Result<quinn::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem) {
        let certificate =
            certificate.map_err(|error| ClientError::Config(format!("CA is not PEM certificates: {error}")))?;
        roots.add(certificate).map_err(|error| ClientError::Config(format!("CA certificate refused: {error}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Config("CA file holds no certificate, expected the cluster's ca.pem".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| ClientError::Config(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|error| ClientError::Config(error.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout fits")));
    transport.max_concurrent_uni_streams(0u32.into());
    // The server never opens a stream; quinn keeps state for every one allowed.
    transport.max_concurrent_bidi_streams(0u32.into());
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// What an [`EndpointFactory`] returns: a future of a bound client endpoint.
pub type EndpointFuture = Pin<Box<dyn Future<Output = io::Result<quinn::Endpoint>> + Send>>;

/// Makes the QUIC endpoint a session dials from, in place of a real UDP socket bound by
/// [`quinn::Endpoint::client`]. The simulator builds endpoints over its own network with
/// [`quinn::Endpoint::new_with_abstract_socket`] and a seeded [`quinn::EndpointConfig`], so
/// no real socket and no unseeded randomness reach a simulated client.
///
/// It is called once per connection attempt; each endpoint lives as long as its session.
#[derive(Clone)]
pub struct EndpointFactory(Arc<dyn Fn() -> EndpointFuture + Send + Sync>);

impl EndpointFactory {
    /// A factory calling `make` for every connection attempt.
    pub fn new(make: impl Fn() -> EndpointFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }

    /// A new endpoint.
    pub fn make(&self) -> EndpointFuture {
        (self.0)()
    }
}

impl fmt::Debug for EndpointFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointFactory(..)")
    }
}

/// Why a session could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The server answered `hello` with an error (`unauthenticated`, `rate_limited` …).
    Refused { code: ErrorCode, message: String },
    /// Connecting, TLS or the stream failed, or no answer came in time.
    Failed(String),
}

/// What `welcome` said.
#[derive(Debug, Clone)]
pub(crate) struct Welcome {
    pub(crate) user: UserId,
    pub(crate) conversations: Vec<ConversationSummary>,
}

/// An open session.
pub(crate) struct Session {
    pub(crate) node: SocketAddr,
    pub(crate) connection: quinn::Connection,
    pub(crate) recv: quinn::RecvStream,
    /// Holds any frames that arrived with `welcome`.
    pub(crate) decoder: FrameDecoder,
    pub(crate) writer: mpsc::Sender<Vec<u8>>,
    writer_task: tokio::task::JoinHandle<()>,
    endpoint: quinn::Endpoint,
}

/// Connects to `node` from an endpoint made by `endpoint` (a real UDP socket if `None`), says
/// `hello` and waits for `welcome`, all within `timeout`.
pub(crate) async fn open(
    endpoint: Option<&EndpointFactory>,
    config: quinn::ClientConfig,
    node: SocketAddr,
    server_name: String,
    hello: ClientFrame,
    timeout: Duration,
) -> Result<(Session, Welcome), OpenError> {
    match tokio::time::timeout(timeout, open_inner(endpoint, config, node, &server_name, &hello)).await {
        Ok(result) => result,
        Err(_) => Err(OpenError::Failed(format!("no welcome within {} ms", timeout.as_millis()))),
    }
}

async fn open_inner(
    endpoint: Option<&EndpointFactory>,
    config: quinn::ClientConfig,
    node: SocketAddr,
    server_name: &str,
    hello: &ClientFrame,
) -> Result<(Session, Welcome), OpenError> {
    let failed = |what: &str, error: &dyn std::fmt::Display| OpenError::Failed(format!("{what}: {error}"));
    let endpoint = match endpoint {
        Some(factory) => factory.make().await.map_err(|error| failed("cannot make an endpoint", &error))?,
        None => {
            // Loopback servers are reached from a loopback socket; others from any address.
            let bind: SocketAddr = match (node.is_ipv4(), node.ip().is_loopback()) {
                (true, true) => (Ipv4Addr::LOCALHOST, 0).into(),
                (true, false) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                (false, true) => (Ipv6Addr::LOCALHOST, 0).into(),
                (false, false) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            quinn::Endpoint::client(bind).map_err(|error| failed("cannot bind a UDP socket", &error))?
        }
    };
    let connecting =
        endpoint.connect_with(config, node, server_name).map_err(|error| failed("cannot connect", &error))?;
    let connection = connecting.await.map_err(|error| failed("connection failed", &error))?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|error| failed("cannot open a stream", &error))?;
    let mut bytes = Vec::new();
    encode_frame(hello, &mut bytes).map_err(|error| failed("cannot encode hello", &error))?;
    send.write_all(&bytes).await.map_err(|error| failed("cannot send hello", &error))?;
    let mut decoder = FrameDecoder::new();
    let first = loop {
        match decoder.next_frame::<ServerFrame>() {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(error) => return Err(failed("bad frame from the server", &error)),
        }
        match recv.read_chunk(READ_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => {
                let taken = decoder.push(&chunk.bytes);
                // The decoder holds a whole frame, so a chunk of at most 64 KiB always fits
                // once it is empty; the first frame is small.
                if taken < chunk.bytes.len() {
                    return Err(OpenError::Failed("server's first frame is over the frame limit".into()));
                }
            }
            Ok(None) => return Err(OpenError::Failed("server ended the stream before welcome".into())),
            Err(error) => return Err(failed("connection lost before welcome", &error)),
        }
    };
    let welcome = match first {
        ServerFrame::Welcome { user, conversations, .. } => Welcome { user, conversations },
        ServerFrame::Error { code, message, .. } => return Err(OpenError::Refused { code, message }),
        other => return Err(OpenError::Failed(format!("expected welcome, got {}", other.type_name()))),
    };
    let (writer, mut queue) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_BATCHES_MAX);
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = queue.recv().await {
            if send.write_all(&bytes).await.is_err() {
                return;
            }
        }
        // The client closed: let the last frames (acks) reach the server before the
        // connection is closed, which would discard them.
        if send.finish().is_ok() {
            let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
        }
    });
    let session = Session { node, connection, recv, decoder, writer, writer_task, endpoint };
    Ok((session, welcome))
}

impl Session {
    /// Ends the session: writes what is queued, then closes the connection.
    pub(crate) async fn close(self, graceful: bool) {
        let Session { connection, writer, writer_task, endpoint, .. } = self;
        drop(writer);
        if graceful {
            let _ = tokio::time::timeout(CLOSE_LINGER * 2, writer_task).await;
        } else {
            writer_task.abort();
        }
        connection.close(0u32.into(), b"client closed");
        if graceful {
            let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
        }
    }
}
