//! natter-client against real in-process nodes: messages reach the other member once and in
//! order, a client that comes back with its cursor file gets exactly what it missed, and sends
//! interrupted by a dropped connection or a stopped node are resent and committed once. These
//! tests live here, in natter-cli, because natter-client itself must not depend on natter-node.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_client::{Client, ClientError, Event, FileCursors, MemoryCursors, SendOk};
use natter_proto::{ConversationId, ErrorCode, MessageRecord, UserId};
use support::{run, Cluster};

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// The next `count` messages; other events are skipped. Panics if 5 s pass without one.
async fn messages(client: &Client, count: usize) -> Vec<MessageRecord> {
    let mut received = Vec::new();
    while received.len() < count {
        match tokio::time::timeout(Duration::from_secs(5), client.next_event()).await {
            Ok(Some(Event::Message(message))) => received.push(message),
            Ok(Some(_)) => {}
            Ok(None) => panic!("client closed after {} of {count} messages", received.len()),
            Err(_) => panic!("only {} of {count} messages arrived: {received:?}", received.len()),
        }
    }
    received
}

/// Asserts that no message arrives within `wait`.
async fn no_more_messages(client: &Client, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Err(_) => return,
            Ok(Some(Event::Message(message))) => panic!("unexpected message {message:?}"),
            Ok(Some(_)) => {}
            Ok(None) => return,
        }
    }
}

fn seqs(messages: &[MessageRecord]) -> Vec<u64> {
    messages.iter().map(|message| message.seq).collect()
}

/// Connects `name` with cursors in `path` until its welcome lists `conversation` (the user
/// shard learns of a new membership through an outbox, shortly after the create).
async fn connect_listed(cluster: &Cluster, name: &str, path: &std::path::Path, conversation: ConversationId) -> Client {
    for _ in 0..100 {
        let client =
            Client::connect(cluster.config(name, "laptop"), Box::new(FileCursors::open(path).unwrap())).await.unwrap();
        if client.conversations().iter().any(|summary| summary.id == conversation) {
            return client;
        }
        client.close().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}'s welcome never listed {conversation}");
}

/// Sends `count` messages at once from `client` (pipelined), calling `interrupt` after the
/// first few were handed to the client; returns every result in send order.
async fn send_many<F: std::future::Future<Output = ()>>(
    client: &Arc<Client>,
    conversation: ConversationId,
    prefix: &str,
    count: usize,
    interrupt: F,
) -> Vec<SendOk> {
    let mut tasks = Vec::new();
    for n in 0..count {
        let client = client.clone();
        let body = format!("{prefix} {n}");
        tasks.push(tokio::spawn(async move { client.send(conversation, body).await }));
        if n == 3 {
            tokio::task::yield_now().await;
        }
    }
    interrupt.await;
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().expect("every send is committed"));
    }
    results
}

#[test]
fn the_client_alpn_is_the_nodes() {
    assert_eq!(natter_client::ALPN, natter_node::tls::CLIENT_ALPN);
}

#[test]
fn messages_arrive_once_in_order_and_resume_from_the_cursor_file() {
    run(async {
        let started = Instant::now();
        let cluster = Cluster::start(1).await;
        let alice = Client::connect(cluster.config("alice", "phone"), Box::new(MemoryCursors::new())).await.unwrap();
        assert_eq!(alice.user(), user("alice"));
        assert_eq!(alice.next_event().await, Some(Event::Connected { node: cluster.addrs[0] }));
        let trip = alice.create_conversation(vec![user("bob")], Some("trip".into())).await.unwrap();
        assert_eq!(trip.members, [user("alice"), user("bob")]);
        assert_eq!(trip.title.as_deref(), Some("trip"));

        let bob_file = cluster.dir.path().join("bob-cursors.json");
        let bob = connect_listed(&cluster, "bob", &bob_file, trip.id).await;

        let mut sent = Vec::new();
        for n in 1..=5 {
            sent.push(alice.send(trip.id, format!("hello {n}")).await.unwrap());
        }
        assert_eq!(sent.iter().map(|ok| ok.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert!(sent.windows(2).all(|pair| pair[0].client_seq < pair[1].client_seq), "client_seq increases");

        let received = messages(&bob, 5).await;
        assert_eq!(seqs(&received), [1, 2, 3, 4, 5]);
        assert_eq!(received[0].body, "hello 1");
        assert_eq!(received[4].sender, user("alice"));
        // Alice's own messages come back to her too, once each.
        assert_eq!(seqs(&messages(&alice, 5).await), [1, 2, 3, 4, 5]);
        no_more_messages(&bob, Duration::from_millis(300)).await;
        assert_eq!(bob.cursors().get(&trip.id), Some(&5));
        bob.close().await;

        // Bob is away for three messages, then resumes from his cursor file: exactly those.
        for n in 6..=8 {
            alice.send(trip.id, format!("while away {n}")).await.unwrap();
        }
        let state = FileCursors::open(&bob_file).unwrap().state().clone();
        assert_eq!(state.cursors.get(&trip.id), Some(&5), "the file holds the cursor of the last message handed");
        let bob = Arc::new(
            Client::connect(cluster.config("bob", "laptop"), Box::new(FileCursors::open(&bob_file).unwrap()))
                .await
                .unwrap(),
        );
        let missed = messages(&bob, 3).await;
        assert_eq!(seqs(&missed), [6, 7, 8]);
        assert_eq!(missed[0].body, "while away 6");

        // Twenty sends in flight when bob's connection is dropped: each is resent with its
        // client_seq after the reconnect and committed once.
        let results = send_many(&bob, trip.id, "burst", 20, async {
            bob.reconnect().await.unwrap();
        })
        .await;
        let burst: BTreeSet<u64> = results.iter().map(|ok| ok.seq).collect();
        assert_eq!(burst, (9..=28).collect(), "20 distinct seqs, no duplicate and no hole");
        let history = bob.history(trip.id, None, 200).await.unwrap();
        assert_eq!(seqs(&history), (1..=28).collect::<Vec<_>>());
        let bodies: BTreeSet<&str> = history.iter().map(|message| message.body.as_str()).collect();
        assert_eq!(bodies.len(), 28, "every body is in the conversation once");
        // Both see each of the twenty once, in order; bob saw the reconnect.
        assert_eq!(seqs(&messages(&alice, 23).await), (6..=28).collect::<Vec<_>>());
        assert_eq!(seqs(&messages(&bob, 20).await), (9..=28).collect::<Vec<_>>());
        no_more_messages(&bob, Duration::from_millis(300)).await;

        // Paging back with `before`.
        let page = bob.history(trip.id, Some(4), 2).await.unwrap();
        assert_eq!(seqs(&page), [2, 3]);
        Arc::try_unwrap(bob).unwrap().close().await;
        alice.close().await;
        cluster.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    });
}

#[test]
fn a_stopped_node_fails_over_to_the_next_and_pending_sends_commit_once() {
    run(async {
        let started = Instant::now();
        let mut cluster = Cluster::start(3).await;
        let alice =
            Arc::new(Client::connect(cluster.config("alice", "phone"), Box::new(MemoryCursors::new())).await.unwrap());
        assert_eq!(alice.node(), Some(cluster.addrs[0]), "the first server is tried first");
        let group = alice.create_conversation(vec![user("bob"), user("carol")], Some("ops".into())).await.unwrap();
        alice.send(group.id, "before").await.unwrap();

        // Node 1 stops while five sends are on their way: they are resent to node 2.
        let results = send_many(&alice, group.id, "during", 5, cluster.stop(0)).await;
        let seqs_sent: BTreeSet<u64> = results.iter().map(|ok| ok.seq).collect();
        assert_eq!(seqs_sent, (2..=6).collect());
        let mut saw_disconnect = false;
        let mut connected_to = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while connected_to.is_none() {
            match tokio::time::timeout_at(deadline, alice.next_event()).await.expect("events") {
                Some(Event::Disconnected { .. }) => saw_disconnect = true,
                Some(Event::Connected { node }) if saw_disconnect => connected_to = Some(node),
                Some(_) => {}
                None => panic!("client closed"),
            }
        }
        assert_eq!(connected_to, Some(cluster.addrs[1]), "the next server");
        let history = alice.history(group.id, None, 50).await.unwrap();
        assert_eq!(seqs(&history), (1..=6).collect::<Vec<_>>());
        let bodies: BTreeSet<&str> = history.iter().map(|message| message.body.as_str()).collect();
        assert_eq!(bodies.len(), 6, "no body twice: {history:?}");
        Arc::try_unwrap(alice).unwrap().close().await;
        cluster.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    });
}

#[test]
fn bad_tokens_and_unreachable_servers_are_typed_errors() {
    run(async {
        let cluster = Cluster::start(1).await;
        let mut config = cluster.config("alice", "phone");
        config.token = "not a token".into();
        let error = Client::connect(config, Box::new(MemoryCursors::new())).await.unwrap_err();
        assert!(matches!(error, ClientError::Unauthenticated(_)), "{error}");
        assert_eq!(error.code(), Some(ErrorCode::Unauthenticated));

        // A loopback port nothing listens on: bind one, then free it.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut config = cluster.config("alice", "phone");
        config.servers = vec![closed];
        config.connect_timeout = Duration::from_millis(300);
        let error = Client::connect(config, Box::new(MemoryCursors::new())).await.unwrap_err();
        assert!(matches!(&error, ClientError::Unavailable(reason) if reason.contains(&closed.to_string())), "{error}");

        // A dead server first, then a live one: the live one is used.
        let mut config = cluster.config("alice", "phone");
        config.servers = vec![closed, cluster.addrs[0]];
        config.connect_timeout = Duration::from_millis(300);
        let alice = Client::connect(config, Box::new(MemoryCursors::new())).await.unwrap();
        assert_eq!(alice.node(), Some(cluster.addrs[0]));

        // A refused send is the server's typed error; the client goes on.
        let nowhere = ConversationId::from_bytes([0xee; 16]);
        let error = alice.send(nowhere, "hi").await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::NotMember), "{error}");
        let error = alice.send(nowhere, "x".repeat(64 * 1024 + 1)).await.unwrap_err();
        assert!(matches!(error, ClientError::Invalid(_)), "checked before sending: {error}");
        let error = alice.history(nowhere, None, 10).await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::NotMember), "{error}");
        alice.close().await;
        cluster.shutdown().await;
    });
}

/// A reader that falls behind by more than the event queue holds loses nothing: what did not
/// fit is fetched again with `history` once it reads, and each message is handed once.
#[test]
fn a_slow_reader_gets_every_message_once_after_the_queue_overflows() {
    run(async {
        let started = Instant::now();
        let cluster = Cluster::start(1).await;
        let alice = Client::connect(cluster.config("alice", "phone"), Box::new(MemoryCursors::new())).await.unwrap();
        let chat = alice.create_conversation(vec![user("bob")], None).await.unwrap();
        let bob_file = cluster.dir.path().join("bob.json");
        let bob = connect_listed(&cluster, "bob", &bob_file, chat.id).await;

        let total = natter_client::EVENT_QUEUE_MAX + 100;
        let mut queued = Vec::new();
        for n in 0..total {
            queued.push(alice.submit(chat.id, format!("m{n}")).await.unwrap());
        }
        for send in queued {
            send.wait().await.unwrap();
        }
        // Bob has read nothing so far; now he reads everything.
        let received = messages(&bob, total).await;
        assert_eq!(seqs(&received), (1..=total as u64).collect::<Vec<_>>());
        assert!(received.iter().enumerate().all(|(n, message)| message.body == format!("m{n}")), "in send order");
        no_more_messages(&bob, Duration::from_millis(300)).await;
        assert_eq!(bob.cursors().get(&chat.id), Some(&(total as u64)));
        bob.close().await;
        alice.close().await;
        cluster.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    });
}
