//! Delivery (DESIGN §4): push hints from shard leaders to the nodes whose sessions want them,
//! with cursors and gap fills making delivery exactly-once and in order whatever the network
//! does.
//!
//! - Sessions subscribe to conversations on their node ([`Deliveries::subscribe`]).
//! - Every [`INTEREST_REFRESH`] the node tells each shard's leader which of its conversations
//!   it wants ([`Interest`]); the leader keeps that soft state for [`INTEREST_TTL`] and answers
//!   with each conversation's newest seq, so a session that missed a push (leader change, full
//!   queue, lost RPC) learns it is behind within a refresh and fills the gap from the shard.
//! - After an append commits, the leader pushes the message to the interested nodes, which hand
//!   it to their sessions. A session delivers seq `n + 1` after `n`; anything newer means a gap
//!   (it reads the missing range from the shard); anything older is already delivered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use natter_proto::{ConversationId, MessageRecord};
use natter_raft::types::NodeId;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often a node renews its interest with shard leaders.
pub const INTEREST_REFRESH: Duration = Duration::from_millis(1000);
/// How long a leader keeps a node's interest without renewal.
pub const INTEREST_TTL: Duration = Duration::from_millis(3500);
/// Pushes queued per session before it falls back to a gap fill.
pub const SESSION_PUSH_QUEUE_MAX: usize = 1024;

/// What a session receives from delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Push {
    /// A committed message.
    Message(MessageRecord),
    /// A member's cursors moved (the highest over the member's devices, so never backwards).
    Receipt {
        /// The conversation.
        conversation: ConversationId,
        /// The member.
        user: natter_proto::UserId,
        /// Highest seq delivered to any of the member's devices.
        delivered: u64,
        /// Highest seq the member has read.
        read: u64,
    },
    /// The conversation has messages up to this seq; fill any gap.
    Behind {
        /// The conversation.
        conversation: ConversationId,
        /// Its newest seq.
        last_seq: u64,
    },
}

/// A session's handle on its pushes.
pub struct Subscription {
    /// Pushes for this session.
    pub pushes: mpsc::Receiver<Push>,
    /// The session's id (to subscribe further conversations and to leave).
    pub id: u64,
}

/// Which local sessions want which conversations, and (as a leader) which nodes do.
#[derive(Default)]
pub struct Deliveries {
    next_session: AtomicU64,
    sessions: Mutex<BTreeMap<u64, mpsc::Sender<Push>>>,
    local: Mutex<BTreeMap<ConversationId, BTreeMap<u64, ()>>>,
    interest: Mutex<BTreeMap<ConversationId, BTreeMap<NodeId, Instant>>>,
}

impl Deliveries {
    /// Registers a session; it receives pushes for the conversations it subscribes to.
    pub fn open(&self) -> Subscription {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (sender, pushes) = mpsc::channel(SESSION_PUSH_QUEUE_MAX);
        self.sessions.lock().expect("sessions lock").insert(id, sender);
        Subscription { pushes, id }
    }

    /// Adds `conversation` to session `id`'s subscriptions.
    pub fn subscribe(&self, id: u64, conversation: ConversationId) {
        self.local.lock().expect("local lock").entry(conversation).or_default().insert(id, ());
    }

    /// Removes session `id` everywhere.
    pub fn close(&self, id: u64) {
        self.sessions.lock().expect("sessions lock").remove(&id);
        let mut local = self.local.lock().expect("local lock");
        local.retain(|_, sessions| {
            sessions.remove(&id);
            !sessions.is_empty()
        });
    }

    /// The conversations local sessions want.
    pub fn wanted(&self) -> Vec<ConversationId> {
        self.local.lock().expect("local lock").keys().copied().collect()
    }

    /// The conversation a push is about.
    pub fn conversation_of(push: &Push) -> ConversationId {
        match push {
            Push::Message(message) => message.conversation,
            Push::Receipt { conversation, .. } | Push::Behind { conversation, .. } => *conversation,
        }
    }

    /// Hands `push` to every local session subscribed to `conversation`. A session whose queue
    /// is full misses it and catches up at the next refresh.
    pub fn dispatch(&self, conversation: ConversationId, push: Push) {
        let targets: Vec<u64> = match self.local.lock().expect("local lock").get(&conversation) {
            Some(sessions) => sessions.keys().copied().collect(),
            None => return,
        };
        let sessions = self.sessions.lock().expect("sessions lock");
        for id in targets {
            if let Some(sender) = sessions.get(&id) {
                let _ = sender.try_send(push.clone());
            }
        }
    }

    /// Leader side: `node` wants `conversations` until `now + INTEREST_TTL`. Returns the
    /// conversations this leader did not already push to `node` (a new session there, or a
    /// new leader here): those may have missed receipts, so the caller sends their current
    /// receipts.
    pub fn register_interest(
        &self,
        node: NodeId,
        conversations: &[ConversationId],
        now: Instant,
    ) -> Vec<ConversationId> {
        let mut interest = self.interest.lock().expect("interest lock");
        let mut fresh = Vec::new();
        for conversation in conversations {
            let nodes = interest.entry(*conversation).or_default();
            let known = nodes.get(&node).is_some_and(|expiry| *expiry > now);
            nodes.insert(node, now + INTEREST_TTL);
            if !known {
                fresh.push(*conversation);
            }
        }
        fresh
    }

    /// Leader side: the nodes that want `conversation` now (expired interest is dropped).
    pub fn interested(&self, conversation: &ConversationId, now: Instant) -> Vec<NodeId> {
        let mut interest = self.interest.lock().expect("interest lock");
        let Some(nodes) = interest.get_mut(conversation) else {
            return Vec::new();
        };
        nodes.retain(|_, expiry| *expiry > now);
        let wanted: Vec<NodeId> = nodes.keys().copied().collect();
        if wanted.is_empty() {
            interest.remove(conversation);
        }
        wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(byte: u8) -> ConversationId {
        ConversationId::from_bytes([byte; 16])
    }

    #[tokio::test(start_paused = true)]
    async fn interest_expires_without_renewal() {
        let deliveries = Deliveries::default();
        let now = Instant::now();
        assert_eq!(deliveries.register_interest(2, &[conversation(1)], now), vec![conversation(1)]);
        assert_eq!(deliveries.register_interest(2, &[conversation(1)], now), vec![], "renewal is not new");
        deliveries.register_interest(3, &[conversation(1)], now + Duration::from_secs(2));
        assert_eq!(deliveries.interested(&conversation(1), now + Duration::from_secs(1)), vec![2, 3]);
        assert_eq!(deliveries.interested(&conversation(1), now + Duration::from_secs(4)), vec![3]);
        assert!(deliveries.interested(&conversation(1), now + Duration::from_secs(10)).is_empty());
        assert!(deliveries.interested(&conversation(9), now).is_empty());
    }

    #[tokio::test]
    async fn pushes_reach_only_subscribed_sessions_and_stop_at_close() {
        let deliveries = Deliveries::default();
        let mut a = deliveries.open();
        let mut b = deliveries.open();
        deliveries.subscribe(a.id, conversation(1));
        deliveries.subscribe(b.id, conversation(2));
        let behind = |c| Push::Behind { conversation: conversation(c), last_seq: 5 };
        deliveries.dispatch(conversation(1), behind(1));
        assert!(matches!(a.pushes.try_recv(), Ok(Push::Behind { last_seq: 5, .. })));
        assert!(b.pushes.try_recv().is_err(), "b is not subscribed to conversation 1");
        assert_eq!(deliveries.wanted(), vec![conversation(1), conversation(2)]);
        deliveries.close(a.id);
        deliveries.dispatch(conversation(1), behind(1));
        assert!(a.pushes.try_recv().is_err());
        assert_eq!(deliveries.wanted(), vec![conversation(2)]);
    }
}
