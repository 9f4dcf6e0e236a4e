//! Sweeps: scenarios × seeds, each seed one full simulation with the scenario's nemesis, run
//! on a few worker threads, reported per scenario. `natter-sim run` and the test suite's seed
//! budget both go through [`run_seed`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_canary::Canary;

use crate::clock::real_elapsed;
use crate::faults::SimFaults;
use crate::harness::{self, RunConfig};
use crate::nemesis::{Schedule, ScheduledNemesis};
use crate::scenario::Scenario;

/// Most worker threads a sweep runs seeds on.
pub const JOBS_MAX: usize = 64;
/// Most seeds one sweep covers per scenario.
pub const SEEDS_MAX: u64 = 1_000_000;

/// The harness's shape for `scenario`.
pub fn run_config(scenario: &Scenario, canaries: &[Canary]) -> RunConfig {
    let clients = &scenario.clients;
    let workload = &scenario.workload;
    RunConfig {
        nodes: scenario.cluster.nodes,
        shards: scenario.cluster.shards,
        users: clients.users as usize,
        devices_per_user_min: clients.devices_per_user_min as usize,
        devices_per_user_max: clients.devices_per_user_max as usize,
        conversations: clients.conversations as usize,
        group_size_min: clients.group_size_min as usize,
        group_size_max: clients.group_size_max as usize,
        sends_per_device_per_second: workload.operations_per_client_per_second,
        history_read_share: workload.history_read_share,
        reconnect_share: workload.reconnect_share,
        run_duration: Duration::from_secs(workload.run_seconds),
        // A cap the workload should not reach before its duration ends (twice the mean
        // operations of the most devices the scenario allows), so the whole fault window runs.
        sends_max: (2.0
            * f64::from(clients.users)
            * f64::from(clients.devices_per_user_max)
            * workload.operations_per_client_per_second
            * workload.run_seconds as f64)
            .ceil() as usize,
        heal_bound: Duration::from_secs(scenario.heal.heal_seconds_max),
        canaries: canaries.to_vec(),
        ..RunConfig::default()
    }
}

/// One seed's result, as a sweep reports it.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Broken guarantees and failures to complete, one line each; empty when the seed passed.
    pub problems: Vec<String>,
    /// The run's trace hash.
    pub trace_hash: String,
    /// Simulated time of the run.
    pub simulated: Duration,
    /// Wall time of the run.
    pub wall: Duration,
    /// Sends acknowledged and messages delivered, for the summary.
    pub acknowledged: usize,
    /// Messages handed to devices, summed over devices.
    pub delivered: usize,
    /// The trace (kept only when asked for), with the nemesis's schedule first.
    pub trace: Vec<String>,
}

impl SeedReport {
    /// True when the seed found nothing wrong.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs `scenario` once with `seed`: the nemesis's schedule drawn from the seed, `canaries`
/// planted on the simulation's thread. `keep_trace` keeps the full event trace in the report.
pub fn run_seed(scenario: &Scenario, seed: u64, canaries: &[Canary], keep_trace: bool) -> SeedReport {
    let schedule = Schedule::draw(seed, scenario);
    let schedule_text = schedule.to_string();
    let faults = Arc::new(SimFaults::new(seed, scenario.cluster.nodes));
    let nemesis = ScheduledNemesis::new(schedule, faults.clone());
    let mut config = run_config(scenario, canaries);
    config.faults = Some(faults);
    let (outcome, _nemesis) = harness::run_seeded(seed, &config, nemesis);
    let mut problems: Vec<String> = outcome.violations.iter().map(ToString::to_string).collect();
    if let Some(failure) = &outcome.failure {
        problems.push(format!("run failed: {failure}"));
    }
    let trace = if keep_trace {
        let mut trace: Vec<String> = schedule_text.lines().map(|line| format!("nemesis: {line}")).collect();
        trace.extend(outcome.trace.iter().cloned());
        trace
    } else {
        Vec::new()
    };
    SeedReport {
        scenario: scenario.name.clone(),
        seed,
        problems,
        trace_hash: outcome.trace_hash,
        simulated: outcome.simulated,
        wall: outcome.wall,
        acknowledged: outcome.acknowledged,
        delivered: outcome.delivered,
        trace,
    }
}

/// Runs every seed of `seeds` for every scenario on `jobs` worker threads; `on_seed` sees each
/// report as it finishes (in no particular order). Returns every report, ordered by scenario
/// (as given) then seed.
pub fn sweep(
    scenarios: &[Scenario],
    seeds: Range<u64>,
    jobs: usize,
    canaries: &[Canary],
    on_seed: &(dyn Fn(&SeedReport) + Sync),
) -> Vec<SeedReport> {
    let work: Vec<(usize, u64)> =
        (0..scenarios.len()).flat_map(|index| seeds.clone().map(move |seed| (index, seed))).collect();
    let next = Mutex::new(work.into_iter());
    let reports = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, JOBS_MAX) {
            scope.spawn(|| loop {
                let Some((index, seed)) = next.lock().expect("work lock").next() else { return };
                let report = run_seed(&scenarios[index], seed, canaries, false);
                on_seed(&report);
                reports.lock().expect("reports lock").insert((index, seed), report);
            });
        }
    });
    reports.into_inner().expect("reports lock").into_values().collect()
}

/// Per scenario: seeds run, failures, seeds per wall second, simulated seconds per wall
/// second (summed over seeds, so with several jobs it exceeds one thread's speed).
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioSummary {
    /// The scenario.
    pub scenario: String,
    /// Seeds run.
    pub seeds: usize,
    /// Seeds that found a problem.
    pub failed: usize,
    /// Simulated time over all seeds.
    pub simulated: Duration,
    /// Wall time over all seeds (each seed's own).
    pub wall: Duration,
}

impl ScenarioSummary {
    /// Seeds per second of one thread's wall time.
    pub fn seeds_per_second(&self) -> f64 {
        self.seeds as f64 / self.wall.as_secs_f64().max(f64::EPSILON)
    }

    /// Simulated seconds per second of one thread's wall time.
    pub fn simulated_per_wall(&self) -> f64 {
        self.simulated.as_secs_f64() / self.wall.as_secs_f64().max(f64::EPSILON)
    }
}

/// Sums `reports` per scenario, in first-seen order.
pub fn summarize(reports: &[SeedReport]) -> Vec<ScenarioSummary> {
    let mut summaries: Vec<ScenarioSummary> = Vec::new();
    for report in reports {
        let index = match summaries.iter().position(|summary| summary.scenario == report.scenario) {
            Some(index) => index,
            None => {
                summaries.push(ScenarioSummary {
                    scenario: report.scenario.clone(),
                    seeds: 0,
                    failed: 0,
                    simulated: Duration::ZERO,
                    wall: Duration::ZERO,
                });
                summaries.len() - 1
            }
        };
        let summary = &mut summaries[index];
        summary.seeds += 1;
        summary.failed += usize::from(!report.passed());
        summary.simulated += report.simulated;
        summary.wall += report.wall;
    }
    summaries
}

/// The command that replays one seed with its full trace.
pub fn replay_command(scenario_path: &str, seed: u64, canaries: &[Canary]) -> String {
    let mut command = format!("natter-sim replay {scenario_path} --seed {seed} --trace");
    for canary in canaries {
        command.push_str(&format!(" --canary {canary}"));
    }
    command
}

/// Wall time since `origin` (a [`real_elapsed`] reading), immune to the simulation's clocks.
pub fn wall_since(origin: Duration) -> Duration {
    real_elapsed().saturating_sub(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(scenario: &str, seed: u64, problems: usize, wall_ms: u64) -> SeedReport {
        SeedReport {
            scenario: scenario.into(),
            seed,
            problems: (0..problems).map(|index| format!("problem {index}")).collect(),
            trace_hash: String::new(),
            simulated: Duration::from_secs(30),
            wall: Duration::from_millis(wall_ms),
            acknowledged: 0,
            delivered: 0,
            trace: Vec::new(),
        }
    }

    #[test]
    fn summaries_add_up_per_scenario() {
        let reports = [report("a", 1, 0, 500), report("b", 1, 2, 1000), report("a", 2, 1, 1500)];
        let summaries = summarize(&reports);
        assert_eq!(summaries.len(), 2);
        assert_eq!((summaries[0].seeds, summaries[0].failed), (2, 1));
        assert_eq!(summaries[0].wall, Duration::from_secs(2));
        assert!((summaries[0].seeds_per_second() - 1.0).abs() < 1e-9);
        assert!((summaries[0].simulated_per_wall() - 30.0).abs() < 1e-9);
        assert_eq!((summaries[1].seeds, summaries[1].failed), (1, 1));
    }

    #[test]
    fn the_replay_command_names_seed_and_canaries() {
        assert_eq!(
            replay_command("scenarios/steady-state.toml", 17, &[Canary::DedupSkipped]),
            "natter-sim replay scenarios/steady-state.toml --seed 17 --trace --canary dedup-skipped"
        );
    }
}
