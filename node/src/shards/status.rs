//! The node's status for operators: the admin view and `/metrics`.

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

use super::Cluster;
use crate::ops::status::{ClusterStatus, NodeStatus, ShardStatus};
use crate::peers::transport::PeerState;

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
