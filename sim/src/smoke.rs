//! The simulator smoke run: N real nodes as turmoil hosts elect a leader for every shard and
//! commit a proposal on every shard through every node; the run's trace hash identifies it.
//!
//! The trace is the ordered sequence, in simulated time, of every change of a shard's leader
//! or applied index on every node, and every committed probe. Two runs with the same seed must
//! produce the same trace, bit for bit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_proto::{ConversationId, UserId};
use natter_raft::command::Command;
use natter_raft::placement::{shard_of_conversation, ShardId};
use natter_raft::query::{Query, QueryResult};
use openraft::async_runtime::watch::WatchReceiver;
use sha2::{Digest, Sha256};

pub use crate::env::PEER_PORT;
use crate::env::{NodeStart, SimCluster};

/// How a smoke run is set up.
#[derive(Debug, Clone)]
pub struct SmokeConfig {
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: u64,
    /// Number of shards.
    pub shards: u32,
    /// Simulated time limit.
    pub limit: Duration,
    /// After the probes, node 1 creates a conversation and appends three messages, then every
    /// node reads its history (forwarded to a replica where the node holds none).
    pub conversation_reads: bool,
}

/// The conversation the `conversation_reads` phase writes.
pub const READ_CONVERSATION: [u8; 16] = [42; 16];

/// What a smoke run saw.
#[derive(Debug, Clone)]
pub struct SmokeOutcome {
    /// SHA-256 of the trace, hex.
    pub trace_hash: String,
    /// The trace lines.
    pub trace: Vec<String>,
    /// Per shard, the leader each node last saw.
    pub leaders: LeaderView,
    /// Probes committed, per node.
    pub probes_committed: BTreeMap<u64, usize>,
    /// Per shard, the highest log index a probe committed at.
    pub probe_index: BTreeMap<u32, u64>,
    /// Per (node, shard): the applied index right after a linearizable read that started once
    /// every probe had committed. Each must reach the shard's `probe_index`.
    pub read_applied: BTreeMap<(u64, u32), u64>,
    /// Per node, the answers to the `conversation_reads` phase: alice's history read, an
    /// outsider's, and alice's conversation list as her user shard has it (fed by the outbox).
    pub history_reads: BTreeMap<u64, (QueryResult, QueryResult, QueryResult)>,
    /// Simulated time the run took.
    pub simulated: Duration,
}

/// Answers of the conversation phase on one node.
type ConversationReads = (QueryResult, QueryResult, QueryResult);

/// The leader each (node, shard) last saw.
pub type LeaderView = BTreeMap<(u64, u32), Option<u64>>;

/// Runs the smoke scenario on a fresh thread whose OS entropy is seeded from the run's seed.
pub fn run(config: &SmokeConfig) -> anyhow::Result<SmokeOutcome> {
    let config = config.clone();
    crate::entropy::on_seeded_thread(config.seed, move || match std::env::var_os("NATTER_SIM_NET_TRACE") {
        Some(path) => {
            let file = std::fs::File::create(path).expect("trace file");
            let subscriber = tracing_subscriber::fmt()
                .with_writer(std::sync::Mutex::new(file))
                .with_env_filter("turmoil=trace")
                .without_time()
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, || run_here(&config))
        }
        None => run_here(&config),
    })
}

fn run_here(config: &SmokeConfig) -> anyhow::Result<SmokeOutcome> {
    let cluster = SimCluster::create(config.seed, config.nodes, config.shards, None)?;
    let ids = cluster.ids.clone();

    let trace: Arc<Mutex<Vec<String>>> = Arc::default();
    let leaders: Arc<Mutex<LeaderView>> = Arc::default();
    let probes: Arc<Mutex<BTreeMap<u64, usize>>> = Arc::default();
    let finished = Arc::new(AtomicUsize::new(0));
    let read_done = Arc::new(AtomicUsize::new(0));
    let probe_index: Arc<Mutex<BTreeMap<u32, u64>>> = Arc::default();
    let read_applied: Arc<Mutex<BTreeMap<(u64, u32), u64>>> = Arc::default();
    let written = Arc::new(AtomicUsize::new(0));
    let history_reads: Arc<Mutex<BTreeMap<u64, ConversationReads>>> = Arc::default();

    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .simulation_duration(config.limit)
        .tick_duration(Duration::from_millis(1))
        // turmoil drops datagrams beyond this queue depth silently; QUIC bursts need room.
        .udp_capacity(1 << 16)
        .build();

    let (node_count, shards, conversation_reads) = (ids.len(), config.shards, config.conversation_reads);
    let serve = {
        let (trace, leaders, probes, finished) = (trace.clone(), leaders.clone(), probes.clone(), finished.clone());
        let (read_done, probe_index, read_applied) = (read_done.clone(), probe_index.clone(), read_applied.clone());
        let (written, history_reads) = (written.clone(), history_reads.clone());
        move |start: NodeStart| {
            let (trace, leaders, probes, finished) = (trace.clone(), leaders.clone(), probes.clone(), finished.clone());
            let (read_done, probe_index, read_applied) = (read_done.clone(), probe_index.clone(), read_applied.clone());
            let (written, history_reads) = (written.clone(), history_reads.clone());
            async move {
                let NodeStart { id, node, .. } = start;
                let cluster = node.cluster().clone();
                for (shard, raft) in cluster.groups() {
                    let (shard, mut metrics, trace, leaders) = (*shard, raft.metrics(), trace.clone(), leaders.clone());
                    natter_node::spawn(async move {
                        let mut last = None;
                        loop {
                            let seen = {
                                let metrics = metrics.borrow_watched();
                                (metrics.current_leader, metrics.last_applied.map_or(0, |id| id.index))
                            };
                            if last != Some(seen) {
                                let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
                                trace
                                    .lock()
                                    .expect("trace")
                                    .push(format!("{at} node{id} {shard} leader={:?} applied={}", seen.0, seen.1));
                                leaders.lock().expect("leaders").insert((id, shard.0), seen.0);
                                last = Some(seen);
                            }
                            if metrics.changed().await.is_err() {
                                break;
                            }
                        }
                    });
                }
                while !cluster.is_ready() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                for shard in (0..shards).map(ShardId) {
                    let nonce = id * 1_000_000 + u64::from(shard.0);
                    let response = cluster.propose(shard, Command::Probe { nonce }).await?;
                    let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
                    trace.lock().expect("trace").push(format!("{at} node{id} probe {shard} -> {response:?}"));
                    *probes.lock().expect("probes").entry(id).or_default() += 1;
                    if let natter_raft::Response::Probed { index } = response {
                        let mut highest = probe_index.lock().expect("probe index");
                        let entry = highest.entry(shard.0).or_default();
                        *entry = (*entry).max(index);
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
                // Once every node's probes committed, a linearizable read on any replica
                // must see all of them applied locally, followers included.
                while finished.load(Ordering::SeqCst) < node_count {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                for (shard, raft) in cluster.groups() {
                    cluster.linearizable_read(*shard).await?;
                    let applied = raft.metrics().borrow_watched().last_applied.map_or(0, |id| id.index);
                    read_applied.lock().expect("reads").insert((id, shard.0), applied);
                }
                if conversation_reads {
                    let result = conversation_phase(&cluster, id, shards, &written).await?;
                    history_reads.lock().expect("history").insert(id, result);
                }
                read_done.fetch_add(1, Ordering::SeqCst);
                // Keep serving peers until the simulation ends.
                std::future::pending::<()>().await;
                drop(node);
                Ok(())
            }
        }
    };
    cluster.add_hosts(&mut sim, serve);

    let node_count = ids.len();
    let done = read_done.clone();
    sim.client("driver", async move {
        while done.load(Ordering::SeqCst) < node_count {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    });
    let result = sim.run();
    let simulated = sim.elapsed();
    drop(sim);
    cluster.remove();
    result.map_err(|error| anyhow::anyhow!("simulation failed: {error}"))?;

    let trace = trace.lock().expect("trace").clone();
    let mut hasher = Sha256::new();
    for line in &trace {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    let trace_hash = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    let leaders = leaders.lock().expect("leaders").clone();
    let probes_committed = probes.lock().expect("probes").clone();
    let probe_index = probe_index.lock().expect("probe index").clone();
    let read_applied = read_applied.lock().expect("reads").clone();
    let history_reads = history_reads.lock().expect("history").clone();
    Ok(SmokeOutcome {
        trace_hash,
        trace,
        leaders,
        probes_committed,
        probe_index,
        read_applied,
        history_reads,
        simulated,
    })
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

/// Node 1 writes a conversation with three messages; every node waits for that, then reads
/// its history as alice (a member) and as mallory (not one).
async fn conversation_phase(
    cluster: &natter_node::Cluster,
    id: u64,
    shards: u32,
    written: &AtomicUsize,
) -> anyhow::Result<ConversationReads> {
    let conversation = ConversationId::from_bytes(READ_CONVERSATION);
    let shard = shard_of_conversation(&conversation, shards);
    if id == 1 {
        let create = Command::CreateConversation {
            conversation,
            creator: user("alice"),
            members: [user("alice"), user("bob")].into(),
            title: Some("reads".into()),
            direct: false,
            ts: 1,
        };
        cluster.propose(shard, create).await?;
        for client_seq in 1..=3 {
            let append = Command::Append {
                conversation,
                sender: user("alice"),
                device: natter_proto::DeviceId::new("phone").expect("valid"),
                client_seq,
                ts: 10 + client_seq,
                body: format!("message {client_seq}"),
            };
            cluster.propose(shard, append).await?;
        }
        written.store(1, Ordering::SeqCst);
    }
    while written.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let history = |reader: &str| Query::History { conversation, user: user(reader), before: None, limit: 50 };
    let member = cluster.read(shard, history("alice")).await?;
    let outsider = cluster.read(shard, history("mallory")).await?;
    // The outbox relay carries the membership to alice's user shard; wait (bounded) for it.
    let user_shard = natter_raft::placement::shard_of_user(&user("alice"), shards);
    let mut listed = QueryResult::Conversations(Vec::new());
    for _ in 0..100 {
        listed = cluster.read(user_shard, Query::UserConversations { user: user("alice") }).await?;
        if matches!(&listed, QueryResult::Conversations(ids) if ids.contains(&conversation)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((member, outsider, listed))
}
