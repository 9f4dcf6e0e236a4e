//! The simulated NodeEnv: turmoil's clock and network, every RNG from the run's seed, LMDB in
//! a per-host directory on tmpfs with no fsync and an inline writer (no thread).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use natter_node::env::{Clock, Entropy, NetworkEnv, NodeEnv};
use natter_raft::{Durability, WriterMode};
use rand::RngCore;

use crate::net::TurmoilUdp;

/// Simulated wall time starts here (2025-11-28T00:00:00Z) so timestamps look real.
pub const SIM_EPOCH_MS: u64 = 1_764_288_000_000;

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

/// A simulated node's environment.
pub fn sim_env(seed: u64, data_dir: PathBuf) -> NodeEnv {
    NodeEnv {
        clock: Arc::new(SimClock),
        entropy: Arc::new(Entropy::from_seed(seed)),
        network: Arc::new(SimNetwork),
        writer: WriterMode::Inline,
        durability: Durability::NoSync,
        data_dir,
        http: false,
        storage_faults: None,
    }
}
