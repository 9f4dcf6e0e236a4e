//! The `natter` binary without a cluster: help texts, status rendering (from a fixed sample and
//! through a stand-in HTTP server on loopback), the messaging commands' output (from fixed
//! frames), `dev certs`, and error output.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

use natter_cli::render;
use natter_cli::status::{self, ClusterStatus};
use natter_client::{ConversationInfo, SendOk};
use natter_proto::{ConversationId, ConversationSummary, DeviceId, MessageRecord, UserId};

/// A fixed `/v1/admin/cluster` answer of a healthy 3-node, 8-shard cluster.
const SAMPLE: &str = include_str!("fixtures/cluster_status.json");

fn natter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(args)
        .env_remove("NATTER_SERVER")
        .env_remove("NATTER_TOKEN")
        .env_remove("NATTER_CA")
        .output()
        .expect("natter runs")
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
    insta::assert_snapshot!("natter_create_help", stdout(&natter(&["create", "--help"])));
    insta::assert_snapshot!("natter_send_help", stdout(&natter(&["send", "--help"])));
    insta::assert_snapshot!("natter_tail_help", stdout(&natter(&["tail", "--help"])));
    insta::assert_snapshot!("natter_history_help", stdout(&natter(&["history", "--help"])));
    insta::assert_snapshot!("natter_conversations_help", stdout(&natter(&["conversations", "--help"])));
}

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

/// A fixed message, as a `message` frame would carry it.
fn message(seq: u64, body: &str) -> MessageRecord {
    MessageRecord {
        conversation: ConversationId::from_bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
        seq,
        sender: alice(),
        sender_device: DeviceId::new("phone-1").unwrap(),
        client_seq: 16 + seq,
        ts: 1_764_288_000_000 + seq * 61_000,
        body: body.into(),
    }
}

fn summaries() -> Vec<ConversationSummary> {
    let users = |names: &[&str]| names.iter().map(|name| UserId::new(*name).unwrap()).collect::<Vec<_>>();
    vec![
        ConversationSummary {
            id: ConversationId::from_bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
            last_seq: 43,
            members: users(&["alice", "bob", "carol"]),
            title: Some("trip".into()),
        },
        ConversationSummary {
            id: ConversationId::direct(&alice(), &UserId::new("bob").unwrap()),
            last_seq: 0,
            members: users(&["alice", "bob"]),
            title: None,
        },
    ]
}

#[test]
fn message_output_for_people_and_scripts() {
    let messages = [message(1, "hi bob"), message(2, "two lines\nof text"), message(3, "")];
    let labels = render::labels(&summaries());
    let label = &labels[&messages[0].conversation];
    // Tail says when the user is added to a conversation, then prints its messages.
    let joined = ConversationInfo {
        id: messages[0].conversation,
        members: summaries()[0].members.clone(),
        title: Some("trip".into()),
    };
    assert_eq!(render::joined_label(&joined), *label);
    let mut tail = render::render_joined(&joined);
    let mut json = render::json_joined(&joined);
    for message in &messages {
        tail.push_str(&render::render_message(message, Some(label)));
        json.push_str(&render::json_message(message));
    }
    tail.push_str(&render::render_receipt(label, &UserId::new("bob").unwrap(), 2, 1));
    json.push_str(&render::json_receipt(messages[0].conversation, &UserId::new("bob").unwrap(), 2, 1));
    insta::assert_snapshot!("tail_human", tail);
    insta::assert_snapshot!("messages_json", json);
    insta::assert_snapshot!("history_human", render::render_history(messages[0].conversation, &messages));
    assert_eq!(
        render::render_history(messages[0].conversation, &[]),
        "no messages in aaaqeayeaudaocajbifqydiob4 in that range\n"
    );
    // The JSON lines are the protocol's frames.
    for line in json.lines() {
        natter_proto::json::decode_server(line).unwrap();
    }
}

#[test]
fn send_create_and_conversations_output() {
    let ok =
        SendOk { conversation: summaries()[0].id, seq: 43, ts: 1_764_288_000_000, client_seq: 1_764_287_999_000_017 };
    let created =
        ConversationInfo { id: summaries()[0].id, members: summaries()[0].members.clone(), title: Some("trip".into()) };
    let direct = ConversationInfo { id: summaries()[1].id, members: summaries()[1].members.clone(), title: None };
    let text = [
        render::render_send_ok(&ok),
        render::json_send_ok(&ok),
        render::render_created(&created),
        render::render_created(&direct),
        render::json_created(&created),
    ]
    .concat();
    insta::assert_snapshot!("send_and_create", text);
    insta::assert_snapshot!("conversations_human", render::render_conversations(&summaries()));
    insta::assert_snapshot!("conversations_json", render::json_conversations(&summaries()));
    assert!(render::render_conversations(&[]).starts_with("no conversations yet"));
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
