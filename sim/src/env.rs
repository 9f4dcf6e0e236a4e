//! The simulated NodeEnv: turmoil's clock and network, every RNG from the run's seed, LMDB in
//! a per-host directory on tmpfs with no fsync and an inline writer (no thread); and
//! [`SimCluster`], which lays out a cluster's files and adds its nodes as turmoil hosts that
//! survive crashes and restarts.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use natter_node::config::{Config, NodeAddress, RaftTimings, TlsFiles};
use natter_node::env::{Clock, Entropy, NetworkEnv, NodeEnv};
use natter_node::NodeHandle;
use natter_raft::types::Runtime;
use natter_raft::{Durability, WriterMode};
use rand::{RngCore, SeedableRng};

use crate::faults::{NodeFaults, SimFaults, SkewedClock};
use crate::net::TurmoilUdp;
pub use crate::topology::{node_name, PEER_PORT, SIM_EPOCH_MS};

/// turmoil's clock: tokio's paused clock for monotonic time, the simulation's elapsed time for
/// wall time.
#[derive(Debug, Default)]
pub struct SimClock;

impl Clock for SimClock {
    fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    fn wall_ms(&self) -> u64 {
        SIM_EPOCH_MS + turmoil::sim_elapsed().unwrap_or(Duration::ZERO).as_millis() as u64
    }
}

/// turmoil's network.
#[derive(Debug, Default)]
pub struct SimNetwork;

impl NetworkEnv for SimNetwork {
    fn runtime(&self) -> Arc<dyn quinn::Runtime> {
        // tokio's timers under turmoil run on the simulated clock.
        Arc::new(quinn::TokioRuntime)
    }

    fn bind_udp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Arc<dyn quinn::AsyncUdpSocket>>> {
        // turmoil binds only unspecified or loopback addresses; the host's own address is
        // implied by the host the socket is bound on.
        let addr = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
        Box::pin(async move {
            let socket: Arc<dyn quinn::AsyncUdpSocket> = TurmoilUdp::bind(addr).await?;
            Ok(socket)
        })
    }

    fn endpoint_config(&self, entropy: &Entropy) -> quinn::EndpointConfig {
        let mut reset_key = [0u8; 64];
        entropy.rng("quinn-reset-key").fill_bytes(&mut reset_key);
        let mut config =
            quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key)));
        let mut seed = [0u8; 32];
        entropy.rng("quinn-endpoint").fill_bytes(&mut seed);
        config.rng_seed(Some(seed));
        config
    }
}

/// Endpoints for a simulated `natter-client`: a turmoil UDP socket on an ephemeral port of the
/// client's host and a [`quinn::EndpointConfig`] seeded from `seed` and the number of endpoints
/// made before, so every reconnect gets fresh, reproducible connection ids and reset keys.
pub fn client_endpoints(seed: u64) -> natter_client::EndpointFactory {
    let made = Arc::new(AtomicU64::new(0));
    natter_client::EndpointFactory::new(move || {
        let number = made.fetch_add(1, Ordering::SeqCst);
        let entropy = Entropy::from_seed(seed.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(number));
        let config = SimNetwork.endpoint_config(&entropy);
        let bind = SimNetwork.bind_udp(SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0));
        Box::pin(async move {
            let socket = bind.await?;
            quinn::Endpoint::new_with_abstract_socket(config, None, socket, SimNetwork.runtime())
        })
    })
}

/// A simulated node's environment.
pub fn sim_env(seed: u64, data_dir: PathBuf) -> NodeEnv {
    sim_env_with_faults(seed, data_dir, None)
}

/// A simulated node's environment whose clock and storage follow the nemesis's `faults` for
/// this node (see [`crate::faults`]), or no faults.
pub fn sim_env_with_faults(seed: u64, data_dir: PathBuf, faults: Option<Arc<NodeFaults>>) -> NodeEnv {
    let clock: Arc<dyn Clock> = match &faults {
        Some(faults) => Arc::new(SkewedClock::new(faults.clone())),
        None => Arc::new(SimClock),
    };
    let storage_faults = faults.map(|faults| faults as Arc<dyn natter_raft::StorageFaults>);
    NodeEnv {
        clock,
        entropy: Arc::new(Entropy::from_seed(seed)),
        network: Arc::new(SimNetwork),
        writer: WriterMode::Inline,
        durability: Durability::NoSync,
        data_dir,
        http: false,
        storage_faults,
    }
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// A fresh scratch directory for one run: on tmpfs where there is one (DESIGN §8), unique per
/// process and run so parallel tests never share LMDB files.
pub fn scratch_dir(seed: u64) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    base.join(format!("natter-sim-{}-{seed}-{run}", std::process::id()))
}

/// A simulated cluster's layout: its scratch directory (certificates, one data directory per
/// node), node ids and shards. [`SimCluster::add_hosts`] makes each node a turmoil host.
#[derive(Debug, Clone)]
pub struct SimCluster {
    /// Seed of the run.
    pub seed: u64,
    /// Node ids, 1..=N.
    pub ids: Vec<u64>,
    /// Shards.
    pub shards: u32,
    /// The scratch directory; [`SimCluster::remove`] deletes it.
    pub dir: PathBuf,
    /// The JWT secret nodes verify client tokens with; `None` refuses clients.
    pub jwt_secret: Option<String>,
    /// The nemesis's hooks into nodes' clocks and storage; `None`: neither is faulted.
    pub faults: Option<Arc<SimFaults>>,
}

/// One start of a node host: its first boot, or a restart after a crash or bounce.
pub struct NodeStart {
    /// The node.
    pub id: u64,
    /// 0 for the first boot, then one more per restart.
    pub incarnation: u64,
    /// The running node; dropping it (as a crash does) stops nothing by itself, the host's
    /// runtime going away does.
    pub node: NodeHandle,
}

impl SimCluster {
    /// Lays out `nodes` nodes with `shards` shards: a scratch directory with the cluster's CA
    /// and node certificates, drawn from `seed`.
    pub fn create(seed: u64, nodes: u64, shards: u32, jwt_secret: Option<String>) -> anyhow::Result<Self> {
        let dir = scratch_dir(seed);
        let ids: Vec<u64> = (1..=nodes).collect();
        natter_node::tls::write_cluster_certs(&dir.join("tls"), &ids, &mut rand::rngs::StdRng::seed_from_u64(seed))?;
        Ok(Self { seed, ids, shards, dir, jwt_secret, faults: None })
    }

    /// Nodes built from now on follow `faults` (clock skew, storage faults).
    pub fn with_faults(mut self, faults: Option<Arc<SimFaults>>) -> Self {
        self.faults = faults;
        self
    }

    /// The cluster CA certificate (PEM), which clients trust.
    pub fn ca_pem(&self) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join("tls/ca.pem"))
    }

    /// Seed of node `id`'s host in its `incarnation`. A restart draws new seeds (election
    /// timeouts, connection ids) as a restarted process would; incarnation 0 keeps the seed
    /// the smoke run has always used.
    pub fn host_seed(&self, id: u64, incarnation: u64) -> u64 {
        self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(id).wrapping_add(incarnation << 32)
    }

    /// Node `id`'s configuration. Must be called inside the simulation (it resolves host
    /// names).
    pub fn node_config(&self, id: u64) -> Config {
        let nodes = self
            .ids
            .iter()
            .map(|&other| NodeAddress {
                id: other,
                peer_addr: SocketAddr::new(turmoil::lookup(node_name(other)), PEER_PORT),
                http_addr: "127.0.0.1:0".parse().expect("valid"),
            })
            .collect();
        Config {
            node_id: id,
            data_dir: self.dir.join(node_name(id)),
            nodes,
            shards: self.shards,
            tls: TlsFiles {
                ca_cert: self.dir.join("tls/ca.pem"),
                cert: self.dir.join(format!("tls/node-{id}.pem")),
                key: self.dir.join(format!("tls/node-{id}.key")),
            },
            raft: RaftTimings::default(),
            rate_limits: natter_node::rate::RateLimits::default(),
            proposal_timeout_ms: 10_000,
            rpc_timeout_ms: 2_000,
            jwt_secret: self.jwt_secret.clone(),
        }
    }

    /// Adds every node as a turmoil host named [`node_name`]: each start (first boot, and each
    /// restart after `sim.crash` + `sim.bounce` or a plain `sim.bounce`) runs the real
    /// `run_node` on the node's data directory inside a seed scope, then `serve`, which must
    /// keep the node (and so the host) running.
    ///
    /// Crashes are safe: turmoil drops the host's runtime and with it every task of the node,
    /// so the node's LMDB `Env` is closed before the restart opens it again (heed refuses a
    /// second open in one process). Committed transactions survive, as after a process crash.
    pub fn add_hosts<F, Fut>(&self, sim: &mut turmoil::Sim<'_>, serve: F)
    where
        F: Fn(NodeStart) -> Fut + Clone + 'static,
        Fut: Future<Output = anyhow::Result<()>> + 'static,
    {
        for &id in &self.ids {
            let (cluster, serve) = (self.clone(), serve.clone());
            let starts = Arc::new(AtomicU64::new(0));
            sim.host(node_name(id), move || {
                let (cluster, serve) = (cluster.clone(), serve.clone());
                let incarnation = starts.fetch_add(1, Ordering::SeqCst);
                let host_seed = cluster.host_seed(id, incarnation);
                async move {
                    let skew = cluster.faults.clone();
                    let result = Runtime::scope(host_seed, async move {
                        let config = cluster.node_config(id);
                        let faults = cluster.faults.as_ref().map(|faults| faults.node(id));
                        let env = sim_env_with_faults(host_seed, config.data_dir.clone(), faults);
                        let node = natter_node::run_node(config, env).await?;
                        serve(NodeStart { id, incarnation, node }).await
                    });
                    // The node's clock runs at its skewed rate for as long as the node runs; a
                    // crash drops both.
                    let result = match skew {
                        Some(faults) => {
                            tokio::select! {
                                biased;
                                result = result => result,
                                never = crate::faults::drive_monotonic_skew(faults, id) => match never {},
                            }
                        }
                        None => result.await,
                    };
                    result.map_err(|error| error.to_string().into())
                }
            });
        }
    }

    /// Deletes the scratch directory.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
