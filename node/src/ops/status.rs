//! What operators see of a node: the admin view (`/v1/admin/cluster`), also the source of
//! `/metrics`' per-shard and per-peer gauges. `crate::shards` fills it in.

use serde::Serialize;

use natter_raft::types::NodeId;

/// One shard as the admin view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// The shard id.
    pub shard: u32,
    /// Its replicas, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node's term for the shard.
    pub term: u64,
    /// This node's role.
    pub role: String,
    /// Highest committed log index this node knows of.
    pub commit_index: u64,
    /// Highest applied log index on this node.
    pub applied_index: u64,
}

/// A node as the admin view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: NodeId,
    /// Inter-node address.
    pub peer_addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// This node's connection to it (`self` for this node).
    pub connection: String,
}

/// The admin view of the cluster from this node.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub node_id: NodeId,
    /// Shard count.
    pub shards: u32,
    /// Every node.
    pub nodes: Vec<NodeStatus>,
    /// The shards this node replicates.
    pub local_shards: Vec<ShardStatus>,
    /// Whether every local shard knows its leader.
    pub ready: bool,
}
