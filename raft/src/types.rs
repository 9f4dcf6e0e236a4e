//! The openraft type configuration shared by every shard group.

use std::fmt;

use openraft::rt::deterministic_rng::DeterministicRng;
use openraft_rt_tokio::TokioRuntime;
use serde::{Deserialize, Serialize};

use crate::command::{Applied, Command};

/// A node's id in the cluster.
pub type NodeId = u64;

/// What the cluster knows of a node: the address its peers dial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` of the node's inter-node QUIC endpoint.
    pub addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// The async runtime of every group: tokio with openraft's seeded RNG. Production seeds it once
/// from the OS at start; the simulator seeds it per host, so there is one type config for both.
pub type Runtime = DeterministicRng<TokioRuntime>;

openraft::declare_raft_types!(
    /// The type configuration of a conversation shard's Raft group.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = NodeInfo,
        AsyncRuntime = Runtime,
);

/// A log id in a shard's log.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote in a shard's group.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A shard's log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A membership config with the log id that introduced it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot with its data: the encoded shard state (see [`crate::snapshot`]).
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;
