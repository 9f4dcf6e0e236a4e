//! `natter status`: one node's view of the cluster from `GET /v1/admin/cluster`, as JSON or
//! as tables.
//!
//! The types mirror `natter_node::ops::status::ClusterStatus` field for field (a unit test checks
//! that what the node serializes, this reads); unknown fields are ignored so an older CLI can
//! read a newer node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::local::ClusterDir;
use crate::table::render_table;

/// The node `natter status` asks when given no address: the `natter-node --dev` default.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7480";
/// The admin endpoint's path.
pub const STATUS_PATH: &str = "/v1/admin/cluster";
/// Deadline of the status request.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest status body read (a 4096-shard node answers well under 1 MiB).
pub const STATUS_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Longest piece of an unexpected body quoted in an error.
const BODY_QUOTE_CHARS_MAX: usize = 200;

/// A node as the admin view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: u64,
    /// Inter-node (QUIC over UDP) address.
    pub peer_addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// The answering node's connection to it: `self`, `connected` or `disconnected`.
    pub connection: String,
}

/// One shard as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// Shard id.
    pub shard: u32,
    /// Its replicas, preferred leader first.
    pub replicas: Vec<u64>,
    /// The leader the answering node knows of.
    pub leader: Option<u64>,
    /// The answering node's term for the shard.
    pub term: u64,
    /// The answering node's role in the shard's group.
    pub role: String,
    /// Highest committed log index the answering node knows of.
    pub commit_index: u64,
    /// Highest log index applied on the answering node.
    pub applied_index: u64,
}

/// The admin view of the cluster from one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    /// The cluster's shard count.
    pub shards: u32,
    /// Every node of the cluster.
    pub nodes: Vec<NodeStatus>,
    /// The shards the answering node replicates.
    pub local_shards: Vec<ShardStatus>,
    /// Whether every local shard knows its leader.
    pub ready: bool,
}

/// The base URL (`http://host:port`) of a node's HTTP address given as `host:port` or
/// `http://host:port`.
pub fn base_url(address: &str) -> Result<String, Error> {
    let bad = |reason: &str| Error::BadAddress { address: address.to_string(), reason: reason.to_string() };
    let trimmed = address.trim();
    if trimmed.starts_with("https://") {
        return Err(bad("nodes serve plain HTTP; use http:// or just HOST:PORT"));
    }
    let authority = trimmed.strip_prefix("http://").unwrap_or(trimmed).trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', ' ']) {
        return Err(bad("expected HOST:PORT, like 127.0.0.1:7480"));
    }
    let port = authority.rsplit_once(':').map(|(_, port)| port).filter(|port| !port.contains(']'));
    match port.map(str::parse::<u16>) {
        Some(Ok(_)) => Ok(format!("http://{authority}")),
        _ => Err(bad("expected HOST:PORT with a numeric port, like 127.0.0.1:7480")),
    }
}

/// The HTTP address of node 1 of the cluster in `dir`, read from its config the way the node
/// reads it (so `NATTER_*` overrides in the environment apply here too).
pub fn http_addr_from_dir(dir: &Path) -> Result<SocketAddr, Error> {
    let path = ClusterDir::new(dir).config(1);
    if !path.exists() {
        return Err(Error::Io {
            action: "cannot read",
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no cluster config here (run `natter cluster up`)",
            ),
        });
    }
    let config = natter_node::Config::load(&path, std::env::vars())?;
    Ok(config.me().http_addr)
}

/// GETs the status from the node at `base_url`; returns the body as served and its parse.
pub fn fetch(base_url: &str) -> Result<(String, ClusterStatus), Error> {
    let url = format!("{base_url}{STATUS_PATH}");
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(STATUS_TIMEOUT)).http_status_as_error(false).build().into();
    let mut response = agent.get(&url).call().map_err(|error| Error::Unreachable {
        url: url.clone(),
        reason: match error {
            ureq::Error::Timeout(_) => format!("no answer within {} s", STATUS_TIMEOUT.as_secs()),
            ureq::Error::Io(io) => io.to_string(),
            other => other.to_string(),
        },
    })?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(STATUS_BYTES_MAX)
        .read_to_string()
        .map_err(|error| Error::BadResponse { url: url.clone(), reason: error.to_string() })?;
    if status != 200 {
        return Err(Error::HttpStatus { url, status, body: quote(&body) });
    }
    let parsed = serde_json::from_str(&body).map_err(|error| Error::BadResponse { url, reason: error.to_string() })?;
    Ok((body, parsed))
}

/// The first line of `body`, cut to a readable length.
fn quote(body: &str) -> String {
    let line = body.trim().lines().next().unwrap_or("");
    match line.char_indices().nth(BODY_QUOTE_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// The status as a person reads it: a heading, a nodes table, a shards table and a summary.
pub fn render(status: &ClusterStatus) -> String {
    let me = status.node_id;
    let mut out = format!(
        "node {me} answered: {} nodes, {} shards ({} replicated on node {me})\n\nNODES\n",
        status.nodes.len(),
        status.shards,
        status.local_shards.len()
    );
    let node_rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|node| vec![node.id.to_string(), node.peer_addr.clone(), node.http_addr.clone(), node.connection.clone()])
        .collect();
    out.push_str(&render_table(&["ID", "PEER ADDR", "HTTP ADDR", "CONNECTION"], &node_rows));
    out.push_str(&format!("\nSHARDS (as node {me} sees them)\n"));
    let shard_rows: Vec<Vec<String>> = status
        .local_shards
        .iter()
        .map(|shard| {
            vec![
                shard.shard.to_string(),
                shard.leader.map_or_else(|| "-".to_string(), |leader| leader.to_string()),
                shard.role.clone(),
                shard.term.to_string(),
                shard.commit_index.to_string(),
                shard.applied_index.to_string(),
                shard.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    out.push_str(&render_table(&["SHARD", "LEADER", "ROLE", "TERM", "COMMIT", "APPLIED", "REPLICAS"], &shard_rows));
    out.push('\n');
    out.push_str(&summary(status));
    out.push('\n');
    out
}

/// One line: ready or not, shards without a leader, and how many shards each node leads.
pub fn summary(status: &ClusterStatus) -> String {
    let mut led: BTreeMap<u64, usize> = status.nodes.iter().map(|node| (node.id, 0)).collect();
    let mut leaderless = Vec::new();
    for shard in &status.local_shards {
        match shard.leader {
            Some(leader) => *led.entry(leader).or_default() += 1,
            None => leaderless.push(shard.shard.to_string()),
        }
    }
    let total = status.local_shards.len();
    let readiness = match (status.ready, leaderless.is_empty()) {
        (true, _) => format!("ready: all {total} local shards have a leader"),
        (false, true) => format!("not ready: all {total} local shards have a leader now, but had not when asked"),
        (false, false) => format!(
            "not ready: {} of {total} local shards have no leader ({} {})",
            leaderless.len(),
            if leaderless.len() == 1 { "shard" } else { "shards" },
            leaderless.join(", ")
        ),
    };
    let leaders: Vec<String> = led.iter().map(|(node, count)| format!("node {node} leads {count}")).collect();
    if leaders.is_empty() {
        readiness
    } else {
        format!("{readiness}; {}", leaders.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(leaders: [Option<u64>; 3], ready: bool) -> ClusterStatus {
        ClusterStatus {
            node_id: 2,
            shards: 3,
            nodes: (1..=3)
                .map(|id| NodeStatus {
                    id,
                    peer_addr: format!("127.0.0.1:{}", 7400 + id),
                    http_addr: format!("127.0.0.1:{}", 7480 + id),
                    connection: if id == 2 { "self".into() } else { "connected".into() },
                })
                .collect(),
            local_shards: leaders
                .iter()
                .enumerate()
                .map(|(shard, &leader)| ShardStatus {
                    shard: shard as u32,
                    replicas: vec![1, 2, 3],
                    leader,
                    term: 1,
                    role: if leader == Some(2) { "leader".into() } else { "follower".into() },
                    commit_index: 4,
                    applied_index: 4,
                })
                .collect(),
            ready,
        }
    }

    #[test]
    fn reads_what_the_node_serves() {
        let served = natter_node::ops::status::ClusterStatus {
            node_id: 1,
            shards: 1,
            nodes: vec![natter_node::ops::status::NodeStatus {
                id: 1,
                peer_addr: "127.0.0.1:7401".into(),
                http_addr: "127.0.0.1:7480".into(),
                connection: "self".into(),
            }],
            local_shards: vec![natter_node::ops::status::ShardStatus {
                shard: 0,
                replicas: vec![1],
                leader: Some(1),
                term: 2,
                role: "leader".into(),
                commit_index: 5,
                applied_index: 4,
            }],
            ready: true,
        };
        let read: ClusterStatus = serde_json::from_str(&serde_json::to_string(&served).unwrap()).unwrap();
        assert_eq!(read.local_shards[0].applied_index, 4);
        assert_eq!(read.nodes[0].http_addr, "127.0.0.1:7480");
        assert!(read.ready);
    }

    #[test]
    fn summary_counts_leaders_and_names_leaderless_shards() {
        assert_eq!(
            summary(&sample([Some(2), Some(1), Some(2)], true)),
            "ready: all 3 local shards have a leader; node 1 leads 1, node 2 leads 2, node 3 leads 0"
        );
        assert_eq!(
            summary(&sample([None, Some(1), None], false)),
            "not ready: 2 of 3 local shards have no leader (shards 0, 2); node 1 leads 1, node 2 leads 0, node 3 leads 0"
        );
    }

    #[test]
    fn render_shows_both_tables() {
        let text = render(&sample([Some(2), None, Some(3)], false));
        assert!(text.starts_with("node 2 answered: 3 nodes, 3 shards (3 replicated on node 2)\n"), "{text}");
        assert!(text.contains("  2   127.0.0.1:7402  127.0.0.1:7482  self\n"), "{text}");
        assert!(text.contains("  1      -       follower  1     4       4        1,2,3\n"), "{text}");
    }

    #[test]
    fn addresses_normalise_to_a_base_url() {
        assert_eq!(base_url("127.0.0.1:7480").unwrap(), "http://127.0.0.1:7480");
        assert_eq!(base_url("http://localhost:9000/").unwrap(), "http://localhost:9000");
        assert_eq!(base_url("[::1]:7480").unwrap(), "http://[::1]:7480");
        for bad in ["", "localhost", "https://a:1", "a:b", "a:1/v1", "[::1]"] {
            assert!(base_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn long_bodies_are_quoted_short() {
        assert_eq!(quote("not ready\nmore"), "not ready");
        assert_eq!(quote(&"x".repeat(300)).chars().count(), BODY_QUOTE_CHARS_MAX + 1);
    }
}
