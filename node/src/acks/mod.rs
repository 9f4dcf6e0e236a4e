//! Ack batching (DESIGN §4: "acks are batched into the shard").
//!
//! A device acks what it received and marks what it read, every ~100 ms while messages flow.
//! Each of those as its own Raft entry made cursor moves a large share of a busy cluster's
//! commits. Instead the node gathers its sessions' moves per shard, keeps only the furthest
//! per device, and proposes each shard's moves as one `MoveCursors` entry every
//! [`ACK_FLUSH_INTERVAL`]. Receipts then reach the conversation's members up to that much
//! later, which a delivered or read tick can afford.
//!
//! [`AckBatcher`] is the pure core: moves in ([`AckBatcher::handle_move`]), batches out
//! ([`AckBatcher::poll_batches`]), failed batches back in ([`AckBatcher::handle_failed`]). The
//! cluster runs the shell that proposes the batches.

mod flush;

use std::collections::BTreeMap;
use std::time::Duration;

use natter_proto::{ConversationId, DeviceId, UserId};
use natter_raft::command::{CursorMove, CURSOR_MOVES_MAX};
use natter_raft::ShardId;

/// How long moves gather before a shard's batch is proposed.
pub const ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Devices' moves waiting at once, over all shards. When full, a session proposes its move
/// itself (back-pressure instead of loss).
pub const ACKS_PENDING_MAX: usize = 65_536;

/// The furthest delivered and read seq asked for one device.
type Furthest = (Option<u64>, Option<u64>);

/// Cursor moves waiting to be proposed, per shard, one per (conversation, user, device).
#[derive(Debug, Default)]
pub struct AckBatcher {
    pending: BTreeMap<ShardId, BTreeMap<(ConversationId, UserId, DeviceId), Furthest>>,
    count: usize,
}

/// The larger of two optional seqs.
fn furthest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl AckBatcher {
    /// Moves waiting, over all shards.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds `step` for `shard`, merged with the device's waiting move if there is one. False
    /// (nothing added) when [`ACKS_PENDING_MAX`] devices' moves already wait and this device
    /// has none: the caller proposes the move itself.
    pub fn handle_move(&mut self, shard: ShardId, step: CursorMove) -> bool {
        let key = (step.conversation, step.user.clone(), step.device.clone());
        let known = self.pending.get(&shard).is_some_and(|moves| moves.contains_key(&key));
        if !known && self.count >= ACKS_PENDING_MAX {
            return false;
        }
        self.merge(shard, step);
        true
    }

    /// Puts back the moves of a batch whose proposal failed, merged with any newer ones. They
    /// were taken from here, so this may exceed [`ACKS_PENDING_MAX`] by at most one batch.
    pub fn handle_failed(&mut self, shard: ShardId, moves: Vec<CursorMove>) {
        for step in moves {
            self.merge(shard, step);
        }
    }

    /// Takes up to [`CURSOR_MOVES_MAX`] moves of every shard that has any, one batch per shard.
    pub fn poll_batches(&mut self) -> Vec<(ShardId, Vec<CursorMove>)> {
        let mut batches = Vec::new();
        for (&shard, waiting) in &mut self.pending {
            let mut moves = Vec::with_capacity(waiting.len().min(CURSOR_MOVES_MAX));
            while moves.len() < CURSOR_MOVES_MAX {
                let Some(((conversation, user, device), (delivered, read))) = waiting.pop_first() else { break };
                moves.push(CursorMove { conversation, user, device, delivered, read });
            }
            self.count -= moves.len();
            batches.push((shard, moves));
        }
        self.pending.retain(|_, waiting| !waiting.is_empty());
        batches
    }

    fn merge(&mut self, shard: ShardId, step: CursorMove) {
        let CursorMove { conversation, user, device, delivered, read } = step;
        let waiting = self.pending.entry(shard).or_default();
        match waiting.entry((conversation, user, device)) {
            std::collections::btree_map::Entry::Occupied(mut entry) => {
                let (old_delivered, old_read) = *entry.get();
                entry.insert((furthest(old_delivered, delivered), furthest(old_read, read)));
            }
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert((delivered, read));
                self.count += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(conversation: u8, device: &str, delivered: Option<u64>, read: Option<u64>) -> CursorMove {
        CursorMove {
            conversation: ConversationId::from_bytes([conversation; 16]),
            user: UserId::new("bob").unwrap(),
            device: DeviceId::new(device).unwrap(),
            delivered,
            read,
        }
    }

    #[test]
    fn a_device_keeps_only_its_furthest_move() {
        let mut batcher = AckBatcher::default();
        assert!(batcher.handle_move(ShardId(1), step(1, "phone", Some(5), None)));
        assert!(batcher.handle_move(ShardId(1), step(1, "phone", Some(3), Some(2))));
        assert!(batcher.handle_move(ShardId(1), step(1, "laptop", Some(4), None)));
        assert!(batcher.handle_move(ShardId(2), step(2, "phone", None, Some(7))));
        assert_eq!(batcher.len(), 3);
        let batches = batcher.poll_batches();
        assert_eq!(batches.len(), 2);
        let (shard, moves) = &batches[0];
        assert_eq!(*shard, ShardId(1));
        assert_eq!(moves.len(), 2);
        let phone = moves.iter().find(|step| step.device.as_str() == "phone").unwrap();
        assert_eq!((phone.delivered, phone.read), (Some(5), Some(2)), "furthest of each cursor");
        assert!(batcher.is_empty());
        assert!(batcher.poll_batches().is_empty());
    }

    #[test]
    fn a_failed_batch_comes_back_merged_with_newer_moves() {
        let mut batcher = AckBatcher::default();
        batcher.handle_move(ShardId(1), step(1, "phone", Some(5), None));
        let (shard, moves) = batcher.poll_batches().pop().unwrap();
        batcher.handle_move(ShardId(1), step(1, "phone", Some(9), None));
        batcher.handle_failed(shard, moves);
        let (_, moves) = batcher.poll_batches().pop().unwrap();
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].delivered, Some(9));
    }

    #[test]
    fn batches_and_the_queue_are_bounded() {
        let mut batcher = AckBatcher::default();
        for index in 0..ACKS_PENDING_MAX {
            let device = format!("d{index}");
            assert!(batcher.handle_move(ShardId(1), step(1, &device, Some(1), None)));
        }
        assert!(!batcher.handle_move(ShardId(1), step(1, "one-too-many", Some(1), None)), "full");
        assert!(batcher.handle_move(ShardId(1), step(1, "d7", Some(2), None)), "a waiting device still merges");
        let (_, first) = batcher.poll_batches().pop().unwrap();
        assert_eq!(first.len(), CURSOR_MOVES_MAX);
        assert_eq!(batcher.len(), ACKS_PENDING_MAX - CURSOR_MOVES_MAX);
    }
}
