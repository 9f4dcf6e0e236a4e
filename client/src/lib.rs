//! natter-client: the natter client library; connect, resume, retry, dedup (DESIGN §4, §5).
//! The `natter` command line (natter-cli), the simulator's devices, the chaos tests and the
//! load generator all use it.
//!
//! A [`Client`] holds one QUIC session to any node of a cluster and keeps it: a background
//! task reconnects with jittered exponential backoff when the connection drops (trying the
//! next server), says `hello` again with the device's cursors so the server streams what was
//! missed, and resends every send that was not acknowledged with its original `client_seq`,
//! which the server appends at most once.
//!
//! - **Sending**: [`Client::send`] numbers each send with a `client_seq`, strictly increasing
//!   per device and reserved in the [`CursorStore`] before the frame goes out, so it survives
//!   restarts; it returns when the message is committed ([`SendOk`]) or refused.
//! - **Receiving**: [`Client::next_event`] hands each message to the application exactly once,
//!   in seq order per conversation: duplicates (seq at or below the cursor) are dropped, and a
//!   gap is filled with `history` requests before anything after it is handed on. Handing a
//!   message moves the conversation's cursor in the store; the server learns it through `ack`
//!   frames, batched. A conversation the user is added to while connected arrives as
//!   [`Event::Conversation`], then its messages from seq 1.
//! - **Requests**: [`Client::create_conversation`], [`Client::history`], and
//!   [`Client::conversations`] (as of the last `welcome`).
//!
//! ```no_run
//! use natter_client::{Client, ClientConfig, Event, FileCursors};
//! use natter_proto::{DeviceId, UserId};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig::new(
//!     vec!["127.0.0.1:7401".parse()?],
//!     std::fs::read("natter-data/tls/ca.pem")?,
//!     std::env::var("NATTER_TOKEN")?,
//!     DeviceId::new("laptop")?,
//! );
//! let client = Client::connect(config, Box::new(FileCursors::open("cursors.json")?)).await?;
//! let trip = client.create_conversation(vec![UserId::new("bob")?], Some("trip".into())).await?;
//! let sent = client.send(trip.id, "hi bob").await?;
//! println!("committed as seq {}", sent.seq);
//! while let Some(event) = client.next_event().await {
//!     if let Event::Message(message) = event {
//!         println!("{} #{} {}: {}", message.conversation, message.seq, message.sender, message.body);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! **API boundary:** speaks only natter-proto's frames; it depends on neither natter-node nor
//! natter-raft, so an application links the protocol and QUIC, not the server. (natter-cli's
//! tests check that [`ALPN`] is the node's.)
#![warn(missing_docs)]

pub mod cursors;
pub mod error;
mod session;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_canary::Canary;
use natter_proto::codec::{encode_frame, FrameDecoder};
use natter_proto::limits::OUTSTANDING_SENDS_MAX;
use natter_proto::{
    ActivityStatus, ClientFrame, ConversationId, ConversationSummary, DeviceId, ErrorCode, MessageRecord,
    PresencePrivacy, PresenceStatus, UserId,
};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use self::session::{OpenError, Session, Welcome};
use self::state::{Completion, Core, Reply, Request};
pub use self::state::{GAP_BUFFER_MESSAGES_MAX, SEND_ATTEMPTS_MAX, SEND_RETRY_DELAY_MIN};

pub use self::cursors::{CursorState, CursorStore, FileCursors, MemoryCursors};
pub use self::error::ClientError;
pub use self::session::{quic_config, EndpointFactory, EndpointFuture};

/// ALPN of client sessions (DESIGN §5); the node's `natter_node::tls::CLIENT_ALPN`.
pub const ALPN: &[u8] = b"natter/1";
/// Events the application's queue holds. A message that does not fit waits on the server and
/// is fetched again once there is room; any other event that does not fit (a receipt, a
/// typing indicator) is dropped and counted in [`Client::dropped_events`].
pub const EVENT_QUEUE_MAX: usize = 1024;
/// Slots of the event queue kept for `Connected` / `Disconnected`, which the connection task
/// adds between two measurements of the room.
const CONNECTION_EVENTS_RESERVED: usize = 8;
/// Most requests (`create_conversation`, `history`) waiting for answers at once.
pub const REQUESTS_PENDING_MAX: usize = 256;
/// How many `client_seq`s are reserved in the store at a time, so a busy sender does not
/// write its store for every message. Unused ones are skipped after a restart.
pub const CLIENT_SEQ_BLOCK: u64 = 64;
/// How long acks are held to batch them.
pub const ACK_DELAY: Duration = Duration::from_millis(100);
/// Most bytes of frames written to the stream in one batch.
const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024;
/// Commands waiting for the connection task.
const COMMAND_QUEUE_MAX: usize = 64;

/// How to reach and authenticate with a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Nodes to connect to, any of them; tried in order, the next one after a failure.
    pub servers: Vec<SocketAddr>,
    /// The cluster CA certificate (PEM) that node certificates must chain to.
    pub ca_pem: Vec<u8>,
    /// The name node certificates are checked against; `natter dev certs` and `cluster up`
    /// certificates name `localhost` and `127.0.0.1`.
    pub server_name: String,
    /// The user's JWT, sent in `hello`.
    pub token: String,
    /// This device, stable per install.
    pub device: DeviceId,
    /// Wait before the first reconnect attempt after a failed one; it doubles per failure.
    pub reconnect_backoff_min: Duration,
    /// Longest wait between reconnect attempts.
    pub reconnect_backoff_max: Duration,
    /// Failed connection attempts in a row after which the client gives up and closes.
    pub reconnect_attempts_max: u32,
    /// How long connecting, TLS, `hello` and `welcome` may take per server.
    pub connect_timeout: Duration,
    /// How long [`Client::send`] and requests wait for their answer.
    pub request_timeout: Duration,
    /// False for a client that only sends: it asks for no missed messages and drops pushed
    /// ones, so a backlog is not streamed to it.
    pub receive_messages: bool,
    /// Makes the QUIC endpoint each session dials from (one per connection attempt). `None`
    /// binds a real UDP socket with [`quinn::Endpoint::client`]; the simulator hands in
    /// endpoints over its simulated network with a seeded [`quinn::EndpointConfig`], so the
    /// same client code runs inside it.
    pub endpoint: Option<EndpointFactory>,
}

impl ClientConfig {
    /// A configuration with the defaults: server name `localhost`, backoff 100 ms to 5 s, up
    /// to 1000 reconnect attempts in a row, 5 s to connect, 30 s per request, receiving.
    pub fn new(servers: Vec<SocketAddr>, ca_pem: Vec<u8>, token: impl Into<String>, device: DeviceId) -> Self {
        Self {
            servers,
            ca_pem,
            server_name: "localhost".into(),
            token: token.into(),
            device,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            reconnect_attempts_max: 1000,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            receive_messages: true,
            endpoint: None,
        }
    }

    /// The wait before reconnect attempt `failures` (1 for the first after a failure):
    /// exponential from the minimum to the maximum, uniformly jittered over its upper half so
    /// clients dropped together do not come back together.
    pub fn backoff(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let doubled = self.reconnect_backoff_min.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)));
        let ceiling = doubled.min(self.reconnect_backoff_max).max(self.reconnect_backoff_min);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(millis / 2..=millis))
    }
}

/// A committed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOk {
    /// The conversation.
    pub conversation: ConversationId,
    /// The seq the message got.
    pub seq: u64,
    /// Its server timestamp, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The `client_seq` it was sent with.
    pub client_seq: u64,
}

/// A send handed to the client by [`Client::submit`], waiting for its answer.
#[derive(Debug)]
#[must_use = "a queued send is still sent if dropped, but its answer is lost"]
pub struct QueuedSend {
    answer: oneshot::Receiver<Result<SendOk, ClientError>>,
    timeout: Duration,
}

impl QueuedSend {
    /// Waits (up to the configured request timeout) until the send is committed or refused.
    pub async fn wait(self) -> Result<SendOk, ClientError> {
        wait_for(self.answer, self.timeout).await?
    }
}

async fn wait_for<T>(answer: oneshot::Receiver<T>, timeout: Duration) -> Result<T, ClientError> {
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(_)) => Err(ClientError::Closed),
        Err(_) => Err(ClientError::Timeout(timeout)),
    }
}

/// A conversation as `create_conversation` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInfo {
    /// Its id.
    pub id: ConversationId,
    /// Every member.
    pub members: Vec<UserId>,
    /// Its title, if any.
    pub title: Option<String>,
}

/// Something for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message, handed exactly once and in seq order per conversation.
    Message(MessageRecord),
    /// A member's delivery and read cursors moved.
    Receipt {
        /// The conversation.
        conversation: ConversationId,
        /// Whose cursors.
        user: UserId,
        /// Highest seq delivered to any of the user's devices.
        delivered: u64,
        /// Highest seq the user has read.
        read: u64,
    },
    /// The server sent a conversation nobody asked for: the user was added to it while
    /// connected. Its messages follow as [`Event::Message`]s from seq 1.
    Conversation(ConversationInfo),
    /// A member started or stopped typing.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who.
        user: UserId,
        /// True while typing.
        active: bool,
    },
    /// A watched user's presence changed.
    Presence {
        /// Whose.
        user: UserId,
        /// Online, away or offline.
        status: PresenceStatus,
        /// Last connected, milliseconds since the Unix epoch, if known.
        last_seen: Option<u64>,
        /// Custom text, if any.
        custom: Option<String>,
    },
    /// The server reported an error that answers no request of this client (a failed
    /// catch-up, a bad frame), or a gap could not be filled.
    Error {
        /// The stable wire code.
        code: ErrorCode,
        /// The conversation it concerns, if any.
        conversation: Option<ConversationId>,
        /// Detail.
        message: String,
    },
    /// A session to `node` is open (after `welcome`).
    Connected {
        /// The node.
        node: SocketAddr,
    },
    /// The session dropped; the client is reconnecting unless it gave up (then no more
    /// events follow).
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// A connected natter client. Every method takes `&self`, so one client can be shared (in an
/// `Arc`) by a task that sends and one that reads events. Dropping it ends the connection
/// task, which sends the pending acks and closes the connection; [`Client::close`] does the
/// same and waits for it.
pub struct Client {
    commands: mpsc::Sender<Command>,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    shared: Arc<Shared>,
    send_slots: Arc<Semaphore>,
    request_timeout: Duration,
    device: DeviceId,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("device", &self.device).field("node", &self.node()).finish()
    }
}

/// State the application's side and the connection task share.
struct Shared {
    state: Mutex<SharedState>,
    /// Wakes the task: the application took an event (room for more, an ack to send).
    wake: Notify,
}

struct SharedState {
    store: Box<dyn CursorStore>,
    /// Per conversation, the last seq handed to the application (what the store holds).
    handed: BTreeMap<ConversationId, u64>,
    /// `client_seq`s reserved in the store and not used yet.
    client_seqs: std::ops::Range<u64>,
    welcome: Welcome,
    node: Option<SocketAddr>,
    dropped_events: u64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().expect("client state lock")
    }
}

impl SharedState {
    fn take_client_seq(&mut self) -> Result<u64, ClientError> {
        if self.client_seqs.is_empty() {
            self.client_seqs = self.store.reserve_client_seqs(CLIENT_SEQ_BLOCK)?;
        }
        let client_seq = self.client_seqs.next().expect("a reserved block is not empty");
        Ok(client_seq)
    }

    /// Records cursors that start without a message having been handed (see
    /// `Core::handle_welcome` and `Core::take_started`).
    fn start_cursors(&mut self, started: BTreeMap<ConversationId, u64>) {
        if started.is_empty() {
            return;
        }
        for (&conversation, &seq) in &started {
            self.handed.entry(conversation).or_insert(seq);
        }
        if let Err(error) = self.store.advance(&started) {
            tracing::warn!(%error, "cannot persist new cursors; they are kept in memory");
        }
    }
}

enum Command {
    Send {
        conversation: ConversationId,
        body: String,
        reply: oneshot::Sender<Result<SendOk, ClientError>>,
        slot: OwnedSemaphorePermit,
    },
    Request {
        request: Request,
        reply: oneshot::Sender<Result<Reply, ClientError>>,
    },
    Signal(ClientFrame),
    Reconnect,
    Close {
        done: oneshot::Sender<()>,
    },
}

impl Client {
    /// Connects to the first of `config.servers` that answers (`hello` with the token and the
    /// store's cursors as `resume`, then `welcome`) and starts the task that keeps the
    /// connection. Must be called inside a Tokio runtime.
    ///
    /// Fails with [`ClientError::Unauthenticated`] if a server refuses the token, and with
    /// [`ClientError::Unavailable`] if no server could be reached.
    pub async fn connect(config: ClientConfig, mut cursors: Box<dyn CursorStore>) -> Result<Client, ClientError> {
        if config.servers.is_empty() {
            return Err(ClientError::Config("no servers given".into()));
        }
        if config.reconnect_backoff_min.is_zero() || config.reconnect_backoff_max < config.reconnect_backoff_min {
            return Err(ClientError::Config("reconnect backoff must satisfy 0 < min <= max".into()));
        }
        let quic = session::quic_config(&config.ca_pem)?;
        let loaded = cursors.load()?;
        let mut core = Core::new(loaded.clone(), config.receive_messages);
        let mut failures = Vec::new();
        let mut opened = None;
        for (index, &server) in config.servers.iter().enumerate() {
            let hello = hello_frame(&config, &core);
            let open = session::open(
                config.endpoint.as_ref(),
                quic.clone(),
                server,
                config.server_name.clone(),
                hello,
                config.connect_timeout,
            );
            match open.await {
                Ok(session) => {
                    opened = Some((index, session));
                    break;
                }
                Err(OpenError::Refused { code: ErrorCode::Unauthenticated, message }) => {
                    return Err(ClientError::Unauthenticated(message))
                }
                Err(OpenError::Refused { code, message }) => failures.push(format!("{server}: {code}: {message}")),
                Err(OpenError::Failed(reason)) => failures.push(format!("{server}: {reason}")),
            }
        }
        let Some((index, (session, welcome))) = opened else {
            return Err(ClientError::Unavailable(failures.join("; ")));
        };
        let started = core.handle_welcome(&welcome.conversations);
        let mut handed = loaded;
        if !config.receive_messages {
            handed.clear();
        }
        let mut state = SharedState {
            store: cursors,
            handed,
            client_seqs: 0..0,
            welcome,
            node: Some(session.node),
            dropped_events: 0,
        };
        state.start_cursors(started);
        let shared = Arc::new(Shared { state: Mutex::new(state), wake: Notify::new() });
        let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE_MAX);
        let (event_sink, events) = mpsc::channel(EVENT_QUEUE_MAX + CONNECTION_EVENTS_RESERVED);
        let _ = event_sink.try_send(Event::Connected { node: session.node });
        let request_timeout = config.request_timeout;
        let device = config.device.clone();
        let task = Task {
            config,
            quic,
            core,
            shared: shared.clone(),
            commands: command_queue,
            events: event_sink,
            send_replies: BTreeMap::new(),
            request_replies: BTreeMap::new(),
            acked: BTreeMap::new(),
            server: index,
            dropped_here: 0,
            dropped_reported: 0,
        };
        let task = tokio::spawn(task.run(session));
        Ok(Client {
            commands,
            events: tokio::sync::Mutex::new(events),
            shared,
            send_slots: Arc::new(Semaphore::new(OUTSTANDING_SENDS_MAX)),
            request_timeout,
            device,
            task: Some(task),
        })
    }

    /// Sends `body` to `conversation` and waits until it is committed or refused.
    ///
    /// The send gets the device's next `client_seq`. If the connection drops first it is
    /// resent with the same `client_seq` after reconnecting, and a refusal that says retrying
    /// is safe (`unavailable`, `internal`) is retried a few times; either way the server
    /// appends it at most once. [`ClientError::Timeout`] means the outcome is unknown: the send
    /// stays queued and may still be committed.
    pub async fn send(&self, conversation: ConversationId, body: impl Into<String>) -> Result<SendOk, ClientError> {
        self.submit(conversation, body).await?.wait().await
    }

    /// Hands a send to the client without waiting for its answer, so several can be in
    /// flight: sends submitted one after another (from one task) get increasing `client_seq`s
    /// and are appended in that order. Waits only while [`OUTSTANDING_SENDS_MAX`] sends are
    /// unanswered. [`QueuedSend::wait`] gives the answer, as [`Client::send`] does.
    pub async fn submit(
        &self,
        conversation: ConversationId,
        body: impl Into<String>,
    ) -> Result<QueuedSend, ClientError> {
        let check = ClientFrame::Send { conversation, client_seq: 0, body: body.into() };
        check.validate()?;
        let ClientFrame::Send { body, .. } = check else { unreachable!("built above") };
        let slot = self.send_slots.clone().acquire_owned().await.map_err(|_| ClientError::Closed)?;
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Send { conversation, body, reply, slot }).await.map_err(|_| ClientError::Closed)?;
        Ok(QueuedSend { answer, timeout: self.request_timeout })
    }

    /// Creates a conversation with `members` (the caller is always one). One other member and
    /// no title is the 1:1 conversation, whose id is the same however often it is created.
    pub async fn create_conversation(
        &self,
        members: Vec<UserId>,
        title: Option<String>,
    ) -> Result<ConversationInfo, ClientError> {
        let check = ClientFrame::CreateConversation { request_id: "r".into(), members, title };
        check.validate()?;
        let ClientFrame::CreateConversation { members, title, .. } = check else { unreachable!("built above") };
        match self.request(Request::Create { members, title }).await? {
            Reply::Conversation(info) => Ok(info),
            Reply::History(_) | Reply::Settings(_) => unreachable!("a create is answered by a conversation"),
        }
    }

    /// A page of up to `limit` (≤ 200) messages of `conversation` with seq below `before`
    /// (the newest page if `None`), in increasing seq order. This is a plain read: it does
    /// not move cursors, and its messages are not events.
    pub async fn history(
        &self,
        conversation: ConversationId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, ClientError> {
        ClientFrame::History { request_id: "r".into(), conversation, before, limit }.validate()?;
        match self.request(Request::History { conversation, before, limit }).await? {
            Reply::History(messages) => Ok(messages),
            Reply::Conversation(_) | Reply::Settings(_) => unreachable!("a history request is answered by history"),
        }
    }

    /// Sets who may see the user's presence and last-seen; returns the stored value.
    pub async fn set_presence_privacy(
        &self,
        presence_privacy: PresencePrivacy,
    ) -> Result<PresencePrivacy, ClientError> {
        match self.request(Request::Settings { presence_privacy }).await? {
            Reply::Settings(stored) => Ok(stored),
            Reply::Conversation(_) | Reply::History(_) => unreachable!("settings are answered by settings"),
        }
    }

    /// Tells the conversation's other members this user started (`true`) or stopped typing.
    /// Ephemeral: sent if connected, else dropped; renew it within `TYPING_TTL_MS` while
    /// typing goes on.
    pub async fn typing(&self, conversation: ConversationId, active: bool) -> Result<(), ClientError> {
        self.signal(ClientFrame::Typing { conversation, active }).await
    }

    /// Sets this device's presence (active or away) and the user's custom text.
    pub async fn set_presence(&self, status: ActivityStatus, custom: Option<String>) -> Result<(), ClientError> {
        let frame = ClientFrame::Presence { status, custom };
        frame.validate()?;
        self.signal(frame).await
    }

    async fn signal(&self, frame: ClientFrame) -> Result<(), ClientError> {
        self.commands.send(Command::Signal(frame)).await.map_err(|_| ClientError::Closed)
    }

    /// The next event, or `None` once the client is closed or gave up reconnecting.
    ///
    /// A message returned here has been handed over: its conversation's cursor moves to it in
    /// the store (so a restarted client resumes after it) and an `ack` follows shortly.
    pub async fn next_event(&self) -> Option<Event> {
        let event = self.events.lock().await.recv().await?;
        if let Event::Message(message) = &event {
            let mut state = self.shared.lock();
            let cursor = state.handed.entry(message.conversation).or_insert(0);
            assert!(
                message.seq > *cursor || natter_canary::active(Canary::CursorBackwards),
                "a cursor never moves back: {} after {}",
                message.seq,
                *cursor
            );
            *cursor = message.seq;
            let moved = BTreeMap::from([(message.conversation, message.seq)]);
            if let Err(error) = state.store.advance(&moved) {
                // The cursor is kept in memory and written with the next one; until then a
                // restart would receive this message again.
                tracing::warn!(%error, "cannot persist a cursor");
            }
        }
        self.shared.wake.notify_one();
        Some(event)
    }

    /// The conversations the last `welcome` listed.
    pub fn conversations(&self) -> Vec<ConversationSummary> {
        self.shared.lock().welcome.conversations.clone()
    }

    /// The authenticated user.
    pub fn user(&self) -> UserId {
        self.shared.lock().welcome.user.clone()
    }

    /// This device.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The node of the open session, if one is open.
    pub fn node(&self) -> Option<SocketAddr> {
        self.shared.lock().node
    }

    /// Per conversation, the last seq handed to the application.
    pub fn cursors(&self) -> BTreeMap<ConversationId, u64> {
        self.shared.lock().handed.clone()
    }

    /// Events that were dropped because the application did not read them in time (never
    /// messages, which wait on the server instead).
    pub fn dropped_events(&self) -> u64 {
        self.shared.lock().dropped_events
    }

    /// Drops the current connection and connects again to the next server, as after a
    /// network failure: pending sends are resent, missed messages streamed.
    pub async fn reconnect(&self) -> Result<(), ClientError> {
        self.commands.send(Command::Reconnect).await.map_err(|_| ClientError::Closed)
    }

    /// Sends pending acks, closes the connection and stops the task. Sends still waiting fail
    /// with [`ClientError::Closed`] (their outcome is unknown).
    pub async fn close(mut self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = closed.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    async fn request(&self, request: Request) -> Result<Reply, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Request { request, reply }).await.map_err(|_| ClientError::Closed)?;
        wait_for(answer, self.request_timeout).await?
    }
}

fn hello_frame(config: &ClientConfig, core: &Core) -> ClientFrame {
    ClientFrame::Hello { device: config.device.clone(), resume: core.resume(), token: Some(config.token.clone()) }
}

/// How a session ended.
enum End {
    /// The application closed the client (or dropped it).
    Close(Option<oneshot::Sender<()>>),
    /// The connection dropped, or a reconnect was asked for.
    Dropped(String),
}

/// Where a send's answer goes, and the slot it holds until then.
type SendReply = (oneshot::Sender<Result<SendOk, ClientError>>, OwnedSemaphorePermit);

/// The connection task: owns the session, the core and the reply channels.
struct Task {
    config: ClientConfig,
    quic: quinn::ClientConfig,
    core: Core,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    send_replies: BTreeMap<(ConversationId, u64), SendReply>,
    request_replies: BTreeMap<String, oneshot::Sender<Result<Reply, ClientError>>>,
    /// Per conversation, the last seq acked on this connection.
    acked: BTreeMap<ConversationId, u64>,
    /// Index in `config.servers` of the current or last server.
    server: usize,
    /// Connection events dropped for a full queue.
    dropped_here: u64,
    /// The dropped count last written to the shared state.
    dropped_reported: u64,
}

impl Task {
    async fn run(mut self, first: Session) {
        let mut session = Some(first);
        loop {
            let Some(open) = session.take() else { return };
            let end = self.serve(open).await;
            self.shared.lock().node = None;
            match end {
                End::Close(done) => {
                    self.core.handle_stopped(|| ClientError::Closed);
                    self.deliver();
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                End::Dropped(reason) => {
                    self.core.handle_disconnected();
                    self.emit(Event::Disconnected { reason });
                    self.deliver();
                }
            }
            session = self.reconnect().await;
        }
    }

    /// Connects again, to the next server first, backing off after each failure. `None` when
    /// the client was closed or the task gives up.
    async fn reconnect(&mut self) -> Option<Session> {
        let mut failures = 0u32;
        let mut last_failure = String::new();
        loop {
            if failures >= self.config.reconnect_attempts_max {
                let reason = format!("gave up after {failures} connection attempts; last: {last_failure}");
                self.stop(ClientError::Unavailable(reason.clone()), reason);
                return None;
            }
            if failures > 0 {
                let wait = self.config.backoff(failures, &mut rand::rng());
                self.idle(tokio::time::sleep(wait)).await?;
            }
            self.server = (self.server + 1) % self.config.servers.len();
            let server = self.config.servers[self.server];
            let hello = hello_frame(&self.config, &self.core);
            // Cloned so the connect future does not borrow the task, which `idle` needs.
            let endpoint = self.config.endpoint.clone();
            let open = session::open(
                endpoint.as_ref(),
                self.quic.clone(),
                server,
                self.config.server_name.clone(),
                hello,
                self.config.connect_timeout,
            );
            match self.idle(open).await? {
                Ok((session, welcome)) => {
                    let started = self.core.handle_welcome(&welcome.conversations);
                    {
                        let mut state = self.shared.lock();
                        state.start_cursors(started);
                        state.welcome = welcome;
                        state.node = Some(server);
                    }
                    self.acked.clear();
                    self.emit(Event::Connected { node: server });
                    return Some(session);
                }
                Err(OpenError::Refused { code: ErrorCode::Unauthenticated, message }) => {
                    self.emit(Event::Error {
                        code: ErrorCode::Unauthenticated,
                        conversation: None,
                        message: message.clone(),
                    });
                    self.stop(ClientError::Unauthenticated(message.clone()), format!("unauthenticated: {message}"));
                    return None;
                }
                Err(OpenError::Refused { code, message }) => last_failure = format!("{server}: {code}: {message}"),
                Err(OpenError::Failed(reason)) => last_failure = format!("{server}: {reason}"),
            }
            failures += 1;
            tracing::debug!(failures, %last_failure, "reconnect attempt failed");
        }
    }

    /// Gives up: everything waiting fails, and the application's event stream ends.
    fn stop(&mut self, error: ClientError, reason: String) {
        let message = error.to_string();
        self.core.handle_stopped(|| match &error {
            ClientError::Unauthenticated(message) => ClientError::Unauthenticated(message.clone()),
            _ => ClientError::Unavailable(message.clone()),
        });
        self.emit(Event::Disconnected { reason });
        self.deliver();
    }

    /// Runs `future` while still taking commands (sends and requests wait in the core for
    /// the next session). `None` if the client was closed meanwhile.
    async fn idle<F: std::future::Future>(&mut self, future: F) -> Option<F::Output> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => {
                    if let Some(End::Close(done)) = self.command(command) {
                        self.core.handle_stopped(|| ClientError::Closed);
                        self.deliver();
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        return None;
                    }
                    self.deliver();
                }
                output = &mut future => return Some(output),
            }
        }
    }

    /// Handles one command; returns how the session should end, if it should.
    fn command(&mut self, command: Option<Command>) -> Option<End> {
        match command {
            None => Some(End::Close(None)),
            Some(Command::Close { done }) => Some(End::Close(Some(done))),
            Some(Command::Reconnect) => Some(End::Dropped("reconnect requested".into())),
            Some(Command::Signal(frame)) => {
                self.core.submit_signal(frame);
                None
            }
            Some(Command::Send { conversation, body, reply, slot }) => {
                let client_seq = match self.shared.lock().take_client_seq() {
                    Ok(client_seq) => client_seq,
                    Err(error) => {
                        let _ = reply.send(Err(error));
                        return None;
                    }
                };
                self.send_replies.insert((conversation, client_seq), (reply, slot));
                self.core.submit_send(conversation, client_seq, body);
                None
            }
            Some(Command::Request { request, reply }) => {
                if self.core.pending_requests() >= REQUESTS_PENDING_MAX {
                    // Forget requests whose callers stopped waiting (timed out) first.
                    let abandoned: Vec<String> = self
                        .request_replies
                        .iter()
                        .filter(|(_, reply)| reply.is_closed())
                        .map(|(id, _)| id.clone())
                        .collect();
                    for request_id in abandoned {
                        self.request_replies.remove(&request_id);
                        self.core.forget_request(&request_id);
                    }
                }
                if self.core.pending_requests() >= REQUESTS_PENDING_MAX {
                    let _ = reply.send(Err(ClientError::TooManyRequests(REQUESTS_PENDING_MAX)));
                    return None;
                }
                let request_id = self.core.submit_request(request);
                self.request_replies.insert(request_id, reply);
                None
            }
        }
    }

    /// Serves one session until it ends.
    async fn serve(&mut self, mut session: Session) -> End {
        let mut ack_at: Option<tokio::time::Instant> = None;
        // Frames that arrived together with welcome.
        if let Err(reason) = self.decode(&mut session.decoder, session.node, &[]) {
            session.close(false).await;
            return End::Dropped(reason);
        }
        let end = loop {
            self.deliver();
            let retry_at = self.core.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                command = self.commands.recv() => {
                    if let Some(end) = self.command(command) {
                        break end;
                    }
                }
                permit = session.writer.reserve(), if self.core.has_transmit() => {
                    let Ok(permit) = permit else { break End::Dropped("connection lost while writing".into()) };
                    let mut bytes = Vec::new();
                    while bytes.len() < WRITE_BATCH_BYTES_MAX {
                        let Some(frame) = self.core.poll_transmit() else { break };
                        if let Err(error) = encode_frame(&frame, &mut bytes) {
                            tracing::warn!(%error, "dropping a frame that cannot be encoded");
                        }
                    }
                    permit.send(bytes);
                }
                chunk = session.recv.read_chunk(session::READ_CHUNK_BYTES, true) => {
                    match chunk {
                        Ok(Some(chunk)) => {
                            if let Err(reason) = self.decode(&mut session.decoder, session.node, &chunk.bytes) {
                                break End::Dropped(reason);
                            }
                        }
                        Ok(None) => break End::Dropped(format!("{} ended the session", session.node)),
                        Err(error) => break End::Dropped(format!("connection to {} lost: {error}", session.node)),
                    }
                }
                () = self.shared.wake.notified() => {
                    self.core.handle_room(self.room());
                    if ack_at.is_none() {
                        ack_at = Some(tokio::time::Instant::now() + ACK_DELAY);
                    }
                }
                () = sleep_until(ack_at), if ack_at.is_some() => {
                    ack_at = None;
                    self.queue_acks();
                }
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    self.core.handle_timeout(tokio::time::Instant::now().into_std());
                }
            }
        };
        let graceful = matches!(end, End::Close(_));
        if graceful {
            self.queue_acks();
            let mut bytes = Vec::new();
            while let Some(frame) = self.core.poll_transmit() {
                if let ClientFrame::Ack { .. } = frame {
                    let _ = encode_frame(&frame, &mut bytes);
                }
            }
            if !bytes.is_empty() {
                let _ = session.writer.send(bytes).await;
            }
        }
        session.close(graceful).await;
        end
    }

    /// Feeds `bytes` to the session's decoder and every whole frame to the core.
    fn decode(&mut self, decoder: &mut FrameDecoder, node: SocketAddr, bytes: &[u8]) -> Result<(), String> {
        let mut rest = bytes;
        // tokio's clock, not the OS's: the simulator drives it, and the core's timers are
        // compared against it.
        let now = tokio::time::Instant::now().into_std();
        loop {
            let taken = decoder.push(rest);
            rest = &rest[taken..];
            // Room is measured once per chunk: only this task fills the queue, so it can only
            // grow while the frames are handled.
            self.core.handle_room(self.room());
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => self.core.handle_frame(frame, now),
                    Ok(None) => break,
                    Err(error) => {
                        // The server never sends a bad frame; if it does, the stream is not
                        // to be trusted any more.
                        return Err(format!("bad frame from {node}: {error}"));
                    }
                }
            }
            self.deliver();
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    /// Queues an `ack` for every conversation whose handed cursor passed the acked one.
    fn queue_acks(&mut self) {
        let handed = self.shared.lock().handed.clone();
        for (conversation, seq) in handed {
            if self.acked.get(&conversation).is_none_or(|&acked| acked < seq) {
                self.acked.insert(conversation, seq);
                self.core.queue_frame(ClientFrame::Ack { conversation, seq });
            }
        }
    }

    /// Events the core may still add to the queue.
    fn room(&self) -> usize {
        self.events.capacity().saturating_sub(CONNECTION_EVENTS_RESERVED)
    }

    /// Hands the core's events to the application and its completions to the callers.
    fn deliver(&mut self) {
        let started = self.core.take_started();
        if !started.is_empty() {
            self.shared.lock().start_cursors(started);
        }
        while let Some(event) = self.core.poll_event() {
            self.emit(event);
        }
        let dropped = self.core.dropped_events() + self.dropped_here;
        if dropped != self.dropped_reported {
            self.shared.lock().dropped_events = dropped;
            self.dropped_reported = dropped;
        }
        while let Some(completion) = self.core.poll_completion() {
            match completion {
                Completion::Send { conversation, client_seq, result } => {
                    if let Some((reply, _slot)) = self.send_replies.remove(&(conversation, client_seq)) {
                        let _ = reply.send(result);
                    }
                }
                Completion::Request { request_id, result } => {
                    if let Some(reply) = self.request_replies.remove(&request_id) {
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }

    fn emit(&mut self, event: Event) {
        // A closed queue means the application dropped the client; nothing is waiting.
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            // The core counts every event against the room, so only connection events can
            // get here, and only when the application has stopped reading.
            assert!(!matches!(event, Event::Message(_)), "a message overflowed the event queue");
            self.dropped_here += 1;
            tracing::debug!(?event, "event queue full; event dropped");
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn config() -> ClientConfig {
        ClientConfig::new(vec!["127.0.0.1:1".parse().unwrap()], Vec::new(), "t", DeviceId::new("d").unwrap())
    }

    #[test]
    fn backoff_doubles_within_bounds_and_is_jittered() {
        let config = config();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for failures in 1..=40 {
            let ceiling =
                (config.reconnect_backoff_min * 2u32.pow(failures.min(20) - 1)).min(config.reconnect_backoff_max);
            for _ in 0..20 {
                let wait = config.backoff(failures, &mut rng);
                assert!(wait <= ceiling && wait >= ceiling / 2, "{failures}: {wait:?} outside {ceiling:?}");
            }
        }
        let waits: std::collections::BTreeSet<Duration> = (0..20).map(|_| config.backoff(6, &mut rng)).collect();
        assert!(waits.len() > 10, "jittered: {waits:?}");
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let connect = |config: ClientConfig| {
            runtime.block_on(Client::connect(config, Box::new(MemoryCursors::new()))).map(|_| ()).unwrap_err()
        };
        let mut none = config();
        none.servers.clear();
        assert!(matches!(connect(none), ClientError::Config(reason) if reason == "no servers given"));
        let error = connect(config());
        assert!(error.to_string().contains("CA file holds no certificate"), "{error}");
        let mut backwards = config();
        backwards.reconnect_backoff_max = Duration::from_millis(1);
        assert!(matches!(connect(backwards), ClientError::Config(_)));
    }
}
