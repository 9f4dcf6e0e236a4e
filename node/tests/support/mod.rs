//! Nodes on loopback for integration tests: real `natter-node` processes, or nodes in the
//! test's own process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use natter_node::config::{Config, NodeAddress};
use rand::SeedableRng;
use serde_json::Value;

/// A free UDP port on loopback (bound, read, released).
pub fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A free TCP port on loopback.
pub fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A cluster of node processes in a temp dir.
pub struct ProcessCluster {
    pub dir: tempfile::TempDir,
    pub configs: BTreeMap<u64, PathBuf>,
    pub http: BTreeMap<u64, SocketAddr>,
    pub children: BTreeMap<u64, Child>,
}

impl ProcessCluster {
    /// Writes certificates and configs for `nodes` nodes with `shards` shards.
    pub fn new(nodes: u64, shards: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u64> = (1..=nodes).collect();
        let tls_dir = dir.path().join("tls");
        natter_node::tls::write_cluster_certs(&tls_dir, &ids, &mut rand::rngs::StdRng::seed_from_u64(9)).unwrap();
        let addresses: Vec<NodeAddress> =
            ids.iter().map(|&id| NodeAddress { id, peer_addr: free_udp(), http_addr: free_tcp() }).collect();
        let mut configs = BTreeMap::new();
        let mut http = BTreeMap::new();
        for address in &addresses {
            let config = Config {
                proposal_timeout_ms: 5_000,
                jwt_secret: None,
                ..Config::cluster_member(address.id, &addresses, shards, dir.path())
            };
            let path = dir.path().join(format!("node-{}.toml", address.id));
            std::fs::write(&path, config.to_toml()).unwrap();
            configs.insert(address.id, path);
            http.insert(address.id, address.http_addr);
        }
        Self { dir, configs, http, children: BTreeMap::new() }
    }

    /// Starts node `id` (logs go to `node-<id>.log` in the cluster dir).
    pub fn start(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_natter-node"))
            .arg("--config")
            .arg(&self.configs[&id])
            .env("NATTER_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.children.insert(id, child);
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERMs node `id` and returns its exit status.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let mut child = self.children.remove(&id).expect("running");
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    /// GET a path on node `id`; `None` if unreachable or not 2xx.
    pub fn get(&self, id: u64, path: &str) -> Option<String> {
        let url = format!("http://{}{path}", self.http[&id]);
        let mut response = ureq::get(&url).config().timeout_global(Some(Duration::from_secs(5))).build().call().ok()?;
        response.body_mut().read_to_string().ok()
    }

    /// POST a path on node `id`; the status code and body.
    pub fn post(&self, id: u64, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.http[&id]);
        let result = ureq::post(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .send_empty();
        match result {
            Ok(mut response) => (response.status().as_u16(), response.body_mut().read_to_string().unwrap_or_default()),
            Err(error) => (0, error.to_string()),
        }
    }

    /// The admin view of node `id`.
    pub fn status(&self, id: u64) -> Option<Value> {
        serde_json::from_str(&self.get(id, "/v1/admin/cluster")?).ok()
    }

    /// Waits until `/readyz` answers 200 on node `id`.
    pub fn wait_ready(&self, id: u64, timeout: Duration) {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.get(id, "/readyz").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {id} not ready after {timeout:?}; log:\n{}", self.log(id));
    }

    /// Node `id`'s log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Per shard: (leader, applied index) as node `status` reports them.
pub fn shard_view(status: &Value) -> BTreeMap<u64, (Option<u64>, u64)> {
    status["local_shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|shard| {
            (shard["shard"].as_u64().unwrap(), (shard["leader"].as_u64(), shard["applied_index"].as_u64().unwrap()))
        })
        .collect()
}

/// The JWT secret of in-process test clusters.
pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A token for `user`, valid for an hour, signed with [`SECRET`].
pub fn token(user: &str) -> String {
    let key = natter_node::auth::TokenKey::new(SECRET.as_bytes()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    key.issue(&natter_proto::UserId::new(user).unwrap(), now, 3600)
}

/// Nodes running in the test's own process.
pub struct InProcess {
    pub dir: tempfile::TempDir,
    pub handles: Vec<natter_node::NodeHandle>,
}

/// `count` nodes in this process (on tmpfs where there is one), 8 shards, client tokens signed
/// with [`SECRET`], HTTP on loopback if `http`, with `rate_limits`; returns once all are ready.
/// Must run inside `Runtime::scope`.
pub async fn start_in_process(count: u64, http: bool, rate_limits: natter_node::rate::RateLimits) -> InProcess {
    let base = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::tempdir_in(base).unwrap();
    let ids: Vec<u64> = (1..=count).collect();
    natter_node::tls::write_cluster_certs(&dir.path().join("tls"), &ids, &mut rand::rngs::StdRng::seed_from_u64(4))
        .unwrap();
    let addresses: Vec<NodeAddress> = ids
        .iter()
        .map(|&id| NodeAddress { id, peer_addr: free_udp(), http_addr: "127.0.0.1:0".parse().unwrap() })
        .collect();
    let mut handles = Vec::new();
    for &id in &ids {
        let config = Config {
            proposal_timeout_ms: 5_000,
            jwt_secret: Some(SECRET.into()),
            rate_limits: rate_limits.clone(),
            ..Config::cluster_member(id, &addresses, 8, dir.path())
        };
        let mut env = natter_node::env::NodeEnv::production(config.data_dir.clone());
        env.durability = natter_raft::Durability::NoSync;
        env.http = http;
        handles.push(natter_node::run_node(config, env).await.unwrap());
    }
    for handle in &handles {
        while !handle.cluster().is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    InProcess { dir, handles }
}

/// How a child process ended: its status (`None` when it was killed at the timeout), its
/// output and how long it ran.
pub struct Outcome {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `command` to the end or for `timeout` at most (then kills it), collecting its output.
/// It blocks: an async test runs it on tokio's blocking pool.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("could not start {command:?}: {error} (is Node.js installed?)"));
    // Read both pipes as the child writes them, so a full pipe never stalls it.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Outcome { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap(), elapsed: started.elapsed() }
}
