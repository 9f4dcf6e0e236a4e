//! Simulator smoke test: 3 nodes as turmoil hosts elect a leader for every shard and commit a
//! proposal on every shard through every node; linearizable reads on every replica see every
//! committed probe; the same seed twice gives the same trace hash.

use std::time::Duration;

use natter_sim::smoke::{run, SmokeConfig};

#[test]
fn three_simulated_nodes_elect_commit_and_replay_identically() {
    let config =
        SmokeConfig { seed: 7, nodes: 3, shards: 8, limit: Duration::from_secs(120), conversation_reads: false };
    let started = std::time::Instant::now();
    let first = run(&config).expect("first run");
    let wall = started.elapsed();
    println!(
        "seed {}: trace {} ({} events) in {:?} simulated, {:?} wall",
        config.seed,
        first.trace_hash,
        first.trace.len(),
        first.simulated,
        wall
    );
    for node in 1..=3 {
        assert_eq!(first.probes_committed.get(&node), Some(&8), "node {node} committed a probe on every shard");
        for shard in 0..8 {
            assert!(
                first.leaders.get(&(node, shard)).copied().flatten().is_some(),
                "node {node} knows shard {shard}'s leader"
            );
        }
    }

    // Linearizable reads: every replica, leader or follower, has applied every probe after a
    // read that started once all probes had committed.
    assert_eq!(first.read_applied.len(), 3 * 8, "3 replicas of each of 8 shards read");
    for (&(node, shard), &applied) in &first.read_applied {
        let probe = first.probe_index[&shard];
        assert!(applied >= probe, "node {node} read shard {shard} at applied {applied}, before probe index {probe}");
    }

    let second = run(&config).expect("second run");
    if first.trace != second.trace {
        let diverged = first.trace.iter().zip(&second.trace).position(|(a, b)| a != b);
        panic!(
            "same seed, different traces; first difference at line {diverged:?}: {:?} vs {:?}",
            diverged.map(|line| &first.trace[line]),
            diverged.map(|line| &second.trace[line])
        );
    }
    assert_eq!(first.trace_hash, second.trace_hash);

    let other = run(&SmokeConfig { seed: 8, ..config }).expect("other seed");
    assert_ne!(first.trace_hash, other.trace_hash, "a different seed explores a different run");
}

/// Four nodes, so each shard lives on three of them: a history read through the fourth is
/// forwarded to a replica, and every node sees the same three committed messages; a
/// non-member is refused wherever it asks; the outbox relay lists the conversation on the
/// creator's user shard.
#[test]
fn reads_through_any_node_see_committed_messages() {
    use natter_proto::{ConversationId, UserId};
    use natter_raft::placement::{replicas, shard_of_conversation};
    use natter_raft::query::QueryResult;
    use natter_raft::CommandError;
    use natter_sim::smoke::READ_CONVERSATION;

    let config =
        SmokeConfig { seed: 11, nodes: 4, shards: 8, limit: Duration::from_secs(120), conversation_reads: true };
    let conversation = ConversationId::from_bytes(READ_CONVERSATION);
    let holders = replicas(shard_of_conversation(&conversation, 8), &[1, 2, 3, 4]);
    assert_eq!(holders.len(), 3, "one of the four nodes holds no replica: its read is forwarded");
    let outcome = run(&config).expect("run");
    assert_eq!(outcome.history_reads.len(), 4);
    for (node, (member, outsider, listed)) in &outcome.history_reads {
        assert_eq!(listed, &QueryResult::Conversations(vec![conversation]), "node {node}: alice's user shard lists it");
        let QueryResult::Messages(messages) = member else { panic!("node {node}: {member:?}") };
        let seqs: Vec<u64> = messages.iter().map(|message| message.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3], "node {node} (replica: {})", holders.contains(node));
        assert!(messages.iter().all(|message| message.sender == UserId::new("alice").unwrap()));
        assert_eq!(
            outsider,
            &QueryResult::Rejected(CommandError::NotMember { user: UserId::new("mallory").unwrap(), conversation }),
            "node {node}"
        );
    }
}
