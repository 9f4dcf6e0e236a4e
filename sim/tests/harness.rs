//! The harness with real clients: nodes as turmoil hosts, `natter-client` devices as turmoil
//! clients, the checkers over what they saw.

use std::time::Duration;

use natter_sim::harness::{run_seeded, RunConfig, RunOutcome};
use natter_sim::nemesis::{CrashRestart, NoFaults};

fn report(name: &str, outcome: &RunOutcome) {
    println!(
        "{name}: seed {} {} devices: {} sent, {} acknowledged, {} refused, {} unknown, {} delivered, {} reads, \
         {} reconnects; settled after {:?}; {:.1} s simulated in {:.1} s wall; trace {} ({} events)",
        outcome.seed,
        outcome.devices,
        outcome.sent,
        outcome.acknowledged,
        outcome.refused,
        outcome.unknown,
        outcome.delivered,
        outcome.reads,
        outcome.reconnects,
        outcome.settled_after,
        outcome.simulated.as_secs_f64(),
        outcome.wall.as_secs_f64(),
        outcome.trace_hash,
        outcome.trace.len(),
    );
    if let Some(failure) = &outcome.failure {
        println!("failure: {failure}");
    }
    if !outcome.passed() {
        for line in outcome.trace.iter().take(80) {
            println!("  {line}");
        }
    }
    for violation in outcome.violations.iter().take(20) {
        println!("violation: {violation}");
    }
}

/// The steady-state shape, short enough for a debug build (about 1 s of wall time per
/// simulated second with this load).
fn steady() -> RunConfig {
    RunConfig {
        run_duration: Duration::from_secs(8),
        sends_per_device_per_second: 4.0,
        sends_max: 300,
        ..RunConfig::default()
    }
}

fn assert_clean(outcome: &RunOutcome) {
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    assert_eq!(outcome.violations, vec![], "no guarantee broken");
    assert!(outcome.settled_after.is_some(), "the run settled after the heal");
}

#[test]
fn steady_state_acknowledges_and_delivers_everything_and_replays_identically() {
    let config = steady();
    let (first, _) = run_seeded(3, &config, NoFaults);
    report("steady", &first);
    assert_clean(&first);
    assert!(first.devices >= 6, "every user has a device: {}", first.devices);
    assert!(first.sent >= 150, "a few hundred sends: {}", first.sent);
    assert_eq!(first.acknowledged, first.sent, "without faults every send is acknowledged");
    assert!(first.delivered >= first.sent * 2, "each message reaches at least two devices: {}", first.delivered);

    let (second, _) = run_seeded(3, &config, NoFaults);
    report("steady again", &second);
    if first.trace != second.trace {
        let diverged = first.trace.iter().zip(&second.trace).position(|(a, b)| a != b);
        panic!(
            "same seed, different traces; first difference at line {diverged:?}: {:?} vs {:?}",
            diverged.map(|line| &first.trace[line]),
            diverged.map(|line| &second.trace[line])
        );
    }
    assert_eq!(first.trace_hash, second.trace_hash);

    let (other, _) = run_seeded(4, &config, NoFaults);
    report("steady, another seed", &other);
    assert_clean(&other);
    assert_ne!(first.trace_hash, other.trace_hash, "another seed, another run");
}

#[test]
fn a_node_crashed_and_restarted_mid_run_loses_nothing() {
    let config = steady();
    // Node 1 goes down 2.5 s into the workload, for 3 s.
    let nemesis = CrashRestart::new(Duration::from_millis(2500), 1, Duration::from_secs(3));
    let (outcome, nemesis) = run_seeded(5, &config, nemesis);
    report("crash-restart", &outcome);
    assert!(nemesis.done(), "node 1 was crashed and restarted during the run");
    assert_clean(&outcome);
    assert!(outcome.acknowledged > 0);
}
