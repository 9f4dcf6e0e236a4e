//! What goes into a [`super::Session`] and what comes out: the time, the node's answers, and
//! the requests and effects the shell carries out.

use std::time::Duration;

use natter_proto::{ConversationId, UserId};
use natter_raft::command::{Command, CursorMove};
use natter_raft::placement::ShardId;
use natter_raft::query::Query;
use tokio::time::Instant;

use crate::delivery::{Push, Topic};
use crate::edge::rate::Action;
use crate::edge::sends::Batch;

/// The time as a session sees it: the monotonic clock for its timers and the wall clock for
/// the timestamps it proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    /// The node's monotonic clock.
    pub now: Instant,
    /// The node's wall clock, ms since the Unix epoch.
    pub wall_ms: u64,
}

/// What a session needs to know of its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// The cluster's shard count.
    pub shards: u32,
}

/// Decides whether an action may be taken now: the connection's and the user's rate limiters
/// (`crate::rate`), or a stand-in in tests.
pub trait RateGate: Send {
    /// Takes one `action` if allowed now; otherwise how long until it would be.
    fn check(&self, action: Action) -> Result<(), Duration>;
}

/// A session the node admitted: its user and the limits its actions are held to.
pub struct Admission {
    /// The authenticated user.
    pub user: UserId,
    /// The rate limits of this connection and its user.
    pub gate: Box<dyn RateGate>,
}

/// Why the node refused a session's `hello`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The token is missing, forged, expired, or for another user than the transport's.
    #[error("{0}")]
    Unauthenticated(String),
    /// The user already holds the most sessions allowed.
    #[error("{user} already has {max} sessions")]
    TooManySessions {
        /// The user.
        user: UserId,
        /// The limit.
        max: usize,
    },
}

/// Identifies a request so its answer finds the step that waits for it.
pub type RequestId = u64;

/// Work the session needs the node to do; the answer comes back through the `handle_*`
/// method each variant names.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Check `hello`'s token (or the transport's authentication) and count the session;
    /// answered by [`Session::handle_admitted`].
    Admit {
        /// The token the `hello` carried.
        token: Option<String>,
    },
    /// A linearizable read; answered by [`Session::handle_read`].
    Read {
        /// The shard.
        shard: ShardId,
        /// What to read.
        query: Query,
    },
    /// A proposal; answered by [`Session::handle_proposed`].
    Propose {
        /// The shard.
        shard: ShardId,
        /// The command.
        command: Command,
    },
    /// A cursor move: into the node's batch of the shard's moves when `batched` and the batch
    /// takes it (answered by [`Session::handle_cursor_queued`]), otherwise proposed alone
    /// (answered by [`Session::handle_proposed`]).
    MoveCursor {
        /// The conversation's shard.
        shard: ShardId,
        /// The move.
        step: CursorMove,
        /// Whether it may join the batch (the session follows the conversation).
        batched: bool,
    },
    /// The newest seq the local replica holds of a conversation, without asking the leader;
    /// only the `AckBeforeCommit` canary asks. Answered by [`Session::handle_last_seq`].
    PeekLastSeq {
        /// The shard.
        shard: ShardId,
        /// The conversation.
        conversation: ConversationId,
    },
}

/// What the node does for the session that needs no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Deliver the topic's pushes to this session.
    Subscribe(Topic),
    /// Hand this session the presence the node last had for the user again.
    ResendPresence(UserId),
    /// The session's device came online for the user.
    PresenceOpen(UserId),
    /// The device said what it is doing.
    PresenceActivity {
        /// Active or away.
        status: natter_proto::frames::ActivityStatus,
        /// Custom text.
        custom: Option<String>,
    },
    /// The device did something (any frame but `presence`): it is in use.
    PresenceFrame,
    /// Relay an ephemeral push through the shard's leader (typing).
    Relay {
        /// The conversation's shard.
        shard: ShardId,
        /// The push.
        push: Push,
    },
    /// Propose a batch of sends; its outcome comes back through
    /// [`Session::handle_batch_done`], which may be called in any order across batches.
    ProposeBatch {
        /// The conversation's shard.
        shard: ShardId,
        /// The batch (handed back with its outcome).
        batch: Batch,
        /// The `AppendMany` to propose.
        command: Command,
    },
}

/// Why and how a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// One of [`close`].
    pub code: u32,
    /// Said to the client.
    pub reason: &'static str,
}
