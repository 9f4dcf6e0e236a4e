//! What operators see of a node: the admin view (`/v1/admin/cluster`) and `/metrics`.

use serde::Serialize;

use natter_raft::types::NodeId;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

use crate::peers::transport::PeerState;
use crate::shards::Cluster;

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

impl Cluster {
    /// The admin view.
    pub fn status(&self) -> ClusterStatus {
        let peers = self.transport.peer_states();
        let nodes = self
            .config
            .nodes
            .iter()
            .map(|node| NodeStatus {
                id: node.id,
                peer_addr: node.peer_addr.to_string(),
                http_addr: node.http_addr.to_string(),
                connection: if node.id == self.config.node_id {
                    "self".into()
                } else {
                    match peers.get(&node.id) {
                        Some(PeerState::Connected) => "connected".into(),
                        _ => "disconnected".into(),
                    }
                },
            })
            .collect();
        let local_shards = self
            .groups
            .iter()
            .map(|(shard, raft)| {
                let metrics = raft.metrics().borrow_watched().clone();
                ShardStatus {
                    shard: shard.0,
                    replicas: self.placement[shard].clone(),
                    leader: metrics.current_leader,
                    term: metrics.current_term,
                    role: role_name(metrics.state).into(),
                    commit_index: metrics.local_committed.map_or(0, |id| id.index),
                    applied_index: metrics.last_applied.map_or(0, |id| id.index),
                }
            })
            .collect();
        ClusterStatus {
            node_id: self.config.node_id,
            shards: self.config.shards,
            nodes,
            local_shards,
            ready: self.is_ready(),
        }
    }

    /// `/metrics`: every metric, encoded (see [`crate::ops::metrics`]).
    pub fn render_metrics(&self) -> String {
        self.metrics.encode(&self.status())
    }
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}
