//! The frames of the client protocol (DESIGN §5): what a client sends ([`ClientFrame`]) and
//! what a server sends ([`ServerFrame`]).
//!
//! Both enums are externally tagged so postcard, which is not self-describing, can encode
//! them; the browser JSON form with a `"type"` tag is produced by [`crate::json`]. No field is
//! ever skipped when serialising, because postcard reads fields by position: optional fields
//! are `Option`s that are always written, and `#[serde(default)]` only lets JSON clients leave
//! them out.
//!
//! Variant order is part of the postcard encoding (the variant index is the tag): new variants
//! go at the end, and existing variants never move.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::frame_error::FrameError;
use crate::ids::{ConversationId, DeviceId, UserId};
use crate::limits::{
    BODY_BYTES_MAX, HISTORY_PAGE_MAX, MEMBERS_MAX, PRESENCE_CUSTOM_BYTES_MAX, REQUEST_ID_BYTES_MAX, RESUME_CURSORS_MAX,
    TITLE_BYTES_MAX,
};

/// What a user says they are doing, as sent by a client in a `presence` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityStatus {
    /// The user is at the device.
    Active,
    /// The user stepped away; the device is still connected.
    Away,
}

/// What the server tells watchers about a user in a `presence` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one device is connected and active.
    Online,
    /// Devices are connected but none is active.
    Away,
    /// No device is connected.
    Offline,
}

/// Who may see a user's presence and last-seen (a `settings` frame sets it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresencePrivacy {
    /// Everyone who shares a conversation with the user.
    #[default]
    Everyone,
    /// Only users who share a 1:1 conversation with the user.
    Contacts,
    /// Nobody: watchers see the user offline, with no last-seen.
    Nobody,
}

/// A frame sent by a client to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientFrame {
    /// The first frame of every session: names the device and, when resuming, the last seq
    /// the device holds per conversation so the server can send what it missed.
    Hello {
        /// The device this session belongs to, stable per install.
        device: DeviceId,
        /// Last seq held per conversation; at most [`RESUME_CURSORS_MAX`] entries.
        #[serde(default)]
        resume: BTreeMap<ConversationId, u64>,
        /// The client's JWT on QUIC, where there are no HTTP headers; browsers authenticate the
        /// HTTP upgrade instead and leave it out.
        #[serde(default)]
        token: Option<String>,
    },
    /// Create a conversation with the sender and `members`. Creating a 1:1 conversation that
    /// already exists returns the existing one.
    CreateConversation {
        /// Echoed in the `conversation` or `error` reply; at most [`REQUEST_ID_BYTES_MAX`]
        /// bytes.
        request_id: String,
        /// The other members (the sender is always a member); 1..=[`MEMBERS_MAX`] entries.
        members: Vec<UserId>,
        /// Optional title; at most [`TITLE_BYTES_MAX`] bytes.
        #[serde(default)]
        title: Option<String>,
    },
    /// Send a message. The server answers `send_ok` once it is committed.
    Send {
        /// Where the message goes.
        conversation: ConversationId,
        /// The device's own number for this send, strictly increasing across all of the
        /// device's sends; a resend with the same number is answered with the original seq.
        client_seq: u64,
        /// UTF-8 text, at most [`BODY_BYTES_MAX`] bytes.
        body: String,
    },
    /// The device has received every message of `conversation` up to `seq`.
    Ack {
        /// Which conversation.
        conversation: ConversationId,
        /// Highest seq delivered to this device.
        seq: u64,
    },
    /// The user has read every message of `conversation` up to `seq`.
    Read {
        /// Which conversation.
        conversation: ConversationId,
        /// Highest seq read.
        seq: u64,
    },
    /// Ask for a page of older messages.
    History {
        /// Echoed in the `history` or `error` reply; at most [`REQUEST_ID_BYTES_MAX`] bytes.
        request_id: String,
        /// Which conversation.
        conversation: ConversationId,
        /// Return messages with seq below this; `None` means the newest.
        #[serde(default)]
        before: Option<u64>,
        /// Most messages to return, 1..=[`HISTORY_PAGE_MAX`].
        limit: u32,
    },
    /// The user started or stopped typing in `conversation`.
    Typing {
        /// Which conversation.
        conversation: ConversationId,
        /// True while typing; the indicator expires after
        /// [`TYPING_TTL_MS`](crate::limits::TYPING_TTL_MS) unless renewed.
        active: bool,
    },
    /// The user's own presence.
    Presence {
        /// Active or away.
        status: ActivityStatus,
        /// Optional custom text; at most [`PRESENCE_CUSTOM_BYTES_MAX`] bytes.
        #[serde(default)]
        custom: Option<String>,
    },
    /// Liveness check; the server answers `pong` with the same nonce.
    Ping {
        /// Any number, echoed back.
        nonce: u64,
    },
    /// Changes the user's settings; answered by `settings` with the stored values.
    Settings {
        /// Echoed in the answer.
        request_id: String,
        /// Who may see the user's presence and last-seen.
        presence_privacy: PresencePrivacy,
    },
}

/// The snake_case `type` names of [`ClientFrame`]'s variants, in variant order.
pub const CLIENT_FRAME_TYPES: [&str; 10] =
    ["hello", "create_conversation", "send", "ack", "read", "history", "typing", "presence", "ping", "settings"];

impl ClientFrame {
    /// The frame's snake_case `type` name, as in its JSON form.
    pub fn type_name(&self) -> &'static str {
        let index = match self {
            Self::Hello { .. } => 0,
            Self::CreateConversation { .. } => 1,
            Self::Send { .. } => 2,
            Self::Ack { .. } => 3,
            Self::Read { .. } => 4,
            Self::History { .. } => 5,
            Self::Typing { .. } => 6,
            Self::Presence { .. } => 7,
            Self::Ping { .. } => 8,
            Self::Settings { .. } => 9,
        };
        CLIENT_FRAME_TYPES[index]
    }

    /// The `request_id` the frame carries, if its type has one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::CreateConversation { request_id, .. }
            | Self::History { request_id, .. }
            | Self::Settings { request_id, .. } => Some(request_id),
            _ => None,
        }
    }

    /// The conversation the frame is about, if its type names one.
    pub fn conversation(&self) -> Option<ConversationId> {
        match self {
            Self::Send { conversation, .. }
            | Self::Ack { conversation, .. }
            | Self::Read { conversation, .. }
            | Self::History { conversation, .. }
            | Self::Typing { conversation, .. } => Some(*conversation),
            _ => None,
        }
    }

    /// The `client_seq` of a `send`.
    pub fn client_seq(&self) -> Option<u64> {
        match self {
            Self::Send { client_seq, .. } => Some(*client_seq),
            _ => None,
        }
    }

    /// Checks the limits that decoding alone does not: body, title, custom text and request
    /// id lengths, member and resume counts, and the history page size. Ids are already
    /// valid once a frame is decoded. Whether the sender may do what the frame asks is the
    /// server's business, not this check's.
    ///
    /// `members` is the list the client sent; the server still checks the final member set
    /// (sender included, duplicates removed) against
    /// [`MEMBERS_MIN`](crate::limits::MEMBERS_MIN)..=[`MEMBERS_MAX`].
    pub fn validate(&self) -> Result<(), FrameError> {
        match self {
            Self::Hello { resume, .. } => check_count("resume", resume.len(), RESUME_CURSORS_MAX, "cursors"),
            Self::CreateConversation { request_id, members, title } => {
                check_bytes("request_id", request_id, REQUEST_ID_BYTES_MAX)?;
                if members.is_empty() {
                    return Err(FrameError::InvalidArgument {
                        field: "members",
                        expected: "at least 1 other member".into(),
                        actual: "an empty list".into(),
                    });
                }
                check_count("members", members.len(), MEMBERS_MAX, "users")?;
                if let Some(title) = title {
                    check_bytes("title", title, TITLE_BYTES_MAX)?;
                }
                Ok(())
            }
            Self::Send { body, .. } => check_bytes("body", body, BODY_BYTES_MAX),
            Self::History { request_id, limit, .. } => {
                check_bytes("request_id", request_id, REQUEST_ID_BYTES_MAX)?;
                if !(1..=HISTORY_PAGE_MAX).contains(limit) {
                    return Err(FrameError::InvalidArgument {
                        field: "limit",
                        expected: format!("1..={HISTORY_PAGE_MAX}"),
                        actual: limit.to_string(),
                    });
                }
                Ok(())
            }
            Self::Presence { custom, .. } => match custom {
                Some(custom) => check_bytes("custom", custom, PRESENCE_CUSTOM_BYTES_MAX),
                None => Ok(()),
            },
            Self::Settings { request_id, .. } => check_bytes("request_id", request_id, REQUEST_ID_BYTES_MAX),
            Self::Ack { .. } | Self::Read { .. } | Self::Typing { .. } | Self::Ping { .. } => Ok(()),
        }
    }
}

fn check_bytes(field: &'static str, value: &str, max: usize) -> Result<(), FrameError> {
    check_count(field, value.len(), max, "bytes")
}

fn check_count(field: &'static str, length: usize, max: usize, unit: &'static str) -> Result<(), FrameError> {
    if length > max {
        return Err(FrameError::FieldTooLarge { field, length, max, unit });
    }
    Ok(())
}

/// One conversation in a `welcome` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSummary {
    /// The conversation.
    pub id: ConversationId,
    /// Seq of its newest message; 0 when it has none.
    pub last_seq: u64,
    /// Every member, the receiving user included.
    pub members: Vec<UserId>,
    /// Its title, if it has one.
    #[serde(default)]
    pub title: Option<String>,
}

/// One committed message, as pushed in a `message` frame and listed in a `history` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// Its position in the conversation: 1, 2, 3 … with no gaps.
    pub seq: u64,
    /// Who sent it.
    pub sender: UserId,
    /// From which of the sender's devices.
    pub sender_device: DeviceId,
    /// The sending device's `client_seq` for it.
    pub client_seq: u64,
    /// Server timestamp, milliseconds since the Unix epoch; never decreases within a
    /// conversation.
    pub ts: u64,
    /// UTF-8 text.
    pub body: String,
}

/// A frame sent by the server to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to `hello`: who the session is and which conversations the user is in.
    Welcome {
        /// The authenticated user.
        user: UserId,
        /// The device named in `hello`.
        device: DeviceId,
        /// Every conversation the user is a member of.
        conversations: Vec<ConversationSummary>,
    },
    /// A conversation was created or the user was added to one; also the answer to
    /// `create_conversation`.
    Conversation {
        /// The conversation.
        id: ConversationId,
        /// Every member.
        members: Vec<UserId>,
        /// Its title, if it has one.
        #[serde(default)]
        title: Option<String>,
        /// The `request_id` of the `create_conversation` this answers, sent only to the
        /// session that asked.
        #[serde(default)]
        request_id: Option<String>,
    },
    /// A new message in one of the user's conversations. In JSON its fields sit flat beside
    /// `"type":"message"`.
    Message(MessageRecord),
    /// A `send` was committed.
    SendOk {
        /// The conversation of the send.
        conversation: ConversationId,
        /// The `client_seq` of the send.
        client_seq: u64,
        /// The seq the message got.
        seq: u64,
        /// The message's server timestamp, milliseconds since the Unix epoch.
        ts: u64,
    },
    /// A member's delivery and read cursors moved.
    Receipt {
        /// The conversation.
        conversation: ConversationId,
        /// Whose cursors.
        user: UserId,
        /// Highest seq delivered to any of the user's devices.
        delivered: u64,
        /// Highest seq the user has read.
        read: u64,
    },
    /// The answer to a `history` request, oldest message first.
    History {
        /// The `request_id` of the request.
        request_id: String,
        /// The conversation.
        conversation: ConversationId,
        /// The page, in increasing seq order.
        messages: Vec<MessageRecord>,
    },
    /// A member started or stopped typing.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who is typing.
        user: UserId,
        /// True while typing.
        active: bool,
    },
    /// A watched user's presence changed.
    Presence {
        /// Whose presence.
        user: UserId,
        /// Online, away or offline.
        status: PresenceStatus,
        /// When the user was last connected, milliseconds since the Unix epoch, if known.
        #[serde(default)]
        last_seen: Option<u64>,
        /// The user's custom text, if any.
        #[serde(default)]
        custom: Option<String>,
    },
    /// A request failed, or a frame was bad. The optional fields let a client tell which of
    /// its requests failed: `request_id` for requests that carry one, `conversation` and
    /// `client_seq` for a `send`.
    Error {
        /// The failed request's `request_id`.
        #[serde(default)]
        request_id: Option<String>,
        /// The failed request's conversation.
        #[serde(default)]
        conversation: Option<ConversationId>,
        /// The failed send's `client_seq`.
        #[serde(default)]
        client_seq: Option<u64>,
        /// Stable code.
        code: ErrorCode,
        /// Human-readable detail; may change between versions.
        message: String,
        /// For `rate_limited`: how long to wait before trying again, in milliseconds.
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    /// The answer to `ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The answer to `settings`: the user's settings as stored.
    Settings {
        /// The request's `request_id`.
        request_id: String,
        /// Who may see the user's presence and last-seen.
        presence_privacy: PresencePrivacy,
    },
}

/// The snake_case `type` names of [`ServerFrame`]'s variants, in variant order.
pub const SERVER_FRAME_TYPES: [&str; 11] = [
    "welcome",
    "conversation",
    "message",
    "send_ok",
    "receipt",
    "history",
    "typing",
    "presence",
    "error",
    "pong",
    "settings",
];

impl ServerFrame {
    /// The frame's snake_case `type` name, as in its JSON form.
    pub fn type_name(&self) -> &'static str {
        let index = match self {
            Self::Welcome { .. } => 0,
            Self::Conversation { .. } => 1,
            Self::Message(_) => 2,
            Self::SendOk { .. } => 3,
            Self::Receipt { .. } => 4,
            Self::History { .. } => 5,
            Self::Typing { .. } => 6,
            Self::Presence { .. } => 7,
            Self::Error { .. } => 8,
            Self::Pong { .. } => 9,
            Self::Settings { .. } => 10,
        };
        SERVER_FRAME_TYPES[index]
    }

    /// An `error` frame answering `request`, carrying its `request_id`, conversation and
    /// `client_seq` where it has them so the client can tell which request failed.
    pub fn error_reply(request: &ClientFrame, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            request_id: request.request_id().map(str::to_owned),
            conversation: request.conversation(),
            client_seq: request.client_seq(),
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A `rate_limited` error answering `request`, saying when to try again.
    pub fn rate_limited(request: &ClientFrame, message: impl Into<String>, retry_after_ms: u64) -> Self {
        let mut frame = Self::error_reply(request, ErrorCode::RateLimited, message);
        if let Self::Error { retry_after_ms: retry, .. } = &mut frame {
            *retry = Some(retry_after_ms);
        }
        frame
    }

    /// An `error` frame answering `request` with `error`'s code and message, typically a
    /// failed [`ClientFrame::validate`].
    pub fn error_for(request: &ClientFrame, error: &FrameError) -> Self {
        Self::error_reply(request, error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> ConversationId {
        ConversationId::from_bytes([7; 16])
    }

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn send(body: String) -> ClientFrame {
        ClientFrame::Send { conversation: conversation(), client_seq: 1, body }
    }

    fn create(members: usize, title: Option<String>, request_id: &str) -> ClientFrame {
        ClientFrame::CreateConversation {
            request_id: request_id.into(),
            members: (0..members).map(|n| user(&format!("u{n}"))).collect(),
            title,
        }
    }

    fn history(limit: u32, request_id: &str) -> ClientFrame {
        ClientFrame::History { request_id: request_id.into(), conversation: conversation(), before: None, limit }
    }

    fn presence(custom: Option<String>) -> ClientFrame {
        ClientFrame::Presence { status: ActivityStatus::Active, custom }
    }

    fn code(frame: &ClientFrame) -> Option<ErrorCode> {
        frame.validate().err().map(|error| error.code())
    }

    #[test]
    fn body_limit_is_inclusive() {
        assert_eq!(send("x".repeat(BODY_BYTES_MAX)).validate(), Ok(()));
        assert_eq!(send(String::new()).validate(), Ok(()));
        let error = send("x".repeat(BODY_BYTES_MAX + 1)).validate().unwrap_err();
        assert_eq!(error.code(), ErrorCode::TooLarge);
        assert_eq!(error.to_string(), "body has 65537 bytes, expected at most 65536");
    }

    #[test]
    fn body_limit_counts_bytes_not_characters() {
        // 'é' is two bytes in UTF-8, so half the limit in characters is exactly the limit.
        assert_eq!(send("é".repeat(BODY_BYTES_MAX / 2)).validate(), Ok(()));
        assert_eq!(code(&send("é".repeat(BODY_BYTES_MAX / 2 + 1))), Some(ErrorCode::TooLarge));
    }

    #[test]
    fn member_count_limits() {
        assert_eq!(create(1, None, "r").validate(), Ok(()));
        assert_eq!(create(MEMBERS_MAX, None, "r").validate(), Ok(()));
        assert_eq!(code(&create(MEMBERS_MAX + 1, None, "r")), Some(ErrorCode::TooLarge));
        let empty = create(0, None, "r").validate().unwrap_err();
        assert_eq!(empty.code(), ErrorCode::InvalidArgument);
        assert_eq!(empty.to_string(), "members is an empty list, expected at least 1 other member");
    }

    #[test]
    fn title_and_request_id_limits() {
        assert_eq!(create(1, Some("t".repeat(TITLE_BYTES_MAX)), "r").validate(), Ok(()));
        let long_title = create(1, Some("t".repeat(TITLE_BYTES_MAX + 1)), "r");
        assert_eq!(code(&long_title), Some(ErrorCode::TooLarge));
        let request_id = "r".repeat(REQUEST_ID_BYTES_MAX);
        assert_eq!(create(1, None, &request_id).validate(), Ok(()));
        assert_eq!(history(1, &request_id).validate(), Ok(()));
        let long_request_id = "r".repeat(REQUEST_ID_BYTES_MAX + 1);
        assert_eq!(code(&create(1, None, &long_request_id)), Some(ErrorCode::TooLarge));
        assert_eq!(code(&history(1, &long_request_id)), Some(ErrorCode::TooLarge));
    }

    #[test]
    fn history_limit_range() {
        assert_eq!(history(1, "r").validate(), Ok(()));
        assert_eq!(history(HISTORY_PAGE_MAX, "r").validate(), Ok(()));
        let zero = history(0, "r").validate().unwrap_err();
        assert_eq!(zero.code(), ErrorCode::InvalidArgument);
        assert_eq!(zero.to_string(), "limit is 0, expected 1..=200");
        assert_eq!(code(&history(HISTORY_PAGE_MAX + 1, "r")), Some(ErrorCode::InvalidArgument));
        assert_eq!(code(&history(u32::MAX, "r")), Some(ErrorCode::InvalidArgument));
    }

    #[test]
    fn presence_custom_limit() {
        assert_eq!(presence(None).validate(), Ok(()));
        assert_eq!(presence(Some("c".repeat(PRESENCE_CUSTOM_BYTES_MAX))).validate(), Ok(()));
        let long = presence(Some("c".repeat(PRESENCE_CUSTOM_BYTES_MAX + 1)));
        assert_eq!(code(&long), Some(ErrorCode::TooLarge));
    }

    #[test]
    fn resume_cursor_limit() {
        let hello = |count: usize| ClientFrame::Hello {
            token: None,
            device: DeviceId::new("phone-1").unwrap(),
            resume: (0..count as u64)
                .map(|n| {
                    let mut bytes = [0u8; 16];
                    bytes[..8].copy_from_slice(&n.to_be_bytes());
                    (ConversationId::from_bytes(bytes), n)
                })
                .collect(),
        };
        assert_eq!(hello(0).validate(), Ok(()));
        assert_eq!(hello(RESUME_CURSORS_MAX).validate(), Ok(()));
        assert_eq!(code(&hello(RESUME_CURSORS_MAX + 1)), Some(ErrorCode::TooLarge));
    }

    #[test]
    fn frames_without_limits_validate() {
        let frames = [
            ClientFrame::Ack { conversation: conversation(), seq: u64::MAX },
            ClientFrame::Read { conversation: conversation(), seq: 0 },
            ClientFrame::Typing { conversation: conversation(), active: true },
            ClientFrame::Ping { nonce: 7 },
        ];
        for frame in frames {
            assert_eq!(frame.validate(), Ok(()), "{frame:?}");
        }
    }

    #[test]
    fn error_reply_correlates_with_the_request() {
        let request =
            ClientFrame::Send { conversation: conversation(), client_seq: 17, body: "x".repeat(BODY_BYTES_MAX + 1) };
        let error = request.validate().unwrap_err();
        let reply = ServerFrame::error_for(&request, &error);
        assert_eq!(
            reply,
            ServerFrame::Error {
                request_id: None,
                conversation: Some(conversation()),
                client_seq: Some(17),
                code: ErrorCode::TooLarge,
                message: "body has 65537 bytes, expected at most 65536".into(),
                retry_after_ms: None,
            }
        );
        let limited = ServerFrame::rate_limited(&request, "slow down", 250);
        assert!(matches!(
            limited,
            ServerFrame::Error { code: ErrorCode::RateLimited, client_seq: Some(17), retry_after_ms: Some(250), .. }
        ));
        let reply = ServerFrame::error_reply(&history(0, "r2"), ErrorCode::NotMember, "no");
        let ServerFrame::Error { request_id, conversation: in_reply, client_seq, .. } = reply else {
            panic!("expected an error frame");
        };
        assert_eq!(request_id.as_deref(), Some("r2"));
        assert_eq!(in_reply, Some(conversation()));
        assert_eq!(client_seq, None);
        let ping = ServerFrame::error_reply(&ClientFrame::Ping { nonce: 1 }, ErrorCode::Internal, "x");
        assert!(matches!(ping, ServerFrame::Error { request_id: None, conversation: None, client_seq: None, .. }));
    }
}
