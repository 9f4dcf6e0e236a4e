//! The client's requests: each frame taken in turn, and the answers its reads and proposals
//! get from the node.

use std::collections::{BTreeSet, VecDeque};

use natter_canary::{self as canary, Canary};
use natter_proto::codec::encode_frame;
use natter_proto::frames::{ClientFrame, ConversationSummary, ServerFrame};
use natter_proto::limits::{HISTORY_PAGE_MAX, MEMBERS_MAX, MEMBERS_MIN};
use natter_proto::{ConversationId, ErrorCode, MessageRecord};
use natter_raft::command::{Command, CursorMove, Placed, Response};
use natter_raft::query::{Query, QueryResult, CATCH_UP_PAGE_MAX};

use super::{close, Admission, AdmitError, Parked, Request, Session, Step, Task, Time};
use crate::delivery::{Listing, WELCOME_CONVERSATIONS_MAX};
use crate::edge::rate::{self, Action};
use crate::edge::sends::{Answer, Batch, SendPipeline};
use crate::shards::ClusterError;

impl Session {
    /// A decoded frame from the client, its turn come.
    pub(super) fn handle_frame(&mut self, frame: ClientFrame, time: Time) {
        if let Err(error) = frame.validate() {
            self.write(ServerFrame::error_for(&frame, &error));
            return;
        }
        if self.identity.is_none() {
            match frame {
                ClientFrame::Hello { ref token, .. } => {
                    let token = token.clone();
                    self.park(Request::Admit { token }, Step::Admit { hello: frame });
                }
                _ => {
                    self.reply_error(&frame, ErrorCode::HelloRequired, "send hello (with a token) first");
                    self.close_with(close::UNAUTHENTICATED, "request before hello");
                }
            }
            return;
        }
        if !matches!(frame, ClientFrame::Presence { .. }) {
            // Whatever the device does shows it is in use.
            self.effects.push_back(super::Effect::PresenceFrame);
        }
        self.take_turn(frame, 0, time);
    }

    /// Takes `frame` if the rate limits allow it now. A send whose turn is at most
    /// [`rate::SEND_WAIT_MAX`] away waits for it (the session serves frames in order, so this
    /// slows the client down and keeps its sends in order); otherwise the client is told how
    /// long to wait and nothing is done.
    pub(super) fn take_turn(&mut self, frame: ClientFrame, waits: u32, time: Time) {
        let action = match &frame {
            ClientFrame::Send { .. } => Action::Send,
            ClientFrame::CreateConversation { .. } => Action::Create,
            ClientFrame::Typing { .. } => Action::Typing,
            _ => return self.serve(frame, time),
        };
        let verdict = self.gate.as_ref().map_or(Ok(()), |gate| gate.check(action));
        match verdict {
            Ok(()) => self.serve(frame, time),
            Err(wait) if action == Action::Send && wait <= rate::SEND_WAIT_MAX && waits < rate::SEND_WAITS_MAX => {
                self.parked = Some(Parked::Turn { frame, until: time.now + wait, waits: waits + 1 });
            }
            Err(wait) => {
                let wait_ms = (wait.as_millis() as u64).max(1);
                let user = self.identity.as_ref().map(|(user, _)| user.to_string()).unwrap_or_default();
                let message = format!("{user} makes {} faster than allowed; retry in {wait_ms} ms", action.describe());
                self.write(ServerFrame::rate_limited(&frame, message, wait_ms));
            }
        }
    }

    /// Serves a frame of an admitted session that its rate limits let through.
    fn serve(&mut self, frame: ClientFrame, time: Time) {
        let Some((user, device)) = self.identity.clone() else { return };
        match &frame {
            ClientFrame::Hello { .. } => {
                self.reply_error(&frame, ErrorCode::InvalidArgument, "this session already said hello")
            }
            ClientFrame::Ping { nonce } => self.write(ServerFrame::Pong { nonce: *nonce }),
            ClientFrame::CreateConversation { members, title, .. } => {
                let mut everyone: BTreeSet<_> = members.iter().cloned().collect();
                everyone.insert(user.clone());
                if everyone.len() < MEMBERS_MIN {
                    let message = format!("a conversation needs someone besides {user}");
                    return self.reply_error(&frame, ErrorCode::InvalidArgument, message);
                }
                if everyone.len() > MEMBERS_MAX {
                    let message = format!("{} members, expected at most {MEMBERS_MAX}", everyone.len());
                    return self.reply_error(&frame, ErrorCode::TooLarge, message);
                }
                // Two people and no title is the 1:1 conversation, whose id both can derive.
                let direct = everyone.len() == 2 && title.is_none();
                let conversation = if direct {
                    let mut pair = everyone.iter();
                    ConversationId::direct(pair.next().expect("two"), pair.next().expect("two"))
                } else {
                    (self.ids)()
                };
                let command = Command::CreateConversation {
                    conversation,
                    creator: user,
                    members: everyone,
                    title: title.clone(),
                    direct,
                    ts: time.wall_ms,
                };
                let shard = self.shard_of(&conversation);
                self.park(Request::Propose { shard, command }, Step::Create { request: frame });
            }
            ClientFrame::Send { conversation, client_seq, body } => {
                if canary::active(Canary::AckBeforeCommit) {
                    let command = Command::Append {
                        conversation: *conversation,
                        sender: user,
                        device,
                        client_seq: *client_seq,
                        ts: time.wall_ms,
                        body: body.clone(),
                    };
                    let (conversation, client_seq) = (*conversation, *client_seq);
                    let shard = self.shard_of(&conversation);
                    let step = Step::AckEarly { conversation, client_seq, command };
                    return self.park(Request::PeekLastSeq { shard, conversation }, step);
                }
                self.take_send(frame, time);
            }
            ClientFrame::Ack { conversation, seq } | ClientFrame::Read { conversation, seq } => {
                let (delivered, read) = match &frame {
                    ClientFrame::Ack { .. } => (Some(*seq), None),
                    _ => (None, Some(*seq)),
                };
                let step = CursorMove { conversation: *conversation, user, device, delivered, read };
                // A followed conversation is one the user is a member of: its moves may join
                // the shard's next batch. Anything else is proposed alone, so a non-member gets
                // its answer on this session.
                let batched = self.delivered.contains_key(conversation);
                let shard = self.shard_of(conversation);
                self.park(Request::MoveCursor { shard, step, batched }, Step::MoveCursor { request: frame });
            }
            ClientFrame::History { conversation, before, limit, .. } => {
                let query = Query::History { conversation: *conversation, user, before: *before, limit: *limit };
                let shard = self.shard_of(conversation);
                self.park(Request::Read { shard, query }, Step::History { request: frame });
            }
            ClientFrame::Typing { conversation, active } => {
                // Followed conversations are the user's; typing is never stored, only relayed.
                if !self.delivered.contains_key(conversation) {
                    let message = format!("{user} does not follow {conversation} in this session");
                    return self.reply_error(&frame, ErrorCode::NotMember, message);
                }
                if *active {
                    self.typing.insert(*conversation);
                } else {
                    self.typing.remove(conversation);
                }
                let push = crate::delivery::Push::Typing { conversation: *conversation, user, active: *active };
                let shard = self.shard_of(conversation);
                self.effects.push_back(super::Effect::Relay { shard, push });
            }
            ClientFrame::Presence { status, custom } => {
                self.effects.push_back(super::Effect::PresenceActivity { status: *status, custom: custom.clone() });
            }
            ClientFrame::Settings { .. } => {
                let shard = self.user_shard(&user);
                self.park(Request::Read { shard, query: Query::User { user } }, Step::SettingsRead { request: frame });
            }
        }
    }

    /// Takes a send into the pipeline, or waits for room when the client has every send it
    /// may have outstanding.
    pub(super) fn take_send(&mut self, frame: ClientFrame, time: Time) {
        if self.sending.as_ref().is_some_and(|sending| sending.is_full()) {
            self.parked = Some(Parked::Room(frame));
            return;
        }
        let ClientFrame::Send { conversation, client_seq, body } = frame else {
            tracing::error!(?frame, "only sends wait for the pipeline");
            return;
        };
        let sending = self.sending.get_or_insert_with(|| Box::new(SendPipeline::new()));
        if let Some(batch) = sending.handle_send(conversation, client_seq, body) {
            self.propose_batch(batch, time);
        }
    }

    fn propose_batch(&mut self, batch: Batch, time: Time) {
        let Some((user, device)) = self.identity.clone() else { return };
        let command = Command::AppendMany {
            conversation: batch.conversation,
            sender: user,
            device,
            ts: time.wall_ms,
            messages: batch.messages.clone(),
        };
        let shard = self.shard_of(&batch.conversation);
        self.effects.push_back(super::Effect::ProposeBatch { shard, batch, command });
    }

    /// A proposed batch ended: answers its sends (and those a failure fails with it) and
    /// proposes the conversation's next batch.
    pub(super) fn answer_batch(&mut self, batch: Batch, result: Result<Response, ClusterError>, time: Time) {
        let outcome = match result {
            Ok(Response::AppendedMany { outcomes }) => Ok(outcomes),
            Ok(other) => Err(refusal(other)),
            Err(error) => Err(unavailable(error)),
        };
        let Some(sending) = self.sending.as_mut() else {
            tracing::error!(?batch, "a batch ended that this session did not propose");
            return;
        };
        let (answers, next) = sending.handle_done(batch, outcome);
        if let Some(next) = next {
            self.propose_batch(next, time);
        } else if sending.outstanding() == 0 {
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
            self.write(frame);
        }
    }

    /// The node's answer to `hello`: subscribe, then read the user's conversations.
    pub(super) fn admitted(&mut self, hello: ClientFrame, admission: Result<Admission, AdmitError>) {
        let ClientFrame::Hello { device, .. } = &hello else {
            tracing::error!(?hello, "admission for a frame that is not hello");
            return;
        };
        let Admission { user, gate } = match admission {
            Ok(admission) => admission,
            Err(error) => {
                let (code, close_code, reason) = match &error {
                    AdmitError::Unauthenticated(_) => {
                        (ErrorCode::Unauthenticated, close::UNAUTHENTICATED, "unauthenticated")
                    }
                    AdmitError::TooManySessions { .. } => {
                        (ErrorCode::RateLimited, close::RATE_LIMITED, "too many sessions")
                    }
                };
                self.reply_error(&hello, code, error.to_string());
                return self.close_with(close_code, reason);
            }
        };
        self.gate = Some(gate);
        self.identity = Some((user.clone(), device.clone()));
        // Subscribe before reading anything: a message that commits while we catch up is then
        // either in the catch-up read or in the push queue (and dropped there as delivered).
        // The user topic goes first for the same reason: a join recorded after the list is
        // read is pushed, and one recorded before is in the list.
        self.effects.push_back(super::Effect::Subscribe(crate::delivery::Topic::User(user.clone())));
        let shard = self.user_shard(&user);
        self.park(Request::Read { shard, query: Query::UserConversations { user } }, Step::WelcomeList { hello });
    }

    /// The answer to a read.
    pub(super) fn on_read(&mut self, step: Step, result: Result<QueryResult, ClusterError>, time: Time) {
        match step {
            Step::WelcomeList { hello } => match result {
                Ok(QueryResult::Conversations(ids)) => {
                    let listing = Listing::new(ids.iter().copied());
                    let rest = ids.into_iter().take(WELCOME_CONVERSATIONS_MAX).collect();
                    self.read_welcome(hello, listing, rest, Vec::new());
                }
                Ok(_) => self.read_welcome(hello, Listing::default(), VecDeque::new(), Vec::new()),
                Err(error) => self.reply_error(&hello, ErrorCode::Unavailable, error.to_string()),
            },
            Step::WelcomeConversations { hello, listing, mut rest, mut summaries } => match result {
                Ok(result) => {
                    let id = rest.pop_front().expect("the conversation being read");
                    // The user shard can briefly list a conversation the user has just left:
                    // skip it.
                    if let QueryResult::Conversation(view) = result {
                        let (last_seq, members, title) = (view.last_seq, view.members, view.title);
                        summaries.push(ConversationSummary { id, last_seq, members, title });
                    }
                    self.read_welcome(hello, listing, rest, summaries);
                }
                Err(error) => self.reply_error(&hello, ErrorCode::Unavailable, error.to_string()),
            },
            Step::CatchUp { conversation } => self.caught_up(conversation, result),
            Step::Join { conversation } => self.joined(conversation, result),
            Step::Relist => match result {
                Ok(QueryResult::Conversations(ids)) => {
                    let joins = self.listing.handle_list(Listing::new(ids));
                    for conversation in joins.into_iter().rev() {
                        self.tasks.push_front(Task::Join(conversation));
                    }
                }
                Ok(other) => tracing::warn!(?other, "unexpected answer to a conversation list read"),
                Err(error) => {
                    tracing::debug!(%error, "re-reading a conversation list failed; retried at the next refresh")
                }
            },
            Step::History { request } => {
                let ClientFrame::History { request_id, conversation, .. } = &request else { return };
                let reply = match result {
                    Ok(QueryResult::Messages(messages)) => {
                        Ok(history_frame(request_id.clone(), *conversation, messages))
                    }
                    Ok(QueryResult::Rejected(error)) => Err((error.code(), error.to_string())),
                    Ok(other) => Err((ErrorCode::Internal, format!("unexpected answer {other:?}"))),
                    Err(error) => Err(unavailable(error)),
                };
                self.answer(&request, reply);
            }
            Step::SettingsRead { request } => {
                let ClientFrame::Settings { presence_privacy, .. } = &request else { return };
                match result {
                    Ok(QueryResult::User(record)) => {
                        let mut settings = record.settings;
                        settings.presence_privacy = *presence_privacy;
                        let Some((user, _)) = self.identity.clone() else { return };
                        let shard = self.user_shard(&user);
                        let command = Command::SetSettings { user, settings: settings.clone() };
                        self.park(Request::Propose { shard, command }, Step::SettingsWrite { request, settings });
                    }
                    Ok(other) => {
                        self.answer(&request, Err((ErrorCode::Internal, format!("unexpected answer {other:?}"))))
                    }
                    Err(error) => self.answer(&request, Err(unavailable(error))),
                }
            }
            other => {
                tracing::error!(?other, "a read answered a step that proposed");
                let _ = time;
            }
        }
    }

    /// The answer to a proposal.
    pub(super) fn on_proposed(&mut self, step: Step, result: Result<Response, ClusterError>, time: Time) {
        let _ = time;
        match step {
            Step::Create { request } => {
                let ClientFrame::CreateConversation { request_id, .. } = &request else { return };
                match result {
                    Ok(Response::Conversation { conversation: view, .. }) => {
                        self.follow(view.id, view.last_seq);
                        self.watch(&view.members);
                        let request_id = Some(request_id.clone());
                        self.write(ServerFrame::Conversation {
                            id: view.id,
                            members: view.members,
                            title: view.title,
                            request_id,
                        });
                    }
                    Ok(other) => self.answer(&request, Err(refusal(other))),
                    Err(error) => self.answer(&request, Err(unavailable(error))),
                }
            }
            Step::SettingsWrite { request, settings } => {
                let ClientFrame::Settings { request_id, .. } = &request else { return };
                let reply = match result {
                    Ok(Response::Rejected(error)) => Err((error.code(), error.to_string())),
                    Ok(_) => Ok(ServerFrame::Settings {
                        request_id: request_id.clone(),
                        presence_privacy: settings.presence_privacy,
                    }),
                    Err(error) => Err(unavailable(error)),
                };
                self.answer(&request, reply);
            }
            Step::MoveCursor { request } => match result {
                // Receipts fan out with delivery; a cursor move itself needs no answer.
                Ok(Response::Cursor { .. }) => {}
                Ok(other) => self.answer(&request, Err(refusal(other))),
                Err(error) => self.answer(&request, Err(unavailable(error))),
            },
            Step::AckEarlyAppend { conversation } => {
                if let Ok(Response::Appended { seq, .. }) = result {
                    self.follow(conversation, seq - 1);
                }
            }
            other => tracing::error!(?other, "a proposal answered a step that reads"),
        }
    }

    /// Reads the next listed conversation for `welcome`, or sends it once all are read.
    fn read_welcome(
        &mut self,
        hello: ClientFrame,
        listing: Listing,
        rest: VecDeque<ConversationId>,
        summaries: Vec<ConversationSummary>,
    ) {
        let (Some((user, device)), ClientFrame::Hello { resume, .. }) = (self.identity.clone(), &hello) else {
            return;
        };
        if let Some(&conversation) = rest.front() {
            let query = Query::Conversation { conversation, user };
            let shard = self.shard_of(&conversation);
            let step = Step::WelcomeConversations { hello, listing, rest, summaries };
            return self.park(Request::Read { shard, query }, step);
        }
        self.listing = listing;
        for summary in &summaries {
            // Without a cursor the device starts from now; `history` pages back.
            let cursor = resume.get(&summary.id).map_or(summary.last_seq, |&cursor| cursor.min(summary.last_seq));
            self.follow(summary.id, cursor);
            self.watch(&summary.members);
        }
        self.effects.push_back(super::Effect::PresenceOpen(user.clone()));
        for (&conversation, &cursor) in resume {
            // A cursor for a conversation not listed (just joined, or not a member): catch-up
            // reads it with the membership check.
            self.follow(conversation, cursor);
        }
        self.write(ServerFrame::Welcome { user, device, conversations: summaries });
        let followed: Vec<ConversationId> = self.delivered.keys().copied().collect();
        self.tasks.extend(followed.into_iter().map(Task::CatchUp));
    }

    /// Reads the page after the session's cursor in `conversation`.
    pub(super) fn catch_up(&mut self, conversation: ConversationId) {
        let (Some((user, _)), Some(&after)) = (self.identity.clone(), self.delivered.get(&conversation)) else {
            return;
        };
        let query = Query::After { conversation, user, after, limit: CATCH_UP_PAGE_MAX };
        let shard = self.shard_of(&conversation);
        self.park(Request::Read { shard, query }, Step::CatchUp { conversation });
    }

    /// Sends a page of catch-up in seq order, moving the cursor; a full page reads on. A
    /// refused read (not a member) stops following the conversation.
    fn caught_up(&mut self, conversation: ConversationId, result: Result<QueryResult, ClusterError>) {
        let page = match result {
            Ok(QueryResult::Messages(page)) => page,
            Ok(QueryResult::Rejected(error)) => {
                self.delivered.remove(&conversation);
                return self.write(conversation_error(conversation, error.code(), error.to_string()));
            }
            Ok(_) => return,
            Err(error) => {
                return self.write(conversation_error(conversation, ErrorCode::Unavailable, error.to_string()))
            }
        };
        let Some(&cursor) = self.delivered.get(&conversation) else { return };
        let full = page.len() as u32 == CATCH_UP_PAGE_MAX;
        let mut last = cursor;
        for message in page {
            // A push may have moved the cursor while the page was read: skip what went out.
            if message.seq <= last {
                continue;
            }
            debug_assert_eq!(message.seq, last + 1, "catch-up pages are contiguous");
            last = message.seq;
            self.write(ServerFrame::Message(message));
        }
        self.delivered.insert(conversation, last);
        if full {
            self.tasks.push_front(Task::CatchUp(conversation));
        }
    }

    /// The user joined `conversation`: unless the session already follows it, reads it.
    pub(super) fn join(&mut self, conversation: ConversationId) {
        let Some((user, _)) = self.identity.clone() else { return };
        if self.delivered.contains_key(&conversation) {
            return;
        }
        let shard = self.shard_of(&conversation);
        self.park(
            Request::Read { shard, query: Query::Conversation { conversation, user } },
            Step::Join { conversation },
        );
    }

    /// Tells the client of a joined conversation (an unsolicited `conversation` frame) and
    /// delivers it from seq 1. A read that failed is forgotten from the listing so the next
    /// refresh retries it; a refused one (no longer a member, or a stale join) is done with.
    fn joined(&mut self, conversation: ConversationId, result: Result<QueryResult, ClusterError>) {
        let view = match result {
            Ok(QueryResult::Conversation(view)) => view,
            Ok(QueryResult::Rejected(error)) => {
                return tracing::debug!(%error, "a joined conversation is not readable; not following it");
            }
            Ok(other) => return tracing::warn!(?other, "unexpected answer to a conversation read"),
            Err(error) => {
                tracing::debug!(%error, "reading a joined conversation failed; retried at the next refresh");
                return self.listing.forget(&conversation);
            }
        };
        // Follow (subscribe) before the catch-up read: a message committed meanwhile is then
        // either in the read or in the push queue, where it is dropped as delivered.
        self.follow(conversation, 0);
        self.watch(&view.members);
        self.write(ServerFrame::Conversation {
            id: view.id,
            members: view.members,
            title: view.title,
            request_id: None,
        });
        self.tasks.push_front(Task::CatchUp(conversation));
    }

    /// The `AckBeforeCommit` canary: `send_ok` goes out at once with the seq the local replica
    /// expects next (1 where this node holds none), then the append is proposed and its
    /// outcome ignored, as an edge that acknowledged too early would.
    pub(super) fn ack_early(
        &mut self,
        conversation: ConversationId,
        client_seq: u64,
        command: Command,
        last_seq: Option<u64>,
        time: Time,
    ) {
        let seq = last_seq.map_or(1, |last| last + 1);
        self.write(ServerFrame::SendOk { conversation, client_seq, seq, ts: time.wall_ms });
        let shard = self.shard_of(&conversation);
        self.park(Request::Propose { shard, command }, Step::AckEarlyAppend { conversation });
    }

    fn answer(&mut self, request: &ClientFrame, reply: Result<ServerFrame, (ErrorCode, String)>) {
        match reply {
            Ok(frame) => self.write(frame),
            Err((code, message)) => self.reply_error(request, code, message),
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
pub(super) fn history_frame(
    request_id: String,
    conversation: ConversationId,
    messages: Vec<MessageRecord>,
) -> ServerFrame {
    debug_assert!(messages.len() <= HISTORY_PAGE_MAX as usize);
    let mut frame = ServerFrame::History { request_id, conversation, messages };
    loop {
        if encode_frame(&frame, &mut Vec::new()).is_ok() {
            return frame;
        }
        let ServerFrame::History { messages, .. } = &mut frame else { return frame };
        if messages.len() <= 1 {
            return frame;
        }
        let drop = messages.len().div_ceil(4);
        messages.drain(..drop);
    }
}
