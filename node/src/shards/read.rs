//! Linearizable reads from any node: a ReadIndex from the leader, then the local replica once
//! it applied that far; or, where this node holds no replica, forwarded to one.

use std::time::Duration;

use natter_canary::{self as canary, Canary};
use natter_raft::placement::ShardId;
use natter_raft::query::{Query, QueryResult};
use openraft::error::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;

use super::{Cluster, ClusterError, PROPOSE_RETRY_PAUSE};
use crate::peers::rpc::{PeerRequest, PeerResponse};

impl Cluster {
    /// Waits until this node's replica of `shard` has applied everything committed before the
    /// call (ReadIndex through the leader), so a local read after it is linearizable.
    pub async fn linearizable_read(&self, shard: ShardId) -> Result<(), ClusterError> {
        let raft = self.groups.get(&shard).ok_or(ClusterError::NotReplica(shard))?;
        let replicas = self.placement[&shard].clone();
        let started = self.clock.now();
        let deadline = started + Duration::from_millis(self.config.proposal_timeout_ms);
        let mut target = self.leader_guess(shard, &replicas);
        let mut attempt = 0usize;
        let mut last_failure = String::from("no attempt finished");
        while self.clock.now() < deadline {
            let remaining = deadline.saturating_duration_since(self.clock.now());
            attempt += 1;
            let answer = if target == self.config.node_id {
                self.read_index_local(shard, remaining).await
            } else {
                self.transport
                    .call(target, &PeerRequest::ReadIndex { shard }, None, remaining)
                    .await
                    .unwrap_or_else(|error| PeerResponse::Failed(error.to_string()))
            };
            match answer {
                PeerResponse::ReadIndex(index) => {
                    let remaining = deadline.saturating_duration_since(self.clock.now());
                    return match raft
                        .wait(Some(remaining))
                        .applied_index_at_least(Some(index), "linearizable read")
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(error) => Err(ClusterError::Unavailable { shard, reason: error.to_string() }),
                    };
                }
                PeerResponse::NotLeader { leader: Some(leader) } if leader != target => {
                    target = leader;
                    continue;
                }
                other => last_failure = format!("{other:?}"),
            }
            target = replicas[attempt % replicas.len()];
            tokio::time::sleep(PROPOSE_RETRY_PAUSE).await;
        }
        Err(ClusterError::Unavailable { shard, reason: last_failure })
    }

    /// Reads `shard` linearizably from any node: locally (after a ReadIndex) when this node
    /// replicates the shard, otherwise from a replica, following leader hints and retrying
    /// other replicas until `proposal_timeout_ms` passes.
    pub async fn read(&self, shard: ShardId, query: Query) -> Result<QueryResult, ClusterError> {
        let replicas = self.placement.get(&shard).ok_or(ClusterError::NoSuchShard(shard))?.clone();
        if self.groups.contains_key(&shard) {
            if canary::active(Canary::StaleFollowerRead) {
                return self
                    .store
                    .read_shard(shard, |reader, txn| reader.query(txn, &query))
                    .map_err(|error| ClusterError::Unavailable { shard, reason: error.to_string() });
            }
            return self.read_local(shard, &query).await;
        }
        let deadline = self.clock.now() + Duration::from_millis(self.config.proposal_timeout_ms);
        let mut target = self.leader_hints.lock().expect("hints lock").get(&shard).copied().unwrap_or(replicas[0]);
        let mut attempt = 0usize;
        let mut last_failure = String::from("no attempt finished");
        while self.clock.now() < deadline {
            let remaining = deadline.saturating_duration_since(self.clock.now());
            attempt += 1;
            let request = PeerRequest::Read { shard, query: query.clone() };
            match self.transport.call(target, &request, None, remaining).await {
                Ok(PeerResponse::Read(result)) => return Ok(result),
                Ok(other) => last_failure = format!("node {target} answered {other:?}"),
                Err(error) => last_failure = error.to_string(),
            }
            target = replicas[attempt % replicas.len()];
            tokio::time::sleep(PROPOSE_RETRY_PAUSE).await;
        }
        Err(ClusterError::Unavailable { shard, reason: last_failure })
    }

    pub(crate) async fn read_local(&self, shard: ShardId, query: &Query) -> Result<QueryResult, ClusterError> {
        self.linearizable_read(shard).await?;
        self.store
            .read_shard(shard, |reader, txn| reader.query(txn, query))
            .map_err(|error| ClusterError::Unavailable { shard, reason: error.to_string() })
    }

    pub(crate) async fn read_index_local(&self, shard: ShardId, remaining: Duration) -> PeerResponse {
        let Some(raft) = self.groups.get(&shard) else {
            return PeerResponse::UnknownShard;
        };
        match tokio::time::timeout(remaining, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Ok(Ok(read_log_id)) => PeerResponse::ReadIndex(read_log_id.index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)))) => {
                PeerResponse::NotLeader { leader: forward.leader_id }
            }
            Ok(Err(error)) => PeerResponse::Failed(error.to_string()),
            Err(_) => PeerResponse::Failed("read index timed out".into()),
        }
    }
}
