//! The presence shells around the pure boards: sessions' presence reported to each user
//! shard's leader, and a leader's changes announced to the nodes watching (last-seen stored on
//! the offline transition).

use std::collections::BTreeMap;
use std::sync::Arc;

use natter_proto::{ActivityStatus, UserId};
use natter_raft::command::Command;
use natter_raft::placement::{shard_of_user, ShardId};
use natter_raft::types::NodeId;
use openraft::async_runtime::watch::WatchReceiver;

use super::LocalPresence;
use crate::delivery::{Push, INTEREST_REFRESH};
use crate::peers::rpc::{PeerRequest, PeerResponse};
use crate::shards::Cluster;

impl Cluster {
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
    pub(crate) async fn report_presence(self: Arc<Self>) {
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
    pub(crate) fn presence_report_local(
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
    pub(crate) async fn announce_presence(self: Arc<Self>) {
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
}
