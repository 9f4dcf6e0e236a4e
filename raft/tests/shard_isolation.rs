//! Two shards in one environment are isolated: nothing done to one changes the other's rows.

mod support;

use std::collections::BTreeSet;

use futures::stream;
use natter_proto::{ConversationId, DeviceId, UserId};
use natter_raft::placement::ShardId;
use natter_raft::store::Durability;
use natter_raft::types::{Entry, TypeConfig};
use natter_raft::{Command, WriterMode};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::type_config::alias::VoteOf;

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn commands(index: u64) -> Command {
    let members: BTreeSet<UserId> = [user("alice"), user("bob")].into();
    let conversation = ConversationId::direct(&user("alice"), &user("bob"));
    if index == 1 {
        Command::CreateConversation { conversation, creator: user("alice"), members, title: None, direct: true, ts: 5 }
    } else {
        Command::Append {
            conversation,
            sender: user("alice"),
            device: DeviceId::new("phone").unwrap(),
            client_seq: index,
            ts: 10 + index,
            body: format!("message {index}"),
        }
    }
}

async fn apply(sm: &mut natter_raft::ShardStateMachine, entries: Vec<Entry>) {
    sm.apply(stream::iter(entries.into_iter().map(|entry| Ok((entry, None))))).await.expect("apply");
}

fn normal(term: u64, index: u64) -> Entry {
    Entry::new_normal(log_id::<TypeConfig>(term, 1, index), commands(index))
}

#[test]
fn operations_on_one_shard_never_touch_another() {
    for writer in [WriterMode::GroupCommit, WriterMode::Inline] {
        let dir = support::temp_dir();
        let store = support::open(dir.path(), writer, Durability::NoSync);
        // Neighbouring shard ids, so a range that overran its prefix by one would show.
        let (a, b) = (ShardId(41), ShardId(42));
        support::block_on(async {
            // Give both shards the same history.
            for shard in [a, b, ShardId(43)] {
                let mut log = store.log(shard);
                let mut sm = store.state_machine(shard);
                log.save_vote(&VoteOf::<TypeConfig>::new(1, 1)).await.unwrap();
                let entries: Vec<Entry> = (1..=20).map(|index| normal(1, index)).collect();
                log.blocking_append(entries.clone()).await.unwrap();
                apply(&mut sm, entries).await;
                sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            }
            let b_before = support::shard_rows(&store, b);
            let c_before = support::shard_rows(&store, ShardId(43));
            let a_before = support::shard_rows(&store, a);

            // Now do everything to shard a.
            let mut log = store.log(a);
            let mut sm = store.state_machine(a);
            log.blocking_append((21..=30).map(|index| normal(1, index))).await.unwrap();
            log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 25))).await.unwrap();
            log.purge(log_id::<TypeConfig>(1, 1, 10)).await.unwrap();
            log.save_vote(&VoteOf::<TypeConfig>::new(7, 2)).await.unwrap();
            log.save_committed(Some(log_id::<TypeConfig>(1, 1, 25))).await.unwrap();
            apply(&mut sm, (21..=25).map(|index| normal(1, index)).collect()).await;
            // Install a snapshot taken from the third shard onto a.
            let snapshot = store.state_machine(ShardId(43)).get_current_snapshot().await.unwrap().unwrap();
            sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();

            let a_after = support::shard_rows(&store, a);
            assert_ne!(a_before, a_after, "the operations changed shard a");
            assert_eq!(b_before, support::shard_rows(&store, b), "shard b changed ({writer:?})");
            assert_eq!(c_before, support::shard_rows(&store, ShardId(43)), "shard 43 changed ({writer:?})");

            // And shard a reads back what was done to it.
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(log_id::<TypeConfig>(1, 1, 10)));
            assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(1, 1, 25)));
            let mut reader = log.get_log_reader().await;
            let vote = openraft::storage::RaftLogReader::read_vote(&mut reader).await.unwrap();
            assert_eq!(vote, Some(VoteOf::<TypeConfig>::new(7, 2)));
            let (applied, _) = sm.applied_state().await.unwrap();
            assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 20)), "installed snapshot's applied id");
        });
        drop(store);
    }
}
