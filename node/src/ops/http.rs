//! The HTTP edge for operators: health, readiness, Prometheus metrics and the admin view.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Query;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use natter_raft::command::Command;
use natter_raft::placement::ShardId;

use crate::edge::web::Web;
use crate::shards::Cluster;

/// The operator routes, and the browser routes of [`crate::web`] when the node serves clients.
pub fn router(cluster: Arc<Cluster>, web: Option<Arc<Web>>) -> Router {
    let operator = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/admin/cluster", get(admin_cluster))
        .route("/v1/admin/probe", post(admin_probe))
        .with_state(cluster);
    match web {
        Some(web) => operator.merge(crate::edge::web::router(web)),
        None => operator,
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(cluster): State<Arc<Cluster>>) -> impl IntoResponse {
    if cluster.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: some local shard has no known leader\n")
    }
}

async fn metrics(State(cluster): State<Arc<Cluster>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, crate::ops::metrics::CONTENT_TYPE)], cluster.render_metrics())
}

async fn admin_cluster(State(cluster): State<Arc<Cluster>>) -> impl IntoResponse {
    Json(cluster.status())
}

/// Query of `POST /v1/admin/probe`.
#[derive(Debug, serde::Deserialize)]
struct ProbeQuery {
    /// One shard; all shards when absent.
    shard: Option<u32>,
}

/// One shard's probe result.
#[derive(Debug, serde::Serialize)]
struct ProbeResult {
    shard: u32,
    committed: bool,
    /// Log index the probe committed at.
    index: Option<u64>,
    millis: f64,
    error: Option<String>,
}

/// Proposes a no-op `Probe` command on one or every shard through this node (forwarded to each
/// leader) and reports whether and how fast it committed: a write health check for operators.
async fn admin_probe(State(cluster): State<Arc<Cluster>>, Query(query): Query<ProbeQuery>) -> impl IntoResponse {
    let shard_count = cluster.config().shards;
    let shards: Vec<u32> = match query.shard {
        Some(shard) if shard >= shard_count => {
            return (StatusCode::BAD_REQUEST, format!("no shard {shard}: the cluster has {shard_count}\n"))
                .into_response();
        }
        Some(shard) => vec![shard],
        None => (0..shard_count).collect(),
    };
    let probes = shards.into_iter().map(|shard| {
        let cluster = cluster.clone();
        async move {
            let started = cluster.clock().now();
            let nonce = cluster.clock().wall_ms() ^ u64::from(shard);
            let result = cluster.propose(ShardId(shard), Command::Probe { nonce }).await;
            let index = match &result {
                Ok(natter_raft::Response::Probed { index }) => Some(*index),
                _ => None,
            };
            ProbeResult {
                shard,
                committed: result.is_ok(),
                index,
                millis: (cluster.clock().now() - started).as_secs_f64() * 1e3,
                error: result.err().map(|error| error.to_string()),
            }
        }
    });
    let results = futures::future::join_all(probes).await;
    let status =
        if results.iter().all(|result| result.committed) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "node": cluster.config().node_id, "results": results }))).into_response()
}

/// Binds `addr` and serves until `stop` resolves; then browser sessions end, and the server
/// finishes the requests in flight.
pub async fn serve(
    addr: SocketAddr,
    cluster: Arc<Cluster>,
    web: Option<Arc<Web>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(cluster, web.clone());
    let stop = async move {
        stop.await;
        if let Some(web) = web {
            web.stop();
        }
    };
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(%error, "http server failed");
        }
    });
    Ok((local, task))
}
