//! `natter cluster up` / `status` / `down` with real `natter-node` processes on loopback, and
//! `up`'s failure paths with stand-in node executables.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use natter_cli::local::{self, ClusterDir, UpOptions};
use natter_cli::process::{liveness, Liveness};
use natter_cli::Error;
use serde_json::Value;

fn natter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natter")).args(args).output().expect("natter runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Builds `natter-node` (cargo does not build other packages' binaries for this crate's
/// tests) and returns its path: `<target dir>/debug/natter-node`, the target dir being the
/// parent of the profile directory that holds `deps/<this test>`.
///
/// `natter-client` is named too so that cargo unifies dependency features over the same
/// packages as `cargo test -p natter-client` did: building `natter-node` alone resolves some
/// shared dependencies with other features and recompiles quinn and natter-node, then the next
/// test run recompiles them back. For the same reason the variables cargo sets for this test
/// process (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, `OUT_DIR` …) are removed: build scripts
/// such as ring's rerun when they change, which recompiles ring, rustls and quinn (about 12 s
/// here) on every run.
fn node_binary() -> PathBuf {
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-p", "natter-node", "-p", "natter-client"]);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo_test = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_", "CARGO_CRATE_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "OUT_DIR"]
                .contains(&name.as_ref());
        if set_by_cargo_test {
            build.env_remove(name.as_ref());
        }
    }
    let output = build.output().unwrap();
    assert!(output.status.success(), "building natter-node failed:\n{}", text(&output.stderr));
    let exe = std::env::current_exe().unwrap();
    let target_dir = exe.parent().and_then(Path::parent).and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let binary = target_dir.join("debug").join("natter-node");
    assert!(binary.is_file(), "{} missing after the build", binary.display());
    binary
}

/// Stops whatever is left in the directory if the test fails half-way.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = local::down(self.0, Duration::from_secs(5));
    }
}

/// The recorded (node, pid) pairs of a cluster directory.
fn pids(dir: &Path) -> Vec<(u64, u32)> {
    ClusterDir::new(dir).recorded_processes().unwrap().iter().map(|process| (process.node, process.pid)).collect()
}

#[test]
fn up_status_down_with_three_real_nodes() {
    let binary = node_binary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let _cleanup = Cleanup(&dir);
    let dir_arg = dir.to_str().unwrap();
    let up =
        ["cluster", "up", "--nodes", "3", "--dir", dir_arg, "--shards", "8", "--node-bin", binary.to_str().unwrap()];

    let started = Instant::now();
    let output = natter(&up);
    assert!(output.status.success(), "cluster up failed:\n{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("cluster of 3 nodes ready in "), "{stdout}");
    assert!(stdout.contains(&format!("natter status --dir {dir_arg}\n")), "{stdout}");
    eprintln!("cluster up took {:?}", started.elapsed());
    let running = pids(&dir);
    assert_eq!(running.iter().map(|(node, _)| *node).collect::<Vec<_>>(), [1, 2, 3]);
    for id in 1..=3 {
        let config = natter_node::Config::load(&dir.join(format!("node-{id}.toml")), []).unwrap();
        assert_eq!((config.node_id, config.shards, config.nodes.len()), (id, 8, 3));
        assert!(config.me().http_addr.ip().is_loopback() && config.me().peer_addr.ip().is_loopback());
        assert_eq!(config.data_dir, dir.join(format!("node-{id}")));
    }

    // A second `up` on a live cluster is refused and leaves it alone.
    let output = natter(&up);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("already has a running cluster: node 1 (pid"), "{stderr}");
    assert_eq!(pids(&dir), running);

    // Ready means every shard has a leader; allow a brief election if one just happened.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let output = natter(&["status", "--dir", dir_arg, "--json"]);
        assert!(output.status.success(), "status failed: {}", text(&output.stderr));
        let status: Value = serde_json::from_slice(&output.stdout).unwrap();
        let shards = status["local_shards"].as_array().unwrap();
        if shards.iter().all(|shard| shard["leader"].is_u64()) || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["shards"], 8);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.iter().map(|node| node["id"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    let shards = status["local_shards"].as_array().unwrap();
    assert_eq!(shards.len(), 8, "with 3 nodes every node replicates every shard");
    for shard in shards {
        let leader = shard["leader"].as_u64().unwrap_or_else(|| panic!("shard without a leader: {shard}"));
        assert!((1..=3).contains(&leader), "{shard}");
    }

    let output = natter(&["status", "--dir", dir_arg]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(table.contains("ready: all 8 local shards have a leader; node 1 leads"), "{table}");

    let output = natter(&["cluster", "down", "--dir", dir_arg]);
    assert!(output.status.success(), "cluster down failed: {}", text(&output.stderr));
    let report = text(&output.stdout);
    for (node, pid) in &running {
        assert!(report.contains(&format!("node {node} (pid {pid}): stopped in ")), "{report}");
        let config = dir.join(format!("node-{node}.toml"));
        assert_eq!(liveness(*pid, &config), Liveness::Gone, "node {node} still runs");
        assert!(!dir.join(format!("node-{node}.pid")).exists());
    }
    let http = nodes[0]["http_addr"].as_str().unwrap();
    assert_eq!(natter(&["status", "--http", http]).status.code(), Some(1), "nothing answers any more");

    // Down again: nothing left to stop, and that is fine.
    let output = natter(&["cluster", "down", "--dir", dir_arg]);
    assert!(output.status.success());
    assert!(text(&output.stdout).starts_with("nothing to stop"), "{}", text(&output.stdout));
}

/// A stand-in node executable running `script`.
fn fake_node(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("fake-natter-node");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn options(dir: &Path, node_binary: PathBuf, ready_timeout: Duration) -> UpOptions {
    UpOptions {
        dir: dir.to_path_buf(),
        nodes: 2,
        shards: 4,
        node_binary,
        force: false,
        ready_timeout,
        rate_limits: natter_node::rate::RateLimits::default(),
    }
}

#[test]
fn a_node_that_exits_fails_up_with_its_log() {
    let bin_dir = tempfile::tempdir().unwrap();
    let binary = fake_node(bin_dir.path(), "echo \"cannot bind: address in use ($2)\" >&2; exit 3");
    let tmp = tempfile::tempdir().unwrap();
    let error = local::up(&options(tmp.path(), binary.clone(), Duration::from_secs(30)), &mut Vec::new()).unwrap_err();
    let Error::NodeExited { node, ref status, .. } = error else { panic!("unexpected error {error}") };
    assert!((1..=2).contains(&node) && status.contains('3'), "{error}");
    let details = error.details().unwrap();
    assert!(details.starts_with("cannot bind: address in use (/") && details.ends_with(".toml)"), "{details}");
    assert!(pids(tmp.path()).is_empty(), "no pid file outlives a failed start");

    // What is left (configs, logs) is a stopped cluster's files: refused unless --force.
    let error = local::up(&options(tmp.path(), binary.clone(), Duration::from_secs(30)), &mut Vec::new()).unwrap_err();
    assert!(
        error.to_string().contains("already holds a cluster's files (jwt-secret, node-1.log, node-1.toml,"),
        "{error}"
    );
    let forced = UpOptions { force: true, ..options(tmp.path(), binary, Duration::from_secs(30)) };
    assert!(matches!(local::up(&forced, &mut Vec::new()), Err(Error::NodeExited { .. })));
}

#[test]
fn a_node_that_never_gets_ready_times_out_and_is_stopped() {
    let bin_dir = tempfile::tempdir().unwrap();
    let binary = fake_node(bin_dir.path(), "echo starting; while :; do sleep 0.05; done");
    let tmp = tempfile::tempdir().unwrap();
    let mut progress = Vec::new();
    let error = local::up(&options(tmp.path(), binary, Duration::from_millis(500)), &mut progress).unwrap_err();
    let Error::NotReady { node, ref reason, .. } = error else { panic!("unexpected error {error}") };
    assert_eq!(node, 1);
    assert!(reason.starts_with("/readyz: "), "{reason}");
    assert_eq!(error.details(), Some("starting"));
    assert!(text(&progress).contains("stopping the 2 nodes that were started"), "{}", text(&progress));
    assert!(pids(tmp.path()).is_empty());
}
