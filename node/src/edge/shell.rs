//! The async shell around a [`Session`]: reads the wire and the session's push queue, carries
//! out its requests and effects on the node, writes its frames, keeps its timer. Everything
//! the session decides is in [`super::session`]; this file only moves things between it and
//! the world.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use natter_proto::UserId;
use natter_raft::command::{Command, Response};
use natter_raft::query::QueryResult;
use tokio::sync::mpsc;

use super::session::{Effect, Request, RequestId, Session, SessionConfig, Time};
use super::{ClientEdge, Inbound, Wire};
use crate::delivery::Push;
use crate::edge::sends::Batch;
use crate::shards::ClusterError;

/// The answer to a request that took a round trip through the cluster.
enum Answer {
    Read(RequestId, Result<QueryResult, ClusterError>),
    Proposed(RequestId, Result<Response, ClusterError>),
}

type Proposal = BoxFuture<'static, (Batch, Result<Response, ClusterError>)>;

/// One session's I/O.
struct Shell<W> {
    edge: Arc<ClientEdge>,
    wire: W,
    /// The user a browser transport authenticated before the session began, if it did.
    authenticated: Option<UserId>,
    /// The session's delivery registration and its pushes, once admitted.
    subscription: Option<(u64, mpsc::Receiver<Arc<Push>>)>,
    answers: FuturesUnordered<BoxFuture<'static, Answer>>,
    proposals: FuturesUnordered<Proposal>,
}

/// Serves one session over `wire` until it ends, then tells the node it ended.
pub(super) async fn serve<W: Wire>(edge: Arc<ClientEdge>, wire: W, authenticated: Option<UserId>) {
    let config = SessionConfig { shards: edge.cluster.config().shards };
    let ids = edge.clone();
    let mut session = Session::new(config, edge.clock.now(), Box::new(move || ids.conversation_id()));
    let mut shell = Shell {
        edge,
        wire,
        authenticated,
        subscription: None,
        answers: FuturesUnordered::new(),
        proposals: FuturesUnordered::new(),
    };
    shell.run(&mut session).await;
    let Shell { edge, subscription, proposals, .. } = shell;
    if !proposals.is_empty() {
        // Batches being proposed run to the end: one that commits is then pushed to the other
        // members at once (a dropped proposal would leave that to their next refresh). Their
        // answers have no one to go to; the client resends what it did not hear back about,
        // and dedup answers the resend.
        let mut proposals = proposals;
        crate::spawn(async move { while proposals.next().await.is_some() {} });
    }
    if let Some((id, _)) = subscription {
        edge.cluster.deliveries().close(id);
        edge.cluster.presence_close(id);
    }
    for effect in session.handle_end() {
        if let Effect::Relay { shard, push } = effect {
            edge.cluster.relay(shard, push);
        }
    }
    if let Some((user, _)) = session.identity() {
        edge.release(user);
    }
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The next item of `futures`, or never while it is empty.
async fn next_of<T>(futures: &mut FuturesUnordered<BoxFuture<'static, T>>) -> T {
    match futures.next().await {
        Some(item) => item,
        None => std::future::pending().await,
    }
}

/// The next push, or never before the session is admitted; `None` when delivery dropped it.
async fn next_push(subscription: &mut Option<(u64, mpsc::Receiver<Arc<Push>>)>) -> Option<Arc<Push>> {
    match subscription {
        Some((_, pushes)) => pushes.recv().await,
        None => std::future::pending().await,
    }
}

impl<W: Wire> Shell<W> {
    fn time(&self) -> Time {
        Time { now: self.edge.clock.now(), wall_ms: self.edge.clock.wall_ms() }
    }

    fn subscription_id(&self) -> Option<u64> {
        self.subscription.as_ref().map(|(id, _)| *id)
    }

    async fn run(&mut self, session: &mut Session) {
        loop {
            self.carry_out(session);
            while let Some(frame) = session.poll_transmit() {
                if self.wire.send(&frame).await.is_err() {
                    return;
                }
            }
            if let Some(close) = session.poll_close() {
                self.wire.close(close.code, close.reason).await;
                return;
            }
            let wants_input = session.wants_input();
            tokio::select! {
                biased;
                () = sleep_until_some(session.poll_timeout()) => session.handle_timeout(self.time()),
                answer = next_of(&mut self.answers) => {
                    let time = self.time();
                    match answer {
                        Answer::Read(id, result) => session.handle_read(id, result, time),
                        Answer::Proposed(id, result) => session.handle_proposed(id, result, time),
                    }
                }
                push = next_push(&mut self.subscription), if wants_input => match push {
                    Some(push) => session.handle_push(Arc::unwrap_or_clone(push), self.time()),
                    None => return,
                },
                (batch, result) = next_of(&mut self.proposals) => session.handle_batch_done(batch, result, self.time()),
                inbound = self.wire.receive(), if wants_input => match inbound {
                    Inbound::Frames(frames) => session.handle_frames(frames, self.time()),
                    Inbound::Gone => return,
                },
            }
        }
    }

    /// Carries out the session's effects and requests until it has none left (an answer the
    /// node has at once goes straight back in, and may bring more).
    fn carry_out(&mut self, session: &mut Session) {
        loop {
            while let Some(effect) = session.poll_effect() {
                self.apply(effect);
            }
            let Some((id, request)) = session.poll_request() else { return };
            self.execute(session, id, request);
        }
    }

    fn apply(&mut self, effect: Effect) {
        let cluster = &self.edge.cluster;
        match effect {
            Effect::Relay { shard, push } => cluster.relay(shard, push),
            Effect::ProposeBatch { shard, batch, command } => {
                let cluster = cluster.clone();
                self.proposals.push(Box::pin(async move { (batch, cluster.propose(shard, command).await) }));
            }
            effect => {
                let Some(id) = self.subscription_id() else {
                    return tracing::error!(?effect, "a session effect before admission");
                };
                match effect {
                    Effect::Subscribe(topic) => cluster.deliveries().subscribe(id, topic),
                    Effect::ResendPresence(user) => cluster.deliveries().resend_presence(id, &user),
                    Effect::PresenceOpen(user) => cluster.presence_open(id, user),
                    Effect::PresenceActivity { status, custom } => cluster.presence_activity(id, status, custom),
                    Effect::PresenceFrame => cluster.presence_frame(id),
                    Effect::Relay { .. } | Effect::ProposeBatch { .. } => {
                        tracing::error!("relays and batches need no subscription")
                    }
                }
            }
        }
    }

    fn execute(&mut self, session: &mut Session, id: RequestId, request: Request) {
        let cluster = self.edge.cluster.clone();
        match request {
            Request::Admit { token } => {
                let admission = self.edge.admit(self.authenticated.as_ref(), token.as_deref());
                if admission.is_ok() {
                    let subscription = cluster.deliveries().open();
                    self.subscription = Some((subscription.id, subscription.pushes));
                }
                session.handle_admitted(id, admission, self.time());
            }
            Request::Read { shard, query } => {
                self.answers.push(Box::pin(async move { Answer::Read(id, cluster.read(shard, query).await) }));
            }
            Request::Propose { shard, command } => {
                self.answers.push(Box::pin(async move { Answer::Proposed(id, cluster.propose(shard, command).await) }));
            }
            Request::MoveCursor { shard, step, batched } => {
                if batched && cluster.submit_cursor_move(shard, step.clone()) {
                    return session.handle_cursor_queued(id, self.time());
                }
                let natter_raft::command::CursorMove { conversation, user, device, delivered, read } = step;
                let command = Command::MoveCursor { conversation, user, device, delivered, read };
                self.answers.push(Box::pin(async move { Answer::Proposed(id, cluster.propose(shard, command).await) }));
            }
            Request::PeekLastSeq { shard, conversation } => {
                let local = cluster.store().read_shard(shard, |reader, txn| reader.conversation(txn, &conversation));
                let last_seq = local.ok().flatten().map(|view| view.last_seq);
                session.handle_last_seq(id, last_seq, self.time());
            }
        }
    }
}
