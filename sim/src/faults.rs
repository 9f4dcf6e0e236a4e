//! The nemesis's hooks into a simulated node: a clock that can run fast or slow, and storage
//! that can fail writes or fsync slowly.
//!
//! [`SimFaults`] holds one [`NodeFaults`] per node and implements
//! [`crate::nemesis::FaultHooks`]. A node's host builds its `NodeEnv` with a [`SkewedClock`]
//! and the node's [`NodeFaults`] as the store's `StorageFaults`, so what the nemesis sets
//! reaches the real node code:
//! - **Clock skew** changes what the node's `Clock` says: deadlines, interest expiry, message
//!   timestamps, token expiry. Timers the node sleeps on (openraft's election timeouts) run on
//!   tokio's clock, which the simulator does not skew.
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

/// A node's clock under skew: simulated time, run at the node's current rate from the moment
/// the rate last changed. Built anew each time the node starts (a process's clocks start
/// with it), so it never compares instants across runtimes.
#[derive(Debug)]
pub struct SkewedClock {
    faults: Arc<NodeFaults>,
    /// (simulated instant, the node's instant, rate) when the rate was last seen to change.
    anchor: Mutex<Option<(Instant, Instant, f64)>>,
}

impl SkewedClock {
    /// A clock following `faults`' rate.
    pub fn new(faults: Arc<NodeFaults>) -> Self {
        Self { faults, anchor: Mutex::new(None) }
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> Instant {
        let simulated = Instant::now();
        let rate = self.faults.clock_rate();
        let mut anchor = self.anchor.lock().expect("anchor lock");
        let (since, skewed, old_rate) = *anchor.get_or_insert((simulated, simulated, rate));
        let skewed_now = skewed + (simulated - since).mul_f64(old_rate);
        if rate != old_rate {
            // Re-anchor where the old rate brought the clock, so it stays continuous.
            *anchor = Some((simulated, skewed_now, rate));
        }
        skewed_now
    }

    fn wall_ms(&self) -> u64 {
        let simulated = turmoil::sim_elapsed().unwrap_or(Duration::ZERO);
        let skew = {
            let now = Instant::now();
            let skewed = self.now();
            skewed
                .checked_duration_since(now)
                .map(|ahead| ahead.as_millis() as i64)
                .unwrap_or_else(|| -(now.checked_duration_since(skewed).unwrap_or(Duration::ZERO).as_millis() as i64))
        };
        (SIM_EPOCH_MS as i64 + simulated.as_millis() as i64 + skew).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_raft::StorageFaults;

    #[tokio::test(start_paused = true)]
    async fn a_skewed_clock_runs_at_its_rate_and_stays_continuous() {
        let faults = SimFaults::new(1, 3);
        let clock = SkewedClock::new(faults.node(2));
        let start = clock.now();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(clock.now() - start, Duration::from_secs(10), "rate 1 is simulated time");
        faults.set_clock_rate(2, 2.0);
        let at_change = clock.now();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(clock.now() - at_change, Duration::from_secs(20), "twice as fast");
        faults.set_clock_rate(2, 0.5);
        let slowed = clock.now();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(clock.now() - slowed, Duration::from_secs(5), "half as fast, and never back");
        let other = SkewedClock::new(faults.node(3));
        let before = other.now();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(other.now() - before, Duration::from_secs(1), "other nodes are not skewed");
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
