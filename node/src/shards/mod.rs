//! The node's shard groups: one Raft group per local shard, started and bootstrapped here,
//! with proposals from any node ([`propose`]), linearizable reads ([`read`]), the peer
//! requests the groups answer ([`peer`]) and graceful shutdown.
//!
//! [`Cluster`] is the node's state: the groups and what every concern keeps beside them
//! (delivery, presence, acks). Each concern adds its own methods to it from its own folder
//! (`delivery/`, `presence/`, `acks/`, `outbox/`), where its pure core lives too.

mod network;
mod peer;
mod propose;
mod read;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_raft::placement::{replicas, ShardId};
use natter_raft::store::Raft;
use natter_raft::store::{Store, StoreConfig};
use natter_raft::types::{NodeId, NodeInfo};
use openraft::async_runtime::watch::WatchReceiver;

use crate::acks::AckBatcher;
use crate::delivery::Deliveries;
use crate::env::{Clock, NodeEnv};
use crate::ops::config::Config;
use crate::ops::metrics::Metrics;
use crate::peers::transport::Transport;
use crate::presence::{LocalBoard, PresenceBoard};
use network::{Router, ShardNetworkFactory};

/// Pause between proposal attempts when no leader is known.
pub const PROPOSE_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause between proposal attempts.
pub const PROPOSE_RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);
/// How long shutdown waits for a leadership to move before stopping anyway.
pub const LEADERSHIP_HANDOFF_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a proposal or read could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No leader answered before the deadline; retrying later is safe (commands are idempotent).
    #[error("shard {shard} unavailable: {reason}")]
    Unavailable {
        /// The shard.
        shard: ShardId,
        /// The last failure seen.
        reason: String,
    },
    /// The shard id is outside the cluster's shard count.
    #[error("no shard {0}")]
    NoSuchShard(ShardId),
    /// This node holds no replica of the shard, so it cannot read it locally.
    #[error("node holds no replica of shard {0}")]
    NotReplica(ShardId),
}

impl ClusterError {
    /// The wire error code for clients.
    pub fn code(&self) -> natter_proto::ErrorCode {
        match self {
            Self::Unavailable { .. } => natter_proto::ErrorCode::Unavailable,
            Self::NoSuchShard(_) | Self::NotReplica(_) => natter_proto::ErrorCode::Internal,
        }
    }
}

/// A running node's shard groups.
pub struct Cluster {
    pub(crate) config: Config,
    pub(crate) store: Arc<Store>,
    pub(crate) groups: BTreeMap<ShardId, Raft>,
    pub(crate) placement: BTreeMap<ShardId, Vec<NodeId>>,
    pub(crate) transport: Arc<Transport>,
    pub(crate) leader_hints: Mutex<BTreeMap<ShardId, NodeId>>,
    /// Only for the `InterestNotReregistered` canary: the first node each shard's interest
    /// went to.
    pub(crate) first_interest_target: Mutex<BTreeMap<ShardId, NodeId>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    pub(crate) deliveries: Arc<Deliveries>,
    /// Sessions' cursor moves waiting to be proposed per shard.
    pub(crate) acks: Mutex<AckBatcher>,
    /// Wakes the ack flusher when the first move of a round arrives.
    pub(crate) acks_added: tokio::sync::Notify,
    /// This node's sessions' presence, reported to user shards' leaders.
    pub(crate) local_presence: Mutex<LocalBoard>,
    /// Wakes the presence reporter when a session's presence changed.
    pub(crate) local_presence_changed: tokio::sync::Notify,
    /// As a user shard's leader: every node's reports, aggregated.
    pub(crate) presence_board: Mutex<PresenceBoard>,
    /// Wakes the presence announcer when a report arrived.
    pub(crate) presence_board_changed: tokio::sync::Notify,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Cluster {
    /// Opens the store, starts a Raft group for every local shard and initialises the groups
    /// this node is the preferred leader of (exactly once: only a pristine group initialises,
    /// and only on its first-ranked replica).
    pub async fn start(config: Config, env: NodeEnv, transport: Arc<Transport>) -> Result<Arc<Self>, anyhow::Error> {
        let store_config = StoreConfig {
            writer: env.writer,
            durability: env.durability,
            faults: env.storage_faults.clone(),
            ..StoreConfig::new(config.data_dir.join("lmdb"))
        };
        let store = Store::open(&store_config)?;
        let node_ids: Vec<NodeId> = config.nodes.iter().map(|node| node.id).collect();
        let members: BTreeMap<NodeId, NodeInfo> =
            config.nodes.iter().map(|node| (node.id, NodeInfo { addr: node.peer_addr.to_string() })).collect();
        let raft_config = Arc::new(raft_config(&config)?);
        let router = Router::new(transport.clone());
        let mut placement = BTreeMap::new();
        let mut groups = BTreeMap::new();
        let mut pristine = Vec::new();
        for shard in (0..config.shards).map(ShardId) {
            let shard_replicas = replicas(shard, &node_ids);
            if shard_replicas.contains(&config.node_id) {
                let raft = Raft::new(
                    config.node_id,
                    raft_config.clone(),
                    ShardNetworkFactory::new(router.clone(), shard),
                    store.log(shard),
                    store.state_machine(shard),
                )
                .await?;
                if shard_replicas[0] == config.node_id && !raft.is_initialized().await? {
                    let voters: BTreeMap<NodeId, NodeInfo> =
                        shard_replicas.iter().map(|id| (*id, members[id].clone())).collect();
                    pristine.push((shard, voters));
                }
                groups.insert(shard, raft);
            }
            placement.insert(shard, shard_replicas);
        }
        let cluster = Arc::new(Self {
            config,
            store,
            groups,
            placement,
            transport: transport.clone(),
            leader_hints: Mutex::new(BTreeMap::new()),
            first_interest_target: Mutex::new(BTreeMap::new()),
            metrics: Arc::new(Metrics::default()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            deliveries: Arc::new(Deliveries::default()),
            acks: Mutex::new(AckBatcher::default()),
            acks_added: tokio::sync::Notify::new(),
            local_presence: Mutex::new(LocalBoard::new()),
            local_presence_changed: tokio::sync::Notify::new(),
            presence_board: Mutex::new(PresenceBoard::new()),
            presence_board_changed: tokio::sync::Notify::new(),
            clock: env.clock.clone(),
        });
        // Serve peers before initialising: a group's first membership entry commits only once a
        // majority of its replicas answer, and they are starting up just like this node.
        transport.serve(Arc::new(peer::Handler(cluster.clone())));
        for (shard, voters) in pristine {
            let raft = cluster.groups[&shard].clone();
            crate::spawn(async move {
                match raft.initialize(voters).await {
                    Ok(()) => tracing::debug!(%shard, "initialised shard group"),
                    Err(error) => tracing::warn!(%shard, %error, "initialising shard group failed"),
                }
            });
        }
        let relay = cluster.clone();
        crate::spawn(async move { relay.relay_outboxes().await });
        let refresher = cluster.clone();
        crate::spawn(async move { refresher.refresh_interest().await });
        let flusher = cluster.clone();
        crate::spawn(async move { flusher.flush_acks().await });
        let reporter = cluster.clone();
        crate::spawn(async move { reporter.report_presence().await });
        let announcer = cluster.clone();
        crate::spawn(async move { announcer.announce_presence().await });
        Ok(cluster)
    }

    /// The node's clock (from its `NodeEnv`).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Local sessions' subscriptions and, as a leader, other nodes' interest.
    pub fn deliveries(&self) -> &Arc<Deliveries> {
        &self.deliveries
    }

    /// The node's store (for local reads after [`Cluster::linearizable_read`]).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The local Raft group of `shard`, if this node replicates it.
    pub fn group(&self, shard: ShardId) -> Option<&Raft> {
        self.groups.get(&shard)
    }

    /// Every local group.
    pub fn groups(&self) -> &BTreeMap<ShardId, Raft> {
        &self.groups
    }

    /// The replicas of `shard`, preferred leader first.
    pub fn replicas(&self, shard: ShardId) -> Option<&[NodeId]> {
        self.placement.get(&shard).map(Vec::as_slice)
    }

    /// True when every local shard knows its leader.
    pub fn is_ready(&self) -> bool {
        self.groups.values().all(|raft| raft.metrics().borrow_watched().current_leader.is_some())
    }

    /// Graceful shutdown: hands every leadership to another replica, stops the groups, closes
    /// the transport and the store (the writer finishes what is queued first).
    pub async fn shutdown(self: &Arc<Self>) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let me = self.config.node_id;
        let mut handed_off = Vec::new();
        for (shard, raft) in &self.groups {
            if raft.metrics().borrow_watched().current_leader != Some(me) {
                continue;
            }
            let Some(&to) = self.placement[shard].iter().find(|&&id| id != me) else {
                continue;
            };
            match raft.trigger().transfer_leader(to).await {
                Ok(()) => handed_off.push(raft),
                Err(error) => tracing::warn!(%shard, %error, "leadership hand-off failed"),
            }
        }
        let handoff_deadline = self.clock.now() + LEADERSHIP_HANDOFF_TIMEOUT;
        for raft in handed_off {
            let remaining = handoff_deadline.saturating_duration_since(self.clock.now());
            let _ = raft
                .wait(Some(remaining))
                .metrics(|metrics| metrics.current_leader != Some(me), "leadership handed off")
                .await;
        }
        for raft in self.groups.values() {
            let _ = raft.shutdown().await;
        }
        self.transport.close();
    }
}

fn raft_config(config: &Config) -> Result<openraft::Config, anyhow::Error> {
    let timings = &config.raft;
    let raft = openraft::Config {
        cluster_name: "natter".into(),
        heartbeat_interval: timings.heartbeat_interval_ms,
        election_timeout_min: timings.election_timeout_min_ms,
        election_timeout_max: timings.election_timeout_max_ms,
        // A batch of 64 maximal (64 KiB) messages stays under the 16 MiB peer frame limit.
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timings.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: timings.logs_kept_after_snapshot,
        ..Default::default()
    };
    Ok(raft.validate()?)
}

/// Every shard id that `node` replicates, for tests and tools.
pub fn local_shards(node: NodeId, nodes: &[NodeId], shard_count: u32) -> BTreeSet<ShardId> {
    (0..shard_count).map(ShardId).filter(|&shard| replicas(shard, nodes).contains(&node)).collect()
}
