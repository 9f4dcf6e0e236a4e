//! Presence on real processes (DESIGN §7): 3 nodes on loopback; alice on node 1, her watchers
//! on node 2. A watcher sees alice online, then offline with a last-seen when she leaves, and
//! offline within 35 s when her node is SIGKILLed; her last-seen survives restarting every
//! node; `contacts` shows her only to users she shares a 1:1 with, `nobody` to no one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use natter_chaos::node_binary;
use natter_cli::local::{self, UpOptions};
use natter_client::{Client, ClientConfig, Event, MemoryCursors};
use natter_proto::{DeviceId, PresencePrivacy, PresenceStatus, UserId};

struct Cluster {
    dir: PathBuf,
    servers: Vec<SocketAddr>,
    http: Vec<SocketAddr>,
    ca_pem: Vec<u8>,
    secret: String,
}

impl Cluster {
    /// A client of `user` that only ever talks to node `node` (1-based).
    async fn connect(&self, user: &str, node: usize) -> Client {
        let key = natter_node::auth::TokenKey::new(self.secret.as_bytes()).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let token = key.issue(&UserId::new(user).unwrap(), now, 3600);
        let config =
            ClientConfig::new(vec![self.servers[node - 1]], self.ca_pem.clone(), token, DeviceId::new("d1").unwrap());
        Client::connect(config, Box::new(MemoryCursors::default())).await.unwrap()
    }
}

/// Waits up to `within` for a presence event about `user` that `accept` takes; returns it
/// as (status, last_seen) and how long it took.
async fn presence_of(
    watcher: &Client,
    user: &str,
    within: Duration,
    accept: impl Fn(PresenceStatus, Option<u64>) -> bool,
) -> ((PresenceStatus, Option<u64>), Duration) {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let left =
            within.checked_sub(started.elapsed()).unwrap_or_else(|| panic!("no such presence of {user}: {seen:?}"));
        match tokio::time::timeout(left, watcher.next_event()).await {
            Ok(Some(Event::Presence { user: who, status, last_seen, .. })) if who.as_str() == user => {
                seen.push((status, last_seen));
                if accept(status, last_seen) {
                    return ((status, last_seen), started.elapsed());
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no such presence of {user} within {within:?}; saw {seen:?}"),
        }
    }
}

/// Waits until the node at `http` says every shard has a leader (at most 60 s).
async fn wait_ready(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("http://{http}/readyz");
    loop {
        let url = url.clone();
        let ready = tokio::task::spawn_blocking(move || ureq::get(&url).call().is_ok()).await.unwrap();
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "{http} not ready within 60 s of its restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGKILLs node `id` of the cluster in `dir` (if it runs).
fn kill(dir: &Path, id: u64) {
    let pid = std::fs::read_to_string(dir.join(format!("node-{id}.pid"))).unwrap();
    let pid = rustix::process::Pid::from_raw(pid.trim().parse().unwrap()).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
}

async fn scenario(cluster: &Cluster, binary: &Path) {
    let alice = cluster.connect("alice", 1).await;
    alice.create_conversation(vec![UserId::new("bob").unwrap()], None).await.unwrap();
    alice
        .create_conversation(vec![UserId::new("carol").unwrap(), UserId::new("bob").unwrap()], Some("trip".into()))
        .await
        .unwrap();
    let bob = cluster.connect("bob", 2).await;
    let wait = Duration::from_secs(10);

    // Online while connected; offline with a last-seen once she leaves.
    presence_of(&bob, "alice", wait, |status, _| status == PresenceStatus::Online).await;
    alice.close().await;
    let ((_, last_seen), _) =
        presence_of(&bob, "alice", wait, |status, seen| status == PresenceStatus::Offline && seen.is_some()).await;
    let first_last_seen = last_seen.unwrap();

    // Her node dies: her watcher sees her offline within 35 s.
    let alice = cluster.connect("alice", 1).await;
    presence_of(&bob, "alice", wait, |status, _| status == PresenceStatus::Online).await;
    kill(&cluster.dir, 1);
    let (_, took) =
        presence_of(&bob, "alice", Duration::from_secs(35), |status, _| status == PresenceStatus::Offline).await;
    println!("alice seen offline {took:?} after her node was killed");
    drop(alice);

    // Every node restarts; the stored last-seen is still there for a new watcher.
    bob.close().await;
    for id in 1..=3 {
        kill(&cluster.dir, id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3 {
        local::restart(&cluster.dir, id, binary).unwrap();
    }
    for http in &cluster.http {
        wait_ready(*http).await;
    }
    let bob = cluster.connect("bob", 2).await;
    let ((_, stored), _) = presence_of(&bob, "alice", Duration::from_secs(30), |status, seen| {
        status == PresenceStatus::Offline && seen.is_some()
    })
    .await;
    assert!(stored.unwrap() >= first_last_seen, "last-seen {stored:?} survived, at or after {first_last_seen}");

    // `contacts`: bob (1:1 with alice) sees her; carol (a group only) sees her offline.
    let alice = cluster.connect("alice", 1).await;
    assert_eq!(alice.set_presence_privacy(PresencePrivacy::Contacts).await.unwrap(), PresencePrivacy::Contacts);
    presence_of(&bob, "alice", wait, |status, _| status == PresenceStatus::Online).await;
    let carol = cluster.connect("carol", 3).await;
    let ((status, seen), _) = presence_of(&carol, "alice", wait, |_, _| true).await;
    assert_eq!((status, seen), (PresenceStatus::Offline, None), "carol shares no 1:1 with alice");

    // `nobody`: bob sees her offline, without a last-seen, though she is connected.
    assert_eq!(alice.set_presence_privacy(PresencePrivacy::Nobody).await.unwrap(), PresencePrivacy::Nobody);
    alice.reconnect().await.unwrap();
    let bob_again = cluster.connect("bob", 3).await;
    let ((status, seen), _) = presence_of(&bob_again, "alice", wait, |_, _| true).await;
    assert_eq!((status, seen), (PresenceStatus::Offline, None), "nobody hides presence and last-seen");
    for client in [alice, bob, carol, bob_again] {
        client.close().await;
    }
}

#[test]
fn presence_follows_connections_node_deaths_and_privacy() {
    let dir = tempfile::tempdir().unwrap();
    let binary = node_binary();
    let options = UpOptions {
        dir: dir.path().join("cluster"),
        nodes: 3,
        shards: 8,
        node_binary: binary.clone(),
        force: false,
        ready_timeout: Duration::from_secs(60),
        rate_limits: natter_node::rate::RateLimits::default(),
    };
    let report = local::up(&options, &mut std::io::sink()).unwrap();
    let cluster = Cluster {
        dir: report.dir.clone(),
        servers: report.nodes.iter().map(|node| node.peer_addr).collect(),
        http: report.nodes.iter().map(|node| node.http_addr).collect(),
        ca_pem: std::fs::read(report.dir.join("tls/ca.pem")).unwrap(),
        secret: std::fs::read_to_string(report.dir.join("jwt-secret")).unwrap().trim().to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(natter_raft::types::Runtime::scope(7, scenario(&cluster, &binary)))
    }));
    let _ = local::down(&report.dir, Duration::from_secs(20));
    if let Err(panic) = outcome {
        for id in 1..=3 {
            eprintln!("--- node {id} log ---\n{}", local::log_tail(&report.dir.join(format!("node-{id}.log")), 30));
        }
        std::panic::resume_unwind(panic);
    }
}
