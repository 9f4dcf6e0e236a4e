//! The browser edge (`/v1/ws`): WebSocket sessions speaking the JSON frames of
//! `natter_proto::json`, opened by this process on `natter-node` processes, as a browser
//! opens them (upgrade with `?token=`, `hello` without a token, `welcome`).
//!
//! - [`run_idle_websockets`]: many idle WebSocket sessions on one node, and that node's
//!   resident memory and CPU as they are added (DESIGN's target: ≤ 8 KiB per connection).
//! - [`run_fanout`]: one group conversation whose members are each online on a WebSocket,
//!   spread over the nodes, and one sender on a WebSocket of its own: committed messages per
//!   second, deliveries per second, send→delivery latency, and a check that every member got
//!   every message exactly once and in seq order.
//!
//! Every WebSocket is a TCP connection, so a file descriptor here and one in the node:
//! [`raise_open_files`] lifts this process's soft limit before the nodes start, and they
//! inherit it.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use natter_proto::json::{decode_server, encode_client};
use natter_proto::{ClientFrame, ConversationId, ConversationSummary, DeviceId, ErrorCode, ServerFrame, UserId};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::clients::{
    body_stamp, cpu_percent, grow_idle, open_all, process_cpu_time, stamped_body, IdleSample, IdleTiming,
    ProcessCluster, DRAIN_TIMEOUT, IDLE_SETTLE, SEND_ERRORS_PER_SENDER_MAX,
};
use crate::histogram::LatencyHistogram;

/// DESIGN's budget for one idle WebSocket session on a node, KiB.
pub const IDLE_WEBSOCKET_KIB_TARGET: f64 = 8.0;
/// The window over which an idle node's CPU use is measured, after [`IDLE_SETTLE`].
pub const IDLE_CPU_WINDOW: Duration = Duration::from_secs(10);
/// How long one WebSocket may take to connect, upgrade and be welcomed.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the members may take to learn of the conversation after it is created.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the sender waits for the answers to its last window of sends after the run: on
/// a saturated cluster 64 sends at 6 a second take 11 s.
pub const SEND_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors this process keeps beyond its WebSockets (runtime, logs, the nodes'
/// pipes, libraries).
pub const OPEN_FILES_SPARE: u64 = 256;
/// WebSockets opened from one loopback source address (127.0.0.1, then .2, …): each takes an
/// ephemeral port, and Linux hands out about 28,000 per source address by default.
const CONNECTIONS_PER_SOURCE_ADDRESS: usize = 20_000;
/// tungstenite's read buffer per WebSocket here (its default, 128 KiB, would make 15,000 idle
/// sockets cost this process 1.9 GB of address space); larger messages still arrive.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Members whose failures are printed in full; the rest are counted.
const MEMBER_FAILURES_SHOWN: usize = 5;

/// A WebSocket session of this process.
pub type Socket = WebSocketStream<TcpStream>;

/// Raises this process's soft limit on open files to its hard limit if that is needed for
/// `needed` descriptors, and fails when even the hard limit is too low. Child processes (the
/// nodes, started afterwards) inherit the raised limit. Returns the soft limit now in force.
pub fn raise_open_files(needed: u64) -> anyhow::Result<u64> {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(soft);
    }
    // An unlimited hard limit still cannot exceed the kernel's `nr_open`; asking for what is
    // needed is enough.
    let raised = limit.maximum.unwrap_or(needed);
    if raised < needed {
        bail!(
            "{needed} open files are needed (a socket per WebSocket, here and in the node), but the hard limit is \
             {raised}; raise it (ulimit -Hn, or LimitNOFILE= for a service) and run again"
        );
    }
    setrlimit(Resource::Nofile, Rlimit { current: Some(raised), maximum: limit.maximum })
        .with_context(|| format!("raising the open-files limit from {soft} to {raised}"))?;
    Ok(raised)
}

/// The URL of node `node`'s WebSocket route for `user`, with a fresh token.
fn websocket_url(cluster: &ProcessCluster, node: usize, user: &UserId) -> String {
    format!("ws://{}/v1/ws?token={}", cluster.http_addr(node), cluster.token(user))
}

/// Where and as whom one WebSocket connects: the node's address, the URL with the token,
/// the device, and the loopback source address.
#[derive(Debug, Clone)]
struct Opening {
    server: SocketAddr,
    url: String,
    device: DeviceId,
    source: Ipv4Addr,
}

impl Opening {
    /// The `index`th WebSocket of a run, for `user` on node `node`.
    fn new(cluster: &ProcessCluster, index: usize, node: usize, user: &UserId, device: &str) -> anyhow::Result<Self> {
        let [a, b, c, d] = Ipv4Addr::LOCALHOST.octets();
        let offset = u8::try_from(index / CONNECTIONS_PER_SOURCE_ADDRESS).context("too many connections")?;
        Ok(Self {
            server: cluster.http_addr(node),
            url: websocket_url(cluster, node, user),
            device: DeviceId::new(device)?,
            source: Ipv4Addr::new(a, b, c, d + offset),
        })
    }
}

/// Opens one WebSocket session: TCP from the opening's source address, upgrade, `hello`,
/// `welcome`. Returns the socket and the conversations `welcome` listed.
async fn open_websocket(opening: Opening) -> anyhow::Result<(Socket, Vec<ConversationSummary>)> {
    let open = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(opening.source.into(), 0))?;
        let stream = socket.connect(opening.server).await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let (mut socket, _) = tokio_tungstenite::client_async_with_config(opening.url, stream, Some(config)).await?;
        let hello = ClientFrame::Hello { device: opening.device, resume: BTreeMap::new(), token: None };
        send_frame(&mut socket, &hello).await?;
        match next_frame(&mut socket).await? {
            Some(ServerFrame::Welcome { conversations, .. }) => Ok((socket, conversations)),
            Some(other) => bail!("expected welcome, got {other:?}"),
            None => bail!("the node closed the websocket before welcome"),
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, open).await.context("no welcome in time")?
}

/// Sends one client frame as a JSON text message.
async fn send_frame(socket: &mut Socket, frame: &ClientFrame) -> anyhow::Result<()> {
    socket.send(Message::Text(encode_client(frame).into())).await.context("writing to the websocket")
}

/// The next server frame, skipping pings and pongs; `None` once the node closed the socket.
async fn next_frame(socket: &mut Socket) -> anyhow::Result<Option<ServerFrame>> {
    match next_text(socket).await? {
        Some(text) => Ok(Some(decode_server(&text)?)),
        None => Ok(None),
    }
}

/// The JSON text of the next server frame, skipping pings and pongs; `None` once the node
/// closed the socket.
async fn next_text(socket: &mut Socket) -> anyhow::Result<Option<Utf8Bytes>> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(Some(text)),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Binary(_))) => bail!("the node sent a binary message; frames are json text"),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Err(error)) => return Err(error).context("reading the websocket"),
        }
    }
}

/// Samples node 0 with no connection, then opens WebSocket sessions on it, one user each,
/// until each count of `steps` (ascending) is reached; after each it waits [`IDLE_SETTLE`],
/// measures the node's CPU over [`IDLE_CPU_WINDOW`] and reads its resident memory.
pub async fn run_idle_websockets(cluster: &ProcessCluster, steps: &[usize]) -> anyhow::Result<Vec<IdleSample>> {
    let timing = IdleTiming { settle: IDLE_SETTLE, cpu_window: IDLE_CPU_WINDOW };
    let (samples, sockets) = grow_idle(cluster, steps, "websocket", timing, |indexes| {
        let openings = indexes
            .map(|index| Opening::new(cluster, index, 0, &UserId::new(format!("idlews{index}"))?, "idle"))
            .collect::<anyhow::Result<Vec<_>>>();
        async move {
            let opened = open_all(openings?, "idle websockets", open_websocket).await?;
            anyhow::Ok(opened.into_iter().map(|(socket, _)| socket).collect())
        }
    })
    .await?;
    drop(sockets);
    Ok(samples)
}

/// The resident memory each idle WebSocket added on the node, KiB: the last sample against
/// the first (no connection).
pub fn idle_kib_per_connection(samples: &[IdleSample]) -> Option<f64> {
    let (first, last) = (samples.first()?, samples.last()?);
    let added = last.sessions.checked_sub(first.sessions).filter(|&added| added > 0)?;
    Some((last.rss_kib as f64 - first.rss_kib as f64) / added as f64)
}

/// What a fan-out run measured.
#[derive(Debug, Clone)]
pub struct FanoutReport {
    /// Members of the conversation, each with one WebSocket.
    pub members: usize,
    /// Node processes the members are spread over.
    pub nodes: usize,
    /// Sends the sender keeps outstanding.
    pub window: usize,
    /// Sends the node refused with `rate_limited` (each made again after the wait).
    pub rate_limited: u64,
    /// Messages acknowledged with `send_ok` (their seqs are 1..=committed).
    pub committed: u64,
    /// From the first send to the last `send_ok`.
    pub sending: Duration,
    /// From the first send to the last delivery to any member.
    pub delivering: Duration,
    /// send → `send_ok`, per committed message.
    pub acks: LatencyHistogram,
    /// send → a member's client read the `message` frame, per delivery.
    pub deliveries: LatencyHistogram,
    /// Members that missed a message, got one twice or out of order, or lost their socket.
    pub members_wrong: usize,
    /// What went wrong, for the first few members (and the sender).
    pub failures: Vec<String>,
    /// The nodes' CPU use, added up, while the group sat idle before sending (the `settle`
    /// time; joining makes every member watch every other member's presence, and the first
    /// round of it goes out then), percent of one core.
    pub nodes_cpu_idle_percent: f64,
    /// The nodes' CPU use, added up, from the first send until the last member was done.
    pub nodes_cpu_percent: f64,
    /// This process's CPU use over the same time (the members' clients read and decode
    /// every frame).
    pub bench_cpu_percent: f64,
}

impl FanoutReport {
    /// Committed messages per second.
    pub fn messages_per_second(&self) -> f64 {
        per_second(self.committed, self.sending)
    }

    /// Messages read by members per second (messages × members when every one arrives).
    pub fn deliveries_per_second(&self) -> f64 {
        per_second(self.deliveries.count(), self.delivering)
    }

    /// True when the sender had no failure and every member got every committed message
    /// exactly once and in order.
    pub fn verified(&self) -> bool {
        self.members_wrong == 0 && self.failures.is_empty()
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        let ms = crate::histogram::milliseconds;
        format!(
            "ws-fanout: {} members on {} nodes, window {}: {} messages ({} sends rate-limited), {:.0} msgs/s committed, \
             {:.0} deliveries/s, send→delivery p50={:.3} p99={:.3} ms, {}",
            self.members,
            self.nodes,
            self.window,
            self.committed,
            self.rate_limited,
            self.messages_per_second(),
            self.deliveries_per_second(),
            ms(self.deliveries.quantile(0.5)),
            ms(self.deliveries.quantile(0.99)),
            if self.verified() {
                "every member got every message exactly once, in seq order"
            } else {
                "DELIVERY CHECK FAILED"
            },
        )
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds == 0.0 {
        0.0
    } else {
        count as f64 / seconds
    }
}

/// What a member's client saw.
struct MemberOutcome {
    deliveries: LatencyHistogram,
    /// The highest seq received in order.
    last_seq: u64,
    /// `message` frames of the conversation received.
    received: u64,
    last_delivery: Option<Instant>,
    /// The first thing that was wrong (a gap, a repeat, a lost socket).
    failure: Option<String>,
}

impl MemberOutcome {
    /// The member's verdict once `committed` messages were acknowledged: every one of them,
    /// each once, in order, and nothing else.
    fn check(&self, committed: u64) -> Result<(), String> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if self.last_seq != committed || self.received != committed {
            return Err(format!(
                "received {} messages up to seq {}, expected seqs 1..={committed} once each",
                self.received, self.last_seq
            ));
        }
        Ok(())
    }
}

/// A member's client: reads every frame until it has every committed message. It reports the
/// conversation on `joined`, never waiting on it, when it learns of it (from `welcome`, or the
/// `conversation` frame, which for the creator answers `create`). It stops when `committed`
/// says how many messages were committed and it has them all, [`DRAIN_TIMEOUT`] after that at
/// the latest, or when the run gives up (`committed` is dropped).
async fn run_member(
    mut socket: Socket,
    welcomed: Vec<ConversationSummary>,
    create: Option<ClientFrame>,
    joined: mpsc::Sender<Result<ConversationId, String>>,
    mut committed: watch::Receiver<Option<u64>>,
    origin: Instant,
) -> MemberOutcome {
    let mut outcome = MemberOutcome {
        deliveries: LatencyHistogram::default(),
        last_seq: 0,
        received: 0,
        last_delivery: None,
        failure: None,
    };
    let mut conversation = welcomed.first().map(|summary| summary.id);
    if let Some(id) = conversation {
        let _ = joined.try_send(Ok(id));
    }
    if let Some(frame) = create {
        if let Err(error) = send_frame(&mut socket, &frame).await {
            let _ = joined.try_send(Err(format!("create_conversation: {error:#}")));
            outcome.failure = Some(format!("{error:#}"));
            return outcome;
        }
    }
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let target = *committed.borrow();
        if let Some(target) = target {
            if outcome.last_seq >= target {
                break;
            }
        }
        let deadline = drain_deadline;
        let frame = tokio::select! {
            frame = next_frame(&mut socket) => frame,
            changed = committed.changed() => {
                // The run is over, or gave up, when the sender side is gone.
                if changed.is_err() {
                    break;
                }
                drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                continue;
            }
            () = sleep_until_some(deadline) => break,
        };
        match frame {
            Ok(Some(ServerFrame::Message(message))) => {
                if Some(message.conversation) != conversation {
                    outcome
                        .failure
                        .get_or_insert_with(|| format!("a message of {} before joining it", message.conversation));
                    continue;
                }
                if message.seq != outcome.last_seq + 1 {
                    outcome
                        .failure
                        .get_or_insert_with(|| format!("seq {} arrived after seq {}", message.seq, outcome.last_seq));
                }
                outcome.received += 1;
                outcome.last_seq = outcome.last_seq.max(message.seq);
                let now = Instant::now();
                outcome.last_delivery = Some(now);
                match body_stamp(&message.body) {
                    Some(sent) => outcome.deliveries.record((now - origin).saturating_sub(sent)),
                    None => {
                        outcome.failure.get_or_insert_with(|| format!("seq {} carries no send time", message.seq));
                    }
                }
            }
            Ok(Some(ServerFrame::Conversation { id, .. })) if conversation.is_none() => {
                conversation = Some(id);
                let _ = joined.try_send(Ok(id));
            }
            Ok(Some(ServerFrame::Error { code, message, .. })) => {
                let error = format!("error {code:?}: {message}");
                if conversation.is_none() {
                    let _ = joined.try_send(Err(error.clone()));
                }
                outcome.failure.get_or_insert(error);
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                outcome.failure.get_or_insert_with(|| "the node closed the websocket".into());
                break;
            }
            Err(error) => {
                outcome.failure.get_or_insert_with(|| format!("{error:#}"));
                break;
            }
        }
    }
    outcome
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the sender measured.
struct SenderOutcome {
    acks: LatencyHistogram,
    /// The highest seq acknowledged.
    committed: u64,
    /// From the first send to the last `send_ok`.
    elapsed: Duration,
    /// Sends refused with `rate_limited` (and sent again after the wait).
    rate_limited: u64,
    errors: u64,
    first_error: Option<String>,
}

impl SenderOutcome {
    fn fail(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// How long the sender waits after a `rate_limited` refusal that does not say how long.
const RATE_LIMITED_WAIT_DEFAULT: Duration = Duration::from_millis(20);

/// The wait a `rate_limited` error asks for (its `retry_after_ms`, read from the JSON so
/// nodes without the field work too), or [`RATE_LIMITED_WAIT_DEFAULT`].
fn retry_after(error_json: &str) -> Duration {
    serde_json::from_str::<serde_json::Value>(error_json)
        .ok()
        .and_then(|value| value.get("retry_after_ms")?.as_u64())
        .map_or(RATE_LIMITED_WAIT_DEFAULT, Duration::from_millis)
}

/// The sender: `body_bytes`-byte messages to `conversation` for `duration`, keeping `window`
/// sends outstanding (a new one as each `send_ok` arrives), then [`SEND_DRAIN_TIMEOUT`] at
/// most for the last answers. Every body starts with its send time since `origin`. A send refused
/// with `rate_limited` was not done: it goes again, with the same `client_seq` and a new send
/// time, after the wait the node asked for, and no new send goes before it. Refusals halve
/// the window in use and each `send_ok` widens it by one again (up to `window`), so a
/// rate-limited sender settles near the limit instead of having most sends refused.
async fn run_sender(
    socket: &mut Socket,
    conversation: ConversationId,
    window: usize,
    body_bytes: usize,
    duration: Duration,
    origin: Instant,
) -> SenderOutcome {
    let mut outcome = SenderOutcome {
        acks: LatencyHistogram::default(),
        committed: 0,
        elapsed: Duration::ZERO,
        rate_limited: 0,
        errors: 0,
        first_error: None,
    };
    let started = Instant::now();
    let (deadline, drain_deadline) = (started + duration, started + duration + SEND_DRAIN_TIMEOUT);
    // (client_seq, sent at) of every send not yet answered.
    let mut outstanding: Vec<(u64, Instant)> = Vec::with_capacity(window);
    // Refused sends to make again, lowest client_seq first, and when.
    let mut refused: VecDeque<u64> = VecDeque::new();
    let mut paused_until = started;
    let mut window_in_use = window;
    let mut next_client_seq = 1;
    loop {
        let now = Instant::now();
        while outstanding.len() < window_in_use && now >= paused_until && outcome.errors < SEND_ERRORS_PER_SENDER_MAX {
            let client_seq = match refused.pop_front() {
                Some(client_seq) => client_seq,
                None if now < deadline => {
                    next_client_seq += 1;
                    next_client_seq - 1
                }
                None => break,
            };
            let sent = Instant::now();
            let body = stamped_body(sent - origin, body_bytes);
            if let Err(error) = send_frame(socket, &ClientFrame::Send { conversation, client_seq, body }).await {
                outcome.fail(format!("send: {error:#}"));
                return outcome;
            }
            outstanding.push((client_seq, sent));
        }
        if outstanding.is_empty() && (refused.is_empty() || outcome.errors >= SEND_ERRORS_PER_SENDER_MAX) {
            break;
        }
        // Wake when a paused sender may send again, or at the end of the drain.
        let wake = if outstanding.is_empty() { paused_until.min(drain_deadline) } else { drain_deadline };
        let text = match tokio::time::timeout_at(wake, next_text(socket)).await {
            Ok(Ok(Some(text))) => text,
            Ok(Ok(None)) => {
                outcome.fail("the node closed the sender's websocket".into());
                break;
            }
            Ok(Err(error)) => {
                outcome.fail(format!("{error:#}"));
                break;
            }
            Err(_) if Instant::now() < drain_deadline => continue,
            Err(_) => {
                let unanswered = outstanding.len() + refused.len();
                outcome.fail(format!("{unanswered} sends unanswered {SEND_DRAIN_TIMEOUT:?} after the run"));
                break;
            }
        };
        let (client_seq, committed) = match decode_server(&text) {
            Ok(ServerFrame::SendOk { client_seq, seq, .. }) => {
                if seq <= outcome.committed {
                    outcome.fail(format!("seq {seq} acknowledged after seq {}", outcome.committed));
                }
                outcome.committed = outcome.committed.max(seq);
                outcome.elapsed = started.elapsed();
                window_in_use = (window_in_use + 1).min(window);
                (client_seq, true)
            }
            Ok(ServerFrame::Error { client_seq: Some(client_seq), code: ErrorCode::RateLimited, .. }) => {
                outcome.rate_limited += 1;
                window_in_use = (window_in_use / 2).max(1);
                refused.push_back(client_seq);
                refused.make_contiguous().sort_unstable();
                paused_until = paused_until.max(Instant::now() + retry_after(&text));
                (client_seq, false)
            }
            Ok(ServerFrame::Error { client_seq: Some(client_seq), code, message, .. }) => {
                outcome.fail(format!("send {client_seq}: {code:?}: {message}"));
                (client_seq, false)
            }
            Ok(_) => continue,
            Err(error) => {
                outcome.fail(format!("an undecodable frame: {error}"));
                break;
            }
        };
        match outstanding.iter().position(|&(seq, _)| seq == client_seq) {
            Some(position) => {
                let (_, sent) = outstanding.swap_remove(position);
                if committed {
                    outcome.acks.record(sent.elapsed());
                }
            }
            None => outcome.fail(format!("an answer to client_seq {client_seq}, which is not outstanding")),
        }
    }
    outcome
}

/// One fan-out run. `members` users, each with one WebSocket on node `i mod nodes`; the first
/// creates a group conversation with all the others and the run waits until every member
/// learned of it. Then a sender (the first user, a second device, on its own WebSocket to
/// node 0) sends for `duration` with `window` sends outstanding, and every member reads every
/// message. Fails only when the cluster cannot be set up; what was measured (and whether
/// every member got every message once, in order) is in the report.
pub async fn run_fanout(
    cluster: &ProcessCluster,
    members: usize,
    window: usize,
    body_bytes: usize,
    duration: Duration,
    settle: Duration,
) -> anyhow::Result<FanoutReport> {
    let nodes = cluster.node_count();
    let users = (0..members).map(|index| UserId::new(format!("fan{index}"))).collect::<Result<Vec<_>, _>>()?;
    let openings = users
        .iter()
        .enumerate()
        .map(|(index, user)| Opening::new(cluster, index, index % nodes, user, "fan"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let setup = Instant::now();
    let sockets = open_all(openings, "member websockets", open_websocket).await?;
    println!("ws-fanout: {members} member websockets open after {:.2} s", setup.elapsed().as_secs_f64());

    let origin = Instant::now();
    let (joined_sender, mut joined) = mpsc::channel(members);
    let (committed_sender, committed) = watch::channel(None);
    let create = ClientFrame::CreateConversation {
        request_id: "fanout".into(),
        members: users[1..].to_vec(),
        // A title keeps two members a group rather than their 1:1 conversation.
        title: Some("fanout".into()),
    };
    let mut create = Some(create);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|(socket, welcomed)| {
            let member = run_member(socket, welcomed, create.take(), joined_sender.clone(), committed.clone(), origin);
            tokio::spawn(member)
        })
        .collect();
    drop(joined_sender);
    let conversation = tokio::time::timeout(JOIN_TIMEOUT, async {
        let mut conversation = None;
        for _ in 0..members {
            match joined.recv().await {
                Some(Ok(id)) if conversation.is_none_or(|known| known == id) => conversation = Some(id),
                Some(Ok(id)) => bail!("members joined two conversations, {} and {id}", conversation.expect("known")),
                Some(Err(error)) => bail!("a member could not join: {error}"),
                None => bail!("a member stopped before joining"),
            }
        }
        conversation.context("no members")
    })
    .await
    .with_context(|| format!("not every member learned of the conversation within {JOIN_TIMEOUT:?}"))??;
    println!(
        "ws-fanout: every member joined {conversation} {:.2} s after it was created",
        origin.elapsed().as_secs_f64()
    );

    let opening = Opening::new(cluster, members, 0, &users[0], "sender")?;
    let (mut socket, _) = open_websocket(opening).await.context("opening the sender's websocket")?;
    let (nodes_cpu, settled_from) = (cluster.cpu_time_all()?, Instant::now());
    tokio::time::sleep(settle).await;
    let nodes_cpu_idle_percent = cpu_percent(cluster.cpu_time_all()?.saturating_sub(nodes_cpu), settled_from.elapsed());
    let (nodes_cpu, bench_cpu) = (cluster.cpu_time_all()?, process_cpu_time("self")?);
    let start = Instant::now();
    let sender = run_sender(&mut socket, conversation, window, body_bytes, duration, origin).await;
    committed_sender.send_replace(Some(sender.committed));

    let mut report = FanoutReport {
        members,
        nodes,
        window,
        rate_limited: sender.rate_limited,
        committed: sender.committed,
        sending: sender.elapsed,
        delivering: Duration::ZERO,
        acks: sender.acks,
        deliveries: LatencyHistogram::default(),
        members_wrong: 0,
        failures: Vec::new(),
        nodes_cpu_idle_percent,
        nodes_cpu_percent: 0.0,
        bench_cpu_percent: 0.0,
    };
    if let Some(error) = sender.first_error {
        report.failures.push(format!("sender: {} errors, the first: {error}", sender.errors));
    }
    for (index, task) in tasks.into_iter().enumerate() {
        let verdict = match task.await {
            Ok(outcome) => {
                report.deliveries.merge(&outcome.deliveries);
                if let Some(last) = outcome.last_delivery {
                    report.delivering = report.delivering.max(last - start);
                }
                outcome.check(sender.committed)
            }
            Err(error) => Err(format!("the member's task failed: {error}")),
        };
        if let Err(failure) = verdict {
            report.members_wrong += 1;
            if report.members_wrong <= MEMBER_FAILURES_SHOWN {
                report.failures.push(format!("member {index} ({}): {failure}", users[index]));
            }
        }
    }
    report.nodes_cpu_percent = cpu_percent(cluster.cpu_time_all()?.saturating_sub(nodes_cpu), start.elapsed());
    report.bench_cpu_percent = cpu_percent(process_cpu_time("self")?.saturating_sub(bench_cpu), start.elapsed());
    let _ = socket.close(None).await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(received: u64, last_seq: u64, failure: Option<&str>) -> MemberOutcome {
        MemberOutcome {
            deliveries: LatencyHistogram::default(),
            last_seq,
            received,
            last_delivery: None,
            failure: failure.map(str::to_owned),
        }
    }

    #[test]
    fn a_member_must_have_every_committed_message_once() {
        assert_eq!(outcome(5, 5, None).check(5), Ok(()));
        assert!(outcome(4, 4, None).check(5).is_err(), "a missing message");
        assert!(outcome(6, 5, None).check(5).is_err(), "a repeated message");
        assert!(outcome(5, 5, Some("seq 3 arrived after seq 1")).check(5).is_err(), "out of order");
        assert_eq!(outcome(0, 0, None).check(0), Ok(()));
    }

    /// A node stand-in on loopback: accepts one WebSocket, answers `hello` with `welcome`,
    /// tells of the conversation, and pushes messages with the given seqs.
    async fn fake_node(seqs: Vec<u64>) -> (SocketAddr, ConversationId, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let server = listener.local_addr().unwrap();
        let conversation = ConversationId::from_bytes([7; 16]);
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
            let (user, device) = (UserId::new("fan0").unwrap(), DeviceId::new("fan").unwrap());
            let _hello = socket.next().await;
            let mut frames = vec![
                ServerFrame::Welcome { user: user.clone(), device: device.clone(), conversations: Vec::new() },
                ServerFrame::Conversation {
                    id: conversation,
                    members: vec![user.clone()],
                    title: None,
                    request_id: None,
                },
            ];
            frames.extend(seqs.into_iter().map(|seq| {
                ServerFrame::Message(natter_proto::MessageRecord {
                    conversation,
                    seq,
                    sender: user.clone(),
                    sender_device: device.clone(),
                    client_seq: seq,
                    ts: 0,
                    body: stamped_body(Duration::ZERO, 16),
                })
            }));
            for frame in frames {
                let json = natter_proto::json::encode_server(&frame);
                socket.send(Message::Text(json.into())).await.unwrap();
            }
            // Closing tells a member still waiting that nothing more comes.
            let _ = socket.close(None).await;
        });
        (server, conversation, task)
    }

    /// What a member makes of the messages a fake node pushes, when `committed` were
    /// acknowledged.
    async fn member_verdict(seqs: Vec<u64>, committed: u64) -> Result<(), String> {
        let (server, conversation, node) = fake_node(seqs).await;
        let opening = Opening {
            server,
            url: format!("ws://{server}/v1/ws"),
            device: DeviceId::new("fan").unwrap(),
            source: Ipv4Addr::LOCALHOST,
        };
        let (socket, welcomed) = open_websocket(opening).await.unwrap();
        let (joined_sender, mut joined) = mpsc::channel(1);
        let (_committed_sender, committed_receiver) = watch::channel(Some(committed));
        let member = run_member(socket, welcomed, None, joined_sender, committed_receiver, Instant::now());
        let outcome = tokio::time::timeout(Duration::from_secs(10), member).await.expect("the member stops");
        assert_eq!(joined.recv().await, Some(Ok(conversation)));
        node.await.unwrap();
        outcome.check(committed)
    }

    #[tokio::test]
    async fn a_member_catches_a_repeat_a_gap_and_a_loss() {
        assert_eq!(member_verdict(vec![1, 2, 3], 3).await, Ok(()));
        let repeat = member_verdict(vec![1, 2, 2, 3], 3).await.unwrap_err();
        assert!(repeat.contains("seq 2 arrived after seq 2"), "{repeat}");
        let gap = member_verdict(vec![1, 3], 3).await.unwrap_err();
        assert!(gap.contains("seq 3 arrived after seq 1"), "{gap}");
        let swapped = member_verdict(vec![2, 1, 3], 3).await.unwrap_err();
        assert!(swapped.contains("seq 2 arrived after seq 0"), "{swapped}");
        let lost = member_verdict(vec![1, 2], 3).await.unwrap_err();
        assert!(lost.contains("closed"), "{lost}");
    }

    #[test]
    fn a_rate_limited_sender_waits_as_told() {
        let limited = r#"{"type":"error","client_seq":7,"code":"rate_limited","message":"slow","retry_after_ms":250}"#;
        assert_eq!(retry_after(limited), Duration::from_millis(250));
        let unsaid = r#"{"type":"error","client_seq":7,"code":"rate_limited","message":"slow"}"#;
        assert_eq!(retry_after(unsaid), RATE_LIMITED_WAIT_DEFAULT);
        assert_eq!(retry_after("not json"), RATE_LIMITED_WAIT_DEFAULT);
    }

    #[test]
    fn idle_growth_is_taken_against_the_first_sample() {
        let samples = [
            IdleSample { sessions: 0, rss_kib: 50_000, cpu_percent: 1.0 },
            IdleSample { sessions: 1000, rss_kib: 54_000, cpu_percent: 2.0 },
            IdleSample { sessions: 2000, rss_kib: 62_000, cpu_percent: 2.0 },
        ];
        assert_eq!(idle_kib_per_connection(&samples), Some(6.0));
        assert_eq!(idle_kib_per_connection(&samples[..1]), None);
    }

    #[test]
    fn the_soft_open_files_limit_is_enough_or_raised() {
        let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        assert!(raise_open_files(1).unwrap() >= 1);
        assert_eq!(raise_open_files(soft.min(64)).unwrap(), soft);
        assert!(raise_open_files(u64::MAX - 1).is_err() || getrlimit(Resource::Nofile).maximum.is_none());
    }
}
