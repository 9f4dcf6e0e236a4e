//! Property tests of the conversation state machine ([`natter_raft::state_machine`]) over a real
//! LMDB store, applying commands the way a replica does: one write transaction per log entry,
//! with an increasing log index.
//!
//! 1. Seqs are 1..=n without gaps per conversation, and every `Appended` answer names the
//!    message stored at its seq.
//! 2. Exactly once per (user, device, client_seq) under resends and reordering within the dedup
//!    window; the window's edge refuses what it can no longer tell apart (`StaleClientSeq`).
//! 3. Cursors never move backwards and always satisfy `read <= delivered <= last_seq`.
//! 4. Non-members, and conversations that do not exist, are refused and nothing is written.
//! 5. Snapshot dump → restore into another store reproduces the shard (and its behaviour from
//!    then on) without touching the neighbouring shard.
//! 6. Creation is idempotent, direct ids are checked, and the user shard keeps the newest
//!    membership record whatever order the records arrive in.
//! 7. A batch of appends (`AppendMany`) does exactly what its messages would do one by one.
//!
//! Besides each property's own assertions, every answer of the random command sequences is
//! checked against a small model of DESIGN §2 kept in this file ([`Model`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use heed::RoTxn;
use natter_proto::limits::{BODY_BYTES_MAX, DEDUP_WINDOW, HISTORY_PAGE_MAX};
use natter_proto::{ConversationId, DeviceId, UserId};
use natter_raft::command::{
    Command, CommandError, ConversationView, Cursor, CursorMove, MessageView, Outgoing, Placed, Response,
    APPEND_MANY_BYTES_MAX, APPEND_MANY_MAX, CURSOR_MOVES_MAX,
};
use natter_raft::placement::ShardId;
use natter_raft::state_machine::{self, Reader};
use natter_raft::store::{Durability, Store, StoreConfig};
use natter_raft::{snapshot, WriterMode};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tempfile::TempDir;

// ---- the universe every case draws from ----

/// User names, chosen so that some are prefixes of others and ("a", "bd") and ("ab", "d")
/// spell the same bytes as (user, device): keys must keep ids apart.
const USER_NAMES: [&str; 5] = ["a", "ab", "b", "abc", "ba"];
/// Device names (device ids are only unique within a user, so every user has both).
const DEVICE_NAMES: [&str; 2] = ["d", "bd"];
/// Users, by index into [`USER_NAMES`].
const USERS: usize = USER_NAMES.len();
/// Devices of every user, by index into [`DEVICE_NAMES`].
const DEVICES: usize = DEVICE_NAMES.len();
/// Conversations 0..=2 are groups, [`DIRECT`] is the direct conversation of users 0 and 1.
const CONVERSATIONS: usize = 4;
/// The index of the direct conversation.
const DIRECT: usize = 3;
/// Cases per property: enough to explore, few enough that the file runs in seconds in debug.
const CASES: u32 = 128;

fn user(i: usize) -> UserId {
    UserId::new(USER_NAMES[i]).expect("valid user id")
}

fn device(i: usize) -> DeviceId {
    DeviceId::new(DEVICE_NAMES[i]).expect("valid device id")
}

fn conversation(i: usize) -> ConversationId {
    if i == DIRECT {
        ConversationId::direct(&user(0), &user(1))
    } else {
        ConversationId::from_bytes([0x10 + i as u8; 16])
    }
}

/// Creates group `id` of users 0 and 1, by user 0, at `ts`.
fn group_of_users_0_and_1(id: ConversationId, ts: u64) -> Command {
    Command::CreateConversation {
        conversation: id,
        creator: user(0),
        members: [user(0), user(1)].into(),
        title: None,
        direct: false,
        ts,
    }
}

/// A conversation id no case ever creates.
fn missing_conversation() -> ConversationId {
    ConversationId::from_bytes([0xee; 16])
}

/// The users whose bits are set in `mask`.
fn users_of(mask: u8) -> BTreeSet<usize> {
    (0..USERS).filter(|i| mask & (1 << i) != 0).collect()
}

fn user_ids(users: &BTreeSet<usize>) -> BTreeSet<UserId> {
    users.iter().map(|&i| user(i)).collect()
}

fn not_member(user_index: usize, id: ConversationId) -> Response {
    Response::Rejected(CommandError::NotMember { user: user(user_index), conversation: id })
}

fn is_invalid_argument(response: &Response) -> bool {
    matches!(response, Response::Rejected(CommandError::InvalidArgument(_)))
}

// ---- driving a store ----

/// One LMDB store on tmpfs (when there is one) with the inline writer, and a runtime to wait
/// for its writes. Fields drop in order: the store closes before its directory goes.
struct Node {
    store: Arc<Store>,
    runtime: tokio::runtime::Runtime,
    _dir: TempDir,
}

impl Node {
    fn open() -> Self {
        let dir = if Path::new("/dev/shm").is_dir() { tempfile::tempdir_in("/dev/shm") } else { tempfile::tempdir() }
            .expect("temp dir");
        let config = StoreConfig {
            writer: WriterMode::Inline,
            durability: Durability::NoSync,
            map_bytes: 256 << 20,
            ..StoreConfig::new(dir.path())
        };
        let store = Store::open(&config).expect("open store");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        Self { store, runtime, _dir: dir }
    }

    /// Applies `command` as log entry `index` of `shard` and waits for the commit.
    fn apply(&self, shard: ShardId, index: u64, command: &Command) -> Response {
        let command = command.clone();
        self.runtime
            .block_on(self.store.write(move |tables, txn| state_machine::apply(tables, txn, shard, index, &command)))
            .expect("apply commits")
    }

    fn read<R>(&self, shard: ShardId, read: impl FnOnce(Reader<'_>, &RoTxn<'_>) -> heed::Result<R>) -> R {
        self.store.read_shard(shard, read).expect("read")
    }

    fn dump(&self, shard: ShardId) -> Vec<u8> {
        self.store.read(|tables, txn| snapshot::dump(tables, txn, shard)).expect("dump")
    }

    fn restore(&self, shard: ShardId, data: Vec<u8>) {
        self.runtime
            .block_on(self.store.write(move |tables, txn| snapshot::restore(tables, txn, shard, &data)))
            .expect("restore")
    }

    fn view(&self, shard: ShardId, id: ConversationId) -> Option<ConversationView> {
        self.read(shard, |reader, txn| reader.conversation(txn, &id))
    }

    /// Every stored message of a conversation, ascending.
    fn messages(&self, shard: ShardId, id: ConversationId) -> Vec<MessageView> {
        self.read(shard, |reader, txn| reader.messages_after(txn, &id, 0, usize::MAX))
    }

    fn cursor(&self, shard: ShardId, id: ConversationId, user_index: usize, device_index: usize) -> Cursor {
        self.read(shard, |reader, txn| reader.cursor(txn, &id, &user(user_index), &device(device_index)))
    }
}

/// A step of a random command sequence, in terms of the universe's indexes.
#[derive(Debug, Clone)]
enum Op {
    Create { conversation: usize, creator: usize, members: u8, title: Option<String>, ts: u64 },
    Add { conversation: usize, by: usize, members: u8 },
    Remove { conversation: usize, by: usize, members: u8 },
    Append { conversation: usize, sender: usize, device: usize, ts: u64, body: String },
    MoveCursor { conversation: usize, user: usize, device: usize, delivered: Option<u64>, read: Option<u64> },
}

#[derive(Debug, Clone)]
struct ConversationModel {
    members: BTreeSet<usize>,
    direct: bool,
    title: Option<String>,
    created_ts: u64,
    last_ts: u64,
    /// Messages in seq order: seq = position + 1.
    messages: Vec<MessageView>,
}

/// What the shard should hold, per DESIGN §2.
#[derive(Debug, Clone, Default)]
struct Model {
    conversations: BTreeMap<usize, ConversationModel>,
    /// Cursors that ever moved off zero, by (conversation, user, device).
    cursors: BTreeMap<(usize, usize, usize), Cursor>,
    /// Each (user, device)'s last used client_seq.
    client_seqs: BTreeMap<(usize, usize), u64>,
}

/// The answer the model expects.
enum Expected {
    Exactly(Response),
    InvalidArgument,
}

impl Model {
    fn is_member(&self, conversation_index: usize, user_index: usize) -> bool {
        self.conversations.get(&conversation_index).is_some_and(|c| c.members.contains(&user_index))
    }

    fn view(&self, conversation_index: usize) -> ConversationView {
        let model = &self.conversations[&conversation_index];
        ConversationView {
            id: conversation(conversation_index),
            members: user_ids(&model.members).into_iter().collect(),
            title: model.title.clone(),
            direct: model.direct,
            last_seq: model.messages.len() as u64,
            created_ts: model.created_ts,
        }
    }

    fn next_client_seq(&mut self, user_index: usize, device_index: usize) -> u64 {
        let next = self.client_seqs.entry((user_index, device_index)).or_default();
        *next += 1;
        *next
    }

    /// The command a proposer would log for `op` (taking the device's next client_seq).
    fn command(&mut self, op: &Op) -> Command {
        match op.clone() {
            Op::Create { conversation: c, creator, members, title, ts } => Command::CreateConversation {
                conversation: conversation(c),
                creator: user(creator),
                members: user_ids(&users_of(members)),
                title,
                direct: c == DIRECT,
                ts,
            },
            Op::Add { conversation: c, by, members } => Command::AddMembers {
                conversation: conversation(c),
                by: user(by),
                members: user_ids(&users_of(members)),
            },
            Op::Remove { conversation: c, by, members } => Command::RemoveMembers {
                conversation: conversation(c),
                by: user(by),
                members: user_ids(&users_of(members)),
            },
            Op::Append { conversation: c, sender, device: d, ts, body } => Command::Append {
                conversation: conversation(c),
                sender: user(sender),
                device: device(d),
                client_seq: self.next_client_seq(sender, d),
                ts,
                body,
            },
            Op::MoveCursor { conversation: c, user: u, device: d, delivered, read } => {
                Command::MoveCursor { conversation: conversation(c), user: user(u), device: device(d), delivered, read }
            }
        }
    }

    /// The answer to `command` (made from `op`), updating the model as the shard should change.
    fn expect(&mut self, op: &Op, command: &Command) -> Expected {
        match op.clone() {
            Op::Create { conversation: c, creator, members, title, ts } => {
                let members = users_of(members);
                let direct = c == DIRECT;
                if !members.contains(&creator) || members.len() < 2 {
                    return Expected::InvalidArgument;
                }
                if direct {
                    let pair: Vec<usize> = members.iter().copied().collect();
                    if pair.len() != 2 || ConversationId::direct(&user(pair[0]), &user(pair[1])) != conversation(c) {
                        return Expected::InvalidArgument;
                    }
                }
                if let Some(existing) = self.conversations.get(&c) {
                    return Expected::Exactly(if existing.members.contains(&creator) {
                        Response::Conversation { conversation: self.view(c), created: false }
                    } else {
                        not_member(creator, conversation(c))
                    });
                }
                let model =
                    ConversationModel { members, direct, title, created_ts: ts, last_ts: ts, messages: Vec::new() };
                self.conversations.insert(c, model);
                Expected::Exactly(Response::Conversation { conversation: self.view(c), created: true })
            }
            Op::Add { conversation: c, by, members } => {
                let Some(model) = self.conversations.get_mut(&c).filter(|model| model.members.contains(&by)) else {
                    return Expected::Exactly(not_member(by, conversation(c)));
                };
                if model.direct {
                    return Expected::InvalidArgument;
                }
                model.members.extend(users_of(members));
                Expected::Exactly(Response::Conversation { conversation: self.view(c), created: false })
            }
            Op::Remove { conversation: c, by, members } => {
                let Some(model) = self.conversations.get_mut(&c).filter(|model| model.members.contains(&by)) else {
                    return Expected::Exactly(not_member(by, conversation(c)));
                };
                if model.direct {
                    return Expected::InvalidArgument;
                }
                let removed = users_of(members);
                model.members.retain(|u| !removed.contains(u));
                // A removed member's device cursors go with its membership.
                self.cursors.retain(|&(cc, u, _), _| !(cc == c && removed.contains(&u)));
                Expected::Exactly(Response::Conversation { conversation: self.view(c), created: false })
            }
            Op::Append { conversation: c, sender, device: d, ts, body } => {
                let Command::Append { client_seq, .. } = command else { unreachable!("an append op makes an append") };
                let Some(model) = self.conversations.get_mut(&c).filter(|model| model.members.contains(&sender)) else {
                    return Expected::Exactly(not_member(sender, conversation(c)));
                };
                let seq = model.messages.len() as u64 + 1;
                // Server timestamps never go backwards within a conversation.
                let ts = ts.max(model.last_ts);
                model.last_ts = ts;
                model.messages.push(MessageView {
                    conversation: conversation(c),
                    seq,
                    sender: user(sender),
                    sender_device: device(d),
                    client_seq: *client_seq,
                    ts,
                    body,
                });
                Expected::Exactly(Response::Appended { conversation: conversation(c), seq, ts, duplicate: false })
            }
            Op::MoveCursor { conversation: c, user: u, device: d, delivered, read } => {
                let Some(model) = self.conversations.get(&c).filter(|model| model.members.contains(&u)) else {
                    return Expected::Exactly(not_member(u, conversation(c)));
                };
                let last_seq = model.messages.len() as u64;
                let old = self.cursors.get(&(c, u, d)).copied().unwrap_or_default();
                // Forward only, clamped to the newest message; reading implies delivery.
                let read = old.read.max(read.unwrap_or(0).min(last_seq));
                let delivered = old.delivered.max(delivered.unwrap_or(0).min(last_seq)).max(read);
                let new = Cursor { delivered, read };
                if new != Cursor::default() {
                    self.cursors.insert((c, u, d), new);
                }
                Expected::Exactly(Response::Cursor { delivered, read })
            }
        }
    }
}

/// Applies [`Op`]s to one shard of a [`Node`] at increasing log indexes and checks every
/// answer against its [`Model`].
#[derive(Debug, Clone)]
struct Driver {
    shard: ShardId,
    index: u64,
    model: Model,
}

impl Driver {
    fn new(shard: ShardId) -> Self {
        Self { shard, index: 0, model: Model::default() }
    }

    /// Applies a raw command at the next index (no model check).
    fn apply(&mut self, node: &Node, command: &Command) -> Response {
        self.index += 1;
        node.apply(self.shard, self.index, command)
    }

    /// Applies `op` at the next index; fails unless the answer is the model's.
    fn step(&mut self, node: &Node, op: &Op) -> Result<(Command, Response), TestCaseError> {
        let command = self.model.command(op);
        let response = self.apply(node, &command);
        match self.model.expect(op, &command) {
            Expected::Exactly(expected) => prop_assert_eq!(&response, &expected, "answer to `{}`", command),
            Expected::InvalidArgument => {
                prop_assert!(
                    is_invalid_argument(&response),
                    "`{}`: expected invalid_argument, got {:?}",
                    command,
                    response
                )
            }
        }
        Ok((command, response))
    }

    fn run(&mut self, node: &Node, ops: &[Op]) -> Result<(), TestCaseError> {
        for op in ops {
            self.step(node, op)?;
        }
        Ok(())
    }
}

/// Fails unless `shard` of `node` holds exactly what `model` says: conversations, members,
/// messages (seqs 1..=last_seq, monotonic timestamps), history pages and cursors.
fn check_state(node: &Node, shard: ShardId, model: &Model) -> Result<(), TestCaseError> {
    for c in 0..CONVERSATIONS {
        let id = conversation(c);
        let stored = node.view(shard, id);
        let messages = node.messages(shard, id);
        let cursors = node.read(shard, |reader, txn| reader.cursors(txn, &id));
        let Some(expected) = model.conversations.get(&c) else {
            prop_assert_eq!(stored, None, "conversation {} should not exist", c);
            prop_assert!(messages.is_empty() && cursors.is_empty(), "rows of the missing conversation {}", c);
            continue;
        };
        let view = stored.ok_or_else(|| TestCaseError::fail(format!("conversation {c} is missing")))?;
        prop_assert_eq!(&view, &model.view(c));
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        prop_assert_eq!(
            seqs,
            (1..=view.last_seq).collect::<Vec<_>>(),
            "seqs of conversation {} are not 1..=last_seq",
            c
        );
        prop_assert_eq!(&messages, &expected.messages);
        prop_assert!(messages.windows(2).all(|pair| pair[0].ts <= pair[1].ts), "timestamps went backwards in {}", c);
        if let Some(&member) = expected.members.first() {
            // History pages: the newest `limit` messages below `before`, ascending.
            let n = view.last_seq;
            for before in [None, Some(0), Some(1), Some(n / 2 + 1), Some(n), Some(n + 1), Some(u64::MAX)] {
                for limit in [0, 1, 3, u32::MAX] {
                    let page = node.read(shard, |reader, txn| reader.history(txn, &id, &user(member), before, limit));
                    let below: Vec<MessageView> =
                        expected.messages.iter().filter(|m| before.is_none_or(|b| m.seq < b)).cloned().collect();
                    let limit = limit.min(HISTORY_PAGE_MAX) as usize;
                    let newest = below[below.len().saturating_sub(limit)..].to_vec();
                    prop_assert_eq!(page, Ok(newest), "history of {} before {:?} limit {}", c, before, limit);
                }
            }
            for after in [0, 1, n / 2, n, u64::MAX] {
                let tail = node.read(shard, |reader, txn| reader.messages_after(txn, &id, after, 2));
                let expected_tail: Vec<MessageView> =
                    expected.messages.iter().filter(|m| m.seq > after).take(2).cloned().collect();
                prop_assert_eq!(tail, expected_tail, "messages of {} after {}", c, after);
            }
        }
        let mut cursors = cursors;
        cursors.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        let mut expected_cursors: Vec<(UserId, DeviceId, Cursor)> = model
            .cursors
            .range((c, 0, 0)..(c + 1, 0, 0))
            .map(|(&(_, u, d), &cursor)| (user(u), device(d), cursor))
            .collect();
        expected_cursors.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        prop_assert_eq!(&cursors, &expected_cursors, "cursors of {}", c);
        for (u, d, cursor) in &cursors {
            prop_assert!(
                cursor.read <= cursor.delivered && cursor.delivered <= view.last_seq,
                "cursor {}/{} in {} is {:?} with last_seq {}",
                u,
                d,
                c,
                cursor,
                view.last_seq
            );
        }
    }
    prop_assert!(node.messages(shard, missing_conversation()).is_empty());
    Ok(())
}

// ---- strategies ----

/// [`CASES`] cases; failures are printed with their minimal input, not persisted to files.
fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

/// Member masks, often exactly the direct pair (users 0 and 1) so direct creation succeeds.
fn mask() -> impl Strategy<Value = u8> {
    prop_oneof![1 => Just(0b00011u8), 4 => 0u8..32]
}

/// Proposer clocks that disagree, so the state machine has to keep timestamps monotonic.
fn clock() -> impl Strategy<Value = u64> {
    1_000u64..1_100
}

/// Cursor positions: none, near the messages, or absurdly far ahead.
fn position() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![1 => Just(None), 6 => (0u64..30).prop_map(Some), 1 => Just(Some(u64::MAX))]
}

fn create() -> impl Strategy<Value = Op> {
    (0..CONVERSATIONS, 0..USERS, mask(), proptest::option::of("[a-z ]{0,12}"), clock()).prop_map(
        |(conversation, creator, members, title, ts)| Op::Create { conversation, creator, members, title, ts },
    )
}

/// A few creations to start from: the creator is always a member, and groups are large (most
/// users in them) so that most later commands come from members.
fn creates() -> impl Strategy<Value = Vec<Op>> {
    vec(
        (create(), 0u8..32).prop_map(|(op, extra)| match op {
            Op::Create { conversation, creator, members, title, ts } => {
                let extra = if conversation == DIRECT { 0 } else { extra };
                Op::Create { conversation, creator, members: members | extra | 1 << creator, title, ts }
            }
            other => other,
        }),
        1..5,
    )
}

/// Random ops, weighted: membership changes, appends and cursor moves.
fn op(membership: u32, appends: u32, cursors: u32) -> impl Strategy<Value = Op> {
    let single = prop_oneof![(0..USERS).prop_map(|u| 1u8 << u), 0u8..32];
    prop_oneof![
        membership => create(),
        membership => (0..CONVERSATIONS, 0..USERS, mask())
            .prop_map(|(conversation, by, members)| Op::Add { conversation, by, members }),
        membership => (0..CONVERSATIONS, 0..USERS, single)
            .prop_map(|(conversation, by, members)| Op::Remove { conversation, by, members }),
        appends => (0..CONVERSATIONS, 0..USERS, 0..DEVICES, clock(), "[a-z]{0,8}")
            .prop_map(|(conversation, sender, device, ts, body)| Op::Append { conversation, sender, device, ts, body }),
        cursors => (0..CONVERSATIONS, 0..USERS, 0..DEVICES, position(), position())
            .prop_map(|(conversation, user, device, delivered, read)| Op::MoveCursor { conversation, user, device, delivered, read }),
    ]
}

/// Shard ids, including the ones at byte boundaries of the big-endian key prefix.
fn shard_id() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(255), Just(256), Just(u32::MAX), any::<u32>()]
}

/// One device's send as generated: the gap to its previous client_seq, which of two
/// conversations it goes to, when its first copy arrives (at `client_seq + jitter`, jitter below
/// the window) and when each resend arrives (up to two windows late).
#[derive(Debug, Clone)]
struct Send {
    gap: u64,
    second_conversation: bool,
    jitter: u64,
    resends: Vec<u64>,
}

fn sends() -> impl Strategy<Value = Vec<Send>> {
    vec(
        (1u64..1_200, any::<bool>(), 0..DEDUP_WINDOW, vec(0..2 * DEDUP_WINDOW, 0..3))
            .prop_map(|(gap, second_conversation, jitter, resends)| Send { gap, second_conversation, jitter, resends }),
        1..20,
    )
}

/// The sending devices of property 2 as (user, device) indexes: user 0 has two, user 1's device
/// has the same name as one of user 0's, and ("a", "bd") and ("ab", "d") spell the same bytes
/// (dedup must key on both ids, kept apart).
const SENDERS: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 0), (2, 0)];

proptest! {
    #![proptest_config(config())]

    /// Property 1: whatever mix of members and non-members appends, each conversation's seqs are
    /// exactly 1..=n, `last_seq` is n, and every fresh `Appended` names the stored message.
    #[test]
    fn seqs_are_contiguous_and_match_every_append(
        shard in shard_id(),
        creates in creates(),
        ops in vec(op(1, 8, 1), 1..150),
    ) {
        let node = Node::open();
        let mut driver = Driver::new(ShardId(shard));
        driver.run(&node, &creates)?;
        let mut appended = Vec::new();
        for op in &ops {
            let (command, response) = driver.step(&node, op)?;
            if let (Command::Append { sender, device, client_seq, body, .. }, Response::Appended { conversation, seq, ts, duplicate: false }) =
                (command, response)
            {
                appended.push((conversation, seq, ts, sender, device, client_seq, body));
            }
        }
        let mut counts = BTreeMap::new();
        for (id, seq, ts, sender, device, client_seq, body) in appended {
            *counts.entry(id).or_insert(0u64) += 1;
            let stored = node.messages(driver.shard, id).into_iter().find(|m| m.seq == seq);
            let stored = stored.ok_or_else(|| TestCaseError::fail(format!("appended seq {seq} of {id} is not stored")))?;
            prop_assert_eq!(
                (stored.sender, stored.sender_device, stored.client_seq, stored.ts, stored.body),
                (sender, device, client_seq, ts, body)
            );
        }
        for (c, model) in &driver.model.conversations {
            let id = conversation(*c);
            let n = counts.get(&id).copied().unwrap_or(0);
            let seqs: Vec<u64> = node.messages(driver.shard, id).iter().map(|m| m.seq).collect();
            prop_assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
            prop_assert_eq!(node.view(driver.shard, id).map(|v| v.last_seq), Some(n));
            prop_assert_eq!(model.messages.len() as u64, n);
        }
        check_state(&node, driver.shard, &driver.model)?;
    }

    /// Property 2: sends of four devices (strictly increasing client_seqs with random gaps, to two
    /// conversations) arrive shuffled, each first copy at most a window after its place and resends
    /// up to two windows late. Every send is stored exactly once; a resend answers the original
    /// (seq, ts) while remembered and is refused as stale once forgotten, never appended again.
    #[test]
    fn appends_are_exactly_once_under_resend_and_reorder(
        shard in shard_id(),
        plans in proptest::array::uniform4(sends()),
    ) {
        let node = Node::open();
        let mut driver = Driver::new(ShardId(shard));
        // Group 0: users 0, 1, 2. Group 1: users 0, 1 (user 2 sends only to group 0).
        for (c, members) in [(0, 0b111u8), (1, 0b011)] {
            let op = Op::Create { conversation: c, creator: 0, members, title: None, ts: 0 };
            driver.step(&node, &op)?;
        }
        let target = |sender: usize, send: &Send| if send.second_conversation && SENDERS[sender].0 != 2 { 1 } else { 0 };

        let mut client_seqs: Vec<Vec<u64>> = Vec::new();
        let mut deliveries = Vec::new();
        for (s, plan) in plans.iter().enumerate() {
            let mut client_seq = 0;
            let mut seqs = Vec::new();
            for (k, send) in plan.iter().enumerate() {
                client_seq += send.gap;
                seqs.push(client_seq);
                deliveries.push((client_seq + send.jitter, s, k, 0));
                for (r, &late) in send.resends.iter().enumerate() {
                    deliveries.push((client_seq + late, s, k, r + 1));
                }
            }
            client_seqs.push(seqs);
        }
        // Arrival order. The first copy of a send arrives before `client_seq + DEDUP_WINDOW`, so
        // no earlier arrival of its device has a client_seq a window above it: none is stale.
        deliveries.sort_unstable();

        let mut highest: [Option<u64>; 4] = [None; 4];
        let mut first: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
        let mut last: BTreeMap<usize, (u64, u64)> = [(0, (0, 0)), (1, (0, 0))].into_iter().collect();
        for (i, &(_, s, k, copy)) in deliveries.iter().enumerate() {
            let (u, d) = SENDERS[s];
            let client_seq = client_seqs[s][k];
            let c = target(s, &plans[s][k]);
            let ts = 10_000 + (i as u64 * 37) % 100;
            let command = Command::Append {
                conversation: conversation(c),
                sender: user(u),
                device: device(d),
                client_seq,
                ts,
                body: format!("{}/{}#{client_seq}", user(u), device(d)),
            };
            let response = driver.apply(&node, &command);
            let expected = match first.get(&(s, k)) {
                None => {
                    let (last_seq, last_ts) = last[&c];
                    let (seq, ts) = (last_seq + 1, ts.max(last_ts));
                    last.insert(c, (seq, ts));
                    first.insert((s, k), (seq, ts));
                    highest[s] = Some(highest[s].map_or(client_seq, |h| h.max(client_seq)));
                    Response::Appended { conversation: conversation(c), seq, ts, duplicate: false }
                }
                Some(&(seq, ts)) => {
                    let h = highest[s].expect("a device that appended has a highest");
                    if client_seq + DEDUP_WINDOW > h {
                        Response::Appended { conversation: conversation(c), seq, ts, duplicate: true }
                    } else {
                        Response::Rejected(CommandError::StaleClientSeq { client_seq, highest: h })
                    }
                }
            };
            prop_assert_eq!(&response, &expected, "copy {} of {}/{}#{}", copy, user(u), device(d), client_seq);
        }

        let mut stored = Vec::new();
        for c in [0, 1] {
            let messages = node.messages(driver.shard, conversation(c));
            let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
            prop_assert_eq!(&seqs, &(1..=last[&c].0).collect::<Vec<_>>(), "seqs of conversation {}", c);
            prop_assert_eq!(node.view(driver.shard, conversation(c)).map(|v| v.last_seq), Some(last[&c].0));
            stored.extend(messages);
        }
        let keys: Vec<(UserId, DeviceId, u64)> =
            stored.iter().map(|m| (m.sender.clone(), m.sender_device.clone(), m.client_seq)).collect();
        let unique: BTreeSet<_> = keys.iter().cloned().collect();
        prop_assert_eq!(unique.len(), keys.len(), "a (user, device, client_seq) is stored twice");
        let sent: BTreeSet<(UserId, DeviceId, u64)> = SENDERS
            .iter()
            .zip(&client_seqs)
            .flat_map(|(&(u, d), seqs)| seqs.iter().map(move |&c| (user(u), device(d), c)))
            .collect();
        prop_assert_eq!(&unique, &sent, "stored sends differ from what was sent");
        for (&(s, k), &(seq, ts)) in &first {
            let (u, d) = SENDERS[s];
            let c = target(s, &plans[s][k]);
            let message = stored.iter().find(|m| m.conversation == conversation(c) && m.seq == seq).expect("stored");
            prop_assert_eq!(
                (&message.sender, &message.sender_device, message.client_seq, message.ts),
                (&user(u), &device(d), client_seqs[s][k], ts)
            );
        }
        for (s, &(u, d)) in SENDERS.iter().enumerate() {
            let stored_highest = node.read(driver.shard, |reader, txn| reader.highest_client_seq(txn, &user(u), &device(d)));
            prop_assert_eq!(stored_highest, client_seqs[s].last().copied());
        }
    }

    /// Property 3: random cursor moves (forward, backward, beyond the newest message) between
    /// appends and membership changes never lower a stored cursor, move it at least as far as
    /// asked (up to the newest message), and keep `read <= delivered <= last_seq`. (Removing a
    /// member deletes its device cursors; the model expects that, see [`check_state`].)
    #[test]
    fn cursors_only_move_forward(
        shard in shard_id(),
        creates in creates(),
        ops in vec(op(1, 4, 8), 1..150),
    ) {
        let node = Node::open();
        let mut driver = Driver::new(ShardId(shard));
        driver.run(&node, &creates)?;
        for op in &ops {
            let Op::MoveCursor { conversation: c, user: u, device: d, delivered, read } = *op else {
                driver.step(&node, op)?;
                continue;
            };
            let id = conversation(c);
            let member = driver.model.is_member(c, u);
            let before = node.cursor(driver.shard, id, u, d);
            let (_, response) = driver.step(&node, op)?;
            let after = node.cursor(driver.shard, id, u, d);
            let last_seq = node.view(driver.shard, id).map_or(0, |view| view.last_seq);
            prop_assert!(after.delivered >= before.delivered && after.read >= before.read, "{:?} -> {:?}", before, after);
            prop_assert!(after.read <= after.delivered && after.delivered <= last_seq, "{:?} with last_seq {}", after, last_seq);
            if member {
                prop_assert_eq!(response, Response::Cursor { delivered: after.delivered, read: after.read });
                let asked_read = read.unwrap_or(0).min(last_seq);
                prop_assert!(after.read >= asked_read, "read {:?} not reached: {:?}", read, after);
                prop_assert!(after.delivered >= delivered.unwrap_or(0).min(last_seq).max(asked_read), "delivered {:?} not reached: {:?}", delivered, after);
            } else {
                prop_assert_eq!(after, before);
            }
        }
        check_state(&node, driver.shard, &driver.model)?;
    }

    /// Property 4: after a random history, every non-member (and anyone, for a conversation that
    /// does not exist) is refused `Append`, `MoveCursor`, `AddMembers`, `RemoveMembers`, a create
    /// of an existing conversation, and `history`, with `NotMember`; the shard's dump is unchanged.
    #[test]
    fn non_members_are_refused_and_nothing_is_written(
        shard in shard_id(),
        creates in creates(),
        ops in vec(op(2, 3, 1), 0..40),
    ) {
        let node = Node::open();
        let mut driver = Driver::new(ShardId(shard));
        driver.run(&node, &creates)?;
        driver.run(&node, &ops)?;
        for c in 0..=CONVERSATIONS {
            let id = if c == CONVERSATIONS { missing_conversation() } else { conversation(c) };
            let exists = driver.model.conversations.contains_key(&c);
            for u in 0..USERS {
                if driver.model.is_member(c, u) {
                    continue;
                }
                let other = (u + 1) % USERS;
                let client_seq = driver.model.next_client_seq(u, 0);
                let mut commands = vec![
                    Command::Append { conversation: id, sender: user(u), device: device(0), client_seq, ts: 5_000, body: "let me in".into() },
                    Command::MoveCursor { conversation: id, user: user(u), device: device(0), delivered: Some(1), read: Some(1) },
                    Command::AddMembers { conversation: id, by: user(u), members: [user(u), user(other)].into() },
                    Command::RemoveMembers { conversation: id, by: user(u), members: (0..USERS).map(user).collect() },
                ];
                if exists {
                    commands.push(Command::CreateConversation {
                        conversation: id,
                        creator: user(u),
                        members: [user(u), user(other)].into(),
                        title: Some("mine now".into()),
                        direct: false,
                        ts: 5_000,
                    });
                }
                let before = node.dump(driver.shard);
                for command in &commands {
                    let response = driver.apply(&node, command);
                    prop_assert_eq!(&response, &not_member(u, id), "answer to `{}`", command);
                    prop_assert!(node.dump(driver.shard) == before, "the refused `{}` changed the shard", command);
                }
                let history = node.read(driver.shard, |reader, txn| reader.history(txn, &id, &user(u), None, 50));
                prop_assert_eq!(history, Err(CommandError::NotMember { user: user(u), conversation: id }));
            }
        }
        check_state(&node, driver.shard, &driver.model)?;
    }

    /// Property 5: dump shard A of store 1 after random commands, restore it into shard A of
    /// store 2 (which held other data there and in the adjacent shard B): store 2's shard A then
    /// dumps identically, reads like the model, and answers the same further commands the same
    /// way; shard B is untouched.
    #[test]
    fn snapshot_restore_reproduces_the_shard(
        shard in shard_id(),
        neighbour_above in any::<bool>(),
        (creates1, ops1) in (creates(), vec(op(1, 4, 2), 0..50)),
        (creates2, ops2) in (creates(), vec(op(1, 4, 2), 0..30)),
        (creates3, ops3) in (creates(), vec(op(1, 4, 2), 0..30)),
        tail in vec(op(1, 4, 2), 0..20),
    ) {
        let a = ShardId(shard);
        let b = ShardId(if neighbour_above { shard.wrapping_add(1) } else { shard.wrapping_sub(1) });
        let node1 = Node::open();
        let node2 = Node::open();
        let mut source = Driver::new(a);
        source.run(&node1, &creates1)?;
        source.run(&node1, &ops1)?;
        // Store 1's neighbour holds data too: the dump must leave it out.
        let mut other = Driver::new(b);
        other.run(&node1, &creates3)?;
        other.run(&node1, &ops3)?;
        let mut stale = Driver::new(a);
        stale.run(&node2, &creates2)?;
        stale.run(&node2, &ops2)?;
        let mut neighbour = Driver::new(b);
        neighbour.run(&node2, &creates3)?;
        neighbour.run(&node2, &ops3)?;
        let neighbour_dump = node2.dump(b);

        let data = node1.dump(a);
        node2.restore(a, data.clone());
        prop_assert!(node2.dump(a) == data, "the restored shard dumps differently");
        prop_assert!(node2.dump(b) == neighbour_dump, "restoring shard A changed shard B");
        check_state(&node2, a, &source.model)?;
        check_state(&node2, b, &neighbour.model)?;

        let mut restored = Driver { shard: a, index: source.index, model: source.model.clone() };
        for op in &tail {
            let (command1, response1) = source.step(&node1, op)?;
            let (command2, response2) = restored.step(&node2, op)?;
            prop_assert_eq!(command1, command2);
            prop_assert_eq!(response1, response2);
        }
        prop_assert!(node1.dump(a) == node2.dump(a), "the shards diverged after the restore");
        prop_assert!(node2.dump(b) == neighbour_dump);
    }

    /// Property 6a: creating an existing conversation again (a retry, or a different member with
    /// different fields) returns the first one with `created: false` and writes nothing; an
    /// outsider's create is `NotMember`.
    #[test]
    fn create_is_idempotent(
        shard in shard_id(),
        (creator, mask, title, ts) in (0..USERS, 0u8..32, proptest::option::of("[a-z]{0,8}"), clock()),
        appends in 0usize..3,
        (creator2, mask2, title2, ts2) in (0..USERS, 0u8..32, proptest::option::of("[a-z]{0,8}"), clock()),
    ) {
        let node = Node::open();
        let mut driver = Driver::new(ShardId(shard));
        let members = users_of(mask | 1 << creator | 1 << ((creator + 1) % USERS));
        let id = conversation(0);
        let create = Command::CreateConversation {
            conversation: id,
            creator: user(creator),
            members: user_ids(&members),
            title: title.clone(),
            direct: false,
            ts,
        };
        let expected = ConversationView {
            id,
            members: user_ids(&members).into_iter().collect(),
            title,
            direct: false,
            last_seq: 0,
            created_ts: ts,
        };
        prop_assert_eq!(driver.apply(&node, &create), Response::Conversation { conversation: expected.clone(), created: true });
        prop_assert_eq!(node.view(driver.shard, id), Some(expected));
        for n in 0..appends {
            let append = Command::Append {
                conversation: id,
                sender: user(creator),
                device: device(0),
                client_seq: n as u64 + 1,
                ts: ts + 1,
                body: "hi".into(),
            };
            let response = driver.apply(&node, &append);
            prop_assert!(matches!(response, Response::Appended { duplicate: false, .. }), "append {}: {:?}", n, response);
        }
        let view = node.view(driver.shard, id).expect("created");
        let before = node.dump(driver.shard);

        prop_assert_eq!(driver.apply(&node, &create), Response::Conversation { conversation: view.clone(), created: false });
        prop_assert!(node.dump(driver.shard) == before, "a retried create wrote");

        let members2 = users_of(mask2 | 1 << creator2 | 1 << ((creator2 + 1) % USERS));
        let second = Command::CreateConversation {
            conversation: id,
            creator: user(creator2),
            members: user_ids(&members2),
            title: title2,
            direct: false,
            ts: ts2,
        };
        let expected = if members.contains(&creator2) {
            Response::Conversation { conversation: view, created: false }
        } else {
            not_member(creator2, id)
        };
        prop_assert_eq!(driver.apply(&node, &second), expected);
        prop_assert!(node.dump(driver.shard) == before, "a second create wrote");
    }

    /// Property 6b: a direct conversation must have exactly its two members and their
    /// deterministic id; the right one is created once and found again from either side, and its
    /// members cannot change.
    #[test]
    fn direct_conversations_check_their_id(
        shard in shard_id(),
        a in 0..USERS,
        offset in 1..USERS,
        wrong in prop_oneof![any::<[u8; 16]>().prop_map(Ok), (0..USERS, 0..USERS).prop_map(Err)],
        ts in clock(),
    ) {
        let b = (a + offset) % USERS;
        let third = (0..USERS).find(|u| *u != a && *u != b).expect("five users");
        let right = ConversationId::direct(&user(a), &user(b));
        let wrong = match wrong {
            Ok(bytes) => ConversationId::from_bytes(bytes),
            Err((x, y)) => ConversationId::direct(&user(x), &user(y)),
        };
        prop_assume!(wrong != right);
        let node = Node::open();
        let mut driver = Driver::new(ShardId(shard));
        let pair: BTreeSet<UserId> = [user(a), user(b)].into();
        let direct = |id: ConversationId, creator: usize, members: BTreeSet<UserId>| Command::CreateConversation {
            conversation: id,
            creator: user(creator),
            members,
            title: None,
            direct: true,
            ts,
        };
        let empty = node.dump(driver.shard);
        let refused = [
            direct(wrong, a, pair.clone()),
            direct(right, a, [user(a), user(b), user(third)].into()),
            direct(right, a, [user(a)].into()),
        ];
        for command in &refused {
            let response = driver.apply(&node, command);
            prop_assert!(is_invalid_argument(&response), "`{}` answered {:?}", command, response);
            prop_assert!(node.dump(driver.shard) == empty, "the refused `{}` wrote", command);
        }

        let Response::Conversation { conversation: view, created: true } = driver.apply(&node, &direct(right, a, pair.clone())) else {
            return Err(TestCaseError::fail("the right direct id was not created"));
        };
        let mut sorted = vec![user(a), user(b)];
        sorted.sort();
        prop_assert_eq!(&view.members, &sorted);
        prop_assert!(view.direct);
        let before = node.dump(driver.shard);
        prop_assert_eq!(
            driver.apply(&node, &direct(right, b, pair.clone())),
            Response::Conversation { conversation: view.clone(), created: false }
        );
        let changes = [
            Command::AddMembers { conversation: right, by: user(a), members: [user(third)].into() },
            Command::RemoveMembers { conversation: right, by: user(a), members: [user(b)].into() },
            direct(wrong, b, pair),
        ];
        for command in &changes {
            let response = driver.apply(&node, command);
            prop_assert!(is_invalid_argument(&response), "`{}` answered {:?}", command, response);
        }
        prop_assert!(node.dump(driver.shard) == before, "the direct conversation changed");
    }

    /// Property 6c: membership records on a user shard, applied in any order and each twice
    /// (the second pass reversed, so older versions also arrive after newer ones), leave each
    /// (user, conversation) at its newest version's state.
    #[test]
    fn user_shard_keeps_the_newest_membership(
        shard in shard_id(),
        records in vec((0..3usize, 0..CONVERSATIONS, 1u64..40, any::<bool>()), 1..40),
    ) {
        // A version is the log index of one change: one state per (user, conversation, version).
        let mut truth: BTreeMap<(usize, usize, u64), bool> = BTreeMap::new();
        for &(u, c, version, member) in &records {
            truth.entry((u, c, version)).or_insert(member);
        }
        let node = Node::open();
        let mut driver = Driver::new(ShardId(shard));
        let commands: Vec<Command> = records
            .iter()
            .map(|&(u, c, version, _)| Command::ApplyMembership {
                user: user(u),
                conversation: conversation(c),
                member: truth[&(u, c, version)],
                version,
            })
            .collect();
        for command in commands.iter().chain(commands.iter().rev()) {
            prop_assert_eq!(driver.apply(&node, command), Response::Done);
        }
        for u in 0..USERS {
            let mut newest: BTreeMap<usize, (u64, bool)> = BTreeMap::new();
            for (&(uu, c, version), &member) in &truth {
                if uu == u && newest.get(&c).is_none_or(|&(v, _)| version > v) {
                    newest.insert(c, (version, member));
                }
            }
            let expected: BTreeSet<ConversationId> =
                newest.iter().filter(|(_, (_, member))| *member).map(|(&c, _)| conversation(c)).collect();
            let stored = node.read(driver.shard, |reader, txn| reader.user_conversations(txn, &user(u)));
            let stored_set: BTreeSet<ConversationId> = stored.iter().copied().collect();
            prop_assert_eq!(stored_set.len(), stored.len(), "a conversation is listed twice for {}", user(u));
            prop_assert_eq!(stored_set, expected, "conversations of {}", user(u));
        }
    }
}

/// Property 2, the window's edge, deterministically: with a device's highest client_seq H at or
/// above `DEDUP_WINDOW`, a client_seq at or below H − window that is not remembered (never seen,
/// or seen and forgotten) is `StaleClientSeq` and appends nothing; one above it that was sent
/// answers its original place; one above it never seen is a late send and appended once.
#[test]
fn dedup_window_edge() {
    let window = DEDUP_WINDOW;
    let node = Node::open();
    let mut driver = Driver::new(ShardId(7));
    let id = conversation(0);
    let create = group_of_users_0_and_1(id, 1);
    assert!(matches!(driver.apply(&node, &create), Response::Conversation { created: true, .. }));
    let send = |u: usize, d: usize, client_seq: u64| Command::Append {
        conversation: id,
        sender: user(u),
        device: device(d),
        client_seq,
        ts: 100,
        body: format!("#{client_seq}"),
    };
    let appended = |response: Response| match response {
        Response::Appended { seq, duplicate: false, .. } => seq,
        other => panic!("expected a fresh append, got {other:?}"),
    };

    // User 0, device 0: sparse sends up to H = 5000; the window's floor is H − 4096 = 904.
    let high = 5_000;
    let floor = high - window;
    let sent = [1, 10, floor - 1, floor + 1, 4_000, 4_104, high];
    let mut seqs = BTreeMap::new();
    for client_seq in sent {
        seqs.insert(client_seq, appended(driver.apply(&node, &send(0, 0, client_seq))));
    }
    let highest = node.read(driver.shard, |reader, txn| reader.highest_client_seq(txn, &user(0), &device(0)));
    assert_eq!(highest, Some(high));

    let before = node.dump(driver.shard);
    // Never seen at the floor and below, and seen but forgotten: refused, nothing written.
    for client_seq in [floor, 2, 0, 1, 10, floor - 1] {
        assert_eq!(
            driver.apply(&node, &send(0, 0, client_seq)),
            Response::Rejected(CommandError::StaleClientSeq { client_seq, highest: high }),
            "client_seq {client_seq}"
        );
    }
    assert!(node.dump(driver.shard) == before, "a stale client_seq wrote");
    // Remembered, the oldest one just above the floor included: the original place.
    for client_seq in [floor + 1, 4_000, 4_104, high] {
        let response = driver.apply(&node, &send(0, 0, client_seq));
        assert!(
            matches!(response, Response::Appended { seq, ts: 100, duplicate: true, .. } if seq == seqs[&client_seq]),
            "client_seq {client_seq}: {response:?}"
        );
    }
    assert!(node.dump(driver.shard) == before, "a resend wrote");
    // Never seen but inside the window: a late send, appended once.
    let late = appended(driver.apply(&node, &send(0, 0, floor + 2)));
    assert_eq!(late, sent.len() as u64 + 1);
    assert!(
        matches!(driver.apply(&node, &send(0, 0, floor + 2)), Response::Appended { seq, duplicate: true, .. } if seq == late)
    );

    // Moving the highest forgets what fell below the new floor.
    let new_high = high + 4_000;
    let new_floor = new_high - window;
    appended(driver.apply(&node, &send(0, 0, new_high)));
    for client_seq in [floor + 1, 4_000, 4_104, new_floor] {
        assert_eq!(
            driver.apply(&node, &send(0, 0, client_seq)),
            Response::Rejected(CommandError::StaleClientSeq { client_seq, highest: new_high }),
            "client_seq {client_seq} after the highest moved"
        );
    }
    let response = driver.apply(&node, &send(0, 0, high));
    assert!(matches!(response, Response::Appended { seq, duplicate: true, .. } if seq == seqs[&high]), "{response:?}");

    // User 1, device 0 (named like user 0's): H exactly the window, so only client_seq 0 is stale.
    appended(driver.apply(&node, &send(1, 0, 1)));
    appended(driver.apply(&node, &send(1, 0, window)));
    assert!(matches!(driver.apply(&node, &send(1, 0, 1)), Response::Appended { duplicate: true, .. }));
    assert_eq!(
        driver.apply(&node, &send(1, 0, 0)),
        Response::Rejected(CommandError::StaleClientSeq { client_seq: 0, highest: window })
    );
    // User 1, device 1: H below the window, so nothing is stale.
    appended(driver.apply(&node, &send(1, 1, window - 1)));
    appended(driver.apply(&node, &send(1, 1, 0)));

    let messages = node.messages(driver.shard, id);
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=messages.len() as u64).collect::<Vec<_>>());
    let keys: BTreeSet<_> =
        messages.iter().map(|m| (m.sender.clone(), m.sender_device.clone(), m.client_seq)).collect();
    assert_eq!(keys.len(), messages.len(), "a client_seq was stored twice");
    assert_eq!(messages.len(), sent.len() + 1 + 1 + 2 + 2);
}

/// A batch of cursor moves applies each move as `MoveCursor` would, alone: members' cursors
/// move forward (clamped to the newest message, never back), a non-member's move is refused
/// without touching the others, and an oversized batch is refused whole.
#[test]
fn cursor_moves_apply_one_by_one() {
    let node = Node::open();
    let mut driver = Driver::new(ShardId(3));
    let id = conversation(0);
    let create = group_of_users_0_and_1(id, 1);
    assert!(matches!(driver.apply(&node, &create), Response::Conversation { created: true, .. }));
    for client_seq in 1..=3 {
        let send = Command::Append {
            conversation: id,
            sender: user(0),
            device: device(0),
            client_seq,
            ts: 10,
            body: "m".into(),
        };
        assert!(matches!(driver.apply(&node, &send), Response::Appended { duplicate: false, .. }));
    }
    let step = |u: usize, d: usize, delivered: Option<u64>, read: Option<u64>| CursorMove {
        conversation: id,
        user: user(u),
        device: device(d),
        delivered,
        read,
    };
    let moves = vec![step(1, 0, Some(2), None), step(3, 0, Some(1), None), step(0, 1, None, Some(5))];
    let Response::Cursors { outcomes } = driver.apply(&node, &Command::MoveCursors { moves }) else {
        panic!("a batch answers with cursors");
    };
    assert_eq!(outcomes[0], Ok(Cursor { delivered: 2, read: 0 }));
    assert!(matches!(&outcomes[1], Err(CommandError::NotMember { .. })), "{:?}", outcomes[1]);
    assert_eq!(outcomes[2], Ok(Cursor { delivered: 3, read: 3 }), "clamped to the newest message");
    assert_eq!(node.cursor(driver.shard, id, 1, 0), Cursor { delivered: 2, read: 0 });
    assert_eq!(node.cursor(driver.shard, id, 3, 0), Cursor::default(), "the non-member wrote nothing");

    let back = vec![step(1, 0, Some(1), None)];
    let Response::Cursors { outcomes } = driver.apply(&node, &Command::MoveCursors { moves: back }) else {
        panic!("a batch answers with cursors");
    };
    assert_eq!(outcomes, vec![Ok(Cursor { delivered: 2, read: 0 })], "a cursor never moves back");

    let before = node.dump(driver.shard);
    let oversized = vec![step(1, 0, Some(3), None); CURSOR_MOVES_MAX + 1];
    assert!(matches!(
        driver.apply(&node, &Command::MoveCursors { moves: oversized }),
        Response::Rejected(CommandError::TooLarge(_))
    ));
    assert_eq!(node.dump(driver.shard), before, "an oversized batch writes nothing");
}

/// One message of property 7: which client_seq (small numbers, so resends and reuse happen),
/// how long its body is (some over the limit), and whether a batch ends after it.
#[derive(Debug, Clone)]
struct Batched {
    client_seq: u64,
    body_bytes: usize,
    ends_batch: bool,
}

fn batched() -> impl Strategy<Value = Vec<Batched>> {
    let body_bytes = prop_oneof![4 => 0usize..40, 1 => Just(BODY_BYTES_MAX), 1 => Just(BODY_BYTES_MAX + 1)];
    vec(
        (1u64..30, body_bytes, proptest::bool::weighted(0.3))
            .prop_map(|(client_seq, body_bytes, ends_batch)| Batched { client_seq, body_bytes, ends_batch }),
        1..60,
    )
}

proptest! {
    #![proptest_config(config())]

    /// Property 7: a device's messages proposed as `AppendMany` batches leave the shard exactly
    /// as the same messages appended one by one (with each batch's timestamp), and each
    /// message's outcome is the one its own `Append` gets: seqs, resends of remembered
    /// client_seqs, bodies over the limit, and a sender that is not a member (`member` false).
    #[test]
    fn a_batch_appends_as_its_messages_would_one_by_one(
        shard in shard_id(),
        messages in batched(),
        member in proptest::bool::weighted(0.9),
        clock in clock(),
    ) {
        let (batched_node, single_node) = (Node::open(), Node::open());
        let (mut batched_driver, mut single_driver) = (Driver::new(ShardId(shard)), Driver::new(ShardId(shard)));
        let id = conversation(0);
        let sender = if member { user(0) } else { user(2) };
        let create = group_of_users_0_and_1(id, 0);
        batched_driver.apply(&batched_node, &create);
        single_driver.apply(&single_node, &create);
        let mut batch = Vec::new();
        for (position, message) in messages.iter().enumerate() {
            batch.push(Outgoing { client_seq: message.client_seq, body: "b".repeat(message.body_bytes) });
            let bytes: usize = batch.iter().map(|outgoing| outgoing.body.len()).sum();
            // Full when the next message, at most one byte over the body limit, might not fit.
            let full = batch.len() == APPEND_MANY_MAX || bytes + BODY_BYTES_MAX + 1 > APPEND_MANY_BYTES_MAX;
            if !(message.ends_batch || full || position + 1 == messages.len()) {
                continue;
            }
            let ts = clock.wrapping_add(position as u64 * 7) % 1_000_000;
            let messages = std::mem::take(&mut batch);
            let many = Command::AppendMany { conversation: id, sender: sender.clone(), device: device(0), ts, messages: messages.clone() };
            let Response::AppendedMany { outcomes } = batched_driver.apply(&batched_node, &many) else {
                return Err(TestCaseError::fail(format!("`{many}` did not answer with outcomes")));
            };
            prop_assert_eq!(outcomes.len(), messages.len());
            for (outgoing, outcome) in messages.into_iter().zip(outcomes) {
                let single = Command::Append {
                    conversation: id,
                    sender: sender.clone(),
                    device: device(0),
                    client_seq: outgoing.client_seq,
                    ts,
                    body: outgoing.body,
                };
                let expected = match single_driver.apply(&single_node, &single) {
                    Response::Appended { conversation, seq, ts, duplicate } => Ok(Placed { conversation, seq, ts, duplicate }),
                    Response::Rejected(error) => Err(error),
                    other => return Err(TestCaseError::fail(format!("`{single}` answered {other:?}"))),
                };
                prop_assert_eq!(outcome, expected, "client_seq {}", outgoing.client_seq);
            }
        }
        prop_assert_eq!(batched_node.dump(batched_driver.shard), single_node.dump(single_driver.shard));
        let stored = batched_node.messages(batched_driver.shard, id).len();
        if member {
            let distinct: BTreeSet<u64> =
                messages.iter().filter(|m| m.body_bytes <= BODY_BYTES_MAX).map(|m| m.client_seq).collect();
            prop_assert_eq!(stored, distinct.len(), "each client_seq once");
        } else {
            prop_assert_eq!(stored, 0, "a non-member appends nothing");
        }
    }
}

/// A batch over either limit is refused whole and writes nothing.
#[test]
fn an_oversized_batch_is_refused_whole() {
    let node = Node::open();
    let mut driver = Driver::new(ShardId(5));
    let id = conversation(0);
    let create = group_of_users_0_and_1(id, 1);
    driver.apply(&node, &create);
    let before = node.dump(driver.shard);
    let outgoing = |client_seq: u64, bytes: usize| Outgoing { client_seq, body: "x".repeat(bytes) };
    let too_many: Vec<Outgoing> = (1..=APPEND_MANY_MAX as u64 + 1).map(|n| outgoing(n, 1)).collect();
    let too_big: Vec<Outgoing> = (1..=3).map(|n| outgoing(n, BODY_BYTES_MAX)).collect();
    for messages in [too_many, too_big] {
        let many = Command::AppendMany { conversation: id, sender: user(0), device: device(0), ts: 2, messages };
        assert!(matches!(driver.apply(&node, &many), Response::Rejected(CommandError::TooLarge(_))));
        assert_eq!(node.dump(driver.shard), before, "an oversized batch writes nothing");
    }
    let fits: Vec<Outgoing> = (1..=APPEND_MANY_MAX as u64).map(|n| outgoing(n, 1)).collect();
    let many = Command::AppendMany { conversation: id, sender: user(0), device: device(0), ts: 2, messages: fits };
    let Response::AppendedMany { outcomes } = driver.apply(&node, &many) else {
        panic!("a batch answers with outcomes")
    };
    let seqs: Vec<u64> = outcomes.into_iter().map(|outcome| outcome.expect("appended").seq).collect();
    assert_eq!(seqs, (1..=APPEND_MANY_MAX as u64).collect::<Vec<_>>());
}
