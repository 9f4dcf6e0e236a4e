//! A session's send pipeline: the sends a client has outstanding, proposed in batches.
//!
//! A client may keep up to `OUTSTANDING_SENDS_MAX` sends in flight. Serving them one at a time
//! would cost a whole commit (an fsync on a majority and a round trip) per send, so a client
//! with a window of 64 would wait 64 commits for its last answer. Instead, per conversation,
//! one batch is committing at a time: the first send goes out alone at once, and the sends that
//! arrive while it commits become the next batch ([`Command::AppendMany`]), proposed as soon as
//! it is done (group commit at the session, without waiting to fill a batch).
//!
//! **Order:** a device's sends to one conversation are appended in the order it sent them.
//! There is never more than one batch of a conversation in flight, and a batch's messages are
//! applied in order. When a batch fails as a whole (the shard was unavailable: it may yet
//! commit), the sends queued behind it fail with it, so the client resends them all, in order,
//! rather than having the later ones appended first. Answers to one conversation's sends come
//! in order; different conversations' answers may interleave.
//!
//! This is the core: it takes sends and batch results and says which batches to propose and
//! what to answer. The session ([`crate::edge`]) proposes and writes.
//!
//! [`Command::AppendMany`]: natter_raft::command::Command::AppendMany

use std::collections::{BTreeMap, VecDeque};

use natter_proto::limits::OUTSTANDING_SENDS_MAX;
use natter_proto::{ConversationId, ErrorCode};
use natter_raft::command::{CommandError, Outgoing, Placed, APPEND_MANY_BYTES_MAX, APPEND_MANY_MAX};

/// Messages to propose together, in order, to one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The conversation.
    pub conversation: ConversationId,
    /// The messages, in the order the client sent them.
    pub messages: Vec<Outgoing>,
}

/// What a committed (or failed) batch means for one of its sends, or one queued behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The conversation the send went to.
    pub conversation: ConversationId,
    /// The send's `client_seq`.
    pub client_seq: u64,
    /// Where it was appended, or why not.
    pub result: Result<Placed, (ErrorCode, String)>,
}

/// How a proposed batch ended: each message's outcome, in order, or one failure for all.
pub type BatchOutcome = Result<Vec<Result<Placed, CommandError>>, (ErrorCode, String)>;

/// One session's outstanding sends.
#[derive(Debug, Default)]
pub struct SendPipeline {
    /// Per conversation with a batch in flight: the sends waiting for it, in order.
    waiting: BTreeMap<ConversationId, VecDeque<Outgoing>>,
    /// Sends in flight and waiting, over every conversation.
    outstanding: usize,
}

impl SendPipeline {
    /// An empty pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends in flight or waiting.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// True when the client must wait for answers before more sends are taken.
    pub fn is_full(&self) -> bool {
        self.outstanding >= OUTSTANDING_SENDS_MAX
    }

    /// A send from the client. Returns a batch to propose now when none of the conversation's is
    /// in flight; otherwise the send waits for the one that is.
    pub fn handle_send(&mut self, conversation: ConversationId, client_seq: u64, body: String) -> Option<Batch> {
        assert!(!self.is_full(), "the session takes no send while the pipeline is full");
        self.outstanding += 1;
        let message = Outgoing { client_seq, body };
        match self.waiting.get_mut(&conversation) {
            Some(waiting) => {
                waiting.push_back(message);
                None
            }
            None => {
                self.waiting.insert(conversation, VecDeque::new());
                Some(Batch { conversation, messages: vec![message] })
            }
        }
    }

    /// The in-flight `batch` ended with `outcome`. Returns the answers to its sends (and, if it
    /// failed as a whole, to every send waiting behind it), and the next batch of the
    /// conversation to propose, if any is waiting.
    pub fn handle_done(&mut self, batch: Batch, outcome: BatchOutcome) -> (Vec<Answer>, Option<Batch>) {
        let conversation = batch.conversation;
        let waiting = self.waiting.get_mut(&conversation).expect("a batch in flight has an entry");
        let answers: Vec<Answer> = match outcome {
            Ok(outcomes) => {
                assert_eq!(outcomes.len(), batch.messages.len(), "one outcome per message");
                batch
                    .messages
                    .iter()
                    .zip(outcomes)
                    .map(|(message, outcome)| Answer {
                        conversation,
                        client_seq: message.client_seq,
                        result: outcome.map_err(|error| (error.code(), error.to_string())),
                    })
                    .collect()
            }
            Err(failure) => {
                let behind: Vec<Outgoing> = waiting.drain(..).collect();
                batch
                    .messages
                    .iter()
                    .chain(&behind)
                    .map(|message| Answer {
                        conversation,
                        client_seq: message.client_seq,
                        result: Err(failure.clone()),
                    })
                    .collect()
            }
        };
        self.outstanding -= answers.len();
        let next = next_batch(waiting);
        if next.is_empty() {
            self.waiting.remove(&conversation);
            (answers, None)
        } else {
            (answers, Some(Batch { conversation, messages: next }))
        }
    }
}

/// Takes the longest prefix of `waiting` that fits one batch (never empty unless `waiting` is:
/// one body always fits).
fn next_batch(waiting: &mut VecDeque<Outgoing>) -> Vec<Outgoing> {
    let mut bytes = 0;
    let mut taken = 0;
    for message in waiting.iter() {
        let fits = bytes + message.body.len() <= APPEND_MANY_BYTES_MAX;
        if taken == APPEND_MANY_MAX || (taken > 0 && !fits) {
            break;
        }
        bytes += message.body.len();
        taken += 1;
    }
    waiting.drain(..taken).collect()
}

#[cfg(test)]
mod tests {
    use natter_proto::limits::BODY_BYTES_MAX;

    use super::*;

    fn conversation(byte: u8) -> ConversationId {
        ConversationId::from_bytes([byte; 16])
    }

    fn placed(conversation: ConversationId, seq: u64) -> Placed {
        Placed { conversation, seq, ts: 1000 + seq, duplicate: false }
    }

    fn seqs(batch: &Batch) -> Vec<u64> {
        batch.messages.iter().map(|message| message.client_seq).collect()
    }

    #[test]
    fn one_batch_per_conversation_is_in_flight_and_the_next_takes_what_waited() {
        let (a, b) = (conversation(1), conversation(2));
        let mut pipeline = SendPipeline::new();
        let first = pipeline.handle_send(a, 1, "one".into()).expect("nothing of a in flight");
        assert_eq!(seqs(&first), vec![1]);
        assert_eq!(pipeline.handle_send(a, 2, "two".into()), None, "waits for the first");
        assert_eq!(pipeline.handle_send(a, 3, "three".into()), None);
        let other = pipeline.handle_send(b, 4, "elsewhere".into()).expect("b does not wait for a");
        assert_eq!(pipeline.outstanding(), 4);

        let (answers, next) = pipeline.handle_done(first, Ok(vec![Ok(placed(a, 1))]));
        assert_eq!(answers, vec![Answer { conversation: a, client_seq: 1, result: Ok(placed(a, 1)) }]);
        let next = next.expect("two sends waited");
        assert_eq!(seqs(&next), vec![2, 3], "in the order sent");
        assert_eq!(pipeline.handle_send(a, 5, "five".into()), None, "the second batch is in flight");

        let refused = CommandError::TooLarge("body".into());
        let (answers, after) = pipeline.handle_done(next, Ok(vec![Ok(placed(a, 2)), Err(refused.clone())]));
        assert_eq!(answers[0].result, Ok(placed(a, 2)));
        assert_eq!(answers[1].result, Err((refused.code(), refused.to_string())), "one refusal refuses only itself");
        let after = after.expect("five waited");
        assert_eq!(seqs(&after), vec![5]);
        let (_, none) = pipeline.handle_done(after, Ok(vec![Ok(placed(a, 3))]));
        assert_eq!(none, None);
        let (_, none) = pipeline.handle_done(other, Ok(vec![Ok(placed(b, 1))]));
        assert_eq!(none, None);
        assert_eq!(pipeline.outstanding(), 0);
        assert!(pipeline.handle_send(a, 6, "again".into()).is_some(), "nothing in flight: goes at once");
    }

    #[test]
    fn a_failed_batch_fails_what_waited_behind_it() {
        let (a, b) = (conversation(1), conversation(2));
        let mut pipeline = SendPipeline::new();
        let first = pipeline.handle_send(a, 1, "one".into()).expect("goes at once");
        pipeline.handle_send(a, 2, "two".into());
        pipeline.handle_send(a, 3, "three".into());
        let other = pipeline.handle_send(b, 4, "elsewhere".into()).expect("goes at once");
        pipeline.handle_send(b, 5, "waits".into());
        let failure = (ErrorCode::Unavailable, "no leader".to_string());
        let (answers, next) = pipeline.handle_done(first, Err(failure.clone()));
        assert_eq!(next, None, "nothing may overtake the sends that failed");
        let failed: Vec<u64> = answers.iter().map(|answer| answer.client_seq).collect();
        assert_eq!(failed, vec![1, 2, 3], "in order");
        assert!(answers.iter().all(|answer| answer.result == Err(failure.clone())));
        assert_eq!(pipeline.outstanding(), 2, "the other conversation's sends are untouched");
        let (_, next) = pipeline.handle_done(other, Ok(vec![Ok(placed(b, 1))]));
        assert_eq!(next.map(|batch| seqs(&batch)), Some(vec![5]));
    }

    #[test]
    fn batches_stay_within_the_command_limits_and_the_pipeline_is_bounded() {
        let a = conversation(1);
        let mut pipeline = SendPipeline::new();
        let first = pipeline.handle_send(a, 0, String::new()).expect("goes at once");
        for client_seq in 1..OUTSTANDING_SENDS_MAX as u64 {
            // Every tenth body is as large as a body may be.
            let body = if client_seq % 10 == 0 { "x".repeat(BODY_BYTES_MAX) } else { "y".into() };
            assert_eq!(pipeline.handle_send(a, client_seq, body), None);
        }
        assert!(pipeline.is_full());
        let mut batch = first;
        let mut answered = Vec::new();
        loop {
            let bytes: usize = batch.messages.iter().map(|message| message.body.len()).sum();
            assert!(!batch.messages.is_empty() && batch.messages.len() <= APPEND_MANY_MAX);
            assert!(bytes <= APPEND_MANY_BYTES_MAX, "{bytes} bytes in one batch");
            let outcomes = batch.messages.iter().map(|message| Ok(placed(a, message.client_seq + 1))).collect();
            let (answers, next) = pipeline.handle_done(batch, Ok(outcomes));
            answered.extend(answers.into_iter().map(|answer| answer.client_seq));
            assert!(!pipeline.is_full());
            match next {
                Some(next) => batch = next,
                None => break,
            }
        }
        assert_eq!(answered, (0..OUTSTANDING_SENDS_MAX as u64).collect::<Vec<_>>(), "each once, in order");
        assert_eq!(pipeline.outstanding(), 0);
    }

    #[test]
    #[should_panic(expected = "pipeline is full")]
    fn a_full_pipeline_takes_no_send() {
        let mut pipeline = SendPipeline::new();
        for client_seq in 0..=OUTSTANDING_SENDS_MAX as u64 {
            pipeline.handle_send(conversation(1), client_seq, String::new());
        }
    }
}
