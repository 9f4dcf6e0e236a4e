//! The shell of the ack batcher: sessions' cursor moves queued per shard and proposed as one
//! `MoveCursors` entry per shard every [`ACK_FLUSH_INTERVAL`].

use std::sync::Arc;

use natter_raft::command::{Command, CursorMove, Response};
use natter_raft::placement::ShardId;

use super::ACK_FLUSH_INTERVAL;
use crate::delivery::INTEREST_REFRESH;
use crate::shards::Cluster;

impl Cluster {
    /// Queues a session's cursor move for the shard's next `MoveCursors` batch; false if the
    /// queue is full, and the caller proposes the move itself.
    pub fn submit_cursor_move(&self, shard: ShardId, step: CursorMove) -> bool {
        let mut acks = self.acks.lock().expect("acks lock");
        let was_empty = acks.is_empty();
        let queued = acks.handle_move(shard, step);
        if queued && was_empty {
            self.acks_added.notify_one();
        }
        queued
    }

    /// Proposes the queued cursor moves, one `MoveCursors` entry per shard, every
    /// [`ACK_FLUSH_INTERVAL`] while there are any. A batch that fails (no leader in time) goes
    /// back into the queue for the next round.
    pub(crate) async fn flush_acks(self: Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        while !self.stopping.load(Relaxed) {
            if self.acks.lock().expect("acks lock").is_empty() {
                tokio::select! {
                    biased;
                    () = self.acks_added.notified() => {}
                    // Checks `stopping` now and then.
                    () = tokio::time::sleep(INTEREST_REFRESH) => continue,
                }
            }
            tokio::time::sleep(ACK_FLUSH_INTERVAL).await;
            let batches = self.acks.lock().expect("acks lock").poll_batches();
            for (shard, moves) in batches {
                let cluster = self.clone();
                crate::spawn(async move {
                    let command = Command::MoveCursors { moves: moves.clone() };
                    match cluster.propose(shard, command).await {
                        Ok(Response::Cursors { .. }) => {}
                        Ok(other) => tracing::warn!(%shard, ?other, "a cursor batch was refused"),
                        Err(error) => {
                            tracing::debug!(%shard, %error, "a cursor batch will be retried");
                            cluster.acks.lock().expect("acks lock").handle_failed(shard, moves);
                            cluster.acks_added.notify_one();
                        }
                    }
                });
            }
        }
    }
}
