//! The error every codec and validation step in this crate returns.

use crate::error::ErrorCode;
use crate::limits::ERROR_MESSAGE_BYTES_MAX;

/// Why a frame could not be encoded, decoded or accepted. Every variant maps to a stable wire
/// [`ErrorCode`] through [`FrameError::code`], so a session can answer bad input with an
/// `error` frame and live on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes or text were not a well-formed frame: unknown type, missing or mistyped
    /// fields, invalid ids, trailing bytes. Wire code `bad_frame`.
    #[error("bad frame: {reason}")]
    BadFrame {
        /// What was expected and what came, lowercase, at most
        /// [`ERROR_MESSAGE_BYTES_MAX`] bytes.
        reason: String,
    },
    /// A whole frame (postcard payload or JSON text) was longer than
    /// [`FRAME_BYTES_MAX`](crate::limits::FRAME_BYTES_MAX). Wire code `too_large`.
    #[error("frame is {length} bytes, expected at most {max}")]
    FrameTooLarge {
        /// The frame's length in bytes, as announced by its length prefix or measured.
        length: u64,
        /// The limit in bytes.
        max: usize,
    },
    /// A field or list inside a well-formed frame was over its limit (body, members, title,
    /// custom presence text, request id, resume cursors). Wire code `too_large`.
    #[error("{field} has {length} {unit}, expected at most {max}")]
    FieldTooLarge {
        /// The field's wire name.
        field: &'static str,
        /// Its length, in `unit`s.
        length: usize,
        /// The limit, in `unit`s.
        max: usize,
        /// What `length` and `max` count: "bytes", "users", "cursors".
        unit: &'static str,
    },
    /// A field inside a well-formed frame had a value the protocol does not allow (an empty
    /// member list, a history limit of zero). Wire code `invalid_argument`.
    #[error("{field} is {actual}, expected {expected}")]
    InvalidArgument {
        /// The field's wire name.
        field: &'static str,
        /// What the protocol allows.
        expected: String,
        /// What came.
        actual: String,
    },
    /// A frame could not be encoded. This is a bug in the sender, never the peer's fault.
    /// Wire code `internal`.
    #[error("frame could not be encoded: {reason}")]
    Encode {
        /// What went wrong.
        reason: String,
    },
}

impl FrameError {
    /// A [`FrameError::BadFrame`] whose reason is cut to at most [`ERROR_MESSAGE_BYTES_MAX`]
    /// bytes, so an error never echoes a large piece of the peer's input back to it.
    pub fn bad_frame(reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        truncate_at_char_boundary(&mut reason, ERROR_MESSAGE_BYTES_MAX);
        Self::BadFrame { reason }
    }

    /// The stable wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadFrame { .. } => ErrorCode::BadFrame,
            Self::FrameTooLarge { .. } | Self::FieldTooLarge { .. } => ErrorCode::TooLarge,
            Self::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Self::Encode { .. } => ErrorCode::Internal,
        }
    }
}

/// Cuts `text` to at most `max` bytes without splitting a character, marking the cut with
/// "…" when there is room for it.
pub(crate) fn truncate_at_char_boundary(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    const ELLIPSIS: &str = "…";
    let marked = max >= ELLIPSIS.len();
    let mut end = if marked { max - ELLIPSIS.len() } else { max };
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    if marked {
        text.push_str(ELLIPSIS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_code() {
        assert_eq!(FrameError::bad_frame("x").code(), ErrorCode::BadFrame);
        assert_eq!(FrameError::FrameTooLarge { length: 2, max: 1 }.code(), ErrorCode::TooLarge);
        let field = FrameError::FieldTooLarge { field: "body", length: 2, max: 1, unit: "bytes" };
        assert_eq!(field.code(), ErrorCode::TooLarge);
        let invalid = FrameError::InvalidArgument { field: "limit", expected: "1..=200".into(), actual: "0".into() };
        assert_eq!(invalid.code(), ErrorCode::InvalidArgument);
        assert_eq!(FrameError::Encode { reason: "x".into() }.code(), ErrorCode::Internal);
    }

    #[test]
    fn messages_are_lowercase_and_say_expected_and_actual() {
        let field = FrameError::FieldTooLarge { field: "body", length: 65537, max: 65536, unit: "bytes" };
        assert_eq!(field.to_string(), "body has 65537 bytes, expected at most 65536");
        let frame = FrameError::FrameTooLarge { length: 5, max: 4 };
        assert_eq!(frame.to_string(), "frame is 5 bytes, expected at most 4");
    }

    #[test]
    fn bad_frame_reason_is_bounded_and_keeps_utf8_whole() {
        let error = FrameError::bad_frame("é".repeat(ERROR_MESSAGE_BYTES_MAX));
        let FrameError::BadFrame { reason } = error else { panic!("expected bad frame") };
        assert!(reason.len() <= ERROR_MESSAGE_BYTES_MAX);
        assert!(reason.ends_with('…'));
        assert!(reason.len() > ERROR_MESSAGE_BYTES_MAX - 8);
    }

    #[test]
    fn truncate_leaves_short_text_alone() {
        let mut text = String::from("short");
        truncate_at_char_boundary(&mut text, 5);
        assert_eq!(text, "short");
        truncate_at_char_boundary(&mut text, 4);
        assert_eq!(text, "s…");
        truncate_at_char_boundary(&mut text, 1);
        assert_eq!(text, "s");
    }
}
