//! The client's protocol state without I/O, in quinn-proto's shape: inputs come in through
//! `handle_*` and `submit_*`, outputs leave through `poll_transmit` (frames to write),
//! `poll_event` (for the application) and `poll_completion` (answers to waiting callers);
//! time is passed in as `now`. The async shell in [`super`] owns the connection and the
//! channels; everything about ordering, dedup, gaps and resends is decided here, so it is
//! tested with fixed frames.
//!
//! Delivery: per conversation `queued` is the last seq put in the application's queue. A
//! message at or below it is a duplicate and dropped; the next one is queued; a later one
//! means a gap, filled with `history` requests (oldest first) before anything after it is
//! queued. A conversation the user joins while connected (an unsolicited `conversation`
//! frame) starts at 0, as the server streams it from seq 1. The application's queue is
//! bounded: a message that does not fit is dropped here and fetched again with `history` once
//! there is room, so no message is lost and the connection is never stalled by a slow reader.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use natter_canary::Canary;
use natter_proto::limits::{HISTORY_PAGE_MAX, OUTSTANDING_SENDS_MAX};
use natter_proto::{
    ClientFrame, ConversationId, ConversationSummary, ErrorCode, MessageRecord, PresencePrivacy, ServerFrame, UserId,
};

use crate::error::ClientError;
use crate::{ConversationInfo, Event, SendOk};

/// Most out-of-order messages kept while the gap before them is filled; beyond it they are
/// dropped and fetched again.
pub const GAP_BUFFER_MESSAGES_MAX: usize = 1024;
/// How often a send refused with a retryable code (`unavailable`, `internal`, `rate_limited`)
/// is tried in all before its error is returned.
pub const SEND_ATTEMPTS_MAX: u32 = 5;
/// Wait before the first retry of a refused send; it doubles with each retry.
pub const SEND_RETRY_DELAY_MIN: Duration = Duration::from_millis(200);

/// Answer to a request that carries a `request_id`.
#[derive(Debug)]
pub(crate) enum Reply {
    /// `create_conversation` → `conversation`.
    Conversation(ConversationInfo),
    /// `history` → `history`.
    History(Vec<MessageRecord>),
    /// `settings` → `settings`: the privacy stored.
    Settings(PresencePrivacy),
}

/// A finished request, for the shell to hand to whoever waits for it.
#[derive(Debug)]
pub(crate) enum Completion {
    /// A send was acknowledged or refused.
    Send { conversation: ConversationId, client_seq: u64, result: Result<SendOk, ClientError> },
    /// A request was answered, refused or interrupted.
    Request { request_id: String, result: Result<Reply, ClientError> },
}

/// A request the application made with a `request_id`.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    /// Create a conversation.
    Create { members: Vec<UserId>, title: Option<String> },
    /// A page of history.
    History { conversation: ConversationId, before: Option<u64>, limit: u32 },
    /// Store the user's settings.
    Settings { presence_privacy: PresencePrivacy },
}

#[derive(Debug)]
struct PendingSend {
    body: String,
    /// Tries refused with a retryable code so far.
    attempts: u32,
    /// When to try again after such a refusal.
    retry_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Core {
    /// False for send-only clients: messages are ignored and no cursor is initialised.
    receive: bool,
    connected: bool,
    /// Per conversation, the last seq put in the application's queue.
    queued: BTreeMap<ConversationId, u64>,
    /// Per conversation whose queue is behind, the highest seq the server is known to have.
    behind: BTreeMap<ConversationId, u64>,
    /// Messages after a gap, waiting for it to be filled.
    buffered: BTreeMap<ConversationId, BTreeMap<u64, MessageRecord>>,
    buffered_messages: usize,
    /// Gap-filling `history` requests in flight, by request id.
    fills: BTreeMap<String, ConversationId>,
    filling: BTreeSet<ConversationId>,
    sends: BTreeMap<(ConversationId, u64), PendingSend>,
    requests: BTreeMap<String, Request>,
    next_request: u64,
    /// Events that still fit in the application's queue.
    room: usize,
    /// Events other than messages dropped for lack of room.
    dropped_events: u64,
    /// Cursors started by a frame rather than by a message, for the shell to store.
    started: BTreeMap<ConversationId, u64>,
    /// The furthest receipt handed on per (conversation, member), across sessions: a new
    /// session (or a new leader still applying) can send an older one, which is dropped.
    receipts: BTreeMap<(ConversationId, UserId), (u64, u64)>,
    transmit: VecDeque<ClientFrame>,
    events: VecDeque<Event>,
    completions: VecDeque<Completion>,
}

impl Core {
    /// A disconnected core resuming from `cursors`.
    pub(crate) fn new(cursors: BTreeMap<ConversationId, u64>, receive: bool) -> Self {
        Self {
            receive,
            connected: false,
            queued: if receive { cursors } else { BTreeMap::new() },
            behind: BTreeMap::new(),
            buffered: BTreeMap::new(),
            buffered_messages: 0,
            fills: BTreeMap::new(),
            filling: BTreeSet::new(),
            sends: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            room: 0,
            dropped_events: 0,
            started: BTreeMap::new(),
            receipts: BTreeMap::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            completions: VecDeque::new(),
        }
    }

    // Getters.

    /// The cursors to send as `resume` in `hello`: what is already queued needs no resend.
    pub(crate) fn resume(&self) -> BTreeMap<ConversationId, u64> {
        self.queued.clone()
    }

    /// Requests waiting for answers (gap fills excluded).
    pub(crate) fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Events other than messages dropped because the application's queue was full.
    pub(crate) fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// The earliest time [`Core::handle_timeout`] has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.sends.values().filter_map(|send| send.retry_at).min()
    }

    // Inputs.

    /// The session said `welcome`: conversations without a cursor start at their newest seq
    /// (as the server does), and every pending send and request goes out again. Returns the
    /// cursors it started, for the store, so a later resume starts there too.
    pub(crate) fn handle_welcome(&mut self, conversations: &[ConversationSummary]) -> BTreeMap<ConversationId, u64> {
        assert!(!self.connected, "welcome arrives once per connection");
        self.connected = true;
        let mut started = BTreeMap::new();
        if self.receive {
            for summary in conversations {
                if let std::collections::btree_map::Entry::Vacant(entry) = self.queued.entry(summary.id) {
                    entry.insert(summary.last_seq);
                    started.insert(summary.id, summary.last_seq);
                }
            }
        }
        // In client_seq order per conversation, as first sent; the server dedups any that
        // were committed before the connection dropped and answers with the original seq.
        for (&(conversation, client_seq), send) in &mut self.sends {
            send.retry_at = None;
            self.transmit.push_back(ClientFrame::Send { conversation, client_seq, body: send.body.clone() });
        }
        for (request_id, request) in &self.requests {
            self.transmit.push_back(request_frame(request_id, request));
        }
        started
    }

    /// The connection dropped. Frames not yet written are forgotten (pending sends and
    /// requests are regenerated at the next welcome); gap fills start over, since the next
    /// `hello` resumes from `queued`; a `create_conversation` in flight fails as
    /// [`ClientError::Interrupted`], because resending it could create a second group.
    pub(crate) fn handle_disconnected(&mut self) {
        self.connected = false;
        if natter_canary::active(Canary::CursorBackwards) {
            // The planted bug: every cursor slips back one seq, so the next hello asks for a
            // message again and it is handed over twice.
            for cursor in self.queued.values_mut() {
                *cursor = cursor.saturating_sub(1);
            }
        }
        self.transmit.clear();
        self.fills.clear();
        self.filling.clear();
        self.buffered.clear();
        self.buffered_messages = 0;
        self.behind.clear();
        let interrupted: Vec<String> = self
            .requests
            .iter()
            .filter(|(_, request)| matches!(request, Request::Create { .. }))
            .map(|(request_id, _)| request_id.clone())
            .collect();
        for request_id in interrupted {
            self.requests.remove(&request_id);
            self.completions.push_back(Completion::Request { request_id, result: Err(ClientError::Interrupted) });
        }
    }

    /// The client stops for good: everything waiting fails with `error()`.
    pub(crate) fn handle_stopped(&mut self, error: impl Fn() -> ClientError) {
        self.handle_disconnected();
        for ((conversation, client_seq), _) in std::mem::take(&mut self.sends) {
            self.completions.push_back(Completion::Send { conversation, client_seq, result: Err(error()) });
        }
        for (request_id, _) in std::mem::take(&mut self.requests) {
            self.completions.push_back(Completion::Request { request_id, result: Err(error()) });
        }
    }

    /// How many more events the application's queue takes; fills gaps that waited for room.
    pub(crate) fn handle_room(&mut self, room: usize) {
        self.room = room;
        let waiting: Vec<ConversationId> = self.buffered.keys().copied().collect();
        for conversation in waiting {
            self.drain_buffered(conversation);
        }
        let behind: Vec<ConversationId> = self.behind.keys().copied().collect();
        for conversation in behind {
            self.start_fill(conversation);
        }
    }

    /// Retries sends whose retry time has come.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for (&(conversation, client_seq), send) in &mut self.sends {
            if send.retry_at.is_some_and(|at| at <= now) {
                send.retry_at = None;
                if self.connected {
                    self.transmit.push_back(ClientFrame::Send { conversation, client_seq, body: send.body.clone() });
                }
            }
        }
    }

    /// A frame from the server (other than `welcome`, which [`Core::handle_welcome`] takes).
    pub(crate) fn handle_frame(&mut self, frame: ServerFrame, now: Instant) {
        match frame {
            ServerFrame::Welcome { .. } => {
                self.push_event(Event::Error {
                    code: ErrorCode::BadFrame,
                    conversation: None,
                    message: "server sent a second welcome on one session; ignored".into(),
                });
            }
            ServerFrame::Conversation { id, members, title, request_id } => {
                let info = ConversationInfo { id, members, title };
                // Created here or joined while connected: the server streams it from seq 1.
                // Starting the cursor at 0 now (and storing it) keeps that true across a
                // reconnect or restart before its first message, where `welcome` would
                // otherwise start it at its newest seq and skip what came in between (found by
                // the simulator: a creator reconnecting just as the first message committed
                // never received it).
                if self.receive {
                    if let std::collections::btree_map::Entry::Vacant(entry) = self.queued.entry(id) {
                        entry.insert(0);
                        self.started.insert(id, 0);
                    }
                }
                match request_id.and_then(|request_id| self.requests.remove_entry(&request_id)) {
                    Some((request_id, _)) => self
                        .completions
                        .push_back(Completion::Request { request_id, result: Ok(Reply::Conversation(info)) }),
                    None => self.push_event(Event::Conversation(info)),
                }
            }
            ServerFrame::Message(message) => {
                if self.receive {
                    let conversation = message.conversation;
                    self.accept(message);
                    self.start_fill(conversation);
                }
            }
            ServerFrame::SendOk { conversation, client_seq, seq, ts } => {
                // A second answer to a resent send finds nothing pending and is dropped.
                if self.sends.remove(&(conversation, client_seq)).is_some() {
                    let result = Ok(SendOk { conversation, seq, ts, client_seq });
                    self.completions.push_back(Completion::Send { conversation, client_seq, result });
                }
            }
            ServerFrame::Receipt { conversation, user, delivered, read } => {
                // Receipts never go backwards for the application, whichever node or session
                // sent them (found by the simulator: after a reconnect during flapping
                // partitions a receipt of 47 followed one of 49).
                let key = (conversation, user.clone());
                let last = self.receipts.get(&key).copied();
                let next = last.map_or((delivered, read), |(d, r)| (d.max(delivered), r.max(read)));
                if Some(next) != last {
                    self.receipts.insert(key, next);
                    self.push_event(Event::Receipt { conversation, user, delivered: next.0, read: next.1 });
                }
            }
            ServerFrame::History { request_id, conversation, messages } => {
                if let Some(filled) = self.fills.remove(&request_id) {
                    debug_assert_eq!(filled, conversation);
                    self.handle_fill(filled, messages);
                } else if self.requests.remove(&request_id).is_some() {
                    let result = Ok(Reply::History(messages));
                    self.completions.push_back(Completion::Request { request_id, result });
                }
            }
            ServerFrame::Typing { conversation, user, active } => {
                self.push_event(Event::Typing { conversation, user, active });
            }
            ServerFrame::Presence { user, status, last_seen, custom } => {
                self.push_event(Event::Presence { user, status, last_seen, custom });
            }
            ServerFrame::Error { request_id, conversation, client_seq, code, message, retry_after_ms } => {
                let refusal = Refusal { code, message, retry_after: retry_after_ms.map(Duration::from_millis) };
                self.handle_error(request_id, conversation, client_seq, refusal, now);
            }
            ServerFrame::Pong { .. } => {}
            ServerFrame::Settings { request_id, presence_privacy } => {
                if self.requests.remove(&request_id).is_some() {
                    let result = Ok(Reply::Settings(presence_privacy));
                    self.completions.push_back(Completion::Request { request_id, result });
                }
            }
        }
    }

    /// An ephemeral signal (typing, presence): sent now if connected, else dropped, as a
    /// stale signal would only mislead.
    pub(crate) fn submit_signal(&mut self, frame: ClientFrame) {
        if self.connected {
            self.transmit.push_back(frame);
        }
    }

    // Commands.

    /// A new send; it goes out now if connected, else after the next welcome.
    pub(crate) fn submit_send(&mut self, conversation: ConversationId, client_seq: u64, body: String) {
        assert!(self.sends.len() < OUTSTANDING_SENDS_MAX, "the shell bounds outstanding sends");
        if self.connected {
            self.transmit.push_back(ClientFrame::Send { conversation, client_seq, body: body.clone() });
        }
        let previous = self.sends.insert((conversation, client_seq), PendingSend { body, attempts: 0, retry_at: None });
        assert!(previous.is_none(), "client_seq {client_seq} submitted twice");
    }

    /// A new request; returns its `request_id`.
    pub(crate) fn submit_request(&mut self, request: Request) -> String {
        let request_id = format!("r{}", self.next_request);
        self.next_request += 1;
        if self.connected {
            self.transmit.push_back(request_frame(&request_id, &request));
        }
        self.requests.insert(request_id.clone(), request);
        request_id
    }

    /// Forgets a request nobody waits for any more; a late answer is then dropped.
    pub(crate) fn forget_request(&mut self, request_id: &str) {
        self.requests.remove(request_id);
    }

    /// Queues a frame that needs no answer (`ack`, `read`).
    pub(crate) fn queue_frame(&mut self, frame: ClientFrame) {
        if self.connected {
            self.transmit.push_back(frame);
        }
    }

    // Outputs.

    pub(crate) fn poll_transmit(&mut self) -> Option<ClientFrame> {
        self.transmit.pop_front()
    }

    pub(crate) fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(crate) fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// Cursors started since the last call without a message (conversations joined), for the
    /// store, so a later resume starts there too.
    pub(crate) fn take_started(&mut self) -> BTreeMap<ConversationId, u64> {
        std::mem::take(&mut self.started)
    }

    // Delivery.

    /// Takes one message: drops a duplicate, queues the next one, keeps a later one for
    /// after the gap. Never asks for anything; the caller starts fills.
    fn accept(&mut self, message: MessageRecord) {
        let conversation = message.conversation;
        // A conversation without a cursor starts at its first message, as the server follows
        // a conversation from its newest seq (a new group, a first send, a new 1:1).
        let queued = *self.queued.entry(conversation).or_insert(message.seq.saturating_sub(1));
        if message.seq <= queued {
            return;
        }
        if message.seq == queued + 1 && self.room > 0 {
            self.queue(message);
            self.drain_buffered(conversation);
            return;
        }
        let behind = self.behind.entry(conversation).or_insert(0);
        *behind = (*behind).max(message.seq);
        if message.seq > queued + 1 && self.buffered_messages < GAP_BUFFER_MESSAGES_MAX {
            let waiting = self.buffered.entry(conversation).or_default();
            if waiting.insert(message.seq, message).is_none() {
                self.buffered_messages += 1;
            }
        }
    }

    /// Queues an event that is not a message: it takes room like a message, and is dropped
    /// (and counted) when there is none, since nothing can fetch it again.
    fn push_event(&mut self, event: Event) {
        debug_assert!(!matches!(event, Event::Message(_)));
        if self.room == 0 {
            self.dropped_events += 1;
            tracing::debug!(?event, "event queue full; event dropped");
            return;
        }
        self.room -= 1;
        self.events.push_back(event);
    }

    fn queue(&mut self, message: MessageRecord) {
        let conversation = message.conversation;
        let cursor = self.queued.entry(conversation).or_insert(0);
        assert_eq!(message.seq, *cursor + 1, "messages are queued in seq order without gaps");
        *cursor = message.seq;
        if self.behind.get(&conversation).is_some_and(|&behind| behind <= message.seq) {
            self.behind.remove(&conversation);
        }
        self.room -= 1;
        self.events.push_back(Event::Message(message));
    }

    /// Queues buffered messages that now follow the cursor.
    fn drain_buffered(&mut self, conversation: ConversationId) {
        let Some(mut waiting) = self.buffered.remove(&conversation) else { return };
        let mut queued = self.queued.get(&conversation).copied().unwrap_or(0);
        while let Some(entry) = waiting.first_entry() {
            if *entry.key() <= queued {
                entry.remove();
                self.buffered_messages -= 1;
            } else if *entry.key() == queued + 1 && self.room > 0 {
                let message = entry.remove();
                self.buffered_messages -= 1;
                self.queue(message);
                queued += 1;
            } else {
                break;
            }
        }
        if !waiting.is_empty() {
            self.buffered.insert(conversation, waiting);
        }
    }

    /// Asks for the oldest missing page of `conversation` if it is behind, connected, not
    /// already asking, and the application's queue has room.
    fn start_fill(&mut self, conversation: ConversationId) {
        let Some(&behind) = self.behind.get(&conversation) else { return };
        if !self.connected || self.filling.contains(&conversation) || self.room == 0 {
            return;
        }
        let queued = self.queued.get(&conversation).copied().unwrap_or(0);
        // Up to the first buffered message, or to the newest seq known.
        let last_missing = self
            .buffered
            .get(&conversation)
            .and_then(|waiting| waiting.keys().next())
            .map_or(behind, |&first| first - 1);
        if last_missing <= queued {
            return;
        }
        let count = (last_missing - queued).min(u64::from(HISTORY_PAGE_MAX)).min(self.room as u64);
        let request_id = format!("fill{}", self.next_request);
        self.next_request += 1;
        // `history` returns the newest `limit` messages below `before`: exactly the next
        // `count` after the cursor.
        self.transmit.push_back(ClientFrame::History {
            request_id: request_id.clone(),
            conversation,
            before: Some(queued + 1 + count),
            limit: u32::try_from(count).expect("at most a history page"),
        });
        self.fills.insert(request_id, conversation);
        self.filling.insert(conversation);
    }

    fn handle_fill(&mut self, conversation: ConversationId, messages: Vec<MessageRecord>) {
        self.filling.remove(&conversation);
        let before = self.queued.get(&conversation).copied().unwrap_or(0);
        let room_before = self.room;
        for message in messages {
            if message.conversation == conversation {
                self.accept(message);
            }
        }
        self.drain_buffered(conversation);
        let progressed = self.queued.get(&conversation).copied().unwrap_or(0) > before;
        if !progressed && room_before > 0 && self.behind.contains_key(&conversation) {
            // The page did not hold the next seq: never skip it, say so, and wait for the
            // next message or reconnect (whose resume streams everything after the cursor).
            self.behind.remove(&conversation);
            self.push_event(Event::Error {
                code: ErrorCode::Internal,
                conversation: Some(conversation),
                message: format!("history did not return seq {} of {conversation}; waiting for a resend", before + 1),
            });
            return;
        }
        self.start_fill(conversation);
    }

    fn handle_error(
        &mut self,
        request_id: Option<String>,
        conversation: Option<ConversationId>,
        client_seq: Option<u64>,
        refusal: Refusal,
        now: Instant,
    ) {
        let Refusal { code, message, retry_after } = refusal;
        if let Some(request_id) = request_id {
            if let Some(filled) = self.fills.remove(&request_id) {
                self.filling.remove(&filled);
                self.behind.remove(&filled);
                self.push_event(Event::Error { code, conversation: Some(filled), message });
                return;
            }
            if self.requests.remove(&request_id).is_some() {
                let result = Err(ClientError::Server { code, message });
                self.completions.push_back(Completion::Request { request_id, result });
                return;
            }
        }
        if let (Some(conversation), Some(client_seq)) = (conversation, client_seq) {
            if let Some(send) = self.sends.get_mut(&(conversation, client_seq)) {
                if code == ErrorCode::RateLimited {
                    // Over a rate limit the send waits as long as the server says and goes
                    // again; it is not a failed attempt, so it is never given up on for it.
                    send.retry_at = Some(now + retry_after.unwrap_or(SEND_RETRY_DELAY_MIN));
                    return;
                }
                let retryable = matches!(code, ErrorCode::Unavailable | ErrorCode::Internal);
                send.attempts += 1;
                if retryable && send.attempts < SEND_ATTEMPTS_MAX {
                    // Resending the same client_seq is safe: the server appends it at most once.
                    send.retry_at = Some(now + SEND_RETRY_DELAY_MIN * 2u32.pow(send.attempts - 1));
                } else {
                    self.sends.remove(&(conversation, client_seq));
                    let result = Err(ClientError::Server { code, message });
                    self.completions.push_back(Completion::Send { conversation, client_seq, result });
                }
                return;
            }
        }
        self.push_event(Event::Error { code, conversation, message });
    }
}

/// What an `error` frame said.
struct Refusal {
    code: ErrorCode,
    message: String,
    /// For `rate_limited`: when to try again.
    retry_after: Option<Duration>,
}

fn request_frame(request_id: &str, request: &Request) -> ClientFrame {
    match request {
        Request::Create { members, title } => ClientFrame::CreateConversation {
            request_id: request_id.to_owned(),
            members: members.clone(),
            title: title.clone(),
        },
        Request::History { conversation, before, limit } => ClientFrame::History {
            request_id: request_id.to_owned(),
            conversation: *conversation,
            before: *before,
            limit: *limit,
        },
        Request::Settings { presence_privacy } => {
            ClientFrame::Settings { request_id: request_id.to_owned(), presence_privacy: *presence_privacy }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> ConversationId {
        ConversationId::from_bytes([7; 16])
    }

    fn message(seq: u64) -> MessageRecord {
        MessageRecord {
            conversation: conversation(),
            seq,
            sender: UserId::new("bob").unwrap(),
            sender_device: natter_proto::DeviceId::new("d").unwrap(),
            client_seq: seq,
            ts: 1_764_288_000_000 + seq,
            body: format!("m{seq}"),
        }
    }

    fn summary(last_seq: u64) -> ConversationSummary {
        ConversationSummary {
            id: conversation(),
            last_seq,
            members: vec![UserId::new("alice").unwrap(), UserId::new("bob").unwrap()],
            title: None,
        }
    }

    /// A connected core with `room` and the cursor at `cursor`.
    fn connected(cursor: u64, room: usize) -> Core {
        let mut core = Core::new(BTreeMap::from([(conversation(), cursor)]), true);
        core.handle_welcome(&[summary(cursor)]);
        core.handle_room(room);
        core
    }

    fn handed(core: &mut Core) -> Vec<u64> {
        std::iter::from_fn(|| core.poll_event())
            .filter_map(|event| match event {
                Event::Message(message) => Some(message.seq),
                _ => None,
            })
            .collect()
    }

    fn transmitted(core: &mut Core) -> Vec<ClientFrame> {
        std::iter::from_fn(|| core.poll_transmit()).collect()
    }

    fn history_reply(request_id: &str, seqs: std::ops::RangeInclusive<u64>) -> ServerFrame {
        ServerFrame::History {
            request_id: request_id.into(),
            conversation: conversation(),
            messages: seqs.map(message).collect(),
        }
    }

    #[test]
    fn duplicates_are_dropped_and_order_is_kept() {
        let mut core = connected(2, 100);
        let now = Instant::now();
        for seq in [1, 2, 3, 3, 4, 2, 5] {
            core.handle_frame(ServerFrame::Message(message(seq)), now);
        }
        assert_eq!(handed(&mut core), [3, 4, 5]);
        assert!(transmitted(&mut core).is_empty(), "no gap, no request");
        assert_eq!(core.resume(), BTreeMap::from([(conversation(), 5)]));
    }

    #[test]
    fn a_gap_is_filled_from_history_before_later_messages_are_handed() {
        let mut core = connected(2, 100);
        let now = Instant::now();
        core.handle_frame(ServerFrame::Message(message(6)), now);
        core.handle_frame(ServerFrame::Message(message(7)), now);
        assert!(handed(&mut core).is_empty(), "6 and 7 wait for 3..=5");
        let frames = transmitted(&mut core);
        let [ClientFrame::History { request_id, before: Some(6), limit: 3, .. }] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        // The page may overlap what is known; overlap is dropped.
        core.handle_frame(history_reply(request_id, 2..=5), now);
        assert_eq!(handed(&mut core), [3, 4, 5, 6, 7]);
        assert!(transmitted(&mut core).is_empty());
    }

    #[test]
    fn large_gaps_are_filled_a_page_at_a_time_oldest_first() {
        let mut core = connected(0, 1000);
        let now = Instant::now();
        core.handle_frame(ServerFrame::Message(message(451)), now);
        let mut pages = Vec::new();
        for _ in 0..10 {
            let frames = transmitted(&mut core);
            let Some(ClientFrame::History { request_id, before: Some(before), limit, .. }) = frames.first() else {
                break;
            };
            pages.push((*before, *limit));
            let first = before - u64::from(*limit);
            core.handle_frame(history_reply(request_id, first..=before - 1), now);
        }
        assert_eq!(pages, [(201, 200), (401, 200), (451, 50)]);
        assert_eq!(handed(&mut core), (1..=451).collect::<Vec<_>>());
    }

    #[test]
    fn messages_beyond_the_room_are_fetched_again_once_there_is_room() {
        let mut core = connected(0, 2);
        let now = Instant::now();
        for seq in 1..=5 {
            core.handle_frame(ServerFrame::Message(message(seq)), now);
        }
        assert_eq!(handed(&mut core), [1, 2], "the queue takes two");
        assert!(transmitted(&mut core).is_empty(), "nothing is asked for without room");
        core.handle_room(10);
        // 3 came with no room; 4 and 5 were kept as after a gap, so only 3 is asked for.
        let frames = transmitted(&mut core);
        let [ClientFrame::History { request_id, before: Some(4), limit: 1, .. }] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        core.handle_frame(history_reply(request_id, 3..=3), now);
        assert_eq!(handed(&mut core), [3, 4, 5]);
    }

    /// Found by the simulator (majority-flapping-partition seed 18): after a reconnect a
    /// receipt older than one already handed on arrived, and went to the application.
    #[test]
    fn receipts_never_go_backwards_across_sessions() {
        let mut core = connected(0, 10);
        let now = Instant::now();
        let receipt = |delivered: u64, read: u64| ServerFrame::Receipt {
            conversation: conversation(),
            user: UserId::new("bob").unwrap(),
            delivered,
            read,
        };
        core.handle_frame(receipt(49, 0), now);
        core.handle_disconnected();
        core.handle_welcome(&[summary(0)]);
        core.handle_frame(receipt(47, 3), now);
        core.handle_frame(receipt(47, 3), now);
        core.handle_frame(receipt(50, 1), now);
        let seen: Vec<(u64, u64)> = std::iter::from_fn(|| core.poll_event())
            .filter_map(|event| match event {
                Event::Receipt { delivered, read, .. } => Some((delivered, read)),
                _ => None,
            })
            .collect();
        assert_eq!(seen, [(49, 0), (49, 3), (50, 3)], "each cursor only moves forward; repeats are dropped");
    }

    #[test]
    fn every_event_takes_room_and_only_other_events_are_dropped() {
        let mut core = connected(0, 2);
        let now = Instant::now();
        let receipt = ServerFrame::Receipt {
            conversation: conversation(),
            user: UserId::new("bob").unwrap(),
            delivered: 1,
            read: 0,
        };
        core.handle_frame(receipt.clone(), now);
        core.handle_frame(ServerFrame::Message(message(1)), now);
        core.handle_frame(ServerFrame::Message(message(2)), now);
        let ServerFrame::Receipt { conversation, user, .. } = receipt else { unreachable!("a receipt") };
        core.handle_frame(ServerFrame::Receipt { conversation, user, delivered: 2, read: 0 }, now);
        assert_eq!(core.dropped_events(), 1, "the second receipt found no room");
        let events: Vec<Event> = std::iter::from_fn(|| core.poll_event()).collect();
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[1], Event::Message(message) if message.seq == 1));
        // Message 2 was not dropped: it is fetched once there is room.
        core.handle_room(5);
        let frames = transmitted(&mut core);
        let [ClientFrame::History { request_id, before: Some(3), limit: 1, .. }] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        core.handle_frame(history_reply(request_id, 2..=2), now);
        assert_eq!(handed(&mut core), [2]);
    }

    #[test]
    fn a_page_without_the_next_seq_is_an_error_not_a_skip() {
        let mut core = connected(0, 10);
        let now = Instant::now();
        core.handle_frame(ServerFrame::Message(message(3)), now);
        let frames = transmitted(&mut core);
        let [ClientFrame::History { request_id, .. }] = frames.as_slice() else { panic!("{frames:?}") };
        core.handle_frame(history_reply(request_id, 2..=2), now);
        let events: Vec<Event> = std::iter::from_fn(|| core.poll_event()).collect();
        assert!(matches!(events.as_slice(), [Event::Error { code: ErrorCode::Internal, .. }]), "{events:?}");
        assert_eq!(core.resume(), BTreeMap::from([(conversation(), 0)]), "the cursor did not move past 1");
        // A refused fill is reported too.
        core.handle_frame(ServerFrame::Message(message(4)), now);
        let frames = transmitted(&mut core);
        let [ClientFrame::History { request_id, .. }] = frames.as_slice() else { panic!("{frames:?}") };
        core.handle_frame(
            ServerFrame::Error {
                request_id: Some(request_id.clone()),
                conversation: Some(conversation()),
                client_seq: None,
                code: ErrorCode::NotMember,
                message: "not a member".into(),
                retry_after_ms: None,
            },
            now,
        );
        assert!(matches!(core.poll_event(), Some(Event::Error { code: ErrorCode::NotMember, .. })));
    }

    #[test]
    fn welcome_starts_unknown_conversations_at_their_newest_seq() {
        let mut core = Core::new(BTreeMap::new(), true);
        let started = core.handle_welcome(&[summary(41)]);
        assert_eq!(started, BTreeMap::from([(conversation(), 41)]));
        core.handle_room(10);
        core.handle_frame(ServerFrame::Message(message(42)), Instant::now());
        assert_eq!(handed(&mut core), [42]);
        // A send-only core starts nothing and hands nothing.
        let mut sender = Core::new(BTreeMap::new(), false);
        assert!(sender.handle_welcome(&[summary(41)]).is_empty());
        sender.handle_room(10);
        sender.handle_frame(ServerFrame::Message(message(42)), Instant::now());
        assert!(sender.poll_event().is_none());
        assert!(sender.resume().is_empty());
    }

    /// Found by the simulator: a device that created a conversation and reconnected just as
    /// its first message committed resumed it "from now" and never got that message.
    #[test]
    fn a_created_conversation_resumes_from_seq_zero_after_a_reconnect() {
        let mut core = connected(5, 100);
        let now = Instant::now();
        let created = ConversationId::from_bytes([8; 16]);
        let request_id =
            core.submit_request(Request::Create { members: vec![UserId::new("bob").unwrap()], title: None });
        let _ = transmitted(&mut core);
        core.handle_frame(
            ServerFrame::Conversation { id: created, members: vec![], title: None, request_id: Some(request_id) },
            now,
        );
        assert_eq!(core.take_started(), BTreeMap::from([(created, 0)]), "the store learns the cursor at once");
        core.handle_disconnected();
        assert_eq!(core.resume().get(&created), Some(&0), "hello asks for everything after 0");
        // The welcome lists it at seq 1 (committed meanwhile); the cursor stays at 0.
        let listed = ConversationSummary { id: created, last_seq: 1, members: vec![], title: None };
        core.handle_welcome(&[summary(5), listed]);
        core.handle_frame(ServerFrame::Message(MessageRecord { conversation: created, ..message(1) }), now);
        let events: Vec<Event> = std::iter::from_fn(|| core.poll_event()).collect();
        assert!(
            events.iter().any(
                |event| matches!(event, Event::Message(message) if message.conversation == created && message.seq == 1)
            ),
            "{events:?}"
        );
    }

    #[test]
    fn a_conversation_joined_while_connected_is_handed_from_seq_one_once_in_order() {
        let mut core = connected(5, 100);
        let now = Instant::now();
        let joined = ConversationId::from_bytes([9; 16]);
        let in_joined = |seq: u64| MessageRecord { conversation: joined, ..message(seq) };
        let frame = ServerFrame::Conversation {
            id: joined,
            members: vec![UserId::new("alice").unwrap(), UserId::new("bob").unwrap()],
            title: None,
            request_id: None,
        };
        core.handle_frame(frame.clone(), now);
        assert_eq!(core.take_started(), BTreeMap::from([(joined, 0)]), "the store learns the cursor at once");
        assert!(core.take_started().is_empty());
        assert_eq!(core.resume(), BTreeMap::from([(conversation(), 5), (joined, 0)]));
        // A second announcement (a duplicate push) moves nothing.
        core.handle_frame(frame, now);
        assert!(core.take_started().is_empty());
        for seq in [1, 2, 2, 1, 3] {
            core.handle_frame(ServerFrame::Message(in_joined(seq)), now);
        }
        let events: Vec<Event> = std::iter::from_fn(|| core.poll_event()).collect();
        let [Event::Conversation(first), Event::Conversation(_), rest @ ..] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(first.id, joined);
        let seqs: Vec<u64> = rest
            .iter()
            .map(|event| match event {
                Event::Message(message) if message.conversation == joined => message.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(transmitted(&mut core).is_empty(), "no gap, no request");

        // Joined again elsewhere, with seq 1 and 2 missing: they are fetched before 3 is handed.
        let other = ConversationId::from_bytes([10; 16]);
        let in_other = |seq: u64| MessageRecord { conversation: other, ..message(seq) };
        core.handle_frame(ServerFrame::Conversation { id: other, members: vec![], title: None, request_id: None }, now);
        core.handle_frame(ServerFrame::Message(in_other(3)), now);
        let frames = transmitted(&mut core);
        let [ClientFrame::History { request_id, conversation: asked, before: Some(3), limit: 2 }] = frames.as_slice()
        else {
            panic!("{frames:?}")
        };
        assert_eq!(*asked, other);
        core.handle_frame(
            ServerFrame::History {
                request_id: request_id.clone(),
                conversation: other,
                messages: vec![in_other(1), in_other(2)],
            },
            now,
        );
        let seqs: Vec<u64> = std::iter::from_fn(|| core.poll_event())
            .filter_map(|event| match event {
                Event::Message(message) => Some(message.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3]);

        // A reconnect before any message of a joined conversation resumes it from 0, so the
        // server streams it from seq 1 rather than from its newest seq.
        let third = ConversationId::from_bytes([11; 16]);
        core.handle_frame(ServerFrame::Conversation { id: third, members: vec![], title: None, request_id: None }, now);
        core.handle_disconnected();
        assert_eq!(core.resume().get(&third), Some(&0));
        core.handle_welcome(&[ConversationSummary { id: third, ..summary(7) }]);
        assert_eq!(core.resume().get(&third), Some(&0), "welcome does not move a known cursor");

        // A send-only core starts nothing.
        let mut sender = Core::new(BTreeMap::new(), false);
        sender.handle_welcome(&[]);
        sender.handle_room(10);
        sender.handle_frame(
            ServerFrame::Conversation { id: joined, members: vec![], title: None, request_id: None },
            now,
        );
        assert!(sender.take_started().is_empty());
        assert!(sender.resume().is_empty());
    }

    #[test]
    fn unacknowledged_sends_are_resent_with_their_client_seq_after_a_reconnect() {
        let mut core = connected(0, 10);
        let now = Instant::now();
        core.submit_send(conversation(), 17, "one".into());
        core.submit_send(conversation(), 18, "two".into());
        let history = core.submit_request(Request::History { conversation: conversation(), before: None, limit: 5 });
        let create = core.submit_request(Request::Create { members: vec![UserId::new("bob").unwrap()], title: None });
        assert_eq!(transmitted(&mut core).len(), 4);
        core.handle_frame(ServerFrame::SendOk { conversation: conversation(), client_seq: 17, seq: 1, ts: 5 }, now);

        core.handle_disconnected();
        core.submit_send(conversation(), 19, "three".into());
        assert!(transmitted(&mut core).is_empty(), "nothing is written while disconnected");
        let completions: Vec<Completion> = std::iter::from_fn(|| core.poll_completion()).collect();
        assert!(
            matches!(
                completions.as_slice(),
                [Completion::Send { client_seq: 17, result: Ok(SendOk { seq: 1, .. }), .. },
                 Completion::Request { request_id, result: Err(ClientError::Interrupted) }] if *request_id == create
            ),
            "{completions:?}"
        );

        core.handle_welcome(&[summary(0)]);
        let frames = transmitted(&mut core);
        assert_eq!(
            frames,
            [
                ClientFrame::Send { conversation: conversation(), client_seq: 18, body: "two".into() },
                ClientFrame::Send { conversation: conversation(), client_seq: 19, body: "three".into() },
                ClientFrame::History { request_id: history, conversation: conversation(), before: None, limit: 5 },
            ]
        );
        // The server answers a resend of a committed client_seq with the original seq; a
        // second answer for the same send is dropped.
        let ok = ServerFrame::SendOk { conversation: conversation(), client_seq: 18, seq: 2, ts: 6 };
        core.handle_frame(ok.clone(), now);
        core.handle_frame(ok, now);
        assert_eq!(std::iter::from_fn(|| core.poll_completion()).count(), 1);
    }

    #[test]
    fn retryable_refusals_are_retried_with_backoff_then_reported() {
        let mut core = connected(0, 10);
        let start = Instant::now();
        core.submit_send(conversation(), 5, "hi".into());
        transmitted(&mut core);
        let refuse = |code| ServerFrame::Error {
            request_id: None,
            conversation: Some(conversation()),
            client_seq: Some(5),
            code,
            message: "try later".into(),
            retry_after_ms: None,
        };
        let mut now = start;
        for attempt in 1..SEND_ATTEMPTS_MAX {
            core.handle_frame(refuse(ErrorCode::Unavailable), now);
            let at = core.poll_timeout().expect("a retry is scheduled");
            assert_eq!(at - now, SEND_RETRY_DELAY_MIN * 2u32.pow(attempt - 1));
            core.handle_timeout(at - Duration::from_millis(1));
            assert!(transmitted(&mut core).is_empty(), "not before its time");
            now = at;
            core.handle_timeout(now);
            assert_eq!(transmitted(&mut core).len(), 1, "attempt {attempt} resent");
        }
        core.handle_frame(refuse(ErrorCode::Unavailable), now);
        assert!(matches!(
            core.poll_completion(),
            Some(Completion::Send { result: Err(ClientError::Server { code: ErrorCode::Unavailable, .. }), .. })
        ));
        // A refusal that retrying cannot fix is reported at once.
        core.submit_send(conversation(), 6, "hi".into());
        core.handle_frame(
            ServerFrame::Error {
                request_id: None,
                conversation: Some(conversation()),
                client_seq: Some(6),
                code: ErrorCode::NotMember,
                message: "no".into(),
                retry_after_ms: None,
            },
            now,
        );
        assert!(matches!(
            core.poll_completion(),
            Some(Completion::Send {
                client_seq: 6,
                result: Err(ClientError::Server { code: ErrorCode::NotMember, .. }),
                ..
            })
        ));
        assert!(core.poll_timeout().is_none());
    }

    #[test]
    fn rate_limited_sends_wait_as_told_and_are_never_given_up() {
        let mut core = connected(0, 10);
        let now = Instant::now();
        core.submit_send(conversation(), 7, "hi".into());
        transmitted(&mut core);
        let limited = ServerFrame::Error {
            request_id: None,
            conversation: Some(conversation()),
            client_seq: Some(7),
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            retry_after_ms: Some(750),
        };
        for _ in 0..SEND_ATTEMPTS_MAX * 2 {
            core.handle_frame(limited.clone(), now);
            assert_eq!(core.poll_timeout(), Some(now + Duration::from_millis(750)), "waits as the server said");
            assert!(core.poll_completion().is_none(), "a rate limit is not a failure");
            core.handle_timeout(now + Duration::from_millis(750));
            assert_eq!(transmitted(&mut core).len(), 1, "sent again with the same client_seq");
        }
    }
}
