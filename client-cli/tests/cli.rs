//! The `natter` binary without a cluster: help texts, status rendering (from a fixed sample and
//! through a stand-in HTTP server on loopback), `dev certs`, and error output.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

use natter_client::status::{self, ClusterStatus};

/// A fixed `/v1/admin/cluster` answer of a healthy 3-node, 8-shard cluster.
const SAMPLE: &str = include_str!("fixtures/cluster_status.json");

fn natter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natter")).args(args).output().expect("natter runs")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "natter failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The single stderr line of a failed run.
fn failure(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&output.stdout));
    assert!(output.stdout.is_empty(), "nothing on stdout when failing");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("natter: error: "), "{stderr}");
    stderr
}

#[test]
fn help_texts() {
    insta::assert_snapshot!("natter_help", stdout(&natter(&["--help"])));
    insta::assert_snapshot!("natter_cluster_help", stdout(&natter(&["cluster", "--help"])));
    insta::assert_snapshot!("natter_cluster_up_help", stdout(&natter(&["cluster", "up", "--help"])));
    insta::assert_snapshot!("natter_status_help", stdout(&natter(&["status", "--help"])));
    insta::assert_snapshot!("natter_dev_certs_help", stdout(&natter(&["dev", "certs", "--help"])));
}

#[test]
fn status_table_of_a_healthy_cluster() {
    let parsed: ClusterStatus = serde_json::from_str(SAMPLE).unwrap();
    insta::assert_snapshot!("status_ready", status::render(&parsed));
}

#[test]
fn status_table_of_a_degraded_cluster() {
    let mut parsed: ClusterStatus = serde_json::from_str(SAMPLE).unwrap();
    parsed.nodes[2].connection = "disconnected".into();
    for shard in [1, 3] {
        parsed.local_shards[shard].leader = None;
        parsed.local_shards[shard].role = "candidate".into();
        parsed.local_shards[shard].term += 1;
    }
    parsed.ready = false;
    insta::assert_snapshot!("status_degraded", status::render(&parsed));
}

/// Serves one HTTP request on a loopback port with `status_line` and `body`; returns the
/// address and a handle yielding the request line it got.
fn serve_once(status_line: &'static str, body: &'static str) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut header = String::new();
        while reader.read_line(&mut header).unwrap() > 2 {
            header.clear();
        }
        let mut stream = reader.into_inner();
        write!(
            stream,
            "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request_line.trim_end().to_string()
    });
    (address, handle)
}

#[test]
fn status_asks_the_admin_endpoint_and_prints_tables_or_json() {
    let (address, server) = serve_once("200 OK", SAMPLE);
    let table = stdout(&natter(&["status", "--http", &address]));
    assert_eq!(server.join().unwrap(), "GET /v1/admin/cluster HTTP/1.1");
    assert_eq!(table, status::render(&serde_json::from_str(SAMPLE).unwrap()));

    let (address, server) = serve_once("200 OK", SAMPLE);
    let json = stdout(&natter(&["status", "--json", "--http", &format!("http://{address}/")]));
    server.join().unwrap();
    assert_eq!(json, SAMPLE, "--json prints the answer as served");
}

#[test]
fn status_failures_are_one_line() {
    let (address, server) = serve_once("503 Service Unavailable", "not ready: some local shard has no known leader\n");
    let error = failure(&natter(&["status", "--http", &address]));
    server.join().unwrap();
    assert!(error.contains("answered HTTP 503: not ready: some local shard has no known leader"), "{error}");

    // A port nothing listens on: bind one, then free it.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let error = failure(&natter(&["status", "--http", &closed]));
    assert!(error.contains(&format!("cannot reach http://{closed}/v1/admin/cluster")), "{error}");

    let error = failure(&natter(&["status", "--http", "no-port"]));
    assert!(error.contains("invalid address \"no-port\""), "{error}");

    let empty = tempfile::tempdir().unwrap();
    let error = failure(&natter(&["status", "--dir", empty.path().to_str().unwrap()]));
    assert!(error.contains("node-1.toml") && error.contains("natter cluster up"), "{error}");
}

#[test]
fn dev_certs_writes_a_ca_and_node_certificates_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let text = stdout(&natter(&["dev", "certs", "--dir", path, "--nodes", "2"]));
    assert!(text.starts_with(&format!("wrote a new cluster CA and certificates for 2 nodes to {path}:\n")), "{text}");
    for name in ["ca.pem", "ca.key", "node-1.pem", "node-1.key", "node-2.pem", "node-2.key"] {
        assert!(dir.path().join(name).is_file(), "{name}");
    }
    assert!(!dir.path().join("node-3.pem").exists());
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();

    let error = failure(&natter(&["dev", "certs", "--dir", path]));
    assert!(error.contains("ca.key already exists; pass --force"), "{error}");
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca, "refused means untouched");

    stdout(&natter(&["dev", "certs", "--dir", path, "--force"]));
    assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    assert!(dir.path().join("node-3.key").is_file(), "default of 3 nodes");
}

#[test]
fn usage_errors_exit_2() {
    let output = natter(&["cluster", "up", "--nodes", "0", "--dir", "x"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--nodes"));
}
