//! The node's LMDB store and openraft's storage traits for one shard over it.
//!
//! [`Store`] owns the environment, its [`Tables`] and the [`writer`](crate::writer). For each
//! local shard it hands out a [`ShardLog`] (openraft's `RaftLogStorage`) and a
//! [`ShardStateMachine`] (`RaftStateMachine`), both thin handles that prefix every key with
//! the shard id.
//!
//! Durability, as openraft requires: `save_vote` returns only after its transaction committed;
//! `append` completes its `IOFlushed` callback only after commit (and returns after that too,
//! so appended entries are readable when it returns). With [`Durability::Sync`] a commit is an
//! fsync; [`Durability::NoSync`] (simulation) keeps commits in the OS page cache, which
//! survives a process crash, the only kind of crash the simulator makes.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use heed::{Env, EnvFlags, EnvOpenOptions, RoTxn, RwTxn};
use openraft::entry::RaftEntry;
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::command::{Applied, Response};
use crate::placement::ShardId;
use crate::state_machine::{self, Reader};
use crate::tables::{decode, delete_prefix, encode, get, meta, put, read_u64, Key, Tables, TABLE_COUNT};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, Vote};
use crate::writer::{WriteOp, Writer, WriterMode};

/// Default LMDB map size: the most the environment may grow to, in bytes (address space, not
/// memory).
pub const MAP_BYTES_DEFAULT: usize = 64 << 30;

/// Whether commits reach the disk before they complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit (production).
    Sync,
    /// No fsync (simulation on tmpfs: a simulated crash is a process crash).
    NoSync,
}

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the LMDB environment (created if missing).
    pub path: PathBuf,
    /// Map size in bytes.
    pub map_bytes: usize,
    /// Writer mode.
    pub writer: WriterMode,
    /// Commit durability.
    pub durability: Durability,
    /// Faults injected at the storage seam (the simulator's nemesis); `None` in production.
    pub faults: Option<Arc<dyn StorageFaults>>,
}

/// Faults a simulator injects where the store writes (DESIGN §8): failing writes and slow
/// fsyncs. Consulted once per write transaction the store hands to its writer.
pub trait StorageFaults: Send + Sync + Debug {
    /// An error fails this write, and nothing of it is written, as a failing disk would.
    fn before_write(&self) -> Option<io::Error>;
    /// How much longer this write takes to become durable (a slow fsync).
    fn fsync_delay(&self) -> std::time::Duration;
}

impl StoreConfig {
    /// Production defaults: group commit, fsync on commit.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            map_bytes: MAP_BYTES_DEFAULT,
            writer: WriterMode::GroupCommit,
            durability: Durability::Sync,
            faults: None,
        }
    }
}

/// One node's LMDB environment holding every local shard.
pub struct Store {
    env: Env,
    tables: Tables,
    writer: Writer,
    faults: Option<Arc<dyn StorageFaults>>,
}

impl Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.env.path()).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the environment at `config.path`.
    pub fn open(config: &StoreConfig) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.path)?;
        let mut options = EnvOpenOptions::new();
        options.map_size(config.map_bytes).max_dbs(TABLE_COUNT);
        // SAFETY: the flags only weaken durability (NO_SYNC, for simulation on tmpfs), which is
        // the documented intent; heed marks setting any flag unsafe.
        #[allow(unsafe_code)]
        if config.durability == Durability::NoSync {
            unsafe { options.flags(EnvFlags::NO_SYNC) };
        }
        // SAFETY: heed requires that the same environment is not opened twice in one process
        // (it refuses with `EnvAlreadyOpened`) and that the file is not modified by anything but
        // LMDB; each node owns its data directory.
        #[allow(unsafe_code)]
        let env = unsafe { options.open(&config.path) }.map_err(io::Error::other)?;
        let mut txn = env.write_txn().map_err(io::Error::other)?;
        let tables = Tables::create(&env, &mut txn).map_err(io::Error::other)?;
        txn.commit().map_err(io::Error::other)?;
        let writer = Writer::start(config.writer, &env, tables)?;
        Ok(Arc::new(Self { env, tables, writer, faults: config.faults.clone() }))
    }

    /// The environment's directory.
    pub fn path(&self) -> &Path {
        self.env.path()
    }

    /// The raft log of `shard`.
    pub fn log(self: &Arc<Self>, shard: ShardId) -> ShardLog {
        ShardLog { store: self.clone(), shard }
    }

    /// The state machine of `shard`.
    pub fn state_machine(self: &Arc<Self>, shard: ShardId) -> ShardStateMachine {
        ShardStateMachine { store: self.clone(), shard }
    }

    /// Runs `read` in a read transaction (never held across an `.await`).
    pub fn read<R>(&self, read: impl FnOnce(&Tables, &RoTxn<'_>) -> heed::Result<R>) -> io::Result<R> {
        let txn = self.env.read_txn().map_err(io::Error::other)?;
        read(&self.tables, &txn).map_err(io::Error::other)
    }

    /// Runs `read` with a [`Reader`] of `shard`.
    pub fn read_shard<R>(
        &self,
        shard: ShardId,
        read: impl FnOnce(Reader<'_>, &RoTxn<'_>) -> heed::Result<R>,
    ) -> io::Result<R> {
        self.read(|tables, txn| read(Reader { tables, shard }, txn))
    }

    /// Runs `write` in a write transaction through the writer and waits for the commit. `write`
    /// may run more than once (see [`crate::writer`]).
    pub async fn write<R, F>(&self, write: F) -> io::Result<R>
    where
        R: Send + 'static,
        F: FnMut(&Tables, &mut RwTxn<'_>) -> heed::Result<R> + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        self.submit(Box::new(FnOp { write, output: None, sender: Some(sender) })).await;
        receiver.await.map_err(|_| io::Error::other("store writer dropped a write"))?
    }

    /// Hands an op to the writer.
    pub async fn submit(&self, op: Box<dyn WriteOp>) {
        if let Some(faults) = &self.faults {
            if let Some(error) = faults.before_write() {
                op.complete(Err(error));
                return;
            }
            let delay = faults.fsync_delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        self.writer.submit(&self.env, &self.tables, op).await
    }

    /// Stops the writer (after it finished what was queued) and closes the environment, waiting
    /// until it can be opened again in this process. Fails (returning the store) while other
    /// handles to it are alive.
    pub fn close(self: Arc<Self>) -> Result<(), Arc<Self>> {
        let store = Arc::try_unwrap(self)?;
        store.writer.stop();
        let env = store.env.clone();
        drop(store);
        env.prepare_for_closing().wait();
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.writer.stop();
    }
}

struct FnOp<F, R> {
    write: F,
    output: Option<R>,
    sender: Option<oneshot::Sender<io::Result<R>>>,
}

impl<F, R> WriteOp for FnOp<F, R>
where
    R: Send + 'static,
    F: FnMut(&Tables, &mut RwTxn<'_>) -> heed::Result<R> + Send + 'static,
{
    fn write(&mut self, tables: &Tables, txn: &mut RwTxn<'_>) -> heed::Result<()> {
        self.output = Some((self.write)(tables, txn)?);
        Ok(())
    }

    fn complete(mut self: Box<Self>, result: io::Result<()>) {
        let result = result.map(|()| self.output.take().expect("a committed op produced its output"));
        if let Some(sender) = self.sender.take() {
            // The waiter may have gone away (a cancelled request); the write stands regardless.
            let _ = sender.send(result);
        }
    }
}

fn to_io(error: heed::Error) -> io::Error {
    io::Error::other(error)
}

/// openraft's log storage for one shard.
#[derive(Debug, Clone)]
pub struct ShardLog {
    store: Arc<Store>,
    shard: ShardId,
}

impl ShardLog {
    /// The shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    fn meta_key(&self, tag: u8) -> Key {
        Key::shard(self.shard).u8(tag)
    }

    fn entry_key(shard: ShardId, index: u64) -> Key {
        Key::shard(shard).u64(index)
    }
}

fn bounds_to_indexes(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => end,
        Bound::Excluded(&end) => end.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (start <= end).then_some((start, end))
}

impl RaftLogReader<TypeConfig> for ShardLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((start, end)) = bounds_to_indexes(&range) else {
            return Ok(Vec::new());
        };
        let shard = self.shard;
        self.store.read(|tables, txn| {
            let low = Self::entry_key(shard, start);
            let high = Self::entry_key(shard, end);
            let range = (Bound::Included(low.as_bytes()), Bound::Included(high.as_bytes()));
            let mut entries = Vec::new();
            for item in tables.log.range(txn, &range)? {
                let (_, value) = item?;
                entries.push(decode::<Entry>(value)?);
            }
            Ok(entries)
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        let key = self.meta_key(meta::VOTE);
        self.store.read(|tables, txn| get(&tables.meta, txn, key.as_bytes()))
    }
}

impl RaftLogStorage<TypeConfig> for ShardLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let shard = self.shard;
        let purged_key = self.meta_key(meta::LAST_PURGED);
        self.store.read(|tables, txn| {
            let last_purged_log_id: Option<LogId> = get(&tables.meta, txn, purged_key.as_bytes())?;
            let prefix = Key::shard(shard);
            let last = match tables.log.rev_prefix_iter(txn, prefix.as_bytes())?.next() {
                Some(item) => Some(decode::<Entry>(item?.1)?.log_id()),
                None => None,
            };
            let last_log_id = last.or(last_purged_log_id);
            Ok(LogState { last_purged_log_id, last_log_id })
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let key = self.meta_key(meta::VOTE);
        let value = encode(vote).map_err(to_io)?;
        self.store.write(move |tables, txn| tables.meta.put(txn, key.as_bytes(), &value)).await
    }

    // `save_committed` / `read_committed` keep openraft's defaults (not persisted). Persisting
    // the commit index cost one more fsync in series on every commit (openraft awaits it before
    // applying); after a restart the leader re-sends the commit index within a heartbeat, and
    // the state machine's own applied pointer (written with the state) is what recovery needs.

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let shard = self.shard;
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((entry.log_id().index(), encode(&entry).map_err(to_io)?));
        }
        debug_assert!(rows.windows(2).all(|pair| pair[1].0 == pair[0].0 + 1), "appended entries have a hole");
        let result = self
            .store
            .write(move |tables, txn| {
                for (index, value) in &rows {
                    tables.log.put(txn, Self::entry_key(shard, *index).as_bytes(), value)?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.io_completed(Err(io::Error::other(error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let shard = self.shard;
        let first_removed = last_log_id.map_or(0, |id| id.index() + 1);
        self.store
            .write(move |tables, txn| {
                let low = Self::entry_key(shard, first_removed);
                let high = Self::entry_key(shard, u64::MAX);
                tables.log.delete_range(txn, &(Bound::Included(low.as_bytes()), Bound::Included(high.as_bytes())))?;
                Ok(())
            })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let shard = self.shard;
        let purged_key = self.meta_key(meta::LAST_PURGED);
        let value = encode(&log_id).map_err(to_io)?;
        let last = log_id.index();
        self.store
            .write(move |tables, txn| {
                // Record the purge point first: in one transaction it does not matter, and it
                // keeps the "no hole" rule obvious (entries at or below it are gone, all above stay).
                tables.meta.put(txn, purged_key.as_bytes(), &value)?;
                let low = Self::entry_key(shard, 0);
                let high = Self::entry_key(shard, last);
                tables.log.delete_range(txn, &(Bound::Included(low.as_bytes()), Bound::Included(high.as_bytes())))?;
                Ok(())
            })
            .await
    }
}

/// The current snapshot as stored: metadata and data together.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    last_log_id: Option<LogId>,
    last_membership: StoredMembership,
    data: Vec<u8>,
}

/// openraft's state machine for one shard.
#[derive(Debug, Clone)]
pub struct ShardStateMachine {
    store: Arc<Store>,
    shard: ShardId,
}

impl ShardStateMachine {
    /// The shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The store holding this shard.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn meta_key(&self, tag: u8) -> Key {
        Key::shard(self.shard).u8(tag)
    }

    fn store_snapshot(
        tables: &Tables,
        txn: &mut RwTxn<'_>,
        shard: ShardId,
        snapshot: &StoredSnapshot,
    ) -> heed::Result<()> {
        put(&tables.meta, txn, Key::shard(shard).u8(meta::SNAPSHOT).as_bytes(), snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied_key = self.meta_key(meta::APPLIED);
        let membership_key = self.meta_key(meta::MEMBERSHIP);
        self.store.read(|tables, txn| {
            let applied: Option<LogId> = get::<Option<LogId>>(&tables.meta, txn, applied_key.as_bytes())?.flatten();
            let membership: StoredMembership = get(&tables.meta, txn, membership_key.as_bytes())?.unwrap_or_default();
            Ok((applied, membership))
        })
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        let Some(last) = batch.last().map(|entry| entry.log_id()) else {
            return Ok(());
        };
        let shard = self.shard;
        let responses = self
            .store
            .write(move |tables, txn| {
                let mut responses = Vec::with_capacity(batch.len());
                for entry in &batch {
                    let response = match &entry.payload {
                        EntryPayload::Blank => Applied::from(Response::Done),
                        EntryPayload::Normal(command) => {
                            state_machine::apply_with_effects(tables, txn, shard, entry.log_id().index(), command)?
                        }
                        EntryPayload::Membership(membership) => {
                            let stored = StoredMembership::new(Some(entry.log_id()), membership.clone());
                            put(&tables.meta, txn, Key::shard(shard).u8(meta::MEMBERSHIP).as_bytes(), &stored)?;
                            Applied::from(Response::Done)
                        }
                    };
                    responses.push(response);
                }
                put(&tables.meta, txn, Key::shard(shard).u8(meta::APPLIED).as_bytes(), &Some(last))?;
                Ok(responses)
            })
            .await?;
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, snapshot_meta: &SnapshotMeta, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let shard = self.shard;
        let stored = StoredSnapshot {
            last_log_id: snapshot_meta.last_log_id,
            last_membership: snapshot_meta.last_membership.clone(),
            data: snapshot,
        };
        self.store
            .write(move |tables, txn| {
                // One transaction: the old state, the new rows, the applied pointer and the
                // current snapshot change together or not at all.
                crate::snapshot::restore(tables, txn, shard, &stored.data)?;
                put(&tables.meta, txn, Key::shard(shard).u8(meta::APPLIED).as_bytes(), &stored.last_log_id)?;
                put(&tables.meta, txn, Key::shard(shard).u8(meta::MEMBERSHIP).as_bytes(), &stored.last_membership)?;
                Self::store_snapshot(tables, txn, shard, &stored)
            })
            .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let key = self.meta_key(meta::SNAPSHOT);
        let stored: Option<StoredSnapshot> = self.store.read(|tables, txn| get(&tables.meta, txn, key.as_bytes()))?;
        Ok(stored.map(|stored| Snapshot {
            meta: SnapshotMeta { last_log_id: stored.last_log_id, last_membership: stored.last_membership },
            snapshot: stored.data,
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let shard = self.shard;
        let applied_key = self.meta_key(meta::APPLIED);
        let membership_key = self.meta_key(meta::MEMBERSHIP);
        // One read transaction: the rows and the applied pointer are from the same instant.
        let stored = self.store.read(|tables, txn| {
            let last_log_id: Option<LogId> = get::<Option<LogId>>(&tables.meta, txn, applied_key.as_bytes())?.flatten();
            let last_membership: StoredMembership =
                get(&tables.meta, txn, membership_key.as_bytes())?.unwrap_or_default();
            let data = crate::snapshot::dump(tables, txn, shard)?;
            Ok(StoredSnapshot { last_log_id, last_membership, data })
        })?;
        let meta = SnapshotMeta { last_log_id: stored.last_log_id, last_membership: stored.last_membership.clone() };
        let data = stored.data.clone();
        self.store.write(move |tables, txn| Self::store_snapshot(tables, txn, shard, &stored)).await?;
        Ok(Snapshot { meta, snapshot: data })
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Store>();
    is::<ShardLog>();
    is::<ShardStateMachine>();
    let _ = (read_u64, delete_prefix);
}

/// A Raft group handle for one shard.
pub type Raft = openraft::Raft<TypeConfig, ShardStateMachine>;
