//! The session core driven directly: every test feeds events and asserts the exact frames,
//! requests and effects that come out.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_proto::frame_error::FrameError;
use natter_proto::frames::{
    ActivityStatus, ClientFrame, ConversationSummary, PresencePrivacy, PresenceStatus, ServerFrame,
};
use natter_proto::limits::OUTSTANDING_SENDS_MAX;
use natter_proto::{ConversationId, DeviceId, ErrorCode, MessageRecord, UserId};
use natter_raft::command::Command;
use natter_raft::command::{
    CommandError, ConversationView, CursorMove, Outgoing, Placed, Response, UserRecord, UserSettings,
};
use natter_raft::placement::{shard_of_conversation, shard_of_user};
use natter_raft::query::{Query, QueryResult, CATCH_UP_PAGE_MAX};
use tokio::time::Instant;

use super::*;
use crate::delivery::{Listing, Push, Topic};
use crate::edge::rate::Action;
use crate::edge::sends::Batch;

const SHARDS: u32 = 8;

fn user(name: &str) -> UserId {
    name.parse().unwrap()
}

fn device(name: &str) -> DeviceId {
    name.parse().unwrap()
}

fn conversation(n: u8) -> ConversationId {
    ConversationId::from_bytes([n; 16])
}

fn message(conversation: ConversationId, seq: u64) -> MessageRecord {
    MessageRecord {
        conversation,
        seq,
        sender: user("bob"),
        sender_device: device("b1"),
        client_seq: seq,
        ts: 1_000 + seq,
        body: format!("message {seq}"),
    }
}

fn view(id: ConversationId, members: &[&str], last_seq: u64) -> ConversationView {
    ConversationView {
        id,
        members: members.iter().map(|name| user(name)).collect(),
        title: None,
        direct: members.len() == 2,
        last_seq,
        created_ts: 1,
    }
}

fn unavailable() -> ClusterError {
    ClusterError::Unavailable { shard: natter_raft::ShardId(0), reason: "no leader".into() }
}

fn not_member(conversation: ConversationId) -> CommandError {
    CommandError::NotMember { user: user("alice"), conversation }
}

/// Rate-limit verdicts in the order the gate gives them; allowed once they run out.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<VecDeque<Result<(), Duration>>>>);

impl RateGate for Gate {
    fn check(&self, _action: Action) -> Result<(), Duration> {
        self.0.lock().unwrap().pop_front().unwrap_or(Ok(()))
    }
}

/// A session under test, with its clock and everything it has put out so far.
struct Harness {
    session: Session,
    start: Instant,
    elapsed_ms: u64,
    gate: Gate,
    frames: Vec<ServerFrame>,
    requests: Vec<(RequestId, Request)>,
    effects: Vec<Effect>,
}

impl Harness {
    fn new() -> Self {
        let start = Instant::now();
        let mut next_id = 100u8;
        let ids = Box::new(move || {
            next_id += 1;
            ConversationId::from_bytes([next_id; 16])
        });
        Self {
            session: Session::new(SessionConfig { shards: SHARDS }, start, ids),
            start,
            elapsed_ms: 0,
            gate: Gate::default(),
            frames: Vec::new(),
            requests: Vec::new(),
            effects: Vec::new(),
        }
    }

    fn time(&self) -> Time {
        Time { now: self.start + Duration::from_millis(self.elapsed_ms), wall_ms: 1_700_000_000_000 + self.elapsed_ms }
    }

    fn advance(&mut self, ms: u64) {
        self.elapsed_ms += ms;
    }

    /// Collects what the session put out since the last call.
    fn drain(&mut self) {
        while let Some(frame) = self.session.poll_transmit() {
            self.frames.push(frame);
        }
        while let Some(request) = self.session.poll_request() {
            self.requests.push(request);
        }
        while let Some(effect) = self.session.poll_effect() {
            self.effects.push(effect);
        }
    }

    fn frames(&mut self) -> Vec<ServerFrame> {
        self.drain();
        std::mem::take(&mut self.frames)
    }

    fn effects(&mut self) -> Vec<Effect> {
        self.drain();
        std::mem::take(&mut self.effects)
    }

    /// The one request the session made since the last call.
    fn request(&mut self) -> (RequestId, Request) {
        self.drain();
        assert_eq!(self.requests.len(), 1, "expected one request, got {:?}", self.requests);
        self.requests.remove(0)
    }

    fn no_request(&mut self) {
        self.drain();
        assert!(self.requests.is_empty(), "expected no request, got {:?}", self.requests);
    }

    fn frame(&mut self, frame: ClientFrame) {
        let time = self.time();
        self.session.handle_frames([Ok(frame)], time);
    }

    fn push(&mut self, push: Push) {
        let time = self.time();
        self.session.handle_push(push, time);
    }

    fn read(&mut self, id: RequestId, result: Result<QueryResult, ClusterError>) {
        let time = self.time();
        self.session.handle_read(id, result, time);
    }

    fn proposed(&mut self, id: RequestId, result: Result<Response, ClusterError>) {
        let time = self.time();
        self.session.handle_proposed(id, result, time);
    }

    /// Expects a read of `query` and answers it with `result`.
    fn answer_read(&mut self, query: Query, result: Result<QueryResult, ClusterError>) {
        let (id, request) = self.request();
        match request {
            Request::Read { query: asked, .. } => assert_eq!(asked, query),
            other => panic!("expected a read of {query:?}, got {other:?}"),
        }
        self.read(id, result);
    }

    /// Says hello as alice/phone with `resume`, is admitted, and gets the user's list read.
    fn hello(&mut self, resume: BTreeMap<ConversationId, u64>) {
        self.frame(ClientFrame::Hello { device: device("phone"), resume, token: Some("t".into()) });
        let (id, request) = self.request();
        assert_eq!(request, Request::Admit { token: Some("t".into()) });
        let time = self.time();
        let gate = Box::new(self.gate.clone());
        self.session.handle_admitted(id, Ok(Admission { user: user("alice"), gate }), time);
    }

    /// An admitted session of alice that follows `listed` (each with its view), resumed at
    /// each one's last seq, its welcome and catch-up done and its output cleared.
    fn welcomed(listed: &[(ConversationId, &[&str], u64)]) -> Self {
        let mut harness = Self::new();
        let resume = listed.iter().map(|&(id, _, last_seq)| (id, last_seq)).collect();
        harness.hello(resume);
        let ids = listed.iter().map(|(id, _, _)| *id).collect();
        harness.answer_read(Query::UserConversations { user: user("alice") }, Ok(QueryResult::Conversations(ids)));
        for &(id, members, last_seq) in listed {
            let query = Query::Conversation { conversation: id, user: user("alice") };
            harness.answer_read(query, Ok(QueryResult::Conversation(view(id, members, last_seq))));
        }
        for &(id, _, last_seq) in listed {
            let query =
                Query::After { conversation: id, user: user("alice"), after: last_seq, limit: CATCH_UP_PAGE_MAX };
            harness.answer_read(query, Ok(QueryResult::Messages(Vec::new())));
        }
        harness.drain();
        harness.frames.clear();
        harness.effects.clear();
        assert!(harness.session.wants_input());
        harness
    }
}

fn summary(id: ConversationId, members: &[&str], last_seq: u64) -> ConversationSummary {
    ConversationSummary { id, last_seq, members: members.iter().map(|name| user(name)).collect(), title: None }
}

fn error_code(frame: &ServerFrame) -> ErrorCode {
    match frame {
        ServerFrame::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

// ----- hello and admission -----

#[test]
fn a_request_before_hello_is_refused_and_the_session_closed() {
    let mut harness = Harness::new();
    harness.frame(ClientFrame::Ping { nonce: 1 });
    let frames = harness.frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), ErrorCode::HelloRequired);
    assert_eq!(
        harness.session.poll_close(),
        Some(Close { code: close::UNAUTHENTICATED, reason: "request before hello" })
    );
    harness.no_request();
}

#[test]
fn a_refused_token_is_answered_unauthenticated_and_closes() {
    let mut harness = Harness::new();
    harness.frame(ClientFrame::Hello { device: device("phone"), resume: BTreeMap::new(), token: None });
    let (id, request) = harness.request();
    assert_eq!(request, Request::Admit { token: None });
    let time = harness.time();
    harness.session.handle_admitted(id, Err(AdmitError::Unauthenticated("token expired".into())), time);
    let frames = harness.frames();
    assert_eq!(
        frames,
        vec![ServerFrame::Error {
            request_id: None,
            conversation: None,
            client_seq: None,
            code: ErrorCode::Unauthenticated,
            message: "token expired".into(),
            retry_after_ms: None,
        }]
    );
    assert_eq!(harness.session.poll_close().map(|close| close.code), Some(close::UNAUTHENTICATED));
    assert!(harness.session.identity().is_none());
}

#[test]
fn a_user_over_the_session_limit_is_told_and_closed() {
    let mut harness = Harness::new();
    harness.frame(ClientFrame::Hello { device: device("phone"), resume: BTreeMap::new(), token: None });
    let (id, _) = harness.request();
    let time = harness.time();
    let refusal = AdmitError::TooManySessions { user: user("alice"), max: 16 };
    harness.session.handle_admitted(id, Err(refusal), time);
    let frames = harness.frames();
    assert_eq!(error_code(&frames[0]), ErrorCode::RateLimited);
    assert_eq!(harness.session.poll_close().map(|close| close.code), Some(close::RATE_LIMITED));
}

#[test]
fn no_hello_in_time_closes_the_session() {
    let mut harness = Harness::new();
    assert_eq!(harness.session.poll_timeout(), Some(harness.start + HELLO_TIMEOUT));
    harness.advance(HELLO_TIMEOUT.as_millis() as u64 - 1);
    let time = harness.time();
    harness.session.handle_timeout(time);
    assert!(harness.session.poll_close().is_none(), "not yet");
    harness.advance(1);
    let time = harness.time();
    harness.session.handle_timeout(time);
    assert_eq!(harness.session.poll_close(), Some(Close { code: close::UNAUTHENTICATED, reason: "no hello in time" }));
}

#[test]
fn welcome_lists_the_conversations_then_catches_up_after_each_resume_cursor() {
    let (first, second) = (conversation(1), conversation(2));
    let mut harness = Harness::new();
    harness.hello([(first, 3)].into());
    // The user topic is subscribed before the list is read.
    assert_eq!(harness.effects(), vec![Effect::Subscribe(Topic::User(user("alice")))]);
    harness.answer_read(
        Query::UserConversations { user: user("alice") },
        Ok(QueryResult::Conversations(vec![first, second])),
    );
    let query = Query::Conversation { conversation: first, user: user("alice") };
    harness.answer_read(query, Ok(QueryResult::Conversation(view(first, &["alice", "bob"], 5))));
    let query = Query::Conversation { conversation: second, user: user("alice") };
    harness.answer_read(query, Ok(QueryResult::Conversation(view(second, &["alice", "bob", "carol"], 9))));
    assert_eq!(
        harness.frames(),
        vec![ServerFrame::Welcome {
            user: user("alice"),
            device: device("phone"),
            conversations: vec![summary(first, &["alice", "bob"], 5), summary(second, &["alice", "bob", "carol"], 9)],
        }]
    );
    assert_eq!(
        harness.effects(),
        vec![
            Effect::Subscribe(Topic::Conversation(first)),
            Effect::Subscribe(Topic::Presence(user("bob"))),
            Effect::Subscribe(Topic::Conversation(second)),
            Effect::Subscribe(Topic::Presence(user("carol"))),
            Effect::PresenceOpen(user("alice")),
        ]
    );
    // The resumed conversation is caught up from its cursor; the other starts at its last seq.
    let query = Query::After { conversation: first, user: user("alice"), after: 3, limit: CATCH_UP_PAGE_MAX };
    harness.answer_read(query, Ok(QueryResult::Messages(vec![message(first, 4), message(first, 5)])));
    let query = Query::After { conversation: second, user: user("alice"), after: 9, limit: CATCH_UP_PAGE_MAX };
    harness.answer_read(query, Ok(QueryResult::Messages(Vec::new())));
    assert_eq!(
        harness.frames(),
        vec![ServerFrame::Message(message(first, 4)), ServerFrame::Message(message(first, 5))]
    );
    assert_eq!(harness.session.delivered(&first), Some(5));
    assert_eq!(harness.session.delivered(&second), Some(9));
    assert!(harness.session.wants_input());
}

#[test]
fn a_resume_cursor_past_the_last_seq_is_clamped() {
    let first = conversation(1);
    let mut harness = Harness::new();
    harness.hello([(first, 50)].into());
    harness.answer_read(Query::UserConversations { user: user("alice") }, Ok(QueryResult::Conversations(vec![first])));
    let query = Query::Conversation { conversation: first, user: user("alice") };
    harness.answer_read(query, Ok(QueryResult::Conversation(view(first, &["alice", "bob"], 7))));
    let query = Query::After { conversation: first, user: user("alice"), after: 7, limit: CATCH_UP_PAGE_MAX };
    harness.answer_read(query, Ok(QueryResult::Messages(Vec::new())));
    assert_eq!(harness.session.delivered(&first), Some(7));
}

#[test]
fn a_resume_cursor_for_an_unlisted_conversation_is_read_with_the_membership_check() {
    let foreign = conversation(9);
    let mut harness = Harness::new();
    harness.hello([(foreign, 0)].into());
    harness.answer_read(Query::UserConversations { user: user("alice") }, Ok(QueryResult::Conversations(Vec::new())));
    let query = Query::After { conversation: foreign, user: user("alice"), after: 0, limit: CATCH_UP_PAGE_MAX };
    harness.answer_read(query, Ok(QueryResult::Rejected(not_member(foreign))));
    let frames = harness.frames();
    assert!(matches!(&frames[0], ServerFrame::Welcome { conversations, .. } if conversations.is_empty()));
    assert!(
        matches!(&frames[1], ServerFrame::Error { code: ErrorCode::NotMember, conversation: Some(c), .. } if *c == foreign)
    );
    assert_eq!(harness.session.delivered(&foreign), None, "no longer followed");
    // Its messages are not delivered.
    harness.push(Push::Message(message(foreign, 1)));
    assert!(harness.frames().is_empty());
}

#[test]
fn welcome_skips_a_listed_conversation_the_user_has_just_left() {
    let (left, kept) = (conversation(1), conversation(2));
    let mut harness = Harness::new();
    harness.hello(BTreeMap::new());
    harness.answer_read(
        Query::UserConversations { user: user("alice") },
        Ok(QueryResult::Conversations(vec![left, kept])),
    );
    let query = Query::Conversation { conversation: left, user: user("alice") };
    harness.answer_read(query, Ok(QueryResult::Rejected(not_member(left))));
    let query = Query::Conversation { conversation: kept, user: user("alice") };
    harness.answer_read(query, Ok(QueryResult::Conversation(view(kept, &["alice", "bob"], 2))));
    let frames = harness.frames();
    assert!(
        matches!(&frames[0], ServerFrame::Welcome { conversations, .. } if conversations == &vec![summary(kept, &["alice", "bob"], 2)])
    );
}

#[test]
fn an_unreadable_conversation_list_answers_hello_unavailable() {
    let mut harness = Harness::new();
    harness.hello(BTreeMap::new());
    harness.answer_read(Query::UserConversations { user: user("alice") }, Err(unavailable()));
    let frames = harness.frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), ErrorCode::Unavailable);
    assert!(harness.session.poll_close().is_none(), "the client may say hello again");
}

#[test]
fn a_second_hello_is_an_invalid_argument() {
    let mut harness = Harness::welcomed(&[]);
    harness.frame(ClientFrame::Hello { device: device("phone"), resume: BTreeMap::new(), token: None });
    let frames = harness.frames();
    assert_eq!(error_code(&frames[0]), ErrorCode::InvalidArgument);
    harness.no_request();
}

// ----- delivery -----

#[test]
fn the_next_seq_is_delivered_and_repeats_are_dropped() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 3)]);
    harness.push(Push::Message(message(first, 4)));
    harness.push(Push::Message(message(first, 4)));
    harness.push(Push::Message(message(first, 2)));
    assert_eq!(harness.frames(), vec![ServerFrame::Message(message(first, 4))]);
    assert_eq!(harness.session.delivered(&first), Some(4));
    harness.no_request();
}

#[test]
fn a_gap_is_filled_from_the_shard_in_order() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 3)]);
    harness.push(Push::Message(message(first, 6)));
    assert!(harness.frames().is_empty(), "seq 6 after 3 is not delivered before 4 and 5");
    let query = Query::After { conversation: first, user: user("alice"), after: 3, limit: CATCH_UP_PAGE_MAX };
    let page = (4..=6).map(|seq| message(first, seq)).collect();
    harness.answer_read(query, Ok(QueryResult::Messages(page)));
    let frames = harness.frames();
    assert_eq!(frames, (4..=6).map(|seq| ServerFrame::Message(message(first, seq))).collect::<Vec<_>>());
    // The pushed 6 that caused the read is not sent twice.
    harness.push(Push::Message(message(first, 6)));
    assert!(harness.frames().is_empty());
}

#[test]
fn a_full_catch_up_page_reads_the_next_one() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 0)]);
    harness.push(Push::Behind { conversation: first, last_seq: 300 });
    let limit = CATCH_UP_PAGE_MAX as u64;
    let query = Query::After { conversation: first, user: user("alice"), after: 0, limit: CATCH_UP_PAGE_MAX };
    harness.answer_read(query, Ok(QueryResult::Messages((1..=limit).map(|seq| message(first, seq)).collect())));
    let query = Query::After { conversation: first, user: user("alice"), after: limit, limit: CATCH_UP_PAGE_MAX };
    harness.answer_read(query, Ok(QueryResult::Messages(vec![message(first, limit + 1)])));
    assert_eq!(harness.frames().len(), limit as usize + 1);
    assert_eq!(harness.session.delivered(&first), Some(limit + 1));
    harness.no_request();
}

#[test]
fn behind_reads_only_when_the_conversation_is_ahead() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 5)]);
    harness.push(Push::Behind { conversation: first, last_seq: 5 });
    harness.push(Push::Behind { conversation: conversation(2), last_seq: 9 });
    harness.no_request();
    harness.push(Push::Behind { conversation: first, last_seq: 6 });
    let (_, request) = harness.request();
    assert!(matches!(request, Request::Read { query: Query::After { after: 5, .. }, .. }));
}

#[test]
fn pushes_wait_while_a_request_is_answered_and_go_out_after_it() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 3)]);
    harness.frame(ClientFrame::History { request_id: "h".into(), conversation: first, before: None, limit: 10 });
    let (id, _) = harness.request();
    assert!(!harness.session.wants_input());
    harness.push(Push::Message(message(first, 4)));
    assert!(harness.frames().is_empty(), "the push waits for the history answer");
    harness.read(id, Ok(QueryResult::Messages(vec![message(first, 3)])));
    assert_eq!(
        harness.frames(),
        vec![
            ServerFrame::History { request_id: "h".into(), conversation: first, messages: vec![message(first, 3)] },
            ServerFrame::Message(message(first, 4)),
        ]
    );
}

#[test]
fn an_unavailable_catch_up_is_reported_for_the_conversation() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 3)]);
    harness.push(Push::Message(message(first, 5)));
    let (id, _) = harness.request();
    harness.read(id, Err(unavailable()));
    let frames = harness.frames();
    assert!(
        matches!(&frames[0], ServerFrame::Error { code: ErrorCode::Unavailable, conversation: Some(c), .. } if *c == first)
    );
    assert_eq!(harness.session.delivered(&first), Some(3), "still followed, cursor unchanged");
}

// ----- receipts -----

#[test]
fn receipts_only_move_forward() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 5)]);
    let receipt = |delivered, read| Push::Receipt { conversation: first, user: user("bob"), delivered, read };
    harness.push(receipt(5, 3));
    harness.push(receipt(4, 4));
    harness.push(receipt(5, 4));
    harness.push(receipt(2, 1));
    let frames = harness.frames();
    assert_eq!(
        frames,
        vec![
            ServerFrame::Receipt { conversation: first, user: user("bob"), delivered: 5, read: 3 },
            ServerFrame::Receipt { conversation: first, user: user("bob"), delivered: 5, read: 4 },
        ]
    );
}

#[test]
fn receipts_of_an_unfollowed_conversation_are_ignored() {
    let mut harness = Harness::welcomed(&[]);
    harness.push(Push::Receipt { conversation: conversation(4), user: user("bob"), delivered: 1, read: 1 });
    assert!(harness.frames().is_empty());
}

// ----- joins and the listing -----

#[test]
fn a_join_is_announced_and_delivered_from_the_first_seq() {
    let joined = conversation(3);
    let mut harness = Harness::welcomed(&[]);
    harness.push(Push::Joined { user: user("alice"), conversation: joined });
    let query = Query::Conversation { conversation: joined, user: user("alice") };
    harness.answer_read(query, Ok(QueryResult::Conversation(view(joined, &["alice", "bob", "carol"], 2))));
    let query = Query::After { conversation: joined, user: user("alice"), after: 0, limit: CATCH_UP_PAGE_MAX };
    harness.answer_read(query, Ok(QueryResult::Messages(vec![message(joined, 1), message(joined, 2)])));
    assert_eq!(
        harness.frames(),
        vec![
            ServerFrame::Conversation {
                id: joined,
                members: vec![user("alice"), user("bob"), user("carol")],
                title: None,
                request_id: None
            },
            ServerFrame::Message(message(joined, 1)),
            ServerFrame::Message(message(joined, 2)),
        ]
    );
    assert!(harness.effects().contains(&Effect::Subscribe(Topic::Conversation(joined))));
    // A repeated join changes nothing.
    harness.push(Push::Joined { user: user("alice"), conversation: joined });
    harness.no_request();
}

#[test]
fn a_join_that_cannot_be_read_is_retried_when_the_listing_differs() {
    let joined = conversation(3);
    let mut harness = Harness::welcomed(&[]);
    harness.push(Push::Joined { user: user("alice"), conversation: joined });
    let (id, _) = harness.request();
    harness.read(id, Err(unavailable()));
    assert!(harness.frames().is_empty());
    // The leader's listing has the join; the session's no longer does, so it re-reads.
    let digest = Listing::new([joined]).digest();
    harness.push(Push::Listing { user: user("alice"), digest });
    harness.answer_read(Query::UserConversations { user: user("alice") }, Ok(QueryResult::Conversations(vec![joined])));
    let query = Query::Conversation { conversation: joined, user: user("alice") };
    harness.answer_read(query, Ok(QueryResult::Conversation(view(joined, &["alice", "bob"], 0))));
    let frames = harness.frames();
    assert!(matches!(&frames[0], ServerFrame::Conversation { id, .. } if *id == joined));
}

#[test]
fn a_matching_listing_digest_reads_nothing() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 0)]);
    harness.push(Push::Listing { user: user("alice"), digest: Listing::new([first]).digest() });
    harness.no_request();
}

#[test]
fn a_refused_join_is_not_followed() {
    let joined = conversation(3);
    let mut harness = Harness::welcomed(&[]);
    harness.push(Push::Joined { user: user("alice"), conversation: joined });
    let (id, _) = harness.request();
    harness.read(id, Ok(QueryResult::Rejected(not_member(joined))));
    assert!(harness.frames().is_empty());
    assert_eq!(harness.session.delivered(&joined), None);
}

// ----- presence -----

fn presence(name: &str, status: PresenceStatus, privacy: PresencePrivacy) -> Push {
    Push::Presence { user: user(name), status, last_seen: Some(42), custom: None, privacy }
}

#[test]
fn presence_of_contacts_is_shown_once_and_others_ignored() {
    let group = conversation(1);
    let mut harness = Harness::welcomed(&[(group, &["alice", "bob", "carol"], 0)]);
    harness.push(presence("bob", PresenceStatus::Online, PresencePrivacy::Everyone));
    harness.push(presence("dave", PresenceStatus::Online, PresencePrivacy::Everyone));
    harness.push(presence("alice", PresenceStatus::Online, PresencePrivacy::Everyone));
    assert_eq!(
        harness.frames(),
        vec![ServerFrame::Presence {
            user: user("bob"),
            status: PresenceStatus::Online,
            last_seen: Some(42),
            custom: None
        }]
    );
    harness.advance(5_000);
    harness.push(presence("bob", PresenceStatus::Online, PresencePrivacy::Everyone));
    assert!(harness.frames().is_empty(), "a repeat is not shown again");
}

#[test]
fn contacts_privacy_shows_presence_only_to_a_direct_conversation() {
    let group = conversation(1);
    let mut harness = Harness::welcomed(&[(group, &["alice", "bob", "carol"], 0)]);
    harness.push(presence("bob", PresenceStatus::Online, PresencePrivacy::Contacts));
    assert_eq!(
        harness.frames(),
        vec![ServerFrame::Presence {
            user: user("bob"),
            status: PresenceStatus::Offline,
            last_seen: None,
            custom: None
        }]
    );
    let direct = ConversationId::direct(&user("alice"), &user("bob"));
    let mut harness = Harness::welcomed(&[(group, &["alice", "bob", "carol"], 0), (direct, &["alice", "bob"], 0)]);
    harness.push(presence("bob", PresenceStatus::Online, PresencePrivacy::Contacts));
    assert_eq!(
        harness.frames(),
        vec![ServerFrame::Presence {
            user: user("bob"),
            status: PresenceStatus::Online,
            last_seen: Some(42),
            custom: None
        }]
    );
}

#[test]
fn nobody_privacy_shows_offline_without_last_seen() {
    let direct = ConversationId::direct(&user("alice"), &user("bob"));
    let mut harness = Harness::welcomed(&[(direct, &["alice", "bob"], 0)]);
    harness.push(presence("bob", PresenceStatus::Away, PresencePrivacy::Nobody));
    assert_eq!(
        harness.frames(),
        vec![ServerFrame::Presence {
            user: user("bob"),
            status: PresenceStatus::Offline,
            last_seen: None,
            custom: None
        }]
    );
}

#[test]
fn presence_changes_are_coalesced_to_one_round_a_second() {
    let group = conversation(1);
    let mut harness = Harness::welcomed(&[(group, &["alice", "bob", "carol"], 0)]);
    harness.push(presence("bob", PresenceStatus::Online, PresencePrivacy::Everyone));
    assert_eq!(harness.frames().len(), 1, "the first goes out at once");
    harness.advance(100);
    harness.push(presence("bob", PresenceStatus::Away, PresencePrivacy::Everyone));
    harness.push(presence("carol", PresenceStatus::Online, PresencePrivacy::Everyone));
    harness.push(presence("bob", PresenceStatus::Offline, PresencePrivacy::Everyone));
    assert!(harness.frames().is_empty(), "within the second they wait");
    assert_eq!(harness.session.poll_timeout(), Some(harness.start + Duration::from_millis(1_000)));
    harness.advance(900);
    let time = harness.time();
    harness.session.handle_timeout(time);
    assert_eq!(
        harness.frames(),
        vec![
            ServerFrame::Presence {
                user: user("bob"),
                status: PresenceStatus::Offline,
                last_seen: Some(42),
                custom: None
            },
            ServerFrame::Presence {
                user: user("carol"),
                status: PresenceStatus::Online,
                last_seen: Some(42),
                custom: None
            },
        ]
    );
}

#[test]
fn a_new_direct_conversation_with_a_known_contact_asks_for_their_presence_again() {
    let group = conversation(1);
    let mut harness = Harness::welcomed(&[(group, &["alice", "bob", "carol"], 0)]);
    harness.frame(ClientFrame::CreateConversation { request_id: "c".into(), members: vec![user("bob")], title: None });
    let (id, _) = harness.request();
    let direct = ConversationId::direct(&user("alice"), &user("bob"));
    let response = Response::Conversation { conversation: view(direct, &["alice", "bob"], 0), created: true };
    harness.proposed(id, Ok(response));
    assert!(harness.effects().contains(&Effect::ResendPresence(user("bob"))));
}

// ----- typing and presence frames -----

#[test]
fn typing_is_relayed_for_followed_conversations_and_stopped_when_the_session_ends() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 0)]);
    harness.frame(ClientFrame::Typing { conversation: first, active: true });
    let shard = shard_of_conversation(&first, SHARDS);
    let typing =
        |active| Effect::Relay { shard, push: Push::Typing { conversation: first, user: user("alice"), active } };
    assert_eq!(harness.effects(), vec![Effect::PresenceFrame, typing(true)]);
    assert_eq!(harness.session.handle_end(), vec![typing(false)]);
}

#[test]
fn typing_in_an_unfollowed_conversation_is_not_member() {
    let mut harness = Harness::welcomed(&[]);
    harness.frame(ClientFrame::Typing { conversation: conversation(7), active: true });
    assert_eq!(error_code(&harness.frames()[0]), ErrorCode::NotMember);
    assert_eq!(harness.effects(), vec![Effect::PresenceFrame]);
}

#[test]
fn others_typing_is_shown_and_the_users_own_is_not() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 0)]);
    harness.push(Push::Typing { conversation: first, user: user("alice"), active: true });
    harness.push(Push::Typing { conversation: first, user: user("bob"), active: true });
    harness.push(Push::Typing { conversation: conversation(2), user: user("bob"), active: true });
    assert_eq!(harness.frames(), vec![ServerFrame::Typing { conversation: first, user: user("bob"), active: true }]);
}

#[test]
fn a_presence_frame_is_activity_and_not_a_use_of_the_device() {
    let mut harness = Harness::welcomed(&[]);
    harness.frame(ClientFrame::Presence { status: ActivityStatus::Away, custom: Some("lunch".into()) });
    assert_eq!(
        harness.effects(),
        vec![Effect::PresenceActivity { status: ActivityStatus::Away, custom: Some("lunch".into()) }]
    );
    harness.frame(ClientFrame::Ping { nonce: 9 });
    assert_eq!(harness.effects(), vec![Effect::PresenceFrame]);
    assert_eq!(harness.frames(), vec![ServerFrame::Pong { nonce: 9 }]);
}

// ----- sends -----

fn send(conversation: ConversationId, client_seq: u64) -> ClientFrame {
    ClientFrame::Send { conversation, client_seq, body: format!("body {client_seq}") }
}

/// The batches the session asked to propose since the last call.
fn batches(harness: &mut Harness) -> Vec<Batch> {
    harness
        .effects()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::ProposeBatch { batch, command: Command::AppendMany { messages, .. }, .. } => {
                assert_eq!(messages, batch.messages);
                Some(batch)
            }
            _ => None,
        })
        .collect()
}

fn placed(conversation: ConversationId, seq: u64) -> Result<Placed, CommandError> {
    Ok(Placed { conversation, seq, ts: 5_000 + seq, duplicate: false })
}

#[test]
fn a_send_is_answered_after_its_batch_commits() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 4)]);
    harness.frame(send(first, 1));
    let batch = batches(&mut harness).pop().expect("a batch");
    assert_eq!(batch, Batch { conversation: first, messages: vec![Outgoing { client_seq: 1, body: "body 1".into() }] });
    assert!(harness.frames().is_empty(), "nothing before the commit");
    assert!(harness.session.wants_input(), "the session goes on while the batch commits");
    let time = harness.time();
    harness.session.handle_batch_done(batch, Ok(Response::AppendedMany { outcomes: vec![placed(first, 5)] }), time);
    assert_eq!(harness.frames(), vec![ServerFrame::SendOk { conversation: first, client_seq: 1, seq: 5, ts: 5_005 }]);
    assert_eq!(harness.session.sends_outstanding(), 0);
}

#[test]
fn sends_arriving_during_a_commit_go_as_the_next_batch_in_order() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 0)]);
    let time = harness.time();
    harness.session.handle_frames([Ok(send(first, 1)), Ok(send(first, 2)), Ok(send(first, 3))], time);
    let mut proposed = batches(&mut harness);
    assert_eq!(proposed.len(), 1, "one batch of a conversation in flight");
    harness.session.handle_batch_done(
        proposed.remove(0),
        Ok(Response::AppendedMany { outcomes: vec![placed(first, 1)] }),
        time,
    );
    let next = batches(&mut harness).pop().expect("the next batch");
    assert_eq!(next.messages.iter().map(|message| message.client_seq).collect::<Vec<_>>(), vec![2, 3]);
    harness.session.handle_batch_done(
        next,
        Ok(Response::AppendedMany { outcomes: vec![placed(first, 2), placed(first, 3)] }),
        time,
    );
    let answered: Vec<u64> = harness
        .frames()
        .into_iter()
        .map(|frame| match frame {
            ServerFrame::SendOk { client_seq, .. } => client_seq,
            other => panic!("expected send_ok, got {other:?}"),
        })
        .collect();
    assert_eq!(answered, vec![1, 2, 3]);
}

#[test]
fn a_failed_batch_fails_the_sends_waiting_behind_it() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 0)]);
    let time = harness.time();
    harness.session.handle_frames([Ok(send(first, 1)), Ok(send(first, 2))], time);
    let batch = batches(&mut harness).pop().unwrap();
    harness.session.handle_batch_done(batch, Err(unavailable()), time);
    let frames = harness.frames();
    assert_eq!(frames.len(), 2);
    for (frame, client_seq) in frames.iter().zip([1, 2]) {
        assert!(
            matches!(frame, ServerFrame::Error { code: ErrorCode::Unavailable, client_seq: Some(c), .. } if *c == client_seq)
        );
    }
    assert!(batches(&mut harness).is_empty(), "nothing proposed after a failure");
}

#[test]
fn a_refused_send_is_answered_with_its_error_and_client_seq() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[]);
    harness.frame(send(first, 7));
    let batch = batches(&mut harness).pop().unwrap();
    let time = harness.time();
    let outcome = Response::AppendedMany { outcomes: vec![Err(not_member(first))] };
    harness.session.handle_batch_done(batch, Ok(outcome), time);
    let frames = harness.frames();
    assert!(matches!(&frames[0], ServerFrame::Error { code: ErrorCode::NotMember, client_seq: Some(7), .. }));
    assert_eq!(harness.session.delivered(&first), None);
}

#[test]
fn a_send_to_an_unfollowed_conversation_follows_it_from_its_seq() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[]);
    harness.frame(send(first, 1));
    let batch = batches(&mut harness).pop().unwrap();
    let time = harness.time();
    harness.session.handle_batch_done(batch, Ok(Response::AppendedMany { outcomes: vec![placed(first, 8)] }), time);
    assert_eq!(harness.session.delivered(&first), Some(7), "seq 8 itself is pushed after send_ok");
    assert!(harness.effects().contains(&Effect::Subscribe(Topic::Conversation(first))));
}

#[test]
fn a_full_pipeline_holds_the_next_send_until_an_answer_makes_room() {
    let mut harness = Harness::welcomed(&[]);
    let time = harness.time();
    // One conversation per send, so each is its own batch in flight.
    let sends: Vec<_> = (0..OUTSTANDING_SENDS_MAX as u64)
        .map(|n| Ok(send(ConversationId::from_bytes((n as u128 + 1000).to_be_bytes()), n + 1)))
        .collect();
    harness.session.handle_frames(sends, time);
    let mut proposed = batches(&mut harness);
    assert_eq!(proposed.len(), OUTSTANDING_SENDS_MAX);
    assert!(harness.session.wants_input());
    let extra = ConversationId::from_bytes([0xee; 16]);
    harness.frame(send(extra, 5_000));
    assert!(batches(&mut harness).is_empty(), "no room");
    assert!(!harness.session.wants_input(), "the client's next frames wait");
    let first = proposed.remove(0);
    let conversation = first.conversation;
    harness.session.handle_batch_done(
        first,
        Ok(Response::AppendedMany { outcomes: vec![placed(conversation, 1)] }),
        time,
    );
    let now = batches(&mut harness);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].conversation, extra);
    assert!(harness.session.wants_input());
}

#[test]
fn a_send_over_the_rate_waits_for_its_turn_and_a_create_is_told_to_retry() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 0)]);
    harness.gate.0.lock().unwrap().push_back(Err(Duration::from_millis(100)));
    harness.frame(send(first, 1));
    assert!(batches(&mut harness).is_empty());
    assert_eq!(harness.session.poll_timeout(), Some(harness.time().now + Duration::from_millis(100)));
    harness.advance(100);
    let time = harness.time();
    harness.session.handle_timeout(time);
    assert_eq!(batches(&mut harness).len(), 1, "proposed once its turn came");
    harness.gate.0.lock().unwrap().push_back(Err(Duration::from_secs(3)));
    harness.frame(ClientFrame::CreateConversation { request_id: "c".into(), members: vec![user("bob")], title: None });
    let frames = harness.frames();
    assert!(
        matches!(&frames[0], ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms: Some(3_000), request_id: Some(id), .. } if id == "c")
    );
    harness.no_request();
}

// ----- bad input -----

#[test]
fn bad_frames_are_answered_and_too_many_in_a_row_close_the_session() {
    let mut harness = Harness::welcomed(&[]);
    let bad = || Err(FrameError::BadFrame { reason: "expected a frame, got noise".into() });
    let time = harness.time();
    harness.session.handle_frames((0..BAD_FRAMES_MAX - 1).map(|_| bad()), time);
    harness.session.handle_frames([Ok(ClientFrame::Ping { nonce: 1 })], time);
    let frames = harness.frames();
    assert_eq!(frames.len(), BAD_FRAMES_MAX as usize);
    assert!(frames[..frames.len() - 1].iter().all(|frame| error_code(frame) == ErrorCode::BadFrame));
    assert!(harness.session.poll_close().is_none(), "a good frame resets the count");
    harness.session.handle_frames((0..BAD_FRAMES_MAX).map(|_| bad()), time);
    assert_eq!(harness.session.poll_close(), Some(Close { code: close::BAD_FRAMES, reason: "too many bad frames" }));
}

#[test]
fn an_oversized_body_is_too_large_and_the_session_goes_on() {
    let mut harness = Harness::welcomed(&[]);
    let body = "x".repeat(natter_proto::limits::BODY_BYTES_MAX + 1);
    harness.frame(ClientFrame::Send { conversation: conversation(1), client_seq: 1, body });
    let frames = harness.frames();
    assert!(matches!(&frames[0], ServerFrame::Error { code: ErrorCode::TooLarge, client_seq: Some(1), .. }));
    assert!(batches(&mut harness).is_empty());
    harness.frame(ClientFrame::Ping { nonce: 2 });
    assert_eq!(harness.frames(), vec![ServerFrame::Pong { nonce: 2 }]);
}

// ----- cursors, create, history, settings -----

#[test]
fn an_ack_of_a_followed_conversation_may_join_the_batch_and_a_stranger_is_proposed_alone() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[(first, &["alice", "bob"], 9)]);
    harness.frame(ClientFrame::Ack { conversation: first, seq: 9 });
    let (id, request) = harness.request();
    let step = CursorMove {
        conversation: first,
        user: user("alice"),
        device: device("phone"),
        delivered: Some(9),
        read: None,
    };
    let shard = shard_of_conversation(&first, SHARDS);
    assert_eq!(request, Request::MoveCursor { shard, step, batched: true });
    let time = harness.time();
    harness.session.handle_cursor_queued(id, time);
    assert!(harness.frames().is_empty());
    let stranger = conversation(2);
    harness.frame(ClientFrame::Read { conversation: stranger, seq: 1 });
    let (id, request) = harness.request();
    assert!(matches!(request, Request::MoveCursor { batched: false, .. }));
    harness.proposed(id, Ok(Response::Rejected(not_member(stranger))));
    assert!(
        matches!(&harness.frames()[0], ServerFrame::Error { code: ErrorCode::NotMember, conversation: Some(c), .. } if *c == stranger)
    );
}

#[test]
fn create_makes_the_direct_id_for_two_and_a_fresh_id_for_a_group() {
    let mut harness = Harness::welcomed(&[]);
    harness.frame(ClientFrame::CreateConversation { request_id: "d".into(), members: vec![user("bob")], title: None });
    let (id, request) = harness.request();
    let direct = ConversationId::direct(&user("alice"), &user("bob"));
    let Request::Propose { command: Command::CreateConversation { conversation, direct: is_direct, ts, .. }, .. } =
        request
    else {
        panic!("expected a create, got {request:?}")
    };
    assert_eq!((conversation, is_direct, ts), (direct, true, harness.time().wall_ms));
    let response = Response::Conversation { conversation: view(direct, &["alice", "bob"], 3), created: false };
    harness.proposed(id, Ok(response));
    assert_eq!(
        harness.frames(),
        vec![ServerFrame::Conversation {
            id: direct,
            members: vec![user("alice"), user("bob")],
            title: None,
            request_id: Some("d".into())
        }]
    );
    assert_eq!(harness.session.delivered(&direct), Some(3), "followed from now");
    harness.frame(ClientFrame::CreateConversation {
        request_id: "g".into(),
        members: vec![user("bob"), user("carol")],
        title: Some("trip".into()),
    });
    let (_, request) = harness.request();
    assert!(
        matches!(request, Request::Propose { command: Command::CreateConversation { conversation, direct: false, .. }, .. } if conversation == ConversationId::from_bytes([101; 16]))
    );
}

#[test]
fn create_with_only_oneself_is_an_invalid_argument() {
    let mut harness = Harness::welcomed(&[]);
    harness.frame(ClientFrame::CreateConversation {
        request_id: "s".into(),
        members: vec![user("alice")],
        title: None,
    });
    assert_eq!(error_code(&harness.frames()[0]), ErrorCode::InvalidArgument);
    harness.no_request();
}

#[test]
fn history_is_answered_with_its_request_id_or_the_refusal() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[]);
    harness.frame(ClientFrame::History { request_id: "h1".into(), conversation: first, before: Some(10), limit: 2 });
    let query = Query::History { conversation: first, user: user("alice"), before: Some(10), limit: 2 };
    harness.answer_read(query, Ok(QueryResult::Rejected(not_member(first))));
    let frames = harness.frames();
    assert!(
        matches!(&frames[0], ServerFrame::Error { code: ErrorCode::NotMember, request_id: Some(id), .. } if id == "h1")
    );
}

#[test]
fn a_history_page_too_big_for_one_frame_drops_its_oldest_messages() {
    let first = conversation(1);
    let body = "y".repeat(natter_proto::limits::BODY_BYTES_MAX);
    let messages: Vec<_> = (1..=40).map(|seq| MessageRecord { body: body.clone(), ..message(first, seq) }).collect();
    let ServerFrame::History { messages: kept, .. } = requests::history_frame("h".into(), first, messages) else {
        panic!("a history frame")
    };
    assert!(kept.len() < 40 && !kept.is_empty());
    assert_eq!(kept.last().map(|message| message.seq), Some(40), "the newest are kept");
}

#[test]
fn settings_keep_what_the_frame_does_not_set_and_answer_what_was_stored() {
    let mut harness = Harness::welcomed(&[]);
    harness.frame(ClientFrame::Settings { request_id: "s".into(), presence_privacy: PresencePrivacy::Nobody });
    let stored = UserSettings { presence_privacy: PresencePrivacy::Everyone, time_zone: Some("Europe/Paris".into()) };
    harness.answer_read(
        Query::User { user: user("alice") },
        Ok(QueryResult::User(UserRecord { last_seen: None, settings: stored })),
    );
    let (id, request) = harness.request();
    let expected = UserSettings { presence_privacy: PresencePrivacy::Nobody, time_zone: Some("Europe/Paris".into()) };
    let shard = shard_of_user(&user("alice"), SHARDS);
    assert_eq!(
        request,
        Request::Propose { shard, command: Command::SetSettings { user: user("alice"), settings: expected } }
    );
    harness.proposed(id, Ok(Response::Done));
    assert_eq!(
        harness.frames(),
        vec![ServerFrame::Settings { request_id: "s".into(), presence_privacy: PresencePrivacy::Nobody }]
    );
}

#[test]
fn an_answer_for_another_request_is_ignored() {
    let first = conversation(1);
    let mut harness = Harness::welcomed(&[]);
    harness.frame(ClientFrame::History { request_id: "h".into(), conversation: first, before: None, limit: 5 });
    let (id, _) = harness.request();
    harness.read(id + 7, Ok(QueryResult::Messages(Vec::new())));
    assert!(harness.frames().is_empty());
    assert!(!harness.session.wants_input(), "still waiting for its own answer");
    harness.read(id, Ok(QueryResult::Messages(Vec::new())));
    assert_eq!(harness.frames().len(), 1);
}
