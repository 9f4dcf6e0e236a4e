//! The client QUIC edge on a real (in-process) node: authentication, conversations, sends
//! that are exactly-once per `client_seq`, history, catch-up on `hello`, conversations joined
//! while online, and every class of bad input answered with its typed error while the session
//! (or at least the node) lives on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_node::rate::RateLimits;
use natter_proto::codec::{encode_frame, FrameDecoder};
use natter_proto::frames::{ClientFrame, ServerFrame};
use natter_proto::{ConversationId, DeviceId, ErrorCode, UserId};
use natter_raft::types::Runtime;
use rustls::pki_types::pem::PemObject;
use support::{token, InProcess, SECRET};

mod support;

/// One node of an in-process cluster, as a client sees it.
struct Node {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    handles: Vec<natter_node::NodeHandle>,
}

impl Cluster {
    async fn shutdown(self) {
        for handle in self.handles {
            handle.shutdown().await;
        }
    }
}

/// `count` nodes in this process, 8 shards, all ready.
async fn start_cluster(count: u64) -> Cluster {
    let InProcess { dir, handles } = support::start_in_process(count, false, RateLimits::default()).await;
    let ca_pem = std::fs::read(dir.path().join("tls/ca.pem")).unwrap();
    let nodes = handles.iter().map(|handle| Node { addr: handle.peer_addr(), ca_pem: ca_pem.clone() }).collect();
    Cluster { _dir: dir, nodes, handles }
}

struct Client {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    _endpoint: quinn::Endpoint,
    /// `message` frames received while waiting for answers, in arrival order.
    messages: Vec<natter_proto::MessageRecord>,
    /// Unsolicited `conversation` frames (conversations joined) received while waiting for
    /// answers, in arrival order.
    joined: Vec<ServerFrame>,
    /// Every receipt seen by `wait_receipt`: (member, delivered, read).
    receipts: Vec<(String, u64, u64)>,
}

impl Client {
    async fn connect(node: &Node) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_slice(&node.ca_pem).unwrap()).unwrap();
        let mut crypto =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        crypto.alpn_protocols = vec![natter_node::tls::CLIENT_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connection = endpoint
            .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), node.addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = connection.open_bi().await.unwrap();
        Client {
            connection,
            send,
            recv,
            decoder: FrameDecoder::new(),
            _endpoint: endpoint,
            messages: Vec::new(),
            joined: Vec::new(),
            receipts: Vec::new(),
        }
    }

    async fn hello(node: &Node, user: &str, resume: BTreeMap<ConversationId, u64>) -> (Client, ServerFrame) {
        Client::hello_from(node, user, "phone", resume).await
    }

    async fn hello_from(
        node: &Node,
        user: &str,
        device: &str,
        resume: BTreeMap<ConversationId, u64>,
    ) -> (Client, ServerFrame) {
        let mut client = Client::connect(node).await;
        let hello = ClientFrame::Hello { device: DeviceId::new(device).unwrap(), resume, token: Some(token(user)) };
        client.write(&hello).await;
        let welcome = client.read().await.expect("welcome");
        (client, welcome)
    }

    async fn write(&mut self, frame: &ClientFrame) {
        let mut bytes = Vec::new();
        encode_frame(frame, &mut bytes).unwrap();
        self.send.write_all(&bytes).await.unwrap();
    }

    async fn write_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// The next server frame, or `None` if the stream ended or nothing came in 5 s. Presence
    /// frames (unsolicited, about the members of the session's conversations) are skipped.
    async fn read(&mut self) -> Option<ServerFrame> {
        loop {
            match self.decoder.next_frame::<ServerFrame>() {
                Ok(Some(ServerFrame::Presence { .. })) => continue,
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(error) => panic!("server sent a bad frame: {error}"),
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.recv.read_chunk(64 * 1024, true)).await;
            match chunk {
                Ok(Ok(Some(chunk))) => {
                    let taken = self.decoder.push(&chunk.bytes);
                    assert_eq!(taken, chunk.bytes.len());
                }
                _ => return None,
            }
        }
    }

    /// Sends `frame` and returns the first answer that is not a pushed `message` or an
    /// unsolicited `conversation` (those are kept in `messages` and `joined`).
    async fn request(&mut self, frame: &ClientFrame) -> ServerFrame {
        self.write(frame).await;
        loop {
            match self.read().await.expect("an answer") {
                ServerFrame::Message(message) => self.messages.push(message),
                joined @ ServerFrame::Conversation { request_id: None, .. } => self.joined.push(joined),
                answer => return answer,
            }
        }
    }

    /// Reads until a receipt for `user` arrives; returns its (delivered, read).
    async fn wait_receipt(&mut self, user: &str) -> (u64, u64) {
        loop {
            match self.read().await.expect("a receipt") {
                ServerFrame::Message(message) => self.messages.push(message),
                ServerFrame::Receipt { user: who, delivered, read, .. } => {
                    self.receipts.push((who.to_string(), delivered, read));
                    if who.as_str() == user {
                        return (delivered, read);
                    }
                }
                other => panic!("expected a receipt, got {other:?}"),
            }
        }
    }

    /// The next frame if one arrives within `wait`.
    async fn read_for(&mut self, wait: Duration) -> Option<ServerFrame> {
        tokio::time::timeout(wait, self.read()).await.ok().flatten()
    }

    /// Reads until `count` messages have arrived in all (or 5 s pass without a frame).
    async fn wait_messages(&mut self, count: usize) -> Vec<(ConversationId, u64)> {
        while self.messages.len() < count {
            match self.read().await {
                Some(ServerFrame::Message(message)) => self.messages.push(message),
                Some(other) => panic!("expected a message, got {other:?}"),
                None => break,
            }
        }
        self.messages.iter().map(|message| (message.conversation, message.seq)).collect()
    }

    async fn closed(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(5), self.connection.closed()).await.is_ok()
    }
}

fn error_code(frame: &ServerFrame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(Runtime::scope(5, future))
}

#[test]
fn conversations_sends_history_and_catch_up() {
    run(async {
        let cluster = start_cluster(1).await;
        let node = &cluster.nodes[0];
        let (mut alice, welcome) = Client::hello(node, "alice", BTreeMap::new()).await;
        let ServerFrame::Welcome { user, conversations, .. } = welcome else { panic!("{welcome:?}") };
        assert_eq!(user, UserId::new("alice").unwrap());
        assert!(conversations.is_empty());

        // A 1:1 conversation has the deterministic id, and creating it again finds it.
        let create = ClientFrame::CreateConversation {
            request_id: "r1".into(),
            members: vec![UserId::new("bob").unwrap()],
            title: None,
        };
        let created = alice.request(&create).await;
        let expected = ConversationId::direct(&UserId::new("alice").unwrap(), &UserId::new("bob").unwrap());
        let ServerFrame::Conversation { id, members, request_id, .. } = &created else { panic!("{created:?}") };
        assert_eq!((*id, request_id.as_deref()), (expected, Some("r1")));
        assert_eq!(members.len(), 2);
        assert_eq!(alice.request(&create).await, created);

        // Sends are answered after commit; a resend of a client_seq returns the original.
        let send =
            |client_seq: u64, body: &str| ClientFrame::Send { conversation: expected, client_seq, body: body.into() };
        let first = alice.request(&send(1, "hi bob")).await;
        let ServerFrame::SendOk { seq: 1, client_seq: 1, ts, .. } = first else { panic!("{first:?}") };
        assert_eq!(alice.request(&send(1, "hi bob")).await, first, "a resend returns the original seq and ts");
        let second = alice.request(&send(2, "lunch?")).await;
        assert!(matches!(second, ServerFrame::SendOk { seq: 2, .. }), "{second:?}");
        assert!(matches!(second, ServerFrame::SendOk { ts: later, .. } if later >= ts));

        let history = alice
            .request(&ClientFrame::History { request_id: "h".into(), conversation: expected, before: None, limit: 50 })
            .await;
        let ServerFrame::History { messages, .. } = history else { panic!("{history:?}") };
        let bodies: Vec<&str> = messages.iter().map(|message| message.body.as_str()).collect();
        assert_eq!(bodies, ["hi bob", "lunch?"]);

        // Bob's welcome lists the conversation once the outbox relay reached his user shard,
        // and a resume cursor streams what he has not seen, in order.
        let mut listed = false;
        for _ in 0..50 {
            let (mut bob, welcome) = Client::hello(node, "bob", BTreeMap::from([(expected, 0)])).await;
            let ServerFrame::Welcome { conversations, .. } = welcome else { panic!("{welcome:?}") };
            if let Some(summary) = conversations.iter().find(|summary| summary.id == expected) {
                assert_eq!(summary.last_seq, 2);
                listed = true;
                let one = bob.read().await.expect("catch-up 1");
                let two = bob.read().await.expect("catch-up 2");
                assert!(matches!(&one, ServerFrame::Message(m) if m.seq == 1 && m.body == "hi bob"), "{one:?}");
                assert!(matches!(&two, ServerFrame::Message(m) if m.seq == 2), "{two:?}");
                // Ping answers on the same session after catch-up.
                assert_eq!(bob.request(&ClientFrame::Ping { nonce: 9 }).await, ServerFrame::Pong { nonce: 9 });
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(listed, "bob's welcome never listed the conversation");
        // Alice followed the conversation she created: her own two messages came back once each.
        assert_eq!(alice.wait_messages(2).await, vec![(expected, 1), (expected, 2)]);
        cluster.shutdown().await;
    });
}

#[test]
fn bad_input_gets_typed_errors_and_touches_nothing() {
    run(async {
        let cluster = start_cluster(1).await;
        let node = &cluster.nodes[0];

        // A request before hello: hello_required, then the connection is closed.
        let mut early = Client::connect(node).await;
        let answer = early.request(&ClientFrame::Ping { nonce: 1 }).await;
        assert_eq!(error_code(&answer), Some(ErrorCode::HelloRequired));
        assert!(early.closed().await);

        // A forged token: unauthenticated, closed.
        let mut forged = Client::connect(node).await;
        let other = natter_node::auth::TokenKey::new(b"a different secret, long enough!!").unwrap();
        let bad = other.issue(&UserId::new("alice").unwrap(), 0, u64::MAX / 2);
        let answer = forged
            .request(&ClientFrame::Hello {
                device: DeviceId::new("d").unwrap(),
                resume: BTreeMap::new(),
                token: Some(bad),
            })
            .await;
        assert_eq!(error_code(&answer), Some(ErrorCode::Unauthenticated));
        assert!(forged.closed().await);

        // An expired token is refused the same way.
        let key = natter_node::auth::TokenKey::new(SECRET.as_bytes()).unwrap();
        let expired = key.issue(&UserId::new("alice").unwrap(), 1_000, 60);
        let mut late = Client::connect(node).await;
        let answer = late
            .request(&ClientFrame::Hello {
                device: DeviceId::new("d").unwrap(),
                resume: BTreeMap::new(),
                token: Some(expired),
            })
            .await;
        assert_eq!(error_code(&answer), Some(ErrorCode::Unauthenticated));

        let (mut carol, _) = Client::hello(node, "carol", BTreeMap::new()).await;
        let (mut dave, _) = Client::hello(node, "dave", BTreeMap::new()).await;
        let group = ClientFrame::CreateConversation {
            request_id: "g".into(),
            members: vec![UserId::new("dave").unwrap(), UserId::new("erin").unwrap()],
            title: Some("plans".into()),
        };
        let ServerFrame::Conversation { id: conversation, .. } = carol.request(&group).await else { panic!() };

        // Garbage in a well-formed frame: bad_frame, and the session goes on.
        carol.write_raw(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).await;
        assert_eq!(error_code(&carol.read().await.unwrap()), Some(ErrorCode::BadFrame));
        assert_eq!(carol.request(&ClientFrame::Ping { nonce: 2 }).await, ServerFrame::Pong { nonce: 2 });

        // An oversized body: too_large, tied to its client_seq; nothing appended.
        let huge = ClientFrame::Send { conversation, client_seq: 1, body: "x".repeat(64 * 1024 + 1) };
        let answer = carol.request(&huge).await;
        assert!(
            matches!(&answer, ServerFrame::Error { code: ErrorCode::TooLarge, client_seq: Some(1), .. }),
            "{answer:?}"
        );

        // A frame longer than 1 MiB: too_large once, its bytes skipped, then the session lives.
        let mut oversized = ((1u32 << 20) + 1).to_be_bytes().to_vec();
        oversized.extend(std::iter::repeat_n(0u8, (1 << 20) + 1));
        carol.write_raw(&oversized).await;
        assert_eq!(error_code(&carol.read().await.unwrap()), Some(ErrorCode::TooLarge));
        assert_eq!(carol.request(&ClientFrame::Ping { nonce: 3 }).await, ServerFrame::Pong { nonce: 3 });

        // A history page size out of range: invalid_argument.
        let answer =
            carol.request(&ClientFrame::History { request_id: "x".into(), conversation, before: None, limit: 0 }).await;
        assert_eq!(error_code(&answer), Some(ErrorCode::InvalidArgument));

        // A non-member can neither send to nor read the group, nor a conversation that does
        // not exist; both look the same.
        let (mut mallory, _) = Client::hello(node, "mallory", BTreeMap::new()).await;
        let answer = mallory.request(&ClientFrame::Send { conversation, client_seq: 1, body: "hi".into() }).await;
        assert!(
            matches!(&answer, ServerFrame::Error { code: ErrorCode::NotMember, client_seq: Some(1), .. }),
            "{answer:?}"
        );
        let answer = mallory
            .request(&ClientFrame::History { request_id: "m".into(), conversation, before: None, limit: 10 })
            .await;
        assert_eq!(error_code(&answer), Some(ErrorCode::NotMember));
        let nowhere = ConversationId::from_bytes([0xee; 16]);
        let answer =
            mallory.request(&ClientFrame::Send { conversation: nowhere, client_seq: 2, body: "x".into() }).await;
        assert_eq!(error_code(&answer), Some(ErrorCode::NotMember));

        // None of that reached the group: dave reads an empty history.
        let history =
            dave.request(&ClientFrame::History { request_id: "d".into(), conversation, before: None, limit: 10 }).await;
        assert!(matches!(&history, ServerFrame::History { messages, .. } if messages.is_empty()), "{history:?}");

        // A peer that keeps sending garbage is closed after 16 bad frames in a row.
        for _ in 0..16 {
            mallory.write_raw(&[0, 0, 0, 1, 0xff]).await;
        }
        for _ in 0..16 {
            assert_eq!(error_code(&mallory.read().await.unwrap()), Some(ErrorCode::BadFrame));
        }
        assert!(mallory.closed().await, "a persistently bad peer is closed");
        // Others are unaffected.
        assert_eq!(dave.request(&ClientFrame::Ping { nonce: 4 }).await, ServerFrame::Pong { nonce: 4 });
        cluster.shutdown().await;
    });
}

/// Three nodes; alice, bob (two devices) and carol each on a different node. Every message
/// reaches every member's every device once, in seq order, live and identical across devices;
/// a device that reconnects with its cursor gets exactly what it missed.
#[test]
fn messages_reach_every_device_once_in_order_across_nodes() {
    run(async {
        let cluster = start_cluster(3).await;
        let (mut alice, _) = Client::hello(&cluster.nodes[0], "alice", BTreeMap::new()).await;
        let group = ClientFrame::CreateConversation {
            request_id: "g".into(),
            members: vec![UserId::new("bob").unwrap(), UserId::new("carol").unwrap()],
            title: Some("trip".into()),
        };
        let ServerFrame::Conversation { id: conversation, .. } = alice.request(&group).await else { panic!() };
        // The others join by resuming from 0 (their user shards may not list it yet).
        let resume = BTreeMap::from([(conversation, 0)]);
        let (mut bob_phone, _) = Client::hello(&cluster.nodes[1], "bob", resume.clone()).await;
        let (mut bob_laptop, _) = Client::hello(&cluster.nodes[2], "bob", resume.clone()).await;
        let (mut carol, _) = Client::hello(&cluster.nodes[2], "carol", resume.clone()).await;

        // Interleaved senders on three nodes.
        for round in 1..=10u64 {
            let body = |who: &str| format!("{who} {round}");
            let answer =
                alice.request(&ClientFrame::Send { conversation, client_seq: round, body: body("alice") }).await;
            assert!(matches!(answer, ServerFrame::SendOk { .. }), "{answer:?}");
            let answer =
                bob_phone.request(&ClientFrame::Send { conversation, client_seq: round, body: body("bob") }).await;
            assert!(matches!(answer, ServerFrame::SendOk { .. }), "{answer:?}");
            let answer =
                carol.request(&ClientFrame::Send { conversation, client_seq: round, body: body("carol") }).await;
            assert!(matches!(answer, ServerFrame::SendOk { .. }), "{answer:?}");
        }
        let everything: Vec<(ConversationId, u64)> = (1..=30).map(|seq| (conversation, seq)).collect();
        for (name, client) in [
            ("alice", &mut alice),
            ("bob phone", &mut bob_phone),
            ("bob laptop", &mut bob_laptop),
            ("carol", &mut carol),
        ] {
            assert_eq!(client.wait_messages(30).await, everything, "{name} got each seq once, in order");
        }
        let bodies = |client: &Client| client.messages.iter().map(|m| m.body.clone()).collect::<Vec<_>>();
        assert_eq!(bodies(&alice), bodies(&carol), "every observer sees the same order");
        assert_eq!(bodies(&bob_phone), bodies(&bob_laptop));

        // Read receipts fan out to the conversation, per member and never backwards: bob read
        // up to 30 on his phone, then his laptop says 10.
        bob_phone.write(&ClientFrame::Read { conversation, seq: 30 }).await;
        assert_eq!(alice.wait_receipt("bob").await, (30, 30));
        bob_laptop.write(&ClientFrame::Read { conversation, seq: 10 }).await;
        carol.write(&ClientFrame::Ack { conversation, seq: 30 }).await;
        assert_eq!(alice.wait_receipt("carol").await, (30, 0), "delivery receipt only");
        for (member, delivered, read) in &alice.receipts {
            if member == "bob" {
                assert_eq!((*delivered, *read), (30, 30), "bob's receipt never moves back");
            }
        }

        // Bob's laptop goes away at seq 30; five more arrive; it comes back with its cursor.
        drop(bob_laptop);
        for client_seq in 11..=15u64 {
            let answer = alice
                .request(&ClientFrame::Send { conversation, client_seq, body: format!("later {client_seq}") })
                .await;
            assert!(matches!(answer, ServerFrame::SendOk { .. }), "{answer:?}");
        }
        let (mut bob_laptop, _) = Client::hello(&cluster.nodes[2], "bob", BTreeMap::from([(conversation, 30)])).await;
        let missed: Vec<(ConversationId, u64)> = (31..=35).map(|seq| (conversation, seq)).collect();
        assert_eq!(bob_laptop.wait_messages(5).await, missed, "exactly what it missed, in order");
        // And nothing more arrives: no duplicates.
        assert!(bob_laptop.read_for(Duration::from_millis(1500)).await.is_none(), "no duplicate after catch-up");
        cluster.shutdown().await;
    });
}

/// Reads `client`'s next frame and checks it is the unsolicited `conversation` frame of a
/// conversation just joined.
async fn expect_joined(client: &mut Client, name: &str) -> (ConversationId, Vec<UserId>, Option<String>) {
    let next = if client.joined.is_empty() { client.read().await } else { Some(client.joined.remove(0)) };
    match next {
        Some(ServerFrame::Conversation { id, members, title, request_id: None }) => (id, members, title),
        other => panic!("{name}: expected an unsolicited conversation frame, got {other:?}"),
    }
}

fn users(names: &[&str]) -> Vec<UserId> {
    names.iter().map(|name| UserId::new(*name).unwrap()).collect()
}

/// Bob is online on two nodes (neither alice's) before alice creates a 1:1 with him and a group
/// with him and carol: every session of bob (and carol's) is told of each conversation with an
/// unsolicited `conversation` frame, then gets every message from seq 1 exactly once, in
/// order, live.
#[test]
fn conversations_joined_while_online_reach_every_device_from_seq_one() {
    run(async {
        let cluster = start_cluster(3).await;
        let (mut bob_phone, welcome) = Client::hello_from(&cluster.nodes[1], "bob", "phone", BTreeMap::new()).await;
        assert!(matches!(&welcome, ServerFrame::Welcome { conversations, .. } if conversations.is_empty()));
        let (mut bob_laptop, _) = Client::hello_from(&cluster.nodes[2], "bob", "laptop", BTreeMap::new()).await;
        let (mut carol, _) = Client::hello(&cluster.nodes[1], "carol", BTreeMap::new()).await;
        let (mut alice, _) = Client::hello(&cluster.nodes[0], "alice", BTreeMap::new()).await;

        // A 1:1 created by alice, and twenty messages sent at once.
        let create = ClientFrame::CreateConversation { request_id: "dm".into(), members: users(&["bob"]), title: None };
        let ServerFrame::Conversation { id: direct, .. } = alice.request(&create).await else { panic!() };
        for client_seq in 1..=20u64 {
            let answer = alice
                .request(&ClientFrame::Send { conversation: direct, client_seq, body: format!("dm {client_seq}") })
                .await;
            assert!(matches!(answer, ServerFrame::SendOk { seq, .. } if seq == client_seq), "{answer:?}");
        }
        let all_of = |conversation: ConversationId, count: u64| -> Vec<(ConversationId, u64)> {
            (1..=count).map(|seq| (conversation, seq)).collect()
        };
        for (name, bob) in [("bob phone", &mut bob_phone), ("bob laptop", &mut bob_laptop)] {
            let (id, members, title) = expect_joined(bob, name).await;
            assert_eq!((id, members, title), (direct, users(&["alice", "bob"]), None), "{name}");
            assert_eq!(bob.wait_messages(20).await, all_of(direct, 20), "{name}: each seq once, in order");
            let bodies: Vec<&str> = bob.messages.iter().map(|message| message.body.as_str()).collect();
            assert_eq!(bodies.first(), Some(&"dm 1"), "{name}");
        }

        // A group created by alice with bob and carol while they are online; bob answers on it.
        let create = ClientFrame::CreateConversation {
            request_id: "g".into(),
            members: users(&["bob", "carol"]),
            title: Some("trip".into()),
        };
        let ServerFrame::Conversation { id: group, .. } = alice.request(&create).await else { panic!() };
        for client_seq in 21..=25u64 {
            let answer = alice
                .request(&ClientFrame::Send { conversation: group, client_seq, body: format!("group {client_seq}") })
                .await;
            assert!(matches!(answer, ServerFrame::SendOk { .. }), "{answer:?}");
        }
        let mut expected = all_of(direct, 20);
        expected.extend(all_of(group, 5));
        for (name, client) in [("bob phone", &mut bob_phone), ("bob laptop", &mut bob_laptop)] {
            let (id, members, title) = expect_joined(client, name).await;
            assert_eq!((id, members, title.as_deref()), (group, users(&["alice", "bob", "carol"]), Some("trip")));
            assert_eq!(client.wait_messages(25).await, expected, "{name}: each seq once, in order");
        }
        let (id, _, _) = expect_joined(&mut carol, "carol").await;
        assert_eq!(id, group);
        assert_eq!(carol.wait_messages(5).await, all_of(group, 5));

        // Bob writes back from his phone: his laptop and carol get it live, after the rest.
        let answer =
            bob_phone.request(&ClientFrame::Send { conversation: group, client_seq: 1, body: "yes!".into() }).await;
        assert!(matches!(answer, ServerFrame::SendOk { seq: 6, .. }), "{answer:?}");
        expected.push((group, 6));
        assert_eq!(bob_phone.wait_messages(26).await, expected, "bob's own message comes back after send_ok");
        assert_eq!(bob_laptop.wait_messages(26).await, expected);
        assert_eq!(carol.wait_messages(6).await, all_of(group, 6));

        // Nothing more comes: no second conversation frame, no duplicate (the refreshes that
        // pass meanwhile agree with what the sessions know).
        for (name, client) in [("bob phone", &mut bob_phone), ("bob laptop", &mut bob_laptop), ("carol", &mut carol)] {
            let extra = client.read_for(Duration::from_millis(2500)).await;
            assert!(extra.is_none(), "{name} got {extra:?}");
        }
        cluster.shutdown().await;
    });
}

/// The push that tells bob's node of his new conversation is lost (a test hook drops every
/// join there): the next interest refresh shows bob's list changed, his session reads it again
/// and still follows the conversation from seq 1.
#[test]
fn a_lost_join_push_is_found_by_the_interest_refresh() {
    run(async {
        let cluster = start_cluster(3).await;
        cluster.handles[1].cluster().deliveries().drop_next_joins(u64::MAX);
        let (mut bob, _) = Client::hello(&cluster.nodes[1], "bob", BTreeMap::new()).await;
        let (mut alice, _) = Client::hello(&cluster.nodes[0], "alice", BTreeMap::new()).await;
        let create = ClientFrame::CreateConversation { request_id: "dm".into(), members: users(&["bob"]), title: None };
        let ServerFrame::Conversation { id: direct, .. } = alice.request(&create).await else { panic!() };
        for client_seq in 1..=5u64 {
            let answer =
                alice.request(&ClientFrame::Send { conversation: direct, client_seq, body: "hi".into() }).await;
            assert!(matches!(answer, ServerFrame::SendOk { .. }), "{answer:?}");
        }
        let (id, _, _) = expect_joined(&mut bob, "bob").await;
        assert_eq!(id, direct);
        let expected: Vec<(ConversationId, u64)> = (1..=5).map(|seq| (direct, seq)).collect();
        assert_eq!(bob.wait_messages(5).await, expected);
        // Live from then on.
        let answer = alice.request(&ClientFrame::Send { conversation: direct, client_seq: 6, body: "hi".into() }).await;
        assert!(matches!(answer, ServerFrame::SendOk { seq: 6, .. }), "{answer:?}");
        assert_eq!(bob.wait_messages(6).await.last(), Some(&(direct, 6)));
        assert!(bob.read_for(Duration::from_millis(1500)).await.is_none(), "no duplicate");
        cluster.shutdown().await;
    });
}
