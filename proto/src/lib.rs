//! natter-proto: the wire types of natter's client protocol (DESIGN §5), the ids they carry,
//! the QUIC frame codec (`u32` big-endian length + postcard) and the JSON mapping used by
//! browsers. This crate does no I/O.
//!
//! **API boundary:** every other natter crate depends on these types; changing a frame's
//! fields changes the protocol and its golden snapshots.
#![warn(missing_docs)]

pub mod codec;
pub mod error;
pub mod frame_error;
pub mod frames;
pub mod ids;
pub mod json;
pub mod limits;

pub use codec::{decode_payload, encode_frame, FrameDecoder};
pub use error::ErrorCode;
pub use frame_error::FrameError;
pub use frames::{
    ActivityStatus, ClientFrame, ConversationSummary, MessageRecord, PresencePrivacy, PresenceStatus, ServerFrame,
};
pub use ids::{ConversationId, DeviceId, IdError, UserId};
