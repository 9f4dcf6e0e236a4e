//! The browser edge on real (in-process) nodes: WebSocket, SSE and long-poll each pass the
//! same conversation test as QUIC (a conversation created and joined live across nodes,
//! sends delivered once and in order, resume after a dropped connection with no gap and no
//! duplicate, bad frames answered with typed errors), and HTTP-level bad input (no token, a
//! forged one, someone else's session) is refused with typed errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use natter_node::rate::RateLimits;
use natter_proto::frames::{ClientFrame, PresencePrivacy, PresenceStatus, ServerFrame};
use natter_proto::json::{decode_server, encode_client};
use natter_proto::{ConversationId, DeviceId, ErrorCode, UserId};
use natter_raft::types::Runtime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use support::{token, InProcess};

mod support;

/// How long a test waits for any one frame.
const FRAME_WAIT: Duration = Duration::from_secs(5);

struct Cluster {
    _dir: tempfile::TempDir,
    http: Vec<SocketAddr>,
    handles: Vec<natter_node::NodeHandle>,
}

impl Cluster {
    async fn shutdown(self) {
        for handle in self.handles {
            handle.shutdown().await;
        }
    }
}

/// `count` nodes in this process serving HTTP on loopback, 8 shards, all ready.
async fn start_cluster(count: u64) -> Cluster {
    start_cluster_limited(count, RateLimits::default()).await
}

/// As [`start_cluster`], with `rate_limits`.
async fn start_cluster_limited(count: u64, rate_limits: RateLimits) -> Cluster {
    let InProcess { dir, handles } = support::start_in_process(count, true, rate_limits).await;
    let http = handles.iter().map(|handle| handle.http_addr().expect("http is on")).collect();
    Cluster { _dir: dir, http, handles }
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(Runtime::scope(6, future))
}

/// One HTTP/1.0 request; the whole response as (status, headers, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {target} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Sse,
    Poll,
}

/// A browser's connection, whichever transport carries it. Server frames arrive on `frames`
/// from a reader task; each carries its event id for SSE and poll (0 for WebSocket).
struct Browser {
    transport: Transport,
    addr: SocketAddr,
    user: String,
    /// The HTTP session (SSE and poll).
    session: Option<String>,
    ws: Option<
        futures::stream::SplitSink<
            tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
            Message,
        >,
    >,
    frames: mpsc::UnboundedReceiver<(u64, ServerFrame)>,
    reader: Option<tokio::task::JoinHandle<()>>,
    /// The last event id handed to the test.
    last_event: u64,
    /// Messages seen while waiting for something else.
    messages: Vec<natter_proto::MessageRecord>,
    /// Presence frames, in arrival order.
    presence: Vec<ServerFrame>,
}

impl Browser {
    /// Connects and says hello with `resume`; returns the client and its `welcome`.
    async fn hello(
        transport: Transport,
        addr: SocketAddr,
        user: &str,
        resume: BTreeMap<ConversationId, u64>,
    ) -> (Browser, ServerFrame) {
        let mut browser = Browser::connect(transport, addr, user).await;
        browser.send(&ClientFrame::Hello { device: DeviceId::new("web-1").unwrap(), resume, token: None }).await;
        let welcome = browser.next().await.expect("a welcome");
        (browser, welcome)
    }

    async fn connect(transport: Transport, addr: SocketAddr, user: &str) -> Browser {
        let (sender, frames) = mpsc::unbounded_channel();
        let mut browser = Browser {
            transport,
            addr,
            user: user.to_owned(),
            session: None,
            ws: None,
            frames,
            reader: None,
            last_event: 0,
            messages: Vec::new(),
            presence: Vec::new(),
        };
        match transport {
            Transport::WebSocket => {
                let url = format!("ws://{addr}/v1/ws?token={}", token(user));
                let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                let (sink, mut stream) = socket.split();
                browser.ws = Some(sink);
                browser.reader = Some(tokio::spawn(async move {
                    while let Some(Ok(message)) = stream.next().await {
                        if let Message::Text(text) = message {
                            let _ = sender.send((0, decode_server(text.as_str()).expect("server frames decode")));
                        }
                    }
                }));
            }
            Transport::Sse | Transport::Poll => {
                let (status, _, body) =
                    http(addr, "POST", &format!("/v1/sessions?token={}", token(user)), &[], "").await;
                assert_eq!(status, 200, "{body}");
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                browser.session = Some(answer["session"].as_str().unwrap().to_owned());
                browser.start_reader(0, sender);
            }
        }
        browser
    }

    /// Starts reading the HTTP session's frames after event `after`.
    fn start_reader(&mut self, after: u64, sender: mpsc::UnboundedSender<(u64, ServerFrame)>) {
        let (addr, session, user) = (self.addr, self.session.clone().unwrap(), self.user.clone());
        self.reader = Some(match self.transport {
            Transport::Sse => tokio::spawn(read_events(addr, session, user, after, sender)),
            Transport::Poll => tokio::spawn(read_polls(addr, session, user, after, sender)),
            Transport::WebSocket => unreachable!("websockets read their socket"),
        });
    }

    async fn send_text(&mut self, text: String) {
        match self.transport {
            Transport::WebSocket => self.ws.as_mut().unwrap().send(Message::Text(text.into())).await.unwrap(),
            Transport::Sse | Transport::Poll => {
                let target = format!("/v1/send?session={}&token={}", self.session.as_ref().unwrap(), token(&self.user));
                let (status, _, body) = http(self.addr, "POST", &target, &[], &text).await;
                assert_eq!(status, 202, "{body}");
            }
        }
    }

    async fn send(&mut self, frame: &ClientFrame) {
        self.send_text(encode_client(frame)).await;
    }

    /// The next server frame, or `None` if none comes in time. Presence frames are kept in
    /// `presence` instead.
    async fn next(&mut self) -> Option<ServerFrame> {
        loop {
            let (id, frame) = tokio::time::timeout(FRAME_WAIT, self.frames.recv()).await.ok().flatten()?;
            if self.transport != Transport::WebSocket {
                assert_eq!(id, self.last_event + 1, "event ids are consecutive, none repeated");
                self.last_event = id;
            }
            match frame {
                ServerFrame::Presence { .. } => self.presence.push(frame),
                frame => return Some(frame),
            }
        }
    }

    /// Sends `frame` and returns the first answer that is not a pushed `message`.
    async fn request(&mut self, frame: &ClientFrame) -> ServerFrame {
        self.send(frame).await;
        self.answer().await
    }

    /// Creates a conversation with `member` (a group when it has a `title`); its id.
    async fn create(&mut self, member: &str, title: Option<&str>) -> ConversationId {
        let create = ClientFrame::CreateConversation {
            request_id: format!("create-{member}"),
            members: vec![UserId::new(member).unwrap()],
            title: title.map(str::to_owned),
        };
        match self.request(&create).await {
            ServerFrame::Conversation { id, .. } => id,
            other => panic!("no conversation: {other:?}"),
        }
    }

    /// The next frame that is not a pushed `message`.
    async fn answer(&mut self) -> ServerFrame {
        loop {
            match self.next().await.expect("an answer") {
                ServerFrame::Message(message) => self.messages.push(message),
                answer => return answer,
            }
        }
    }

    /// Reads until the last presence frame about `user` has `status` (other frames are
    /// dropped); false if that does not happen within 10 s.
    async fn wait_presence(&mut self, user: &str, status: PresenceStatus) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let last = self.presence.iter().rev().find_map(|frame| match frame {
                ServerFrame::Presence { user: who, status, .. } if who.as_str() == user => Some(*status),
                _ => None,
            });
            if last == Some(status) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            let _ = tokio::time::timeout_at(deadline, self.next()).await;
        }
    }

    /// Reads until `count` messages arrived in all; their (seq, body).
    async fn wait_messages(&mut self, count: usize) -> Vec<(u64, String)> {
        while self.messages.len() < count {
            match self.next().await {
                Some(ServerFrame::Message(message)) => self.messages.push(message),
                Some(ServerFrame::Receipt { .. }) => {}
                Some(other) => panic!("expected a message, got {other:?}"),
                None => break,
            }
        }
        self.messages.iter().map(|message| (message.seq, message.body.clone())).collect()
    }

    /// Drops the connection (the reader and, for WebSocket, the socket) without a goodbye.
    async fn drop_connection(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
            let _ = reader.await;
        }
        self.ws = None;
    }

    /// For SSE and poll: reads the same session again from the last event the test saw.
    fn reattach(&mut self) {
        let (sender, frames) = mpsc::unbounded_channel();
        self.frames = frames;
        self.start_reader(self.last_event, sender);
    }
}

/// Streams `GET /v1/events` and forwards each event; resumes after `after` (`Last-Event-ID`).
async fn read_events(
    addr: SocketAddr,
    session: String,
    user: String,
    after: u64,
    sender: mpsc::UnboundedSender<(u64, ServerFrame)>,
) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/events?session={session} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nLast-Event-ID: {after}\r\n\r\n",
        token(&user)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next_line().await.unwrap().unwrap();
    assert!(status.contains(" 200 "), "{status}");
    // Headers end at the first empty line.
    while !lines.next_line().await.unwrap().unwrap().is_empty() {}
    let mut id = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(value) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
            id = value.trim().parse().unwrap();
        } else if let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
            let _ = sender.send((id, decode_server(data).expect("server frames decode")));
        }
    }
}

/// Long-polls `GET /v1/poll` from `after` on, forwarding each frame with its id.
async fn read_polls(
    addr: SocketAddr,
    session: String,
    user: String,
    mut after: u64,
    sender: mpsc::UnboundedSender<(u64, ServerFrame)>,
) {
    loop {
        let target = format!("/v1/poll?session={session}&after={after}&token={}", token(&user));
        let (status, _, body) = http(addr, "GET", &target, &[], "").await;
        if status != 200 {
            return;
        }
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let frames = answer["frames"].as_array().unwrap();
        let next = answer["next"].as_u64().unwrap();
        for (offset, frame) in frames.iter().enumerate() {
            let id = next - (frames.len() - 1 - offset) as u64;
            let _ = sender.send((id, decode_server(&frame.to_string()).expect("server frames decode")));
        }
        after = next;
    }
}

fn error_code(frame: &ServerFrame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

fn send(conversation: ConversationId, client_seq: u64, body: &str) -> ClientFrame {
    ClientFrame::Send { conversation, client_seq, body: body.into() }
}

/// The conversation test every transport passes: alice on node 1 creates a conversation with
/// bob, who is on node 2 and joins it live; sends are acknowledged after commit and delivered
/// once, in order; bob drops his connection, misses messages, and gets exactly those after
/// he comes back; bad frames get typed errors and the session lives on.
async fn conversation_test(transport: Transport) {
    let cluster = start_cluster(2).await;
    let (node1, node2) = (cluster.http[0], cluster.http[1]);
    let (mut alice, welcome) = Browser::hello(transport, node1, "alice", BTreeMap::new()).await;
    assert!(matches!(welcome, ServerFrame::Welcome { ref user, .. } if user.as_str() == "alice"), "{welcome:?}");
    let (mut bob, _) = Browser::hello(transport, node2, "bob", BTreeMap::new()).await;

    let create = ClientFrame::CreateConversation {
        request_id: "r1".into(),
        members: vec![UserId::new("bob").unwrap()],
        title: Some("plans".into()),
    };
    let created = alice.request(&create).await;
    let ServerFrame::Conversation { id: conversation, request_id, .. } = created else { panic!("{created:?}") };
    assert_eq!(request_id.as_deref(), Some("r1"));
    let joined = bob.next().await.expect("bob hears of the conversation");
    assert!(
        matches!(joined, ServerFrame::Conversation { id, request_id: None, .. } if id == conversation),
        "{joined:?}"
    );

    for (client_seq, body) in [(1, "one"), (2, "two"), (3, "three")] {
        let answer = alice.request(&send(conversation, client_seq, body)).await;
        assert!(matches!(answer, ServerFrame::SendOk { seq, .. } if seq == client_seq), "{answer:?}");
    }
    // A resend of a client_seq is answered with the original seq and appends nothing.
    let resent = alice.request(&send(conversation, 2, "two")).await;
    assert!(matches!(resent, ServerFrame::SendOk { seq: 2, .. }), "{resent:?}");
    let expected: Vec<(u64, String)> = [(1, "one"), (2, "two"), (3, "three")].map(|(s, b)| (s, b.to_owned())).to_vec();
    assert_eq!(bob.wait_messages(3).await, expected);

    // Typing is relayed to the other member's node, and never to the typist.
    alice.send(&ClientFrame::Typing { conversation, active: true }).await;
    let typing = bob.answer().await;
    let alice_id = UserId::new("alice").unwrap();
    assert_eq!(typing, ServerFrame::Typing { conversation, user: alice_id.clone(), active: true });
    alice.send(&ClientFrame::Typing { conversation, active: false }).await;
    assert_eq!(bob.answer().await, ServerFrame::Typing { conversation, user: alice_id, active: false });
    // Settings are stored on the user's shard and echoed.
    let settings = ClientFrame::Settings { request_id: "s1".into(), presence_privacy: PresencePrivacy::Contacts };
    let stored = alice.request(&settings).await;
    assert_eq!(stored, ServerFrame::Settings { request_id: "s1".into(), presence_privacy: PresencePrivacy::Contacts });

    // Bob's connection drops; alice sends two more; bob comes back and gets exactly those.
    bob.drop_connection().await;
    for (client_seq, body) in [(4, "four"), (5, "five")] {
        let answer = alice.request(&send(conversation, client_seq, body)).await;
        assert!(matches!(answer, ServerFrame::SendOk { seq, .. } if seq == client_seq), "{answer:?}");
    }
    let mut bob = if transport == Transport::WebSocket {
        // A new socket is a new session: bob resumes from his cursor.
        let (bob, welcome) = Browser::hello(transport, node2, "bob", BTreeMap::from([(conversation, 3)])).await;
        assert!(matches!(welcome, ServerFrame::Welcome { .. }), "{welcome:?}");
        bob
    } else {
        // The HTTP session outlived the request: reading it again from the last event seen
        // gives what was missed, without a new hello.
        bob.reattach();
        bob
    };
    bob.messages.clear();
    let caught_up = bob.wait_messages(2).await;
    assert_eq!(caught_up, vec![(4, "four".to_owned()), (5, "five".to_owned())]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                match bob.next().await {
                    Some(ServerFrame::Message(message)) => return message,
                    Some(_) => continue,
                    None => std::future::pending().await,
                }
            }
        })
        .await
        .is_err(),
        "no duplicate after the resume"
    );

    // Bad input: typed errors, and the session lives on.
    alice.send_text("not json".into()).await;
    let answer = alice.answer().await;
    assert_eq!(error_code(&answer), Some(ErrorCode::BadFrame), "{answer:?}");
    alice.send_text(r#"{"type":"launch_rockets"}"#.into()).await;
    assert_eq!(error_code(&alice.answer().await), Some(ErrorCode::BadFrame));
    let huge = alice.request(&send(conversation, 6, &"x".repeat(70 * 1024))).await;
    assert_eq!(error_code(&huge), Some(ErrorCode::TooLarge), "{huge:?}");
    let stranger = ConversationId::from_bytes([9; 16]);
    let refused = alice.request(&send(stranger, 7, "hello?")).await;
    assert_eq!(error_code(&refused), Some(ErrorCode::NotMember), "{refused:?}");
    let pong = alice.request(&ClientFrame::Ping { nonce: 42 }).await;
    assert_eq!(pong, ServerFrame::Pong { nonce: 42 });

    alice.drop_connection().await;
    bob.drop_connection().await;
    cluster.shutdown().await;
}

#[test]
fn websocket_passes_the_conversation_test() {
    run(conversation_test(Transport::WebSocket));
}

#[test]
fn sse_passes_the_conversation_test() {
    run(conversation_test(Transport::Sse));
}

#[test]
fn long_poll_passes_the_conversation_test() {
    run(conversation_test(Transport::Poll));
}

#[test]
fn an_http_session_resumes_by_cursor_when_its_events_are_gone() {
    run(async {
        let cluster = start_cluster(1).await;
        let node = cluster.http[0];
        let (mut alice, _) = Browser::hello(Transport::Sse, node, "alice", BTreeMap::new()).await;
        let conversation = alice.create("bob", None).await;
        let ok = alice.request(&send(conversation, 1, "first")).await;
        assert!(matches!(ok, ServerFrame::SendOk { seq: 1, .. }), "{ok:?}");

        // A poll that repeats `after` (its answer was lost) gets the same frames again.
        let session = alice.session.clone().unwrap();
        alice.drop_connection().await;
        let target = format!("/v1/poll?session={session}&after=0&wait_ms=100&token={}", token("alice"));
        let (_, _, first) = http(node, "GET", &target, &[], "").await;
        let (_, _, again) = http(node, "GET", &target, &[], "").await;
        assert_eq!(first, again, "nothing acknowledged, nothing lost");
        assert!(first.contains(r#""type":"welcome""#), "{first}");

        // Bob cannot read alice's session, and a bad or missing token is refused.
        let stolen = format!("/v1/poll?session={session}&after=0&wait_ms=100&token={}", token("bob"));
        let (status, _, body) = http(node, "GET", &stolen, &[], "").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains(r#""code":"not_found""#), "{body}");
        let (status, _, body) = http(node, "GET", &format!("/v1/poll?session={session}"), &[], "").await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains(r#""code":"unauthenticated""#), "{body}");
        let forged = format!("{}x", token("alice"));
        let (status, _, _) =
            http(node, "POST", "/v1/sessions", &[("Authorization", &format!("Bearer {forged}"))], "").await;
        assert_eq!(status, 401);
        let (status, _, body) = http(node, "GET", "/v1/ws", &[], "").await;
        assert!(status == 401 || status == 400, "{status} {body}");
        cluster.shutdown().await;
    });
}

/// The value of header `name` in a response head, if present.
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[test]
fn the_web_client_is_served_at_the_root() {
    run(async {
        let cluster = start_cluster(1).await;
        let node = cluster.http[0];
        let (status, head, page) = http(node, "GET", "/", &[], "").await;
        assert_eq!(status, 200);
        assert_eq!(header_value(&head, "content-type"), Some("text/html; charset=utf-8"), "{head}");
        assert!(page.contains(r#"<script type="module" src="/web/app.js">"#), "the page loads app.js as a module");
        // Everything the page and its modules name is served, with its type and the same policy.
        let modules = ["/web/app.js", "/web/state.js", "/web/transport.js", "/web/render.js"];
        let mut texts = std::collections::BTreeMap::new();
        for (path, content_type) in modules
            .iter()
            .map(|path| (*path, "text/javascript; charset=utf-8"))
            .chain([("/web/style.css", "text/css; charset=utf-8")])
        {
            assert!(page.contains(&format!(r#""{path}""#)), "index.html names {path}");
            let (status, head, body) = http(node, "GET", path, &[], "").await;
            assert_eq!(status, 200, "{path}: {head}");
            assert_eq!(header_value(&head, "content-type"), Some(content_type), "{path}: {head}");
            assert_eq!(header_value(&head, "x-content-type-options"), Some("nosniff"), "{path}: {head}");
            texts.insert(path, body);
        }
        for (path, body) in &texts {
            for import in body.lines().filter_map(|line| line.split_once(" from './")).map(|(_, rest)| rest) {
                let name = import.split_once('\'').map(|(name, _)| name).unwrap_or(import);
                assert!(texts.contains_key(format!("/web/{name}").as_str()), "{path} imports ./{name}, not served");
            }
        }
        assert!(texts["/web/transport.js"].contains("/v1/ws"), "the client talks to the websocket edge");
        // No inline script or style: the policy allows only the node's own files.
        let policy = header_value(&head, "content-security-policy").expect("a content-security-policy");
        assert_eq!(policy, natter_node::edge::web::WEB_CLIENT_CSP);
        for directive in ["script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
            assert!(policy.contains(directive), "{policy}");
        }
        assert!(!page.contains("<script>") && !page.contains("<style>") && !page.contains(" style="), "{page}");
        let (status, _, _) = http(node, "GET", "/web/missing.js", &[], "").await;
        assert_eq!(status, 404);
        cluster.shutdown().await;
    });
}

/// Creates alice's 1:1 with bob over a WebSocket to `node`.
async fn alice_and_bob(node: SocketAddr) -> (Browser, ConversationId) {
    let (mut alice, _) = Browser::hello(Transport::WebSocket, node, "alice", BTreeMap::new()).await;
    let id = alice.create("bob", None).await;
    (alice, id)
}

/// The node's `natter_proposals_committed_total`.
async fn proposals_committed(node: SocketAddr) -> u64 {
    let (status, _, body) = http(node, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    let line = body.lines().find(|line| line.starts_with("natter_proposals_committed_total ")).expect("the metric");
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_contacts_only_user_shows_once_a_one_to_one_is_created() {
    run(async {
        // Carol shows her presence to contacts only. Alice shares a group with her and sees
        // her offline; once alice creates their 1:1, she sees her online (her presence did not
        // change, so only a fresh look at what the node knows can show it).
        let cluster = start_cluster(1).await;
        let node = cluster.http[0];
        let (mut carol, _) = Browser::hello(Transport::WebSocket, node, "carol", BTreeMap::new()).await;
        let settings = ClientFrame::Settings { request_id: "s".into(), presence_privacy: PresencePrivacy::Contacts };
        assert!(matches!(carol.request(&settings).await, ServerFrame::Settings { .. }));
        let (mut alice, _) = Browser::hello(Transport::WebSocket, node, "alice", BTreeMap::new()).await;
        alice.create("carol", Some("group")).await;
        assert!(alice.wait_presence("carol", PresenceStatus::Offline).await, "hidden from a group member");
        alice.create("carol", None).await;
        assert!(alice.wait_presence("carol", PresenceStatus::Online).await, "shown to a contact: {:?}", alice.presence);
        cluster.shutdown().await;
    });
}

#[test]
fn a_window_of_sends_is_batched_and_keeps_its_order() {
    run(async {
        // 300 sends written at once, alternating between two conversations, on a node that
        // leads some shards and forwards to others: each is answered once; per conversation
        // the answers come in the order sent and the seqs follow that order; the node proposes
        // them in a few batches rather than one by one.
        let limits = RateLimits {
            sends_per_second_per_connection: 100_000,
            sends_per_second_per_user: 100_000,
            ..RateLimits::default()
        };
        let cluster = start_cluster_limited(3, limits).await;
        let node = cluster.http[0];
        let (mut alice, with_bob) = alice_and_bob(node).await;
        let with_carol = alice.create("carol", None).await;
        let before = proposals_committed(node).await;
        let total = 300u64;
        let to = |client_seq: u64| if client_seq % 2 == 0 { with_bob } else { with_carol };
        for client_seq in 1..=total {
            alice.send(&send(to(client_seq), client_seq, &format!("m{client_seq}"))).await;
        }
        let mut answered: BTreeMap<ConversationId, Vec<(u64, u64)>> = BTreeMap::new();
        for _ in 1..=total {
            match alice.answer().await {
                ServerFrame::SendOk { conversation, client_seq, seq, .. } => {
                    assert_eq!(conversation, to(client_seq));
                    answered.entry(conversation).or_default().push((client_seq, seq));
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
        for (conversation, answers) in &answered {
            let expected: Vec<(u64, u64)> = (1..=total).filter(|c| to(*c) == *conversation).zip(1..).collect();
            assert_eq!(answers, &expected, "{conversation}: answered in the order sent, seqs in that order");
        }
        let proposals = proposals_committed(node).await - before;
        assert!(proposals <= total / 5, "{total} sends took {proposals} proposals");
        cluster.shutdown().await;
    });
}

#[test]
fn sends_over_the_rate_wait_their_turn_and_keep_their_order() {
    run(async {
        // 20 sends a second, bursts of 40: 60 sends at once are all committed, none refused,
        // the last 20 slowed down (each waits ~50 ms, under the 250 ms the server waits).
        let limits = RateLimits { sends_per_second_per_connection: 20, ..RateLimits::default() };
        let cluster = start_cluster_limited(1, limits).await;
        let (mut alice, conversation) = alice_and_bob(cluster.http[0]).await;
        for client_seq in 1..=60 {
            alice.send(&send(conversation, client_seq, &format!("m{client_seq}"))).await;
        }
        for client_seq in 1..=60 {
            let answer = alice.answer().await;
            assert!(
                matches!(answer, ServerFrame::SendOk { client_seq: c, seq, .. } if c == client_seq && seq == client_seq),
                "send {client_seq}: {answer:?}"
            );
        }
        cluster.shutdown().await;
    });
}

#[test]
fn rate_limited_sends_are_refused_with_a_wait_and_nothing_is_lost() {
    run(async {
        // 2 sends a second: a turn is 500 ms away, longer than the server waits, so sends past
        // the burst of 4 are refused with how long to wait. Resending each refused one after
        // its wait gets it committed: every client_seq once, no seq twice, no gap.
        let limits = RateLimits { sends_per_second_per_connection: 2, ..RateLimits::default() };
        let cluster = start_cluster_limited(1, limits).await;
        let (mut alice, conversation) = alice_and_bob(cluster.http[0]).await;
        let total = 10u64;
        let mut pending: Vec<u64> = (1..=total).collect();
        let mut committed: BTreeMap<u64, u64> = BTreeMap::new();
        let mut refusals = 0;
        while !pending.is_empty() {
            for &client_seq in &pending {
                alice.send(&send(conversation, client_seq, &format!("m{client_seq}"))).await;
            }
            let mut waits = Vec::new();
            let mut refused = Vec::new();
            for _ in 0..pending.len() {
                match alice.answer().await {
                    ServerFrame::SendOk { client_seq, seq, .. } => {
                        assert!(committed.insert(client_seq, seq).is_none(), "client_seq {client_seq} answered twice");
                    }
                    ServerFrame::Error {
                        code: ErrorCode::RateLimited,
                        client_seq: Some(client_seq),
                        retry_after_ms,
                        ..
                    } => {
                        refused.push(client_seq);
                        waits.push(retry_after_ms.expect("a rate_limited error says when to retry"));
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            refusals += refused.len();
            if let Some(&wait) = waits.iter().max() {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            pending = refused;
        }
        assert!(refusals >= 6, "only {refusals} refusals: the limit did not bind");
        let mut seqs: Vec<u64> = committed.values().copied().collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "every send committed once, no gap");
        cluster.shutdown().await;
    });
}
