//! The simulation harness: real nodes as turmoil hosts, real `natter-client`s as turmoil
//! clients, a nemesis injecting faults, and the checkers judging what the clients saw.
//!
//! A run ([`run`]) goes through four phases, all in simulated time:
//!
//! 1. **Setup**: every device connects, then each conversation's creator creates it; sending
//!    starts once every device knows all its conversations (bounded by
//!    [`RunConfig::setup_bound`]).
//! 2. **Workload** for [`RunConfig::run_duration`] (or until [`RunConfig::sends_max`] sends):
//!    devices send, read history and reconnect at random ([`crate::workload`]), while the
//!    [`Nemesis`] is ticked before every simulation step.
//! 3. **Heal**: the nemesis stops and repairs everything ([`Nemesis::heal`]); the run waits
//!    until every send has its answer and every device has caught up. Not settling within
//!    [`RunConfig::heal_bound`] is a liveness violation ([`Violation::NotSettled`]).
//! 4. **Judge**: [`natter_check::check`] over the history, with completeness.
//!
//! A run is a function of its seed and configuration: [`RunOutcome::trace_hash`] hashes every
//! recorded event with its simulated time, and the same seed gives the same hash.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use natter_canary::Canary;
use natter_check::{HealPhase, SendOutcome, Violation};

use crate::env::{NodeStart, SimCluster};
use crate::nemesis::{Nemesis, Timed};
use crate::workload::{self, device_host, DeviceContext, Plan, SharedState};

pub use crate::run_config::RunConfig;

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The seed.
    pub seed: u64,
    /// Broken guarantees; empty when the run passed.
    pub violations: Vec<Violation>,
    /// Why the run could not complete (a host failed, setup took too long), if it did not.
    pub failure: Option<String>,
    /// Devices in the run.
    pub devices: usize,
    /// Sends invoked.
    pub sent: usize,
    /// Sends acknowledged.
    pub acknowledged: usize,
    /// Sends refused with an error code.
    pub refused: usize,
    /// Sends with an unknown outcome (timeouts, client errors, never answered).
    pub unknown: usize,
    /// Messages handed to devices, summed over devices.
    pub delivered: usize,
    /// History reads done.
    pub reads: usize,
    /// Client reconnects asked for.
    pub reconnects: usize,
    /// How long the heal phase took to settle, if it did.
    pub settled_after: Option<Duration>,
    /// Simulated time of the whole run.
    pub simulated: Duration,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// SHA-256 (hex) of the trace: every recorded event with its simulated time, in order.
    pub trace_hash: String,
    /// The trace lines.
    pub trace: Vec<String>,
}

impl RunOutcome {
    /// True when the run completed without violations.
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.violations.is_empty()
    }
}

/// The JWT secret of simulated clusters (not secret: nothing outside the simulation sees it).
const JWT_SECRET: &str = "natter-sim-jwt-secret-of-at-least-32-bytes";
/// How long the devices get to return after the heal phase.
const FINISH_BOUND: Duration = Duration::from_secs(5);
/// How often the heal phase checks whether everything settled.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// Runs one seed on a fresh thread whose OS entropy comes from the seed (see
/// [`crate::entropy`]), and gives the nemesis back with the outcome.
pub fn run_seeded<N: Nemesis + Send + 'static>(seed: u64, config: &RunConfig, mut nemesis: N) -> (RunOutcome, N) {
    let config = config.clone();
    crate::entropy::on_seeded_thread(seed, move || {
        let outcome = run(seed, &config, &mut nemesis);
        (outcome, nemesis)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Workload,
    Heal,
    Finish,
}

/// Plants `canaries` on this thread, replacing what an earlier run planted.
///
/// # Panics
/// If canaries are asked for in a build without natter-sim's `canaries` feature: a run must
/// not pass for want of the bug it was meant to plant. (`natter-sim` refuses `--canary` up
/// front in such a build.)
pub fn plant_canaries(canaries: &[Canary]) {
    #[cfg(feature = "canaries")]
    natter_canary::plant(canaries);
    #[cfg(not(feature = "canaries"))]
    assert!(canaries.is_empty(), "this build cannot plant {canaries:?}: natter-sim's `canaries` feature is off");
}

/// Runs one seed on the calling thread. For a reproducible run the thread must be fresh and
/// its OS entropy seeded ([`crate::entropy::on_seeded_thread`], as [`run_seeded`] does):
/// std's `HashMap` keys and `rand`'s thread RNG are drawn once per thread.
pub fn run(seed: u64, config: &RunConfig, nemesis: &mut dyn Nemesis) -> RunOutcome {
    // The wall clock measures the harness, never reaches the simulation (the OS clocks of a
    // simulation thread are virtual; this reads the kernel's).
    let wall_started = crate::clock::real_elapsed();
    plant_canaries(&config.canaries);
    let plan = Arc::new(Plan::draw(seed, config));
    let shared = SharedState::default();
    let mut failure = None;
    let cluster = match SimCluster::create(seed, config.nodes, config.shards, Some(JWT_SECRET.into())) {
        Ok(cluster) => cluster.with_faults(config.faults.clone()),
        Err(error) => return empty_outcome(seed, format!("cannot lay out the cluster: {error}"), wall_started),
    };
    let ca_pem = match cluster.ca_pem() {
        Ok(pem) => pem,
        Err(error) => return empty_outcome(seed, format!("cannot read the CA: {error}"), wall_started),
    };
    let limit = config.setup_bound + config.run_duration + config.heal_bound + FINISH_BOUND * 2;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(limit)
        .tick_duration(config.tick)
        // turmoil drops datagrams beyond this queue depth silently; QUIC bursts need room.
        .udp_capacity(config.udp_capacity)
        .build();
    cluster.add_hosts(&mut sim, |start: NodeStart| async move {
        // Keep serving until the simulation ends or the host crashes.
        std::future::pending::<()>().await;
        drop(start);
        Ok(())
    });
    for index in 0..plan.devices.len() {
        let context = DeviceContext {
            seed,
            config: config.clone(),
            plan: plan.clone(),
            ca_pem: ca_pem.clone(),
            jwt_secret: JWT_SECRET.into(),
            shared: shared.clone(),
        };
        sim.client(device_host(index), workload::device(index, context));
    }

    let mut phase = Phase::Setup;
    let mut faults_recorded = 0;
    let mut heal_started = Duration::ZERO;
    let mut next_settle_check = Duration::ZERO;
    let mut finish_by = Duration::MAX;
    let mut heal = None;
    loop {
        if phase == Phase::Workload {
            // Fault schedules count from the start of the workload.
            let started = Duration::from_millis(shared.lock().workload_started_ms.unwrap_or_default());
            let since_start = sim.elapsed().saturating_sub(started);
            nemesis.tick(&mut sim, since_start);
            record_faults(&shared, nemesis.journal(), &mut faults_recorded, sim.elapsed());
        }
        let elapsed = sim.elapsed();
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                failure = Some(format!("simulation failed at {elapsed:?}: {error}"));
                break;
            }
        }
        let elapsed = sim.elapsed();
        match phase {
            Phase::Setup => {
                let started = shared.lock().workload_started_ms;
                if started.is_some() {
                    phase = Phase::Workload;
                    shared.lock().trace.push(format!("{} workload", elapsed.as_millis()));
                } else if elapsed > config.setup_bound {
                    failure = Some(format!("setup did not finish within {:?}", config.setup_bound));
                    break;
                }
            }
            Phase::Workload => {
                let mut state = shared.lock();
                let started = Duration::from_millis(state.workload_started_ms.unwrap_or_default());
                if elapsed >= started + config.run_duration {
                    state.stop_sending = true;
                }
                if state.stopped == plan.devices.len() {
                    drop(state);
                    nemesis.heal(&mut sim);
                    record_faults(&shared, nemesis.journal(), &mut faults_recorded, elapsed);
                    phase = Phase::Heal;
                    heal_started = elapsed;
                    next_settle_check = elapsed;
                    shared.lock().trace.push(format!("{} heal", elapsed.as_millis()));
                }
            }
            Phase::Heal => {
                if elapsed >= next_settle_check {
                    next_settle_check = elapsed + SETTLE_POLL;
                    let mut state = shared.lock();
                    let settled = state.pending.is_empty() && natter_check::caught_up(&state.history);
                    let waited = elapsed - heal_started;
                    if settled || waited > config.heal_bound {
                        heal = Some(HealPhase {
                            started_ms: heal_started.as_millis() as u64,
                            bound_ms: config.heal_bound.as_millis() as u64,
                            settled_ms: settled.then_some(elapsed.as_millis() as u64),
                        });
                        let unfinished: Vec<_> = state.pending.values().cloned().collect();
                        state.history.unfinished = unfinished;
                        state.finish = true;
                        state.trace.push(format!("{} settled={settled}", elapsed.as_millis()));
                        phase = Phase::Finish;
                        finish_by = elapsed + FINISH_BOUND;
                    }
                }
            }
            Phase::Finish => {
                if elapsed > finish_by {
                    failure = Some("devices did not return after the run".into());
                    break;
                }
            }
        }
    }
    let simulated = sim.elapsed();
    drop(sim);
    cluster.remove();

    let mut state = shared.lock();
    state.history.heal = heal;
    let history = &state.history;
    let violations = if failure.is_some() && heal.is_none() { Vec::new() } else { natter_check::check(history, true) };
    let count = |wanted: fn(&SendOutcome) -> bool| history.sends.iter().filter(|send| wanted(&send.outcome)).count();
    let acknowledged = count(|outcome| matches!(outcome, SendOutcome::Acknowledged(_)));
    let refused = count(|outcome| matches!(outcome, SendOutcome::Refused(_)));
    let unknown = count(|outcome| matches!(outcome, SendOutcome::Unknown)) + history.unfinished.len();
    let delivered = history.deliveries.values().map(Vec::len).sum();
    let mut hasher = Sha256::new();
    for line in &state.trace {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    let trace_hash = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    RunOutcome {
        seed,
        violations,
        failure,
        devices: plan.devices.len(),
        sent: state.sends_invoked,
        acknowledged,
        refused,
        unknown,
        delivered,
        reads: state.reads,
        reconnects: state.reconnects,
        settled_after: heal.and_then(|heal| {
            heal.settled_ms.map(|settled| Duration::from_millis(settled.saturating_sub(heal.started_ms)))
        }),
        simulated,
        wall: crate::clock::real_elapsed().saturating_sub(wall_started),
        trace_hash,
        trace: std::mem::take(&mut state.trace),
    }
}

/// Adds the journal's entries from `recorded` on to the trace, at `elapsed` (simulated time
/// since the run began), and moves `recorded` past them.
fn record_faults(shared: &SharedState, journal: &[Timed], recorded: &mut usize, elapsed: Duration) {
    if journal.len() <= *recorded {
        return;
    }
    let mut state = shared.lock();
    for timed in &journal[*recorded..] {
        state.trace.push(format!("{} nemesis {}", elapsed.as_millis(), timed.action));
    }
    *recorded = journal.len();
}

fn empty_outcome(seed: u64, failure: String, wall_started: Duration) -> RunOutcome {
    RunOutcome {
        seed,
        violations: Vec::new(),
        failure: Some(failure),
        devices: 0,
        sent: 0,
        acknowledged: 0,
        refused: 0,
        unknown: 0,
        delivered: 0,
        reads: 0,
        reconnects: 0,
        settled_after: None,
        simulated: Duration::ZERO,
        wall: crate::clock::real_elapsed().saturating_sub(wall_started),
        trace_hash: String::new(),
        trace: Vec::new(),
    }
}
