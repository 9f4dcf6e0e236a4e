//! The one error type of the library: every failure a command can report, each with a message
//! that fits on one line and says what was expected and what happened.

use std::path::PathBuf;
use std::time::Duration;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The arguments do not describe a valid request (a bad user id, duration or secret).
    #[error("{0}")]
    Usage(String),
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot create", "cannot read" …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Generating or writing certificates failed.
    #[error("cannot write certificates: {0}")]
    Tls(#[from] natter_node::tls::TlsError),
    /// A cluster CA already exists where new certificates were asked for.
    #[error("{0} already exists; pass --force to replace the cluster CA and every node certificate")]
    CaExists(PathBuf),
    /// A node config could not be read.
    #[error("{0}")]
    Config(#[from] natter_node::config::ConfigError),
    /// The directory holds a cluster with live node processes.
    #[error("{dir} already has a running cluster: {nodes}; stop it with `natter cluster down --dir {dir}`")]
    ClusterRunning {
        /// The cluster directory.
        dir: PathBuf,
        /// The live nodes, as "node 1 (pid 4242), …".
        nodes: String,
    },
    /// The directory holds a stopped cluster's configs, certificates or data.
    #[error("{dir} already holds a cluster's files ({found}); choose an empty --dir, or pass --force to delete them")]
    ClusterExists {
        /// The cluster directory.
        dir: PathBuf,
        /// The files found, comma separated.
        found: String,
    },
    /// No `natter-node` executable was found.
    #[error("cannot find the natter-node executable: tried {tried}; build it with `cargo build -p natter-node` or pass --node-bin PATH")]
    NodeBinaryNotFound {
        /// Every place looked at, in order.
        tried: String,
    },
    /// The executable given with `--node-bin` is not an executable file.
    #[error("--node-bin {0} is not an executable file")]
    NodeBinaryInvalid(PathBuf),
    /// A node process could not be started.
    #[error("cannot start node {node} ({binary}): {source}")]
    Spawn {
        /// The node id.
        node: u64,
        /// The executable.
        binary: PathBuf,
        /// The error from the OS.
        source: std::io::Error,
    },
    /// A node process exited while the cluster was starting.
    #[error("node {node} exited during start-up ({status}); its log is {log}")]
    NodeExited {
        /// The node id.
        node: u64,
        /// How it exited.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A node did not become ready in time.
    #[error("node {node} was not ready after {} s ({reason}); its log is {log}", timeout.as_secs())]
    NotReady {
        /// The node id.
        node: u64,
        /// The readiness timeout.
        timeout: Duration,
        /// The last answer or failure of its `/readyz`.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },
    /// Sending a signal to a node process failed.
    #[error("cannot signal node {node} (pid {pid}): {source}")]
    Signal {
        /// The node id.
        node: u64,
        /// The process id.
        pid: u32,
        /// The error from the OS.
        source: std::io::Error,
    },
    /// A node's HTTP endpoint could not be reached.
    #[error("cannot reach {url}: {reason}; is a node running there? (`natter-node --dev` or `natter cluster up`)")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A node answered with an unexpected HTTP status.
    #[error("{url} answered HTTP {status}: {body}")]
    HttpStatus {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// A node answered with a body that is not what the endpoint serves.
    #[error("{url} answered something that is not a cluster status: {reason}")]
    BadResponse {
        /// The URL requested.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Writing the command's output failed.
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    /// A client operation failed (connecting, a refused request, the cursor file).
    #[error("{0}")]
    Client(#[from] natter_client::ClientError),
    /// An address given on the command line is not usable.
    #[error("invalid address {address:?}: {reason}")]
    BadAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Extra lines worth showing after the one-line message (a failing node's log tail).
    pub fn details(&self) -> Option<&str> {
        match self {
            Self::NodeExited { log_tail, .. } | Self::NotReady { log_tail, .. } => Some(log_tail),
            _ => None,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { action, path, source }
    }
}
