//! The NodeEnv seam: everything that differs between a production node and a simulated one.
//!
//! Node logic gets time, randomness, sockets and storage mode from here and nowhere else:
//! production builds [`NodeEnv::production`]; the simulator builds one over turmoil's network
//! and clock with every RNG derived from the run's seed.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use natter_raft::{Durability, WriterMode};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Time as node logic sees it.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time for timeouts and latencies (tokio's clock, which the simulator drives).
    fn now(&self) -> tokio::time::Instant;
    /// Wall-clock time in milliseconds since the Unix epoch, for message timestamps.
    fn wall_ms(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    fn wall_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
    }
}

/// Seeded randomness: every consumer asks for its own RNG by label, so adding a consumer never
/// shifts another's sequence.
#[derive(Debug)]
pub struct Entropy {
    seed: u64,
    draws: Mutex<BTreeMap<String, u64>>,
}

impl Entropy {
    /// Entropy derived from `seed`.
    pub fn from_seed(seed: u64) -> Self {
        Self { seed, draws: Mutex::new(BTreeMap::new()) }
    }

    /// The root seed (printed by the simulator; production draws it from the OS once).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A fresh RNG for `label`. Each call with the same label gives the next stream for it.
    pub fn rng(&self, label: &str) -> StdRng {
        let draw = {
            let mut draws = self.draws.lock().expect("entropy lock");
            let counter = draws.entry(label.to_owned()).or_insert(0);
            *counter += 1;
            *counter
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ self.seed;
        for byte in label.bytes().chain(draw.to_be_bytes()) {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        StdRng::seed_from_u64(hash)
    }
}

/// Network access for QUIC.
pub trait NetworkEnv: Send + Sync + 'static {
    /// The quinn runtime to drive endpoints with.
    fn runtime(&self) -> Arc<dyn quinn::Runtime>;
    /// Binds a UDP socket for a QUIC endpoint.
    fn bind_udp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Arc<dyn quinn::AsyncUdpSocket>>>;
    /// Endpoint configuration (the simulator seeds connection ids and reset keys here).
    fn endpoint_config(&self, entropy: &Entropy) -> quinn::EndpointConfig;
}

/// Real UDP sockets on tokio.
#[derive(Debug, Default)]
pub struct TokioNetwork;

impl NetworkEnv for TokioNetwork {
    fn runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(quinn::TokioRuntime)
    }

    fn bind_udp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Arc<dyn quinn::AsyncUdpSocket>>> {
        Box::pin(async move {
            let socket = std::net::UdpSocket::bind(addr)?;
            quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)
        })
    }

    fn endpoint_config(&self, entropy: &Entropy) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::default();
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut entropy.rng("quinn-endpoint"), &mut seed);
        config.rng_seed(Some(seed));
        config
    }
}

/// Everything a node takes from its surroundings.
#[derive(Clone)]
pub struct NodeEnv {
    /// Clocks.
    pub clock: Arc<dyn Clock>,
    /// Randomness.
    pub entropy: Arc<Entropy>,
    /// Sockets.
    pub network: Arc<dyn NetworkEnv>,
    /// How the store runs write transactions.
    pub writer: WriterMode,
    /// Whether commits fsync.
    pub durability: Durability,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Whether to serve HTTP (the simulator runs without it).
    pub http: bool,
    /// Faults the simulator injects at the store's writes; `None` in production.
    pub storage_faults: Option<Arc<dyn natter_raft::StorageFaults>>,
}

impl fmt::Debug for NodeEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeEnv")
            .field("seed", &self.entropy.seed())
            .field("writer", &self.writer)
            .field("durability", &self.durability)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl NodeEnv {
    /// The production environment: OS clocks, a root seed drawn once from the OS, real UDP,
    /// group commit with fsync.
    pub fn production(data_dir: PathBuf) -> Self {
        Self {
            clock: Arc::new(SystemClock),
            entropy: Arc::new(Entropy::from_seed(rand::random())),
            network: Arc::new(TokioNetwork),
            writer: WriterMode::GroupCommit,
            durability: Durability::Sync,
            data_dir,
            http: true,
            storage_faults: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn entropy_is_reproducible_per_label_and_independent_across_labels() {
        let a = Entropy::from_seed(42);
        let b = Entropy::from_seed(42);
        assert_eq!(a.rng("x").next_u64(), b.rng("x").next_u64());
        // A second draw for the same label is a new stream, still reproducible.
        assert_eq!(a.rng("x").next_u64(), b.rng("x").next_u64());
        assert_ne!(Entropy::from_seed(1).rng("x").next_u64(), Entropy::from_seed(2).rng("x").next_u64());
    }
}
