//! The server side of one client session as a deterministic state machine: no I/O, no clock,
//! no tasks. It has the shape of quinn-proto's `Connection`: `handle_*` methods take what
//! happened (a frame from the client, a push from delivery, the answer to a read or a
//! proposal, a timer) with the time passed in; `poll_*` methods hand out what to do (frames to
//! write, requests whose answers come back through `handle_*`, effects that need no answer,
//! a close). The async shell ([`super::shell`]) owns the wire and the cluster and does nothing
//! else; the unit tests (`tests.rs`) drive this core directly.
//!
//! **Order.** A session serves its client's requests one at a time, in the order they came,
//! as it always has: while a request waits for a read or a proposal, nothing else of the
//! client's is taken ([`Session::wants_input`] is false) and pushes wait in their queue. Sends
//! are the exception: they go into the [`SendPipeline`] and are answered as their batches
//! commit, while the session goes on serving frames and pushes.
//!
//! **Delivery.** Per followed conversation the session knows the last seq it delivered: a
//! pushed seq right after it goes out, a later one means a gap to read from the shard, an
//! earlier one was already delivered. Receipts only go forward. Presence is shown as its user's
//! privacy allows and coalesced to one round a second.

mod api;
mod pushes;
mod requests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use natter_proto::frame_error::FrameError;
use natter_proto::frames::{ClientFrame, ConversationSummary, PresenceStatus, ServerFrame};
use natter_proto::{ConversationId, DeviceId, ErrorCode, UserId};
use natter_raft::command::UserSettings;
use natter_raft::command::{Command, Response};
use natter_raft::placement::ShardId;
use natter_raft::query::QueryResult;
use tokio::time::Instant;

use crate::delivery::{Listing, Push, Topic};
use crate::edge::sends::{Batch, SendPipeline};
use crate::presence::Coalescer;
use crate::shards::ClusterError;

pub use api::{Admission, AdmitError, Close, Effect, RateGate, Request, RequestId, SessionConfig, Time};

/// How long a new session may take to say `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive undecodable frames after which a session is closed.
pub const BAD_FRAMES_MAX: u32 = 16;
/// Users one session watches the presence of at most (the members of its conversations).
pub const PRESENCE_WATCH_MAX: usize = 1024;

/// Close codes of client sessions (QUIC application close codes; the browser transports end
/// the session the same way).
pub mod close {
    /// Authentication failed or never happened.
    pub const UNAUTHENTICATED: u32 = 0x10;
    /// Too many sessions for this user.
    pub const RATE_LIMITED: u32 = 0x11;
    /// Too many bad frames in a row.
    pub const BAD_FRAMES: u32 = 0x12;
}

/// What the session waits for before it takes anything else of the client's.
#[derive(Debug)]
enum Parked {
    /// The answer to request `id`.
    Answer {
        /// The request.
        id: RequestId,
        /// What to do with the answer.
        step: Step,
    },
    /// Room in the send pipeline for this send.
    Room(ClientFrame),
    /// Its turn under the rate limits, for this send (waited for `waits` times so far).
    Turn {
        /// The send.
        frame: ClientFrame,
        /// When to try again.
        until: Instant,
        /// Waits so far.
        waits: u32,
    },
}

/// A step of a request that waits for an answer, with what it needs to go on.
#[derive(Debug)]
enum Step {
    /// `hello`, waiting for admission.
    Admit { hello: ClientFrame },
    /// `hello`, waiting for the user's conversation list.
    WelcomeList { hello: ClientFrame },
    /// `hello`, reading the listed conversations one by one (the first of `rest` is being read).
    WelcomeConversations {
        hello: ClientFrame,
        listing: Listing,
        rest: VecDeque<ConversationId>,
        summaries: Vec<ConversationSummary>,
    },
    /// A page of messages after the session's cursor.
    CatchUp { conversation: ConversationId },
    /// A conversation the user joined.
    Join { conversation: ConversationId },
    /// The user's conversation list, read again after a [`Push::Listing`] mismatch.
    Relist,
    /// A `create_conversation`.
    Create { request: ClientFrame },
    /// A `history` page.
    History { request: ClientFrame },
    /// `settings`, reading the user's record.
    SettingsRead { request: ClientFrame },
    /// `settings`, storing them.
    SettingsWrite { request: ClientFrame, settings: UserSettings },
    /// An `ack` or `read`.
    MoveCursor { request: ClientFrame },
    /// The `AckBeforeCommit` canary's send, waiting for the local last seq (then its append).
    AckEarly { conversation: ConversationId, client_seq: u64, command: Command },
    /// The canary's append, whose outcome only decides what to follow.
    AckEarlyAppend { conversation: ConversationId },
}

/// Work queued behind the current request, started before the client's next input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// Deliver everything after the cursor.
    CatchUp(ConversationId),
    /// Follow a conversation the user joined.
    Join(ConversationId),
}

/// An input waiting to be taken.
#[derive(Debug)]
enum Input {
    Frame(Result<ClientFrame, FrameError>),
    Push(Push),
}

/// A contact's presence as this session shows it: (status, last seen, custom text).
type ShownPresence = (PresenceStatus, Option<u64>, Option<String>);

/// One client session's protocol state.
pub struct Session {
    config: SessionConfig,
    /// When a session that has not said `hello` is closed.
    hello_deadline: Instant,
    identity: Option<(UserId, DeviceId)>,
    gate: Option<Box<dyn RateGate>>,
    bad_frames: u32,
    /// Per followed conversation, the last seq delivered to this session.
    delivered: BTreeMap<ConversationId, u64>,
    /// The last receipt sent per (conversation, member): receipts only ever go forward, even
    /// when a new leader answers from a replica that applied a little less.
    receipts: BTreeMap<(ConversationId, UserId), (u64, u64)>,
    /// The user's conversation list as this session knows it, to notice joins whose push was
    /// lost (the leader's [`Push::Listing`] then differs).
    listing: Listing,
    /// Conversations this session said it is typing in and has not said it stopped.
    typing: BTreeSet<ConversationId>,
    /// Users whose presence this session watches: members of its conversations.
    contacts: BTreeSet<UserId>,
    /// The presence last shown per contact, so repeats are not sent again.
    presence_shown: BTreeMap<UserId, ShownPresence>,
    /// Presence changes waiting for the once-a-second flush.
    presence_pending: Coalescer<ShownPresence>,
    /// Sends outstanding, from the first send on (an idle session holds none).
    sending: Option<Box<SendPipeline>>,
    parked: Option<Parked>,
    tasks: VecDeque<Task>,
    inbox: VecDeque<Input>,
    /// Batch outcomes waiting to be answered (taken when the session is not busy).
    finished: VecDeque<(Batch, Result<Response, ClusterError>)>,
    next_request: RequestId,
    transmit: VecDeque<ServerFrame>,
    requests: VecDeque<(RequestId, Request)>,
    effects: VecDeque<Effect>,
    close: Option<Close>,
    /// Fresh conversation ids for groups.
    ids: Box<dyn FnMut() -> ConversationId + Send>,
}

impl Session {
    /// A session that began at `now`; `ids` makes group conversation ids.
    pub fn new(config: SessionConfig, now: Instant, ids: Box<dyn FnMut() -> ConversationId + Send>) -> Self {
        Self {
            config,
            hello_deadline: now + HELLO_TIMEOUT,
            identity: None,
            gate: None,
            bad_frames: 0,
            delivered: BTreeMap::new(),
            receipts: BTreeMap::new(),
            listing: Listing::default(),
            typing: BTreeSet::new(),
            contacts: BTreeSet::new(),
            presence_shown: BTreeMap::new(),
            presence_pending: Coalescer::new(),
            sending: None,
            parked: None,
            tasks: VecDeque::new(),
            inbox: VecDeque::new(),
            finished: VecDeque::new(),
            next_request: 0,
            transmit: VecDeque::new(),
            requests: VecDeque::new(),
            effects: VecDeque::new(),
            close: None,
            ids,
        }
    }

    // ----- getters -----

    /// The session's user and device, once admitted.
    pub fn identity(&self) -> Option<&(UserId, DeviceId)> {
        self.identity.as_ref()
    }

    /// The last seq delivered in `conversation`, if the session follows it.
    pub fn delivered(&self, conversation: &ConversationId) -> Option<u64> {
        self.delivered.get(conversation).copied()
    }

    /// Sends outstanding (in flight or waiting).
    pub fn sends_outstanding(&self) -> usize {
        self.sending.as_ref().map_or(0, |sending| sending.outstanding())
    }

    /// True when the session takes the client's next input: it waits for nothing and holds
    /// nothing unprocessed. The shell reads the wire and the push queue only then.
    pub fn wants_input(&self) -> bool {
        self.close.is_none() && self.parked.is_none() && self.tasks.is_empty() && self.inbox.is_empty()
    }

    /// True once the session decided to close (see [`Session::poll_close`]).
    pub fn is_closing(&self) -> bool {
        self.close.is_some()
    }

    // ----- inputs -----

    /// Frames the client sent, in order, each decoded or the error that made it unreadable.
    pub fn handle_frames(&mut self, frames: impl IntoIterator<Item = Result<ClientFrame, FrameError>>, time: Time) {
        self.inbox.extend(frames.into_iter().map(Input::Frame));
        self.drive(time);
    }

    /// A push from delivery.
    pub fn handle_push(&mut self, push: Push, time: Time) {
        self.inbox.push_back(Input::Push(push));
        self.drive(time);
    }

    /// The answer to [`Request::Admit`].
    pub fn handle_admitted(&mut self, id: RequestId, admission: Result<Admission, AdmitError>, time: Time) {
        match self.take_parked(id) {
            Some(Step::Admit { hello }) => self.admitted(hello, admission),
            other => self.misrouted(id, other, "admission"),
        }
        self.drive(time);
    }

    /// The answer to [`Request::Read`].
    pub fn handle_read(&mut self, id: RequestId, result: Result<QueryResult, ClusterError>, time: Time) {
        if let Some(step) = self.take_parked(id) {
            self.on_read(step, result, time);
        }
        self.drive(time);
    }

    /// The answer to [`Request::Propose`] (or a [`Request::MoveCursor`] proposed alone).
    pub fn handle_proposed(&mut self, id: RequestId, result: Result<Response, ClusterError>, time: Time) {
        if let Some(step) = self.take_parked(id) {
            self.on_proposed(step, result, time);
        }
        self.drive(time);
    }

    /// A [`Request::MoveCursor`] joined the shard's batch: nothing to answer.
    pub fn handle_cursor_queued(&mut self, id: RequestId, time: Time) {
        match self.take_parked(id) {
            Some(Step::MoveCursor { .. }) => {}
            other => self.misrouted(id, other, "queued cursor move"),
        }
        self.drive(time);
    }

    /// The answer to [`Request::PeekLastSeq`].
    pub fn handle_last_seq(&mut self, id: RequestId, last_seq: Option<u64>, time: Time) {
        match self.take_parked(id) {
            Some(Step::AckEarly { conversation, client_seq, command }) => {
                self.ack_early(conversation, client_seq, command, last_seq, time)
            }
            other => self.misrouted(id, other, "local last seq"),
        }
        self.drive(time);
    }

    /// A batch from [`Effect::ProposeBatch`] ended.
    pub fn handle_batch_done(&mut self, batch: Batch, result: Result<Response, ClusterError>, time: Time) {
        self.finished.push_back((batch, result));
        self.drive(time);
    }

    /// The time from [`Session::poll_timeout`] came (or any time after).
    pub fn handle_timeout(&mut self, time: Time) {
        if self.identity.is_none() && self.parked.is_none() && time.now >= self.hello_deadline {
            self.close_with(close::UNAUTHENTICATED, "no hello in time");
            return;
        }
        self.flush_presence(time.now);
        self.drive(time);
    }

    /// The session ended (the client left or the session was closed): the effects that tell
    /// the others, such as that its user stopped typing.
    pub fn handle_end(&mut self) -> Vec<Effect> {
        let Some((user, _)) = &self.identity else { return Vec::new() };
        std::mem::take(&mut self.typing)
            .into_iter()
            .map(|conversation| Effect::Relay {
                shard: self.shard_of(&conversation),
                push: Push::Typing { conversation, user: user.clone(), active: false },
            })
            .collect()
    }

    // ----- outputs -----

    /// The next frame to write to the client.
    pub fn poll_transmit(&mut self) -> Option<ServerFrame> {
        self.transmit.pop_front()
    }

    /// The next request for the node.
    pub fn poll_request(&mut self) -> Option<(RequestId, Request)> {
        self.requests.pop_front()
    }

    /// The next effect for the node.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// How the session closes, once every frame from [`Session::poll_transmit`] is written.
    pub fn poll_close(&self) -> Option<Close> {
        self.close
    }

    /// When [`Session::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.close.is_some() {
            return None;
        }
        let hello = (self.identity.is_none() && self.parked.is_none()).then_some(self.hello_deadline);
        let turn = match &self.parked {
            Some(Parked::Turn { until, .. }) => Some(*until),
            _ => None,
        };
        [hello, turn, self.presence_pending.poll_timeout()].into_iter().flatten().min()
    }

    // ----- the loop -----

    /// Takes whatever can be taken now: queued work first, then finished batches, then the
    /// client's inputs, until something has to be waited for.
    fn drive(&mut self, time: Time) {
        while self.close.is_none() {
            match self.parked.take() {
                None => {}
                Some(Parked::Room(frame)) => {
                    if !self.sending.as_ref().is_some_and(|sending| sending.is_full()) {
                        self.take_send(frame, time);
                    } else if let Some((batch, result)) = self.finished.pop_front() {
                        self.parked = Some(Parked::Room(frame));
                        self.answer_batch(batch, result, time);
                    } else {
                        self.parked = Some(Parked::Room(frame));
                        return;
                    }
                    continue;
                }
                Some(Parked::Turn { frame, until, waits }) => {
                    if time.now < until {
                        self.parked = Some(Parked::Turn { frame, until, waits });
                        return;
                    }
                    self.take_turn(frame, waits, time);
                    continue;
                }
                Some(parked @ Parked::Answer { .. }) => {
                    self.parked = Some(parked);
                    return;
                }
            }
            if let Some(task) = self.tasks.pop_front() {
                match task {
                    Task::CatchUp(conversation) => self.catch_up(conversation),
                    Task::Join(conversation) => self.join(conversation),
                }
            } else if let Some((batch, result)) = self.finished.pop_front() {
                self.answer_batch(batch, result, time);
            } else if let Some(input) = self.inbox.pop_front() {
                match input {
                    Input::Frame(Ok(frame)) => {
                        self.bad_frames = 0;
                        self.handle_frame(frame, time);
                    }
                    Input::Frame(Err(error)) => self.bad_frame(error),
                    Input::Push(push) => self.on_push(push, time),
                }
            } else {
                return;
            }
        }
    }

    fn bad_frame(&mut self, error: FrameError) {
        self.bad_frames += 1;
        tracing::debug!(%error, "bad client frame");
        self.write(ServerFrame::Error {
            request_id: None,
            conversation: None,
            client_seq: None,
            code: error.code(),
            message: error.to_string(),
            retry_after_ms: None,
        });
        if self.bad_frames >= BAD_FRAMES_MAX {
            self.close_with(close::BAD_FRAMES, "too many bad frames");
        }
    }

    // ----- helpers shared by the request and push handlers -----

    fn shard_of(&self, conversation: &ConversationId) -> ShardId {
        natter_raft::placement::shard_of_conversation(conversation, self.config.shards)
    }

    fn user_shard(&self, user: &UserId) -> ShardId {
        natter_raft::placement::shard_of_user(user, self.config.shards)
    }

    fn write(&mut self, frame: ServerFrame) {
        self.transmit.push_back(frame);
    }

    fn reply_error(&mut self, request: &ClientFrame, code: ErrorCode, message: impl Into<String>) {
        self.write(ServerFrame::error_reply(request, code, message));
    }

    fn close_with(&mut self, code: u32, reason: &'static str) {
        self.close.get_or_insert(Close { code, reason });
    }

    /// Sends `request` and waits for its answer in `step`.
    fn park(&mut self, request: Request, step: Step) {
        debug_assert!(self.parked.is_none(), "one request of the client's at a time");
        let id = self.next_request;
        self.next_request += 1;
        self.requests.push_back((id, request));
        self.parked = Some(Parked::Answer { id, step });
    }

    /// The step waiting for request `id`, if that is what the session waits for.
    fn take_parked(&mut self, id: RequestId) -> Option<Step> {
        match self.parked.take() {
            Some(Parked::Answer { id: waiting, step }) if waiting == id => Some(step),
            other => {
                self.parked = other;
                tracing::warn!(id, "an answer to a request the session is not waiting for");
                None
            }
        }
    }

    /// An answer of the wrong kind for its step: the shell answered through the wrong method.
    /// The step is put back, so the session keeps waiting for the right answer.
    fn misrouted(&mut self, id: RequestId, step: Option<Step>, kind: &'static str) {
        if let Some(step) = step {
            tracing::error!(id, kind, ?step, "answer of the wrong kind; still waiting");
            self.parked = Some(Parked::Answer { id, step });
        }
    }

    /// Starts delivering `conversation` to this session from after `cursor`.
    fn follow(&mut self, conversation: ConversationId, cursor: u64) {
        if self.identity.is_none() {
            return;
        }
        if let std::collections::btree_map::Entry::Vacant(entry) = self.delivered.entry(conversation) {
            entry.insert(cursor);
            self.effects.push_back(Effect::Subscribe(Topic::Conversation(conversation)));
        }
    }

    /// Watches the presence of `members` (other than the session's user), up to
    /// [`PRESENCE_WATCH_MAX`] users.
    fn watch(&mut self, members: &[UserId]) {
        let Some((me, _)) = &self.identity else { return };
        for member in members {
            if member == me || self.contacts.len() >= PRESENCE_WATCH_MAX {
                continue;
            }
            if self.contacts.insert(member.clone()) {
                self.effects.push_back(Effect::Subscribe(Topic::Presence(member.clone())));
            } else if members.len() == 2 {
                // A new 1:1 may make a `contacts`-only user visible to this one: judge the
                // presence this node last had for them again (repeats no longer come by).
                self.effects.push_back(Effect::ResendPresence(member.clone()));
            }
        }
    }

    /// Sends the presence changes the coalescer lets out now (at most one round a second).
    fn flush_presence(&mut self, now: Instant) {
        for (user, (status, last_seen, custom)) in self.presence_pending.poll_flush(now) {
            self.write(ServerFrame::Presence { user, status, last_seen, custom });
        }
    }
}
