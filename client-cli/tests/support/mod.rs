//! In-process natter nodes for the client tests: real `run_node` inside openraft's seeded
//! runtime on a multi-thread Tokio runtime, loopback only, ports chosen by the OS.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use natter_client::ClientConfig;
use natter_node::config::{Config, NodeAddress};
use natter_node::env::NodeEnv;
use natter_proto::{DeviceId, UserId};
use natter_raft::types::Runtime;
use natter_raft::Durability;
use rand::SeedableRng;

pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A cluster of in-process nodes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addrs: Vec<SocketAddr>,
    pub ca_pem: Vec<u8>,
    pub handles: Vec<Option<natter_node::NodeHandle>>,
}

impl Cluster {
    /// `count` nodes, 8 shards, all ready.
    pub async fn start(count: u64) -> Cluster {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let dir = tempfile::tempdir_in(base).unwrap();
        let tls_dir = dir.path().join("tls");
        let ids: Vec<u64> = (1..=count).collect();
        natter_node::tls::write_cluster_certs(&tls_dir, &ids, &mut rand::rngs::StdRng::seed_from_u64(3)).unwrap();
        let addresses: Vec<NodeAddress> = ids
            .iter()
            .map(|&id| NodeAddress {
                id,
                peer_addr: std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
            })
            .collect();
        let mut handles = Vec::new();
        for &id in &ids {
            let config = Config {
                proposal_timeout_ms: 5_000,
                jwt_secret: Some(SECRET.into()),
                ..Config::cluster_member(id, &addresses, 8, dir.path())
            };
            let mut env = NodeEnv::production(config.data_dir.clone());
            env.durability = Durability::NoSync;
            env.http = false;
            handles.push(natter_node::run_node(config, env).await.unwrap());
        }
        for handle in &handles {
            for _ in 0..1000 {
                if handle.cluster().is_ready() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(handle.cluster().is_ready(), "node not ready after 10 s");
        }
        let ca_pem = std::fs::read(tls_dir.join("ca.pem")).unwrap();
        let addrs = handles.iter().map(|handle| handle.peer_addr()).collect();
        Cluster { dir, addrs, ca_pem, handles: handles.into_iter().map(Some).collect() }
    }

    /// Gracefully stops node `index` (0-based).
    pub async fn stop(&mut self, index: usize) {
        if let Some(handle) = self.handles[index].take() {
            handle.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        for index in 0..self.handles.len() {
            self.stop(index).await;
        }
    }

    /// A client config for `user` on `device`, with short timeouts for tests.
    pub fn config(&self, user: &str, device: &str) -> ClientConfig {
        let mut config =
            ClientConfig::new(self.addrs.clone(), self.ca_pem.clone(), token(user), DeviceId::new(device).unwrap());
        config.reconnect_backoff_min = Duration::from_millis(50);
        config.reconnect_backoff_max = Duration::from_millis(500);
        config.connect_timeout = Duration::from_secs(2);
        config.request_timeout = Duration::from_secs(10);
        config
    }
}

/// A token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    let key = natter_node::auth::TokenKey::new(SECRET.as_bytes()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    key.issue(&UserId::new(user).unwrap(), now, 3600)
}

/// Runs `future` on a 2-thread runtime inside openraft's seeded runtime scope, as nodes need.
pub fn run<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(Runtime::scope(7, future))
}
