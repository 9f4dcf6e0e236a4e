//! Crash safety: a process writing to the store is SIGKILLed mid-run; after reopening, every
//! write it acknowledged is there, and each shard's log has no hole.
//!
//! A kill keeps the OS page cache, so this proves the store never acknowledges before its
//! transaction committed (the ordering openraft relies on). Power loss is covered by LMDB's
//! fsync on commit (`Durability::Sync`), which this test runs with but cannot observe.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use natter_raft::placement::ShardId;
use natter_raft::store::Durability;
use natter_raft::types::Vote;
use natter_raft::WriterMode;
use openraft::storage::{RaftLogReader, RaftLogStorage};

const ACKS_BEFORE_KILL: usize = 600;

#[test]
fn killed_writer_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_natter-raft-crash-writer"))
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut appended: BTreeMap<u32, u64> = BTreeMap::new();
    let mut voted: BTreeMap<u32, u64> = BTreeMap::new();
    let mut lines = BufReader::new(stdout).lines();
    let mut acks = 0;
    while acks < ACKS_BEFORE_KILL {
        let line = lines.next().expect("writer exited early").expect("read line");
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (shard, value) = (parts[1].parse::<u32>().unwrap(), parts[2].parse::<u64>().unwrap());
        match parts[0] {
            "append" => appended.insert(shard, value),
            "vote" => voted.insert(shard, value),
            other => panic!("unexpected line {other:?}"),
        };
        acks += 1;
    }
    child.kill().expect("SIGKILL the writer");
    child.wait().expect("reap");

    let store = support::open(dir.path(), WriterMode::GroupCommit, Durability::Sync);
    support::block_on(async {
        for (&shard, &last_acked) in &appended {
            let mut log = store.log(ShardId(shard));
            let state = log.get_log_state().await.unwrap();
            let last = state.last_log_id.expect("entries survived").index;
            assert!(last >= last_acked, "shard {shard}: acked {last_acked}, found only {last}");
            let entries = log.try_get_log_entries(1..=last).await.unwrap();
            let indexes: Vec<u64> = entries.iter().map(|entry| entry.log_id.index).collect();
            assert_eq!(indexes, (1..=last).collect::<Vec<_>>(), "shard {shard} log has a hole");
            if let Some(&term) = voted.get(&shard) {
                let vote = log.read_vote().await.unwrap().expect("vote survived");
                assert!(vote >= Vote::new(term, 1), "shard {shard}: acked vote term {term}, found {vote}");
            }
        }
    });
    assert_eq!(appended.len(), 4, "all four shards acknowledged writes: {appended:?}");
    assert!(!voted.is_empty(), "some votes were acknowledged");
}
