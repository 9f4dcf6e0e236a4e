//! What one run measured, and how runs are printed and compared.

use std::fmt::Write;
use std::time::Duration;

use crate::clients::{IdleSample, MessagesReport};
pub use crate::histogram::milliseconds;
use crate::histogram::LatencyHistogram;
use crate::websockets::FanoutReport;

/// The outcome of one closed-loop run of one system at one concurrency.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// What was measured (`natter` or `etcd`).
    pub system: &'static str,
    /// Concurrent closed-loop clients.
    pub proposers: usize,
    /// From the common start until the last client stopped.
    pub elapsed: Duration,
    /// Latency of every successful operation.
    pub latencies: LatencyHistogram,
    /// Operations that failed (including setup operations that failed).
    pub errors: u64,
    /// The first failure, for the printout.
    pub first_error: Option<String>,
    /// A system-specific remark (for natter: how many proposals were forwarded).
    pub note: Option<String>,
}

impl RunReport {
    /// Successful operations per second over the run.
    pub fn per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds == 0.0 {
            0.0
        } else {
            self.latencies.count() as f64 / seconds
        }
    }

    /// One line for the console.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{:<6} proposers={:<4} ok={:<8} {:>10.0}/s  p50={:.3} ms  p99={:.3} ms  max={:.3} ms  errors={} ({:.2} s)",
            self.system,
            self.proposers,
            self.latencies.count(),
            self.per_second(),
            milliseconds(self.latencies.quantile(0.5)),
            milliseconds(self.latencies.quantile(0.99)),
            milliseconds(self.latencies.max()),
            self.errors,
            self.elapsed.as_secs_f64(),
        );
        if let Some(note) = &self.note {
            let _ = write!(line, "  [{note}]");
        }
        if let Some(error) = &self.first_error {
            let _ = write!(line, "\n       first error: {error}");
        }
        line
    }
}

/// A Markdown table of every run.
pub fn runs_table(reports: &[RunReport]) -> String {
    let mut out = String::from(
        "| system | proposers | ops/s | p50 ms | p99 ms | max ms | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for report in reports {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
            report.system,
            report.proposers,
            report.per_second(),
            milliseconds(report.latencies.quantile(0.5)),
            milliseconds(report.latencies.quantile(0.99)),
            milliseconds(report.latencies.max()),
            report.errors,
        );
    }
    out
}

/// A Markdown table of `ours / baseline` per proposer count present in both. A throughput ratio
/// above 1 and latency ratios below 1 favour `ours`.
pub fn ratio_table(ours: &[RunReport], baseline: &[RunReport]) -> String {
    let (name, base_name) = match (ours.first(), baseline.first()) {
        (Some(a), Some(b)) => (a.system, b.system),
        _ => return String::from("(no runs to compare)\n"),
    };
    let mut out = format!(
        "| proposers | throughput {name}/{base_name} | p50 {name}/{base_name} | p99 {name}/{base_name} |\n| ---: | ---: | ---: | ---: |\n"
    );
    for mine in ours {
        let Some(theirs) = baseline.iter().find(|report| report.proposers == mine.proposers) else {
            continue;
        };
        let ratio = |a: f64, b: f64| if b == 0.0 { "n/a".to_string() } else { format!("{:.2}×", a / b) };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            mine.proposers,
            ratio(mine.per_second(), theirs.per_second()),
            ratio(mine.latencies.quantile(0.5).as_secs_f64(), theirs.latencies.quantile(0.5).as_secs_f64()),
            ratio(mine.latencies.quantile(0.99).as_secs_f64(), theirs.latencies.quantile(0.99).as_secs_f64()),
        );
    }
    out
}

/// A Markdown table of messaging runs.
pub fn messages_table(reports: &[MessagesReport]) -> String {
    let mut out = String::from(
        "| senders | committed msgs/s | send→ack p50 ms | p99 ms | send→delivery p50 ms | p99 ms | delivered | undelivered | errors |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for report in reports {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            report.senders,
            report.per_second(),
            milliseconds(report.acks.quantile(0.5)),
            milliseconds(report.acks.quantile(0.99)),
            milliseconds(report.deliveries.quantile(0.5)),
            milliseconds(report.deliveries.quantile(0.99)),
            report.deliveries.count(),
            report.undelivered,
            report.errors,
        );
    }
    out
}

/// The messaging runs as closed-loop runs (acknowledged sends and their latencies), to compare
/// with a baseline's runs.
pub fn messages_as_runs(reports: &[MessagesReport]) -> Vec<RunReport> {
    reports
        .iter()
        .map(|report| RunReport {
            system: "natter",
            proposers: report.senders,
            elapsed: report.elapsed,
            latencies: report.acks.clone(),
            errors: report.errors,
            first_error: report.first_error.clone(),
            note: None,
        })
        .collect()
}

/// A Markdown table of a node's memory per idle-session count, with the growth per session
/// against the first sample (the baseline, no sessions) and against the previous one. `noun`
/// names what is idle (`session`, `websocket`).
pub fn idle_table(noun: &str, samples: &[IdleSample]) -> String {
    let mut out = format!(
        "| idle {noun}s | node RSS KiB | KiB per {noun} since 0 | KiB per {noun} since previous | node CPU % of a core |\n| ---: | ---: | ---: | ---: | ---: |\n",
    );
    let per_session = |from: &IdleSample, to: &IdleSample| {
        let sessions = to.sessions.saturating_sub(from.sessions);
        if sessions == 0 {
            return "–".to_string();
        }
        format!("{:.2}", (to.rss_kib as f64 - from.rss_kib as f64) / sessions as f64)
    };
    for (index, sample) in samples.iter().enumerate() {
        let (since_zero, since_previous) = match (samples.first(), index.checked_sub(1).map(|i| &samples[i])) {
            (Some(first), Some(previous)) => (per_session(first, sample), per_session(previous, sample)),
            _ => ("–".to_string(), "–".to_string()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {since_zero} | {since_previous} | {:.1} |",
            sample.sessions, sample.rss_kib, sample.cpu_percent
        );
    }
    out
}

/// A Markdown table of a fan-out run: one sender, every message to every member.
pub fn fanout_table(report: &FanoutReport) -> String {
    let mut out = String::from(
        "| members | nodes | window | committed | msgs/s | rate-limited sends | deliveries | deliveries/s | \
         send→ack p50 ms | p99 ms | send→delivery p50 ms | p99 ms | max ms | nodes CPU % idle group | \
         nodes CPU % sending | bench CPU % | exactly once, in order |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    let checked = match (report.verified(), report.members_wrong) {
        (true, _) => "yes".to_string(),
        (false, 0) => "NO (the sender failed)".to_string(),
        (false, wrong) => format!("NO ({wrong} members wrong)"),
    };
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {:.0} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} | {:.0} | {checked} |",
        report.members,
        report.nodes,
        report.window,
        report.committed,
        report.messages_per_second(),
        report.rate_limited,
        report.deliveries.count(),
        report.deliveries_per_second(),
        milliseconds(report.acks.quantile(0.5)),
        milliseconds(report.acks.quantile(0.99)),
        milliseconds(report.deliveries.quantile(0.5)),
        milliseconds(report.deliveries.quantile(0.99)),
        milliseconds(report.deliveries.max()),
        report.nodes_cpu_idle_percent,
        report.nodes_cpu_percent,
        report.bench_cpu_percent,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(system: &'static str, proposers: usize, latency_micros: u64, operations: u64) -> RunReport {
        let mut latencies = LatencyHistogram::default();
        for _ in 0..operations {
            latencies.record(Duration::from_micros(latency_micros));
        }
        RunReport {
            system,
            proposers,
            elapsed: Duration::from_secs(1),
            latencies,
            errors: 0,
            first_error: None,
            note: None,
        }
    }

    #[test]
    fn ratios_pair_runs_by_proposer_count() {
        let ours = [report("natter", 1, 500, 2000), report("natter", 64, 4000, 16000)];
        let baseline = [report("etcd", 64, 8000, 8000), report("etcd", 1, 1000, 1000)];
        let table = ratio_table(&ours, &baseline);
        assert!(table.contains("| 1 | 2.00× | 0.50× | 0.50× |"), "{table}");
        assert!(table.contains("| 64 | 2.00× | 0.50× | 0.50× |"), "{table}");
    }

    #[test]
    fn a_missing_baseline_run_is_left_out() {
        let table = ratio_table(&[report("natter", 8, 500, 10)], &[report("etcd", 1, 500, 10)]);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert_eq!(ratio_table(&[], &[]), "(no runs to compare)\n");
    }

    #[test]
    fn idle_growth_is_per_added_session() {
        let samples = [
            IdleSample { sessions: 0, rss_kib: 50_000, cpu_percent: 1.0 },
            IdleSample { sessions: 1000, rss_kib: 60_000, cpu_percent: 2.5 },
            IdleSample { sessions: 2000, rss_kib: 66_000, cpu_percent: 4.0 },
        ];
        let table = idle_table("session", &samples);
        assert!(table.starts_with("| idle sessions | node RSS KiB | KiB per session since 0 |"), "{table}");
        assert!(table.contains("| 0 | 50000 | – | – | 1.0 |"), "{table}");
        assert!(table.contains("| 1000 | 60000 | 10.00 | 10.00 | 2.5 |"), "{table}");
        assert!(table.contains("| 2000 | 66000 | 8.00 | 6.00 | 4.0 |"), "{table}");
    }

    #[test]
    fn a_fanout_row_says_whether_delivery_was_exact() {
        let mut latencies = LatencyHistogram::default();
        for _ in 0..4 {
            latencies.record(Duration::from_millis(2));
        }
        let mut fanout = FanoutReport {
            members: 2,
            nodes: 3,
            window: 64,
            rate_limited: 1,
            committed: 2,
            sending: Duration::from_secs(1),
            delivering: Duration::from_secs(2),
            acks: LatencyHistogram::default(),
            deliveries: latencies,
            members_wrong: 0,
            failures: Vec::new(),
            nodes_cpu_idle_percent: 12.0,
            nodes_cpu_percent: 150.0,
            bench_cpu_percent: 40.0,
        };
        let table = fanout_table(&fanout);
        let row = "| 2 | 3 | 64 | 2 | 2 | 1 | 4 | 2 | 0.000 | 0.000 | 2.000 | 2.000 | 2.000 | 12 | 150 | 40 | yes |";
        assert!(table.contains(row), "{table}");
        fanout.failures.push("sender: 1 errors".into());
        assert!(fanout_table(&fanout).contains("| NO (the sender failed) |"));
        fanout.members_wrong = 1;
        assert!(fanout_table(&fanout).contains("| NO (1 members wrong) |"));
    }

    #[test]
    fn runs_table_has_a_row_per_run() {
        let table = runs_table(&[report("natter", 1, 500, 2000)]);
        assert!(table.contains("| natter | 1 | 2000 | 0.500 | 0.500 | 0.500 | 0 |"), "{table}");
    }
}
