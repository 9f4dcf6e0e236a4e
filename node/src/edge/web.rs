//! The browser edge (DESIGN §5): the same sessions as QUIC ([`crate::edge`]), carried as JSON
//! frames over WebSocket (`/v1/ws`), or over Server-Sent Events (`/v1/events`) and long-poll
//! (`/v1/poll`) with client frames posted to `/v1/send`; and the web client at `/` (ES modules
//! under `/web/`).
//!
//! Every request authenticates with a JWT in `Authorization: Bearer` or `?token=`; `hello`
//! then needs no token. WebSocket sessions live as long as the socket. SSE and long-poll
//! sessions outlive any one request: `POST /v1/sessions` opens one, its server frames queue in
//! an outbox numbered 1, 2, 3 …, and each `GET /v1/events` (`Last-Event-ID`) or `GET
//! /v1/poll?after=N` says what the client already has, so a dropped request loses nothing and
//! repeats nothing. The outbox is bounded ([`OUTBOX_FRAMES_MAX`]): frames the client was sent
//! are dropped first (a resume from before them is refused with 410, and the client starts a
//! new session with its cursors); when it is full of frames never sent, the session waits
//! (back-pressure), and a session nobody reads for [`HTTP_SESSION_IDLE`] ends.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use natter_proto::frame_error::FrameError;
use natter_proto::frames::{ClientFrame, ServerFrame};
use natter_proto::json::{decode_client, encode_server};
use natter_proto::limits::{FRAME_BYTES_MAX, SESSIONS_PER_USER_MAX};
use natter_proto::{ErrorCode, UserId};
use serde::{Deserialize, Serialize};
// `RawValue` needs serde_json's `raw_value` feature, which axum turns on.
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use natter_raft::types::Runtime;

use crate::edge::{ClientEdge, Inbound, Wire, WireClosed};
use crate::env::Clock;

/// The web client: plain ES modules (no bundler, no build step) embedded in the binary, each at
/// a stable path with its content type. `index.html` loads `app.js` as a module, which imports
/// the others by relative path.
const WEB_CLIENT_FILES: [(&str, &str, &str); 6] = [
    ("/", HTML, include_str!("../../web/index.html")),
    ("/web/style.css", CSS, include_str!("../../web/style.css")),
    ("/web/app.js", JAVASCRIPT, include_str!("../../web/app.js")),
    ("/web/state.js", JAVASCRIPT, include_str!("../../web/state.js")),
    ("/web/transport.js", JAVASCRIPT, include_str!("../../web/transport.js")),
    ("/web/render.js", JAVASCRIPT, include_str!("../../web/render.js")),
];
const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
/// The web client's Content-Security-Policy: its own scripts, styles and connections only
/// (`'self'` covers the same origin's `ws:`/`wss:`), no inline code, the favicon a `data:` URL,
/// and no framing.
pub const WEB_CLIENT_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// tungstenite's read buffer per WebSocket. Its default (128 KiB) would be most of an idle
/// connection's cost, and 4 KiB still made an idle WebSocket cost 10.9 KiB of node memory
/// (1 KiB: 7.85); frames larger than this still arrive, in more reads.
pub const WS_READ_BUFFER_BYTES: usize = 1024;
/// Bytes tungstenite may hold before writing them out; 0 writes every frame at once.
pub const WS_WRITE_BUFFER_BYTES: usize = 0;
/// Bytes a WebSocket may queue unsent before sends fail (a client that stopped reading).
pub const WS_WRITE_BUFFER_BYTES_MAX: usize = 4 * FRAME_BYTES_MAX;
/// Largest WebSocket message accepted at all. Messages over [`FRAME_BYTES_MAX`] up to this get
/// a `too_large` error and the session goes on; larger ones close the socket (code 1009).
pub const WS_MESSAGE_BYTES_MAX: usize = 2 * FRAME_BYTES_MAX;
/// WebSocket close codes are 4000 plus the edge's close code ([`crate::edge::close`]).
pub const WS_CLOSE_CODE_BASE: u16 = 4000;
/// Server frames an HTTP session holds for its client at most.
pub const OUTBOX_FRAMES_MAX: usize = 1024;
/// Client frames an HTTP session holds before `POST /v1/send` answers 429.
pub const INBOX_FRAMES_MAX: usize = 64;
/// How long an HTTP session lives with no SSE stream or poll attached.
pub const HTTP_SESSION_IDLE: Duration = Duration::from_secs(60);
/// HTTP sessions one user may hold open at once (sessions past `hello` count against the
/// user's [`SESSIONS_PER_USER_MAX`] too).
pub const HTTP_SESSIONS_PER_USER_MAX: usize = 2 * SESSIONS_PER_USER_MAX;
/// HTTP sessions one node holds at most.
pub const HTTP_SESSIONS_MAX: usize = 100_000;
/// Longest a long-poll is held waiting for frames.
pub const POLL_HOLD_MAX: Duration = Duration::from_secs(25);
/// Most frames one long-poll response carries.
pub const POLL_FRAMES_MAX: usize = 256;
/// How often an HTTP session with nothing to do checks whether it has expired.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long `POST /v1/send` tells a client to wait when the session's inbox is full.
const INBOX_RETRY_AFTER_MS: u64 = 100;

/// Shared state of the browser routes.
pub struct Web {
    edge: Arc<ClientEdge>,
    sessions: Mutex<BTreeMap<String, Arc<HttpSession>>>,
    /// Becomes true when the node stops: every browser session ends.
    stopping: watch::Sender<bool>,
}

impl Web {
    /// Browser routes serving `edge`'s sessions.
    pub fn new(edge: Arc<ClientEdge>) -> Arc<Self> {
        Arc::new(Self { edge, sessions: Mutex::new(BTreeMap::new()), stopping: watch::Sender::new(false) })
    }

    /// Ends every browser session (the node is stopping), so open streams and sockets close
    /// and the HTTP server can finish.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
        let sessions: Vec<Arc<HttpSession>> = self.sessions.lock().expect("sessions lock").values().cloned().collect();
        for session in sessions {
            session.end();
        }
    }

    /// A seed for a session's task. axum runs handlers and upgraded connections on tasks of
    /// its own, outside openraft's seeded runtime; a session (which spawns through
    /// [`crate::spawn`]) runs inside a scope seeded from the edge's RNG.
    fn task_seed(&self) -> u64 {
        u64::from_le_bytes(self.edge.random_bytes::<8>())
    }

    fn session(&self, id: &str, user: &UserId) -> Option<Arc<HttpSession>> {
        // Someone else's session id is answered exactly like an unknown one.
        self.sessions.lock().expect("sessions lock").get(id).filter(|session| &session.user == user).cloned()
    }
}

/// The browser routes: the web client (`/` and its files under `/web/`), `/v1/ws`, `/v1/sessions`,
/// `/v1/send`, `/v1/events`, `/v1/poll`.
pub fn router(web: Arc<Web>) -> Router {
    let mut router = Router::new();
    for (path, content_type, body) in WEB_CLIENT_FILES {
        router = router.route(path, get(move || async move { web_client_file(content_type, body) }));
    }
    router
        .route("/v1/ws", get(websocket))
        .route("/v1/sessions", post(open_session))
        .route("/v1/send", post(send))
        .route("/v1/events", get(events))
        .route("/v1/poll", get(poll))
        .with_state(web)
}

/// One of the web client's files. Browsers fetch it again on every load (`no-cache`, and no
/// validator to answer 304 with), so a page never mixes modules of two node versions.
fn web_client_file(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, WEB_CLIENT_CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

/// The query every browser route accepts.
#[derive(Debug, Default, Deserialize)]
struct Params {
    token: Option<String>,
    session: Option<String>,
    after: Option<u64>,
    wait_ms: Option<u64>,
}

/// The answer to `POST /v1/sessions`: `{"session": ID}`.
#[derive(Debug, Serialize)]
struct SessionOpened {
    /// The new session's id, 32 hex characters.
    session: String,
}

/// The answer to `POST /v1/send`: `{"accepted": true}`; the frame's own answer comes with the
/// server frames.
#[derive(Debug, Serialize)]
struct Accepted {
    accepted: bool,
}

/// The answer to `GET /v1/poll`: `{"next": M, "frames": [...]}`.
#[derive(Debug, Serialize)]
struct PollAnswer {
    /// The last frame's number, or the request's `after` when there is no frame.
    next: u64,
    /// The frames, each the JSON it was encoded as when it entered the outbox.
    frames: Vec<Box<RawValue>>,
}

/// An `error` frame as an HTTP response: the protocol's typed error, as JSON.
fn error_response(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let frame = ServerFrame::Error {
        request_id: None,
        conversation: None,
        client_seq: None,
        code,
        message: message.into(),
        retry_after_ms: None,
    };
    (status, [(header::CONTENT_TYPE, "application/json")], encode_server(&frame)).into_response()
}

/// Why a browser request's token was refused. Every variant is answered with HTTP 401 and an
/// `error` whose code is `unauthenticated`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RequestAuthError {
    /// Neither `Authorization: Bearer` nor `?token=` carried a token.
    #[error("no token presented")]
    Missing,
    /// The edge refused the token (malformed, forged, expired, or naming no valid user).
    #[error(transparent)]
    Refused(#[from] crate::edge::auth::AuthError),
}

impl IntoResponse for RequestAuthError {
    fn into_response(self) -> Response {
        error_response(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, self.to_string())
    }
}

/// The request's user: its token from `Authorization: Bearer` or `?token=`, verified.
fn authenticate(web: &Web, headers: &HeaderMap, params: &Params) -> Result<UserId, RequestAuthError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let token = bearer.or(params.token.as_deref()).unwrap_or("");
    if token.is_empty() {
        return Err(RequestAuthError::Missing);
    }
    Ok(web.edge.authenticate(token)?)
}

fn session_gone() -> Response {
    error_response(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such session: open a new one and say hello again")
}

async fn websocket(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(params): Query<Params>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let user = match authenticate(&web, &headers, &params) {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    let stopping = web.stopping.subscribe();
    upgrade
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WS_WRITE_BUFFER_BYTES_MAX)
        .max_message_size(WS_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| {
            let seed = web.task_seed();
            Runtime::scope(seed, web.edge.clone().serve(WsWire { socket, stopping }, Some(user)))
        })
}

/// A WebSocket session: one JSON frame per text message.
struct WsWire {
    socket: WebSocket,
    stopping: watch::Receiver<bool>,
}

impl Wire for WsWire {
    async fn receive(&mut self) -> Inbound {
        loop {
            // Both are cancel-safe: the socket keeps partial messages in its own state.
            let message = tokio::select! {
                biased;
                _ = self.stopping.wait_for(|stopping| *stopping) => return Inbound::Gone,
                message = self.socket.recv() => message,
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Binary(_))) => {
                    let error = FrameError::bad_frame("binary websocket messages are not frames; send json text");
                    return Inbound::Frames(vec![Err(error)]);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Inbound::Gone,
            };
            return Inbound::Frames(vec![decode_client(text.as_str())]);
        }
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), WireClosed> {
        self.socket.send(Message::Text(encode_server(frame).into())).await.map_err(|_| WireClosed)
    }

    async fn close(&mut self, code: u32, reason: &'static str) {
        let code = WS_CLOSE_CODE_BASE + u16::try_from(code).unwrap_or(999);
        let _ = self.socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    }
}

/// An HTTP session's server frames: numbered, kept until the client says it has them.
#[derive(Debug, Default)]
struct Outbox {
    /// (id, frame JSON, sent to the client at least once), ids ascending.
    frames: VecDeque<(u64, Box<RawValue>, bool)>,
    /// The id the next frame gets (ids start at 1).
    next_id: u64,
    /// Frames up to here were dropped after being sent; resuming from before them fails.
    dropped_through: u64,
    /// SSE streams and polls reading now.
    readers: usize,
    /// When the last reader left (or the session opened); `None` while someone reads.
    idle_since: Option<Instant>,
    /// No more frames will come.
    ended: bool,
}

impl Outbox {
    /// The client has every frame up to `through`: drop them.
    fn acknowledge(&mut self, through: u64) {
        while self.frames.front().is_some_and(|(id, _, _)| *id <= through) {
            self.frames.pop_front();
        }
    }

    /// Frames after `after`, at most `max`, now marked sent.
    fn take_after(&mut self, after: u64, max: usize) -> Vec<(u64, Box<RawValue>)> {
        self.frames
            .iter_mut()
            .filter(|(id, _, _)| *id > after)
            .take(max)
            .map(|(id, json, sent)| {
                *sent = true;
                (*id, json.clone())
            })
            .collect()
    }
}

/// One SSE/long-poll session: the client's frames on their way in, the server's on their way out.
struct HttpSession {
    user: UserId,
    clock: Arc<dyn Clock>,
    inbox: mpsc::Sender<Result<ClientFrame, FrameError>>,
    outbox: Mutex<Outbox>,
    /// Notified when frames are added, acknowledged, or the session ends.
    changed: Notify,
}

impl HttpSession {
    fn end(&self) {
        self.outbox.lock().expect("outbox lock").ended = true;
        self.changed.notify_waiters();
    }

    fn expired(&self) -> bool {
        let now = self.clock.now();
        let outbox = self.outbox.lock().expect("outbox lock");
        outbox.ended || outbox.idle_since.is_some_and(|since| now.duration_since(since) >= HTTP_SESSION_IDLE)
    }

    /// Counts a reader in; the returned guard counts it out.
    fn attach(self: &Arc<Self>) -> Reader {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        outbox.readers += 1;
        outbox.idle_since = None;
        Reader(self.clone())
    }

    /// Acknowledges frames through `after`; false when the client missed frames already
    /// dropped, so this session cannot give it what follows `after`.
    fn resume_from(&self, after: u64) -> bool {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        if after < outbox.dropped_through {
            return false;
        }
        outbox.acknowledge(after);
        drop(outbox);
        self.changed.notify_waiters();
        true
    }

    /// Waits until frames after `after` exist or the session ended.
    async fn wait_after(&self, after: u64) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let outbox = self.outbox.lock().expect("outbox lock");
                if outbox.ended || outbox.frames.back().is_some_and(|(id, _, _)| *id > after) {
                    return;
                }
            }
            changed.await;
        }
    }
}

/// A reader of an HTTP session (an SSE stream or a poll), counted while it lives.
struct Reader(Arc<HttpSession>);

impl Drop for Reader {
    fn drop(&mut self) {
        let mut outbox = self.0.outbox.lock().expect("outbox lock");
        outbox.readers -= 1;
        if outbox.readers == 0 {
            outbox.idle_since = Some(self.0.clock.now());
        }
    }
}

/// The session side of an HTTP session.
struct HttpWire {
    session: Arc<HttpSession>,
    inbox: mpsc::Receiver<Result<ClientFrame, FrameError>>,
}

impl Wire for HttpWire {
    async fn receive(&mut self) -> Inbound {
        loop {
            tokio::select! {
                biased;
                frame = self.inbox.recv() => return match frame {
                    Some(frame) => Inbound::Frames(vec![frame]),
                    None => Inbound::Gone,
                },
                () = tokio::time::sleep(IDLE_CHECK) => {
                    if self.session.expired() {
                        return Inbound::Gone;
                    }
                }
            }
        }
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), WireClosed> {
        let json = RawValue::from_string(encode_server(frame)).expect("encode_server writes json");
        loop {
            let changed = self.session.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut outbox = self.session.outbox.lock().expect("outbox lock");
                if outbox.ended {
                    return Err(WireClosed);
                }
                // Frames the client was sent make room first; frames it was never sent are
                // never dropped: the session waits for the client instead.
                while outbox.frames.len() >= OUTBOX_FRAMES_MAX && outbox.frames.front().is_some_and(|f| f.2) {
                    let (id, _, _) = outbox.frames.pop_front().expect("checked");
                    outbox.dropped_through = id;
                }
                // Room left means room among the unsent too (they are some of the frames).
                if outbox.frames.len() < OUTBOX_FRAMES_MAX {
                    outbox.next_id += 1;
                    let id = outbox.next_id;
                    outbox.frames.push_back((id, json, false));
                    drop(outbox);
                    self.session.changed.notify_waiters();
                    return Ok(());
                }
            }
            tokio::select! {
                biased;
                () = &mut changed => {}
                () = tokio::time::sleep(IDLE_CHECK) => {
                    if self.session.expired() {
                        return Err(WireClosed);
                    }
                }
            }
        }
    }

    async fn close(&mut self, _code: u32, _reason: &'static str) {
        // The error frame saying why is in the outbox; readers get it, then the end.
        self.session.end();
    }
}

async fn open_session(State(web): State<Arc<Web>>, headers: HeaderMap, Query(params): Query<Params>) -> Response {
    let user = match authenticate(&web, &headers, &params) {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    let id: String = web.edge.random_bytes::<16>().iter().map(|byte| format!("{byte:02x}")).collect();
    let (inbox, inbox_receiver) = mpsc::channel(INBOX_FRAMES_MAX);
    let clock = web.edge.clock().clone();
    let outbox = Outbox { idle_since: Some(clock.now()), ..Outbox::default() };
    let session =
        Arc::new(HttpSession { user: user.clone(), clock, inbox, outbox: Mutex::new(outbox), changed: Notify::new() });
    {
        let mut sessions = web.sessions.lock().expect("sessions lock");
        if sessions.len() >= HTTP_SESSIONS_MAX {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "this node holds too many sessions",
            );
        }
        if sessions.values().filter(|session| session.user == user).count() >= HTTP_SESSIONS_PER_USER_MAX {
            let message = format!("{user} already has {HTTP_SESSIONS_PER_USER_MAX} http sessions");
            return error_response(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, message);
        }
        sessions.insert(id.clone(), session.clone());
    }
    let wire = HttpWire { session, inbox: inbox_receiver };
    let (task_web, task_id) = (web.clone(), id.clone());
    tokio::spawn(Runtime::scope(web.task_seed(), async move {
        task_web.edge.clone().serve(wire, Some(user)).await;
        if let Some(session) = task_web.sessions.lock().expect("sessions lock").remove(&task_id) {
            session.end();
        }
    }));
    (StatusCode::OK, Json(SessionOpened { session: id })).into_response()
}

async fn send(State(web): State<Arc<Web>>, headers: HeaderMap, Query(params): Query<Params>, body: Bytes) -> Response {
    let user = match authenticate(&web, &headers, &params) {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    let Some(session) = params.session.as_deref().and_then(|id| web.session(id, &user)) else {
        return session_gone();
    };
    // Whatever the body is, the session answers it: a frame, or a typed error on the stream.
    let frame = match std::str::from_utf8(&body) {
        Ok(text) => decode_client(text),
        Err(_) => Err(FrameError::bad_frame("the body is not utf-8 json")),
    };
    match session.inbox.try_send(frame) {
        Ok(()) => (StatusCode::ACCEPTED, Json(Accepted { accepted: true })).into_response(),
        Err(mpsc::error::TrySendError::Full(_)) => {
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("{INBOX_FRAMES_MAX} frames are waiting; retry after {INBOX_RETRY_AFTER_MS} ms"),
            );
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        }
        Err(mpsc::error::TrySendError::Closed(_)) => session_gone(),
    }
}

fn resume_refused() -> Response {
    error_response(
        StatusCode::GONE,
        ErrorCode::NotFound,
        "frames after that event were dropped: open a new session and resume from your cursors",
    )
}

async fn events(State(web): State<Arc<Web>>, headers: HeaderMap, Query(params): Query<Params>) -> Response {
    let user = match authenticate(&web, &headers, &params) {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    let Some(session) = params.session.as_deref().and_then(|id| web.session(id, &user)) else {
        return session_gone();
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let after = last_event_id.or(params.after).unwrap_or(0);
    if !session.resume_from(after) {
        return resume_refused();
    }
    let reader = session.attach();
    let stream = futures::stream::unfold(
        (reader, after, Vec::<(u64, Box<RawValue>)>::new()),
        |(reader, mut after, mut ready)| async move {
            loop {
                if !ready.is_empty() {
                    let (id, json) = ready.remove(0);
                    after = id;
                    let event = Event::default().id(id.to_string()).data(json.get());
                    return Some((Ok::<_, Infallible>(event), (reader, after, ready)));
                }
                reader.0.wait_after(after).await;
                let mut outbox = reader.0.outbox.lock().expect("outbox lock");
                ready = outbox.take_after(after, POLL_FRAMES_MAX);
                if ready.is_empty() && outbox.ended {
                    return None;
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

async fn poll(State(web): State<Arc<Web>>, headers: HeaderMap, Query(params): Query<Params>) -> Response {
    let user = match authenticate(&web, &headers, &params) {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    let Some(session) = params.session.as_deref().and_then(|id| web.session(id, &user)) else {
        return session_gone();
    };
    let after = params.after.unwrap_or(0);
    if !session.resume_from(after) {
        return resume_refused();
    }
    let reader = session.attach();
    let hold = params.wait_ms.map_or(POLL_HOLD_MAX, Duration::from_millis).min(POLL_HOLD_MAX);
    let _ = tokio::time::timeout(hold, reader.0.wait_after(after)).await;
    let (frames, ended) = {
        let mut outbox = reader.0.outbox.lock().expect("outbox lock");
        (outbox.take_after(after, POLL_FRAMES_MAX), outbox.ended)
    };
    if frames.is_empty() && ended {
        return session_gone();
    }
    let next = frames.last().map_or(after, |(id, _)| *id);
    let frames = frames.into_iter().map(|(_, json)| json).collect();
    (StatusCode::OK, Json(PollAnswer { next, frames })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn answers_keep_their_wire_shape() {
        let frames = vec![raw(r#"{"type":"pong","nonce":7}"#), raw(r#"{"type":"pong","nonce":8}"#)];
        let answer = serde_json::to_string(&PollAnswer { next: 9, frames }).unwrap();
        // Frames go out as they were encoded, fields in declaration order.
        assert_eq!(answer, r#"{"next":9,"frames":[{"type":"pong","nonce":7},{"type":"pong","nonce":8}]}"#);
        let empty = serde_json::to_string(&PollAnswer { next: 4, frames: Vec::new() }).unwrap();
        assert_eq!(empty, r#"{"next":4,"frames":[]}"#);
        let opened = serde_json::to_string(&SessionOpened { session: "3f9c".into() }).unwrap();
        assert_eq!(opened, r#"{"session":"3f9c"}"#);
        assert_eq!(serde_json::to_string(&Accepted { accepted: true }).unwrap(), r#"{"accepted":true}"#);
    }

    #[test]
    fn a_refused_token_is_a_401_unauthenticated_error() {
        assert_eq!(RequestAuthError::Missing.to_string(), "no token presented");
        let refused = RequestAuthError::from(crate::edge::auth::AuthError::TooLong(9000));
        assert_eq!(refused.to_string(), crate::edge::auth::AuthError::TooLong(9000).to_string());
        assert_eq!(refused.into_response().status(), StatusCode::UNAUTHORIZED);
    }
}
