//! What the sweep and canary tests share: the scenario files and failure reports.

use natter_canary::Canary;
use natter_sim::scenario::{load_dir, scenarios_dir, Scenario};
use natter_sim::sweep::{self, SeedReport};

/// Every scenario in `scenarios/`, with its path.
pub fn scenarios() -> Vec<(String, Scenario)> {
    load_dir(scenarios_dir())
        .expect("scenario files load")
        .into_iter()
        .map(|(path, scenario)| (path.display().to_string(), scenario))
        .collect()
}

/// The failed seeds of `reports`: their first problems and the command that replays each.
pub fn describe_failures(reports: &[SeedReport], paths: &[(String, Scenario)], canaries: &[Canary]) -> String {
    let mut text = String::new();
    for report in reports.iter().filter(|report| !report.passed()) {
        let path = paths.iter().find(|(_, scenario)| scenario.name == report.scenario).map_or("?", |(path, _)| path);
        text.push_str(&format!("\n{} seed {}:\n", report.scenario, report.seed));
        for problem in report.problems.iter().take(5) {
            text.push_str(&format!("  {problem}\n"));
        }
        text.push_str(&format!("  replay: {}\n", sweep::replay_command(path, report.seed, canaries)));
    }
    text
}
