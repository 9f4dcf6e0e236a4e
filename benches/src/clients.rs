//! The client path: `natter-node` processes started as `natter cluster up` starts them, and
//! load from this process over the client protocol (QUIC, ALPN `natter/1`), measured as a
//! messenger's users see it.
//!
//! - [`run_messages`]: closed-loop senders, each a `natter-client` with its own 1:1
//!   conversation whose other member is online on another node. Measures committed messages
//!   per second, send→ack (`send_ok`) and send→delivery (the recipient's client hands the
//!   message to the application) latencies, and checks every acknowledged message arrived.
//! - [`run_idle`]: many bare idle sessions (TLS, stream, `hello`, `welcome`, nothing more) on
//!   one node, and that node's resident memory as they are added.
//!
//! The helpers that open many connections ([`open_all`]) and sample an idle node
//! ([`grow_idle`]) serve the browser benchmarks of [`crate::websockets`] too.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use natter_cli::local::{self, StartedNode, UpOptions};
use natter_client::{Client, ClientConfig, CursorState, Event, MemoryCursors};
use natter_node::auth::TokenKey;
use natter_node::rate::RateLimits;
use natter_proto::codec::{encode_frame, FrameDecoder};
use natter_proto::{ClientFrame, ConversationId, DeviceId, ServerFrame, UserId};
use tokio::sync::{Barrier, Semaphore};
use tokio::time::Instant;

use crate::histogram::LatencyHistogram;

/// How long the node processes may take to elect a leader for every shard.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes get to stop after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Client connections (TLS handshake, `hello`, `welcome`) opened at once while setting up.
pub const CONNECTS_CONCURRENT_MAX: usize = 64;
/// How long after the senders stop the recipients may take to receive the last messages.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long each client gets to close (flushing its acks) at the end of a run.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A sender stops early after this many failed sends, so a broken cluster cannot spin.
pub const SEND_ERRORS_PER_SENDER_MAX: u64 = 20;
/// Bare idle sessions share one client endpoint (UDP socket) per this many.
pub const IDLE_SESSIONS_PER_ENDPOINT: usize = 1000;
/// Attempts to open one connection of an idle or fan-out run before the run fails.
pub const OPEN_ATTEMPTS_MAX: u32 = 3;
/// How long idle sessions sit before the node's memory is read, so the allocator settles.
pub const IDLE_SETTLE: Duration = Duration::from_secs(3);
/// Hex digits of the send time (nanoseconds since the run's origin) that start every body.
pub const STAMP_DIGITS: usize = 16;
/// Validity of the tokens the benchmark mints.
const TOKEN_TTL_SECONDS: u64 = 24 * 60 * 60;

/// A cluster of `natter-node` processes on loopback, in a temp dir that goes with it. The
/// nodes are stopped (SIGTERM, then SIGKILL) when it is dropped, whatever happened.
pub struct ProcessCluster {
    nodes: Vec<StartedNode>,
    ca_pem: Vec<u8>,
    tokens: TokenKey,
    dir: tempfile::TempDir,
}

impl ProcessCluster {
    /// Starts `node_count` nodes of `node_binary` with `shards` shards and the client rate
    /// limits `rate_limits` in a new temp dir under `base_dir` and waits until every shard has
    /// a leader.
    pub fn start(
        base_dir: &Path,
        node_count: u64,
        shards: u32,
        node_binary: &Path,
        rate_limits: RateLimits,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("natter-bench-clients-")
            .tempdir_in(base_dir)
            .with_context(|| format!("creating a temp dir in {}", base_dir.display()))?;
        let options = UpOptions {
            dir: dir.path().to_path_buf(),
            nodes: node_count,
            shards,
            node_binary: node_binary.to_path_buf(),
            force: false,
            ready_timeout: READY_TIMEOUT,
            rate_limits,
        };
        let report = local::up(&options, &mut std::io::sink()).context("starting the node processes")?;
        let cluster_dir = local::ClusterDir::new(report.dir.clone());
        let ca_path = cluster_dir.tls_dir().join("ca.pem");
        let ca_pem = std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        let secret_path = report.dir.join(natter_node::auth::DEV_SECRET_FILE);
        let secret =
            std::fs::read_to_string(&secret_path).with_context(|| format!("reading {}", secret_path.display()))?;
        let tokens = TokenKey::new(secret.trim().as_bytes()).context("the cluster's token secret")?;
        println!(
            "natter: {} node processes ({}) on 127.0.0.1, {} shards, ready after {:.2} s",
            report.nodes.len(),
            node_binary.display(),
            shards,
            report.ready_ms as f64 / 1000.0
        );
        Ok(Self { nodes: report.nodes, ca_pem, tokens, dir })
    }

    /// The client address of every node (clients and peers share each node's endpoint).
    pub fn servers(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.peer_addr).collect()
    }

    /// The number of node processes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The HTTP address of node `index` (operator routes and the browser edge).
    pub fn http_addr(&self, index: usize) -> SocketAddr {
        self.nodes[index].http_addr
    }

    /// The servers starting with node `first` (by index), then the others in turn: a client
    /// given this list connects to node `first` while it is up.
    fn servers_from(&self, first: usize) -> Vec<SocketAddr> {
        let servers = self.servers();
        let count = servers.len();
        (0..count).map(|offset| servers[(first + offset) % count]).collect()
    }

    /// A token for `user`.
    pub fn token(&self, user: &UserId) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
        self.tokens.issue(user, now, TOKEN_TTL_SECONDS)
    }

    /// CPU time node `index`'s process has used so far (user + system), from
    /// `/proc/PID/stat` in clock ticks of 10 ms.
    pub fn cpu_time(&self, index: usize) -> anyhow::Result<Duration> {
        process_cpu_time(&self.nodes[index].pid.to_string())
    }

    /// CPU time every node process has used so far, added up.
    pub fn cpu_time_all(&self) -> anyhow::Result<Duration> {
        (0..self.nodes.len()).map(|index| self.cpu_time(index)).sum()
    }

    /// Resident memory of node `index`'s process, in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self, index: usize) -> anyhow::Result<u64> {
        let pid = self.nodes[index].pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading the status of node process {pid}"))?;
        resident_kib(&status).with_context(|| format!("no VmRSS in the status of process {pid}"))
    }

    fn client_config(&self, user: &UserId, first_server: usize, receive: bool) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new(
            self.servers_from(first_server),
            self.ca_pem.clone(),
            self.token(user),
            DeviceId::new("bench")?,
        );
        config.receive_messages = receive;
        // Closed-loop latency is the measurement: a send that waits longer is an error, not
        // a slow sample hidden behind the client's retries.
        config.request_timeout = Duration::from_secs(10);
        Ok(config)
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if let Err(error) = local::down(self.dir.path(), STOP_GRACE) {
            eprintln!("stopping the node processes in {}: {error}", self.dir.path().display());
        }
    }
}

/// Length of a clock tick in `/proc/PID/stat` (`USER_HZ` is 100 on Linux).
const CLOCK_TICK_MS: u64 = 10;

/// CPU time (user + system) process `pid` (a number, or `self`) has used so far, from
/// `/proc/PID/stat`.
pub fn process_cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading the stat of process {pid}"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("no CPU times in the stat of process {pid}"))?;
    Ok(Duration::from_millis(ticks * CLOCK_TICK_MS))
}

/// CPU use over `elapsed`, in percent of one core.
pub fn cpu_percent(cpu: Duration, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64()
    }
}

/// User plus system CPU ticks from a `/proc/PID/stat` text (fields 14 and 15; the command
/// name in field 2 may hold spaces, so fields are counted after its closing parenthesis).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The `VmRSS` line of a `/proc/PID/status` text, in KiB.
fn resident_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What one closed-loop messaging run measured.
#[derive(Debug, Clone)]
pub struct MessagesReport {
    /// Concurrent closed-loop senders (each with an online recipient).
    pub senders: usize,
    /// From the common start until the last sender stopped.
    pub elapsed: Duration,
    /// send → `send_ok`, per acknowledged send.
    pub acks: LatencyHistogram,
    /// send → handed to the recipient's application, per delivered message.
    pub deliveries: LatencyHistogram,
    /// Acknowledged messages that never reached their recipient within [`DRAIN_TIMEOUT`].
    pub undelivered: u64,
    /// Failed sends, connections or creates.
    pub errors: u64,
    /// The first failure, for the printout.
    pub first_error: Option<String>,
}

impl MessagesReport {
    /// Acknowledged (committed) messages per second over the run.
    pub fn per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds == 0.0 {
            0.0
        } else {
            self.acks.count() as f64 / seconds
        }
    }

    /// One line for the console.
    pub fn line(&self) -> String {
        let ms = crate::histogram::milliseconds;
        let mut line = format!(
            "senders={:<4} committed={:<7} {:>8.0} msgs/s  ack p50={:.3} p99={:.3} ms  delivery p50={:.3} p99={:.3} ms  \
             delivered={} undelivered={} errors={} ({:.2} s)",
            self.senders,
            self.acks.count(),
            self.per_second(),
            ms(self.acks.quantile(0.5)),
            ms(self.acks.quantile(0.99)),
            ms(self.deliveries.quantile(0.5)),
            ms(self.deliveries.quantile(0.99)),
            self.deliveries.count(),
            self.undelivered,
            self.errors,
            self.elapsed.as_secs_f64(),
        );
        if let Some(error) = &self.first_error {
            line.push_str(&format!("\n       first error: {error}"));
        }
        line
    }

    fn fail(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// The body of a message sent `since_origin` after the run's origin: the time as fixed-width
/// hex, padded to `bytes` (at least [`STAMP_DIGITS`]).
pub fn stamped_body(since_origin: Duration, bytes: usize) -> String {
    let mut body = format!("{:0width$x}", since_origin.as_nanos() as u64, width = STAMP_DIGITS);
    body.extend(std::iter::repeat_n('m', bytes.saturating_sub(STAMP_DIGITS)));
    body
}

/// The send time a body carries, as a duration since the run's origin.
pub fn body_stamp(body: &str) -> Option<Duration> {
    let digits = body.get(..STAMP_DIGITS)?;
    u64::from_str_radix(digits, 16).ok().map(Duration::from_nanos)
}

/// One sender/recipient pair: the sender's client and conversation, the recipient's client.
struct Pair {
    sender: Client,
    recipient: Client,
    conversation: ConversationId,
}

/// Connects `count` pairs for run `run`: sender `i` on node `i mod n`, its recipient on the
/// next node, a 1:1 conversation between them created by the sender. The recipient connects
/// after the conversation exists, resuming it from seq 0.
async fn connect_pairs(cluster: &ProcessCluster, run: usize, count: usize) -> anyhow::Result<Vec<Pair>> {
    let nodes = cluster.nodes.len();
    let gate = Arc::new(Semaphore::new(CONNECTS_CONCURRENT_MAX));
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let sender_user = UserId::new(format!("s{run}x{index}"))?;
        let recipient_user = UserId::new(format!("r{run}x{index}"))?;
        let sender_config = cluster.client_config(&sender_user, index % nodes, false)?;
        let recipient_config = cluster.client_config(&recipient_user, (index + 1) % nodes, true)?;
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("never closed");
            let sender = Client::connect(sender_config, Box::new(MemoryCursors::new())).await?;
            let info = sender.create_conversation(vec![recipient_user], None).await?;
            let mut state = CursorState::fresh();
            state.cursors.insert(info.id, 0);
            let recipient = Client::connect(recipient_config, Box::new(MemoryCursors::with_state(state))).await?;
            anyhow::Ok(Pair { sender, recipient, conversation: info.id })
        }));
    }
    let mut pairs = Vec::with_capacity(count);
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(pair)) => pairs.push(pair),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(error.into());
            }
        }
    }
    if let Some(error) = first_error {
        close_all(pairs.into_iter().flat_map(|pair| [pair.sender, pair.recipient])).await;
        return Err(error.context(format!("connecting {count} sender/recipient pairs")));
    }
    Ok(pairs)
}

/// Closes every client concurrently, each within [`CLOSE_TIMEOUT`].
async fn close_all(clients: impl Iterator<Item = Client>) {
    let tasks: Vec<_> = clients
        .map(|client| tokio::spawn(async move { tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await }))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// What one sender measured.
struct SenderOutcome {
    acks: LatencyHistogram,
    errors: u64,
    first_error: Option<String>,
}

/// What one recipient measured.
struct RecipientOutcome {
    deliveries: LatencyHistogram,
    last_seq: u64,
}

/// One closed-loop run: `senders` pairs (see [`connect_pairs`]); each sender sends
/// `body_bytes`-byte messages one at a time for `duration`; each recipient takes every message
/// its client hands over. After the senders stop, recipients get [`DRAIN_TIMEOUT`] to receive
/// every acknowledged message. `run` keeps users of different runs apart.
pub async fn run_messages(
    cluster: &ProcessCluster,
    run: usize,
    senders: usize,
    body_bytes: usize,
    duration: Duration,
) -> MessagesReport {
    let mut report = MessagesReport {
        senders,
        elapsed: Duration::ZERO,
        acks: LatencyHistogram::default(),
        deliveries: LatencyHistogram::default(),
        undelivered: 0,
        errors: 0,
        first_error: None,
    };
    let pairs = match connect_pairs(cluster, run, senders).await {
        Ok(pairs) => pairs,
        Err(error) => {
            report.fail(format!("{error:#}"));
            return report;
        }
    };
    let origin = Instant::now();
    let barrier = Arc::new(Barrier::new(senders + 1));
    let senders_done = Arc::new(AtomicBool::new(false));
    let mut sender_tasks = Vec::with_capacity(senders);
    let mut recipient_tasks = Vec::with_capacity(senders);
    for pair in pairs {
        // The highest seq acknowledged to the sender: the recipient is done when it has it.
        let acknowledged = Arc::new(AtomicU64::new(0));
        let Pair { sender, recipient, conversation } = pair;
        let barrier = barrier.clone();
        let acked = acknowledged.clone();
        sender_tasks.push(tokio::spawn(async move {
            let mut outcome = SenderOutcome { acks: LatencyHistogram::default(), errors: 0, first_error: None };
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            while Instant::now() < deadline && outcome.errors < SEND_ERRORS_PER_SENDER_MAX {
                let started = Instant::now();
                let body = stamped_body(started - origin, body_bytes);
                match sender.send(conversation, body).await {
                    Ok(sent) => {
                        outcome.acks.record(started.elapsed());
                        acked.fetch_max(sent.seq, Ordering::Relaxed);
                    }
                    Err(error) => {
                        outcome.errors += 1;
                        outcome.first_error.get_or_insert_with(|| format!("send: {error}"));
                    }
                }
            }
            (outcome, sender)
        }));
        let done = senders_done.clone();
        recipient_tasks.push(tokio::spawn(async move {
            let mut outcome = RecipientOutcome { deliveries: LatencyHistogram::default(), last_seq: 0 };
            let mut drain_deadline = None;
            loop {
                if done.load(Ordering::Relaxed) {
                    if outcome.last_seq >= acknowledged.load(Ordering::Relaxed) {
                        break;
                    }
                    let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                // Wake up now and then to notice the end of the run.
                let Ok(event) = tokio::time::timeout(Duration::from_millis(50), recipient.next_event()).await else {
                    continue;
                };
                match event {
                    Some(Event::Message(message)) if message.conversation == conversation => {
                        if let Some(sent) = body_stamp(&message.body) {
                            outcome.deliveries.record(origin.elapsed().saturating_sub(sent));
                        }
                        outcome.last_seq = message.seq;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            let undelivered = acknowledged.load(Ordering::Relaxed).saturating_sub(outcome.last_seq);
            (outcome, undelivered, recipient)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(senders * 2);
    for task in sender_tasks {
        match task.await {
            Ok((outcome, sender)) => {
                report.acks.merge(&outcome.acks);
                report.errors += outcome.errors;
                report.first_error = report.first_error.take().or(outcome.first_error);
                clients.push(sender);
            }
            Err(error) => report.fail(format!("sender task failed: {error}")),
        }
    }
    report.elapsed = started.elapsed();
    senders_done.store(true, Ordering::Relaxed);
    for task in recipient_tasks {
        match task.await {
            Ok((outcome, undelivered, recipient)) => {
                report.deliveries.merge(&outcome.deliveries);
                report.undelivered += undelivered;
                clients.push(recipient);
            }
            Err(error) => report.fail(format!("recipient task failed: {error}")),
        }
    }
    close_all(clients.into_iter()).await;
    report
}

/// Node memory at one count of idle sessions.
#[derive(Debug, Clone, Copy)]
pub struct IdleSample {
    /// Idle sessions open on the node.
    pub sessions: usize,
    /// The node process's resident memory, KiB.
    pub rss_kib: u64,
    /// The node's CPU use while the sessions sat idle ([`IdleTiming::cpu_window`]), percent
    /// of one core.
    pub cpu_percent: f64,
}

impl IdleSample {
    /// One line for the console; `noun` names what is idle (`session`, `websocket`).
    pub fn line(&self, noun: &str) -> String {
        format!(
            "idle {noun}s={:<6} node RSS={} KiB, CPU {:.1}% of a core",
            self.sessions, self.rss_kib, self.cpu_percent
        )
    }
}

/// When an idle benchmark samples the node after each step.
#[derive(Debug, Clone, Copy)]
pub struct IdleTiming {
    /// How long the step's sessions sit before the CPU window starts.
    pub settle: Duration,
    /// The window over which the node's CPU use is measured; its resident memory is read at
    /// the end of it.
    pub cpu_window: Duration,
}

/// Node 0's CPU use over `timing`'s window (after its settle time) and then its resident
/// memory, with `sessions` idle sessions open.
async fn sample_idle(cluster: &ProcessCluster, sessions: usize, timing: IdleTiming) -> anyhow::Result<IdleSample> {
    tokio::time::sleep(timing.settle).await;
    let cpu_before = cluster.cpu_time(0)?;
    tokio::time::sleep(timing.cpu_window).await;
    let cpu = cluster.cpu_time(0)?.saturating_sub(cpu_before);
    Ok(IdleSample { sessions, rss_kib: cluster.rss_kib(0)?, cpu_percent: cpu_percent(cpu, timing.cpu_window) })
}

/// Samples node 0 with nothing open, then opens sessions with `open` (given the index range
/// to open next) until each count of `steps` (ascending) is reached, and samples node 0 after
/// each. Returns the samples, the first taken with no session, and the sessions, still open,
/// for the caller to close.
pub async fn grow_idle<T, F, Fut>(
    cluster: &ProcessCluster,
    steps: &[usize],
    noun: &str,
    timing: IdleTiming,
    mut open: F,
) -> anyhow::Result<(Vec<IdleSample>, Vec<T>)>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<T>>>,
{
    debug_assert!(steps.is_sorted(), "steps ascend: {steps:?}");
    let mut samples = vec![sample_idle(cluster, 0, timing).await?];
    let mut sessions = Vec::with_capacity(steps.iter().copied().max().unwrap_or(0));
    for &step in steps {
        let opened = open(sessions.len()..step.max(sessions.len())).await?;
        sessions.extend(opened);
        let sample = sample_idle(cluster, sessions.len(), timing).await?;
        println!("{}", sample.line(noun));
        samples.push(sample);
    }
    Ok((samples, sessions))
}

/// Opens one connection per input with `open`, at most [`CONNECTS_CONCURRENT_MAX`] at once,
/// trying each up to [`OPEN_ATTEMPTS_MAX`] times: a handshake can time out while the node is
/// busy accepting thousands of others, which says nothing about what is being measured.
/// Returns the connections in input order, or the first failure (the other opens are
/// stopped).
pub async fn open_all<I, T, F, Fut>(inputs: Vec<I>, what: &str, open: F) -> anyhow::Result<Vec<T>>
where
    I: Clone + Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let open = Arc::new(open);
    let gate = Arc::new(Semaphore::new(CONNECTS_CONCURRENT_MAX));
    let mut tasks: Vec<tokio::task::JoinHandle<anyhow::Result<T>>> = inputs
        .into_iter()
        .map(|input| {
            let (open, gate) = (open.clone(), gate.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("never closed");
                let mut attempt = 1;
                loop {
                    match open(input.clone()).await {
                        Ok(connection) => return Ok(connection),
                        Err(error) if attempt >= OPEN_ATTEMPTS_MAX => {
                            return Err(error.context(format!("{attempt} attempts")))
                        }
                        Err(_) => attempt += 1,
                    }
                }
            })
        })
        .collect();
    let mut connections = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for task in &mut tasks {
        match task.await {
            Ok(Ok(connection)) => connections.push(connection),
            Ok(Err(error)) => first_error = Some(error),
            Err(error) => first_error = Some(error.into()),
        }
        if first_error.is_some() {
            break;
        }
    }
    if let Some(error) = first_error {
        for task in &tasks {
            task.abort();
        }
        return Err(error.context(format!("opening {what}")));
    }
    Ok(connections)
}

/// A bare session: the connection and its stream, held open and never used.
struct IdleSession {
    _connection: quinn::Connection,
    _send: quinn::SendStream,
    _recv: quinn::RecvStream,
}

/// Opens one bare session on `server` through `endpoint`: TLS, one stream, `hello`, `welcome`.
async fn open_idle(
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    server: SocketAddr,
    hello: ClientFrame,
) -> anyhow::Result<IdleSession> {
    let connection = endpoint.connect_with(config, server, "localhost")?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut bytes = Vec::new();
    encode_frame(&hello, &mut bytes)?;
    send.write_all(&bytes).await?;
    let mut decoder = FrameDecoder::new();
    loop {
        if let Some(frame) = decoder.next_frame::<ServerFrame>()? {
            match frame {
                ServerFrame::Welcome { .. } => break,
                other => bail!("expected welcome, got {other:?}"),
            }
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(chunk) => {
                if decoder.push(&chunk.bytes) < chunk.bytes.len() {
                    bail!("the node's first frame is over the frame limit");
                }
            }
            None => bail!("the node ended the stream before welcome"),
        }
    }
    Ok(IdleSession { _connection: connection, _send: send, _recv: recv })
}

/// Opens `steps.last()` idle sessions on node 0, one user each, and samples node 0's resident
/// memory before the first and after each count in `steps` is reached (after
/// [`IDLE_SETTLE`], over which the node's CPU use is measured). The sessions use the client
/// library's QUIC settings (keep-alive every second) and share one UDP socket per
/// [`IDLE_SESSIONS_PER_ENDPOINT`], so they need few file descriptors.
pub async fn run_idle(cluster: &ProcessCluster, steps: &[usize]) -> anyhow::Result<Vec<IdleSample>> {
    let total = steps.iter().copied().max().unwrap_or(0);
    let quic = natter_client::quic_config(&cluster.ca_pem)?;
    let server = cluster.servers()[0];
    let endpoints = (0..total.div_ceil(IDLE_SESSIONS_PER_ENDPOINT))
        .map(|_| quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()))
        .collect::<Result<Vec<_>, _>>()
        .context("binding client UDP sockets")?;
    let timing = IdleTiming { settle: Duration::ZERO, cpu_window: IDLE_SETTLE };
    let (samples, sessions) = grow_idle(cluster, steps, "session", timing, |indexes| {
        let inputs = indexes
            .map(|index| {
                let user = UserId::new(format!("idle{index}"))?;
                let hello = ClientFrame::Hello {
                    device: DeviceId::new("idle")?,
                    resume: Default::default(),
                    token: Some(cluster.token(&user)),
                };
                anyhow::Ok((endpoints[index / IDLE_SESSIONS_PER_ENDPOINT].clone(), hello))
            })
            .collect::<anyhow::Result<Vec<_>>>();
        let quic = quic.clone();
        async move {
            open_all(inputs?, "idle sessions", move |(endpoint, hello)| {
                open_idle(endpoint, quic.clone(), server, hello)
            })
            .await
        }
    })
    .await?;
    drop(sessions);
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_carries_its_send_time() {
        let body = stamped_body(Duration::from_micros(1_234_567), 100);
        assert_eq!(body.len(), 100);
        assert_eq!(body_stamp(&body), Some(Duration::from_micros(1_234_567)));
        assert_eq!(body_stamp("short"), None);
        assert_eq!(body_stamp("zzzzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "4242 (natter node) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 6 0";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn resident_memory_is_read_from_the_status_text() {
        let status = "Name:\tnatter-node\nVmPeak:\t  900 kB\nVmRSS:\t   51234 kB\nThreads:\t4\n";
        assert_eq!(resident_kib(status), Some(51234));
        assert_eq!(resident_kib("Name:\tx\n"), None);
    }
}
