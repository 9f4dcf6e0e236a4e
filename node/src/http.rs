//! The HTTP edge for operators: health, readiness, Prometheus metrics and the admin view.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::cluster::Cluster;

/// The operator routes.
pub fn router(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/admin/cluster", get(admin_cluster))
        .with_state(cluster)
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], cluster.render_metrics())
}

async fn admin_cluster(State(cluster): State<Arc<Cluster>>) -> impl IntoResponse {
    Json(cluster.status())
}

/// Binds `addr` and serves until `stop` resolves.
pub async fn serve(
    addr: SocketAddr,
    cluster: Arc<Cluster>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(cluster);
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(%error, "http server failed");
        }
    });
    Ok((local, task))
}
