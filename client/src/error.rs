//! [`ClientError`]: every way a client operation can fail.

use std::path::PathBuf;
use std::time::Duration;

use natter_proto::{ErrorCode, FrameError};

/// Why a [`Client`](crate::Client) operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot work: no servers, a CA file without a certificate, a server
    /// name rustls refuses.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The server refused the token (missing, forged or expired). Reconnecting with the same
    /// token cannot help, so the client stops.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The server answered the request with a typed `error`.
    #[error("server refused the request ({code}): {message}")]
    Server {
        /// The stable wire code.
        code: ErrorCode,
        /// The server's detail.
        message: String,
    },
    /// No server could be reached (each one's failure is listed).
    #[error("no server reachable: {0}")]
    Unavailable(String),
    /// The client was closed, or its connection task gave up reconnecting.
    #[error("client is closed")]
    Closed,
    /// No answer came in time. For a send the outcome is unknown: it stays queued and is
    /// resent (with the same `client_seq`, so at most once) until the server acknowledges it.
    #[error("no answer within {} ms; the outcome is unknown", .0.as_millis())]
    Timeout(Duration),
    /// The connection dropped before a `create_conversation` was answered; the conversation
    /// may or may not exist. (Sends and history requests are resent instead.)
    #[error("the connection dropped before the answer; the request may or may not have taken effect")]
    Interrupted,
    /// The request is malformed or over a protocol limit; nothing was sent.
    #[error("invalid request: {0}")]
    Invalid(#[from] FrameError),
    /// More requests are waiting for answers than the client allows.
    #[error("{0} requests are already waiting for answers")]
    TooManyRequests(usize),
    /// Reading or writing the cursor store failed.
    #[error("cursor store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The cursor store holds something that is not a cursor file.
    #[error("cursor store {path}: {reason}")]
    Store {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl ClientError {
    /// The wire code of a server refusal, if this is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            Self::Unauthenticated(_) => Some(ErrorCode::Unauthenticated),
            _ => None,
        }
    }
}
