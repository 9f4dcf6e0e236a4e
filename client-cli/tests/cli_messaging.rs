//! The `natter` binary's messaging commands against a real in-process node: `create`,
//! `send` (one message and lines from stdin), `history` in both formats, `conversations`, and
//! `tail` printing messages as they arrive and resuming from its cursor file.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use natter_raft::types::Runtime;
use serde_json::Value;
use support::{token, Cluster};

/// `natter ARGS` as `user` against `cluster`, with `stdin` fed in.
fn natter(cluster: &Cluster, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = command(cluster, user, args).stdin(Stdio::piped()).spawn().expect("natter runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn command(cluster: &Cluster, user: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natter"));
    command
        .args(args)
        .env("NATTER_SERVER", cluster.addrs[0].to_string())
        .env("NATTER_TOKEN", token(user))
        .env("NATTER_CA", cluster.dir.path().join("tls").join("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "natter failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}"))).collect()
}

/// Waits for `child` to exit within `wait`; kills it and panics otherwise.
fn finish(mut child: Child, wait: Duration) -> Output {
    let deadline = Instant::now() + wait;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "natter did not finish in {wait:?}; stdout: {}; stderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn bodies(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|line| line["body"].as_str().unwrap()).collect()
}

#[test]
fn create_send_history_conversations_and_tail() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The node's tasks keep running on the runtime's workers between these calls.
    let cluster = runtime.block_on(Runtime::scope(11, Cluster::start(1)));
    let started = Instant::now();
    let state = cluster.dir.path().join("state");
    let alice_file = state.join("alice.json");
    let alice_cursors = alice_file.to_str().unwrap();

    let created = json_lines(&stdout(&natter(
        &cluster,
        "alice",
        &["create", "--members", "bob,carol", "--title", "trip", "--json"],
        None,
    )));
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["type"], "conversation");
    assert_eq!(created[0]["members"], serde_json::json!(["alice", "bob", "carol"]));
    assert_eq!(created[0]["title"], "trip");
    let id = created[0]["id"].as_str().unwrap().to_owned();

    // Bob's tail follows the conversation once his welcome lists it.
    let mut listed = false;
    for _ in 0..100 {
        let list = json_lines(&stdout(&natter(&cluster, "bob", &["conversations", "--json"], None)));
        if list.iter().any(|summary| summary["id"] == id.as_str()) {
            listed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(listed, "bob's conversations never listed {id}");
    let bob_file = state.join("bob.json");
    let bob_cursors = bob_file.to_str().unwrap();
    let tail = command(&cluster, "bob", &["tail", "--count", "3", "--json", "--cursors", bob_cursors])
        .spawn()
        .expect("tail runs");
    // Tail writes its cursor file once connected (the conversation starts at its newest seq).
    for _ in 0..200 {
        if bob_file.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(bob_file.exists(), "tail never connected");

    let one = stdout(&natter(&cluster, "alice", &["send", &id, "hello bob", "--cursors", alice_cursors], None));
    assert!(one.starts_with("sent #1 to "), "{one}");
    let lines = json_lines(&stdout(&natter(
        &cluster,
        "alice",
        &["send", &id, "-", "--json", "--cursors", alice_cursors],
        Some("two\nthree\n"),
    )));
    assert_eq!(lines.iter().map(|line| line["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3]);
    assert!(lines.iter().all(|line| line["type"] == "send_ok"));
    let first_client_seq: u64 = one.trim_end().rsplit(' ').next().unwrap().trim_end_matches(')').parse().unwrap();
    assert!(lines[0]["client_seq"].as_u64().unwrap() > first_client_seq, "client_seq keeps growing across runs");

    let tailed = json_lines(&stdout(&finish(tail, Duration::from_secs(10))));
    assert_eq!(bodies(&tailed), ["hello bob", "two", "three"]);
    assert!(tailed.iter().all(|line| line["type"] == "message" && line["sender"] == "alice"));

    let history = json_lines(&stdout(&natter(&cluster, "alice", &["history", &id, "--json"], None)));
    assert_eq!(bodies(&history), ["hello bob", "two", "three"]);
    assert_eq!(history.iter().map(|line| line["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    let page = stdout(&natter(&cluster, "alice", &["history", &id, "--before", "3", "--limit", "1"], None));
    assert!(page.starts_with("#2  ") && page.ends_with("  alice: two\n"), "{page}");

    let table = stdout(&natter(&cluster, "alice", &["conversations"], None));
    assert!(table.contains(&id) && table.contains("alice,bob,carol") && table.contains("trip"), "{table}");

    // Bob's tail resumes after what it printed: only the two new messages.
    stdout(&natter(&cluster, "alice", &["send", &id, "-", "--cursors", alice_cursors], Some("four\nfive\n")));
    let resumed = command(&cluster, "bob", &["tail", "--count", "2", "--json", "--cursors", bob_cursors])
        .spawn()
        .expect("tail runs");
    let resumed = json_lines(&stdout(&finish(resumed, Duration::from_secs(10))));
    assert_eq!(bodies(&resumed), ["four", "five"]);

    // Mistakes are one-line errors.
    let output = natter(&cluster, "alice", &["send", "not-an-id", "hi", "--cursors", alice_cursors], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not 26 lowercase base32 characters"));
    let output = natter(&cluster, "mallory", &["history", &id], None);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("natter: error: server refused the request (not_member)"), "{stderr}");
    let output = command(&cluster, "alice", &["conversations"]).env_remove("NATTER_TOKEN").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("give --token or NATTER_TOKEN"));

    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(Path::new(&alice_file).is_file());
    runtime.block_on(cluster.shutdown());
}

/// Waits until `child` (a `natter tail`) says it is connected; keeps its stderr drained.
fn wait_connected(child: &mut Child) {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (connected, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("natter: connected to ") {
                let _ = connected.send(());
            }
        }
    });
    said.recv_timeout(Duration::from_secs(10)).expect("tail connected");
}

#[test]
fn tail_prints_a_conversation_joined_while_it_runs_then_its_messages() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = runtime.block_on(Runtime::scope(12, Cluster::start(1)));
    let state = cluster.dir.path().join("state");
    let bob_file = state.join("bob.json");
    let carol_file = state.join("carol.json");
    let alice_file = state.join("alice.json");

    // Bob and carol tail before the conversation exists.
    let mut bob =
        command(&cluster, "bob", &["tail", "--count", "2", "--json", "--cursors", bob_file.to_str().unwrap()])
            .spawn()
            .expect("tail runs");
    let mut carol = command(&cluster, "carol", &["tail", "--count", "2", "--cursors", carol_file.to_str().unwrap()])
        .spawn()
        .expect("tail runs");
    wait_connected(&mut bob);
    wait_connected(&mut carol);

    let created = json_lines(&stdout(&natter(
        &cluster,
        "alice",
        &["create", "--members", "bob,carol", "--title", "trip", "--json"],
        None,
    )));
    let id = created[0]["id"].as_str().unwrap().to_owned();
    stdout(&natter(
        &cluster,
        "alice",
        &["send", &id, "-", "--cursors", alice_file.to_str().unwrap()],
        Some("one\ntwo\n"),
    ));

    let lines = json_lines(&stdout(&finish(bob, Duration::from_secs(10))));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["type"], "conversation");
    assert_eq!(lines[0]["id"], id.as_str());
    assert_eq!(lines[0]["members"], serde_json::json!(["alice", "bob", "carol"]));
    assert_eq!(lines[0]["title"], "trip");
    assert_eq!(lines[0]["request_id"], Value::Null);
    assert_eq!(bodies(&lines[1..]), ["one", "two"]);
    assert_eq!(lines[1..].iter().map(|line| line["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);

    let text = stdout(&finish(carol, Duration::from_secs(10)));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], format!("[trip] added to {id} with alice, bob, carol"));
    assert!(lines[1].starts_with("[trip] #1  ") && lines[1].ends_with("  alice: one"), "{text}");
    assert!(lines[2].starts_with("[trip] #2  ") && lines[2].ends_with("  alice: two"), "{text}");

    // The cursor file has the conversation, so the next tail resumes after #2.
    let saved = std::fs::read_to_string(&bob_file).unwrap();
    assert!(saved.contains(&id), "{saved}");
    runtime.block_on(cluster.shutdown());
}
