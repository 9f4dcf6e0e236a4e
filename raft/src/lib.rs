//! natter-raft: a conversation shard as an openraft group over LMDB.
//!
//! - [`types`]: the openraft type configuration every shard group uses.
//! - [`placement`]: shard ids, `shard_of`, rendezvous placement of replicas.
//! - [`command`]: the commands a shard log carries and their responses.
//! - [`state_machine`]: how a committed command changes a shard (pure over a transaction).
//! - [`store`]: the node's LMDB environment and openraft's storage traits per shard.
//! - [`writer`]: group commit (production) or inline (simulation) write transactions.
//!
//! **Architecture invariant:** this crate does no network I/O and reads no clock or RNG; every
//! timestamp and id arrives inside a command.
//!
//! **API boundary:** `natter-node` and the simulator depend on [`store::Store`],
//! [`command::Command`] and [`types::TypeConfig`].
#![warn(missing_docs)]

pub mod command;
pub mod placement;
pub mod query;
pub mod snapshot;
pub mod state_machine;
pub mod store;
pub mod tables;
pub mod types;
pub mod writer;

pub use command::{Command, CommandError, Response};
pub use placement::ShardId;
pub use store::{Durability, ShardLog, ShardStateMachine, StorageFaults, Store, StoreConfig};
pub use types::TypeConfig;
pub use writer::WriterMode;
