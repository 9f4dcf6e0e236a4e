//! The LMDB databases of one node and how their keys are laid out.
//!
//! One environment holds every local shard. Each database is shared by all shards and every
//! key starts with the shard id as a big-endian `u32`, so one shard's rows are one contiguous
//! key range: a shard can be scanned, dumped or wiped without touching its neighbours.
//! Variable-length ids inside keys are prefixed by their length (one byte; ids are at most 64
//! bytes), so no key of one id can be a prefix of another id's keys.

use std::ops::Bound;

use heed::types::Bytes;
use heed::{Database, Env, RoTxn, RwTxn};
use natter_proto::{ConversationId, DeviceId, UserId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::placement::ShardId;

/// A database whose keys and values are raw bytes.
pub type Table = Database<Bytes, Bytes>;

/// Every database of a node's environment.
#[derive(Clone, Copy)]
pub struct Tables {
    /// `shard | index:u64` → postcard(Entry).
    pub log: Table,
    /// `shard | tag:u8` → postcard(value); tags in [`meta`].
    pub meta: Table,
    /// `shard | conversation` → postcard(ConversationRow).
    pub conversations: Table,
    /// `shard | conversation | user` → version:u64 (log index that added the member).
    pub members: Table,
    /// `shard | conversation | seq:u64` → postcard(MessageRow).
    pub messages: Table,
    /// `shard | user | device | client_seq:u64` → postcard(DedupRow).
    pub dedup: Table,
    /// `shard | user | device` → highest committed client_seq:u64.
    pub dedup_high: Table,
    /// `shard | conversation | user | device` → postcard(Cursor).
    pub cursors: Table,
    /// `shard | user | conversation` → postcard(MembershipRow) (user shard).
    pub user_conversations: Table,
    /// `shard | user` → postcard(UserRecord) (user shard).
    pub users: Table,
    /// `shard | index:u64 | position:u32` → postcard(OutboxItem).
    pub outbox: Table,
}

/// Number of databases in [`Tables`].
pub const TABLE_COUNT: u32 = 11;

/// Tags of the `meta` table.
pub mod meta {
    /// The vote (durable before `save_vote` returns).
    pub const VOTE: u8 = 1;
    /// Reserved: the committed log id (not persisted; see `ShardLog`).
    pub const COMMITTED: u8 = 2;
    /// The last purged log id.
    pub const LAST_PURGED: u8 = 3;
    /// The state machine's last applied log id.
    pub const APPLIED: u8 = 4;
    /// The state machine's last membership.
    pub const MEMBERSHIP: u8 = 5;
    /// The current snapshot: metadata and data in one value so they can never disagree.
    pub const SNAPSHOT: u8 = 6;
}

impl Tables {
    /// Opens (creating if needed) every database in one write transaction.
    pub fn create(env: &Env, txn: &mut RwTxn<'_>) -> heed::Result<Self> {
        let open = |txn: &mut RwTxn<'_>, name: &str| env.create_database::<Bytes, Bytes>(txn, Some(name));
        Ok(Self {
            log: open(txn, "log")?,
            meta: open(txn, "meta")?,
            conversations: open(txn, "conversations")?,
            members: open(txn, "members")?,
            messages: open(txn, "messages")?,
            dedup: open(txn, "dedup")?,
            dedup_high: open(txn, "dedup_high")?,
            cursors: open(txn, "cursors")?,
            user_conversations: open(txn, "user_conversations")?,
            users: open(txn, "users")?,
            outbox: open(txn, "outbox")?,
        })
    }

    /// The state machine's tables, in a fixed order: the order snapshots list them in.
    pub fn state_tables(&self) -> [Table; 9] {
        [
            self.conversations,
            self.members,
            self.messages,
            self.dedup,
            self.dedup_high,
            self.cursors,
            self.user_conversations,
            self.users,
            self.outbox,
        ]
    }
}

/// Builds a key: the shard prefix, then parts appended with the `push_*` methods.
#[derive(Debug, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    /// A key holding only the shard prefix.
    pub fn shard(shard: ShardId) -> Self {
        let mut bytes = Vec::with_capacity(48);
        bytes.extend_from_slice(&shard.0.to_be_bytes());
        Self(bytes)
    }
    /// Appends a big-endian u64.
    pub fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    /// Appends a big-endian u32.
    pub fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    /// Appends one byte.
    pub fn u8(mut self, value: u8) -> Self {
        self.0.push(value);
        self
    }
    /// Appends a conversation id's 16 bytes.
    pub fn conversation(mut self, id: &ConversationId) -> Self {
        self.0.extend_from_slice(id.as_bytes());
        self
    }
    /// Appends a length-prefixed user id.
    pub fn user(self, user: &UserId) -> Self {
        self.text(user.as_str())
    }
    /// Appends a length-prefixed device id.
    pub fn device(self, device: &DeviceId) -> Self {
        self.text(device.as_str())
    }
    fn text(mut self, text: &str) -> Self {
        let length = u8::try_from(text.len()).expect("ids are at most 64 bytes");
        self.0.push(length);
        self.0.extend_from_slice(text.as_bytes());
        self
    }
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Reads a big-endian u64 at `offset` of `bytes`.
pub fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_be_bytes(raw)
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none
/// (the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Deletes every row whose key starts with `prefix`; returns how many.
pub fn delete_prefix(table: &Table, txn: &mut RwTxn<'_>, prefix: &[u8]) -> heed::Result<usize> {
    let end = prefix_end(prefix);
    let upper = match &end {
        Some(end) => Bound::Excluded(end.as_slice()),
        None => Bound::Unbounded,
    };
    table.delete_range(txn, &(Bound::Included(prefix), upper))
}

/// Encodes a value for storage.
pub fn encode<T: Serialize>(value: &T) -> heed::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| heed::Error::Encoding(Box::new(e)))
}

/// Decodes a stored value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> heed::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| heed::Error::Decoding(Box::new(e)))
}

/// Reads and decodes one row.
pub fn get<T: DeserializeOwned>(table: &Table, txn: &RoTxn<'_>, key: &[u8]) -> heed::Result<Option<T>> {
    table.get(txn, key)?.map(decode).transpose()
}

/// Encodes and writes one row.
pub fn put<T: Serialize>(table: &Table, txn: &mut RwTxn<'_>, key: &[u8], value: &T) -> heed::Result<()> {
    table.put(txn, key, &encode(value)?)
}
