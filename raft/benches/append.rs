//! Appends through the store: group commit across 8 shards vs. one transaction per entry.
//!
//! Both variants run 8 shards, each appending one entry at a time and waiting for it to be
//! durable (fsync) before the next, as a Raft leader does. With group commit the writer thread
//! folds whatever is queued into one transaction and one fsync; the baseline runs every append
//! in its own transaction (the inline writer) with the same fsync-on-commit durability.
//!
//! Run: `cargo bench -p natter-raft --bench append`. The store lives in a temp dir under
//! `target/` so fsync hits the real disk (tmpfs would make fsync free).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use natter_proto::{ConversationId, DeviceId, UserId};
use natter_raft::placement::ShardId;
use natter_raft::store::{Durability, Store, StoreConfig};
use natter_raft::types::{Entry, Runtime, TypeConfig};
use natter_raft::{Command, WriterMode};
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorageExt;

const SHARDS: u32 = 8;

fn command(index: u64) -> Command {
    Command::Append {
        conversation: ConversationId::from_bytes([9; 16]),
        sender: UserId::new("alice").unwrap(),
        device: DeviceId::new("phone-1").unwrap(),
        client_seq: index,
        ts: 1_764_288_000_000 + index,
        body: "a typical chat message of about eighty bytes, which is what people mostly send".into(),
    }
}

/// Appends `per_shard` entries to each shard concurrently; returns the elapsed time.
fn run(runtime: &tokio::runtime::Runtime, store: &Arc<Store>, next_index: &mut u64, per_shard: u64) -> Duration {
    let first = *next_index;
    *next_index += per_shard;
    runtime.block_on(Runtime::scope(3, async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for shard in 0..SHARDS {
            let mut log = store.log(ShardId(shard));
            tasks.push(tokio::spawn(Runtime::scope(shard as u64, async move {
                for index in first..first + per_shard {
                    let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, index);
                    log.blocking_append([Entry::new_normal(log_id, command(index))]).await.expect("append");
                }
            })));
        }
        for task in tasks {
            task.await.expect("append task");
        }
        start.elapsed()
    }))
}

fn appends(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&target).unwrap();
    let mut group = c.benchmark_group("append_8_shards");
    group.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    let per_shard = 25u64;
    group.throughput(Throughput::Elements(per_shard * SHARDS as u64));
    for (name, writer) in [("group_commit", WriterMode::GroupCommit), ("txn_per_entry", WriterMode::Inline)] {
        let dir = tempfile::tempdir_in(&target).unwrap();
        let config = StoreConfig { writer, durability: Durability::Sync, ..StoreConfig::new(dir.path()) };
        let store = Store::open(&config).unwrap();
        let mut next_index = 1;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iterations| (0..iterations).map(|_| run(&runtime, &store, &mut next_index, per_shard)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
