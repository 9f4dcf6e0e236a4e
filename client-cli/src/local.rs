//! Local clusters: `natter-node` processes on loopback, all their files in one directory.
//!
//! A cluster directory `D` holds, for nodes `1..=N`:
//!
//! ```text
//! D/tls/ca.pem, ca.key, node-N.pem, node-N.key   certificates (`natter dev certs`)
//! D/node-N.toml                                  the node's config, as `Config::to_toml` writes it
//! D/node-N/                                      the node's data directory
//! D/node-N.log                                   its stdout and stderr
//! D/node-N.pid                                   its process id while it runs
//! ```
//!
//! [`up`] writes all of it and starts the nodes detached from the caller (each in its own
//! process group, so a Ctrl-C in the terminal that ran `natter` does not reach them);
//! [`down`] stops them from the pid files alone, so it works from any later shell.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natter_node::config::{Config, NodeAddress, RaftTimings};
use natter_node::rate::RateLimits;
use serde::Serialize;

use crate::certs;
use crate::error::Error;
use crate::process::{self, Liveness, NodeProcess, Stopped};

/// Name of the node executable.
pub const NODE_BINARY: &str = "natter-node";
/// Most nodes of one local cluster (each is a full process on this machine).
pub const LOCAL_NODES_MAX: u64 = 16;
/// How long `cluster up` waits for every node to answer `/readyz` with 200.
pub const READY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Deadline of one `/readyz` request while waiting.
pub const READY_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two rounds of readiness checks.
pub const READY_POLL_PAUSE: Duration = Duration::from_millis(100);
/// Lines of a failing node's log shown with the error.
pub const LOG_TAIL_LINES: usize = 20;

/// The files of a cluster directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDir {
    root: PathBuf,
}

impl ClusterDir {
    /// The layout under `root`. Paths are used as given; [`up`] makes them absolute first.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the certificates live.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// Node `id`'s config file.
    pub fn config(&self, id: u64) -> PathBuf {
        self.root.join(format!("node-{id}.toml"))
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("node-{id}"))
    }

    /// Node `id`'s log file.
    pub fn log(&self, id: u64) -> PathBuf {
        self.root.join(format!("node-{id}.log"))
    }

    /// Node `id`'s pid file.
    pub fn pid_file(&self, id: u64) -> PathBuf {
        self.root.join(format!("node-{id}.pid"))
    }

    /// The nodes that have a pid file, by id. A pid file that does not hold a pid names no
    /// process and is listed with pid 0, so that `down` still removes it.
    pub fn recorded_processes(&self) -> Result<Vec<NodeProcess>, Error> {
        let mut processes = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(processes),
            Err(error) => return Err(Error::io("cannot list", &self.root)(error)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io("cannot list", &self.root))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|name| node_id_of(name, ".pid")) else {
                continue;
            };
            let path = self.pid_file(id);
            let text = std::fs::read_to_string(&path).map_err(Error::io("cannot read", &path))?;
            let pid = text.trim().parse().unwrap_or(0);
            processes.push(NodeProcess { node: id, pid, config: self.config(id) });
        }
        processes.sort_by_key(|process| process.node);
        Ok(processes)
    }

    /// The recorded nodes whose process still runs.
    pub fn running(&self) -> Result<Vec<NodeProcess>, Error> {
        let mut processes = self.recorded_processes()?;
        processes.retain(|process| process::liveness(process.pid, &process.config) == Liveness::Running);
        Ok(processes)
    }

    /// Entries of the directory that a cluster created (configs, data, logs, pid files,
    /// certificates), by name.
    pub fn cluster_files(&self) -> Result<Vec<String>, Error> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(Error::io("cannot list", &self.root)(error)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("cannot list", &self.root))?;
            if let Some(name) = entry.file_name().to_str() {
                // A `tls` directory is ours only if it holds a cluster CA: `--force` deletes
                // what is listed here, and `tls` alone is too common a name to claim.
                let ours = if name == "tls" {
                    self.tls_dir().join(certs::CA_CERT_FILE).exists()
                        || self.tls_dir().join(certs::CA_KEY_FILE).exists()
                } else {
                    is_cluster_file(name)
                };
                if ours {
                    found.push(name.to_string());
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

/// The node id in `node-<id><suffix>`, if `name` has that shape.
fn node_id_of(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix("node-")?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// True for names a node's own files have (configs, data directories, logs, pid files).
fn is_cluster_file(name: &str) -> bool {
    name == natter_node::auth::DEV_SECRET_FILE
        || ["", ".toml", ".log", ".pid"].iter().any(|suffix| node_id_of(name, suffix).is_some())
}

/// Free loopback addresses for `count` nodes: a UDP port for the peer endpoint and a TCP port
/// for HTTP each, found by binding port 0. Every socket stays bound until all are picked, so
/// no two nodes get the same port; they are released before the nodes bind them.
pub fn free_loopback_addresses(count: u64) -> std::io::Result<Vec<NodeAddress>> {
    let mut held = Vec::new();
    let mut addresses = Vec::new();
    for id in 1..=count {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        addresses.push(NodeAddress { id, peer_addr: udp.local_addr()?, http_addr: tcp.local_addr()? });
        held.push((udp, tcp));
    }
    drop(held);
    Ok(addresses)
}

/// The config of every node of a cluster in `dir` with these addresses and `shards` shards.
pub fn cluster_configs(
    dir: &ClusterDir,
    addresses: &[NodeAddress],
    shards: u32,
    jwt_secret: &str,
    rate_limits: &RateLimits,
) -> Vec<Config> {
    let tls_dir = dir.tls_dir();
    addresses
        .iter()
        .map(|address| {
            // Start from the node's own defaults so timeouts stay whatever the node ships with.
            let defaults = Config::dev(dir.data_dir(address.id));
            Config {
                node_id: address.id,
                nodes: addresses.to_vec(),
                shards,
                tls: certs::tls_files(&tls_dir, address.id),
                raft: RaftTimings::default(),
                rate_limits: rate_limits.clone(),
                jwt_secret: Some(jwt_secret.to_owned()),
                ..defaults
            }
        })
        .collect()
}

/// Finds the `natter-node` executable: `explicit` if given, else next to the running
/// executable (`exe_dir`), else in the directories of `path_var` (the `PATH` value). An
/// explicit relative path is made absolute: nodes run in the cluster directory, where it
/// would name nothing.
pub fn locate_node_binary(
    explicit: Option<&Path>,
    exe_dir: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return if is_executable(path) {
            std::path::absolute(path).map_err(Error::io("cannot resolve", path))
        } else {
            Err(Error::NodeBinaryInvalid(path.to_path_buf()))
        };
    }
    let mut tried = Vec::new();
    if let Some(dir) = exe_dir {
        let candidate = dir.join(NODE_BINARY);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        tried.push(format!("{} (next to natter)", candidate.display()));
    }
    match path_var {
        Some(path_var) => {
            for dir in std::env::split_paths(path_var) {
                let candidate = dir.join(NODE_BINARY);
                if is_executable(&candidate) {
                    return Ok(candidate);
                }
            }
            tried.push(format!("PATH ({})", path_var.to_string_lossy()));
        }
        None => tried.push("PATH (not set)".to_string()),
    }
    Err(Error::NodeBinaryNotFound { tried: tried.join(", ") })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// What `cluster up` needs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The cluster directory (created if missing).
    pub dir: PathBuf,
    /// Number of nodes, 1..=[`LOCAL_NODES_MAX`].
    pub nodes: u64,
    /// Number of shards.
    pub shards: u32,
    /// The `natter-node` executable.
    pub node_binary: PathBuf,
    /// Delete a stopped cluster's files in `dir` first instead of refusing.
    pub force: bool,
    /// How long to wait for every node to be ready.
    pub ready_timeout: Duration,
    /// The clients' rate limits, written into every node's config (benchmarks raise them).
    pub rate_limits: RateLimits,
}

/// A node `cluster up` started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartedNode {
    /// Node id.
    pub id: u64,
    /// Inter-node (UDP) address.
    pub peer_addr: SocketAddr,
    /// HTTP (TCP) address.
    pub http_addr: SocketAddr,
    /// Process id.
    pub pid: u32,
    /// Config file.
    pub config: PathBuf,
    /// Log file.
    pub log: PathBuf,
}

/// What `cluster up` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpReport {
    /// The cluster directory (absolute).
    pub dir: PathBuf,
    /// Shard count.
    pub shards: u32,
    /// The node executable used.
    pub node_binary: PathBuf,
    /// Every node, by id.
    pub nodes: Vec<StartedNode>,
    /// Time from the first start to every node ready, in milliseconds.
    pub ready_ms: u64,
}

/// Creates a cluster in `options.dir` and starts its nodes; returns once every node is ready.
/// Progress goes to `progress`. If a node fails to start or become ready, the nodes already
/// started are stopped again and the error carries the failing node's log tail.
///
/// # Panics
///
/// If `options.nodes` is outside `1..=LOCAL_NODES_MAX` (the CLI's argument parser ensures it).
pub fn up(options: &UpOptions, progress: &mut dyn Write) -> Result<UpReport, Error> {
    assert!((1..=LOCAL_NODES_MAX).contains(&options.nodes), "node count checked by the caller");
    std::fs::create_dir_all(&options.dir).map_err(Error::io("cannot create", &options.dir))?;
    // Nodes run with this directory as their working directory and read absolute paths from
    // their configs, so the cluster works from any shell and `down` can match command lines.
    let root = options.dir.canonicalize().map_err(Error::io("cannot resolve", &options.dir))?;
    let dir = ClusterDir::new(root.clone());
    let running = dir.running()?;
    if !running.is_empty() {
        return Err(Error::ClusterRunning { dir: root, nodes: describe(&running) });
    }
    let found = dir.cluster_files()?;
    if !found.is_empty() {
        if !options.force {
            return Err(Error::ClusterExists { dir: root, found: list_some(&found) });
        }
        for name in &found {
            remove(&root.join(name))?;
        }
    }

    let ids: Vec<u64> = (1..=options.nodes).collect();
    certs::write_dev_certs(&dir.tls_dir(), &ids, false)?;
    let addresses =
        free_loopback_addresses(options.nodes).map_err(Error::io("cannot bind a free port on", "127.0.0.1"))?;
    // One client-token secret for the whole cluster, kept beside it for `natter token`.
    let secret_path = dir.root().join(natter_node::auth::DEV_SECRET_FILE);
    let secret = natter_node::auth::load_or_create_secret(&secret_path, &mut rand::rng())
        .map_err(Error::io("cannot write", &secret_path))?;
    let configs = cluster_configs(&dir, &addresses, options.shards, &secret, &options.rate_limits);
    for config in &configs {
        let path = dir.config(config.node_id);
        std::fs::write(&path, config.to_toml()).map_err(Error::io("cannot write", &path))?;
    }

    let noun = if options.nodes == 1 { "node" } else { "nodes" };
    let _ = writeln!(progress, "starting {} {noun} in {} ({} shards)", options.nodes, root.display(), options.shards);
    let started = Instant::now();
    let mut children: Vec<(NodeProcess, Child)> = Vec::new();
    for config in &configs {
        match spawn(&dir, config.node_id, &options.node_binary) {
            Ok(started) => children.push(started),
            Err(error) => return Err(abandon(&dir, children, error, progress)),
        }
    }
    let _ = writeln!(progress, "waiting for every node to be ready (up to {} s)", options.ready_timeout.as_secs());
    if let Err(error) = wait_ready(&dir, &addresses, &mut children, options.ready_timeout) {
        return Err(abandon(&dir, children, error, progress));
    }
    let ready_ms = started.elapsed().as_millis() as u64;
    // The nodes outlive this process: dropping a `Child` neither kills nor waits for it.
    let nodes = addresses
        .iter()
        .zip(&children)
        .map(|(address, (process, _))| StartedNode {
            id: address.id,
            peer_addr: address.peer_addr,
            http_addr: address.http_addr,
            pid: process.pid,
            config: process.config.clone(),
            log: dir.log(address.id),
        })
        .collect();
    Ok(UpReport { dir: root, shards: options.shards, node_binary: options.node_binary.clone(), nodes, ready_ms })
}

/// "node 1 (pid 4242), node 2 (pid 4243)".
fn describe(processes: &[NodeProcess]) -> String {
    processes
        .iter()
        .map(|process| format!("node {} (pid {})", process.node, process.pid))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first few names, and how many more there are.
fn list_some(names: &[String]) -> String {
    const SHOWN_MAX: usize = 4;
    let shown = names[..names.len().min(SHOWN_MAX)].join(", ");
    match names.len().saturating_sub(SHOWN_MAX) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

fn remove(path: &Path) -> Result<(), Error> {
    let result = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    result.map_err(Error::io("cannot remove", path))
}

/// Starts node `id` of the cluster in `dir` again (after it stopped or was killed), detached,
/// appending to its log and recording its new pid; returns the pid. Its data is kept, so it
/// rejoins with its LMDB state.
pub fn restart(dir: &Path, id: u64, binary: &Path) -> Result<u32, Error> {
    let root = dir.canonicalize().map_err(Error::io("cannot resolve", dir))?;
    let (process, _child) = spawn(&ClusterDir::new(root), id, binary)?;
    Ok(process.pid)
}

/// Starts node `id` detached, logging to its log file, and records its pid.
fn spawn(dir: &ClusterDir, id: u64, binary: &Path) -> Result<(NodeProcess, Child), Error> {
    let log_path = dir.log(id);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(Error::io("cannot open", &log_path))?;
    let log_err = log.try_clone().map_err(Error::io("cannot open", &log_path))?;
    let config = dir.config(id);
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .current_dir(dir.root())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        // The log is a file: no colour escape codes in it (tracing-subscriber honours NO_COLOR).
        .env("NO_COLOR", "1")
        // Its own process group: terminal signals (Ctrl-C, the shell's job control) aimed at
        // `natter` do not reach the node, which keeps running after `natter` exits.
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn { node: id, binary: binary.to_path_buf(), source })?;
    let process = NodeProcess { node: id, pid: child.id(), config };
    let pid_path = dir.pid_file(id);
    if let Err(source) = std::fs::write(&pid_path, format!("{}\n", process.pid)) {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::io("cannot write", pid_path)(source));
    }
    Ok((process, child))
}

/// Waits until every node answers `GET /readyz` with 200, failing early if a node exits.
fn wait_ready(
    dir: &ClusterDir,
    addresses: &[NodeAddress],
    children: &mut [(NodeProcess, Child)],
    timeout: Duration,
) -> Result<(), Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(READY_REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + timeout;
    let mut ready = vec![false; addresses.len()];
    let mut reasons = vec![String::from("no answer yet"); addresses.len()];
    loop {
        for (index, address) in addresses.iter().enumerate() {
            if ready[index] {
                continue;
            }
            let (_, child) = &mut children[index];
            if let Ok(Some(status)) = child.try_wait() {
                let log = dir.log(address.id);
                return Err(Error::NodeExited {
                    node: address.id,
                    status: status.to_string(),
                    log_tail: log_tail(&log, LOG_TAIL_LINES),
                    log,
                });
            }
            let url = format!("http://{}/readyz", address.http_addr);
            match agent.get(&url).call() {
                Ok(response) if response.status() == 200 => ready[index] = true,
                Ok(mut response) => {
                    let body = response.body_mut().read_to_string().unwrap_or_default();
                    reasons[index] = format!("/readyz answered {}: {}", response.status().as_u16(), body.trim());
                }
                Err(error) => reasons[index] = format!("/readyz: {error}"),
            }
        }
        if ready.iter().all(|&ready| ready) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let index = ready.iter().position(|&ready| !ready).expect("some node is not ready");
            let node = addresses[index].id;
            let log = dir.log(node);
            return Err(Error::NotReady {
                node,
                timeout,
                reason: reasons[index].clone(),
                log_tail: log_tail(&log, LOG_TAIL_LINES),
                log,
            });
        }
        std::thread::sleep(READY_POLL_PAUSE);
    }
}

/// Stops the nodes of a failed `up`, removes their pid files, and hands back `error`.
fn abandon(dir: &ClusterDir, children: Vec<(NodeProcess, Child)>, error: Error, progress: &mut dyn Write) -> Error {
    if children.is_empty() {
        return error;
    }
    let _ = writeln!(progress, "start-up failed; stopping the {} nodes that were started", children.len());
    let processes: Vec<NodeProcess> = children.iter().map(|(process, _)| process.clone()).collect();
    if let Err(stop_error) = process::stop(&processes, process::STOP_GRACE_DEFAULT) {
        let _ = writeln!(progress, "could not stop every node: {stop_error}");
    }
    for (process, mut child) in children {
        // Reap: these are still this process's children.
        let _ = child.try_wait();
        let _ = std::fs::remove_file(dir.pid_file(process.node));
    }
    error
}

/// The last `lines` lines of a file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops every node recorded in `dir`: SIGTERM, up to `grace` to exit, then SIGKILL; removes
/// the pid files. Nothing recorded (or no such directory) is not an error.
pub fn down(dir: &Path, grace: Duration) -> Result<Vec<Stopped>, Error> {
    // Match command lines against the same absolute config paths `up` started nodes with.
    let root = match dir.canonicalize() {
        Ok(root) => root,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::io("cannot resolve", dir)(error)),
    };
    let dir = ClusterDir::new(root);
    let processes = dir.recorded_processes()?;
    let report = process::stop(&processes, grace)?;
    for process in &processes {
        let path = dir.pid_file(process.node);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(Error::io("cannot remove", path)(error)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_file_names_are_recognised() {
        for name in ["node-1", "node-12.toml", "node-3.log", "node-2.pid"] {
            assert!(is_cluster_file(name), "{name}");
        }
        for name in ["notes.txt", "node-", "node-x.toml", "node-1.toml.bak", "tls2", "node-1a"] {
            assert!(!is_cluster_file(name), "{name}");
        }
    }

    #[test]
    fn configs_name_every_node_and_validate() {
        let dir = ClusterDir::new("/tmp/natter-cluster");
        let addresses = free_loopback_addresses(3).unwrap();
        let configs = cluster_configs(&dir, &addresses, 8, "0123456789abcdef0123456789abcdef", &RateLimits::default());
        assert_eq!(configs.len(), 3);
        for (config, address) in configs.iter().zip(&addresses) {
            config.validate().unwrap();
            assert_eq!(config.me(), address);
            assert_eq!(config.nodes, addresses);
            assert_eq!(config.shards, 8);
            assert_eq!(config.data_dir, dir.data_dir(address.id));
            assert_eq!(config.tls.cert, PathBuf::from(format!("/tmp/natter-cluster/tls/node-{}.pem", address.id)));
            assert_eq!(Config::parse(&config.to_toml(), []).unwrap(), *config, "what nodes read back");
        }
        let mut ports: Vec<u16> = addresses.iter().map(|address| address.http_addr.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 3, "distinct HTTP ports");
    }

    #[test]
    fn node_binary_search_order_and_failure_message() {
        let exe_dir = tempfile::tempdir().unwrap();
        let path_dir = tempfile::tempdir().unwrap();
        let make = |dir: &Path| {
            let path = dir.join(NODE_BINARY);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let path_var = std::env::join_paths([path_dir.path()]).unwrap();
        let error = locate_node_binary(None, Some(exe_dir.path()), Some(&path_var)).unwrap_err().to_string();
        assert!(error.contains("next to natter") && error.contains("PATH ("), "{error}");
        let on_path = make(path_dir.path());
        assert_eq!(locate_node_binary(None, Some(exe_dir.path()), Some(&path_var)).unwrap(), on_path);
        let beside = make(exe_dir.path());
        assert_eq!(locate_node_binary(None, Some(exe_dir.path()), Some(&path_var)).unwrap(), beside);
        assert_eq!(locate_node_binary(Some(&on_path), Some(exe_dir.path()), None).unwrap(), on_path);
        // A relative path names the same file from the cluster directory nodes run in.
        let relative = on_path.strip_prefix(std::env::current_dir().unwrap()).map(Path::to_path_buf);
        let relative = relative.unwrap_or_else(|_| {
            let up = std::env::current_dir().unwrap().components().count() - 1;
            std::iter::repeat_n(Path::new(".."), up).collect::<PathBuf>().join(on_path.strip_prefix("/").unwrap())
        });
        assert!(relative.is_relative());
        let found = locate_node_binary(Some(&relative), None, None).unwrap();
        assert!(found.is_absolute(), "{}", found.display());
        assert_eq!(found.canonicalize().unwrap(), on_path.canonicalize().unwrap());
        let error = locate_node_binary(Some(Path::new("/nonexistent/natter-node")), None, None).unwrap_err();
        assert_eq!(error.to_string(), "--node-bin /nonexistent/natter-node is not an executable file");
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-1.log");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&path, 2), "b\nc");
        assert_eq!(log_tail(&path, 10), "a\nb\nc");
        assert_eq!(log_tail(&dir.path().join("missing.log"), 2), "");
    }

    #[test]
    fn a_tls_directory_counts_only_with_a_cluster_ca() {
        let root = tempfile::tempdir().unwrap();
        let dir = ClusterDir::new(root.path());
        std::fs::create_dir(dir.tls_dir()).unwrap();
        std::fs::write(root.path().join("notes.txt"), "mine").unwrap();
        assert!(dir.cluster_files().unwrap().is_empty());
        std::fs::write(dir.tls_dir().join("ca.pem"), "").unwrap();
        std::fs::write(dir.config(1), "").unwrap();
        assert_eq!(dir.cluster_files().unwrap(), ["node-1.toml", "tls"]);
    }

    #[test]
    fn down_without_nodes_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        assert!(down(dir.path(), Duration::from_secs(1)).unwrap().is_empty());
        assert!(down(&dir.path().join("missing"), Duration::from_secs(1)).unwrap().is_empty());
        // A stale pid file (no such process) is reported and removed.
        std::fs::write(dir.path().join("node-1.pid"), "999999999\n").unwrap();
        let report = down(dir.path(), Duration::from_secs(1)).unwrap();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].outcome, process::StopOutcome::NotRunning);
        assert!(!dir.path().join("node-1.pid").exists());
    }
}
