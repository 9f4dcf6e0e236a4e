//! The node's metrics, encoded for `/metrics` by `prometheus-client` (OpenMetrics text, which
//! Prometheus scrapes). Counters and the latency histogram are updated where things happen;
//! the per-shard and per-peer gauges are set from the node's status just before encoding.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::status::ClusterStatus;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] =
    [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One label and its value.
type Labels = Vec<(&'static str, String)>;

/// The node's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Proposals that committed.
    pub proposals_committed: Counter,
    /// Proposals that gave up (`unavailable`).
    pub proposals_failed: Counter,
    /// Proposal attempts sent to another node.
    pub proposals_forwarded: Counter,
    /// Time from `propose` to its committed response, in seconds.
    pub proposal_latency: Histogram,
    shard_commit_index: Family<Labels, Gauge>,
    shard_applied_index: Family<Labels, Gauge>,
    shard_term: Family<Labels, Gauge>,
    shard_leader: Family<Labels, Gauge>,
    shard_is_leader: Family<Labels, Gauge>,
    peer_connected: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("natter");
        let proposals_committed = Counter::default();
        registry.register("proposals_committed", "Proposals that committed", proposals_committed.clone());
        let proposals_failed = Counter::default();
        registry.register("proposals_failed", "Proposals that gave up as unavailable", proposals_failed.clone());
        let proposals_forwarded = Counter::default();
        registry.register("proposals_forwarded", "Proposal attempts sent to another node", proposals_forwarded.clone());
        let proposal_latency = Histogram::new(LATENCY_BUCKETS_SECONDS);
        registry.register("proposal_seconds", "Time from propose to committed response", proposal_latency.clone());
        let mut gauge = |name: &str, help: &str| {
            let family = Family::<Labels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let shard_commit_index = gauge("shard_commit_index", "Highest committed log index known to this node");
        let shard_applied_index = gauge("shard_applied_index", "Highest log index applied on this node");
        let shard_term = gauge("shard_term", "Current Raft term of the shard on this node");
        let shard_leader = gauge("shard_leader", "Node id of the shard's leader as this node knows it (0: none)");
        let shard_is_leader = gauge("shard_is_leader", "1 if this node leads the shard");
        let peer_connected = gauge("peer_connected", "1 if this node holds a connection to the peer");
        Self {
            registry,
            proposals_committed,
            proposals_failed,
            proposals_forwarded,
            proposal_latency,
            shard_commit_index,
            shard_applied_index,
            shard_term,
            shard_leader,
            shard_is_leader,
            peer_connected,
        }
    }
}

impl Metrics {
    /// Records one proposal's time to commit.
    pub fn observe_proposal(&self, elapsed: Duration) {
        self.proposal_latency.observe(elapsed.as_secs_f64());
    }

    /// Sets the gauges from `status` and encodes every metric (OpenMetrics text, [`CONTENT_TYPE`]).
    pub fn encode(&self, status: &ClusterStatus) -> String {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for shard in &status.local_shards {
            let labels = vec![("shard", shard.shard.to_string())];
            self.shard_commit_index.get_or_create(&labels).set(gauge(shard.commit_index));
            self.shard_applied_index.get_or_create(&labels).set(gauge(shard.applied_index));
            self.shard_term.get_or_create(&labels).set(gauge(shard.term));
            self.shard_leader.get_or_create(&labels).set(gauge(shard.leader.unwrap_or(0)));
            self.shard_is_leader.get_or_create(&labels).set(i64::from(shard.leader == Some(status.node_id)));
        }
        for node in status.nodes.iter().filter(|node| node.id != status.node_id) {
            let labels = vec![("peer", node.id.to_string())];
            self.peer_connected.get_or_create(&labels).set(i64::from(node.connection == "connected"));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::{NodeStatus, ShardStatus};

    fn status() -> ClusterStatus {
        ClusterStatus {
            node_id: 1,
            shards: 2,
            nodes: vec![
                NodeStatus { id: 1, peer_addr: "a".into(), http_addr: "b".into(), connection: "self".into() },
                NodeStatus { id: 2, peer_addr: "c".into(), http_addr: "d".into(), connection: "connected".into() },
            ],
            local_shards: vec![ShardStatus {
                shard: 0,
                replicas: vec![1, 2],
                leader: Some(1),
                term: 3,
                role: "leader".into(),
                commit_index: 7,
                applied_index: 6,
            }],
            ready: true,
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_counters_total() {
        let metrics = Metrics::default();
        metrics.observe_proposal(Duration::from_micros(300));
        metrics.observe_proposal(Duration::from_millis(30));
        metrics.proposals_committed.inc();
        let text = metrics.encode(&status());
        assert!(text.contains("natter_proposal_seconds_bucket{le=\"0.00025\"} 0"), "{text}");
        assert!(text.contains("natter_proposal_seconds_bucket{le=\"0.0005\"} 1"), "{text}");
        assert!(text.contains("natter_proposal_seconds_bucket{le=\"0.05\"} 2"), "{text}");
        assert!(text.contains("natter_proposal_seconds_bucket{le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("natter_proposal_seconds_count 2"), "{text}");
        assert!(text.contains("natter_proposals_committed_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn shard_and_peer_gauges_come_from_the_status() {
        let text = Metrics::default().encode(&status());
        for line in [
            "natter_shard_commit_index{shard=\"0\"} 7",
            "natter_shard_applied_index{shard=\"0\"} 6",
            "natter_shard_term{shard=\"0\"} 3",
            "natter_shard_leader{shard=\"0\"} 1",
            "natter_shard_is_leader{shard=\"0\"} 1",
            "natter_peer_connected{peer=\"2\"} 1",
        ] {
            assert!(text.lines().any(|got| got == line), "missing {line:?} in\n{text}");
        }
    }
}
