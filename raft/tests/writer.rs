//! The writer: a failing op never takes its batch neighbours down, in either mode.

mod support;

use natter_raft::placement::ShardId;
use natter_raft::store::Durability;
use natter_raft::tables::Key;
use natter_raft::WriterMode;

#[test]
fn a_failing_op_fails_alone() {
    for writer in [WriterMode::GroupCommit, WriterMode::Inline] {
        let dir = support::temp_dir();
        let store = support::open(dir.path(), writer, Durability::NoSync);
        let results = support::block_on({
            let store = store.clone();
            async move {
                let mut tasks = Vec::new();
                for i in 0..64u64 {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        store
                            .write(move |tables, txn| {
                                tables.users.put(txn, Key::shard(ShardId(1)).u64(i).as_bytes(), b"v")?;
                                if i % 16 == 7 {
                                    return Err(heed::Error::Encoding("planted failure".into()));
                                }
                                Ok(i)
                            })
                            .await
                    }));
                }
                let mut results = Vec::new();
                for task in tasks {
                    results.push(task.await.unwrap());
                }
                results
            }
        });
        for (i, result) in results.iter().enumerate() {
            let i = i as u64;
            let stored = store
                .read(|tables, txn| Ok(tables.users.get(txn, Key::shard(ShardId(1)).u64(i).as_bytes())?.is_some()))
                .unwrap();
            if i % 16 == 7 {
                assert!(result.is_err(), "op {i} should fail ({writer:?})");
                assert!(!stored, "failed op {i} left a row ({writer:?})");
            } else {
                assert_eq!(result.as_ref().ok(), Some(&i), "op {i} ({writer:?})");
                assert!(stored, "op {i} lost its row ({writer:?})");
            }
        }
    }
}
