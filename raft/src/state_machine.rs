//! The conversation state machine: how a committed [`Command`] changes a shard's tables, and
//! how readers see them.
//!
//! `apply` is pure over the write transaction it is given: it reads no clock, no RNG and no
//! global state, so every replica that applies the same log reaches the same tables. The
//! storage layer ([`crate::store`]) decides when transactions open and commit.

use std::collections::BTreeSet;

use heed::{RoTxn, RwTxn};
use natter_canary::Canary;
use natter_proto::limits::{BODY_BYTES_MAX, DEDUP_WINDOW, HISTORY_PAGE_MAX, MEMBERS_MAX, MEMBERS_MIN, TITLE_BYTES_MAX};
use natter_proto::{ConversationId, DeviceId, UserId};
use serde::{Deserialize, Serialize};

use crate::command::{
    Applied, Command, CommandError, ConversationView, Cursor, CursorMove, Effect, MessageView, OutboxId, OutboxItem,
    Outgoing, Placed, Response, UserRecord, UserSettings, APPEND_MANY_BYTES_MAX, APPEND_MANY_MAX, CURSOR_MOVES_MAX,
};
use crate::placement::ShardId;
use crate::tables::{decode, delete_prefix, get, put, read_u64, Key, Tables};

/// A conversation's row (its members live in their own table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ConversationRow {
    title: Option<String>,
    direct: bool,
    created_ts: u64,
    member_count: u32,
    last_seq: u64,
    last_ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MessageRow {
    sender: UserId,
    sender_device: DeviceId,
    client_seq: u64,
    ts: u64,
    body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct DedupRow {
    conversation: ConversationId,
    seq: u64,
    ts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct MembershipRow {
    member: bool,
    version: u64,
}

/// Applies one committed command at log `index` of `shard` and says what it did: the answer
/// for the proposer and the effects to push. Rejections write nothing and have no effects.
pub fn apply_with_effects(
    tables: &Tables,
    txn: &mut RwTxn<'_>,
    shard: ShardId,
    index: u64,
    command: &Command,
) -> heed::Result<Applied> {
    let mut machine = Machine { tables, shard, index, effects: Vec::new() };
    let result = match command {
        Command::CreateConversation { conversation, creator, members, title, direct, ts } => {
            machine.create(txn, conversation, creator, members, title, *direct, *ts)
        }
        Command::AddMembers { conversation, by, members } => machine.add_members(txn, conversation, by, members),
        Command::RemoveMembers { conversation, by, members } => machine.remove_members(txn, conversation, by, members),
        Command::Append { conversation, sender, device, client_seq, ts, body } => {
            let placed = machine.place(txn, conversation, sender, device, *client_seq, *ts, body)?;
            Ok(placed.map(|Placed { conversation, seq, ts, duplicate }| Response::Appended {
                conversation,
                seq,
                ts,
                duplicate,
            }))
        }
        Command::AppendMany { conversation, sender, device, ts, messages } => {
            machine.append_many(txn, conversation, sender, device, *ts, messages)
        }
        Command::MoveCursor { conversation, user, device, delivered, read } => {
            machine.move_cursor(txn, conversation, user, device, *delivered, *read)
        }
        Command::MoveCursors { moves } => machine.move_cursors(txn, moves),
        Command::ApplyMembership { user, conversation, member, version } => {
            machine.apply_membership(txn, user, conversation, *member, *version).map(Ok)
        }
        Command::SetLastSeen { user, ts } => machine.set_last_seen(txn, user, *ts).map(Ok),
        Command::SetSettings { user, settings } => machine.set_settings(txn, user, settings),
        Command::AckOutbox { ids } => machine.ack_outbox(txn, ids).map(Ok),
        Command::Probe { .. } => Ok(Ok(Response::Probed { index })),
    }?;
    match result {
        Ok(response) => Ok(Applied { response, effects: machine.effects }),
        Err(error) => {
            debug_assert!(machine.effects.is_empty(), "a rejection has no effects");
            Ok(Applied::from(Response::Rejected(error)))
        }
    }
}

/// [`apply_with_effects`] for callers that want only the proposer's answer.
pub fn apply(
    tables: &Tables,
    txn: &mut RwTxn<'_>,
    shard: ShardId,
    index: u64,
    command: &Command,
) -> heed::Result<Response> {
    apply_with_effects(tables, txn, shard, index, command).map(|applied| applied.response)
}

type Outcome = heed::Result<Result<Response, CommandError>>;

struct Machine<'a> {
    tables: &'a Tables,
    shard: ShardId,
    index: u64,
    /// What the command did so far that others must hear of.
    effects: Vec<Effect>,
}

impl Machine<'_> {
    fn key(&self) -> Key {
        Key::shard(self.shard)
    }

    fn conversation_row(
        &self,
        txn: &RoTxn<'_>,
        conversation: &ConversationId,
    ) -> heed::Result<Option<ConversationRow>> {
        get(&self.tables.conversations, txn, self.key().conversation(conversation).as_bytes())
    }

    fn is_member(&self, txn: &RoTxn<'_>, conversation: &ConversationId, user: &UserId) -> heed::Result<bool> {
        let key = self.key().conversation(conversation).user(user);
        Ok(self.tables.members.get(txn, key.as_bytes())?.is_some())
    }

    /// The conversation row if `user` is a member; a missing conversation and a non-member are
    /// the same refusal so conversation ids cannot be probed.
    fn member_row(
        &self,
        txn: &RoTxn<'_>,
        conversation: &ConversationId,
        user: &UserId,
    ) -> heed::Result<Result<ConversationRow, CommandError>> {
        let not_member = || CommandError::NotMember { user: user.clone(), conversation: *conversation };
        let Some(row) = self.conversation_row(txn, conversation)? else {
            return Ok(Err(not_member()));
        };
        if !self.is_member(txn, conversation, user)? {
            return Ok(Err(not_member()));
        }
        Ok(Ok(row))
    }

    /// The row of a group conversation whose members `by` may change.
    fn group_row(
        &self,
        txn: &RoTxn<'_>,
        conversation: &ConversationId,
        by: &UserId,
    ) -> heed::Result<Result<ConversationRow, CommandError>> {
        Ok(self.member_row(txn, conversation, by)?.and_then(|row| {
            if row.direct {
                Err(CommandError::InvalidArgument("members of a direct conversation cannot change".into()))
            } else {
                Ok(row)
            }
        }))
    }

    fn outbox(
        &self,
        txn: &mut RwTxn<'_>,
        position: &mut u32,
        user: &UserId,
        conversation: &ConversationId,
        member: bool,
    ) -> heed::Result<()> {
        let id = OutboxId { index: self.index, position: *position };
        *position += 1;
        let item = OutboxItem {
            user: user.clone(),
            command: Command::ApplyMembership {
                user: user.clone(),
                conversation: *conversation,
                member,
                version: self.index,
            },
        };
        put(&self.tables.outbox, txn, self.key().u64(id.index).u32(id.position).as_bytes(), &item)
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        txn: &mut RwTxn<'_>,
        conversation: &ConversationId,
        creator: &UserId,
        members: &BTreeSet<UserId>,
        title: &Option<String>,
        direct: bool,
        ts: u64,
    ) -> Outcome {
        if !members.contains(creator) {
            return Ok(Err(CommandError::InvalidArgument("the creator must be a member".into())));
        }
        if members.len() < MEMBERS_MIN {
            return Ok(Err(CommandError::InvalidArgument(format!(
                "a conversation needs at least {MEMBERS_MIN} members, got {}",
                members.len()
            ))));
        }
        if members.len() > MEMBERS_MAX {
            return Ok(Err(CommandError::TooLarge(format!(
                "{} members, expected at most {MEMBERS_MAX}",
                members.len()
            ))));
        }
        if let Some(title) = title {
            if title.len() > TITLE_BYTES_MAX {
                return Ok(Err(CommandError::TooLarge(format!(
                    "title of {} bytes, expected at most {TITLE_BYTES_MAX}",
                    title.len()
                ))));
            }
        }
        if direct {
            let mut pair = members.iter();
            let (Some(a), Some(b), None) = (pair.next(), pair.next(), pair.next()) else {
                return Ok(Err(CommandError::InvalidArgument("a direct conversation has exactly two members".into())));
            };
            if ConversationId::direct(a, b) != *conversation {
                return Ok(Err(CommandError::InvalidArgument(
                    "direct conversation id does not match its members".into(),
                )));
            }
        }
        if self.conversation_row(txn, conversation)?.is_some() {
            // Idempotent: a retried create (or a second "create DM") finds the first. Someone
            // who is not a member learns nothing about it.
            return Ok(match self.member_row(txn, conversation, creator)? {
                Ok(_) => Ok(Response::Conversation {
                    conversation: self.view(txn, conversation)?.expect("exists"),
                    created: false,
                }),
                Err(error) => Err(error),
            });
        }
        let row = ConversationRow {
            title: title.clone(),
            direct,
            created_ts: ts,
            member_count: members.len() as u32,
            last_seq: 0,
            last_ts: ts,
        };
        put(&self.tables.conversations, txn, self.key().conversation(conversation).as_bytes(), &row)?;
        let mut position = 0;
        for member in members {
            let key = self.key().conversation(conversation).user(member);
            self.tables.members.put(txn, key.as_bytes(), &self.index.to_be_bytes())?;
            self.outbox(txn, &mut position, member, conversation, true)?;
        }
        Ok(Ok(Response::Conversation {
            conversation: self.view(txn, conversation)?.expect("just created"),
            created: true,
        }))
    }

    fn add_members(
        &mut self,
        txn: &mut RwTxn<'_>,
        conversation: &ConversationId,
        by: &UserId,
        members: &BTreeSet<UserId>,
    ) -> Outcome {
        let mut row = match self.group_row(txn, conversation, by)? {
            Ok(row) => row,
            Err(error) => return Ok(Err(error)),
        };
        let mut new = Vec::new();
        for member in members {
            if !self.is_member(txn, conversation, member)? {
                new.push(member);
            }
        }
        let total = row.member_count as usize + new.len();
        if total > MEMBERS_MAX {
            return Ok(Err(CommandError::TooLarge(format!("{total} members, expected at most {MEMBERS_MAX}"))));
        }
        let mut position = 0;
        for member in new {
            let key = self.key().conversation(conversation).user(member);
            self.tables.members.put(txn, key.as_bytes(), &self.index.to_be_bytes())?;
            self.outbox(txn, &mut position, member, conversation, true)?;
        }
        row.member_count = total as u32;
        put(&self.tables.conversations, txn, self.key().conversation(conversation).as_bytes(), &row)?;
        Ok(Ok(Response::Conversation { conversation: self.view(txn, conversation)?.expect("exists"), created: false }))
    }

    fn remove_members(
        &mut self,
        txn: &mut RwTxn<'_>,
        conversation: &ConversationId,
        by: &UserId,
        members: &BTreeSet<UserId>,
    ) -> Outcome {
        let mut row = match self.group_row(txn, conversation, by)? {
            Ok(row) => row,
            Err(error) => return Ok(Err(error)),
        };
        let mut position = 0;
        for member in members {
            let key = self.key().conversation(conversation).user(member);
            if self.tables.members.delete(txn, key.as_bytes())? {
                row.member_count -= 1;
                delete_prefix(&self.tables.cursors, txn, key.as_bytes())?;
                self.outbox(txn, &mut position, member, conversation, false)?;
            }
        }
        put(&self.tables.conversations, txn, self.key().conversation(conversation).as_bytes(), &row)?;
        Ok(Ok(Response::Conversation { conversation: self.view(txn, conversation)?.expect("exists"), created: false }))
    }

    /// Appends one message, or answers a resend with its original place.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        txn: &mut RwTxn<'_>,
        conversation: &ConversationId,
        sender: &UserId,
        device: &DeviceId,
        client_seq: u64,
        ts: u64,
        body: &str,
    ) -> heed::Result<Result<Placed, CommandError>> {
        let device_key = self.key().user(sender).device(device);
        // Exactly once: a remembered client_seq answers with its original place, whatever else
        // changed since (even if the sender has left the conversation).
        let dedup_key = device_key.clone().u64(client_seq);
        let remembered = if natter_canary::active(Canary::DedupSkipped) {
            None
        } else {
            get::<DedupRow>(&self.tables.dedup, txn, dedup_key.as_bytes())?
        };
        if let Some(row) = remembered {
            return Ok(Ok(Placed { conversation: row.conversation, seq: row.seq, ts: row.ts, duplicate: true }));
        }
        let highest = self.tables.dedup_high.get(txn, device_key.as_bytes())?.map(|raw| read_u64(raw, 0));
        if let Some(highest) = highest {
            if highest >= DEDUP_WINDOW && client_seq <= highest - DEDUP_WINDOW {
                // Not remembered and too old to tell: refuse rather than risk a second copy.
                return Ok(Err(CommandError::StaleClientSeq { client_seq, highest }));
            }
        }
        let mut row = match self.member_row(txn, conversation, sender)? {
            Ok(row) => row,
            Err(error) => return Ok(Err(error)),
        };
        if body.len() > BODY_BYTES_MAX {
            return Ok(Err(CommandError::TooLarge(format!(
                "body of {} bytes, expected at most {BODY_BYTES_MAX}",
                body.len()
            ))));
        }
        let seq = row.last_seq + 1;
        // Timestamps never go backwards within a conversation, even across leader changes with
        // skewed clocks.
        let ts = ts.max(row.last_ts);
        let message =
            MessageRow { sender: sender.clone(), sender_device: device.clone(), client_seq, ts, body: body.to_owned() };
        self.effects.push(Effect::Appended(natter_proto::MessageRecord {
            conversation: *conversation,
            seq,
            sender: sender.clone(),
            sender_device: device.clone(),
            client_seq,
            ts,
            body: body.to_owned(),
        }));
        let message_key = self.key().conversation(conversation).u64(seq);
        debug_assert!(self.tables.messages.get(txn, message_key.as_bytes())?.is_none(), "seq {seq} already used");
        put(&self.tables.messages, txn, message_key.as_bytes(), &message)?;
        row.last_seq = seq;
        row.last_ts = ts;
        put(&self.tables.conversations, txn, self.key().conversation(conversation).as_bytes(), &row)?;
        put(&self.tables.dedup, txn, dedup_key.as_bytes(), &DedupRow { conversation: *conversation, seq, ts })?;
        if highest.is_none_or(|highest| client_seq > highest) {
            self.tables.dedup_high.put(txn, device_key.as_bytes(), &client_seq.to_be_bytes())?;
            if client_seq >= DEDUP_WINDOW {
                // Forget everything at or below the new window's floor.
                let floor = client_seq - DEDUP_WINDOW;
                let start = device_key.clone().u64(0);
                let end = device_key.clone().u64(floor);
                let range = (std::ops::Bound::Included(start.as_bytes()), std::ops::Bound::Included(end.as_bytes()));
                self.tables.dedup.delete_range(txn, &range)?;
            }
        }
        Ok(Ok(Placed { conversation: *conversation, seq, ts, duplicate: false }))
    }

    fn append_many(
        &mut self,
        txn: &mut RwTxn<'_>,
        conversation: &ConversationId,
        sender: &UserId,
        device: &DeviceId,
        ts: u64,
        messages: &[Outgoing],
    ) -> Outcome {
        let bytes: usize = messages.iter().map(|message| message.body.len()).sum();
        if messages.len() > APPEND_MANY_MAX || bytes > APPEND_MANY_BYTES_MAX {
            return Ok(Err(CommandError::TooLarge(format!(
                "{} messages of {bytes} bytes in one batch, expected at most {APPEND_MANY_MAX} and {APPEND_MANY_BYTES_MAX}",
                messages.len()
            ))));
        }
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            outcomes.push(self.place(txn, conversation, sender, device, message.client_seq, ts, &message.body)?);
        }
        Ok(Ok(Response::AppendedMany { outcomes }))
    }

    fn move_cursor(
        &mut self,
        txn: &mut RwTxn<'_>,
        conversation: &ConversationId,
        user: &UserId,
        device: &DeviceId,
        delivered: Option<u64>,
        read: Option<u64>,
    ) -> Outcome {
        let step =
            CursorMove { conversation: *conversation, user: user.clone(), device: device.clone(), delivered, read };
        let moved = self.move_one_cursor(txn, &step)?;
        if moved.is_ok() {
            self.receipt(txn, conversation, user)?;
        }
        Ok(moved.map(|Cursor { delivered, read }| Response::Cursor { delivered, read }))
    }

    /// Moves one device's cursors forward (clamped to the newest seq); its new cursors.
    fn move_one_cursor(
        &mut self,
        txn: &mut RwTxn<'_>,
        step: &CursorMove,
    ) -> heed::Result<Result<Cursor, CommandError>> {
        let CursorMove { conversation, user, device, delivered, read } = step;
        let (delivered, read) = (*delivered, *read);
        let row = match self.member_row(txn, conversation, user)? {
            Ok(row) => row,
            Err(error) => return Ok(Err(error)),
        };
        let key = self.key().conversation(conversation).user(user).device(device);
        let old: Cursor = get(&self.tables.cursors, txn, key.as_bytes())?.unwrap_or_default();
        // A cursor names a message that exists: clamp to the newest seq.
        let read = old.read.max(read.unwrap_or(0).min(row.last_seq));
        let delivered = old.delivered.max(delivered.unwrap_or(0).min(row.last_seq)).max(read);
        assert!(delivered >= old.delivered && read >= old.read, "cursor moved backwards");
        let new = Cursor { delivered, read };
        if new != old {
            put(&self.tables.cursors, txn, key.as_bytes(), &new)?;
        }
        Ok(Ok(new))
    }

    /// Records the receipt of `user` in `conversation`: the highest cursors over its devices.
    fn receipt(&mut self, txn: &RoTxn<'_>, conversation: &ConversationId, user: &UserId) -> heed::Result<()> {
        let reader = Reader { tables: self.tables, shard: self.shard };
        let (mut delivered, mut read) = (0, 0);
        for (owner, _, cursor) in reader.cursors(txn, conversation)? {
            if &owner == user {
                (delivered, read) = (delivered.max(cursor.delivered), read.max(cursor.read));
            }
        }
        self.effects.push(Effect::Receipt { conversation: *conversation, user: user.clone(), delivered, read });
        Ok(())
    }

    fn move_cursors(&mut self, txn: &mut RwTxn<'_>, moves: &[CursorMove]) -> Outcome {
        if moves.len() > CURSOR_MOVES_MAX {
            return Ok(Err(CommandError::TooLarge(format!(
                "{} cursor moves, expected at most {CURSOR_MOVES_MAX}",
                moves.len()
            ))));
        }
        let mut outcomes = Vec::with_capacity(moves.len());
        let mut moved = BTreeSet::new();
        for step in moves {
            let outcome = self.move_one_cursor(txn, step)?;
            if outcome.is_ok() {
                moved.insert((step.conversation, step.user.clone()));
            }
            outcomes.push(outcome);
        }
        // One receipt per member whose cursors moved, from the state after the whole batch.
        for (conversation, user) in moved {
            self.receipt(txn, &conversation, &user)?;
        }
        Ok(Ok(Response::Cursors { outcomes }))
    }

    fn apply_membership(
        &mut self,
        txn: &mut RwTxn<'_>,
        user: &UserId,
        conversation: &ConversationId,
        member: bool,
        version: u64,
    ) -> heed::Result<Response> {
        let key = self.key().user(user).conversation(conversation);
        let old: Option<MembershipRow> = get(&self.tables.user_conversations, txn, key.as_bytes())?;
        if old.is_none_or(|old| version > old.version) {
            put(&self.tables.user_conversations, txn, key.as_bytes(), &MembershipRow { member, version })?;
        }
        if member {
            self.effects.push(Effect::Joined { user: user.clone(), conversation: *conversation });
        }
        Ok(Response::Done)
    }

    fn set_last_seen(&mut self, txn: &mut RwTxn<'_>, user: &UserId, ts: u64) -> heed::Result<Response> {
        let key = self.key().user(user);
        let mut record: UserRecord = get(&self.tables.users, txn, key.as_bytes())?.unwrap_or_default();
        if record.last_seen.is_none_or(|seen| ts > seen) {
            record.last_seen = Some(ts);
            put(&self.tables.users, txn, key.as_bytes(), &record)?;
        }
        Ok(Response::Done)
    }

    fn set_settings(&mut self, txn: &mut RwTxn<'_>, user: &UserId, settings: &UserSettings) -> Outcome {
        if settings.time_zone.as_ref().is_some_and(|zone| zone.is_empty() || zone.len() > 64) {
            return Ok(Err(CommandError::InvalidArgument("time zone must be 1..=64 bytes".into())));
        }
        let key = self.key().user(user);
        let mut record: UserRecord = get(&self.tables.users, txn, key.as_bytes())?.unwrap_or_default();
        record.settings = settings.clone();
        put(&self.tables.users, txn, key.as_bytes(), &record)?;
        Ok(Ok(Response::Done))
    }

    fn ack_outbox(&mut self, txn: &mut RwTxn<'_>, ids: &[OutboxId]) -> heed::Result<Response> {
        for id in ids {
            self.tables.outbox.delete(txn, self.key().u64(id.index).u32(id.position).as_bytes())?;
        }
        Ok(Response::Done)
    }

    fn view(&self, txn: &RoTxn<'_>, conversation: &ConversationId) -> heed::Result<Option<ConversationView>> {
        Reader { tables: self.tables, shard: self.shard }.conversation(txn, conversation)
    }
}

/// Read-only queries over one shard's state.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    /// The node's tables.
    pub tables: &'a Tables,
    /// The shard to read.
    pub shard: ShardId,
}

impl Reader<'_> {
    fn key(&self) -> Key {
        Key::shard(self.shard)
    }

    /// A conversation with its members, or `None` if it does not exist. Callers that serve a
    /// user check membership first ([`Reader::check_member`]).
    pub fn conversation(
        &self,
        txn: &RoTxn<'_>,
        conversation: &ConversationId,
    ) -> heed::Result<Option<ConversationView>> {
        let Some(row) =
            get::<ConversationRow>(&self.tables.conversations, txn, self.key().conversation(conversation).as_bytes())?
        else {
            return Ok(None);
        };
        let prefix = self.key().conversation(conversation);
        let mut members = Vec::with_capacity(row.member_count as usize);
        for item in self.tables.members.prefix_iter(txn, prefix.as_bytes())? {
            let (key, _) = item?;
            let user = std::str::from_utf8(&key[prefix.as_bytes().len() + 1..])
                .map_err(|e| heed::Error::Decoding(Box::new(e)))?;
            members.push(UserId::new(user).map_err(|e| heed::Error::Decoding(Box::new(e)))?);
        }
        members.sort();
        debug_assert_eq!(members.len(), row.member_count as usize);
        Ok(Some(ConversationView {
            id: *conversation,
            members,
            title: row.title,
            direct: row.direct,
            last_seq: row.last_seq,
            created_ts: row.created_ts,
        }))
    }

    /// `Ok(())` if `user` is a member of `conversation`, else the same `not_member` refusal for
    /// a missing conversation and a non-member.
    pub fn check_member(
        &self,
        txn: &RoTxn<'_>,
        conversation: &ConversationId,
        user: &UserId,
    ) -> heed::Result<Result<(), CommandError>> {
        let exists = self.tables.conversations.get(txn, self.key().conversation(conversation).as_bytes())?.is_some();
        let member = exists
            && self.tables.members.get(txn, self.key().conversation(conversation).user(user).as_bytes())?.is_some();
        Ok(if member {
            Ok(())
        } else {
            Err(CommandError::NotMember { user: user.clone(), conversation: *conversation })
        })
    }

    /// Up to `limit` (capped at `HISTORY_PAGE_MAX`) messages with seq below `before` (all if
    /// `None`), newest page first, returned in ascending seq order. Only for members.
    pub fn history(
        &self,
        txn: &RoTxn<'_>,
        conversation: &ConversationId,
        user: &UserId,
        before: Option<u64>,
        limit: u32,
    ) -> heed::Result<Result<Vec<MessageView>, CommandError>> {
        if let Err(error) = self.check_member(txn, conversation, user)? {
            return Ok(Err(error));
        }
        let limit = limit.min(HISTORY_PAGE_MAX) as usize;
        let start = self.key().conversation(conversation).u64(1);
        let end = self.key().conversation(conversation).u64(before.unwrap_or(u64::MAX));
        let range = (std::ops::Bound::Included(start.as_bytes()), std::ops::Bound::Excluded(end.as_bytes()));
        let mut page = Vec::with_capacity(limit);
        for item in self.tables.messages.rev_range(txn, &range)?.take(limit) {
            let (key, value) = item?;
            page.push(self.message_view(conversation, key, value)?);
        }
        page.reverse();
        Ok(Ok(page))
    }

    /// Up to `limit` messages with seq above `after`, ascending: catch-up after a cursor. Not
    /// membership-checked (the node checks before serving a device).
    pub fn messages_after(
        &self,
        txn: &RoTxn<'_>,
        conversation: &ConversationId,
        after: u64,
        limit: usize,
    ) -> heed::Result<Vec<MessageView>> {
        let start = self.key().conversation(conversation).u64(after.saturating_add(1));
        let end = self.key().conversation(conversation).u64(u64::MAX);
        let range = (std::ops::Bound::Included(start.as_bytes()), std::ops::Bound::Included(end.as_bytes()));
        let mut messages = Vec::new();
        for item in self.tables.messages.range(txn, &range)?.take(limit) {
            let (key, value) = item?;
            messages.push(self.message_view(conversation, key, value)?);
        }
        Ok(messages)
    }

    fn message_view(&self, conversation: &ConversationId, key: &[u8], value: &[u8]) -> heed::Result<MessageView> {
        let row: MessageRow = decode(value)?;
        Ok(MessageView {
            conversation: *conversation,
            seq: read_u64(key, key.len() - 8),
            sender: row.sender,
            sender_device: row.sender_device,
            client_seq: row.client_seq,
            ts: row.ts,
            body: row.body,
        })
    }

    /// A device's cursors (zero if it never acked).
    pub fn cursor(
        &self,
        txn: &RoTxn<'_>,
        conversation: &ConversationId,
        user: &UserId,
        device: &DeviceId,
    ) -> heed::Result<Cursor> {
        let key = self.key().conversation(conversation).user(user).device(device);
        Ok(get(&self.tables.cursors, txn, key.as_bytes())?.unwrap_or_default())
    }

    /// Every device cursor of a conversation, in key order.
    pub fn cursors(
        &self,
        txn: &RoTxn<'_>,
        conversation: &ConversationId,
    ) -> heed::Result<Vec<(UserId, DeviceId, Cursor)>> {
        let prefix = self.key().conversation(conversation);
        let mut cursors = Vec::new();
        for item in self.tables.cursors.prefix_iter(txn, prefix.as_bytes())? {
            let (key, value) = item?;
            let rest = &key[prefix.as_bytes().len()..];
            let (user, rest) = split_text(rest)?;
            let (device, _) = split_text(rest)?;
            let user = UserId::new(user).map_err(|e| heed::Error::Decoding(Box::new(e)))?;
            let device = DeviceId::new(device).map_err(|e| heed::Error::Decoding(Box::new(e)))?;
            cursors.push((user, device, decode(value)?));
        }
        Ok(cursors)
    }

    /// The conversations `user` belongs to, from the user's shard.
    pub fn user_conversations(&self, txn: &RoTxn<'_>, user: &UserId) -> heed::Result<Vec<ConversationId>> {
        let prefix = self.key().user(user);
        let mut conversations = Vec::new();
        for item in self.tables.user_conversations.prefix_iter(txn, prefix.as_bytes())? {
            let (key, value) = item?;
            let row: MembershipRow = decode(value)?;
            if row.member {
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(&key[prefix.as_bytes().len()..]);
                conversations.push(ConversationId::from_bytes(bytes));
            }
        }
        Ok(conversations)
    }

    /// What the user's shard knows of `user`.
    pub fn user(&self, txn: &RoTxn<'_>, user: &UserId) -> heed::Result<UserRecord> {
        Ok(get(&self.tables.users, txn, self.key().user(user).as_bytes())?.unwrap_or_default())
    }

    /// The device's highest committed client_seq on this shard.
    pub fn highest_client_seq(&self, txn: &RoTxn<'_>, user: &UserId, device: &DeviceId) -> heed::Result<Option<u64>> {
        let key = self.key().user(user).device(device);
        Ok(self.tables.dedup_high.get(txn, key.as_bytes())?.map(|raw| read_u64(raw, 0)))
    }

    /// Up to `limit` undelivered outbox items, oldest first.
    pub fn outbox(&self, txn: &RoTxn<'_>, limit: usize) -> heed::Result<Vec<(OutboxId, OutboxItem)>> {
        let prefix = self.key();
        let mut items = Vec::new();
        for item in self.tables.outbox.prefix_iter(txn, prefix.as_bytes())?.take(limit) {
            let (key, value) = item?;
            let index = read_u64(key, 4);
            let mut position = [0u8; 4];
            position.copy_from_slice(&key[12..16]);
            items.push((OutboxId { index, position: u32::from_be_bytes(position) }, decode(value)?));
        }
        Ok(items)
    }
}

fn split_text(bytes: &[u8]) -> heed::Result<(&str, &[u8])> {
    let bad = || heed::Error::Decoding("truncated id in key".into());
    let (&length, rest) = bytes.split_first().ok_or_else(bad)?;
    let length = length as usize;
    if rest.len() < length {
        return Err(bad());
    }
    let text = std::str::from_utf8(&rest[..length]).map_err(|e| heed::Error::Decoding(Box::new(e)))?;
    Ok((text, &rest[length..]))
}
