//! Node configuration: one TOML file, every key overridable by a `NATTER_*` environment
//! variable, and a `--dev` default that needs no file.
//!
//! Overrides name the key path in upper case with `__` between levels:
//! `NATTER_NODE_ID=2`, `NATTER_RAFT__HEARTBEAT_INTERVAL_MS=100`. The value is read as a TOML
//! value when it parses as one (`3`, `true`, `[{id = 1, ...}]`) and as a string otherwise.
//! Variables whose first key is not a config key (`NATTER_LOG`, the CLI's `NATTER_SERVER` and
//! `NATTER_TOKEN`) are left alone, so one shell can hold both the node's and the CLI's settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use natter_raft::placement::SHARD_COUNT_DEFAULT;
use natter_raft::types::NodeId;
use serde::{Deserialize, Serialize};

pub use crate::peers::tls::TlsFiles;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "NATTER_";

/// The top-level keys of [`Config`]: only variables naming one of these override the file.
pub const CONFIG_KEYS: [&str; 10] = [
    "node_id",
    "data_dir",
    "nodes",
    "shards",
    "tls",
    "raft",
    "proposal_timeout_ms",
    "rpc_timeout_ms",
    "jwt_secret",
    "rate_limits",
];

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML (after overrides) does not describe a valid config.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A node in the cluster, as every node's config lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddress {
    /// The node's id (unique, non-zero).
    pub id: NodeId,
    /// Its inter-node QUIC address.
    pub peer_addr: SocketAddr,
    /// Its HTTP address (health, metrics, admin).
    pub http_addr: SocketAddr,
}

/// Raft timings, shared by every shard group of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTimings {
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Least time a follower waits without a heartbeat before it campaigns.
    pub election_timeout_min_ms: u64,
    /// Most time a follower waits (each group draws its timeout between min and max).
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot, so slow followers catch up from the log.
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        // 64 groups on 3 nodes: 200 ms heartbeats cost about 640 small RPCs/s per node when
        // idle (each node leads ~21 groups with 2 followers each, 5 beats/s). openraft keeps a
        // dead leader's lease for `election_timeout_max` and lets a node with a shorter log wait
        // twice that, so a 500–1000 ms timeout re-elects in about 2 s, inside the 3 s target.
        Self {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 10_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

/// A node's whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id; must appear in `nodes`.
    pub node_id: NodeId,
    /// Where the node keeps its LMDB environment.
    pub data_dir: PathBuf,
    /// Every node of the cluster (this one included). Fixed when the cluster is created.
    pub nodes: Vec<NodeAddress>,
    /// Number of shards S, fixed when the cluster is created.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// Inter-node TLS files.
    pub tls: TlsFiles,
    /// Raft timings.
    #[serde(default)]
    pub raft: RaftTimings,
    /// How long `propose` keeps trying (leader changes, forwarding) before `unavailable`.
    #[serde(default = "default_proposal_timeout_ms")]
    pub proposal_timeout_ms: u64,
    /// Deadline of one inter-node RPC when openraft sets none.
    #[serde(default = "default_rpc_timeout_ms")]
    pub rpc_timeout_ms: u64,
    /// The HS256 secret client tokens are signed with (at least 32 bytes), shared by every
    /// node; usually set with `NATTER_JWT_SECRET`. `--dev` keeps one in `data_dir/jwt-secret`.
    #[serde(default)]
    pub jwt_secret: Option<String>,
    /// Limits on what clients do (sends, creates, typing), per connection and per user.
    #[serde(default)]
    pub rate_limits: crate::edge::rate::RateLimits,
}

fn default_shards() -> u32 {
    SHARD_COUNT_DEFAULT
}

fn default_proposal_timeout_ms() -> u64 {
    5_000
}

fn default_rpc_timeout_ms() -> u64 {
    2_000
}

impl Config {
    /// The single-node configuration of `natter-node --dev`: data in `data_dir`, TLS files
    /// generated inside it, loopback ports 7401 (peers) and 7480 (HTTP).
    pub fn dev(data_dir: PathBuf) -> Self {
        let tls_dir = data_dir.join("tls");
        Self {
            node_id: 1,
            nodes: vec![NodeAddress {
                id: 1,
                peer_addr: "127.0.0.1:7401".parse().expect("valid address"),
                http_addr: "127.0.0.1:7480".parse().expect("valid address"),
            }],
            shards: default_shards(),
            tls: TlsFiles {
                ca_cert: tls_dir.join("ca.pem"),
                cert: tls_dir.join("node-1.pem"),
                key: tls_dir.join("node-1.key"),
            },
            raft: RaftTimings::default(),
            rate_limits: crate::edge::rate::RateLimits::default(),
            proposal_timeout_ms: default_proposal_timeout_ms(),
            rpc_timeout_ms: default_rpc_timeout_ms(),
            jwt_secret: None,
            data_dir,
        }
    }

    /// The config of node `id` of a cluster laid out in one directory, as local clusters,
    /// tests and benchmarks lay it out: data in `dir/node-<id>`, the CA and node certificates
    /// in `dir/tls` (as `tls::write_cluster_certs` writes them), default timings, no client
    /// token secret.
    pub fn cluster_member(id: NodeId, nodes: &[NodeAddress], shards: u32, dir: &Path) -> Self {
        let tls_dir = dir.join("tls");
        Self {
            node_id: id,
            data_dir: dir.join(format!("node-{id}")),
            nodes: nodes.to_vec(),
            shards,
            tls: TlsFiles {
                ca_cert: tls_dir.join("ca.pem"),
                cert: tls_dir.join(format!("{}.pem", crate::peers::tls::node_name(id))),
                key: tls_dir.join(format!("{}.key", crate::peers::tls::node_name(id))),
            },
            raft: RaftTimings::default(),
            rate_limits: crate::edge::rate::RateLimits::default(),
            proposal_timeout_ms: default_proposal_timeout_ms(),
            rpc_timeout_ms: default_rpc_timeout_ms(),
            jwt_secret: None,
        }
    }

    /// Reads `path`, applies `NATTER_*` overrides from `environment`, and validates.
    pub fn load(path: &Path, environment: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, environment)
    }

    /// Parses TOML text, applies overrides, validates.
    pub fn parse(text: &str, environment: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        apply_overrides(&mut table, environment)?;
        let config: Config = table.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.shards == 0 {
            return invalid("shards must be at least 1".into());
        }
        self.rate_limits.validate().map_err(|error| ConfigError::Invalid(error.to_string()))?;
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|node| node.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return invalid(format!("node ids must be unique, got {ids:?}"));
        }
        if ids.contains(&0) {
            return invalid("node id 0 is reserved".into());
        }
        if !ids.contains(&self.node_id) {
            return invalid(format!("node_id {} is not in nodes {ids:?}", self.node_id));
        }
        if let Some(secret) = &self.jwt_secret {
            if let Err(weak) = crate::edge::auth::TokenKey::new(secret.as_bytes()) {
                return invalid(weak.to_string());
            }
        }
        let raft = &self.raft;
        if raft.heartbeat_interval_ms == 0 || raft.election_timeout_min_ms <= raft.heartbeat_interval_ms {
            return invalid("raft timings need 0 < heartbeat_interval_ms < election_timeout_min_ms".into());
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return invalid("raft.election_timeout_max_ms must exceed election_timeout_min_ms".into());
        }
        Ok(())
    }

    /// This node's own address entry.
    pub fn me(&self) -> &NodeAddress {
        self.nodes.iter().find(|node| node.id == self.node_id).expect("validated: node_id is in nodes")
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

fn apply_overrides(
    table: &mut toml::Table,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: Vec<(String, String)> =
        environment.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
    // Apply in a fixed order whatever order the OS lists variables in.
    overrides.sort();
    for (name, raw) in overrides {
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(|part| part.to_ascii_lowercase()).collect();
        if !CONFIG_KEYS.contains(&path[0].as_str()) {
            continue;
        }
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Invalid(format!("environment variable {name} names an empty key")));
        }
        let value = match toml::from_str::<toml::Table>(&format!("value = {raw}")) {
            Ok(mut parsed) => parsed.remove("value").expect("parsed value"),
            Err(_) => toml::Value::String(raw),
        };
        let (last, parents) = path.split_last().expect("at least one part");
        let mut current = &mut *table;
        for part in parents {
            let entry = current.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            current = match entry {
                toml::Value::Table(inner) => inner,
                _ => return Err(ConfigError::Invalid(format!("{name}: {part} is not a table"))),
            };
        }
        current.insert(last.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        Config::dev("/tmp/natter-test".into()).to_toml()
    }

    #[test]
    fn dev_config_round_trips_through_toml() {
        let config = Config::dev("/tmp/natter-test".into());
        assert_eq!(Config::parse(&config.to_toml(), []).unwrap(), config);
    }

    #[test]
    fn cluster_members_validate_and_lay_out_one_directory() {
        let nodes: Vec<NodeAddress> = (1..=3)
            .map(|id| NodeAddress {
                id,
                peer_addr: format!("127.0.0.1:{}", 7400 + id).parse().unwrap(),
                http_addr: format!("127.0.0.1:{}", 7480 + id).parse().unwrap(),
            })
            .collect();
        let config = Config::cluster_member(2, &nodes, 8, Path::new("/c"));
        config.validate().unwrap();
        assert_eq!(config.me(), &nodes[1]);
        assert_eq!(config.data_dir, PathBuf::from("/c/node-2"));
        assert_eq!(config.tls.cert, PathBuf::from("/c/tls/node-2.pem"));
        assert_eq!(Config::parse(&config.to_toml(), []).unwrap(), config);
    }

    #[test]
    fn environment_overrides_any_key() {
        let environment = [
            ("NATTER_SHARDS".to_string(), "8".to_string()),
            ("NATTER_RAFT__HEARTBEAT_INTERVAL_MS".to_string(), "100".to_string()),
            ("NATTER_DATA_DIR".to_string(), "/var/lib/natter".to_string()),
            ("NATTER_JWT_SECRET".to_string(), "0123456789abcdef0123456789abcdef".to_string()),
            ("HOME".to_string(), "/root".to_string()),
            ("NATTER_LOG".to_string(), "debug".to_string()),
            ("NATTER_TOKEN".to_string(), "abc".to_string()),
        ];
        let config = Config::parse(&sample(), environment).unwrap();
        assert_eq!(config.shards, 8);
        assert_eq!(config.raft.heartbeat_interval_ms, 100);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/natter"));
        assert_eq!(config.jwt_secret.as_deref(), Some("0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn invalid_configs_say_why() {
        let error = Config::parse(&sample(), [("NATTER_NODE_ID".into(), "9".into())]).unwrap_err();
        assert!(error.to_string().contains("node_id 9 is not in nodes"), "{error}");
        let error = Config::parse(&sample(), [("NATTER_SHARDS".into(), "0".into())]).unwrap_err();
        assert!(error.to_string().contains("shards must be at least 1"), "{error}");
        let error = Config::parse(&format!("{}\nbogus = 1\n", sample()), []).unwrap_err();
        assert!(error.to_string().contains("bogus"), "{error}");
        let error =
            Config::parse(&sample(), [("NATTER_RAFT__HEARTBEAT_INTERVAL_MS".into(), "5000".into())]).unwrap_err();
        assert!(error.to_string().contains("heartbeat_interval_ms"), "{error}");
    }
}
