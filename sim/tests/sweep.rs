//! The simulator's standing budget, run by the test suite on every change:
//! - every scenario in `scenarios/` for a fixed range of seeds (at least 500 seeds in all),
//!   with zero violations;
//! - one sampled seed per scenario replayed by the `natter-sim` binary in another process,
//!   which must print the same trace hash.
//!
//! The planted canaries are in `canaries.rs`, built only with the `canaries` feature.
//!
//! `NATTER_SIM_SEEDS` overrides the seeds per scenario (e.g. 5 for a quick local run).

mod support;

use std::process::Command;

use natter_sim::scenario::Scenario;
use natter_sim::sweep::{self, SeedReport};

use support::{describe_failures, scenarios};

/// Seeds per scenario in the standing budget: 9 scenarios × 56 = 504 seeds.
const SEEDS_PER_SCENARIO: u64 = 56;
/// Seeds the suite runs side by side (the CI machine has two cores).
const JOBS: usize = 2;

fn seeds_per_scenario() -> u64 {
    std::env::var("NATTER_SIM_SEEDS").ok().and_then(|seeds| seeds.parse().ok()).unwrap_or(SEEDS_PER_SCENARIO)
}

/// The hash `natter-sim replay` prints for one seed, from a separate process.
fn replayed_hash(path: &str, seed: u64) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_natter-sim"))
        .args(["replay", path, "--seed", &seed.to_string()])
        .output()
        .expect("run natter-sim");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.lines().find(|line| line.contains(" trace ")).unwrap_or_else(|| {
        panic!(
            "no summary from natter-sim replay {path} --seed {seed}:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    summary.split(" trace ").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("a hash").to_owned()
}

#[test]
fn every_scenario_passes_its_seed_budget_and_replays_identically_in_another_process() {
    let loaded = scenarios();
    assert!(loaded.len() >= 9, "the nine scenarios of the issue exist, found {}", loaded.len());
    let seeds = seeds_per_scenario();
    let list: Vec<Scenario> = loaded.iter().map(|(_, scenario)| scenario.clone()).collect();
    let print = |report: &SeedReport| {
        if !report.passed() {
            println!("{} seed {} FAILED", report.scenario, report.seed);
        }
    };
    let reports = sweep::sweep(&list, 0..seeds, JOBS, &[], &print);
    for summary in sweep::summarize(&reports) {
        println!(
            "{}: {} seeds, {} failed, {:.2} seeds/s, {:.1} simulated s per wall s (one thread)",
            summary.scenario,
            summary.seeds,
            summary.failed,
            summary.seeds_per_second(),
            summary.simulated_per_wall()
        );
    }
    assert_eq!(reports.len() as u64, seeds * list.len() as u64);
    let failures = describe_failures(&reports, &loaded, &[]);
    assert!(failures.is_empty(), "violations found:{failures}");

    // One seed per scenario, spread over the range, replayed by the binary in its own process.
    for (index, (path, scenario)) in loaded.iter().enumerate() {
        let seed = (index as u64 * 7) % seeds;
        let here = reports
            .iter()
            .find(|report| report.scenario == scenario.name && report.seed == seed)
            .expect("the seed was run");
        let there = replayed_hash(path, seed);
        assert_eq!(here.trace_hash, there, "{} seed {seed} differs in another process", scenario.name);
    }
}
