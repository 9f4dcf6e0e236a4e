//! The client edge: sessions, whatever carries them. A session runs the same way over QUIC
//! ([`quic`]: ALPN `natter/1`, one bidirectional stream, frames from `natter_proto::codec`, a
//! JWT in `hello`) and over the browser transports of [`crate::web`] (WebSocket, SSE and
//! long-poll, JSON frames, the JWT checked on the HTTP request); a [`Wire`] is the difference.
//!
//! The protocol lives in [`session::Session`], a state machine without I/O; [`shell`] drives
//! it over a wire and the node. A session authenticates (`hello` → `welcome` with the user's
//! conversations, then everything after each `resume` cursor), then gets every new message of
//! the conversations it follows pushed as `message` frames, each seq once and in order. It can
//! `create_conversation`, `send` → `send_ok` after commit, move `ack`/`read` cursors, page
//! `history`, signal `typing` and `presence`, store `settings`, `ping`.
//!
//! Bad input never ends a session for anyone else: a bad frame gets an `error` and the session
//! continues; a peer that sends [`session::BAD_FRAMES_MAX`] bad frames in a row, fails to
//! authenticate, or never says `hello` is closed.

pub mod auth;
pub mod quic;
pub mod rate;
pub mod sends;
pub mod session;
mod shell;
pub mod web;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use natter_proto::frame_error::FrameError;
use natter_proto::frames::{ClientFrame, ServerFrame};
use natter_proto::limits::SESSIONS_PER_USER_MAX;
use natter_proto::{ConversationId, UserId};
use rand::rngs::StdRng;
use rand::RngCore;

use crate::edge::auth::{AuthError, TokenKey};
use crate::env::Clock;
use crate::shards::Cluster;
use rate::{Action, Limiters};

pub use session::close;
use session::{Admission, AdmitError, RateGate};

/// What a session read from its client.
pub enum Inbound {
    /// Frames, in the order sent, each decoded or the error that made it unreadable.
    Frames(Vec<Result<ClientFrame, FrameError>>),
    /// The client is gone (it finished, the connection dropped, or the transport expired it).
    Gone,
}

/// The client is gone: a frame could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client is gone")]
pub struct WireClosed;

/// How a session talks to its client: the one thing QUIC, WebSocket and the HTTP transports do
/// differently. A session reads and writes frames; the wire encodes, decodes and carries them.
pub trait Wire: Send + 'static {
    /// The next frames the client sent. Must be cancel-safe: the session waits for it beside
    /// pushes and drops it when a push comes first.
    fn receive(&mut self) -> impl Future<Output = Inbound> + Send;
    /// Sends `frame`; an error when the client is gone.
    fn send(&mut self, frame: &ServerFrame) -> impl Future<Output = Result<(), WireClosed>> + Send;
    /// Ends the session with `code` (one of [`close`]) and `reason`, after the frames already
    /// sent have had a chance to arrive.
    fn close(&mut self, code: u32, reason: &'static str) -> impl Future<Output = ()> + Send;
}

/// The client edge of one node: what its sessions share.
pub struct ClientEdge {
    cluster: Arc<Cluster>,
    tokens: TokenKey,
    clock: Arc<dyn Clock>,
    ids: Mutex<StdRng>,
    /// Per user with sessions on this node: how many, and the user's rate limiters.
    sessions: Mutex<BTreeMap<UserId, (usize, Arc<Limiters>)>>,
}

/// A session's rate limits: its connection's and its user's.
struct SessionLimits {
    connection: Limiters,
    user: Arc<Limiters>,
}

impl RateGate for SessionLimits {
    fn check(&self, action: Action) -> Result<(), std::time::Duration> {
        rate::check_both(&self.connection, &self.user, action)
    }
}

impl ClientEdge {
    /// An edge serving `cluster`'s clients, checking tokens with `tokens`.
    pub fn new(cluster: Arc<Cluster>, tokens: TokenKey, clock: Arc<dyn Clock>, ids: StdRng) -> Arc<Self> {
        Arc::new(Self { cluster, tokens, clock, ids: Mutex::new(ids), sessions: Mutex::new(BTreeMap::new()) })
    }

    /// Checks a token presented outside `hello` (on an HTTP request): its user, or why not.
    pub fn authenticate(&self, token: &str) -> Result<UserId, AuthError> {
        self.tokens.verify(token, self.clock.wall_ms() / 1000)
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

    fn conversation_id(&self) -> ConversationId {
        ConversationId::from_bytes(self.random_bytes())
    }

    /// Admits a session's `hello`: checks its token (a browser transport already checked the
    /// HTTP request's, naming `authenticated`; a token in `hello` must then agree), counts the
    /// session against [`SESSIONS_PER_USER_MAX`] and hands out its rate limits.
    fn admit(&self, authenticated: Option<&UserId>, token: Option<&str>) -> Result<Admission, AdmitError> {
        let unauthenticated = |error: AuthError| AdmitError::Unauthenticated(error.to_string());
        let user = match (authenticated, token) {
            (Some(user), None) => user.clone(),
            (Some(user), Some(token)) => {
                let same = self.authenticate(token).map_err(unauthenticated)?;
                if &same != user {
                    let message = format!("the hello's token is for {same}, the request's for {user}");
                    return Err(AdmitError::Unauthenticated(message));
                }
                same
            }
            (None, token) => self.authenticate(token.unwrap_or("")).map_err(unauthenticated)?,
        };
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let (count, user_limits) = sessions.entry(user.clone()).or_insert_with(|| {
            (0, Arc::new(Limiters::per_user(&self.cluster.config().rate_limits, self.clock.clone())))
        });
        if *count >= SESSIONS_PER_USER_MAX {
            return Err(AdmitError::TooManySessions { user, max: SESSIONS_PER_USER_MAX });
        }
        *count += 1;
        let connection = Limiters::per_connection(&self.cluster.config().rate_limits, self.clock.clone());
        Ok(Admission { user, gate: Box::new(SessionLimits { connection, user: user_limits.clone() }) })
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

    /// Serves one session over `wire` until it ends. `authenticated` is the user a transport
    /// already authenticated (from the HTTP request's token); `hello` then needs no token.
    pub async fn serve<W: Wire>(self: Arc<Self>, wire: W, authenticated: Option<UserId>) {
        shell::serve(self, wire, authenticated).await
    }
}
