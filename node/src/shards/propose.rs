//! Proposals from any node: forwarded to the shard's leader, following leader hints, retried
//! with the same (idempotent) command until the deadline; the leader pushes what committed.

use std::time::Duration;

use natter_raft::command::{Applied, Command, Response};
use natter_raft::placement::ShardId;
use natter_raft::types::NodeId;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use tokio::time::Instant;

use super::{Cluster, ClusterError, PROPOSE_RETRY_PAUSE, PROPOSE_RETRY_PAUSE_MAX};
use crate::peers::rpc::{PeerRequest, PeerResponse};

impl Cluster {
    /// Commits `command` in `shard`'s log from this node, whichever node leads the shard:
    /// forwards to the leader, follows leader changes, and retries the same command until
    /// `proposal_timeout_ms` passes. Commands are idempotent, so a retry after an ambiguous
    /// failure cannot apply twice.
    pub async fn propose(&self, shard: ShardId, command: Command) -> Result<Response, ClusterError> {
        let started = self.clock.now();
        let result = self.propose_inner(shard, command, started).await;
        match &result {
            Ok(_) => {
                self.metrics.proposals_committed.inc();
                self.metrics.observe_proposal(self.clock.now() - started);
            }
            Err(_) => {
                self.metrics.proposals_failed.inc();
            }
        }
        result
    }

    pub(crate) async fn propose_inner(
        &self,
        shard: ShardId,
        command: Command,
        started: Instant,
    ) -> Result<Response, ClusterError> {
        let replicas = self.placement.get(&shard).ok_or(ClusterError::NoSuchShard(shard))?.clone();
        let deadline = started + Duration::from_millis(self.config.proposal_timeout_ms);
        let mut target = self.leader_guess(shard, &replicas);
        let mut pause = PROPOSE_RETRY_PAUSE;
        let mut attempt = 0usize;
        let mut last_failure = String::from("no attempt finished");
        loop {
            let now = self.clock.now();
            if now >= deadline {
                return Err(ClusterError::Unavailable { shard, reason: last_failure });
            }
            let remaining = deadline - now;
            attempt += 1;
            let outcome = if target == self.config.node_id {
                self.propose_local(shard, command.clone(), remaining).await
            } else {
                self.metrics.proposals_forwarded.inc();
                let request = PeerRequest::Propose { shard, command: command.clone() };
                match self.transport.call(target, &request, None, remaining).await {
                    Ok(response) => response,
                    Err(error) => PeerResponse::Failed(error.to_string()),
                }
            };
            match outcome {
                PeerResponse::Proposed(response) => {
                    self.leader_hints.lock().expect("hints lock").insert(shard, target);
                    return Ok(response);
                }
                PeerResponse::NotLeader { leader: Some(leader) } if leader != target => {
                    last_failure = format!("node {target} forwarded to node {leader}");
                    target = leader;
                    continue;
                }
                PeerResponse::NotLeader { .. } => last_failure = format!("node {target} knows no leader"),
                PeerResponse::UnknownShard => last_failure = format!("node {target} has no replica"),
                PeerResponse::Failed(reason) => last_failure = reason,
                other => last_failure = format!("unexpected answer {other:?}"),
            }
            // No usable hint: try the next replica after a growing pause.
            target = replicas[attempt % replicas.len()];
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(self.clock.now()))).await;
            pause = (pause * 2).min(PROPOSE_RETRY_PAUSE_MAX);
        }
    }

    pub(crate) fn leader_guess(&self, shard: ShardId, replicas: &[NodeId]) -> NodeId {
        if let Some(raft) = self.groups.get(&shard) {
            if let Some(leader) = raft.metrics().borrow_watched().current_leader {
                return leader;
            }
        }
        if let Some(&hint) = self.leader_hints.lock().expect("hints lock").get(&shard) {
            return hint;
        }
        replicas[0]
    }

    pub(crate) async fn propose_local(&self, shard: ShardId, command: Command, remaining: Duration) -> PeerResponse {
        let Some(raft) = self.groups.get(&shard) else {
            return PeerResponse::UnknownShard;
        };
        match tokio::time::timeout(remaining, raft.client_write(command)).await {
            Ok(Ok(written)) => {
                let Applied { response, effects } = written.data;
                self.push_effects(shard, effects);
                PeerResponse::Proposed(response)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))))
            | Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)))) => {
                PeerResponse::NotLeader { leader: forward.leader_id }
            }
            Ok(Err(error)) => PeerResponse::Failed(error.to_string()),
            Err(_) => PeerResponse::Failed("proposal timed out".into()),
        }
    }
}
