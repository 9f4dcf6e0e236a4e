//! natter-cli: the library behind the `natter` command-line tool.
//!
//! The messaging commands run on natter-client's [`natter_client::Client`]; the rest runs
//! local clusters and reads their status.
//!
//! - [`certs`]: `natter dev certs`, a cluster CA and node certificates.
//! - [`local`]: `natter cluster up` / `down`, `natter-node` processes on loopback with all
//!   their files in one directory.
//! - [`process`]: liveness of recorded node pids, SIGTERM-then-SIGKILL stops.
//! - [`status`]: `natter status`, the `/v1/admin/cluster` view as JSON or tables.
//! - [`cli`]: argument parsing and output; the `natter` binary is [`cli::main`].
//! - [`messaging`]: `natter create`, `send`, `tail`, `history`, `conversations` on a
//!   [`natter_client::Client`].
//! - [`render`]: human and JSON output of the messaging commands.
//!
//! **API boundary:** configs and certificates are made with `natter-node`'s own types and
//! functions (`Config::to_toml`, `tls::write_cluster_certs`), never re-implemented, so what the
//! CLI writes is exactly what a node reads.
#![warn(missing_docs)]

pub mod certs;
pub mod cli;
pub mod error;
pub mod local;
pub mod messaging;
pub mod process;
pub mod render;
pub mod status;
pub mod table;

pub use error::Error;
