//! Interest: which nodes want which topics, registered with each shard's leader and renewed,
//! and the leader's answer telling each node where every topic stands (so its sessions fill
//! gaps and find missed joins).

use std::collections::BTreeMap;
use std::sync::Arc;

use natter_canary::{self as canary, Canary};
use natter_raft::placement::ShardId;
use natter_raft::types::NodeId;
use openraft::async_runtime::watch::WatchReceiver;

use super::{Listing, Push, Topic, INTEREST_REFRESH};
use crate::peers::rpc::{PeerRequest, PeerResponse};
use crate::shards::Cluster;

impl Cluster {
    /// Renews this node's interest with the leader of every shard its sessions want, and tells
    /// sessions where each topic stands so they can fill gaps and find missed joins. Between
    /// the full rounds (every [`INTEREST_REFRESH`]) it registers topics the node has just
    /// started to want, batched, so a new session's pushes start without waiting a second.
    pub(crate) async fn refresh_interest(self: Arc<Self>) {
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
    pub(crate) async fn register_interest(&self, topics: Vec<Topic>) {
        let me = self.config.node_id;
        let mut by_shard: BTreeMap<ShardId, Vec<Topic>> = BTreeMap::new();
        for topic in topics {
            by_shard.entry(topic.shard(self.config.shards)).or_default().push(topic);
        }
        for (shard, topics) in by_shard {
            let replicas = self.placement[&shard].clone();
            let mut target = self.leader_guess(shard, &replicas);
            let follow_hints = !canary::active(Canary::InterestNotReregistered);
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
    pub(crate) fn interest_local(&self, shard: ShardId, node: NodeId, topics: &[Topic]) -> PeerResponse {
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
}
