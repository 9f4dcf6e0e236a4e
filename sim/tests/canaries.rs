//! Every canary caught within 200 seeds of its scenario, on a seed that passes without it: the
//! proof that the checkers catch the bugs they are meant for. Planting needs the `canaries`
//! feature (`cargo test -p natter-sim --features canaries`); without it this test is not built.

mod support;

use natter_canary::Canary;
use natter_sim::sweep;

use support::{describe_failures, scenarios};

/// A canary must be caught within this many seeds.
const CANARY_SEEDS_MAX: u64 = 200;

/// Runs `canary` on `scenario` seed by seed until the checker meant for it (`expected`, a
/// violation's name) catches it; asserts that happens within [`CANARY_SEEDS_MAX`] seeds and
/// that the same seed passes without the canary. Seeds the canary fails some other way first
/// are reported and passed over (a stale follower read can also stall a run's setup, which
/// then never reaches the reads the checker judges).
fn assert_caught(canary: Canary, scenario_name: &str, expected: &str) {
    let loaded = scenarios();
    let (path, scenario) =
        loaded.iter().find(|(_, scenario)| scenario.name == scenario_name).expect("the canary's scenario exists");
    for seed in 0..CANARY_SEEDS_MAX {
        let planted = sweep::run_seed(scenario, seed, &[canary], false);
        if planted.passed() {
            continue;
        }
        if !planted.problems.iter().any(|problem| problem.starts_with(expected)) {
            println!("{canary} failed {scenario_name} seed {seed}, but not by {expected}: {:?}", planted.problems);
            continue;
        }
        println!("{canary} caught by {scenario_name} seed {seed}: {}", planted.problems[0]);
        let clean = sweep::run_seed(scenario, seed, &[], false);
        assert!(
            clean.passed(),
            "{scenario_name} seed {seed} fails without {canary} too:{}",
            describe_failures(std::slice::from_ref(&clean), &loaded, &[])
        );
        return;
    }
    panic!("{canary} was not caught by {expected} on {path} within {CANARY_SEEDS_MAX} seeds");
}

/// Seeds run side by side on threads of one process; each plants its own canaries.
#[test]
fn canaries_are_planted_per_thread() {
    natter_canary::plant(&[Canary::DedupSkipped]);
    assert!(natter_canary::active(Canary::DedupSkipped));
    assert!(!natter_canary::active(Canary::AckBeforeCommit));
    let elsewhere = std::thread::spawn(|| natter_canary::active(Canary::DedupSkipped)).join().unwrap();
    assert!(!elsewhere, "another thread has no canary");
    natter_canary::clear();
    assert!(!natter_canary::active(Canary::DedupSkipped));
}

#[test]
fn the_ack_before_commit_canary_is_caught() {
    assert_caught(Canary::AckBeforeCommit, "leader-crash-loop", "AcknowledgedLost");
}

#[test]
fn the_dedup_skipped_canary_is_caught() {
    assert_caught(Canary::DedupSkipped, "leader-crash-loop", "AppendedTwice");
}

#[test]
fn the_cursor_backwards_canary_is_caught() {
    assert_caught(Canary::CursorBackwards, "steady-state", "GapOrDuplicate");
}

#[test]
fn the_interest_not_reregistered_canary_is_caught() {
    assert_caught(Canary::InterestNotReregistered, "leader-crash-loop", "Incomplete");
}

#[test]
fn the_stale_follower_read_canary_is_caught() {
    assert_caught(Canary::StaleFollowerRead, "minority-partition", "StaleRead");
}
