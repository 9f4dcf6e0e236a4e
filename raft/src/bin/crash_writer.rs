//! Test helper for `tests/crash_safety.rs`: appends log entries and saves votes on four shards
//! as fast as it can, printing one line per acknowledged write, until it is killed.
//!
//! Usage: `natter-raft-crash-writer DIR`. Lines: `append SHARD INDEX` once an append's
//! `IOFlushed` fired, `vote SHARD TERM` once `save_vote` returned.

use std::path::PathBuf;

use natter_proto::UserId;
use natter_raft::placement::ShardId;
use natter_raft::store::{Store, StoreConfig};
use natter_raft::types::{Entry, Runtime, TypeConfig, Vote};
use natter_raft::Command;
use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};

fn main() {
    let dir: PathBuf = std::env::args_os().nth(1).expect("usage: natter-raft-crash-writer DIR").into();
    let store = Store::open(&StoreConfig::new(dir)).expect("open store");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(Runtime::scope(1, async move {
        let mut tasks = Vec::new();
        for shard in 0..4u32 {
            let mut log = store.log(ShardId(shard));
            tasks.push(tokio::spawn(Runtime::scope(shard as u64, async move {
                for index in 1u64.. {
                    let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, index);
                    let entry = Entry::new_normal(
                        log_id,
                        Command::SetLastSeen { user: UserId::new("crash").expect("valid"), ts: index },
                    );
                    log.blocking_append([entry]).await.expect("append");
                    println!("append {shard} {index}");
                    if index % 10 == 0 {
                        log.save_vote(&Vote::new(index, 1)).await.expect("vote");
                        println!("vote {shard} {index}");
                    }
                }
            })));
        }
        for task in tasks {
            task.await.expect("writer task");
        }
    }));
}
