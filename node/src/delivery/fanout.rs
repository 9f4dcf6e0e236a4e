//! Fan-out: what committed (a shard leader's [`Effect`]s) and what is relayed (typing) goes to
//! every node interested in its topic, in order, one RPC per node.

use natter_raft::command::Effect;
use natter_raft::placement::ShardId;
use natter_raft::types::NodeId;
use openraft::async_runtime::watch::WatchReceiver;

use super::{Push, INTEREST_REFRESH};
use crate::peers::rpc::{PeerRequest, PeerResponse};
use crate::shards::Cluster;

impl Cluster {
    /// Leader side, after an entry committed: pushes what it did to every interested node.
    /// A batch's messages go to each node in one RPC, in order.
    pub(crate) fn push_effects(&self, shard: ShardId, effects: Vec<Effect>) {
        let mut messages = Vec::new();
        for effect in effects {
            match effect {
                Effect::Appended(message) => messages.push(Push::Message(message)),
                Effect::Receipt { conversation, user, delivered, read } => {
                    self.push(shard, Push::Receipt { conversation, user, delivered, read })
                }
                Effect::Joined { user, conversation } => self.push(shard, Push::Joined { user, conversation }),
            }
        }
        self.push_all(shard, messages);
    }

    /// Leader side, after an append, a cursor move or a join committed: push it to every
    /// interested node.
    pub(crate) fn push(&self, shard: ShardId, push: Push) {
        self.push_all(shard, vec![push]);
    }

    /// Pushes `pushes`, all of one topic, to the nodes interested in it: one RPC per node,
    /// so they arrive in order (a batch's messages sent apart would race, and every session
    /// that saw a later seq first would read the gap from the shard).
    pub(crate) fn push_all(&self, shard: ShardId, pushes: Vec<Push>) {
        let Some(first) = pushes.first() else { return };
        debug_assert!(pushes.iter().all(|push| push.topic() == first.topic()), "one topic per push_all");
        for node in self.deliveries.interested(&first.topic(), self.clock.now()) {
            self.push_to(node, shard, pushes.clone());
        }
    }

    /// Hands `pushes` to `node`'s sessions, in order: directly when it is this node, else by one RPC.
    pub(crate) fn push_to(&self, node: NodeId, shard: ShardId, pushes: Vec<Push>) {
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
    pub(crate) fn relay_local(&self, shard: ShardId, push: Push) -> PeerResponse {
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
}
