//! openraft's network for every shard group, over the [`Transport`].
//!
//! openraft-multi's `GroupRouter` is the seam: [`Router`] implements it once for all groups
//! (the group id is the [`ShardId`]), and openraft-multi's `GroupNetworkAdapter` turns it into
//! the per-target `RaftNetworkV2` each group asks for.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use natter_raft::placement::ShardId;
use natter_raft::types::{NodeId, NodeInfo, Snapshot, TypeConfig, Vote};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use openraft_multi::{GroupNetworkAdapter, GroupRouter};

use crate::peers::rpc::{PeerRequest, PeerResponse};
use crate::peers::transport::{CallError, Transport};

/// Routes every group's RPCs through one transport.
#[derive(Clone)]
pub struct Router {
    transport: Arc<Transport>,
}

impl Router {
    /// A router over `transport`.
    pub fn new(transport: Arc<Transport>) -> Self {
        Self { transport }
    }
}

fn rpc_error(error: CallError) -> RPCError<TypeConfig> {
    match error {
        CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&AnyError::error(error.to_string()))),
        _ => RPCError::Network(NetworkError::new(&AnyError::error(error.to_string()))),
    }
}

fn unexpected(response: PeerResponse) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&AnyError::error(format!("unexpected response {response:?}"))))
}

impl Router {
    async fn call(
        &self,
        target: NodeId,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<TypeConfig>> {
        self.transport.call(target, &request, None, option.hard_ttl()).await.map_err(rpc_error)
    }
}

impl GroupRouter<TypeConfig, ShardId> for Router {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &self,
        target: NodeId,
        shard: ShardId,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(target, PeerRequest::AppendEntries { shard, rpc }, &option).await? {
            PeerResponse::AppendEntries(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &self,
        target: NodeId,
        shard: ShardId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(target, PeerRequest::Vote { shard, rpc }, &option).await? {
            PeerResponse::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        shard: ShardId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(target, PeerRequest::PreVote { shard, rpc }, &option).await? {
            PeerResponse::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        shard: ShardId,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = PeerRequest::Snapshot {
            shard,
            vote,
            last_log_id: snapshot.meta.last_log_id,
            last_membership: snapshot.meta.last_membership.clone(),
            bytes: snapshot.snapshot.len() as u64,
        };
        // Snapshots get their own stream like every RPC, and a longer deadline: the data is
        // sent in 1 MiB frames.
        let deadline = option.hard_ttl().max(Duration::from_secs(30));
        let send = self.transport.call(target, &request, Some(&snapshot.snapshot), deadline);
        tokio::select! {
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => match result {
                Ok(PeerResponse::Snapshot(response)) => Ok(response),
                Ok(other) => Err(StreamingError::Network(NetworkError::new(&AnyError::error(format!("unexpected response {other:?}"))))),
                Err(error @ CallError::Unreachable { .. }) => Err(StreamingError::Unreachable(Unreachable::new(&AnyError::error(error.to_string())))),
                Err(error) => Err(StreamingError::Network(NetworkError::new(&AnyError::error(error.to_string())))),
            },
        }
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        shard: ShardId,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(target, PeerRequest::TransferLeader { shard, rpc }, &option).await? {
            PeerResponse::TransferLeader(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }
}

/// The network factory of one shard group.
#[derive(Clone)]
pub struct ShardNetworkFactory {
    router: Router,
    shard: ShardId,
}

impl ShardNetworkFactory {
    /// The factory for `shard`'s group.
    pub fn new(router: Router, shard: ShardId) -> Self {
        Self { router, shard }
    }
}

impl RaftNetworkFactory<TypeConfig> for ShardNetworkFactory {
    type Network = GroupNetworkAdapter<TypeConfig, ShardId, Router>;

    async fn new_client(&mut self, target: NodeId, _node: &NodeInfo) -> Self::Network {
        GroupNetworkAdapter::new(self.router.clone(), target, self.shard)
    }
}
