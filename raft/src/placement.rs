//! Shard ids, which shard owns a conversation or a user, and which nodes replicate a shard.
//!
//! Everything here is a pure function of its inputs and must never change for an existing
//! cluster: it decides where data lives.

use std::fmt;

use natter_proto::{ConversationId, UserId};
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Default number of shards of a new cluster.
pub const SHARD_COUNT_DEFAULT: u32 = 64;
/// Most replicas of one shard.
pub const REPLICAS_MAX: usize = 3;

/// One shard: one Raft group, one contiguous key range in every table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

/// FNV-1a over `bytes`, finished with a SplitMix64 round so nearby inputs spread well.
/// Stable forever: placement depends on it.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The shard that owns a conversation.
pub fn shard_of_conversation(conversation: &ConversationId, shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "a cluster has at least one shard");
    ShardId((stable_hash(&[b"c", conversation.as_bytes()]) % shard_count as u64) as u32)
}

/// The shard that owns a user's records (conversation list, last-seen, settings).
pub fn shard_of_user(user: &UserId, shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "a cluster has at least one shard");
    ShardId((stable_hash(&[b"u", user.as_str().as_bytes()]) % shard_count as u64) as u32)
}

/// The nodes that replicate `shard`: the `min(REPLICAS_MAX, nodes)` nodes with the highest
/// rendezvous score, in descending score order (the first is the preferred initial leader).
/// The result does not depend on the order of `nodes`.
pub fn replicas(shard: ShardId, nodes: &[NodeId]) -> Vec<NodeId> {
    let mut scored: Vec<(u64, NodeId)> =
        nodes.iter().map(|&node| (stable_hash(&[&shard.0.to_be_bytes(), &node.to_be_bytes()]), node)).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by_key(|(_, node)| *node);
    scored.into_iter().take(REPLICAS_MAX).map(|(_, node)| node).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_in_range_and_spread() {
        let mut counts = [0u32; 8];
        for i in 0..8000u32 {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&i.to_be_bytes());
            let shard = shard_of_conversation(&ConversationId::from_bytes(bytes), 8);
            counts[shard.0 as usize] += 1;
        }
        // Each of 8 shards should get roughly 1000 of 8000; allow wide slack.
        assert!(counts.iter().all(|&c| (700..1300).contains(&c)), "{counts:?}");
    }

    #[test]
    fn replicas_are_deterministic_order_free_and_spread_leaders() {
        let nodes = [1, 2, 3, 4, 5];
        let mut reversed = nodes;
        reversed.reverse();
        let mut first_counts = std::collections::BTreeMap::new();
        for shard in 0..200 {
            let a = replicas(ShardId(shard), &nodes);
            assert_eq!(a, replicas(ShardId(shard), &reversed));
            assert_eq!(a.len(), 3);
            let mut unique = a.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 3);
            *first_counts.entry(a[0]).or_insert(0) += 1;
        }
        assert_eq!(first_counts.len(), 5, "every node leads some shard: {first_counts:?}");
        assert_eq!(replicas(ShardId(0), &[7]), vec![7]);
    }

    #[test]
    fn user_and_conversation_placement_is_stable() {
        // Placement decides where data lives: these values must never change.
        let user = UserId::new("alice").unwrap();
        assert_eq!(shard_of_user(&user, 64), shard_of_user(&user, 64));
        let pinned = (shard_of_user(&user, 64), shard_of_conversation(&ConversationId::from_bytes([7; 16]), 64));
        assert_eq!(pinned, (PINNED_USER_SHARD, PINNED_CONVERSATION_SHARD));
    }

    const PINNED_USER_SHARD: ShardId = ShardId(43);
    const PINNED_CONVERSATION_SHARD: ShardId = ShardId(45);
}
