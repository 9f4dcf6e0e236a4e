//! The messaging soak: many devices in many conversations send through a 3-node cluster while
//! nodes are SIGKILLed and restarted; afterwards every device must hold every message of its
//! conversations exactly once, in seq order, identical across devices, and every `send_ok`
//! must name a message that exists.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_check::{History, Observer, SendOutcome, SendRecord, Violation};
use natter_cli::local::{self, UpOptions};
use natter_client::{Client, ClientConfig, ClientError, Event, MemoryCursors};
use natter_proto::{ConversationId, DeviceId, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a soak run is shaped.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Cluster directory (created).
    pub dir: PathBuf,
    /// The `natter-node` executable.
    pub node_binary: PathBuf,
    /// Shards.
    pub shards: u32,
    /// Users; the first `two_device_users` have two devices.
    pub users: usize,
    /// Users with a second device.
    pub two_device_users: usize,
    /// Conversations (groups of three or four users).
    pub conversations: usize,
    /// Messages in all, split evenly over the devices.
    pub messages: usize,
    /// SIGKILL + restart rounds during the sends.
    pub kills: usize,
    /// Seed of the workload's choices.
    pub seed: u64,
}

/// What a soak run saw.
#[derive(Debug)]
pub struct SoakReport {
    /// Every send and delivery.
    pub history: History,
    /// Violations found by the checkers (empty when all is well).
    pub violations: Vec<Violation>,
    /// (node killed, seconds into the run) per kill.
    pub kills: Vec<(u64, f64)>,
    /// Sends acknowledged / refused / unknown.
    pub outcomes: (usize, usize, usize),
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

fn user(index: usize) -> UserId {
    UserId::new(format!("u{index}")).expect("valid user id")
}

/// Runs the soak; the cluster is stopped before returning.
pub fn run(options: &SoakOptions) -> anyhow::Result<SoakReport> {
    let started = Instant::now();
    let up = UpOptions {
        dir: options.dir.clone(),
        nodes: 3,
        shards: options.shards,
        node_binary: options.node_binary.clone(),
        force: false,
        ready_timeout: Duration::from_secs(60),
        rate_limits: natter_node::rate::RateLimits::default(),
    };
    let report = local::up(&up, &mut std::io::sink())?;
    let servers: Vec<SocketAddr> = report.nodes.iter().map(|node| node.peer_addr).collect();
    let http: BTreeMap<u64, SocketAddr> = report.nodes.iter().map(|node| (node.id, node.http_addr)).collect();
    let dir = report.dir.clone();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(workload(options, &dir, servers, http));
    let _ = local::down(&dir, Duration::from_secs(20));
    let (history, kills) = result?;
    let violations = natter_check::check(&history, true);
    let mut outcomes = (0, 0, 0);
    for send in &history.sends {
        match send.outcome {
            SendOutcome::Acknowledged(_) => outcomes.0 += 1,
            SendOutcome::Refused(_) => outcomes.1 += 1,
            SendOutcome::Unknown => outcomes.2 += 1,
        }
    }
    Ok(SoakReport { history, violations, kills, outcomes, elapsed: started.elapsed() })
}

struct Device {
    observer: Observer,
    client: Arc<Client>,
    conversations: Vec<ConversationId>,
}

async fn connect(servers: &[SocketAddr], ca_pem: &[u8], secret: &str, observer: &Observer) -> anyhow::Result<Client> {
    let key = natter_node::auth::TokenKey::new(secret.as_bytes())?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let token = key.issue(&observer.user, now, 3600);
    let mut config = ClientConfig::new(servers.to_vec(), ca_pem.to_vec(), token, observer.device.clone());
    config.request_timeout = Duration::from_secs(20);
    Ok(Client::connect(config, Box::new(MemoryCursors::default())).await?)
}

async fn workload(
    options: &SoakOptions,
    dir: &Path,
    servers: Vec<SocketAddr>,
    http: BTreeMap<u64, SocketAddr>,
) -> anyhow::Result<(History, Vec<(u64, f64)>)> {
    let ca_pem = std::fs::read(dir.join("tls/ca.pem"))?;
    let secret = std::fs::read_to_string(dir.join("jwt-secret"))?.trim().to_owned();
    let mut rng = StdRng::seed_from_u64(options.seed);

    // Conversations of three or four users, created by their first member.
    let mut members: Vec<Vec<usize>> = Vec::new();
    for _ in 0..options.conversations {
        let size = rng.random_range(3..=4);
        let mut group: Vec<usize> = Vec::new();
        while group.len() < size {
            let candidate = rng.random_range(0..options.users);
            if !group.contains(&candidate) {
                group.push(candidate);
            }
        }
        members.push(group);
    }
    let creator_device = |index: usize| Observer { user: user(index), device: DeviceId::new("d0").expect("valid") };
    let mut conversation_ids = Vec::new();
    for (number, group) in members.iter().enumerate() {
        let creator = connect(&servers, &ca_pem, &secret, &creator_device(group[0])).await?;
        let others: Vec<UserId> = group[1..].iter().map(|&index| user(index)).collect();
        let info = creator.create_conversation(others, Some(format!("group {number}"))).await?;
        conversation_ids.push(info.id);
        creator.close().await;
    }

    // Every device follows its user's conversations from seq 0, connected before any send.
    let mut devices = Vec::new();
    for index in 0..options.users {
        let device_count = if index < options.two_device_users { 2 } else { 1 };
        for device in 0..device_count {
            let observer = Observer { user: user(index), device: DeviceId::new(format!("d{device}")).expect("valid") };
            let conversations: Vec<ConversationId> = members
                .iter()
                .zip(&conversation_ids)
                .filter(|(group, _)| group.contains(&index))
                .map(|(_, id)| *id)
                .collect();
            let client = Arc::new(connect(&servers, &ca_pem, &secret, &observer).await?);
            devices.push(Device { observer, client, conversations });
        }
    }
    let history = Arc::new(Mutex::new(History::default()));
    {
        let mut history = history.lock().expect("history");
        for device in &devices {
            for conversation in &device.conversations {
                history.starts.insert((device.observer.clone(), *conversation), 0);
            }
        }
    }

    // Readers: record every message each device is handed.
    let mut readers = Vec::new();
    for device in &devices {
        let (client, observer, history) = (device.client.clone(), device.observer.clone(), history.clone());
        readers.push(tokio::spawn(async move {
            while let Some(event) = client.next_event().await {
                if let Event::Message(message) = event {
                    history.lock().expect("history").deliveries.entry(observer.clone()).or_default().push(message);
                }
            }
        }));
    }

    // The nemesis: SIGKILL a node, wait, restart it; `kills` times, spread over the sends.
    let start = Instant::now();
    let nemesis = {
        let (dir, binary, kills) = (dir.to_path_buf(), options.node_binary.clone(), options.kills);
        let http = http.clone();
        tokio::spawn(async move {
            let mut done = Vec::new();
            for round in 0..kills {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let victim = busiest_leader(&http).await.unwrap_or((round as u64 % 3) + 1);
                let pid_path = dir.join(format!("node-{victim}.pid"));
                let Ok(pid) = std::fs::read_to_string(&pid_path) else { continue };
                let Ok(pid) = pid.trim().parse::<i32>() else { continue };
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                done.push((victim, start.elapsed().as_secs_f64()));
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = local::restart(&dir, victim, &binary);
            }
            done
        })
    };

    // Senders: each device sends its share, one at a time, to its conversations in turn.
    let per_device = options.messages / devices.len();
    let mut senders = Vec::new();
    for device in &devices {
        let (client, observer, history) = (device.client.clone(), device.observer.clone(), history.clone());
        let conversations = device.conversations.clone();
        if conversations.is_empty() {
            continue;
        }
        senders.push(tokio::spawn(async move {
            for n in 0..per_device {
                let conversation = conversations[n % conversations.len()];
                let body = format!("{observer} #{n}");
                let (client_seq, outcome) = match client.send(conversation, body.clone()).await {
                    Ok(ok) => (ok.client_seq, SendOutcome::Acknowledged(ok.seq)),
                    // No answer: it may or may not have committed. Never counted as a failure.
                    Err(
                        ClientError::Timeout(_)
                        | ClientError::Unavailable(_)
                        | ClientError::Closed
                        | ClientError::Interrupted,
                    ) => (0, SendOutcome::Unknown),
                    Err(error) => (0, SendOutcome::Refused(error.to_string())),
                };
                history.lock().expect("history").sends.push(SendRecord {
                    observer: observer.clone(),
                    conversation,
                    client_seq,
                    body,
                    outcome,
                });
            }
        }));
    }
    for sender in senders {
        sender.await?;
    }
    let kills = nemesis.await?;

    // After the faults: wait (bounded) until every device caught up, then stop the readers.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let snapshot = history.lock().expect("history").clone();
        if natter_check::completeness(&snapshot, &natter_check::agreement(&snapshot).0).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for reader in readers {
        reader.abort();
        let _ = reader.await;
    }
    for device in devices {
        if let Ok(client) = Arc::try_unwrap(device.client) {
            client.close().await;
        }
    }
    let history = history.lock().expect("history").clone();
    Ok((history, kills))
}

/// The node leading the most shards, from node 1..3's admin views.
async fn busiest_leader(http: &BTreeMap<u64, SocketAddr>) -> Option<u64> {
    let http = http.clone();
    tokio::task::spawn_blocking(move || {
        for address in http.values() {
            let url = format!("http://{address}/v1/admin/cluster");
            let Ok(mut response) = ureq::get(&url).call() else { continue };
            let Ok(body) = response.body_mut().read_to_string() else { continue };
            let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
            let mut led: BTreeMap<u64, usize> = BTreeMap::new();
            for shard in status["local_shards"].as_array()? {
                if let Some(leader) = shard["leader"].as_u64() {
                    *led.entry(leader).or_default() += 1;
                }
            }
            return led.into_iter().max_by_key(|(_, count)| *count).map(|(node, _)| node);
        }
        None
    })
    .await
    .ok()
    .flatten()
}
