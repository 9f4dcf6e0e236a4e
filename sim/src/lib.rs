//! natter-sim: the deterministic simulator. Each node is a turmoil host running the real
//! `natter_node::run_node` with a simulated [`natter_node::NodeEnv`]: QUIC over turmoil's
//! network ([`net`]), turmoil's clock, every RNG from the run's seed, LMDB on tmpfs without
//! fsync and with the inline writer ([`env`]).
//!
//! Runs are judged by natter-check's checkers over the history the simulated clients record
//! ([`harness`], [`workload`]); [`nemesis`] injects the faults, [`sweep`] runs many seeds, and
//! [`smoke`] proves the seam.
#![warn(missing_docs)]

// Without this cfg tokio draws its internal RNG seed from a process-wide counter, so two runs
// of one seed in a process diverge. `.cargo/config.toml` sets it for the workspace.
#[cfg(not(tokio_unstable))]
compile_error!("natter-sim must be built with RUSTFLAGS=\"--cfg tokio_unstable\" (see .cargo/config.toml)");

pub mod clock;
pub mod entropy;
pub mod env;
pub mod faults;
pub mod harness;
pub mod nemesis;
pub mod net;
pub mod run_config;
pub mod scenario;
pub mod smoke;
pub mod sweep;
pub mod topology;
pub mod workload;
