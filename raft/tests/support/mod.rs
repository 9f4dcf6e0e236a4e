//! Helpers shared by natter-raft's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use natter_proto::UserId;
use natter_raft::placement::ShardId;
use natter_raft::store::{Durability, Store, StoreConfig};
use natter_raft::tables::Key;
use natter_raft::types::{Entry, Runtime, TypeConfig};
use natter_raft::{Command, WriterMode};
use openraft::entry::RaftEntry;

/// Opens a store for tests (no fsync unless asked).
pub fn open(path: &Path, writer: WriterMode, durability: Durability) -> Arc<Store> {
    Store::open(&StoreConfig { writer, durability, ..StoreConfig::new(path) }).expect("open store")
}

/// A temp dir on tmpfs when the machine has one.
pub fn temp_dir() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").expect("temp dir")
    } else {
        tempfile::tempdir().expect("temp dir")
    }
}

/// A log entry carrying a small user-shard command.
pub fn entry(term: u64, index: u64) -> Entry {
    let log_id = openraft::testing::log_id::<TypeConfig>(term, 1, index);
    Entry::new_normal(log_id, Command::SetLastSeen { user: UserId::new("alice").unwrap(), ts: index })
}

/// Every row of every table that belongs to `shard`, as (table index, key, value).
pub fn shard_rows(store: &Store, shard: ShardId) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    store
        .read(|tables, txn| {
            let mut rows = Vec::new();
            let all = [tables.log, tables.meta];
            for (table_index, table) in all.into_iter().chain(tables.state_tables()).enumerate() {
                for item in table.prefix_iter(txn, Key::shard(shard).as_bytes())? {
                    let (key, value) = item?;
                    rows.push((table_index, key.to_vec(), value.to_vec()));
                }
            }
            Ok(rows)
        })
        .expect("read rows")
}

/// Runs a future on a fresh multi-thread runtime inside a deterministic-RNG scope.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(Runtime::scope(11, future))
}
