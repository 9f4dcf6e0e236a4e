//! openraft's own storage test suite against the LMDB store, in both writer modes, with a
//! fresh environment per sub-test.

use natter_raft::placement::ShardId;
use natter_raft::store::{Durability, ShardLog, ShardStateMachine, Store, StoreConfig};
use natter_raft::types::{Runtime, TypeConfig};
use natter_raft::WriterMode;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct LmdbBuilder {
    writer: WriterMode,
    shard: ShardId,
}

impl StoreBuilder<TypeConfig, ShardLog, ShardStateMachine, TempDir> for LmdbBuilder {
    async fn build(&self) -> Result<(TempDir, ShardLog, ShardStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config =
            StoreConfig { writer: self.writer, durability: Durability::NoSync, ..StoreConfig::new(dir.path()) };
        let store = Store::open(&config).expect("open store");
        Ok((dir, store.log(self.shard), store.state_machine(self.shard)))
    }
}

fn run_suite(writer: WriterMode, shard: ShardId) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime
        .block_on(Runtime::scope(7, Suite::test_all(LmdbBuilder { writer, shard })))
        .expect("openraft storage suite");
}

#[test]
fn openraft_suite_group_commit() {
    run_suite(WriterMode::GroupCommit, ShardId(3));
}

#[test]
fn openraft_suite_inline() {
    run_suite(WriterMode::Inline, ShardId(0));
}
