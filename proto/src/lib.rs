//! natter-proto: the wire types of natter's client protocol (DESIGN §5), the ids they carry,
//! the QUIC frame codec (`u32` big-endian length + postcard) and the JSON mapping used by
//! browsers. This crate does no I/O.
//!
//! **API boundary:** every other natter crate depends on these types; changing a frame's
//! fields changes the protocol and its golden snapshots.
#![warn(missing_docs)]

pub mod error;
pub mod ids;
pub mod limits;

pub use error::ErrorCode;
pub use ids::{ConversationId, DeviceId, IdError, UserId};
