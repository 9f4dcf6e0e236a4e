//! natter-check: histories and the checkers that judge them (DESIGN §8), shared by the
//! simulator (natter-sim) and the real-process chaos tests (natter-chaos).
//!
//! A history records what clients did and saw: every send with its outcome (acknowledged with
//! a seq, refused with a code, or *unknown* when it timed out: never counted as a failure),
//! and every message each device was handed, in order. The checkers then verify:
//!
//! 1. **Agreement**: per conversation, every observer saw the same message at each seq.
//! 2. **No gaps, no duplicates**: each device saw consecutive seqs (from where it started).
//! 3. **At most once**: no `(sender, device, client_seq)` occupies two seqs.
//! 4. **Acknowledged means kept**: every `send_ok` seq holds that very send, forever after.
//! 5. **Completeness** (after faults heal): every device saw every seq up to the end, the
//!    highest acknowledged one included.
//! 6. **Receipts move forward**: per observer and member, receipts never decrease.
//! 7. **Liveness** (when the history has a heal phase): once faults stopped, every send got an
//!    answer and every device caught up within the phase's bound of simulated time.
//! 8. **Fresh reads**: a history read of a conversation's latest page, invoked after a send to
//!    it was acknowledged or one of its messages was handed to a device, returns that message
//!    or a later one: reads are linearizable, never served from a lagging replica.
//!
//! Each checker is proven by a planted bug in this crate's tests.
//!
//! **API boundary:** depends on natter-proto alone, so whatever records a history (simulated
//! clients, real processes) can be judged without linking the simulator.
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use natter_proto::{ConversationId, DeviceId, MessageRecord, UserId};

/// Who observed: a user's device (sessions of the same device across reconnects are one
/// observer, holding one cursor).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Observer {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
}

impl fmt::Display for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user, self.device)
    }
}

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// `send_ok` with this seq.
    Acknowledged(u64),
    /// Refused with this error code.
    Refused(String),
    /// No answer before the client gave up: it may or may not have committed.
    Unknown,
}

/// One send as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRecord {
    /// The sending device.
    pub observer: Observer,
    /// The conversation.
    pub conversation: ConversationId,
    /// The device's number for the send.
    pub client_seq: u64,
    /// The body sent.
    pub body: String,
    /// How it ended.
    pub outcome: SendOutcome,
}

/// Everything recorded in a run.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Sends, in completion order.
    pub sends: Vec<SendRecord>,
    /// Per observer, the messages it was handed, in order.
    pub deliveries: BTreeMap<Observer, Vec<MessageRecord>>,
    /// Per observer, the cursor it started each conversation from (0 when from the start).
    pub starts: BTreeMap<(Observer, ConversationId), u64>,
    /// Per observer, the receipts it saw: (conversation, member, delivered, read), in order.
    pub receipts: BTreeMap<Observer, Vec<(ConversationId, UserId, u64, u64)>>,
    /// Messages returned by history reads; they must agree with what devices were handed.
    pub reads: Vec<MessageRecord>,
    /// When reads of latest pages were invoked and what they returned, for checker 8.
    pub read_views: Vec<ReadView>,
    /// When things were known to be committed, for checker 8: per conversation,
    /// (simulated ms, seq) of each acknowledgement or delivery, in any order.
    pub committed_at: BTreeMap<ConversationId, Vec<(u64, u64)>>,
    /// Sends invoked that never got any outcome, not even a timeout, by the end of the run.
    pub unfinished: Vec<SendRecord>,
    /// The heal phase, if the run had one (the simulator's does; a soak without a bound on
    /// recovery does not).
    pub heal: Option<HealPhase>,
}

/// One read of a conversation's latest page (`before` unset), as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadView {
    /// Who read.
    pub observer: Observer,
    /// The conversation.
    pub conversation: ConversationId,
    /// When the read was invoked, simulated ms since the run began.
    pub invoked_ms: u64,
    /// The highest seq the page held; `None` for an empty page.
    pub highest_seq: Option<u64>,
}

/// The end of a run: faults stopped, then the run waited until every send had its answer and
/// every device had caught up, at most `bound_ms` of simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealPhase {
    /// When faults stopped, simulated milliseconds since the run began.
    pub started_ms: u64,
    /// How long settling may take, simulated milliseconds.
    pub bound_ms: u64,
    /// When everything had settled, if it did before the run gave up.
    pub settled_ms: Option<u64>,
}

/// A broken guarantee, with enough detail to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Two observers saw different messages at one seq.
    Disagreement {
        /// The conversation.
        conversation: ConversationId,
        /// The seq.
        seq: u64,
        /// What each saw (description).
        detail: String,
    },
    /// A device saw a seq other than the next one.
    GapOrDuplicate {
        /// The device.
        observer: Observer,
        /// The conversation.
        conversation: ConversationId,
        /// The seq it expected.
        expected: u64,
        /// The seq it got.
        got: u64,
    },
    /// One send occupies two seqs.
    AppendedTwice {
        /// The conversation.
        conversation: ConversationId,
        /// The sending device.
        sender: Observer,
        /// Its client_seq.
        client_seq: u64,
        /// The seqs it occupies.
        seqs: Vec<u64>,
    },
    /// An acknowledged send is missing or replaced.
    AcknowledgedLost {
        /// The conversation.
        conversation: ConversationId,
        /// The seq `send_ok` named.
        seq: u64,
        /// What the record says.
        detail: String,
    },
    /// A device never saw a seq that exists.
    Incomplete {
        /// The device.
        observer: Observer,
        /// The conversation.
        conversation: ConversationId,
        /// Seqs up to here exist.
        last_seq: u64,
        /// The device saw up to here.
        seen: u64,
    },
    /// A receipt went backwards.
    ReceiptBackwards {
        /// Who saw it.
        observer: Observer,
        /// The conversation.
        conversation: ConversationId,
        /// The member the receipt is about.
        member: UserId,
        /// The earlier (delivered, read).
        before: (u64, u64),
        /// The later one.
        after: (u64, u64),
    },
    /// A read of the latest page missed a message known committed before the read began.
    StaleRead {
        /// Who read.
        observer: Observer,
        /// The conversation.
        conversation: ConversationId,
        /// When the read was invoked, simulated ms.
        invoked_ms: u64,
        /// The highest seq the page held (0: empty).
        returned: u64,
        /// A seq committed before the read was invoked.
        committed: u64,
        /// When that seq was known committed, simulated ms.
        committed_ms: u64,
    },
    /// After faults stopped, sends stayed unanswered or devices behind for longer than the
    /// heal bound (or for good).
    NotSettled {
        /// Simulated milliseconds waited after the faults stopped.
        waited_ms: u64,
        /// The bound, simulated milliseconds.
        bound_ms: u64,
        /// Sends still without an answer.
        unfinished_sends: usize,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// The message each seq holds, as the observers agree on it.
pub type Canonical = BTreeMap<ConversationId, BTreeMap<u64, MessageRecord>>;

/// Runs every checker; `complete` also demands every device saw every seq (use it after the
/// faults healed and the clients caught up).
pub fn check(history: &History, complete: bool) -> Vec<Violation> {
    let (canonical, mut violations) = agreement(history);
    violations.extend(gaps_and_duplicates(history));
    violations.extend(at_most_once(&canonical));
    violations.extend(acknowledged_kept(history, &canonical));
    if complete {
        violations.extend(completeness(history, &canonical));
    }
    violations.extend(receipts_forward(history));
    violations.extend(liveness(history));
    violations.extend(fresh_reads(history));
    violations
}

fn same_message(a: &MessageRecord, b: &MessageRecord) -> bool {
    a.sender == b.sender && a.sender_device == b.sender_device && a.client_seq == b.client_seq && a.body == b.body
}

/// Checker 1: every observer saw the same message at each seq. Returns the agreed messages.
pub fn agreement(history: &History) -> (Canonical, Vec<Violation>) {
    let mut canonical: Canonical = BTreeMap::new();
    let mut violations = Vec::new();
    // Deliveries first, so a read that disagrees is reported against what devices saw.
    for message in history.deliveries.values().flatten().chain(&history.reads) {
        let seqs = canonical.entry(message.conversation).or_default();
        match seqs.get(&message.seq) {
            None => {
                seqs.insert(message.seq, message.clone());
            }
            Some(known) if same_message(known, message) => {}
            Some(known) => violations.push(Violation::Disagreement {
                conversation: message.conversation,
                seq: message.seq,
                detail: format!("{known:?} vs {message:?}"),
            }),
        }
    }
    (canonical, violations)
}

/// Checker 2: each device saw consecutive seqs per conversation from where it started.
pub fn gaps_and_duplicates(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (observer, messages) in &history.deliveries {
        let mut next: BTreeMap<ConversationId, u64> = BTreeMap::new();
        for message in messages {
            let expected = next.entry(message.conversation).or_insert_with(|| {
                history.starts.get(&(observer.clone(), message.conversation)).copied().unwrap_or(0) + 1
            });
            if message.seq != *expected {
                violations.push(Violation::GapOrDuplicate {
                    observer: observer.clone(),
                    conversation: message.conversation,
                    expected: *expected,
                    got: message.seq,
                });
            }
            *expected = message.seq + 1;
        }
    }
    violations
}

/// Checker 3: no send occupies two seqs.
pub fn at_most_once(canonical: &Canonical) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (conversation, seqs) in canonical {
        let mut by_send: BTreeMap<(UserId, DeviceId, u64), Vec<u64>> = BTreeMap::new();
        for (seq, message) in seqs {
            by_send
                .entry((message.sender.clone(), message.sender_device.clone(), message.client_seq))
                .or_default()
                .push(*seq);
        }
        for ((user, device, client_seq), seqs) in by_send {
            if seqs.len() > 1 {
                violations.push(Violation::AppendedTwice {
                    conversation: *conversation,
                    sender: Observer { user, device },
                    client_seq,
                    seqs,
                });
            }
        }
    }
    violations
}

/// Checker 4: every acknowledged send holds its seq.
pub fn acknowledged_kept(history: &History, canonical: &Canonical) -> Vec<Violation> {
    let mut violations = Vec::new();
    for send in &history.sends {
        let SendOutcome::Acknowledged(seq) = send.outcome else { continue };
        let found = canonical.get(&send.conversation).and_then(|seqs| seqs.get(&seq));
        let kept = found.is_some_and(|message| {
            message.sender == send.observer.user
                && message.sender_device == send.observer.device
                && message.client_seq == send.client_seq
                && message.body == send.body
        });
        if !kept {
            violations.push(Violation::AcknowledgedLost {
                conversation: send.conversation,
                seq,
                detail: format!("send {send:?}, seq holds {found:?}"),
            });
        }
    }
    violations
}

/// Checker 5: every device saw every existing seq of the conversations it followed: every seq
/// any observer or read saw, and every seq a `send_ok` named.
pub fn completeness(history: &History, canonical: &Canonical) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut acknowledged: BTreeMap<ConversationId, u64> = BTreeMap::new();
    for send in &history.sends {
        if let SendOutcome::Acknowledged(seq) = send.outcome {
            let highest = acknowledged.entry(send.conversation).or_default();
            *highest = (*highest).max(seq);
        }
    }
    let followed: BTreeSet<(Observer, ConversationId)> = history
        .starts
        .keys()
        .cloned()
        .chain(history.deliveries.iter().flat_map(|(observer, messages)| {
            messages.iter().map(move |message| (observer.clone(), message.conversation))
        }))
        .collect();
    for (observer, conversation) in followed {
        let last_seq = canonical
            .get(&conversation)
            .and_then(|seqs| seqs.keys().next_back().copied())
            .unwrap_or(0)
            .max(acknowledged.get(&conversation).copied().unwrap_or(0));
        let seen = history
            .deliveries
            .get(&observer)
            .and_then(|messages| messages.iter().filter(|m| m.conversation == conversation).map(|m| m.seq).max())
            .unwrap_or_else(|| history.starts.get(&(observer.clone(), conversation)).copied().unwrap_or(0));
        if seen < last_seq {
            violations.push(Violation::Incomplete { observer, conversation, last_seq, seen });
        }
    }
    violations
}

/// Checker 6: per observer and member, receipts never decrease.
pub fn receipts_forward(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (observer, receipts) in &history.receipts {
        let mut last: BTreeMap<(ConversationId, UserId), (u64, u64)> = BTreeMap::new();
        for (conversation, member, delivered, read) in receipts {
            let key = (*conversation, member.clone());
            if let Some(&before) = last.get(&key) {
                if *delivered < before.0 || *read < before.1 {
                    violations.push(Violation::ReceiptBackwards {
                        observer: observer.clone(),
                        conversation: *conversation,
                        member: member.clone(),
                        before,
                        after: (*delivered, *read),
                    });
                }
            }
            last.insert(key, (*delivered, *read));
        }
    }
    violations
}

/// Checker 7: with a heal phase, every send was answered and the run settled within the bound.
/// (Which devices are behind is for [`completeness`] to say.)
pub fn liveness(history: &History) -> Vec<Violation> {
    let Some(heal) = history.heal else { return Vec::new() };
    let waited_ms = heal.settled_ms.map(|settled| settled.saturating_sub(heal.started_ms));
    let in_time = waited_ms.is_some_and(|waited| waited <= heal.bound_ms);
    if in_time && history.unfinished.is_empty() {
        return Vec::new();
    }
    vec![Violation::NotSettled {
        waited_ms: waited_ms.unwrap_or(heal.bound_ms),
        bound_ms: heal.bound_ms,
        unfinished_sends: history.unfinished.len(),
    }]
}

/// Checker 8: a read of the latest page, invoked strictly after a seq was known committed
/// (acknowledged to its sender or handed to a device), returns that seq or a later one.
/// "Strictly after" is by the millisecond, so events in the same millisecond never count.
pub fn fresh_reads(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    for read in &history.read_views {
        let Some(known) = history.committed_at.get(&read.conversation) else { continue };
        let newest_before = known.iter().filter(|(at_ms, _)| *at_ms < read.invoked_ms).max_by_key(|(_, seq)| *seq);
        let Some(&(committed_ms, committed)) = newest_before else { continue };
        let returned = read.highest_seq.unwrap_or(0);
        if returned < committed {
            violations.push(Violation::StaleRead {
                observer: read.observer.clone(),
                conversation: read.conversation,
                invoked_ms: read.invoked_ms,
                returned,
                committed,
                committed_ms,
            });
        }
    }
    violations
}

/// True when no device is behind: what the simulator waits for after faults stop.
pub fn caught_up(history: &History) -> bool {
    completeness(history, &agreement(history).0).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer(user: &str, device: &str) -> Observer {
        Observer { user: UserId::new(user).unwrap(), device: DeviceId::new(device).unwrap() }
    }

    fn conversation() -> ConversationId {
        ConversationId::from_bytes([1; 16])
    }

    fn message(seq: u64, sender: &Observer, client_seq: u64) -> MessageRecord {
        MessageRecord {
            conversation: conversation(),
            seq,
            sender: sender.user.clone(),
            sender_device: sender.device.clone(),
            client_seq,
            ts: seq,
            body: format!("{sender} #{client_seq}"),
        }
    }

    /// A correct run: alice sends 1..=3, both devices see them all.
    fn good() -> History {
        let alice = observer("alice", "phone");
        let bob = observer("bob", "laptop");
        let messages: Vec<MessageRecord> = (1..=3).map(|n| message(n, &alice, n)).collect();
        let mut history = History::default();
        for n in 1..=3 {
            history.sends.push(SendRecord {
                observer: alice.clone(),
                conversation: conversation(),
                client_seq: n,
                body: format!("{alice} #{n}"),
                outcome: SendOutcome::Acknowledged(n),
            });
        }
        history.deliveries.insert(alice, messages.clone());
        history.deliveries.insert(bob.clone(), messages);
        history.receipts.insert(
            bob,
            vec![
                (conversation(), UserId::new("alice").unwrap(), 1, 0),
                (conversation(), UserId::new("alice").unwrap(), 3, 2),
            ],
        );
        history
    }

    #[test]
    fn a_correct_history_passes_every_checker() {
        assert_eq!(check(&good(), true), vec![]);
    }

    #[test]
    fn planted_disagreement_is_caught() {
        let mut history = good();
        let bob = observer("bob", "laptop");
        history.deliveries.get_mut(&bob).unwrap()[1].body = "forged".into();
        assert!(check(&history, true).iter().any(|v| matches!(v, Violation::Disagreement { seq: 2, .. })));
    }

    #[test]
    fn planted_gap_and_duplicate_are_caught() {
        let mut history = good();
        let bob = observer("bob", "laptop");
        history.deliveries.get_mut(&bob).unwrap().remove(1);
        assert!(gaps_and_duplicates(&history)
            .iter()
            .any(|v| matches!(v, Violation::GapOrDuplicate { expected: 2, got: 3, .. })));
        let mut history = good();
        let seen = history.deliveries.get_mut(&bob).unwrap();
        let again = seen[0].clone();
        seen.insert(1, again);
        assert!(gaps_and_duplicates(&history)
            .iter()
            .any(|v| matches!(v, Violation::GapOrDuplicate { expected: 2, got: 1, .. })));
    }

    #[test]
    fn planted_double_append_is_caught() {
        // A skipped dedup: alice's client_seq 2 committed at seq 2 and again at seq 4.
        let mut history = good();
        let alice = observer("alice", "phone");
        for messages in history.deliveries.values_mut() {
            messages.push(message(4, &alice, 2));
        }
        let violations = check(&history, true);
        assert!(
            violations
                .iter()
                .any(|v| matches!(v, Violation::AppendedTwice { client_seq: 2, seqs, .. } if seqs == &vec![2, 4])),
            "{violations:?}"
        );
    }

    #[test]
    fn planted_lost_acknowledgement_is_caught() {
        // Ack before commit: send_ok said seq 4, which never came to exist.
        let mut history = good();
        history.sends.push(SendRecord {
            observer: observer("alice", "phone"),
            conversation: conversation(),
            client_seq: 4,
            body: "alice/phone #4".into(),
            outcome: SendOutcome::Acknowledged(4),
        });
        assert!(check(&history, false).iter().any(|v| matches!(v, Violation::AcknowledgedLost { seq: 4, .. })));
        // Unknown outcomes are never violations.
        let mut history = good();
        history.sends.push(SendRecord {
            observer: observer("alice", "phone"),
            conversation: conversation(),
            client_seq: 9,
            body: "x".into(),
            outcome: SendOutcome::Unknown,
        });
        assert_eq!(check(&history, true), vec![]);
    }

    #[test]
    fn planted_missing_delivery_is_caught_when_complete() {
        // A lost interest re-registration: bob never got seq 3.
        let mut history = good();
        history.deliveries.get_mut(&observer("bob", "laptop")).unwrap().pop();
        assert!(check(&history, false).is_empty(), "not complete yet is not a violation mid-run");
        assert!(check(&history, true).iter().any(|v| matches!(v, Violation::Incomplete { last_seq: 3, seen: 2, .. })));
    }

    #[test]
    fn planted_backwards_receipt_is_caught() {
        // A cursor moved backwards.
        let mut history = good();
        history.receipts.get_mut(&observer("bob", "laptop")).unwrap().push((
            conversation(),
            UserId::new("alice").unwrap(),
            3,
            1,
        ));
        assert!(check(&history, true)
            .iter()
            .any(|v| matches!(v, Violation::ReceiptBackwards { before: (3, 2), after: (3, 1), .. })));
    }

    #[test]
    fn planted_acknowledged_seq_nobody_saw_is_incomplete() {
        // A push lost for every device: send_ok said seq 4, but no device was handed it.
        let mut history = good();
        history.sends.push(SendRecord {
            observer: observer("alice", "phone"),
            conversation: conversation(),
            client_seq: 4,
            body: "alice/phone #4".into(),
            outcome: SendOutcome::Acknowledged(4),
        });
        assert!(!caught_up(&history));
        let violations = completeness(&history, &agreement(&history).0);
        assert!(violations.iter().any(|v| matches!(v, Violation::Incomplete { last_seq: 4, seen: 3, .. })));
    }

    #[test]
    fn planted_disagreeing_read_is_caught() {
        // A follower serving a different message at seq 2 in a history page.
        let mut history = good();
        let mut forged = history.deliveries[&observer("bob", "laptop")][1].clone();
        forged.body = "stale".into();
        history.reads.push(forged);
        assert!(check(&history, true).iter().any(|v| matches!(v, Violation::Disagreement { seq: 2, .. })));
        let mut history = good();
        let read = history.deliveries[&observer("bob", "laptop")][1].clone();
        history.reads.push(read);
        assert_eq!(check(&history, true), vec![]);
    }

    #[test]
    fn planted_unsettled_heal_is_caught() {
        let heal = |settled_ms| Some(HealPhase { started_ms: 10_000, bound_ms: 5_000, settled_ms });
        let mut history = good();
        history.heal = heal(Some(14_000));
        assert_eq!(check(&history, true), vec![], "settled 4 s after the faults stopped, within 5 s");
        // A send stuck forever (a lost resend after reconnect): never settles.
        let mut history = good();
        history.heal = heal(None);
        history.unfinished.push(SendRecord {
            observer: observer("alice", "phone"),
            conversation: conversation(),
            client_seq: 0,
            body: "stuck".into(),
            outcome: SendOutcome::Unknown,
        });
        assert_eq!(
            liveness(&history),
            vec![Violation::NotSettled { waited_ms: 5_000, bound_ms: 5_000, unfinished_sends: 1 }]
        );
        // Settled, but too late.
        let mut history = good();
        history.heal = heal(Some(16_000));
        assert!(check(&history, true).iter().any(|v| matches!(v, Violation::NotSettled { waited_ms: 6_000, .. })));
    }

    #[test]
    fn planted_stale_read_is_caught() {
        let alice = observer("alice", "phone");
        let mut history = good();
        // Seq 3 was acknowledged at 100 ms; reads invoked later must return it.
        history.committed_at.insert(conversation(), vec![(40, 1), (70, 2), (100, 3)]);
        let read = |invoked_ms, highest_seq| ReadView {
            observer: alice.clone(),
            conversation: conversation(),
            invoked_ms,
            highest_seq,
        };
        history.read_views = vec![read(100, Some(2)), read(101, Some(3)), read(50, Some(1)), read(30, None)];
        assert_eq!(check(&history, true), vec![], "reads that overlap a commit may miss it");
        // A lagging follower answers from before seq 3 (and an empty log) after it committed.
        history.read_views = vec![read(120, Some(2)), read(150, None)];
        assert_eq!(
            fresh_reads(&history),
            vec![
                Violation::StaleRead {
                    observer: alice.clone(),
                    conversation: conversation(),
                    invoked_ms: 120,
                    returned: 2,
                    committed: 3,
                    committed_ms: 100,
                },
                Violation::StaleRead {
                    observer: alice.clone(),
                    conversation: conversation(),
                    invoked_ms: 150,
                    returned: 0,
                    committed: 3,
                    committed_ms: 100,
                },
            ]
        );
    }

    #[test]
    fn a_device_that_started_from_a_cursor_is_judged_from_there() {
        let mut history = good();
        let carol = observer("carol", "tablet");
        let alice = observer("alice", "phone");
        history.starts.insert((carol.clone(), conversation()), 2);
        history.deliveries.insert(carol, vec![message(3, &alice, 3)]);
        assert_eq!(check(&history, true), vec![]);
    }
}
