//! The nemesis's hooks into a simulated node: a clock that can run fast or slow, and storage
//! that can fail writes or fsync slowly.
//!
//! [`SimFaults`] holds one [`NodeFaults`] per node and implements
//! [`crate::nemesis::FaultHooks`]. A node's host builds its `NodeEnv` with a [`SkewedClock`]
//! and the node's [`NodeFaults`] as the store's `StorageFaults`, so what the nemesis sets
//! reaches the real node code:
//! - **Clock skew** makes the node's wall clock drift (`Clock::wall_ms`: message timestamps,
//!   token expiry). Its monotonic clock stays simulated time: the node's deadlines become
//!   tokio timers, which run on simulated time for every host alike.
//! - **Storage faults** fail a write before anything of it is written, with the fault's
//!   probability, drawn from a per-node RNG seeded from the run's seed; or delay every write's
//!   completion. openraft stops a group whose storage failed, so a node that saw I/O errors is
//!   restarted when the nemesis heals.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_node::env::Clock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::env::SIM_EPOCH_MS;
use crate::nemesis::{FaultHooks, StorageFault};

/// One node's injected faults: its clock rate and its storage fault, if any.
#[derive(Debug)]
pub struct NodeFaults {
    clock_rate: Mutex<f64>,
    storage: Mutex<Option<StorageFault>>,
    rng: Mutex<StdRng>,
    /// Writes failed so far (for the run's report).
    failed_writes: Mutex<u64>,
}

impl NodeFaults {
    /// No faults; storage failures drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            clock_rate: Mutex::new(1.0),
            storage: Mutex::new(None),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            failed_writes: Mutex::new(0),
        }
    }

    /// The rate the node's clock runs at (1.0: simulated time).
    pub fn clock_rate(&self) -> f64 {
        *self.clock_rate.lock().expect("clock rate lock")
    }

    /// Writes this node's storage has failed so far.
    pub fn failed_writes(&self) -> u64 {
        *self.failed_writes.lock().expect("failed writes lock")
    }
}

impl natter_raft::StorageFaults for NodeFaults {
    fn before_write(&self) -> Option<io::Error> {
        let Some(StorageFault::IoErrors { failure_rate }) = *self.storage.lock().expect("storage lock") else {
            return None;
        };
        if !self.rng.lock().expect("rng lock").random_bool(failure_rate.clamp(0.0, 1.0)) {
            return None;
        }
        *self.failed_writes.lock().expect("failed writes lock") += 1;
        Some(io::Error::other("injected storage fault: I/O error"))
    }

    fn fsync_delay(&self) -> Duration {
        match *self.storage.lock().expect("storage lock") {
            Some(StorageFault::SlowFsync { delay_ms }) => Duration::from_millis(delay_ms),
            _ => Duration::ZERO,
        }
    }
}

/// Every node's [`NodeFaults`], the nemesis's [`FaultHooks`].
#[derive(Debug, Default, Clone)]
pub struct SimFaults {
    nodes: BTreeMap<u64, Arc<NodeFaults>>,
}

impl SimFaults {
    /// Faults for nodes `1..=nodes`, each node's storage RNG seeded from `seed` and its id.
    pub fn new(seed: u64, nodes: u64) -> Self {
        let nodes = (1..=nodes)
            .map(|node| (node, Arc::new(NodeFaults::new(seed ^ node.wrapping_mul(0x9e37_79b9_7f4a_7c15)))))
            .collect();
        Self { nodes }
    }

    /// Node `node`'s faults.
    ///
    /// # Panics
    /// If `node` is not one of the nodes this was made for.
    pub fn node(&self, node: u64) -> Arc<NodeFaults> {
        self.nodes.get(&node).unwrap_or_else(|| panic!("no node {node} in the simulation")).clone()
    }

    /// Writes failed on purpose so far, over every node.
    pub fn failed_writes(&self) -> u64 {
        self.nodes.values().map(|faults| faults.failed_writes()).sum()
    }
}

impl FaultHooks for SimFaults {
    fn set_clock_rate(&self, node: u64, rate: f64) {
        if let Some(faults) = self.nodes.get(&node) {
            // A clock never stops or runs backwards, however the schedule was drawn.
            *faults.clock_rate.lock().expect("clock rate lock") = rate.max(0.01);
        }
    }

    fn set_storage_fault(&self, node: u64, fault: Option<StorageFault>) {
        if let Some(faults) = self.nodes.get(&node) {
            *faults.storage.lock().expect("storage lock") = fault;
        }
    }
}

/// A node's clock under skew: its wall clock (`wall_ms`) runs at the node's current rate from
/// the moment the rate last changed, as a drifting NTP-less clock would; its monotonic clock
/// (`now`) stays simulated time, because the node hands those instants to tokio's timers,
/// which run on simulated time (a skewed monotonic clock made deadlines already past and
/// timers spin). Built anew each time the node starts.
#[derive(Debug)]
pub struct SkewedClock {
    faults: Arc<NodeFaults>,
    /// (simulated instant, the node's wall offset from simulated time in ms, rate) when the
    /// rate was last seen to change.
    anchor: Mutex<Option<(Instant, f64, f64)>>,
}

impl SkewedClock {
    /// A clock following `faults`' rate.
    pub fn new(faults: Arc<NodeFaults>) -> Self {
        Self { faults, anchor: Mutex::new(None) }
    }

    /// How far the node's wall clock is ahead of simulated time (negative: behind), in ms.
    fn offset_ms(&self) -> f64 {
        let simulated = Instant::now();
        let rate = self.faults.clock_rate();
        let mut anchor = self.anchor.lock().expect("anchor lock");
        let (since, offset, old_rate) = *anchor.get_or_insert((simulated, 0.0, rate));
        let elapsed_ms = (simulated - since).as_secs_f64() * 1e3;
        let offset_now = offset + elapsed_ms * (old_rate - 1.0);
        if rate != old_rate {
            // Re-anchor where the old rate brought the clock, so it stays continuous.
            *anchor = Some((simulated, offset_now, rate));
        }
        offset_now
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_ms(&self) -> u64 {
        let simulated = turmoil::sim_elapsed().unwrap_or(Duration::ZERO).as_secs_f64() * 1e3;
        (SIM_EPOCH_MS as f64 + simulated + self.offset_ms()).max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_raft::StorageFaults;

    #[tokio::test(start_paused = true)]
    async fn a_skewed_wall_clock_drifts_at_its_rate_and_stays_continuous() {
        let faults = SimFaults::new(1, 3);
        let clock = SkewedClock::new(faults.node(2));
        let offset = |clock: &SkewedClock| clock.offset_ms().round() as i64;
        assert_eq!(offset(&clock), 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(offset(&clock), 0, "rate 1 is simulated time");
        faults.set_clock_rate(2, 2.0);
        assert_eq!(offset(&clock), 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(offset(&clock), 10_000, "twice as fast: 10 s ahead after 10 s");
        faults.set_clock_rate(2, 0.5);
        assert_eq!(offset(&clock), 10_000);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(offset(&clock), 5_000, "half as fast: loses 5 s in 10 s, continuously");
        let start = clock.now();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now() - start, Duration::from_secs(1), "the monotonic clock is simulated time");
        let other = SkewedClock::new(faults.node(3));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(offset(&other), 0, "other nodes are not skewed");
    }

    #[test]
    fn storage_faults_fail_writes_at_their_rate_and_reproducibly() {
        let draw = |seed| {
            let faults = SimFaults::new(seed, 1);
            faults.set_storage_fault(1, Some(StorageFault::IoErrors { failure_rate: 0.3 }));
            let node = faults.node(1);
            (0..200).map(|_| node.before_write().is_some()).collect::<Vec<bool>>()
        };
        let failures = draw(5);
        assert_eq!(failures, draw(5), "the same seed fails the same writes");
        assert_ne!(failures, draw(6));
        let failed = failures.iter().filter(|failed| **failed).count();
        assert!((30..=90).contains(&failed), "{failed} of 200 at a 0.3 rate");

        let faults = SimFaults::new(5, 1);
        let node = faults.node(1);
        assert!(node.before_write().is_none() && node.fsync_delay().is_zero(), "no fault, no effect");
        faults.set_storage_fault(1, Some(StorageFault::SlowFsync { delay_ms: 40 }));
        assert_eq!(node.fsync_delay(), Duration::from_millis(40));
        assert!(node.before_write().is_none());
        faults.set_storage_fault(1, None);
        assert!(node.fsync_delay().is_zero());
    }
}
