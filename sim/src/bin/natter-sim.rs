//! `natter-sim`: runs scenarios over ranges of seeds, and replays one seed with its trace.
//!
//! ```text
//! natter-sim run scenarios/*.toml --seeds 0..200 [--jobs 2] [--canary NAME]
//! natter-sim replay scenarios/leader-crash-loop.toml --seed 17 --trace
//! ```
//! Every seed prints its trace hash; every failing seed prints what broke and the command that
//! replays it. `run` exits non-zero on any violation.

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use natter_canary::{Canary, UnknownCanary};
use natter_sim::scenario::Scenario;
use natter_sim::sweep::{self, SeedReport, JOBS_MAX, SEEDS_MAX};

/// natter's deterministic simulator.
#[derive(Debug, Parser)]
#[command(name = "natter-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every scenario file for every seed of a range.
    Run {
        /// Scenario files (TOML).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Seeds, `A..B` (B excluded).
        #[arg(long, value_parser = parse_seeds, default_value = "0..10")]
        seeds: Range<u64>,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Plant a bug (a build with `--features canaries` only); the run is expected to fail.
        #[arg(long = "canary", value_parser = parse_canary)]
        canaries: Vec<Canary>,
    },
    /// Runs one seed of one scenario, printing its nemesis schedule and, with --trace, every
    /// recorded event.
    Replay {
        /// The scenario file.
        scenario: PathBuf,
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Print the full event trace.
        #[arg(long)]
        trace: bool,
        /// Plant a bug (a build with `--features canaries` only).
        #[arg(long = "canary", value_parser = parse_canary)]
        canaries: Vec<Canary>,
    },
}

fn parse_seeds(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text.split_once("..").ok_or_else(|| format!("expected seeds as A..B, got {text:?}"))?;
    let start: u64 = start.parse().map_err(|_| format!("seed range start {start:?} is not a number"))?;
    let end: u64 = end.parse().map_err(|_| format!("seed range end {end:?} is not a number"))?;
    if start >= end || end - start > SEEDS_MAX {
        return Err(format!("expected A..B with A < B and at most {SEEDS_MAX} seeds, got {text}"));
    }
    Ok(start..end)
}

fn parse_canary(text: &str) -> Result<Canary, String> {
    text.parse().map_err(|error: UnknownCanary| error.to_string())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("natter-sim: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Scenario)>> {
    paths
        .iter()
        .map(|path| Ok((path.clone(), Scenario::load(path).with_context(|| format!("loading {}", path.display()))?)))
        .collect()
}

fn check_canaries(canaries: &[Canary]) -> anyhow::Result<()> {
    if !canaries.is_empty() && !natter_canary::PLANTABLE {
        bail!("this build cannot plant canaries: build natter-sim with `--features canaries`");
    }
    Ok(())
}

/// Returns whether every seed passed.
fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Run { scenarios, seeds, jobs, canaries } => {
            if jobs == 0 || jobs > JOBS_MAX {
                bail!("--jobs must be in 1..={JOBS_MAX}, got {jobs}");
            }
            check_canaries(&canaries)?;
            let loaded = load(&scenarios)?;
            let paths: Vec<String> = loaded.iter().map(|(path, _)| path.display().to_string()).collect();
            let scenarios: Vec<Scenario> = loaded.into_iter().map(|(_, scenario)| scenario).collect();
            let print_seed = |report: &SeedReport| {
                let verdict = if report.passed() { "ok" } else { "FAILED" };
                println!(
                    "{} seed {} {} trace {} ({:.1} s simulated, {:.2} s wall)",
                    report.scenario,
                    report.seed,
                    verdict,
                    report.trace_hash,
                    report.simulated.as_secs_f64(),
                    report.wall.as_secs_f64()
                );
            };
            let reports = sweep::sweep(&scenarios, seeds, jobs, &canaries, &print_seed);
            println!();
            for summary in sweep::summarize(&reports) {
                println!(
                    "{}: {} seeds, {} failed, {:.2} seeds/s, {:.1} simulated s per wall s (per thread)",
                    summary.scenario,
                    summary.seeds,
                    summary.failed,
                    summary.seeds_per_second(),
                    summary.simulated_per_wall()
                );
            }
            let mut passed = true;
            for report in reports.iter().filter(|report| !report.passed()) {
                passed = false;
                let index = scenarios.iter().position(|scenario| scenario.name == report.scenario).unwrap_or(0);
                println!("\nFAILED {} seed {}:", report.scenario, report.seed);
                for problem in &report.problems {
                    println!("  {problem}");
                }
                println!("  replay: {}", sweep::replay_command(&paths[index], report.seed, &canaries));
            }
            Ok(passed)
        }
        Command::Replay { scenario, seed, trace, canaries } => {
            check_canaries(&canaries)?;
            let (_, scenario) = load(std::slice::from_ref(&scenario))?.remove(0);
            let report = sweep::run_seed(&scenario, seed, &canaries, true);
            for line in &report.trace {
                if trace || line.starts_with("nemesis:") {
                    println!("{line}");
                }
            }
            println!(
                "{} seed {}: {} trace {} ({:.1} s simulated, {:.2} s wall, {} acknowledged, {} delivered)",
                report.scenario,
                report.seed,
                if report.passed() { "ok" } else { "FAILED" },
                report.trace_hash,
                report.simulated.as_secs_f64(),
                report.wall.as_secs_f64(),
                report.acknowledged,
                report.delivered
            );
            for problem in &report.problems {
                println!("  {problem}");
            }
            Ok(report.passed())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse_and_are_checked() {
        assert_eq!(parse_seeds("0..200"), Ok(0..200));
        assert!(parse_seeds("5..5").is_err());
        assert!(parse_seeds("7").is_err());
        assert!(parse_seeds("a..3").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "natter-sim",
            "run",
            "a.toml",
            "b.toml",
            "--seeds",
            "3..9",
            "--jobs",
            "2",
            "--canary",
            "dedup-skipped",
        ])
        .unwrap();
        let Command::Run { scenarios, seeds, jobs, canaries } = cli.command else { panic!("expected run") };
        assert_eq!(scenarios.len(), 2);
        assert_eq!((seeds, jobs), (3..9, 2));
        assert_eq!(canaries, [Canary::DedupSkipped]);
        assert!(Cli::try_parse_from(["natter-sim", "run", "a.toml", "--canary", "nope"]).is_err());
    }

    #[test]
    fn canaries_are_refused_by_a_build_that_cannot_plant_them() {
        assert!(check_canaries(&[]).is_ok());
        let checked = check_canaries(&[Canary::DedupSkipped]);
        assert_eq!(checked.is_ok(), natter_canary::PLANTABLE);
        if let Err(error) = checked {
            assert!(error.to_string().contains("--features canaries"), "{error}");
        }
    }
}
