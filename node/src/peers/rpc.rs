//! Inter-node RPC messages and their framing on QUIC streams.
//!
//! Every RPC is one bidirectional stream: the caller writes one request frame (and, for a
//! snapshot, the snapshot's bytes as further frames) and finishes its side; the callee answers
//! with one response frame. A frame is a `u32` big-endian length and a postcard payload: the
//! client sessions' framing ([`natter_proto::codec`]), with a larger maximum
//! ([`PEER_FRAME_BYTES_MAX`]).

use crate::delivery::{Push, Topic};
use natter_proto::codec::{decode_length_prefix, encode_frame_within, encode_length_prefix, LENGTH_PREFIX_BYTES};
use natter_proto::FrameError;
use natter_raft::command::{Command, Response};
use natter_raft::placement::ShardId;
use natter_raft::query::{Query, QueryResult};
use natter_raft::types::{LogId, NodeId, StoredMembership, TypeConfig, Vote};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest inter-node frame, in bytes. Append batches are capped well below it
/// (`max_payload_entries` × `BODY_BYTES_MAX`).
pub const PEER_FRAME_BYTES_MAX: usize = 16 << 20;
/// Snapshot bytes per frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot a node accepts, in bytes.
pub const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// openraft AppendEntries for a shard group.
    AppendEntries {
        /// The group.
        shard: ShardId,
        /// The request.
        rpc: AppendEntriesRequest<TypeConfig>,
    },
    /// openraft Vote.
    Vote {
        /// The group.
        shard: ShardId,
        /// The request.
        rpc: VoteRequest<TypeConfig>,
    },
    /// openraft PreVote.
    PreVote {
        /// The group.
        shard: ShardId,
        /// The request.
        rpc: VoteRequest<TypeConfig>,
    },
    /// A full snapshot; its `bytes` follow in frames of at most [`SNAPSHOT_CHUNK_BYTES`].
    Snapshot {
        /// The group.
        shard: ShardId,
        /// The leader's vote.
        vote: Vote,
        /// Last log id covered by the snapshot.
        last_log_id: Option<LogId>,
        /// Membership as of the snapshot.
        last_membership: StoredMembership,
        /// Length of the data that follows.
        bytes: u64,
    },
    /// openraft leadership transfer.
    TransferLeader {
        /// The group.
        shard: ShardId,
        /// The request.
        rpc: TransferLeaderRequest<TypeConfig>,
    },
    /// Propose a command on the callee, which must lead the shard.
    Propose {
        /// The group.
        shard: ShardId,
        /// The command.
        command: Command,
    },
    /// Confirm leadership and return the index reads must wait for (ReadIndex).
    ReadIndex {
        /// The group.
        shard: ShardId,
    },
    /// A linearizable read served by the callee's replica of the shard.
    Read {
        /// The group.
        shard: ShardId,
        /// What to read.
        query: Query,
    },
    /// To the shard's leader: `node` has sessions that want `topics` (soft state, renewed).
    Interest {
        /// The group.
        shard: ShardId,
        /// The interested node.
        node: NodeId,
        /// Conversations and users of this shard it wants pushed.
        topics: Vec<Topic>,
    },
    /// From a shard's leader: messages, a receipt or a join just committed, for the callee's
    /// sessions.
    Deliver {
        /// The shard they committed in.
        shard: ShardId,
        /// What to hand to the sessions, in order, all of one topic (at most a batch's
        /// messages, `APPEND_MANY_MAX`).
        pushes: Vec<Push>,
    },
    /// To a user shard's leader: the presence of users of that shard on the calling node
    /// (soft state, renewed every `PRESENCE_REPORT_INTERVAL`).
    PresenceReport {
        /// The user shard.
        shard: ShardId,
        /// The reporting node.
        node: NodeId,
        /// Each user's presence on that node; `devices` 0 when the user left it.
        reports: Vec<(natter_proto::UserId, crate::presence::LocalPresence)>,
    },
    /// To the shard's leader: an ephemeral push (typing) to fan out to the interested nodes,
    /// as committed pushes are, without storing it.
    Relay {
        /// The shard whose leader knows who is interested.
        shard: ShardId,
        /// What to fan out.
        push: Push,
    },
}

impl PeerRequest {
    /// The shard the request is for.
    pub fn shard(&self) -> ShardId {
        match self {
            Self::AppendEntries { shard, .. }
            | Self::Vote { shard, .. }
            | Self::PreVote { shard, .. }
            | Self::Snapshot { shard, .. }
            | Self::TransferLeader { shard, .. }
            | Self::Propose { shard, .. }
            | Self::ReadIndex { shard }
            | Self::Read { shard, .. }
            | Self::Interest { shard, .. }
            | Self::Deliver { shard, .. }
            | Self::Relay { shard, .. }
            | Self::PresenceReport { shard, .. } => *shard,
        }
    }
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// AppendEntries result.
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    /// Vote or PreVote result.
    Vote(VoteResponse<TypeConfig>),
    /// Snapshot installed (or refused by vote).
    Snapshot(SnapshotResponse<TypeConfig>),
    /// Leadership transfer result.
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    /// The command committed with this response.
    Proposed(Response),
    /// Reads are linearizable once the local state machine applied this index.
    ReadIndex(u64),
    /// The answer to a [`PeerRequest::Read`].
    Read(QueryResult),
    /// Interest recorded; per topic where it stands ([`Push::Behind`] with a conversation's
    /// newest seq, [`Push::Listing`] with a user's conversation list), for the caller's
    /// sessions to see what they missed.
    Interest(Vec<Push>),
    /// A pushed message was handed to the callee's sessions.
    Delivered,
    /// The callee does not lead the shard; `leader` is who it believes does.
    NotLeader {
        /// The leader the callee knows of, if any.
        leader: Option<NodeId>,
    },
    /// The callee holds no replica of the shard.
    UnknownShard,
    /// The request failed on the callee.
    Failed(String),
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    /// The stream failed or ended early.
    #[error("stream: {0}")]
    Stream(String),
    /// A frame declared more than the limit.
    #[error("frame of {length} bytes, expected at most {max}")]
    TooLarge {
        /// Declared length.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// The payload did not decode.
    #[error("bad frame: {0}")]
    Decode(String),
    /// The value could not be encoded (a bug in the sender, never the peer's fault).
    #[error("frame could not be encoded: {0}")]
    Encode(String),
}

impl From<FrameError> for FrameIoError {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::FrameTooLarge { length, max } => {
                Self::TooLarge { length: usize::try_from(length).unwrap_or(usize::MAX), max }
            }
            FrameError::Encode { reason } => Self::Encode(reason),
            other => Self::Decode(other.to_string()),
        }
    }
}

/// Writes one frame: `value`'s postcard payload (at most [`PEER_FRAME_BYTES_MAX`]) behind its
/// length prefix.
pub async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, value: &T) -> Result<(), FrameIoError> {
    let mut frame = Vec::new();
    encode_frame_within(value, PEER_FRAME_BYTES_MAX, &mut frame)?;
    send.write_all(&frame).await.map_err(|e| FrameIoError::Stream(e.to_string()))
}

/// Writes one frame of raw bytes (at most [`PEER_FRAME_BYTES_MAX`], as readers accept).
pub async fn write_raw(send: &mut quinn::SendStream, payload: &[u8]) -> Result<(), FrameIoError> {
    let prefix = encode_length_prefix(payload.len(), PEER_FRAME_BYTES_MAX)?;
    send.write_all(&prefix).await.map_err(|e| FrameIoError::Stream(e.to_string()))?;
    send.write_all(payload).await.map_err(|e| FrameIoError::Stream(e.to_string()))
}

/// Reads one frame's raw bytes: the length prefix, then as many payload bytes as it announces
/// (at most [`PEER_FRAME_BYTES_MAX`]).
pub async fn read_raw(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, FrameIoError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await.map_err(|e| FrameIoError::Stream(e.to_string()))?;
    let length = decode_length_prefix(prefix, PEER_FRAME_BYTES_MAX)?;
    let mut payload = vec![0u8; length];
    recv.read_exact(&mut payload).await.map_err(|e| FrameIoError::Stream(e.to_string()))?;
    Ok(payload)
}

/// Reads and decodes one frame.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, FrameIoError> {
    let payload = read_raw(recv).await?;
    postcard::from_bytes(&payload).map_err(|e| FrameIoError::Decode(e.to_string()))
}
