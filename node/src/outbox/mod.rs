//! The replicated outbox (DESIGN §3): a membership change commits on the conversation's shard
//! with one outbox item per affected user; the shard's leader proposes each item on the user's
//! shard and then acknowledges the batch on its own. Applying an item twice is harmless (items
//! are versioned), so a relay that dies between the two only repeats work.

use std::sync::Arc;
use std::time::Duration;

use natter_raft::command::Command;
use openraft::async_runtime::watch::WatchReceiver;

use crate::shards::Cluster;

/// How often a leader relays its shards' outbox items to their users' shards.
pub const OUTBOX_RELAY_INTERVAL: Duration = Duration::from_millis(50);
/// Most outbox items relayed per shard per round.
pub const OUTBOX_BATCH_MAX: usize = 256;

impl Cluster {
    /// The replicated outbox (DESIGN §3): a membership change commits on the conversation's
    /// shard with one outbox item per affected user; the shard's leader proposes each item on
    /// the user's shard and then acknowledges the batch on its own. A relay that dies between
    /// the two resends the batch later, which the user shard ignores (items are versioned).
    pub(crate) async fn relay_outboxes(self: Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        let me = self.config.node_id;
        while !self.stopping.load(Relaxed) {
            for (shard, raft) in &self.groups {
                if raft.metrics().borrow_watched().current_leader != Some(me) {
                    continue;
                }
                let items = match self.store.read_shard(*shard, |reader, txn| reader.outbox(txn, OUTBOX_BATCH_MAX)) {
                    Ok(items) => items,
                    Err(error) => {
                        tracing::warn!(%shard, %error, "reading the outbox failed");
                        continue;
                    }
                };
                let mut delivered = Vec::with_capacity(items.len());
                for (id, item) in items {
                    let target = natter_raft::placement::shard_of_user(&item.user, self.config.shards);
                    match self.propose(target, item.command).await {
                        Ok(_) => delivered.push(id),
                        Err(error) => {
                            tracing::debug!(%shard, %error, "outbox relay will retry");
                            break;
                        }
                    }
                }
                if !delivered.is_empty() {
                    if let Err(error) = self.propose(*shard, Command::AckOutbox { ids: delivered }).await {
                        tracing::debug!(%shard, %error, "outbox acknowledgement will be retried");
                    }
                }
            }
            tokio::time::sleep(OUTBOX_RELAY_INTERVAL).await;
        }
    }
}
