//! Snapshot encoding: one shard's state machine tables as one byte string.
//!
//! Keys are stored without their shard prefix; [`restore`] re-prefixes them for the shard being
//! installed. Restoring first wipes the shard's rows, and the whole install happens in one
//! transaction, so a crash leaves either the old state or the new one, never a mixture.

use heed::{RoTxn, RwTxn};
use serde::{Deserialize, Serialize};

use crate::placement::ShardId;
use crate::tables::{decode, delete_prefix, encode, Key, Tables};

/// Version of the snapshot encoding.
pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    format: u32,
    /// One list of (key without shard prefix, value) per state table, in
    /// [`Tables::state_tables`] order.
    tables: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Encodes every state-machine row of `shard`.
pub fn dump(tables: &Tables, txn: &RoTxn<'_>, shard: ShardId) -> heed::Result<Vec<u8>> {
    let prefix = Key::shard(shard);
    let mut body = SnapshotBody { format: SNAPSHOT_FORMAT, tables: Vec::new() };
    for table in tables.state_tables() {
        let mut rows = Vec::new();
        for item in table.prefix_iter(txn, prefix.as_bytes())? {
            let (key, value) = item?;
            rows.push((key[prefix.as_bytes().len()..].to_vec(), value.to_vec()));
        }
        body.tables.push(rows);
    }
    encode(&body)
}

/// Replaces every state-machine row of `shard` with the snapshot's.
pub fn restore(tables: &Tables, txn: &mut RwTxn<'_>, shard: ShardId, data: &[u8]) -> heed::Result<()> {
    let body: SnapshotBody = decode(data)?;
    if body.format != SNAPSHOT_FORMAT || body.tables.len() != tables.state_tables().len() {
        return Err(heed::Error::Decoding(
            format!(
                "snapshot format {} with {} tables, expected format {SNAPSHOT_FORMAT}",
                body.format,
                body.tables.len()
            )
            .into(),
        ));
    }
    let prefix = Key::shard(shard);
    for (table, rows) in tables.state_tables().into_iter().zip(body.tables) {
        delete_prefix(&table, txn, prefix.as_bytes())?;
        let mut key = prefix.as_bytes().to_vec();
        for (suffix, value) in rows {
            key.truncate(prefix.as_bytes().len());
            key.extend_from_slice(&suffix);
            table.put(txn, &key, &value)?;
        }
    }
    Ok(())
}
