//! What operators touch: the configuration, the HTTP endpoints (health, readiness, admin,
//! metrics, and the browser edge's routes), the node's counters and its status view.

pub mod config;
pub mod http;
pub mod metrics;
pub mod status;
