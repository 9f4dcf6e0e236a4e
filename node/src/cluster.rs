//! The node's shard groups: bootstrap, proposals from any node, linearizable reads, the peer
//! RPC handler, status for operators, and graceful shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use natter_canary::Canary;
use natter_proto::{ActivityStatus, ConversationId, DeviceId, MessageRecord, UserId};
use natter_raft::command::{Command, CursorMove, Placed, Response};
use natter_raft::placement::{replicas, shard_of_user, ShardId};
use natter_raft::query::{Query, QueryResult};
use natter_raft::store::{Store, StoreConfig};
use natter_raft::types::{NodeId, NodeInfo, Raft, SnapshotMeta};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ReadPolicy, ServerState};
use serde::Serialize;
use tokio::time::Instant;

use crate::acks::{AckBatcher, ACK_FLUSH_INTERVAL};
use crate::config::Config;
use crate::delivery::{Deliveries, Listing, Push, Topic, INTEREST_REFRESH};
use crate::env::{Clock, NodeEnv};
use crate::metrics::Metrics;
use crate::network::{Router, ShardNetworkFactory};
use crate::presence::{LocalBoard, LocalPresence, PresenceBoard};
use crate::rpc::{PeerRequest, PeerResponse};
use crate::transport::{PeerHandler, PeerState, Transport};

/// Pause between proposal attempts when no leader is known.
pub const PROPOSE_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause between proposal attempts.
pub const PROPOSE_RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);
/// How often a leader relays its shards' outbox items to their users' shards.
pub const OUTBOX_RELAY_INTERVAL: Duration = Duration::from_millis(50);
/// Most outbox items relayed per shard per round.
pub const OUTBOX_BATCH_MAX: usize = 256;
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

/// One shard as the admin view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// The shard id.
    pub shard: u32,
    /// Its replicas, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node's term for the shard.
    pub term: u64,
    /// This node's role.
    pub role: String,
    /// Highest committed log index this node knows of.
    pub commit_index: u64,
    /// Highest applied log index on this node.
    pub applied_index: u64,
}

/// A node as the admin view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: NodeId,
    /// Inter-node address.
    pub peer_addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// This node's connection to it (`self` for this node).
    pub connection: String,
}

/// The admin view of the cluster from this node.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub node_id: NodeId,
    /// Shard count.
    pub shards: u32,
    /// Every node.
    pub nodes: Vec<NodeStatus>,
    /// The shards this node replicates.
    pub local_shards: Vec<ShardStatus>,
    /// Whether every local shard knows its leader.
    pub ready: bool,
}

/// A running node's shard groups.
pub struct Cluster {
    config: Config,
    store: Arc<Store>,
    groups: BTreeMap<ShardId, Raft>,
    placement: BTreeMap<ShardId, Vec<NodeId>>,
    transport: Arc<Transport>,
    leader_hints: Mutex<BTreeMap<ShardId, NodeId>>,
    /// Only for the `InterestNotReregistered` canary: the first node each shard's interest
    /// went to.
    first_interest_target: Mutex<BTreeMap<ShardId, NodeId>>,
    metrics: Arc<Metrics>,
    stopping: std::sync::atomic::AtomicBool,
    deliveries: Arc<Deliveries>,
    /// Sessions' cursor moves waiting to be proposed per shard.
    acks: Mutex<AckBatcher>,
    /// Wakes the ack flusher when the first move of a round arrives.
    acks_added: tokio::sync::Notify,
    /// This node's sessions' presence, reported to user shards' leaders.
    local_presence: Mutex<LocalBoard>,
    /// Wakes the presence reporter when a session's presence changed.
    local_presence_changed: tokio::sync::Notify,
    /// As a user shard's leader: every node's reports, aggregated.
    presence_board: Mutex<PresenceBoard>,
    /// Wakes the presence announcer when a report arrived.
    presence_board_changed: tokio::sync::Notify,
    clock: Arc<dyn Clock>,
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
        transport.serve(Arc::new(Handler(cluster.clone())));
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

    /// The replicated outbox (DESIGN §3): a membership change commits on the conversation's
    /// shard with one outbox item per affected user; the shard's leader proposes each item on
    /// the user's shard and then acknowledges the batch on its own. A relay that dies between
    /// the two resends the batch later, which the user shard ignores (items are versioned).
    async fn relay_outboxes(self: Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        let me = self.config.node_id;
        while !self.stopping.load(Relaxed) {
            for (shard, raft) in &self.groups {
                if raft.metrics().borrow_watched().current_leader != Some(me) {
                    continue;
                }
                let items = match self.store.read_shard(*shard, |reader, txn| reader.outbox(txn, OUTBOX_BATCH_MAX)) {
                    Ok(items) => items,
                    Err(error) => {
                        tracing::warn!(%shard, %error, "reading the outbox failed");
                        continue;
                    }
                };
                let mut delivered = Vec::with_capacity(items.len());
                for (id, item) in items {
                    let target = natter_raft::placement::shard_of_user(&item.user, self.config.shards);
                    match self.propose(target, item.command).await {
                        Ok(_) => delivered.push(id),
                        Err(error) => {
                            tracing::debug!(%shard, %error, "outbox relay will retry");
                            break;
                        }
                    }
                }
                if !delivered.is_empty() {
                    if let Err(error) = self.propose(*shard, Command::AckOutbox { ids: delivered }).await {
                        tracing::debug!(%shard, %error, "outbox acknowledgement will be retried");
                    }
                }
            }
            tokio::time::sleep(OUTBOX_RELAY_INTERVAL).await;
        }
    }

    /// Queues a session's cursor move for the shard's next `MoveCursors` batch; false if the
    /// queue is full, and the caller proposes the move itself.
    pub fn submit_cursor_move(&self, shard: ShardId, step: CursorMove) -> bool {
        let mut acks = self.acks.lock().expect("acks lock");
        let was_empty = acks.is_empty();
        let queued = acks.handle_move(shard, step);
        if queued && was_empty {
            self.acks_added.notify_one();
        }
        queued
    }

    /// Proposes the queued cursor moves, one `MoveCursors` entry per shard, every
    /// [`ACK_FLUSH_INTERVAL`] while there are any. A batch that fails (no leader in time) goes
    /// back into the queue for the next round.
    async fn flush_acks(self: Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        while !self.stopping.load(Relaxed) {
            if self.acks.lock().expect("acks lock").is_empty() {
                tokio::select! {
                    biased;
                    () = self.acks_added.notified() => {}
                    // Checks `stopping` now and then.
                    () = tokio::time::sleep(INTEREST_REFRESH) => continue,
                }
            }
            tokio::time::sleep(ACK_FLUSH_INTERVAL).await;
            let batches = self.acks.lock().expect("acks lock").poll_batches();
            for (shard, moves) in batches {
                let cluster = self.clone();
                crate::spawn(async move {
                    let command = Command::MoveCursors { moves: moves.clone() };
                    match cluster.propose(shard, command).await {
                        Ok(Response::Cursors { .. }) => {}
                        Ok(other) => tracing::warn!(%shard, ?other, "a cursor batch was refused"),
                        Err(error) => {
                            tracing::debug!(%shard, %error, "a cursor batch will be retried");
                            cluster.acks.lock().expect("acks lock").handle_failed(shard, moves);
                            cluster.acks_added.notify_one();
                        }
                    }
                });
            }
        }
    }

    /// The node's clock (from its `NodeEnv`).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Local sessions' subscriptions and, as a leader, other nodes' interest.
    pub fn deliveries(&self) -> &Arc<Deliveries> {
        &self.deliveries
    }

    /// Renews this node's interest with the leader of every shard its sessions want, and tells
    /// sessions where each topic stands so they can fill gaps and find missed joins. Between
    /// the full rounds (every [`INTEREST_REFRESH`]) it registers topics the node has just
    /// started to want, batched, so a new session's pushes start without waiting a second.
    async fn refresh_interest(self: Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut next_full = self.clock.now();
        while !self.stopping.load(Relaxed) {
            let topics = if self.clock.now() >= next_full {
                next_full = self.clock.now() + INTEREST_REFRESH;
                // A full round covers the fresh topics too.
                self.deliveries.take_fresh();
                self.deliveries.wanted()
            } else {
                self.deliveries.take_fresh()
            };
            self.register_interest(topics).await;
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(next_full) => {}
                () = self.deliveries.fresh_added() => {}
            }
        }
    }

    /// Registers this node's interest in `topics` with their shards' leaders and dispatches
    /// the answers to local sessions.
    async fn register_interest(&self, topics: Vec<Topic>) {
        let me = self.config.node_id;
        let mut by_shard: BTreeMap<ShardId, Vec<Topic>> = BTreeMap::new();
        for topic in topics {
            by_shard.entry(topic.shard(self.config.shards)).or_default().push(topic);
        }
        for (shard, topics) in by_shard {
            let replicas = self.placement[&shard].clone();
            let mut target = self.leader_guess(shard, &replicas);
            let follow_hints = !natter_canary::active(Canary::InterestNotReregistered);
            if !follow_hints {
                // The planted bug: interest keeps going to the first leader it reached.
                target = *self.first_interest_target.lock().expect("first target lock").entry(shard).or_insert(target);
            }
            for _ in 0..2 {
                let answer = if target == me {
                    self.interest_local(shard, me, &topics)
                } else {
                    let request = PeerRequest::Interest { shard, node: me, topics: topics.clone() };
                    self.transport
                        .call(target, &request, None, INTEREST_REFRESH)
                        .await
                        .unwrap_or_else(|error| PeerResponse::Failed(error.to_string()))
                };
                match answer {
                    PeerResponse::Interest(progress) => {
                        for push in progress {
                            self.deliveries.dispatch(push);
                        }
                        break;
                    }
                    PeerResponse::NotLeader { leader: Some(leader) } if follow_hints => target = leader,
                    _ => break,
                }
            }
        }
    }

    /// Leader side of [`PeerRequest::Interest`].
    fn interest_local(&self, shard: ShardId, node: NodeId, topics: &[Topic]) -> PeerResponse {
        let Some(raft) = self.groups.get(&shard) else {
            return PeerResponse::UnknownShard;
        };
        let leader = raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.config.node_id) {
            return PeerResponse::NotLeader { leader };
        }
        let fresh = self.deliveries.register_interest(node, topics, self.clock.now());
        let progress = self.store.read_shard(shard, |reader, txn| {
            let mut progress = Vec::with_capacity(topics.len());
            for topic in topics {
                match topic {
                    Topic::Conversation(conversation) => {
                        if let Some(view) = reader.conversation(txn, conversation)? {
                            progress.push(Push::Behind { conversation: *conversation, last_seq: view.last_seq });
                        }
                    }
                    Topic::User(user) => {
                        let digest = Listing::new(reader.user_conversations(txn, user)?).digest();
                        progress.push(Push::Listing { user: user.clone(), digest });
                    }
                    Topic::Presence(user) => {
                        // Every refresh carries where each watched user stands, so a lost
                        // presence push is corrected within a refresh; sessions drop repeats.
                        let record = reader.user(txn, user)?;
                        let (status, custom) = self.presence_board.lock().expect("board lock").status(user);
                        progress.push(Push::Presence {
                            user: user.clone(),
                            status,
                            last_seen: record.last_seen,
                            custom,
                            privacy: record.settings.presence_privacy,
                        });
                    }
                }
            }
            Ok(progress)
        });
        // Receipts pushed before this leader knew of `node` are lost to it: send the current
        // ones (per member, the highest over its devices) for each newly registered conversation.
        for topic in fresh {
            let Topic::Conversation(conversation) = topic else { continue };
            let receipts = self.store.read_shard(shard, |reader, txn| {
                let mut highest: BTreeMap<natter_proto::UserId, (u64, u64)> = BTreeMap::new();
                for (member, _, cursor) in reader.cursors(txn, &conversation)? {
                    let entry = highest.entry(member).or_default();
                    *entry = (entry.0.max(cursor.delivered), entry.1.max(cursor.read));
                }
                Ok(highest)
            });
            for (user, (delivered, read)) in receipts.unwrap_or_default() {
                self.push_to(node, shard, vec![Push::Receipt { conversation, user, delivered, read }]);
            }
        }
        match progress {
            Ok(progress) => PeerResponse::Interest(progress),
            Err(error) => PeerResponse::Failed(error.to_string()),
        }
    }

    /// Leader side, after cursor moves committed: pushes each (conversation, member)'s
    /// receipt, the highest cursors over the member's devices, read from the state this leader
    /// just applied, so receipts never go backwards.
    fn push_receipts(&self, shard: ShardId, moved: BTreeSet<(ConversationId, UserId)>) {
        for (conversation, user) in moved {
            let receipt = self.store.read_shard(shard, |reader, txn| {
                let mut highest = (0, 0);
                for (owner, _, cursor) in reader.cursors(txn, &conversation)? {
                    if owner == user {
                        highest = (highest.0.max(cursor.delivered), highest.1.max(cursor.read));
                    }
                }
                Ok(highest)
            });
            if let Ok((delivered, read)) = receipt {
                self.push(shard, Push::Receipt { conversation, user, delivered, read });
            }
        }
    }

    /// Leader side, after an append, a cursor move or a join committed: push it to every
    /// interested node.
    fn push(&self, shard: ShardId, push: Push) {
        self.push_all(shard, vec![push]);
    }

    /// Pushes `pushes`, all of one topic, to the nodes interested in it: one RPC per node,
    /// so they arrive in order (a batch's messages sent apart would race, and every session
    /// that saw a later seq first would read the gap from the shard).
    fn push_all(&self, shard: ShardId, pushes: Vec<Push>) {
        let Some(first) = pushes.first() else { return };
        debug_assert!(pushes.iter().all(|push| push.topic() == first.topic()), "one topic per push_all");
        for node in self.deliveries.interested(&first.topic(), self.clock.now()) {
            self.push_to(node, shard, pushes.clone());
        }
    }

    /// A session authenticated as `user` (presence counts it as a device).
    pub fn presence_open(&self, session: u64, user: UserId) {
        self.local_presence.lock().expect("presence lock").handle_open(session, user, self.clock.now());
        self.local_presence_changed.notify_one();
    }

    /// A session's explicit `presence` frame.
    pub fn presence_activity(&self, session: u64, status: ActivityStatus, custom: Option<String>) {
        self.local_presence.lock().expect("presence lock").handle_activity(session, status, custom, self.clock.now());
        self.local_presence_changed.notify_one();
    }

    /// Any other frame from a session: its device is in use.
    pub fn presence_frame(&self, session: u64) {
        self.local_presence.lock().expect("presence lock").handle_frame(session, self.clock.now());
        self.local_presence_changed.notify_one();
    }

    /// A session ended.
    pub fn presence_close(&self, session: u64) {
        self.local_presence.lock().expect("presence lock").handle_close(session, self.clock.now());
        self.local_presence_changed.notify_one();
    }

    /// Reports this node's sessions' presence to each user shard's leader: changes at once,
    /// everything every `PRESENCE_REPORT_INTERVAL` (so a new leader learns it). A report
    /// that fails is repeated by the next full round.
    async fn report_presence(self: Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        let me = self.config.node_id;
        while !self.stopping.load(Relaxed) {
            let reports = self.local_presence.lock().expect("presence lock").poll_reports(self.clock.now());
            let mut by_shard: BTreeMap<ShardId, Vec<(UserId, LocalPresence)>> = BTreeMap::new();
            for (user, presence) in reports {
                by_shard.entry(shard_of_user(&user, self.config.shards)).or_default().push((user, presence));
            }
            for (shard, reports) in by_shard {
                let target = self.leader_guess(shard, &self.placement[&shard]);
                if target == me {
                    let _ = self.presence_report_local(shard, me, reports);
                    continue;
                }
                let transport = self.transport.clone();
                let request = PeerRequest::PresenceReport { shard, node: me, reports };
                crate::spawn(async move {
                    let _ = transport.call(target, &request, None, INTEREST_REFRESH).await;
                });
            }
            let deadline = self.local_presence.lock().expect("presence lock").poll_timeout();
            // Checks `stopping` now and then, like the other loops.
            let deadline = deadline.unwrap_or_else(|| self.clock.now() + INTEREST_REFRESH);
            tokio::select! {
                biased;
                () = self.local_presence_changed.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Leader side of [`PeerRequest::PresenceReport`].
    fn presence_report_local(
        &self,
        shard: ShardId,
        node: NodeId,
        reports: Vec<(UserId, LocalPresence)>,
    ) -> PeerResponse {
        let Some(raft) = self.groups.get(&shard) else {
            return PeerResponse::UnknownShard;
        };
        let leader = raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.config.node_id) {
            return PeerResponse::NotLeader { leader };
        }
        self.presence_board.lock().expect("board lock").handle_report(node, reports, self.clock.now());
        self.presence_board_changed.notify_one();
        PeerResponse::Delivered
    }

    /// As a user shard's leader: announces each user's changed presence to the nodes watching
    /// it, and stores last-seen when a user goes offline. Users of shards this node no longer
    /// leads are dropped without a word (their new leader learns them from the next reports).
    async fn announce_presence(self: Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        let me = Some(self.config.node_id);
        while !self.stopping.load(Relaxed) {
            let shards = self.config.shards;
            let leads = |user: &UserId| {
                let shard = shard_of_user(user, shards);
                self.groups.get(&shard).is_some_and(|raft| raft.metrics().borrow_watched().current_leader == me)
            };
            let changes = {
                let mut board = self.presence_board.lock().expect("board lock");
                board.retain_shards(leads);
                board.poll_changes(self.clock.now())
            };
            for change in changes {
                let shard = shard_of_user(&change.user, shards);
                let record =
                    self.store.read_shard(shard, |reader, txn| reader.user(txn, &change.user)).unwrap_or_default();
                let mut last_seen = record.last_seen;
                if change.went_offline {
                    let ts = self.clock.wall_ms();
                    last_seen = Some(last_seen.map_or(ts, |seen| seen.max(ts)));
                    let cluster = self.clone();
                    let user = change.user.clone();
                    crate::spawn(async move {
                        if let Err(error) = cluster.propose(shard, Command::SetLastSeen { user, ts }).await {
                            tracing::debug!(%shard, %error, "last-seen not stored");
                        }
                    });
                }
                let push = Push::Presence {
                    user: change.user,
                    status: change.status,
                    last_seen,
                    custom: change.custom,
                    privacy: record.settings.presence_privacy,
                };
                self.push(shard, push);
            }
            let deadline = self.presence_board.lock().expect("board lock").poll_timeout();
            let deadline = deadline.unwrap_or_else(|| self.clock.now() + INTEREST_REFRESH);
            tokio::select! {
                biased;
                () = self.presence_board_changed.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Fans an ephemeral push (typing) out to the nodes interested in its topic, through the
    /// leader of `shard`, which is the one that knows them. Best effort, as typing is: one
    /// try at the leader this node knows of, nothing stored, nothing retried.
    pub fn relay(&self, shard: ShardId, push: Push) {
        let leader = self.groups.get(&shard).and_then(|raft| raft.metrics().borrow_watched().current_leader);
        let leader = leader.or_else(|| self.leader_hints.lock().expect("hints lock").get(&shard).copied());
        let Some(leader) = leader.or_else(|| self.placement.get(&shard).and_then(|replicas| replicas.first().copied()))
        else {
            return;
        };
        if leader == self.config.node_id {
            let _ = self.relay_local(shard, push);
            return;
        }
        let transport = self.transport.clone();
        let request = PeerRequest::Relay { shard, push };
        crate::spawn(async move {
            let _ = transport.call(leader, &request, None, INTEREST_REFRESH).await;
        });
    }

    /// Leader side of [`PeerRequest::Relay`].
    fn relay_local(&self, shard: ShardId, push: Push) -> PeerResponse {
        let Some(raft) = self.groups.get(&shard) else {
            return PeerResponse::UnknownShard;
        };
        let leader = raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.config.node_id) {
            return PeerResponse::NotLeader { leader };
        }
        self.push(shard, push);
        PeerResponse::Delivered
    }

    /// Hands `pushes` to `node`'s sessions, in order: directly when it is this node, else by one RPC.
    fn push_to(&self, node: NodeId, shard: ShardId, pushes: Vec<Push>) {
        if node == self.config.node_id {
            for push in pushes {
                self.deliveries.dispatch(push);
            }
            return;
        }
        let transport = self.transport.clone();
        let request = PeerRequest::Deliver { shard, pushes };
        // A lost push is found by the receiver's next refresh; never wait for it here.
        crate::spawn(async move {
            let _ = transport.call(node, &request, None, INTEREST_REFRESH).await;
        });
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

    /// Commits `command` in `shard`'s log from this node, whichever node leads the shard:
    /// forwards to the leader, follows leader changes, and retries the same command until
    /// `proposal_timeout_ms` passes. Commands are idempotent, so a retry after an ambiguous
    /// failure cannot apply twice.
    pub async fn propose(&self, shard: ShardId, command: Command) -> Result<Response, ClusterError> {
        let started = self.clock.now();
        let result = self.propose_inner(shard, command, started).await;
        match &result {
            Ok(_) => {
                self.metrics.proposals_committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.metrics.proposal_latency.observe(self.clock.now() - started);
            }
            Err(_) => {
                self.metrics.proposals_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        result
    }

    async fn propose_inner(
        &self,
        shard: ShardId,
        command: Command,
        started: Instant,
    ) -> Result<Response, ClusterError> {
        let replicas = self.placement.get(&shard).ok_or(ClusterError::NoSuchShard(shard))?.clone();
        let deadline = started + Duration::from_millis(self.config.proposal_timeout_ms);
        let mut target = self.leader_guess(shard, &replicas);
        let mut pause = PROPOSE_RETRY_PAUSE;
        let mut attempt = 0usize;
        let mut last_failure = String::from("no attempt finished");
        loop {
            let now = self.clock.now();
            if now >= deadline {
                return Err(ClusterError::Unavailable { shard, reason: last_failure });
            }
            let remaining = deadline - now;
            attempt += 1;
            let outcome = if target == self.config.node_id {
                self.propose_local(shard, command.clone(), remaining).await
            } else {
                self.metrics.proposals_forwarded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let request = PeerRequest::Propose { shard, command: command.clone() };
                match self.transport.call(target, &request, None, remaining).await {
                    Ok(response) => response,
                    Err(error) => PeerResponse::Failed(error.to_string()),
                }
            };
            match outcome {
                PeerResponse::Proposed(response) => {
                    self.leader_hints.lock().expect("hints lock").insert(shard, target);
                    return Ok(response);
                }
                PeerResponse::NotLeader { leader: Some(leader) } if leader != target => {
                    last_failure = format!("node {target} forwarded to node {leader}");
                    target = leader;
                    continue;
                }
                PeerResponse::NotLeader { .. } => last_failure = format!("node {target} knows no leader"),
                PeerResponse::UnknownShard => last_failure = format!("node {target} has no replica"),
                PeerResponse::Failed(reason) => last_failure = reason,
                other => last_failure = format!("unexpected answer {other:?}"),
            }
            // No usable hint: try the next replica after a growing pause.
            target = replicas[attempt % replicas.len()];
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(self.clock.now()))).await;
            pause = (pause * 2).min(PROPOSE_RETRY_PAUSE_MAX);
        }
    }

    fn leader_guess(&self, shard: ShardId, replicas: &[NodeId]) -> NodeId {
        if let Some(raft) = self.groups.get(&shard) {
            if let Some(leader) = raft.metrics().borrow_watched().current_leader {
                return leader;
            }
        }
        if let Some(&hint) = self.leader_hints.lock().expect("hints lock").get(&shard) {
            return hint;
        }
        replicas[0]
    }

    async fn propose_local(&self, shard: ShardId, command: Command, remaining: Duration) -> PeerResponse {
        let Some(raft) = self.groups.get(&shard) else {
            return PeerResponse::UnknownShard;
        };
        // The messages this command may append, to push once they commit (seq and ts are
        // filled in from the answer).
        let record = |conversation: &ConversationId, sender: &UserId, device: &DeviceId, client_seq, body: &String| {
            MessageRecord {
                conversation: *conversation,
                seq: 0,
                sender: sender.clone(),
                sender_device: device.clone(),
                client_seq,
                ts: 0,
                body: body.clone(),
            }
        };
        let appends: Vec<MessageRecord> = match &command {
            Command::Append { conversation, sender, device, client_seq, body, .. } => {
                vec![record(conversation, sender, device, *client_seq, body)]
            }
            Command::AppendMany { conversation, sender, device, messages, .. } => messages
                .iter()
                .map(|message| record(conversation, sender, device, message.client_seq, &message.body))
                .collect(),
            _ => Vec::new(),
        };
        // The members whose receipts a committed cursor move changes.
        let moved: Vec<(ConversationId, UserId)> = match &command {
            Command::MoveCursor { conversation, user, .. } => vec![(*conversation, user.clone())],
            Command::MoveCursors { moves } => moves.iter().map(|step| (step.conversation, step.user.clone())).collect(),
            _ => Vec::new(),
        };
        // A join recorded on the user's shard (relayed from the conversation's outbox). A
        // duplicate or stale record is pushed too: sessions already following the conversation
        // ignore it, and a stale one is refused by the membership check when they read it.
        let joined = match &command {
            Command::ApplyMembership { user, conversation, member: true, .. } => Some((user.clone(), *conversation)),
            _ => None,
        };
        match tokio::time::timeout(remaining, raft.client_write(command)).await {
            Ok(Ok(written)) => {
                let placed: Vec<Option<(u64, u64)>> = match &written.data {
                    Response::Appended { seq, ts, duplicate: false, .. } => vec![Some((*seq, *ts))],
                    Response::AppendedMany { outcomes } => outcomes
                        .iter()
                        .map(|outcome| match outcome {
                            Ok(Placed { seq, ts, duplicate: false, .. }) => Some((*seq, *ts)),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let messages: Vec<Push> = appends
                    .into_iter()
                    .zip(placed)
                    .filter_map(|(mut message, place)| {
                        (message.seq, message.ts) = place?;
                        Some(Push::Message(message))
                    })
                    .collect();
                self.push_all(shard, messages);
                let moved: BTreeSet<(ConversationId, UserId)> = match &written.data {
                    Response::Cursor { .. } => moved.into_iter().collect(),
                    Response::Cursors { outcomes } => moved
                        .into_iter()
                        .zip(outcomes)
                        .filter(|(_, outcome)| outcome.is_ok())
                        .map(|(pair, _)| pair)
                        .collect(),
                    _ => BTreeSet::new(),
                };
                self.push_receipts(shard, moved);
                if let (Some((user, conversation)), Response::Done) = (joined, &written.data) {
                    self.push(shard, Push::Joined { user, conversation });
                }
                PeerResponse::Proposed(written.data)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))))
            | Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)))) => {
                PeerResponse::NotLeader { leader: forward.leader_id }
            }
            Ok(Err(error)) => PeerResponse::Failed(error.to_string()),
            Err(_) => PeerResponse::Failed("proposal timed out".into()),
        }
    }

    /// Waits until this node's replica of `shard` has applied everything committed before the
    /// call (ReadIndex through the leader), so a local read after it is linearizable.
    pub async fn linearizable_read(&self, shard: ShardId) -> Result<(), ClusterError> {
        let raft = self.groups.get(&shard).ok_or(ClusterError::NotReplica(shard))?;
        let replicas = self.placement[&shard].clone();
        let started = self.clock.now();
        let deadline = started + Duration::from_millis(self.config.proposal_timeout_ms);
        let mut target = self.leader_guess(shard, &replicas);
        let mut attempt = 0usize;
        let mut last_failure = String::from("no attempt finished");
        while self.clock.now() < deadline {
            let remaining = deadline.saturating_duration_since(self.clock.now());
            attempt += 1;
            let answer = if target == self.config.node_id {
                self.read_index_local(shard, remaining).await
            } else {
                self.transport
                    .call(target, &PeerRequest::ReadIndex { shard }, None, remaining)
                    .await
                    .unwrap_or_else(|error| PeerResponse::Failed(error.to_string()))
            };
            match answer {
                PeerResponse::ReadIndex(index) => {
                    let remaining = deadline.saturating_duration_since(self.clock.now());
                    return match raft
                        .wait(Some(remaining))
                        .applied_index_at_least(Some(index), "linearizable read")
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(error) => Err(ClusterError::Unavailable { shard, reason: error.to_string() }),
                    };
                }
                PeerResponse::NotLeader { leader: Some(leader) } if leader != target => {
                    target = leader;
                    continue;
                }
                other => last_failure = format!("{other:?}"),
            }
            target = replicas[attempt % replicas.len()];
            tokio::time::sleep(PROPOSE_RETRY_PAUSE).await;
        }
        Err(ClusterError::Unavailable { shard, reason: last_failure })
    }

    /// Reads `shard` linearizably from any node: locally (after a ReadIndex) when this node
    /// replicates the shard, otherwise from a replica, following leader hints and retrying
    /// other replicas until `proposal_timeout_ms` passes.
    pub async fn read(&self, shard: ShardId, query: Query) -> Result<QueryResult, ClusterError> {
        let replicas = self.placement.get(&shard).ok_or(ClusterError::NoSuchShard(shard))?.clone();
        if self.groups.contains_key(&shard) {
            if natter_canary::active(Canary::StaleFollowerRead) {
                return self
                    .store
                    .read_shard(shard, |reader, txn| reader.query(txn, &query))
                    .map_err(|error| ClusterError::Unavailable { shard, reason: error.to_string() });
            }
            return self.read_local(shard, &query).await;
        }
        let deadline = self.clock.now() + Duration::from_millis(self.config.proposal_timeout_ms);
        let mut target = self.leader_hints.lock().expect("hints lock").get(&shard).copied().unwrap_or(replicas[0]);
        let mut attempt = 0usize;
        let mut last_failure = String::from("no attempt finished");
        while self.clock.now() < deadline {
            let remaining = deadline.saturating_duration_since(self.clock.now());
            attempt += 1;
            let request = PeerRequest::Read { shard, query: query.clone() };
            match self.transport.call(target, &request, None, remaining).await {
                Ok(PeerResponse::Read(result)) => return Ok(result),
                Ok(other) => last_failure = format!("node {target} answered {other:?}"),
                Err(error) => last_failure = error.to_string(),
            }
            target = replicas[attempt % replicas.len()];
            tokio::time::sleep(PROPOSE_RETRY_PAUSE).await;
        }
        Err(ClusterError::Unavailable { shard, reason: last_failure })
    }

    async fn read_local(&self, shard: ShardId, query: &Query) -> Result<QueryResult, ClusterError> {
        self.linearizable_read(shard).await?;
        self.store
            .read_shard(shard, |reader, txn| reader.query(txn, query))
            .map_err(|error| ClusterError::Unavailable { shard, reason: error.to_string() })
    }

    async fn read_index_local(&self, shard: ShardId, remaining: Duration) -> PeerResponse {
        let Some(raft) = self.groups.get(&shard) else {
            return PeerResponse::UnknownShard;
        };
        match tokio::time::timeout(remaining, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Ok(Ok(read_log_id)) => PeerResponse::ReadIndex(read_log_id.index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)))) => {
                PeerResponse::NotLeader { leader: forward.leader_id }
            }
            Ok(Err(error)) => PeerResponse::Failed(error.to_string()),
            Err(_) => PeerResponse::Failed("read index timed out".into()),
        }
    }

    async fn handle(&self, request: PeerRequest, snapshot: Vec<u8>) -> PeerResponse {
        let shard = request.shard();
        if let PeerRequest::Propose { command, .. } = request {
            // Forwarded proposals are never forwarded again: the caller follows the hint, so a
            // stale view cannot bounce a proposal between nodes.
            return self.propose_local(shard, command, Duration::from_millis(self.config.proposal_timeout_ms)).await;
        }
        if let PeerRequest::ReadIndex { .. } = request {
            return self.read_index_local(shard, Duration::from_millis(self.config.proposal_timeout_ms)).await;
        }
        if let PeerRequest::Interest { node, topics, .. } = &request {
            return self.interest_local(shard, *node, topics);
        }
        if let PeerRequest::Deliver { pushes, .. } = request {
            for push in pushes {
                self.deliveries.dispatch(push);
            }
            return PeerResponse::Delivered;
        }
        if let PeerRequest::Relay { push, .. } = request {
            return self.relay_local(shard, push);
        }
        if let PeerRequest::PresenceReport { node, reports, .. } = request {
            return self.presence_report_local(shard, node, reports);
        }
        if let PeerRequest::Read { query, .. } = request {
            if !self.groups.contains_key(&shard) {
                return PeerResponse::UnknownShard;
            }
            return match self.read_local(shard, &query).await {
                Ok(result) => PeerResponse::Read(result),
                Err(error) => PeerResponse::Failed(error.to_string()),
            };
        }
        let Some(raft) = self.groups.get(&shard) else {
            return PeerResponse::UnknownShard;
        };
        let failed = |error: &dyn std::fmt::Display| PeerResponse::Failed(error.to_string());
        match request {
            PeerRequest::AppendEntries { rpc, .. } => {
                raft.append_entries(rpc).await.map_or_else(|e| failed(&e), PeerResponse::AppendEntries)
            }
            PeerRequest::Vote { rpc, .. } => raft.vote(rpc).await.map_or_else(|e| failed(&e), PeerResponse::Vote),
            PeerRequest::PreVote { rpc, .. } => {
                raft.pre_vote(rpc).await.map_or_else(|e| failed(&e), PeerResponse::Vote)
            }
            PeerRequest::Snapshot { vote, last_log_id, last_membership, .. } => {
                let snapshot =
                    natter_raft::types::Snapshot { meta: SnapshotMeta { last_log_id, last_membership }, snapshot };
                raft.install_full_snapshot(vote, snapshot).await.map_or_else(|e| failed(&e), PeerResponse::Snapshot)
            }
            PeerRequest::TransferLeader { rpc, .. } => {
                raft.handle_transfer_leader(rpc).await.map_or_else(|e| failed(&e), PeerResponse::TransferLeader)
            }
            PeerRequest::Propose { .. }
            | PeerRequest::ReadIndex { .. }
            | PeerRequest::Read { .. }
            | PeerRequest::Interest { .. }
            | PeerRequest::Deliver { .. }
            | PeerRequest::Relay { .. }
            | PeerRequest::PresenceReport { .. } => unreachable!("handled above"),
        }
    }

    /// True when every local shard knows its leader.
    pub fn is_ready(&self) -> bool {
        self.groups.values().all(|raft| raft.metrics().borrow_watched().current_leader.is_some())
    }

    /// The admin view.
    pub fn status(&self) -> ClusterStatus {
        let peers = self.transport.peer_states();
        let nodes = self
            .config
            .nodes
            .iter()
            .map(|node| NodeStatus {
                id: node.id,
                peer_addr: node.peer_addr.to_string(),
                http_addr: node.http_addr.to_string(),
                connection: if node.id == self.config.node_id {
                    "self".into()
                } else {
                    match peers.get(&node.id) {
                        Some(PeerState::Connected) => "connected".into(),
                        _ => "disconnected".into(),
                    }
                },
            })
            .collect();
        let local_shards = self
            .groups
            .iter()
            .map(|(shard, raft)| {
                let metrics = raft.metrics().borrow_watched().clone();
                ShardStatus {
                    shard: shard.0,
                    replicas: self.placement[shard].clone(),
                    leader: metrics.current_leader,
                    term: metrics.current_term,
                    role: role_name(metrics.state).into(),
                    commit_index: metrics.local_committed.map_or(0, |id| id.index),
                    applied_index: metrics.last_applied.map_or(0, |id| id.index),
                }
            })
            .collect();
        ClusterStatus {
            node_id: self.config.node_id,
            shards: self.config.shards,
            nodes,
            local_shards,
            ready: self.is_ready(),
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        use crate::metrics::counter;
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = String::new();
        let status = self.status();
        let _ = writeln!(out, "# HELP natter_shard_commit_index Highest committed log index known to this node.");
        let _ = writeln!(out, "# TYPE natter_shard_commit_index gauge");
        for shard in &status.local_shards {
            let _ = writeln!(out, "natter_shard_commit_index{{shard=\"{}\"}} {}", shard.shard, shard.commit_index);
        }
        let _ = writeln!(out, "# HELP natter_shard_applied_index Highest log index applied on this node.");
        let _ = writeln!(out, "# TYPE natter_shard_applied_index gauge");
        for shard in &status.local_shards {
            let _ = writeln!(out, "natter_shard_applied_index{{shard=\"{}\"}} {}", shard.shard, shard.applied_index);
        }
        let _ = writeln!(out, "# HELP natter_shard_term Current Raft term of the shard on this node.");
        let _ = writeln!(out, "# TYPE natter_shard_term gauge");
        for shard in &status.local_shards {
            let _ = writeln!(out, "natter_shard_term{{shard=\"{}\"}} {}", shard.shard, shard.term);
        }
        let _ =
            writeln!(out, "# HELP natter_shard_leader Node id of the shard's leader as this node knows it (0: none).");
        let _ = writeln!(out, "# TYPE natter_shard_leader gauge");
        for shard in &status.local_shards {
            let _ = writeln!(out, "natter_shard_leader{{shard=\"{}\"}} {}", shard.shard, shard.leader.unwrap_or(0));
        }
        let _ = writeln!(out, "# HELP natter_shard_is_leader 1 if this node leads the shard.");
        let _ = writeln!(out, "# TYPE natter_shard_is_leader gauge");
        for shard in &status.local_shards {
            let leads = u8::from(shard.leader == Some(status.node_id));
            let _ = writeln!(out, "natter_shard_is_leader{{shard=\"{}\"}} {leads}", shard.shard);
        }
        let _ = writeln!(out, "# HELP natter_peer_connected 1 if this node holds a connection to the peer.");
        let _ = writeln!(out, "# TYPE natter_peer_connected gauge");
        for node in status.nodes.iter().filter(|node| node.id != status.node_id) {
            let _ = writeln!(
                out,
                "natter_peer_connected{{peer=\"{}\"}} {}",
                node.id,
                u8::from(node.connection == "connected")
            );
        }
        counter(
            &mut out,
            "natter_proposals_committed_total",
            "Proposals that committed.",
            self.metrics.proposals_committed.load(Relaxed),
        );
        counter(
            &mut out,
            "natter_proposals_failed_total",
            "Proposals that gave up as unavailable.",
            self.metrics.proposals_failed.load(Relaxed),
        );
        counter(
            &mut out,
            "natter_proposals_forwarded_total",
            "Proposal attempts sent to another node.",
            self.metrics.proposals_forwarded.load(Relaxed),
        );
        self.metrics.proposal_latency.render(
            &mut out,
            "natter_proposal_seconds",
            "Time from propose to committed response.",
        );
        out
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

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
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

struct Handler(Arc<Cluster>);

impl PeerHandler for Handler {
    fn handle(&self, request: PeerRequest, snapshot: Vec<u8>) -> BoxFuture<'static, PeerResponse> {
        let cluster = self.0.clone();
        Box::pin(async move { cluster.handle(request, snapshot).await })
    }
}

/// Every shard id that `node` replicates, for tests and tools.
pub fn local_shards(node: NodeId, nodes: &[NodeId], shard_count: u32) -> BTreeSet<ShardId> {
    (0..shard_count).map(ShardId).filter(|&shard| replicas(shard, nodes).contains(&node)).collect()
}
