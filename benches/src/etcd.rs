//! The baseline: puts into a 3-member etcd 3.4 cluster on loopback through its HTTP/JSON
//! gateway (`POST /v3/kv/put`), from closed-loop client threads.
//!
//! etcd commits a put once a majority has fsynced it, like a natter proposal. Clients spread
//! their puts over the members round-robin, so followers forward to the leader, as natter nodes
//! do. [`EtcdCluster`] starts and stops the members with `benches/etcd-cluster.sh`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;

use crate::histogram::LatencyHistogram;
use crate::report::RunReport;

/// Deadline of one HTTP request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A client stops early after this many failures, so a broken cluster cannot spin.
pub const ERRORS_PER_CLIENT_MAX: u64 = 100;
/// Pause after a failed put before the next one.
pub const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Longest response body read, in bytes (a put answers with a small header).
pub const RESPONSE_BYTES_MAX: u64 = 64 * 1024;

/// Checks that `endpoint` is `http://HOST:PORT` with a loopback host: the benchmark sends
/// traffic to this machine only.
pub fn check_loopback(endpoint: &str) -> anyhow::Result<()> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        bail!("endpoint {endpoint:?} must start with http://");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let Some((host, port)) = authority.rsplit_once(':') else {
        bail!("endpoint {endpoint:?} must name a port");
    };
    if port.parse::<u16>().is_err() {
        bail!("endpoint {endpoint:?} has a bad port {port:?}");
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("endpoint {endpoint:?} is not on loopback; the benchmark only talks to this machine");
    }
    Ok(())
}

/// A 3-member etcd cluster started by the script, stopped on drop.
pub struct EtcdCluster {
    script: PathBuf,
    dir: tempfile::TempDir,
    endpoints: Vec<String>,
    running: bool,
}

impl EtcdCluster {
    /// Runs `script start DIR` with a new temp dir under `base_dir` and reads the endpoints the
    /// script wrote to `DIR/endpoints`.
    pub fn start(script: &Path, base_dir: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("etcd-bench-")
            .tempdir_in(base_dir)
            .with_context(|| format!("creating a temp dir in {}", base_dir.display()))?;
        let mut cluster = Self { script: script.to_owned(), dir, endpoints: Vec::new(), running: true };
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(cluster.dir.path())
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!("{} start failed ({status}); member logs are in {}", script.display(), cluster.dir.path().display());
        }
        let listed = std::fs::read_to_string(cluster.dir.path().join("endpoints")).context("reading endpoints")?;
        cluster.endpoints = listed.trim().split(',').map(str::to_owned).collect();
        for endpoint in &cluster.endpoints {
            check_loopback(endpoint)?;
        }
        Ok(cluster)
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Stops the members (the script waits for them to exit).
    pub fn stop(&mut self) {
        if !std::mem::take(&mut self.running) {
            return;
        }
        let status = std::process::Command::new("bash").arg(&self.script).arg("stop").arg(self.dir.path()).status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("warning: {} stop failed: {status:?}", self.script.display());
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One closed-loop run: `clients` threads each put `value_bytes`-byte values under their own
/// new keys for `duration`, each put to the next endpoint in turn.
pub fn run_puts(endpoints: &[String], run: usize, clients: usize, value_bytes: usize, duration: Duration) -> RunReport {
    assert!(!endpoints.is_empty(), "at least one endpoint");
    let engine = base64::engine::general_purpose::STANDARD;
    let value: Arc<str> = engine.encode("v".repeat(value_bytes)).into();
    let endpoints: Arc<[String]> = endpoints.iter().map(|endpoint| format!("{endpoint}/v3/kv/put")).collect();
    // Every client plus this thread: the clock starts when every client has done one put.
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|index| {
            let client = Client {
                endpoints: endpoints.clone(),
                value: value.clone(),
                run,
                index,
                barrier: barrier.clone(),
                duration,
            };
            std::thread::Builder::new().name(format!("etcd-client-{index}")).spawn(move || client.run())
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut report = RunReport {
        system: "etcd",
        proposers: clients,
        elapsed: Duration::ZERO,
        latencies: LatencyHistogram::default(),
        errors: 0,
        first_error: None,
        note: None,
    };
    for thread in threads {
        match thread
            .map_err(|error| error.to_string())
            .and_then(|handle| handle.join().map_err(|_| "client thread panicked".to_string()))
        {
            Ok(outcome) => {
                report.latencies.merge(&outcome.latencies);
                report.errors += outcome.errors;
                report.first_error = report.first_error.take().or(outcome.first_error);
            }
            Err(error) => {
                report.errors += 1;
                report.first_error.get_or_insert(error);
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// One closed-loop client thread.
struct Client {
    endpoints: Arc<[String]>,
    value: Arc<str>,
    run: usize,
    index: usize,
    barrier: Arc<Barrier>,
    duration: Duration,
}

/// What one client measured.
struct ClientOutcome {
    latencies: LatencyHistogram,
    errors: u64,
    first_error: Option<String>,
}

impl Client {
    fn run(self) -> ClientOutcome {
        let mut outcome = ClientOutcome { latencies: LatencyHistogram::default(), errors: 0, first_error: None };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .proxy(None)
                .timeout_global(Some(REQUEST_TIMEOUT))
                .http_status_as_error(false)
                .build(),
        );
        let mut sequence = 0u64;
        let put = |sequence: u64| -> Result<(), String> {
            let endpoint = &self.endpoints[(self.index + sequence as usize) % self.endpoints.len()];
            let key = base64::engine::general_purpose::STANDARD
                .encode(format!("bench/{}/{}/{sequence}", self.run, self.index));
            let body = format!(r#"{{"key":"{key}","value":"{}"}}"#, self.value);
            let mut response = agent
                .post(endpoint)
                .header("content-type", "application/json")
                .send(&body)
                .map_err(|error| format!("{endpoint}: {error}"))?;
            let status = response.status();
            // Read the whole body so the connection can be reused.
            let text = response
                .body_mut()
                .with_config()
                .limit(RESPONSE_BYTES_MAX)
                .read_to_string()
                .map_err(|error| format!("{endpoint}: reading the answer: {error}"))?;
            if !status.is_success() || !text.contains("\"header\"") {
                return Err(format!("{endpoint}: {status} {}", text.chars().take(200).collect::<String>()));
            }
            Ok(())
        };
        // One untimed put first, like natter's create: it opens the first connection.
        let warm = put(sequence);
        self.barrier.wait();
        if let Err(error) = warm {
            outcome.errors += 1;
            outcome.first_error = Some(error);
            return outcome;
        }
        let deadline = Instant::now() + self.duration;
        while Instant::now() < deadline && outcome.errors < ERRORS_PER_CLIENT_MAX {
            sequence += 1;
            let started = Instant::now();
            match put(sequence) {
                Ok(()) => outcome.latencies.record(started.elapsed()),
                Err(error) => {
                    outcome.errors += 1;
                    outcome.first_error.get_or_insert(error);
                    std::thread::sleep(ERROR_PAUSE);
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_endpoints_pass() {
        for good in ["http://127.0.0.1:2379", "http://localhost:2379", "http://[::1]:2379", "http://127.0.0.2:1/x"] {
            check_loopback(good).unwrap_or_else(|error| panic!("{good}: {error}"));
        }
        for bad in ["http://10.0.0.1:2379", "https://127.0.0.1:2379", "http://example.com:2379", "http://127.0.0.1"] {
            assert!(check_loopback(bad).is_err(), "{bad} should be refused");
        }
    }
}
