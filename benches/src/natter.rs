//! The natter side: a loopback cluster of real nodes in this process, and closed-loop
//! proposers that append messages through `Cluster::propose`.
//!
//! Each node is the production node (`run_node` with `NodeEnv::production`): mutual-TLS QUIC
//! between nodes on 127.0.0.1, its own LMDB environment with group commit and fsync, only HTTP
//! is off. So a proposal's latency includes forwarding to the shard leader when the node asked
//! is not the leader, the leader's fsync and a follower's fsync (a majority of three).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use natter_node::config::{Config, NodeAddress};
use natter_node::{Cluster, NodeEnv, NodeHandle};
use natter_proto::{ConversationId, DeviceId, UserId};
use natter_raft::placement::{shard_of_conversation, ShardId};
use natter_raft::{Command, Durability, Response};
use rand::SeedableRng;
use tokio::sync::Barrier;
use tokio::time::Instant;

use crate::histogram::LatencyHistogram;
use crate::report::RunReport;

/// How long the cluster may take to elect a leader for every shard on every node.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown of all nodes may take before the benchmark moves on.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `propose` keeps retrying one proposal (leader changes) before it counts as failed.
pub const PROPOSAL_TIMEOUT_MS: u64 = 5_000;
/// A proposer stops early after this many failures, so a broken cluster cannot spin.
pub const ERRORS_PER_PROPOSER_MAX: u64 = 100;
/// Pause after a failed proposal before the next one.
pub const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How often readiness is polled.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Which node a proposer sends each proposal to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// The next node in turn, so most proposals reach a follower and are forwarded.
    RoundRobin,
    /// The node that led the shard when the run started, so no proposal is forwarded.
    Leader,
}

impl Route {
    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::Leader => "leader",
        }
    }
}

/// A cluster of `run_node` nodes on loopback, each with its own data dir under one temp dir.
pub struct LoopbackCluster {
    nodes: Vec<NodeHandle>,
    shards: u32,
    // Dropped after the nodes (field order), which removes every data dir.
    _dir: tempfile::TempDir,
}

/// A free UDP port on loopback (bound, read, released).
fn free_udp() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// A free TCP port on loopback (bound, read, released).
fn free_tcp() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Wall-clock milliseconds since the Unix epoch, as a proposer stamps a command.
fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl LoopbackCluster {
    /// Starts `node_count` nodes with `shards` shards; data, certificates and nothing else go
    /// into a new temp dir under `base_dir`. Must run inside `Runtime::scope`.
    pub async fn start(base_dir: &Path, node_count: u64, shards: u32, durability: Durability) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("natter-bench-")
            .tempdir_in(base_dir)
            .with_context(|| format!("creating a temp dir in {}", base_dir.display()))?;
        let ids: Vec<u64> = (1..=node_count).collect();
        let tls_dir = dir.path().join("tls");
        natter_node::tls::write_cluster_certs(&tls_dir, &ids, &mut rand::rngs::StdRng::from_os_rng())?;
        let addresses = ids
            .iter()
            .map(|&id| Ok(NodeAddress { id, peer_addr: free_udp()?, http_addr: free_tcp()? }))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut nodes = Vec::new();
        for address in &addresses {
            let config = Config {
                proposal_timeout_ms: PROPOSAL_TIMEOUT_MS,
                ..Config::cluster_member(address.id, &addresses, shards, dir.path())
            };
            let data_dir = config.data_dir.clone();
            let mut env = NodeEnv::production(data_dir);
            env.http = false;
            env.durability = durability;
            let node =
                natter_node::run_node(config, env).await.with_context(|| format!("starting node {}", address.id))?;
            nodes.push(node);
        }
        Ok(Self { nodes, shards, _dir: dir })
    }

    /// Waits until every shard on every node knows its leader; returns how long that took.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.nodes.iter().all(|node| node.cluster().is_ready()) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                let waiting: Vec<u64> = self
                    .nodes
                    .iter()
                    .filter(|node| !node.cluster().is_ready())
                    .map(|node| node.cluster().config().node_id)
                    .collect();
                bail!("nodes {waiting:?} still lack a leader for some shard after {timeout:?}");
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    /// Proposal attempts that nodes sent to another node so far, summed over the nodes.
    fn forwarded(&self) -> u64 {
        self.nodes.iter().map(|node| node.cluster().metrics().proposals_forwarded.get()).sum()
    }

    /// One closed-loop run: `proposers` tasks each create their own conversation, then append
    /// `body_bytes`-byte messages one at a time for `duration`, each through the node `route`
    /// picks. `run` keeps users and conversations of different runs apart.
    pub async fn run(
        &self,
        run: usize,
        proposers: usize,
        body_bytes: usize,
        route: Route,
        duration: Duration,
    ) -> RunReport {
        let targets: Arc<[Arc<Cluster>]> = self.nodes.iter().map(|node| node.cluster().clone()).collect();
        let body: Arc<str> = "m".repeat(body_bytes).into();
        // Every proposer plus this task: the clock starts when all conversations exist.
        let barrier = Arc::new(Barrier::new(proposers + 1));
        let forwarded_before = self.forwarded();
        let tasks: Vec<_> = (0..proposers)
            .map(|index| {
                let proposer = Proposer {
                    targets: targets.clone(),
                    shards: self.shards,
                    run,
                    index,
                    body: body.clone(),
                    route,
                    barrier: barrier.clone(),
                    duration,
                };
                natter_node::spawn(proposer.run())
            })
            .collect();
        barrier.wait().await;
        let started = Instant::now();
        let mut report = RunReport {
            system: "natter",
            proposers,
            elapsed: Duration::ZERO,
            latencies: LatencyHistogram::default(),
            errors: 0,
            first_error: None,
            note: None,
        };
        for task in tasks {
            match task.await {
                Ok(outcome) => {
                    report.latencies.merge(&outcome.latencies);
                    report.errors += outcome.errors;
                    report.first_error = report.first_error.take().or(outcome.first_error);
                }
                Err(error) => {
                    report.errors += 1;
                    report.first_error.get_or_insert_with(|| format!("proposer task failed: {error}"));
                }
            }
        }
        report.elapsed = started.elapsed();
        // Includes each proposer's unmeasured create, so the share is approximate.
        let forwarded = self.forwarded() - forwarded_before;
        let attempts = report.latencies.count() + proposers as u64;
        report.note = Some(format!("{:.0}% forwarded", 100.0 * forwarded as f64 / attempts.max(1) as f64));
        report
    }

    /// Stops every node gracefully (at most `SHUTDOWN_TIMEOUT`) and removes the data dirs.
    pub async fn shutdown(self) {
        let Self { nodes, _dir: dir, .. } = self;
        let stopping = join_as_tasks(nodes.into_iter().map(NodeHandle::shutdown));
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, stopping).await.is_err() {
            tracing::warn!("nodes did not stop within {SHUTDOWN_TIMEOUT:?}; dropping them");
        }
        drop(dir);
    }
}

/// Awaits every future concurrently (each as its own task, so one slow node does not hold up
/// the others' shutdown).
async fn join_as_tasks<F>(futures: impl Iterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = futures.map(natter_node::spawn).collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// One closed-loop client of a run.
struct Proposer {
    targets: Arc<[Arc<Cluster>]>,
    shards: u32,
    run: usize,
    index: usize,
    body: Arc<str>,
    route: Route,
    barrier: Arc<Barrier>,
    duration: Duration,
}

/// What one proposer measured.
struct ProposerOutcome {
    latencies: LatencyHistogram,
    errors: u64,
    first_error: Option<String>,
}

impl ProposerOutcome {
    fn fail(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

impl Proposer {
    async fn run(self) -> ProposerOutcome {
        let mut outcome = ProposerOutcome { latencies: LatencyHistogram::default(), errors: 0, first_error: None };
        let sender = UserId::new(format!("bench-{}-{}", self.run, self.index)).expect("valid user id");
        let peer = UserId::new(format!("peer-{}-{}", self.run, self.index)).expect("valid user id");
        let device = DeviceId::new("bench").expect("valid device id");
        let conversation = ConversationId::from_bytes(rand::random());
        let shard = shard_of_conversation(&conversation, self.shards);
        let create = Command::CreateConversation {
            conversation,
            creator: sender.clone(),
            members: [sender.clone(), peer].into(),
            title: None,
            direct: false,
            ts: wall_ms(),
        };
        let created = self.targets[self.index % self.targets.len()].propose(shard, create).await;
        // Reach the barrier whatever happened, or the other proposers would wait forever.
        self.barrier.wait().await;
        match created {
            Ok(Response::Conversation { .. }) => {}
            other => {
                outcome.fail(format!("creating the conversation: {other:?}"));
                return outcome;
            }
        }
        let leader = match self.route {
            Route::RoundRobin => None,
            Route::Leader => self.leader_index(shard),
        };
        let deadline = Instant::now() + self.duration;
        let mut client_seq = 0u64;
        let mut seq_expected = 1u64;
        while Instant::now() < deadline && outcome.errors < ERRORS_PER_PROPOSER_MAX {
            client_seq += 1;
            // Round-robin over the nodes, offset per proposer: about two in three proposals
            // reach a node that does not lead the shard and are forwarded.
            let target = match leader {
                Some(leader) => &self.targets[leader],
                None => &self.targets[(self.index + client_seq as usize) % self.targets.len()],
            };
            let command = Command::Append {
                conversation,
                sender: sender.clone(),
                device: device.clone(),
                client_seq,
                ts: wall_ms(),
                body: self.body.to_string(),
            };
            let started = Instant::now();
            let result = target.propose(shard, command).await;
            let latency = started.elapsed();
            match result {
                // A failed proposal may still have committed, so seqs may skip but never repeat.
                Ok(Response::Appended { seq, duplicate: false, .. }) if seq >= seq_expected => {
                    outcome.latencies.record(latency);
                    seq_expected = seq + 1;
                }
                other => {
                    outcome.fail(format!("append to shard {shard}: {other:?}"));
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
        outcome
    }

    /// The index in `targets` of the node that leads `shard` as the first replica knows it.
    fn leader_index(&self, shard: ShardId) -> Option<usize> {
        let leader = self.targets.iter().find_map(|cluster| {
            cluster.status().local_shards.iter().find(|status| status.shard == shard.0).and_then(|status| status.leader)
        })?;
        self.targets.iter().position(|cluster| cluster.config().node_id == leader)
    }
}
