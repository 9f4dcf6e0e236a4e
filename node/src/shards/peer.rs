//! The node's answer to a peer: one exhaustive match over [`PeerRequest`], each request handed
//! to the concern that answers it.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use natter_raft::types::SnapshotMeta;

use super::Cluster;
use crate::peers::rpc::{PeerRequest, PeerResponse};
use crate::peers::transport::PeerHandler;

impl Cluster {
    /// Answers one peer request; each kind goes to the concern that owns it.
    pub(crate) async fn handle(&self, request: PeerRequest, snapshot: Vec<u8>) -> PeerResponse {
        let shard = request.shard();
        let deadline = Duration::from_millis(self.config.proposal_timeout_ms);
        let failed = |error: &dyn std::fmt::Display| PeerResponse::Failed(error.to_string());
        match request {
            // Forwarded proposals are never forwarded again: the caller follows the hint, so a
            // stale view cannot bounce a proposal between nodes.
            PeerRequest::Propose { command, .. } => self.propose_local(shard, command, deadline).await,
            PeerRequest::ReadIndex { .. } => self.read_index_local(shard, deadline).await,
            PeerRequest::Read { query, .. } => {
                if !self.groups.contains_key(&shard) {
                    return PeerResponse::UnknownShard;
                }
                match self.read_local(shard, &query).await {
                    Ok(result) => PeerResponse::Read(result),
                    Err(error) => failed(&error),
                }
            }
            PeerRequest::Interest { node, topics, .. } => self.interest_local(shard, node, &topics),
            PeerRequest::Deliver { pushes, .. } => {
                for push in pushes {
                    self.deliveries.dispatch(push);
                }
                PeerResponse::Delivered
            }
            PeerRequest::Relay { push, .. } => self.relay_local(shard, push),
            PeerRequest::PresenceReport { node, reports, .. } => self.presence_report_local(shard, node, reports),
            PeerRequest::AppendEntries { rpc, .. } => match self.groups.get(&shard) {
                Some(raft) => raft.append_entries(rpc).await.map_or_else(|e| failed(&e), PeerResponse::AppendEntries),
                None => PeerResponse::UnknownShard,
            },
            PeerRequest::Vote { rpc, .. } => match self.groups.get(&shard) {
                Some(raft) => raft.vote(rpc).await.map_or_else(|e| failed(&e), PeerResponse::Vote),
                None => PeerResponse::UnknownShard,
            },
            PeerRequest::PreVote { rpc, .. } => match self.groups.get(&shard) {
                Some(raft) => raft.pre_vote(rpc).await.map_or_else(|e| failed(&e), PeerResponse::Vote),
                None => PeerResponse::UnknownShard,
            },
            PeerRequest::Snapshot { vote, last_log_id, last_membership, .. } => match self.groups.get(&shard) {
                Some(raft) => {
                    let meta = SnapshotMeta { last_log_id, last_membership };
                    let snapshot = natter_raft::types::Snapshot { meta, snapshot };
                    raft.install_full_snapshot(vote, snapshot).await.map_or_else(|e| failed(&e), PeerResponse::Snapshot)
                }
                None => PeerResponse::UnknownShard,
            },
            PeerRequest::TransferLeader { rpc, .. } => match self.groups.get(&shard) {
                Some(raft) => {
                    raft.handle_transfer_leader(rpc).await.map_or_else(|e| failed(&e), PeerResponse::TransferLeader)
                }
                None => PeerResponse::UnknownShard,
            },
        }
    }
}

/// Hands peers' requests to the node.
pub(super) struct Handler(pub(super) Arc<Cluster>);

impl PeerHandler for Handler {
    fn handle(&self, request: PeerRequest, snapshot: Vec<u8>) -> BoxFuture<'static, PeerResponse> {
        let cluster = self.0.clone();
        Box::pin(async move { cluster.handle(request, snapshot).await })
    }
}
