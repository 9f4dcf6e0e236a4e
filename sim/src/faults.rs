//! The nemesis's hooks into a simulated node: a clock that can run fast or slow, and storage
//! that can fail writes or fsync slowly.
//!
//! [`SimFaults`] holds one [`NodeFaults`] per node and implements
//! [`crate::nemesis::FaultHooks`]. A node's host builds its `NodeEnv` with a [`SkewedClock`]
//! and the node's [`NodeFaults`] as the store's `StorageFaults`, so what the nemesis sets
//! reaches the real node code:
//! - **Clock skew** changes how fast a node's clocks run. Its wall clock drifts
//!   (`Clock::wall_ms`: message timestamps, token expiry), and so does its monotonic clock:
//!   [`drive_monotonic_skew`] runs beside the node on its host and moves the host's tokio clock
//!   ahead, so every timer of the node (openraft's elections and heartbeats, quinn's idle and
//!   retransmission timers, the node's own deadlines) fires early by the node's rate. tokio,
//!   quinn and openraft all read that one clock, so a node never sees a deadline it set in the
//!   past. A host's clock can only be pushed ahead, never held back, so rates are taken relative
//!   to the slowest node: a node at 0.8 leaves every other node running 1.25 times as fast,
//!   which is the same disagreement between nodes.
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

use crate::nemesis::{FaultHooks, StorageFault};
use crate::topology::SIM_EPOCH_MS;

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

    /// How fast `node`'s monotonic clock runs against simulated time: its rate relative to the
    /// slowest node's (or to 1.0 when none is slower), so it is never below 1.
    pub fn monotonic_rate(&self, node: u64) -> f64 {
        let slowest = self.nodes.values().map(|faults| faults.clock_rate()).fold(1.0, f64::min);
        self.nodes.get(&node).map_or(1.0, |faults| faults.clock_rate() / slowest)
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

/// How often [`drive_monotonic_skew`] pushes its host's clock ahead, in the host's time.
const MONOTONIC_SKEW_STEP: Duration = Duration::from_millis(10);

/// Makes the calling host's tokio clock (which is paused: turmoil advances it) run at
/// `node`'s [`SimFaults::monotonic_rate`]: every step it works out where the host's clock
/// should be, given simulated time (`turmoil::sim_elapsed`) and the rate over each step, and
/// advances the clock to there. Runs until dropped; run it beside the node, on its host, so a
/// crash stops both.
///
/// The clock moves by whole milliseconds only, the remainder carried to the next step: tokio's
/// timers round deadlines up to the next millisecond, so a clock left between two would make
/// every following timer (turmoil's ticks included) wait for the rounding too.
pub async fn drive_monotonic_skew(faults: Arc<SimFaults>, node: u64) -> std::convert::Infallible {
    let simulated = || turmoil::sim_elapsed().unwrap_or_default();
    let host_started = Instant::now();
    let mut simulated_last = simulated();
    // Where the host clock should be, as time since `host_started`.
    let mut target = Duration::ZERO;
    loop {
        tokio::time::sleep(MONOTONIC_SKEW_STEP).await;
        let simulated_now = simulated();
        target += (simulated_now - simulated_last).mul_f64(faults.monotonic_rate(node));
        simulated_last = simulated_now;
        let behind_ms = target.saturating_sub(host_started.elapsed()).as_millis() as u64;
        if behind_ms > 0 {
            tokio::time::advance(Duration::from_millis(behind_ms)).await;
        }
    }
}

/// A node's clock under skew: its wall clock (`wall_ms`) runs at the node's current rate from
/// the moment the rate last changed, as a drifting NTP-less clock would; its monotonic clock
/// (`now`) is the host's tokio clock, which [`drive_monotonic_skew`] speeds up (skewing `now`
/// here alone would hand tokio's timers deadlines already past, and they would spin). Built
/// anew each time the node starts.
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
    fn monotonic_rates_are_relative_to_the_slowest_node() {
        let faults = SimFaults::new(1, 3);
        assert_eq!(faults.monotonic_rate(1), 1.0);
        faults.set_clock_rate(1, 1.2);
        assert!((faults.monotonic_rate(1) - 1.2).abs() < 1e-9);
        assert_eq!(faults.monotonic_rate(2), 1.0);
        faults.set_clock_rate(2, 0.8);
        assert!((faults.monotonic_rate(1) - 1.5).abs() < 1e-9, "1.2 against 0.8");
        assert!((faults.monotonic_rate(3) - 1.25).abs() < 1e-9, "1.0 against 0.8");
        assert_eq!(faults.monotonic_rate(2), 1.0);
    }

    #[test]
    fn a_fast_node_sees_its_timers_fire_early() {
        let faults = Arc::new(SimFaults::new(1, 2));
        faults.set_clock_rate(1, 1.25);
        let fired_at: Arc<Mutex<BTreeMap<u64, Duration>>> = Arc::default();
        let mut sim = turmoil::Builder::new().simulation_duration(Duration::from_secs(60)).build();
        for node in [1u64, 2] {
            let (faults, fired_at) = (faults.clone(), fired_at.clone());
            sim.client(crate::topology::node_name(node), async move {
                let skew = tokio::spawn(async move {
                    drive_monotonic_skew(faults, node).await;
                });
                // A 10 s timer in the node's own time, as an election timeout would be.
                tokio::time::sleep(Duration::from_secs(10)).await;
                skew.abort();
                fired_at.lock().expect("fired").insert(node, turmoil::sim_elapsed().expect("in a simulation"));
                Ok(())
            });
        }
        sim.run().expect("the simulation runs");
        let fired_at = fired_at.lock().expect("fired").clone();
        let fast = fired_at[&1].as_secs_f64();
        assert!((7.95..=8.05).contains(&fast), "a 1.25 clock's 10 s timer fired after {fast} simulated s");
        let normal = fired_at[&2].as_secs_f64();
        assert!((9.99..=10.01).contains(&normal), "a normal clock's 10 s timer fired after {normal} s");
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
