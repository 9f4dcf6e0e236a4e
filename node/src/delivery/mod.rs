//! Delivery (DESIGN §4): push hints from shard leaders to the nodes whose sessions want them,
//! with cursors and gap fills making delivery exactly-once and in order whatever the network
//! does.
//!
//! - Sessions subscribe to [`Topic`]s on their node ([`Deliveries::subscribe`]): the
//!   conversations they follow, and their own user (to learn of conversations they join).
//! - Every [`INTEREST_REFRESH`] the node tells each shard's leader which of its topics it wants
//!   ([`Interest`]); a topic a node starts to want is registered at once, without waiting for
//!   the next refresh. The leader keeps that soft state for [`INTEREST_TTL`] and answers with
//!   each conversation's newest seq ([`Push::Behind`]) and a fingerprint of each user's
//!   conversation list ([`Push::Listing`]), so a session that missed a push (leader change,
//!   full queue, lost RPC) learns it is behind within a refresh and fills the gap from the
//!   shard, or re-reads its user's conversation list and follows what it joined.
//! - After an append commits, the leader pushes the message to the interested nodes, which hand
//!   it to their sessions. A session delivers seq `n + 1` after `n`; anything newer means a gap
//!   (it reads the missing range from the shard); anything older is already delivered.
//! - After a user shard's leader records that a user joined a conversation (the outbox relay's
//!   `ApplyMembership`), it pushes [`Push::Joined`] to the nodes interested in the user; their
//!   sessions of that user send the client the conversation and follow it from seq 0.
//!
//! [`Interest`]: crate::peers::rpc::PeerRequest::Interest

mod fanout;
mod interest;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_proto::{ConversationId, MessageRecord, PresencePrivacy, PresenceStatus, UserId};
use natter_raft::placement::{shard_of_conversation, shard_of_user, ShardId};
use natter_raft::types::NodeId;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// How often a node renews its interest with shard leaders.
pub const INTEREST_REFRESH: Duration = Duration::from_millis(1000);
/// How long a leader keeps a node's interest without renewal.
pub const INTEREST_TTL: Duration = Duration::from_millis(3500);
/// Pushes queued per session before it falls back to a gap fill.
pub const SESSION_PUSH_QUEUE_MAX: usize = 1024;
/// The part of a user's conversation list that sessions track and leaders fingerprint: the
/// first this many ids in id order, the part `welcome` lists.
pub const LISTING_CONVERSATIONS_MAX: usize = WELCOME_CONVERSATIONS_MAX;
/// Most conversations listed in one `welcome`.
pub const WELCOME_CONVERSATIONS_MAX: usize = 1024;

/// What a node's sessions subscribe to, and what nodes register interest in with leaders.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Topic {
    /// A conversation's messages and receipts (on the conversation's shard).
    Conversation(ConversationId),
    /// The conversations a user joins (on the user's shard).
    User(UserId),
    /// A user's presence (on the user's shard, whose leader aggregates it).
    Presence(UserId),
}

impl Topic {
    /// The shard whose leader serves this topic.
    pub fn shard(&self, shard_count: u32) -> ShardId {
        match self {
            Self::Conversation(conversation) => shard_of_conversation(conversation, shard_count),
            Self::User(user) | Self::Presence(user) => shard_of_user(user, shard_count),
        }
    }
}

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
        user: UserId,
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
    /// The user's shard recorded that `user` joined `conversation`.
    Joined {
        /// The user.
        user: UserId,
        /// The conversation joined.
        conversation: ConversationId,
    },
    /// The user's conversation list as its shard's leader has it ([`Listing::digest`]); a
    /// session whose listing differs re-reads the list and follows what it joined.
    Listing {
        /// The user.
        user: UserId,
        /// The fingerprint of the list.
        digest: u64,
    },
    /// A user's presence, from the leader of the user's shard (soft state; `last_seen` is
    /// stored). Sessions show it to their user as `privacy` allows.
    Presence {
        /// Whose presence.
        user: UserId,
        /// Online, away or offline, over all the user's devices.
        status: PresenceStatus,
        /// When the user last went offline, ms since the Unix epoch.
        last_seen: Option<u64>,
        /// The user's custom text.
        custom: Option<String>,
        /// Who may see it.
        privacy: PresencePrivacy,
    },
    /// A member started or stopped typing: ephemeral, never stored, relayed by the
    /// conversation shard's leader to the nodes interested in the conversation.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who is typing.
        user: UserId,
        /// True while typing; clients expire it after `TYPING_TTL_MS` unless renewed.
        active: bool,
    },
}

impl Push {
    /// The topic whose subscribers get this push.
    pub fn topic(&self) -> Topic {
        match self {
            Self::Message(message) => Topic::Conversation(message.conversation),
            Self::Receipt { conversation, .. }
            | Self::Behind { conversation, .. }
            | Self::Typing { conversation, .. } => Topic::Conversation(*conversation),
            Self::Joined { user, .. } | Self::Listing { user, .. } => Topic::User(user.clone()),
            Self::Presence { user, .. } => Topic::Presence(user.clone()),
        }
    }
}

/// What a session knows of its user's conversation list: the first
/// [`LISTING_CONVERSATIONS_MAX`] ids in id order, the part that `welcome` lists and that the
/// user shard's leader fingerprints in [`Push::Listing`]. A join whose [`Push::Joined`] was
/// lost shows up as a different digest; re-reading the list then names the conversations
/// joined meanwhile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    conversations: BTreeSet<ConversationId>,
}

impl Listing {
    /// The listing of a user's conversation list, in any order.
    pub fn new(conversations: impl IntoIterator<Item = ConversationId>) -> Self {
        let mut conversations: BTreeSet<ConversationId> = conversations.into_iter().collect();
        if let Some(&first_beyond) = conversations.iter().nth(LISTING_CONVERSATIONS_MAX) {
            conversations.split_off(&first_beyond);
        }
        Self { conversations }
    }

    /// A fingerprint of the listing: FNV-1a over the ids in id order, which every node
    /// computes alike (std's hasher promises no stable output across builds).
    pub fn digest(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for conversation in &self.conversations {
            for &byte in conversation.as_bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }

    /// Whether `conversation` is listed.
    pub fn contains(&self, conversation: &ConversationId) -> bool {
        self.conversations.contains(conversation)
    }

    /// Listed conversations.
    pub fn len(&self) -> usize {
        self.conversations.len()
    }

    /// True when nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty()
    }

    /// A pushed join: the list now has `conversation` (kept only if it falls in the tracked
    /// part, as the leader's fingerprint would have it).
    pub fn handle_joined(&mut self, conversation: ConversationId) {
        self.conversations.insert(conversation);
        if self.conversations.len() > LISTING_CONVERSATIONS_MAX {
            self.conversations.pop_last();
        }
    }

    /// A fresh read of the list replaces this listing; returns the conversations it has that
    /// this one had not, in id order: joins whose push never came.
    pub fn handle_list(&mut self, fresh: Listing) -> Vec<ConversationId> {
        let joined = fresh.conversations.difference(&self.conversations).copied().collect();
        *self = fresh;
        joined
    }

    /// A join the session could not serve (the shard was unavailable): forgetting it makes
    /// the digest differ at the next refresh, which retries it.
    pub fn forget(&mut self, conversation: &ConversationId) {
        self.conversations.remove(conversation);
    }
}

/// A session's handle on its pushes.
pub struct Subscription {
    /// Pushes for this session, shared with every other session they went to. An `Arc` keeps
    /// each queue slot one pointer wide: tokio allocates a queue's slots in blocks of 32, and
    /// every idle session holds one block.
    pub pushes: mpsc::Receiver<Arc<Push>>,
    /// The session's id (to subscribe further topics and to leave).
    pub id: u64,
}

/// The presence a node last handed a user's watchers, and which of them missed it.
struct KnownPresence {
    push: Arc<Push>,
    owed: BTreeSet<u64>,
}

/// Hands `push` to session `id` if it is still open; false when its queue is full.
fn hand(sessions: &BTreeMap<u64, mpsc::Sender<Arc<Push>>>, id: u64, push: &Arc<Push>) -> bool {
    sessions
        .get(&id)
        .is_none_or(|sender| !matches!(sender.try_send(push.clone()), Err(mpsc::error::TrySendError::Full(_))))
}

/// Which local sessions want which topics, and (as a leader) which nodes do.
#[derive(Default)]
pub struct Deliveries {
    next_session: AtomicU64,
    sessions: Mutex<BTreeMap<u64, mpsc::Sender<Arc<Push>>>>,
    local: Mutex<BTreeMap<Topic, BTreeSet<u64>>>,
    /// Topics this node started to want since the interest refresh last looked.
    fresh: Mutex<BTreeSet<Topic>>,
    /// Wakes the interest refresh when `fresh` gains a topic.
    fresh_added: Notify,
    interest: Mutex<BTreeMap<Topic, BTreeMap<NodeId, Instant>>>,
    /// Per user a local session watches: the presence last handed to its watchers, and the
    /// watchers that missed it (their queue was full), which repeats are handed to until they
    /// take it. Every interest refresh repeats each watched user's presence; without this a
    /// 1,000-member group would cost its node a million session pushes a second doing nothing.
    presence: Mutex<BTreeMap<UserId, KnownPresence>>,
    /// Test hook: how many more [`Push::Joined`] to drop on arrival.
    joins_to_drop: AtomicU64,
}

impl Deliveries {
    /// Registers a session; it receives pushes for the topics it subscribes to.
    pub fn open(&self) -> Subscription {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (sender, pushes) = mpsc::channel(SESSION_PUSH_QUEUE_MAX);
        self.sessions.lock().expect("sessions lock").insert(id, sender);
        Subscription { pushes, id }
    }

    /// Adds `topic` to session `id`'s subscriptions. A topic no local session wanted before is
    /// registered with its leader at once (see [`Deliveries::take_fresh`]).
    ///
    /// A session that starts watching a user other local sessions already watch gets the
    /// presence they were last given at once: the leader will not repeat it to this node.
    pub fn subscribe(&self, id: u64, topic: Topic) {
        let mut local = self.local.lock().expect("local lock");
        let sessions = local.entry(topic.clone()).or_default();
        if sessions.is_empty() {
            self.fresh.lock().expect("fresh lock").insert(topic.clone());
            self.fresh_added.notify_one();
        }
        if !sessions.insert(id) {
            return;
        }
        if let Topic::Presence(user) = &topic {
            drop(local);
            self.resend_presence(id, user);
        }
    }

    /// Hands session `id` the presence of `user` this node last handed its watchers, if it
    /// has one: for a new watcher, or one whose view of `user` may have changed (it now
    /// shares a 1:1). If its queue is full, it is owed the presence and the next repeat
    /// brings it.
    pub fn resend_presence(&self, id: u64, user: &UserId) {
        let mut presence = self.presence.lock().expect("presence lock");
        let Some(known) = presence.get_mut(user) else { return };
        if !hand(&self.sessions.lock().expect("sessions lock"), id, &known.push) {
            known.owed.insert(id);
        }
    }

    /// Removes session `id` everywhere.
    pub fn close(&self, id: u64) {
        self.sessions.lock().expect("sessions lock").remove(&id);
        let mut local = self.local.lock().expect("local lock");
        let mut presence = self.presence.lock().expect("presence lock");
        local.retain(|topic, sessions| {
            if !sessions.remove(&id) {
                return true;
            }
            let watched = !sessions.is_empty();
            if let Topic::Presence(user) = topic {
                if let (true, Some(known)) = (watched, presence.get_mut(user)) {
                    known.owed.remove(&id);
                } else if !watched {
                    presence.remove(user);
                }
            }
            watched
        });
    }

    /// The topics local sessions want.
    pub fn wanted(&self) -> Vec<Topic> {
        self.local.lock().expect("local lock").keys().cloned().collect()
    }

    /// The topics local sessions started to want since the last call, still wanted.
    pub fn take_fresh(&self) -> Vec<Topic> {
        let fresh = std::mem::take(&mut *self.fresh.lock().expect("fresh lock"));
        let local = self.local.lock().expect("local lock");
        fresh.into_iter().filter(|topic| local.contains_key(topic)).collect()
    }

    /// Waits until a topic is added to the fresh ones (returns at once if one was added since
    /// the last wait).
    pub async fn fresh_added(&self) {
        self.fresh_added.notified().await;
    }

    /// Hands `push` to every local session subscribed to its topic. A session whose queue is
    /// full misses it and catches up at the next refresh.
    ///
    /// A presence push equal to the one last handed to this user's watchers goes only to the
    /// watchers that missed it (their queue was full), once per node rather than to every
    /// session; a different one goes to all of them and is remembered in its place.
    pub fn dispatch(&self, push: Push) {
        if matches!(push, Push::Joined { .. })
            && self.joins_to_drop.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
        {
            return;
        }
        let local = self.local.lock().expect("local lock");
        let Some(targets) = local.get(&push.topic()) else { return };
        let push = Arc::new(push);
        let Push::Presence { user, .. } = &*push else {
            let sessions = self.sessions.lock().expect("sessions lock");
            for &id in targets {
                hand(&sessions, id, &push);
            }
            return;
        };
        let mut presence = self.presence.lock().expect("presence lock");
        let sessions = self.sessions.lock().expect("sessions lock");
        if let Some(known) = presence.get_mut(user).filter(|known| known.push == push) {
            known.owed.retain(|&id| !hand(&sessions, id, &push));
            return;
        }
        let owed = targets.iter().copied().filter(|&id| !hand(&sessions, id, &push)).collect();
        presence.insert(user.clone(), KnownPresence { push: push.clone(), owed });
    }

    /// Test hook: the next `count` [`Push::Joined`] this node receives are dropped, as a lost
    /// RPC or a new leader that did not know this node yet would lose them, so tests can show
    /// that sessions still learn of the join (through [`Push::Listing`]).
    pub fn drop_next_joins(&self, count: u64) {
        self.joins_to_drop.store(count, Ordering::Relaxed);
    }

    /// Leader side: `node` wants `topics` until `now + INTEREST_TTL`. Returns the topics this
    /// leader did not already push to `node` (a new session there, or a new leader here):
    /// those may have missed receipts, so the caller sends the current receipts of their
    /// conversations.
    pub fn register_interest(&self, node: NodeId, topics: &[Topic], now: Instant) -> Vec<Topic> {
        let mut interest = self.interest.lock().expect("interest lock");
        let mut fresh = Vec::new();
        for topic in topics {
            let nodes = interest.entry(topic.clone()).or_default();
            let known = nodes.get(&node).is_some_and(|expiry| *expiry > now);
            nodes.insert(node, now + INTEREST_TTL);
            if !known {
                fresh.push(topic.clone());
            }
        }
        fresh
    }

    /// Leader side: the nodes that want `topic` now (expired interest is dropped).
    pub fn interested(&self, topic: &Topic, now: Instant) -> Vec<NodeId> {
        let mut interest = self.interest.lock().expect("interest lock");
        let Some(nodes) = interest.get_mut(topic) else {
            return Vec::new();
        };
        nodes.retain(|_, expiry| *expiry > now);
        let wanted: Vec<NodeId> = nodes.keys().copied().collect();
        if wanted.is_empty() {
            interest.remove(topic);
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

    fn topic(byte: u8) -> Topic {
        Topic::Conversation(conversation(byte))
    }

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn interest_expires_without_renewal() {
        let deliveries = Deliveries::default();
        let now = Instant::now();
        assert_eq!(deliveries.register_interest(2, &[topic(1)], now), vec![topic(1)]);
        assert_eq!(deliveries.register_interest(2, &[topic(1)], now), vec![], "renewal is not new");
        deliveries.register_interest(3, &[topic(1)], now + Duration::from_secs(2));
        assert_eq!(deliveries.interested(&topic(1), now + Duration::from_secs(1)), vec![2, 3]);
        assert_eq!(deliveries.interested(&topic(1), now + Duration::from_secs(4)), vec![3]);
        assert!(deliveries.interested(&topic(1), now + Duration::from_secs(10)).is_empty());
        assert!(deliveries.interested(&topic(9), now).is_empty());
        // Users are topics like conversations, kept apart from them.
        deliveries.register_interest(2, &[Topic::User(user("bob"))], now);
        assert_eq!(deliveries.interested(&Topic::User(user("bob")), now), vec![2]);
        assert!(deliveries.interested(&Topic::User(user("carol")), now).is_empty());
    }

    #[tokio::test]
    async fn pushes_reach_only_subscribed_sessions_and_stop_at_close() {
        let deliveries = Deliveries::default();
        let mut a = deliveries.open();
        let mut b = deliveries.open();
        deliveries.subscribe(a.id, topic(1));
        deliveries.subscribe(b.id, topic(2));
        let behind = |c| Push::Behind { conversation: conversation(c), last_seq: 5 };
        deliveries.dispatch(behind(1));
        assert!(matches!(a.pushes.try_recv().as_deref(), Ok(Push::Behind { last_seq: 5, .. })));
        assert!(b.pushes.try_recv().is_err(), "b is not subscribed to conversation 1");
        assert_eq!(deliveries.wanted(), vec![topic(1), topic(2)]);
        deliveries.close(a.id);
        deliveries.dispatch(behind(1));
        assert!(a.pushes.try_recv().is_err());
        assert_eq!(deliveries.wanted(), vec![topic(2)]);
    }

    #[tokio::test]
    async fn joins_reach_every_session_of_the_user_and_only_them() {
        let deliveries = Deliveries::default();
        let mut phone = deliveries.open();
        let mut laptop = deliveries.open();
        let mut carol = deliveries.open();
        deliveries.subscribe(phone.id, Topic::User(user("bob")));
        deliveries.subscribe(laptop.id, Topic::User(user("bob")));
        deliveries.subscribe(carol.id, Topic::User(user("carol")));
        let joined = Push::Joined { user: user("bob"), conversation: conversation(4) };
        assert_eq!(joined.topic(), Topic::User(user("bob")));
        deliveries.dispatch(joined.clone());
        assert_eq!(phone.pushes.try_recv(), Ok(Arc::new(joined.clone())));
        assert_eq!(laptop.pushes.try_recv(), Ok(Arc::new(joined.clone())));
        assert!(carol.pushes.try_recv().is_err());
        // The test hook drops the next joins, and only joins.
        deliveries.drop_next_joins(1);
        deliveries.dispatch(joined.clone());
        let listing = Push::Listing { user: user("bob"), digest: 7 };
        deliveries.dispatch(listing.clone());
        assert_eq!(phone.pushes.try_recv(), Ok(Arc::new(listing)), "the join was dropped, the listing was not");
        deliveries.dispatch(joined.clone());
        assert_eq!(phone.pushes.try_recv(), Ok(Arc::new(joined)));
    }

    #[tokio::test]
    async fn repeated_presence_reaches_watchers_once_and_new_watchers_at_once() {
        let deliveries = Deliveries::default();
        let presence = |status| Push::Presence {
            user: user("bob"),
            status,
            last_seen: None,
            custom: None,
            privacy: PresencePrivacy::Everyone,
        };
        let online = presence(PresenceStatus::Online);
        let mut a = deliveries.open();
        let mut b = deliveries.open();
        deliveries.subscribe(a.id, Topic::Presence(user("bob")));
        deliveries.subscribe(b.id, Topic::Presence(user("bob")));
        deliveries.dispatch(online.clone());
        deliveries.dispatch(online.clone());
        assert_eq!(a.pushes.try_recv(), Ok(Arc::new(online.clone())));
        assert!(a.pushes.try_recv().is_err(), "the repeat is dropped on the node");
        assert_eq!(b.pushes.try_recv(), Ok(Arc::new(online.clone())));
        assert!(b.pushes.try_recv().is_err());

        // A new watcher of a user already watched here is handed the presence at once.
        let mut c = deliveries.open();
        deliveries.subscribe(c.id, Topic::Presence(user("bob")));
        assert_eq!(c.pushes.try_recv(), Ok(Arc::new(online.clone())));
        deliveries.subscribe(c.id, Topic::Presence(user("bob")));
        assert!(c.pushes.try_recv().is_err(), "subscribing twice hands it over once");

        // A change goes out; other users' presence is not held back by bob's.
        let away = presence(PresenceStatus::Away);
        deliveries.dispatch(away.clone());
        for session in [&mut a, &mut b, &mut c] {
            assert_eq!(session.pushes.try_recv(), Ok(Arc::new(away.clone())));
        }

        // A watcher whose queue was full misses a change; the next repeat reaches it.
        deliveries.subscribe(a.id, topic(1));
        for _ in 0..SESSION_PUSH_QUEUE_MAX {
            deliveries.dispatch(Push::Behind { conversation: conversation(1), last_seq: 1 });
        }
        deliveries.dispatch(online.clone());
        assert_eq!(b.pushes.try_recv(), Ok(Arc::new(online.clone())));
        while a.pushes.try_recv().is_ok() {}
        deliveries.dispatch(online.clone());
        assert_eq!(a.pushes.try_recv(), Ok(Arc::new(online.clone())), "the repeat heals the one that missed");
        assert!(b.pushes.try_recv().is_err(), "and goes to no one else");
        deliveries.dispatch(online.clone());
        assert!(a.pushes.try_recv().is_err() && b.pushes.try_recv().is_err(), "and then nobody is owed it");

        // A session that is stuck (its queue stays full) is owed the presence: repeats try it
        // alone, and it gets the presence once it reads again.
        for _ in 0..SESSION_PUSH_QUEUE_MAX {
            deliveries.dispatch(Push::Behind { conversation: conversation(1), last_seq: 1 });
        }
        deliveries.dispatch(away.clone());
        assert_eq!(b.pushes.try_recv(), Ok(Arc::new(away.clone())));
        for _ in 0..3 {
            deliveries.dispatch(away.clone());
        }
        assert!(b.pushes.try_recv().is_err(), "repeats do not reach those who have it");
        while a.pushes.try_recv().is_ok() {}
        deliveries.dispatch(away.clone());
        assert_eq!(a.pushes.try_recv(), Ok(Arc::new(away.clone())));
        assert!(a.pushes.try_recv().is_err());

        // When nobody here watches bob any more, his presence is forgotten: a watcher that
        // comes later waits for the leader's answer to the fresh interest.
        for session in [a.id, b.id, c.id] {
            deliveries.close(session);
        }
        let mut d = deliveries.open();
        deliveries.subscribe(d.id, Topic::Presence(user("bob")));
        assert!(d.pushes.try_recv().is_err());
        assert_eq!(deliveries.take_fresh(), vec![Topic::Presence(user("bob"))]);
        deliveries.dispatch(online.clone());
        assert_eq!(d.pushes.try_recv(), Ok(Arc::new(online)));
    }

    #[tokio::test]
    async fn newly_wanted_topics_are_fresh_once() {
        let deliveries = Deliveries::default();
        let a = deliveries.open();
        let b = deliveries.open();
        deliveries.subscribe(a.id, topic(1));
        deliveries.subscribe(a.id, Topic::User(user("bob")));
        // A wake-up is waiting for the refresh.
        tokio::time::timeout(Duration::from_secs(1), deliveries.fresh_added()).await.expect("woken");
        deliveries.subscribe(b.id, topic(1));
        assert_eq!(deliveries.take_fresh(), vec![topic(1), Topic::User(user("bob"))]);
        assert!(deliveries.take_fresh().is_empty(), "taken once");
        deliveries.subscribe(b.id, topic(1));
        assert!(deliveries.take_fresh().is_empty(), "already wanted by this node");
        deliveries.subscribe(b.id, topic(2));
        deliveries.close(b.id);
        assert!(deliveries.take_fresh().is_empty(), "no longer wanted");
    }

    #[test]
    fn a_lost_join_shows_in_the_digest_and_a_fresh_list_names_it() {
        // The session listed one conversation at hello; the user then joined a second and the
        // push was lost.
        let mut session = Listing::new([conversation(1)]);
        let leader = Listing::new([conversation(2), conversation(1)]);
        assert_ne!(session.digest(), leader.digest(), "the refresh answer shows the difference");
        assert_eq!(session.handle_list(leader.clone()), vec![conversation(2)]);
        assert_eq!(session.digest(), leader.digest(), "and then agrees");
        assert!(session.handle_list(leader.clone()).is_empty(), "nothing is joined twice");

        // A pushed join keeps the session in step with the leader: no re-read needed.
        session.handle_joined(conversation(3));
        assert_eq!(session.digest(), Listing::new([conversation(1), conversation(2), conversation(3)]).digest());

        // A join the session could not serve is forgotten, so the next refresh retries it.
        session.forget(&conversation(3));
        let leader = Listing::new([conversation(1), conversation(2), conversation(3)]);
        assert_ne!(session.digest(), leader.digest());
        assert_eq!(session.handle_list(leader), vec![conversation(3)]);

        // Order of reading does not matter; contents do.
        assert_eq!(Listing::new([conversation(5), conversation(6)]), Listing::new([conversation(6), conversation(5)]));
        assert_ne!(Listing::new([]).digest(), Listing::new([conversation(0)]).digest());
    }

    #[test]
    fn listings_track_only_the_part_welcome_lists() {
        let id = |n: usize| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
            ConversationId::from_bytes(bytes)
        };
        let all: Vec<ConversationId> = (0..LISTING_CONVERSATIONS_MAX + 10).map(id).collect();
        let full = Listing::new(all.iter().rev().copied());
        assert_eq!(full.len(), LISTING_CONVERSATIONS_MAX);
        assert!(full.contains(&id(0)) && !full.contains(&id(LISTING_CONVERSATIONS_MAX)));
        // A join beyond the tracked part leaves the listing as the leader would have it.
        let mut session = full.clone();
        session.handle_joined(id(LISTING_CONVERSATIONS_MAX + 20));
        assert_eq!(session, full);
        // A join inside it pushes the last one out, again as the leader would have it.
        let mut below = [0u8; 16];
        below[15] = 1;
        session.handle_joined(ConversationId::from_bytes(below));
        let mut everything = all.clone();
        everything.push(ConversationId::from_bytes(below));
        assert_eq!(session, Listing::new(everything));
    }
}
