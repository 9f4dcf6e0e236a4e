//! Limits from DESIGN §9. Every limit is a named constant with its unit in the name.

/// Largest message body accepted, in bytes of UTF-8.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest frame payload (postcard bytes after the length prefix, or one JSON text), in bytes.
pub const FRAME_BYTES_MAX: usize = 1024 * 1024;
/// Most members a conversation may have.
pub const MEMBERS_MAX: usize = 1024;
/// Fewest members a conversation may have.
pub const MEMBERS_MIN: usize = 2;
/// Most messages one history page returns.
pub const HISTORY_PAGE_MAX: u32 = 200;
/// How many `client_seq`s below a device's highest the state machine remembers, per shard.
pub const DEDUP_WINDOW: u64 = 4096;
/// Most sends one session may have waiting for `send_ok`.
pub const OUTSTANDING_SENDS_MAX: usize = 1024;
/// Most concurrent sessions one user may hold.
pub const SESSIONS_PER_USER_MAX: usize = 16;
/// Least time between two presence updates sent to one watcher, in milliseconds.
pub const PRESENCE_UPDATE_INTERVAL_MS_MIN: u64 = 1000;
/// How long a typing indicator lives without renewal, in milliseconds.
pub const TYPING_TTL_MS: u64 = 6000;
/// Longest user or device id, in bytes.
pub const ID_BYTES_MAX: usize = 64;
/// Longest `request_id`, in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 64;
/// Longest conversation title, in bytes of UTF-8.
pub const TITLE_BYTES_MAX: usize = 256;
/// Longest custom presence text, in bytes of UTF-8.
pub const PRESENCE_CUSTOM_BYTES_MAX: usize = 256;
/// Most resume cursors one `hello` may carry.
pub const RESUME_CURSORS_MAX: usize = 4096;
/// Longest human-readable reason this crate puts in a decode error, in bytes of UTF-8, so an
/// `error` frame never echoes a large piece of the peer's input back to it.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 256;
