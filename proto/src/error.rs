//! Stable wire error codes (DESIGN §5).

use serde::{Deserialize, Serialize};

/// A stable snake_case error code carried by the `error` server frame. Codes never change
/// meaning; new codes may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No valid token, or the token expired.
    Unauthenticated,
    /// The user is not a member of the conversation.
    NotMember,
    /// The frame could not be decoded.
    BadFrame,
    /// A frame, body or list is over its limit.
    TooLarge,
    /// Too many requests, sessions or outstanding sends.
    RateLimited,
    /// A `client_seq` older than the dedup window that was never seen.
    StaleClientSeq,
    /// The cluster could not serve the request in time; retrying later is safe.
    Unavailable,
    /// The conversation (or other named thing) does not exist.
    NotFound,
    /// A field has the wrong shape (an id, a member count, a seq).
    InvalidArgument,
    /// The request needs a `hello` first.
    HelloRequired,
    /// Something went wrong inside the server; the request may be retried.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order (for tests and documentation).
    pub const ALL: [ErrorCode; 11] = [
        Self::Unauthenticated,
        Self::NotMember,
        Self::BadFrame,
        Self::TooLarge,
        Self::RateLimited,
        Self::StaleClientSeq,
        Self::Unavailable,
        Self::NotFound,
        Self::InvalidArgument,
        Self::HelloRequired,
        Self::Internal,
    ];

    /// The code as its wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::NotMember => "not_member",
            Self::BadFrame => "bad_frame",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::StaleClientSeq => "stale_client_seq",
            Self::Unavailable => "unavailable",
            Self::NotFound => "not_found",
            Self::InvalidArgument => "invalid_argument",
            Self::HelloRequired => "hello_required",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_codes_are_distinct_and_serialise_as_their_string() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(seen.len(), ErrorCode::ALL.len());
    }
}
