//! The commands a shard's log carries, their responses and the records they write.
//!
//! A command is decided once by the proposer (ids, timestamps) and then applied identically by
//! every replica: nothing in [`crate::state_machine`] reads a clock or an RNG.

use std::collections::BTreeSet;
use std::fmt;

use natter_proto::{ConversationId, DeviceId, ErrorCode, UserId};
use serde::{Deserialize, Serialize};

/// One entry of a shard's replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a conversation. Idempotent: creating an existing conversation returns it.
    CreateConversation {
        /// The id: [`ConversationId::direct`] for a 1:1, random (from the proposer) for a group.
        conversation: ConversationId,
        /// Who asks; must be among `members`.
        creator: UserId,
        /// Every member, the creator included (2..=1024).
        members: BTreeSet<UserId>,
        /// Optional title (groups).
        title: Option<String>,
        /// A 1:1 conversation: exactly two members and the deterministic id.
        direct: bool,
        /// The proposer's wall clock, milliseconds since the Unix epoch.
        ts: u64,
    },
    /// Add members to a group conversation.
    AddMembers {
        /// The conversation.
        conversation: ConversationId,
        /// Who asks; must be a member.
        by: UserId,
        /// Users to add; those already members are ignored.
        members: BTreeSet<UserId>,
    },
    /// Remove members from a group conversation (a member may remove anyone, itself included).
    RemoveMembers {
        /// The conversation.
        conversation: ConversationId,
        /// Who asks; must be a member.
        by: UserId,
        /// Users to remove; non-members are ignored.
        members: BTreeSet<UserId>,
    },
    /// Append a message: assigns the next seq, exactly once per `(sender, device, client_seq)`.
    Append {
        /// The conversation.
        conversation: ConversationId,
        /// The sending user; must be a member.
        sender: UserId,
        /// The sending device.
        device: DeviceId,
        /// The device's own strictly increasing send number.
        client_seq: u64,
        /// The proposer's wall clock in ms; the state machine keeps timestamps monotonic.
        ts: u64,
        /// UTF-8 text, at most `BODY_BYTES_MAX` bytes.
        body: String,
    },
    /// Append several messages of one device to one conversation, in order: the sends a
    /// session received while its previous batch for the conversation was committing. Each is
    /// applied as [`Command::Append`] would be, alone (one refused message refuses only
    /// itself), all with the same proposer timestamp. At most [`APPEND_MANY_MAX`] messages and
    /// [`APPEND_MANY_BYTES_MAX`] bytes of bodies.
    AppendMany {
        /// The conversation.
        conversation: ConversationId,
        /// The sending user; must be a member.
        sender: UserId,
        /// The sending device.
        device: DeviceId,
        /// The proposer's wall clock in ms; the state machine keeps timestamps monotonic.
        ts: u64,
        /// The messages, in the order the device sent them.
        messages: Vec<Outgoing>,
    },
    /// Move a device's delivered and/or read cursor forward (never backwards).
    MoveCursor {
        /// The conversation.
        conversation: ConversationId,
        /// The device's user; must be a member.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// New delivered seq, if any.
        delivered: Option<u64>,
        /// New read seq, if any (reading implies delivery).
        read: Option<u64>,
    },
    /// Move many devices' cursors at once: the acks and reads a node gathered for this shard
    /// (DESIGN §4: acks are batched into the shard). Each move is applied as
    /// [`Command::MoveCursor`] would be, alone: one refused move refuses only itself. At most
    /// [`CURSOR_MOVES_MAX`] moves.
    MoveCursors {
        /// The moves, each for a different (conversation, user, device).
        moves: Vec<CursorMove>,
    },
    /// User shard: record that `user` joined or left `conversation`. Delivered from a
    /// conversation shard's outbox; applying it twice, or late, is harmless because a record
    /// with a version at or below the stored one is ignored.
    ApplyMembership {
        /// The user whose conversation list changes.
        user: UserId,
        /// The conversation.
        conversation: ConversationId,
        /// Joined (`true`) or left (`false`).
        member: bool,
        /// Orders changes of one `(user, conversation)`: the log index that made the change.
        version: u64,
    },
    /// User shard: the user went offline at `ts` (kept as the maximum seen).
    SetLastSeen {
        /// The user.
        user: UserId,
        /// Milliseconds since the Unix epoch.
        ts: u64,
    },
    /// User shard: replace the user's settings.
    SetSettings {
        /// The user.
        user: UserId,
        /// The new settings.
        settings: UserSettings,
    },
    /// Conversation shard: outbox items that reached their user shard; delete them.
    AckOutbox {
        /// The delivered items.
        ids: Vec<OutboxId>,
    },
    /// Changes nothing: an operator's write probe that proves the shard can commit.
    Probe {
        /// A caller-chosen number, echoed in logs.
        nonce: u64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateConversation { conversation, members, .. } => {
                write!(f, "create {conversation} ({} members)", members.len())
            }
            Self::AddMembers { conversation, members, .. } => {
                write!(f, "add {} to {conversation}", members.len())
            }
            Self::RemoveMembers { conversation, members, .. } => {
                write!(f, "remove {} from {conversation}", members.len())
            }
            Self::Append { conversation, sender, device, client_seq, .. } => {
                write!(f, "append to {conversation} from {sender}/{device}#{client_seq}")
            }
            Self::AppendMany { conversation, sender, device, messages, .. } => {
                let first = messages.first().map_or(0, |message| message.client_seq);
                write!(f, "append {} to {conversation} from {sender}/{device}#{first}..", messages.len())
            }
            Self::MoveCursor { conversation, user, device, delivered, read } => {
                write!(f, "cursor {conversation} {user}/{device} d={delivered:?} r={read:?}")
            }
            Self::MoveCursors { moves } => write!(f, "{} cursor moves", moves.len()),
            Self::ApplyMembership { user, conversation, member, version } => {
                write!(f, "membership {user} in {conversation}={member} v{version}")
            }
            Self::SetLastSeen { user, ts } => write!(f, "last-seen {user}={ts}"),
            Self::SetSettings { user, .. } => write!(f, "settings {user}"),
            Self::AckOutbox { ids } => write!(f, "ack {} outbox items", ids.len()),
            Self::Probe { nonce } => write!(f, "probe {nonce}"),
        }
    }
}

/// What a committed entry did that others must hear of: the leader pushes these to the nodes
/// interested in them, so it never has to work out from a command and its response what
/// committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// A message was appended (a resend that appended nothing is not one).
    Appended(natter_proto::MessageRecord),
    /// A member's cursors moved: the highest over the member's devices after the entry, so a
    /// receipt built from it never goes backwards.
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
    /// The user's shard recorded that `user` is a member of `conversation` (duplicate and
    /// stale records too: sessions already following it ignore it, and a stale one is refused
    /// by the membership check when they read the conversation).
    Joined {
        /// The user.
        user: UserId,
        /// The conversation.
        conversation: ConversationId,
    },
}

/// What applying one log entry produced: the answer for the proposer and the effects to push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The proposer's answer.
    pub response: Response,
    /// What committed that others must hear of, in the order it happened.
    pub effects: Vec<Effect>,
}

impl From<Response> for Applied {
    fn from(response: Response) -> Self {
        Self { response, effects: Vec::new() }
    }
}

/// The result of applying one log entry. Rejections are results too: every replica reaches the
/// same one, so they are answered only after commit like any other response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The conversation, after a create (`created` is false if it already existed) or a
    /// membership change.
    Conversation {
        /// The conversation as it now stands.
        conversation: ConversationView,
        /// Whether this entry created it.
        created: bool,
    },
    /// A message's place in its conversation.
    Appended {
        /// The conversation.
        conversation: ConversationId,
        /// Its seq.
        seq: u64,
        /// The server timestamp recorded with it.
        ts: u64,
        /// True when this was a resend of an already-committed `client_seq`: nothing was appended.
        duplicate: bool,
    },
    /// Each message's outcome, in the order of [`Command::AppendMany`]'s messages.
    AppendedMany {
        /// The message's place, or why it was refused.
        outcomes: Vec<Result<Placed, CommandError>>,
    },
    /// The device's cursors after the move.
    Cursor {
        /// Delivered seq.
        delivered: u64,
        /// Read seq.
        read: u64,
    },
    /// Each move's outcome, in the order of [`Command::MoveCursors`]'s moves.
    Cursors {
        /// The device's cursors after the move, or why it was refused.
        outcomes: Vec<Result<Cursor, CommandError>>,
    },
    /// Applied; nothing to report (membership and blank entries, user-shard records).
    Done,
    /// A probe committed at this log index.
    Probed {
        /// The probe's log index.
        index: u64,
    },
    /// Refused; nothing was written.
    Rejected(CommandError),
}

/// Why a command was refused. Each maps to a stable wire [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// The user is not a member of the conversation, or the conversation does not exist (the two
    /// look the same to a non-member so ids cannot be probed).
    #[error("{user} is not a member of conversation {conversation}")]
    NotMember {
        /// The user.
        user: UserId,
        /// The conversation.
        conversation: ConversationId,
    },
    /// A `client_seq` at or below `highest - DEDUP_WINDOW` that is not remembered.
    #[error("client_seq {client_seq} is older than the dedup window (highest seen {highest})")]
    StaleClientSeq {
        /// The refused client_seq.
        client_seq: u64,
        /// The device's highest committed client_seq on this shard.
        highest: u64,
    },
    /// A field has the wrong shape.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A body, title or member list is over its limit.
    #[error("too large: {0}")]
    TooLarge(String),
}

impl CommandError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotMember { .. } => ErrorCode::NotMember,
            Self::StaleClientSeq { .. } => ErrorCode::StaleClientSeq,
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::TooLarge(_) => ErrorCode::TooLarge,
        }
    }
}

/// A conversation as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationView {
    /// Its id.
    pub id: ConversationId,
    /// Current members, sorted.
    pub members: Vec<UserId>,
    /// Title, if any.
    pub title: Option<String>,
    /// 1:1 conversation.
    pub direct: bool,
    /// Seq of the newest message (0 when empty).
    pub last_seq: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ts: u64,
}

/// A committed message as readers see it: the wire record itself, so history and delivery
/// hand out what the state machine stored without a copy into another shape.
pub type MessageView = natter_proto::frames::MessageRecord;

/// Most messages one [`Command::AppendMany`] carries.
pub const APPEND_MANY_MAX: usize = 64;

/// Most body bytes one [`Command::AppendMany`] carries, all messages together. A message of
/// the largest body always fits; 64 entries of this size (openraft's `max_payload_entries`)
/// stay well inside the peer frame limit.
pub const APPEND_MANY_BYTES_MAX: usize = 128 * 1024;

/// One message inside [`Command::AppendMany`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The device's own strictly increasing send number.
    pub client_seq: u64,
    /// UTF-8 text, at most `BODY_BYTES_MAX` bytes.
    pub body: String,
}

/// Where one message of [`Command::AppendMany`] went, as [`Response::Appended`] says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The conversation (for a resend, the one the `client_seq` was first appended to).
    pub conversation: ConversationId,
    /// Its seq.
    pub seq: u64,
    /// The server timestamp recorded with it.
    pub ts: u64,
    /// True when this was a resend of an already-committed `client_seq`: nothing was appended.
    pub duplicate: bool,
}

/// Most cursor moves one [`Command::MoveCursors`] carries.
pub const CURSOR_MOVES_MAX: usize = 1024;

/// One device's cursor move inside [`Command::MoveCursors`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorMove {
    /// The conversation.
    pub conversation: ConversationId,
    /// The device's user; must be a member.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// New delivered seq, if any.
    pub delivered: Option<u64>,
    /// New read seq, if any (reading implies delivery).
    pub read: Option<u64>,
}

/// A device's cursors in one conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Highest seq delivered to the device.
    pub delivered: u64,
    /// Highest seq the device's user has read on it.
    pub read: u64,
}

/// Per-user settings kept on the user's shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSettings {
    /// Who may see the user's presence and last-seen.
    pub presence_privacy: natter_proto::PresencePrivacy,
    /// IANA time zone name for quiet hours, if set.
    pub time_zone: Option<String>,
}

/// What a user shard knows of a user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Last time the user went offline, ms since the Unix epoch.
    pub last_seen: Option<u64>,
    /// Settings.
    pub settings: UserSettings,
}

/// Identifies an outbox item: the log index that produced it and its place among that entry's
/// items. Unique per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutboxId {
    /// Log index of the producing entry.
    pub index: u64,
    /// Position among that entry's items.
    pub position: u32,
}

/// A command a conversation shard owes another shard (today: a user shard's membership record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// The user whose shard must apply `command`.
    pub user: UserId,
    /// The command to propose there.
    pub command: Command,
}
