//! The client edge: sessions, whatever carries them. A session runs the same way over QUIC
//! (ALPN `natter/1`: one bidirectional stream, frames from `natter_proto::codec`, a JWT in
//! `hello`) and over the browser transports of [`crate::web`] (WebSocket, SSE and long-poll,
//! JSON frames, the JWT checked on the HTTP request); a [`Wire`] is the difference.
//!
//! A session authenticates (`hello` → `welcome` with the user's conversations, then everything
//! after each `resume` cursor), then gets every new message of the conversations it follows
//! pushed as `message` frames, each seq once and in order ([`crate::delivery`]; its own sends
//! included, after their `send_ok`). When the user is added to a conversation while the session
//! is open, the session sends an unsolicited `conversation` frame and follows it from seq 1.
//! It can `create_conversation` (1:1 with the deterministic id, or a group), `send` → `send_ok`
//! after commit (exactly once per `client_seq`, resends answered with the original seq), move
//! `ack`/`read` cursors, page `history`, `ping`.
//!
//! Bad input never ends a session for anyone else: a bad frame gets an `error` and the session
//! continues; a peer that sends [`BAD_FRAMES_MAX`] bad frames in a row, fails to authenticate,
//! or never says `hello` is closed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use natter_canary::Canary;
use natter_proto::codec::{encode_frame, FrameDecoder};
use natter_proto::frame_error::FrameError;
use natter_proto::frames::{ClientFrame, ConversationSummary, PresencePrivacy, PresenceStatus, ServerFrame};
use natter_proto::limits::{HISTORY_PAGE_MAX, MEMBERS_MAX, MEMBERS_MIN, SESSIONS_PER_USER_MAX};
use natter_proto::{ConversationId, DeviceId, ErrorCode, UserId};
use natter_raft::command::{Command, CursorMove, Placed, Response};
use natter_raft::placement::{shard_of_conversation, shard_of_user};
use natter_raft::query::{Query, QueryResult, CATCH_UP_PAGE_MAX};
use rand::rngs::StdRng;
use rand::RngCore;
use tokio::sync::mpsc;

use crate::auth::TokenKey;
use crate::cluster::{Cluster, ClusterError};
use crate::delivery::{Listing, Push, Topic};
use crate::env::Clock;
use crate::presence::Coalescer;
use crate::rate::{self, Action, Limiters};
use crate::sends::{Answer, Batch, BatchOutcome, SendPipeline};
use crate::transport::ClientHandler;

/// How long a new connection may take to open its stream and say `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive undecodable frames after which a session is closed.
pub const BAD_FRAMES_MAX: u32 = 16;
/// Most conversations listed in one `welcome`.
pub const WELCOME_CONVERSATIONS_MAX: usize = 1024;
/// How long a closing session waits for its last frames to be acknowledged.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Users one session watches the presence of at most (the members of its conversations).
pub const PRESENCE_WATCH_MAX: usize = 1024;
/// Bytes read from the stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// QUIC application close codes of client connections.
pub mod close {
    /// Authentication failed or never happened.
    pub const UNAUTHENTICATED: u32 = 0x10;
    /// Too many sessions for this user.
    pub const RATE_LIMITED: u32 = 0x11;
    /// Too many bad frames in a row.
    pub const BAD_FRAMES: u32 = 0x12;
}

/// The client edge of one node.
pub struct ClientEdge {
    cluster: Arc<Cluster>,
    tokens: TokenKey,
    clock: Arc<dyn Clock>,
    ids: Mutex<StdRng>,
    /// Per user with sessions on this node: how many, and the user's rate limiters.
    sessions: Mutex<BTreeMap<UserId, (usize, Arc<Limiters>)>>,
}

impl ClientEdge {
    /// An edge serving `cluster`'s clients, checking tokens with `tokens`.
    pub fn new(cluster: Arc<Cluster>, tokens: TokenKey, clock: Arc<dyn Clock>, ids: StdRng) -> Arc<Self> {
        Arc::new(Self { cluster, tokens, clock, ids: Mutex::new(ids), sessions: Mutex::new(BTreeMap::new()) })
    }

    fn now_seconds(&self) -> u64 {
        self.clock.wall_ms() / 1000
    }

    /// Counts a session of `user` and gives it the user's rate limiters; `None` if the user
    /// already holds the maximum.
    fn admit(&self, user: &UserId) -> Option<Arc<Limiters>> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let (count, limiters) = sessions.entry(user.clone()).or_insert_with(|| {
            (0, Arc::new(Limiters::per_user(&self.cluster.config().rate_limits, self.clock.clone())))
        });
        if *count >= SESSIONS_PER_USER_MAX {
            return None;
        }
        *count += 1;
        Some(limiters.clone())
    }

    fn release(&self, user: &UserId) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if let Some((count, _)) = sessions.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                sessions.remove(user);
            }
        }
    }

    /// Checks a token presented outside `hello` (on an HTTP request): its user, or why not.
    pub fn authenticate(&self, token: &str) -> Result<UserId, String> {
        self.tokens.verify(token, self.now_seconds()).map_err(|error| error.to_string())
    }

    /// The node's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Fresh random bytes for ids the edge hands out (HTTP session ids).
    pub fn random_bytes<const N: usize>(&self) -> [u8; N] {
        let mut bytes = [0u8; N];
        self.ids.lock().expect("ids lock").fill_bytes(&mut bytes);
        bytes
    }

    /// Serves one session over `wire` until it ends. `authenticated` is the user a transport
    /// already authenticated (from the HTTP request's token); `hello` then needs no token.
    pub async fn serve<W: Wire>(self: Arc<Self>, wire: W, authenticated: Option<UserId>) {
        let mut session = Session {
            edge: self.clone(),
            wire,
            authenticated,
            identity: None,
            bad_frames: 0,
            subscription: None,
            new_pushes: None,
            delivered: BTreeMap::new(),
            receipts: BTreeMap::new(),
            listing: Listing::default(),
            typing: BTreeSet::new(),
            contacts: BTreeSet::new(),
            presence_shown: BTreeMap::new(),
            presence_pending: Coalescer::new(),
            limiters: None,
            sending: None,
        };
        session.run().await;
        if let Some(sending) = session.sending.take() {
            // Batches being proposed run to the end: one that commits is then pushed to the
            // other members at once (a dropped proposal would leave that to their next
            // refresh). Their answers have no one to go to; the client resends what it did
            // not hear back about, and dedup answers the resend.
            let mut proposals = sending.proposals;
            if !proposals.is_empty() {
                crate::spawn(async move { while proposals.next().await.is_some() {} });
            }
        }
        if let Some(id) = session.subscription {
            self.cluster.deliveries().close(id);
            if session.identity.is_some() {
                self.cluster.presence_close(id);
            }
        }
        if let Some((user, _)) = &session.identity {
            for conversation in std::mem::take(&mut session.typing) {
                let shard = shard_of_conversation(&conversation, self.cluster.config().shards);
                self.cluster.relay(shard, Push::Typing { conversation, user: user.clone(), active: false });
            }
            self.release(user);
        }
    }

    async fn serve_connection(self: Arc<Self>, connection: quinn::Connection) {
        let stream = tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi()).await;
        let Ok(Ok((send, recv))) = stream else {
            connection.close(close::UNAUTHENTICATED.into(), b"no session stream");
            return;
        };
        let wire = QuicWire { connection, send, recv, decoder: FrameDecoder::new() };
        self.serve(wire, None).await;
    }
}

/// What a session read from its client.
pub enum Inbound {
    /// Frames, in the order sent, each decoded or the error that made it unreadable.
    Frames(Vec<Result<ClientFrame, FrameError>>),
    /// The client is gone (it finished, the connection dropped, or the transport expired it).
    Gone,
}

/// How a session talks to its client: the one thing QUIC, WebSocket and the HTTP transports do
/// differently. A session reads and writes frames; the wire encodes, decodes and carries them.
pub trait Wire: Send + 'static {
    /// The next frames the client sent. Must be cancel-safe: the session waits for it beside
    /// pushes and drops it when a push comes first.
    fn receive(&mut self) -> impl Future<Output = Inbound> + Send;
    /// Sends `frame`; `Err` when the client is gone.
    fn send(&mut self, frame: &ServerFrame) -> impl Future<Output = Result<(), ()>> + Send;
    /// Ends the session with `code` (one of [`close`]) and `reason`, after the frames already
    /// sent have had a chance to arrive.
    fn close(&mut self, code: u32, reason: &'static str) -> impl Future<Output = ()> + Send;
}

/// A QUIC session: one bidirectional stream of length-prefixed postcard frames.
struct QuicWire {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl Wire for QuicWire {
    async fn receive(&mut self) -> Inbound {
        // `read_chunk` is cancel-safe, and everything after it is synchronous.
        let chunk = match self.recv.read_chunk(READ_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) | Err(_) => return Inbound::Gone,
        };
        let mut frames = Vec::new();
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let taken = self.decoder.push(rest);
            rest = &rest[taken..];
            loop {
                match self.decoder.next_frame::<ClientFrame>() {
                    Ok(Some(frame)) => frames.push(Ok(frame)),
                    Ok(None) => break,
                    Err(error) => frames.push(Err(error)),
                }
            }
        }
        Inbound::Frames(frames)
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), ()> {
        let mut bytes = Vec::new();
        if let Err(error) = encode_frame(frame, &mut bytes) {
            tracing::warn!(%error, "dropping an unencodable server frame");
            return Ok(());
        }
        self.send.write_all(&bytes).await.map_err(|_| ())
    }

    async fn close(&mut self, code: u32, reason: &'static str) {
        // Let the last frames (the error saying why) reach the client before closing: a QUIC
        // close discards stream data still in flight.
        if self.send.finish().is_ok() {
            let _ = tokio::time::timeout(CLOSE_LINGER, self.send.stopped()).await;
        }
        self.connection.close(code.into(), reason.as_bytes());
    }
}

/// Hands client connections to a [`ClientEdge`].
pub struct EdgeHandler(pub Arc<ClientEdge>);

impl ClientHandler for EdgeHandler {
    fn serve(&self, connection: quinn::Connection) -> BoxFuture<'static, ()> {
        let edge = self.0.clone();
        Box::pin(async move { edge.serve_connection(connection).await })
    }
}

/// Why a session ends.
enum End {
    /// The client finished its stream or the connection dropped.
    Gone,
    /// We closed it with this code and reason.
    Closed(u32, &'static str),
}

struct Session<W> {
    edge: Arc<ClientEdge>,
    wire: W,
    /// The user the transport authenticated before the session began, if it did.
    authenticated: Option<UserId>,
    identity: Option<(UserId, DeviceId)>,
    bad_frames: u32,
    /// This session's delivery registration, once authenticated.
    subscription: Option<u64>,
    /// Pushes, handed from `hello` to the frame loop.
    new_pushes: Option<mpsc::Receiver<Arc<Push>>>,
    /// Per subscribed conversation, the last seq delivered to this session.
    delivered: BTreeMap<ConversationId, u64>,
    /// The last receipt sent per (conversation, member): receipts only ever go forward, even
    /// when a new leader answers from a replica that applied a little less.
    receipts: BTreeMap<(ConversationId, UserId), (u64, u64)>,
    /// The user's conversation list as this session knows it, to notice joins whose push was
    /// lost (the leader's [`Push::Listing`] then differs).
    listing: Listing,
    /// Conversations this session said it is typing in and has not said it stopped: when the
    /// session ends, the others are told it stopped.
    typing: BTreeSet<ConversationId>,
    /// Users whose presence this session watches: members of its conversations.
    contacts: BTreeSet<UserId>,
    /// The presence last shown per contact, so repeats (every interest refresh carries the
    /// current presence) are not sent again.
    presence_shown: BTreeMap<UserId, ShownPresence>,
    /// Presence changes waiting for the once-a-second flush.
    presence_pending: Coalescer<ShownPresence>,
    /// The connection's and the user's rate limiters, from `hello` on.
    limiters: Option<(Box<Limiters>, Arc<Limiters>)>,
    /// Sends outstanding, from the first send on (an idle session holds none of it).
    sending: Option<Box<Sending>>,
}

/// A session's outstanding sends: which to propose next ([`SendPipeline`]) and the batches
/// being proposed.
#[derive(Default)]
struct Sending {
    pipeline: SendPipeline,
    proposals: FuturesUnordered<BoxFuture<'static, (Batch, BatchOutcome)>>,
}

/// Waits for the next proposed batch to end, or forever while none is in flight.
async fn next_proposed(sending: &mut Option<Box<Sending>>) -> (Batch, BatchOutcome) {
    match sending {
        Some(sending) if !sending.proposals.is_empty() => sending.proposals.next().await.expect("a batch is in flight"),
        _ => std::future::pending().await,
    }
}

/// A contact's presence as this session shows it: (status, last seen, custom text).
type ShownPresence = (PresenceStatus, Option<u64>, Option<String>);

/// Waits until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Waits for the next push, or forever before the session subscribed.
async fn next_push(pushes: &mut Option<mpsc::Receiver<Arc<Push>>>) -> Option<Arc<Push>> {
    match pushes {
        Some(pushes) => pushes.recv().await,
        None => std::future::pending().await,
    }
}

impl<W: Wire> Session<W> {
    async fn run(&mut self) {
        let end = self.serve_frames().await;
        if let End::Closed(code, reason) = end {
            self.wire.close(code, reason).await;
        }
    }

    /// The session's loop. Handling a push or a frame can await proposals and reads, whose
    /// futures are large (kilobytes); they are boxed so the loop's own future, which every
    /// idle session holds for its whole life, stays small.
    async fn serve_frames(&mut self) -> End {
        let mut pushes: Option<mpsc::Receiver<Arc<Push>>> = None;
        loop {
            if pushes.is_none() {
                pushes = self.new_pushes.take();
            }
            let inbound = if self.identity.is_none() {
                match tokio::time::timeout(HELLO_TIMEOUT, self.wire.receive()).await {
                    Ok(inbound) => inbound,
                    Err(_) => return End::Closed(close::UNAUTHENTICATED, "no hello in time"),
                }
            } else {
                let flush_at = self.presence_pending.poll_timeout();
                tokio::select! {
                    biased;
                    () = sleep_until_some(flush_at) => {
                        if let Err(end) = Box::pin(self.flush_presence()).await {
                            return end;
                        }
                        continue;
                    }
                    push = next_push(&mut pushes) => {
                        match push {
                            Some(push) => {
                                if let Err(end) = Box::pin(self.on_push(Arc::unwrap_or_clone(push))).await {
                                    return end;
                                }
                                continue;
                            }
                            None => return End::Gone,
                        }
                    }
                    (batch, outcome) = next_proposed(&mut self.sending) => {
                        if let Err(end) = Box::pin(self.on_proposed(batch, outcome)).await {
                            return end;
                        }
                        continue;
                    }
                    inbound = self.wire.receive() => inbound,
                }
            };
            let frames = match inbound {
                Inbound::Frames(frames) => frames,
                Inbound::Gone => return End::Gone,
            };
            if let Err(end) = Box::pin(self.take_frames(frames)).await {
                return end;
            }
        }
    }

    /// Handles every frame the client sent, answering each unreadable one with an error.
    async fn take_frames(&mut self, frames: Vec<Result<ClientFrame, FrameError>>) -> Result<(), End> {
        for frame in frames {
            match frame {
                Ok(frame) => {
                    self.bad_frames = 0;
                    self.handle(frame).await?;
                }
                Err(error) => {
                    self.bad_frames += 1;
                    tracing::debug!(%error, "bad client frame");
                    let reply = ServerFrame::Error {
                        request_id: None,
                        conversation: None,
                        client_seq: None,
                        code: error.code(),
                        message: error.to_string(),
                        retry_after_ms: None,
                    };
                    self.write(&reply).await?;
                    if self.bad_frames >= BAD_FRAMES_MAX {
                        return Err(End::Closed(close::BAD_FRAMES, "too many bad frames"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Delivers a push: the next seq goes out at once, a later one means a gap to fill from
    /// the shard, an earlier one was already delivered.
    async fn on_push(&mut self, push: Push) -> Result<(), End> {
        match push {
            Push::Message(message) => {
                let Some(&last) = self.delivered.get(&message.conversation) else {
                    return Ok(());
                };
                if message.seq <= last {
                    Ok(())
                } else if message.seq == last + 1 {
                    self.delivered.insert(message.conversation, message.seq);
                    self.write(&ServerFrame::Message(message)).await
                } else {
                    self.catch_up(message.conversation).await
                }
            }
            Push::Receipt { conversation, user, delivered, read } => {
                if !self.delivered.contains_key(&conversation) {
                    return Ok(());
                }
                let last = self.receipts.get(&(conversation, user.clone())).copied();
                let next = last.map_or((delivered, read), |(d, r)| (d.max(delivered), r.max(read)));
                if Some(next) == last {
                    return Ok(());
                }
                self.receipts.insert((conversation, user.clone()), next);
                self.write(&ServerFrame::Receipt { conversation, user, delivered: next.0, read: next.1 }).await
            }
            Push::Behind { conversation, last_seq } => match self.delivered.get(&conversation) {
                Some(&last) if last_seq > last => self.catch_up(conversation).await,
                _ => Ok(()),
            },
            Push::Joined { conversation, .. } => {
                self.listing.handle_joined(conversation);
                if !self.join(conversation).await? {
                    self.listing.forget(&conversation);
                }
                Ok(())
            }
            Push::Listing { digest, .. } => {
                if digest == self.listing.digest() {
                    return Ok(());
                }
                self.relist().await
            }
            Push::Presence { user, status, last_seen, custom, privacy } => {
                let Some((me, _)) = self.identity.clone() else { return Ok(()) };
                if user == me || !self.contacts.contains(&user) {
                    return Ok(());
                }
                let visible = match privacy {
                    PresencePrivacy::Everyone => true,
                    PresencePrivacy::Contacts => self.delivered.contains_key(&ConversationId::direct(&me, &user)),
                    PresencePrivacy::Nobody => false,
                };
                let shown = if visible { (status, last_seen, custom) } else { (PresenceStatus::Offline, None, None) };
                if self.presence_shown.get(&user) == Some(&shown) {
                    return Ok(());
                }
                self.presence_shown.insert(user.clone(), shown.clone());
                self.presence_pending.handle_update(user, shown, self.edge.clock.now());
                self.flush_presence().await
            }
            Push::Typing { conversation, user, active } => {
                // A user's own typing is not news to their other devices.
                let own = self.identity.as_ref().is_some_and(|(me, _)| *me == user);
                if own || !self.delivered.contains_key(&conversation) {
                    return Ok(());
                }
                self.write(&ServerFrame::Typing { conversation, user, active }).await
            }
        }
    }

    /// The user shard's list differs from the session's: reads it again and joins what is new.
    /// A read that fails changes nothing, so the next refresh tries again.
    async fn relist(&mut self) -> Result<(), End> {
        let Some((user, _)) = self.identity.clone() else { return Ok(()) };
        let shard = shard_of_user(&user, self.edge.cluster.config().shards);
        let fresh = match self.edge.cluster.read(shard, Query::UserConversations { user }).await {
            Ok(QueryResult::Conversations(ids)) => Listing::new(ids),
            Ok(other) => {
                tracing::warn!(?other, "unexpected answer to a conversation list read");
                return Ok(());
            }
            Err(error) => {
                tracing::debug!(%error, "re-reading a conversation list failed; retried at the next refresh");
                return Ok(());
            }
        };
        for conversation in self.listing.handle_list(fresh) {
            if !self.join(conversation).await? {
                self.listing.forget(&conversation);
            }
        }
        Ok(())
    }

    /// The user joined `conversation`: unless the session already follows it, tells the client
    /// (an unsolicited `conversation` frame) and delivers it from seq 1. False when the shard
    /// could not be read, so the caller can retry later; a refused read (the user is no longer
    /// a member, or the join was stale) is done with.
    async fn join(&mut self, conversation: ConversationId) -> Result<bool, End> {
        let Some((user, _)) = self.identity.clone() else { return Ok(true) };
        if self.delivered.contains_key(&conversation) {
            return Ok(true);
        }
        let shard = shard_of_conversation(&conversation, self.edge.cluster.config().shards);
        let view = match self.edge.cluster.read(shard, Query::Conversation { conversation, user }).await {
            Ok(QueryResult::Conversation(view)) => view,
            Ok(QueryResult::Rejected(error)) => {
                tracing::debug!(%error, "a joined conversation is not readable; not following it");
                return Ok(true);
            }
            Ok(other) => {
                tracing::warn!(?other, "unexpected answer to a conversation read");
                return Ok(true);
            }
            Err(error) => {
                tracing::debug!(%error, "reading a joined conversation failed; retried at the next refresh");
                return Ok(false);
            }
        };
        // Follow (subscribe) before the catch-up read: a message committed meanwhile is then
        // either in the read or in the push queue, where it is dropped as delivered.
        self.follow(conversation, 0);
        self.watch(&view.members);
        let frame =
            ServerFrame::Conversation { id: view.id, members: view.members, title: view.title, request_id: None };
        self.write(&frame).await?;
        self.catch_up(conversation).await?;
        Ok(true)
    }

    /// Takes a turn at `action` under the connection's and the user's rate limits. A send whose
    /// turn is at most [`rate::SEND_WAIT_MAX`] away waits for it (the session serves frames in
    /// order, so this slows the client down and keeps its sends in order); otherwise, how long
    /// until the turn comes.
    async fn take_turn(&mut self, action: Action) -> Result<(), Duration> {
        let Some((connection, user_limits)) = &self.limiters else { return Ok(()) };
        for _ in 0..rate::SEND_WAITS_MAX {
            match rate::check_both(connection, user_limits, action) {
                Ok(()) => return Ok(()),
                Err(wait) if action == Action::Send && wait <= rate::SEND_WAIT_MAX => {
                    tokio::time::sleep(wait).await;
                }
                Err(wait) => return Err(wait),
            }
        }
        rate::check_both(connection, user_limits, action)
    }

    /// Sends the presence changes the coalescer lets out now (at most one round a second).
    async fn flush_presence(&mut self) -> Result<(), End> {
        for (user, (status, last_seen, custom)) in self.presence_pending.poll_flush(self.edge.clock.now()) {
            self.write(&ServerFrame::Presence { user, status, last_seen, custom }).await?;
        }
        Ok(())
    }

    /// Watches the presence of `members` (other than the session's user), up to
    /// [`PRESENCE_WATCH_MAX`] users.
    fn watch(&mut self, members: &[UserId]) {
        let (Some((me, _)), Some(id)) = (&self.identity, self.subscription) else { return };
        for member in members {
            if member == me || self.contacts.len() >= PRESENCE_WATCH_MAX {
                continue;
            }
            if self.contacts.insert(member.clone()) {
                self.edge.cluster.deliveries().subscribe(id, Topic::Presence(member.clone()));
            } else if members.len() == 2 {
                // A new 1:1 may make a `contacts`-only user visible to this one: judge the
                // presence this node last had for them again (repeats no longer come by).
                self.edge.cluster.deliveries().resend_presence(id, member);
            }
        }
    }

    /// Starts delivering `conversation` to this session from after `cursor`.
    fn follow(&mut self, conversation: ConversationId, cursor: u64) {
        if let Some(id) = self.subscription {
            if let std::collections::btree_map::Entry::Vacant(entry) = self.delivered.entry(conversation) {
                entry.insert(cursor);
                self.edge.cluster.deliveries().subscribe(id, Topic::Conversation(conversation));
            }
        }
    }

    async fn write(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.wire.send(frame).await.map_err(|()| End::Gone)
    }

    async fn reply_error(
        &mut self,
        request: &ClientFrame,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<(), End> {
        self.write(&ServerFrame::error_reply(request, code, message)).await
    }

    async fn handle(&mut self, frame: ClientFrame) -> Result<(), End> {
        if let Err(error) = frame.validate() {
            return self.write(&ServerFrame::error_for(&frame, &error)).await;
        }
        let Some((user, device)) = self.identity.clone() else {
            return match frame {
                ClientFrame::Hello { .. } => self.hello(frame).await,
                _ => {
                    self.reply_error(&frame, ErrorCode::HelloRequired, "send hello (with a token) first").await?;
                    Err(End::Closed(close::UNAUTHENTICATED, "request before hello"))
                }
            };
        };
        if let (Some(id), false) = (self.subscription, matches!(frame, ClientFrame::Presence { .. })) {
            // Whatever the device does shows it is in use.
            self.edge.cluster.presence_frame(id);
        }
        let action = match &frame {
            ClientFrame::Send { .. } => Some(Action::Send),
            ClientFrame::CreateConversation { .. } => Some(Action::Create),
            ClientFrame::Typing { .. } => Some(Action::Typing),
            _ => None,
        };
        if let Some(action) = action {
            if let Err(wait) = self.take_turn(action).await {
                // Nothing of the request was done: the client retries it after the wait.
                let wait_ms = (wait.as_millis() as u64).max(1);
                let message = format!("{user} makes {} faster than allowed; retry in {wait_ms} ms", action.describe());
                return self.write(&ServerFrame::rate_limited(&frame, message, wait_ms)).await;
            }
        }
        match &frame {
            ClientFrame::Hello { .. } => {
                self.reply_error(&frame, ErrorCode::InvalidArgument, "this session already said hello").await
            }
            ClientFrame::Ping { nonce } => self.write(&ServerFrame::Pong { nonce: *nonce }).await,
            ClientFrame::CreateConversation { request_id, members, title } => {
                let reply = match self.create(&user, request_id, members, title.clone()).await {
                    Ok((frame, last_seq)) => {
                        if let ServerFrame::Conversation { id, members, .. } = &frame {
                            self.follow(*id, last_seq);
                            self.watch(members);
                        }
                        Ok(frame)
                    }
                    Err(error) => Err(error),
                };
                self.answer(&frame, reply).await
            }
            ClientFrame::Send { conversation, client_seq, body } => {
                if natter_canary::active(Canary::AckBeforeCommit) {
                    let command = Command::Append {
                        conversation: *conversation,
                        sender: user.clone(),
                        device: device.clone(),
                        client_seq: *client_seq,
                        ts: self.edge.clock.wall_ms(),
                        body: body.clone(),
                    };
                    let shard = shard_of_conversation(conversation, self.edge.cluster.config().shards);
                    return self.ack_before_commit(shard, *conversation, *client_seq, command).await;
                }
                // Back-pressure: a client with every send it may have outstanding waits for
                // answers before this one is taken.
                while self.sending.as_ref().is_some_and(|sending| sending.pipeline.is_full()) {
                    let (batch, outcome) = next_proposed(&mut self.sending).await;
                    self.on_proposed(batch, outcome).await?;
                }
                let sending = self.sending.get_or_insert_with(Box::default);
                if let Some(batch) = sending.pipeline.handle_send(*conversation, *client_seq, body.clone()) {
                    self.propose(batch);
                }
                Ok(())
            }
            ClientFrame::Ack { conversation, seq } | ClientFrame::Read { conversation, seq } => {
                let (delivered, read) = match &frame {
                    ClientFrame::Ack { .. } => (Some(*seq), None),
                    _ => (None, Some(*seq)),
                };
                let shard = shard_of_conversation(conversation, self.edge.cluster.config().shards);
                let step = CursorMove {
                    conversation: *conversation,
                    user: user.clone(),
                    device: device.clone(),
                    delivered,
                    read,
                };
                // A followed conversation is one the user is a member of: its moves join the
                // shard's next batch. Anything else is proposed alone, so a non-member (or a
                // full queue) gets its answer on this session.
                if self.delivered.contains_key(conversation)
                    && self.edge.cluster.submit_cursor_move(shard, step.clone())
                {
                    return Ok(());
                }
                let CursorMove { conversation, user, device, delivered, read } = step;
                let command = Command::MoveCursor { conversation, user, device, delivered, read };
                match self.edge.cluster.propose(shard, command).await {
                    // Receipts fan out with delivery; a cursor move itself needs no answer.
                    Ok(Response::Cursor { .. }) => Ok(()),
                    Ok(other) => self.answer(&frame, Err(refusal(other))).await,
                    Err(error) => self.answer(&frame, Err(unavailable(error))).await,
                }
            }
            ClientFrame::History { request_id, conversation, before, limit } => {
                let query =
                    Query::History { conversation: *conversation, user: user.clone(), before: *before, limit: *limit };
                let shard = shard_of_conversation(conversation, self.edge.cluster.config().shards);
                let reply = match self.edge.cluster.read(shard, query).await {
                    Ok(QueryResult::Messages(messages)) => {
                        Ok(history_frame(request_id.clone(), *conversation, messages))
                    }
                    Ok(QueryResult::Rejected(error)) => Err((error.code(), error.to_string())),
                    Ok(other) => Err((ErrorCode::Internal, format!("unexpected answer {other:?}"))),
                    Err(error) => Err(unavailable(error)),
                };
                self.answer(&frame, reply).await
            }
            ClientFrame::Typing { conversation, active } => {
                // Followed conversations are the user's; typing is never stored, only relayed.
                if !self.delivered.contains_key(conversation) {
                    let message = format!("{user} does not follow {conversation} in this session");
                    return self.reply_error(&frame, ErrorCode::NotMember, message).await;
                }
                if *active {
                    self.typing.insert(*conversation);
                } else {
                    self.typing.remove(conversation);
                }
                let shard = shard_of_conversation(conversation, self.edge.cluster.config().shards);
                self.edge.cluster.relay(shard, Push::Typing { conversation: *conversation, user, active: *active });
                Ok(())
            }
            ClientFrame::Presence { status, custom } => {
                if let Some(id) = self.subscription {
                    self.edge.cluster.presence_activity(id, *status, custom.clone());
                }
                Ok(())
            }
            ClientFrame::Settings { request_id, presence_privacy } => {
                let reply = self.settings(&user, request_id, *presence_privacy).await;
                self.answer(&frame, reply).await
            }
        }
    }

    /// Stores the user's settings on their user shard (keeping what the frame does not set)
    /// and answers with what was stored.
    async fn settings(
        &mut self,
        user: &UserId,
        request_id: &str,
        presence_privacy: PresencePrivacy,
    ) -> Result<ServerFrame, (ErrorCode, String)> {
        let cluster = &self.edge.cluster;
        let shard = shard_of_user(user, cluster.config().shards);
        let mut settings = match cluster.read(shard, Query::User { user: user.clone() }).await {
            Ok(QueryResult::User(record)) => record.settings,
            Ok(other) => return Err((ErrorCode::Internal, format!("unexpected answer {other:?}"))),
            Err(error) => return Err(unavailable(error)),
        };
        settings.presence_privacy = presence_privacy;
        match cluster.propose(shard, Command::SetSettings { user: user.clone(), settings: settings.clone() }).await {
            Ok(Response::Rejected(error)) => Err((error.code(), error.to_string())),
            Ok(_) => Ok(ServerFrame::Settings {
                request_id: request_id.to_owned(),
                presence_privacy: settings.presence_privacy,
            }),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Starts proposing `batch`; [`Session::on_proposed`] gets its outcome.
    fn propose(&mut self, batch: Batch) {
        let (Some((user, device)), Some(sending)) = (&self.identity, self.sending.as_mut()) else {
            unreachable!("sends are taken after hello, into the pipeline")
        };
        let command = Command::AppendMany {
            conversation: batch.conversation,
            sender: user.clone(),
            device: device.clone(),
            ts: self.edge.clock.wall_ms(),
            messages: batch.messages.clone(),
        };
        let cluster = self.edge.cluster.clone();
        let shard = shard_of_conversation(&batch.conversation, cluster.config().shards);
        sending.proposals.push(Box::pin(async move {
            let outcome = match cluster.propose(shard, command).await {
                Ok(Response::AppendedMany { outcomes }) => Ok(outcomes),
                Ok(other) => Err(refusal(other)),
                Err(error) => Err(unavailable(error)),
            };
            (batch, outcome)
        }));
    }

    /// A proposed batch ended: answers its sends (and those a failure fails with it) and
    /// proposes the conversation's next batch.
    async fn on_proposed(&mut self, batch: Batch, outcome: BatchOutcome) -> Result<(), End> {
        let sending = self.sending.as_mut().expect("a batch was proposed");
        let (answers, next) = sending.pipeline.handle_done(batch, outcome);
        if let Some(next) = next {
            self.propose(next);
        } else if sending.pipeline.outstanding() == 0 {
            // Nothing outstanding: an idle session holds no pipeline.
            self.sending = None;
        }
        for Answer { conversation, client_seq, result } in answers {
            let frame = match result {
                Ok(Placed { conversation, seq, ts, .. }) => {
                    // Sending to a conversation joined after hello starts following it.
                    self.follow(conversation, seq - 1);
                    ServerFrame::SendOk { conversation, client_seq, seq, ts }
                }
                Err((code, message)) => ServerFrame::Error {
                    request_id: None,
                    conversation: Some(conversation),
                    client_seq: Some(client_seq),
                    code,
                    message,
                    retry_after_ms: None,
                },
            };
            self.write(&frame).await?;
        }
        Ok(())
    }

    /// The `AckBeforeCommit` canary: `send_ok` goes out at once with the seq the local
    /// replica expects next (1 where this node holds none), then the append is proposed and
    /// its outcome ignored, as an edge that acknowledged too early would.
    async fn ack_before_commit(
        &mut self,
        shard: natter_raft::ShardId,
        conversation: ConversationId,
        client_seq: u64,
        command: Command,
    ) -> Result<(), End> {
        let local = self.edge.cluster.store().read_shard(shard, |reader, txn| reader.conversation(txn, &conversation));
        let seq = local.ok().flatten().map_or(1, |view| view.last_seq + 1);
        let ts = self.edge.clock.wall_ms();
        self.write(&ServerFrame::SendOk { conversation, client_seq, seq, ts }).await?;
        if let Ok(Response::Appended { seq, .. }) = self.edge.cluster.propose(shard, command).await {
            self.follow(conversation, seq - 1);
        }
        Ok(())
    }

    async fn answer(
        &mut self,
        request: &ClientFrame,
        reply: Result<ServerFrame, (ErrorCode, String)>,
    ) -> Result<(), End> {
        match reply {
            Ok(frame) => self.write(&frame).await,
            Err((code, message)) => self.reply_error(request, code, message).await,
        }
    }

    async fn hello(&mut self, frame: ClientFrame) -> Result<(), End> {
        let ClientFrame::Hello { device, resume, token } = &frame else { unreachable!("called for hello") };
        // A browser transport authenticated the HTTP request; QUIC has only the hello's token.
        let verified = match (&self.authenticated, token) {
            (Some(user), None) => Ok(user.clone()),
            (Some(user), Some(token)) => match self.edge.authenticate(token) {
                Ok(same) if &same == user => Ok(same),
                Ok(other) => Err(format!("the hello's token is for {other}, the request's for {user}")),
                Err(error) => Err(error),
            },
            (None, token) => self.edge.authenticate(token.as_deref().unwrap_or("")),
        };
        let user = match verified {
            Ok(user) => user,
            Err(error) => {
                self.reply_error(&frame, ErrorCode::Unauthenticated, error).await?;
                return Err(End::Closed(close::UNAUTHENTICATED, "unauthenticated"));
            }
        };
        let Some(user_limits) = self.edge.admit(&user) else {
            let message = format!("{user} already has {SESSIONS_PER_USER_MAX} sessions");
            self.reply_error(&frame, ErrorCode::RateLimited, message).await?;
            return Err(End::Closed(close::RATE_LIMITED, "too many sessions"));
        };
        let rate_limits = &self.edge.cluster.config().rate_limits;
        let connection_limits = Box::new(Limiters::per_connection(rate_limits, self.edge.clock.clone()));
        self.limiters = Some((connection_limits, user_limits));
        self.identity = Some((user.clone(), device.clone()));
        // Subscribe before reading anything: a message that commits while we catch up is then
        // either in the catch-up read or in the push queue (and dropped there as delivered).
        // The user topic is subscribed first for the same reason: a join recorded after the
        // list is read below is pushed, and one recorded before is in the list.
        let subscription = self.edge.cluster.deliveries().open();
        self.subscription = Some(subscription.id);
        self.new_pushes = Some(subscription.pushes);
        self.edge.cluster.deliveries().subscribe(subscription.id, Topic::User(user.clone()));
        let (listing, conversations) = match self.conversations(&user).await {
            Ok(read) => read,
            Err(error) => return self.reply_error(&frame, ErrorCode::Unavailable, error.to_string()).await,
        };
        self.listing = listing;
        for summary in &conversations {
            // Without a cursor the device starts from now; `history` pages back.
            let cursor = resume.get(&summary.id).map_or(summary.last_seq, |&cursor| cursor.min(summary.last_seq));
            self.follow(summary.id, cursor);
            self.watch(&summary.members);
        }
        self.edge.cluster.presence_open(subscription.id, user.clone());
        for (&conversation, &cursor) in resume {
            // A cursor for a conversation not listed (just joined, or not a member): catch-up
            // reads it with the membership check.
            self.follow(conversation, cursor);
        }
        self.write(&ServerFrame::Welcome { user: user.clone(), device: device.clone(), conversations }).await?;
        let followed: Vec<ConversationId> = self.delivered.keys().copied().collect();
        for conversation in followed {
            self.catch_up(conversation).await?;
        }
        Ok(())
    }

    /// The user's conversation list (what the session tracks of it) and its conversations as
    /// `welcome` lists them.
    async fn conversations(&mut self, user: &UserId) -> Result<(Listing, Vec<ConversationSummary>), ClusterError> {
        let cluster = &self.edge.cluster;
        let shards = cluster.config().shards;
        let ids =
            match cluster.read(shard_of_user(user, shards), Query::UserConversations { user: user.clone() }).await? {
                QueryResult::Conversations(ids) => ids,
                _ => Vec::new(),
            };
        let listing = Listing::new(ids.iter().copied());
        let mut summaries = Vec::new();
        for id in ids.into_iter().take(WELCOME_CONVERSATIONS_MAX) {
            let query = Query::Conversation { conversation: id, user: user.clone() };
            // The user shard can briefly list a conversation the user has just left: skip it.
            if let QueryResult::Conversation(view) = cluster.read(shard_of_conversation(&id, shards), query).await? {
                summaries.push(ConversationSummary {
                    id,
                    last_seq: view.last_seq,
                    members: view.members,
                    title: view.title,
                });
            }
        }
        Ok((listing, summaries))
    }

    /// Sends every message after the session's cursor in `conversation`, page by page, in seq
    /// order, moving the cursor. A refused read (not a member) stops following it.
    async fn catch_up(&mut self, conversation: ConversationId) -> Result<(), End> {
        let Some((user, _)) = self.identity.clone() else { return Ok(()) };
        let shard = shard_of_conversation(&conversation, self.edge.cluster.config().shards);
        loop {
            let Some(&after) = self.delivered.get(&conversation) else { return Ok(()) };
            let query = Query::After { conversation, user: user.clone(), after, limit: CATCH_UP_PAGE_MAX };
            let page = match self.edge.cluster.read(shard, query).await {
                Ok(QueryResult::Messages(page)) => page,
                Ok(QueryResult::Rejected(error)) => {
                    self.delivered.remove(&conversation);
                    return self.write(&conversation_error(conversation, error.code(), error.to_string())).await;
                }
                Ok(_) => return Ok(()),
                Err(error) => {
                    return self
                        .write(&conversation_error(conversation, ErrorCode::Unavailable, error.to_string()))
                        .await
                }
            };
            let full = page.len() as u32 == CATCH_UP_PAGE_MAX;
            for message in page {
                debug_assert_eq!(message.seq, self.delivered[&conversation] + 1, "catch-up pages are contiguous");
                self.delivered.insert(conversation, message.seq);
                self.write(&ServerFrame::Message(message)).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn create(
        &mut self,
        creator: &UserId,
        request_id: &str,
        members: &[UserId],
        title: Option<String>,
    ) -> Result<(ServerFrame, u64), (ErrorCode, String)> {
        let mut everyone: BTreeSet<UserId> = members.iter().cloned().collect();
        everyone.insert(creator.clone());
        if everyone.len() < MEMBERS_MIN {
            return Err((ErrorCode::InvalidArgument, format!("a conversation needs someone besides {creator}")));
        }
        if everyone.len() > MEMBERS_MAX {
            return Err((ErrorCode::TooLarge, format!("{} members, expected at most {MEMBERS_MAX}", everyone.len())));
        }
        // Two people and no title is the 1:1 conversation, whose id both can derive.
        let direct = everyone.len() == 2 && title.is_none();
        let conversation = if direct {
            let mut pair = everyone.iter();
            ConversationId::direct(pair.next().expect("two"), pair.next().expect("two"))
        } else {
            let mut bytes = [0u8; 16];
            self.edge.ids.lock().expect("ids lock").fill_bytes(&mut bytes);
            ConversationId::from_bytes(bytes)
        };
        let command = Command::CreateConversation {
            conversation,
            creator: creator.clone(),
            members: everyone,
            title,
            direct,
            ts: self.edge.clock.wall_ms(),
        };
        let shard = shard_of_conversation(&conversation, self.edge.cluster.config().shards);
        match self.edge.cluster.propose(shard, command).await {
            Ok(Response::Conversation { conversation: view, .. }) => Ok((
                ServerFrame::Conversation {
                    id: view.id,
                    members: view.members,
                    title: view.title,
                    request_id: Some(request_id.to_owned()),
                },
                view.last_seq,
            )),
            Ok(other) => Err(refusal(other)),
            Err(error) => Err(unavailable(error)),
        }
    }
}

fn refusal(response: Response) -> (ErrorCode, String) {
    match response {
        Response::Rejected(error) => (error.code(), error.to_string()),
        other => (ErrorCode::Internal, format!("unexpected result {other:?}")),
    }
}

fn unavailable(error: ClusterError) -> (ErrorCode, String) {
    (error.code(), error.to_string())
}

fn conversation_error(conversation: ConversationId, code: ErrorCode, message: String) -> ServerFrame {
    ServerFrame::Error {
        request_id: None,
        conversation: Some(conversation),
        client_seq: None,
        code,
        message,
        retry_after_ms: None,
    }
}

/// A history frame that fits the frame limit: 200 bodies of 64 KiB would not, so the oldest
/// messages are dropped until it fits (the client pages on with `before`).
fn history_frame(
    request_id: String,
    conversation: ConversationId,
    mut messages: Vec<natter_proto::MessageRecord>,
) -> ServerFrame {
    debug_assert!(messages.len() <= HISTORY_PAGE_MAX as usize);
    loop {
        let frame = ServerFrame::History { request_id: request_id.clone(), conversation, messages };
        let fits = encode_frame(&frame, &mut Vec::new()).is_ok();
        let ServerFrame::History { messages: back, .. } = frame else { unreachable!("just built") };
        messages = back;
        if fits || messages.len() <= 1 {
            return ServerFrame::History { request_id, conversation, messages };
        }
        let drop = messages.len().div_ceil(4);
        messages.drain(..drop);
    }
}
