//! natter-node: the natter server.
//!
//! [`run_node`] is the one entry point: `main()` calls it with the production [`NodeEnv`], the
//! simulator with a seeded one. A node opens its LMDB store, binds its inter-node QUIC endpoint
//! (mutual TLS against the cluster CA), starts a Raft group for every shard it replicates,
//! and serves operator HTTP.
//!
//! **Architecture invariant:** node logic gets time, randomness and sockets only from
//! [`NodeEnv`], and spawns every task through [`spawn`] (openraft's seeded runtime), so a
//! simulated run is reproducible from its seed.

pub mod acks;
pub mod delivery;
pub mod edge;
pub mod env;
pub mod ops;
pub mod outbox;
pub mod peers;
pub mod presence;
pub mod shards;

// The paths tools and tests outside the node use.
pub use edge::{auth, rate};
pub use ops::config;
pub use peers::{rpc, tls, transport};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use natter_raft::types::Runtime;
use openraft::AsyncRuntime;

pub use config::Config;
pub use env::NodeEnv;
pub use shards::{Cluster, ClusterError};

/// Spawns a task through openraft's seeded runtime, so the task inherits a seed derived from
/// its parent's (a plain `tokio::spawn` would escape the seed scope).
pub fn spawn<F>(future: F) -> <Runtime as AsyncRuntime>::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    <Runtime as AsyncRuntime>::spawn(future)
}

/// A running node.
pub struct NodeHandle {
    cluster: Arc<Cluster>,
    peer_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop_http: Option<tokio::sync::oneshot::Sender<()>>,
    http_task: Option<tokio::task::JoinHandle<()>>,
    transport: Arc<peers::transport::Transport>,
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        // The client edge holds the cluster, which holds the transport, which holds the edge:
        // without this the cycle outlives a crashed node (its socket and LMDB Env with it), and
        // the node cannot start again in the same process.
        self.transport.stop_serving_clients();
    }
}

impl NodeHandle {
    /// The node's shard groups.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The bound inter-node address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The bound HTTP address, if serving HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Graceful shutdown: stop accepting HTTP, hand off leaderships, stop the groups, flush and
    /// close the store.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop_http.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.http_task.take() {
            let _ = task.await;
        }
        self.cluster.shutdown().await;
    }
}

/// Starts a node. Must run inside `Runtime::scope(seed, …)` (openraft's seeded runtime), as
/// `main()` and the simulator do.
pub async fn run_node(config: Config, env: NodeEnv) -> Result<NodeHandle, anyhow::Error> {
    config.validate()?;
    let tls = peers::tls::PeerTls::load(&config.tls)?;
    let me = config.me().clone();
    let peers: BTreeMap<_, _> =
        config.nodes.iter().filter(|node| node.id != config.node_id).map(|node| (node.id, node.peer_addr)).collect();
    let transport = peers::transport::Transport::bind(&env, me.peer_addr, &tls, peers).await?;
    let peer_addr = transport.local_addr()?;
    let serve_http = env.http;
    let tokens = match &config.jwt_secret {
        Some(secret) => Some(edge::auth::TokenKey::new(secret.as_bytes())?),
        None => {
            tracing::warn!("no jwt_secret configured: client connections will be refused");
            None
        }
    };
    let (clock, ids) = (env.clock.clone(), env.entropy.rng("conversation-ids"));
    let cluster = Cluster::start(config, env, transport.clone()).await?;
    let mut web = None;
    if let Some(tokens) = tokens {
        let edge = edge::ClientEdge::new(cluster.clone(), tokens, clock, ids);
        transport.serve_clients(Arc::new(edge::quic::EdgeHandler(edge.clone())));
        web = Some(edge::web::Web::new(edge));
    }
    let (mut http_addr, mut stop_http, mut http_task) = (None, None, None);
    if serve_http {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = ops::http::serve(me.http_addr, cluster.clone(), web, async move {
            let _ = stopped.await;
        })
        .await?;
        http_addr = Some(addr);
        stop_http = Some(stop);
        http_task = Some(task);
    }
    tracing::info!(node = cluster.config().node_id, %peer_addr, ?http_addr, "node started");
    Ok(NodeHandle { cluster, peer_addr, http_addr, stop_http, http_task, transport })
}
