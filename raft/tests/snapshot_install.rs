//! A snapshot install is all or nothing: one that fails part-way leaves the shard exactly as
//! it was (state rows, applied pointer, current snapshot), because it runs in one transaction.

mod support;

use std::collections::BTreeSet;

use futures::stream;
use natter_proto::{ConversationId, DeviceId, UserId};
use natter_raft::placement::ShardId;
use natter_raft::store::Durability;
use natter_raft::types::{Entry, SnapshotMeta, TypeConfig};
use natter_raft::{Command, WriterMode};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn history() -> Vec<Entry> {
    let conversation = ConversationId::from_bytes([3; 16]);
    let members: BTreeSet<UserId> = [user("alice"), user("bob"), user("carol")].into();
    let mut commands = vec![Command::CreateConversation {
        conversation,
        creator: user("alice"),
        members,
        title: Some("trip".into()),
        direct: false,
        ts: 1,
    }];
    for client_seq in 1..=10 {
        commands.push(Command::Append {
            conversation,
            sender: user("bob"),
            device: DeviceId::new("d1").unwrap(),
            client_seq,
            ts: 100 + client_seq,
            body: format!("hello {client_seq}"),
        });
    }
    commands
        .into_iter()
        .enumerate()
        .map(|(i, command)| Entry::new_normal(log_id::<TypeConfig>(1, 1, i as u64 + 1), command))
        .collect()
}

/// A well-formed snapshot body (format 1, nine tables) whose last table holds a key longer
/// than LMDB accepts: restore wipes and rewrites the first eight tables before it fails.
fn poisoned_snapshot() -> Vec<u8> {
    let mut tables: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); 9];
    tables[0].push((vec![1; 16], b"not a conversation row".to_vec()));
    tables[8].push((vec![7; 4096], b"oversized key".to_vec()));
    postcard::to_stdvec(&(1u32, tables)).unwrap()
}

#[test]
fn failed_install_leaves_the_shard_untouched() {
    for writer in [WriterMode::GroupCommit, WriterMode::Inline] {
        let dir = support::temp_dir();
        let store = support::open(dir.path(), writer, Durability::NoSync);
        let shard = ShardId(5);
        support::block_on(async {
            let mut sm = store.state_machine(shard);
            sm.apply(stream::iter(history().into_iter().map(|entry| Ok((entry, None))))).await.unwrap();
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            let before = support::shard_rows(&store, shard);

            let meta = SnapshotMeta { last_log_id: Some(log_id::<TypeConfig>(9, 2, 500)), ..Default::default() };
            let error = sm.install_snapshot(&meta, poisoned_snapshot()).await;
            let error = error.expect_err("the oversized key must fail the install");
            assert!(format!("{error:?}").contains("BadValSize"), "failed for the planted reason: {error:?}");
            assert_eq!(before, support::shard_rows(&store, shard), "a failed install changed the shard ({writer:?})");

            let truncated = {
                let mut data = sm.get_current_snapshot().await.unwrap().unwrap().snapshot;
                data.truncate(data.len() / 2);
                data
            };
            assert!(sm.install_snapshot(&meta, truncated).await.is_err(), "truncated snapshot ({writer:?})");
            assert_eq!(before, support::shard_rows(&store, shard), "a truncated install changed the shard");

            let (applied, _) = sm.applied_state().await.unwrap();
            assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 11)));
        });
    }
}
