//! Where a device keeps what must survive a restart: the last seq handed to the application
//! per conversation (its cursors, sent as `resume` in `hello`) and the next `client_seq`.
//!
//! [`CursorStore`] is the seam; [`MemoryCursors`] keeps the state in memory (a process that
//! restarts starts over) and [`FileCursors`] in a JSON file written atomically, so the
//! `natter` CLI and other processes can resume where they stopped.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use natter_proto::ConversationId;
use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// Version of the cursor file format written by [`FileCursors`].
pub const CURSOR_FILE_VERSION: u32 = 1;
/// Largest cursor file [`FileCursors`] reads, in bytes (4096 cursors take about 200 KiB).
pub const CURSOR_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// What a device persists: cursors and the next `client_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorState {
    /// Format version, [`CURSOR_FILE_VERSION`].
    pub version: u32,
    /// The next `client_seq` to hand out; every one handed out before is below it.
    pub next_client_seq: u64,
    /// Per conversation, the last seq handed to the application.
    pub cursors: BTreeMap<ConversationId, u64>,
}

impl CursorState {
    /// An empty state whose `client_seq`s start at `next_client_seq`.
    pub fn starting_at(next_client_seq: u64) -> Self {
        Self { version: CURSOR_FILE_VERSION, next_client_seq: next_client_seq.max(1), cursors: BTreeMap::new() }
    }

    /// An empty state whose `client_seq`s start at the wall clock in microseconds.
    ///
    /// A device that lost its store (a deleted file, a new process with a memory store) must
    /// still never reuse a `client_seq`: the server would answer a reused one with the
    /// original message's `send_ok` and append nothing, silently dropping the new body.
    /// Starting from the clock puts a fresh store above every `client_seq` the device used
    /// before, unless it averaged more than a million sends per second. Within one store the
    /// numbers still go up by one, so the server's dedup window (4096 values) covers the
    /// device's recent sends as designed. The simulator, where the OS clock must not reach
    /// behaviour, starts its stores with [`CursorState::starting_at`] instead.
    pub fn fresh() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX / 2));
        Self::starting_at(micros)
    }

    /// Moves each cursor in `cursors` forward (never back).
    fn advance(&mut self, cursors: &BTreeMap<ConversationId, u64>) {
        for (&conversation, &seq) in cursors {
            let cursor = self.cursors.entry(conversation).or_insert(0);
            *cursor = (*cursor).max(seq);
        }
    }

    /// Hands out `count` `client_seq`s from `next_client_seq`.
    fn reserve(&mut self, count: u64) -> Range<u64> {
        let start = self.next_client_seq;
        self.next_client_seq = start.checked_add(count).expect("client_seq space is not exhausted");
        start..self.next_client_seq
    }

    /// Keeps the larger of each value, so concurrent writers never move anything back.
    fn merge(&mut self, other: &CursorState) {
        self.next_client_seq = self.next_client_seq.max(other.next_client_seq);
        self.advance(&other.cursors);
    }
}

/// Persistent cursors and `client_seq`s of one device.
///
/// Cursors only move forward and `client_seq`s are never handed out twice, also across
/// restarts: an implementation must persist each change before returning.
pub trait CursorStore: Send {
    /// Every stored cursor: conversation → last seq handed to the application.
    fn load(&mut self) -> Result<BTreeMap<ConversationId, u64>, ClientError>;
    /// Moves the given cursors forward (a cursor never moves back) and persists them.
    fn advance(&mut self, cursors: &BTreeMap<ConversationId, u64>) -> Result<(), ClientError>;
    /// Reserves `count` consecutive `client_seq`s, all above any reserved before, and persists
    /// the reservation before returning it.
    fn reserve_client_seqs(&mut self, count: u64) -> Result<Range<u64>, ClientError>;
}

/// Cursors kept in memory only.
#[derive(Debug, Clone)]
pub struct MemoryCursors {
    state: CursorState,
}

impl MemoryCursors {
    /// An empty store; `client_seq`s start from the clock (see [`CursorState::fresh`]).
    pub fn new() -> Self {
        Self { state: CursorState::fresh() }
    }

    /// A store holding `state` exactly.
    pub fn with_state(state: CursorState) -> Self {
        Self { state }
    }

    /// What the store holds.
    pub fn state(&self) -> &CursorState {
        &self.state
    }
}

impl Default for MemoryCursors {
    fn default() -> Self {
        Self::new()
    }
}

impl CursorStore for MemoryCursors {
    fn load(&mut self) -> Result<BTreeMap<ConversationId, u64>, ClientError> {
        Ok(self.state.cursors.clone())
    }

    fn advance(&mut self, cursors: &BTreeMap<ConversationId, u64>) -> Result<(), ClientError> {
        self.state.advance(cursors);
        Ok(())
    }

    fn reserve_client_seqs(&mut self, count: u64) -> Result<Range<u64>, ClientError> {
        Ok(self.state.reserve(count))
    }
}

/// Cursors in a JSON file:
///
/// ```json
/// {"version":1,"next_client_seq":1764288000000017,"cursors":{"aaaqeayeaudaocajbifqydiob4":41}}
/// ```
///
/// Every change rewrites the file atomically (a temporary file in the same directory, then a
/// rename), so a crash leaves the old or the new file, never a torn one. Changes are made
/// under an advisory lock on `FILE.lock` and merged with what the file holds (the larger
/// cursor, the larger `next_client_seq`), so two processes of one device (`natter tail` and
/// `natter send`) never move a cursor back or hand out a `client_seq` twice. The file is not
/// fsynced: after a power loss cursors may be a little behind (the server resends those
/// messages and the client drops none twice), and `client_seq`s restart from the clock only
/// if the file is lost entirely.
#[derive(Debug)]
pub struct FileCursors {
    path: PathBuf,
    /// The last state read or written.
    state: CursorState,
}

impl FileCursors {
    /// Opens (or, on the first change, creates) the cursor file at `path`; its directory is
    /// created if missing.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, ClientError> {
        let path = path.into();
        let state = read_state(&path)?.unwrap_or_else(CursorState::fresh);
        Ok(Self { path, state })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the store last read or wrote.
    pub fn state(&self) -> &CursorState {
        &self.state
    }

    /// Reads the file under the lock, applies `change` to the merged state and writes it back.
    fn update<T>(&mut self, change: impl FnOnce(&mut CursorState) -> T) -> Result<T, ClientError> {
        let io = |source| ClientError::Io { path: self.path.clone(), source };
        if let Some(parent) = self.path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let lock_path = sibling(&self.path, ".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| ClientError::Io { path: lock_path.clone(), source })?;
        // Released when `lock` is closed at the end of this function.
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|errno| ClientError::Io { path: lock_path.clone(), source: errno.into() })?;
        let mut state = self.state.clone();
        if let Some(on_disk) = read_state(&self.path)? {
            state.merge(&on_disk);
        }
        let result = change(&mut state);
        let text = serde_json::to_string(&state).expect("cursor state serialises");
        let temporary = sibling(&self.path, &format!(".tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            std::fs::rename(&temporary, &self.path)
        };
        if let Err(source) = write() {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(source));
        }
        self.state = state;
        Ok(result)
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// The state in the file at `path`, or `None` if there is no file.
fn read_state(path: &Path) -> Result<Option<CursorState>, ClientError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ClientError::Io { path: path.to_owned(), source }),
    };
    let mut text = String::new();
    use std::io::Read;
    file.take(CURSOR_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|source| ClientError::Io { path: path.to_owned(), source })?;
    let refuse = |reason: String| ClientError::Store { path: path.to_owned(), reason };
    if text.len() as u64 > CURSOR_FILE_BYTES_MAX {
        return Err(refuse(format!("file is over {CURSOR_FILE_BYTES_MAX} bytes, expected a cursor file")));
    }
    let state: CursorState =
        serde_json::from_str(&text).map_err(|error| refuse(format!("expected a natter cursor file: {error}")))?;
    if state.version != CURSOR_FILE_VERSION {
        return Err(refuse(format!("format version {}, expected {CURSOR_FILE_VERSION}", state.version)));
    }
    Ok(Some(state))
}

impl CursorStore for FileCursors {
    fn load(&mut self) -> Result<BTreeMap<ConversationId, u64>, ClientError> {
        if let Some(on_disk) = read_state(&self.path)? {
            self.state.merge(&on_disk);
        }
        Ok(self.state.cursors.clone())
    }

    fn advance(&mut self, cursors: &BTreeMap<ConversationId, u64>) -> Result<(), ClientError> {
        self.update(|state| state.advance(cursors))
    }

    fn reserve_client_seqs(&mut self, count: u64) -> Result<Range<u64>, ClientError> {
        self.update(|state| state.reserve(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(byte: u8) -> ConversationId {
        ConversationId::from_bytes([byte; 16])
    }

    #[test]
    fn memory_cursors_move_forward_only_and_never_repeat_a_client_seq() {
        let mut store = MemoryCursors::with_state(CursorState::starting_at(1));
        assert_eq!(store.reserve_client_seqs(3).unwrap(), 1..4);
        assert_eq!(store.reserve_client_seqs(2).unwrap(), 4..6);
        store.advance(&BTreeMap::from([(conversation(1), 5)])).unwrap();
        store.advance(&BTreeMap::from([(conversation(1), 3), (conversation(2), 1)])).unwrap();
        assert_eq!(store.load().unwrap(), BTreeMap::from([(conversation(1), 5), (conversation(2), 1)]));
    }

    #[test]
    fn a_fresh_state_starts_above_any_small_client_seq() {
        assert!(CursorState::fresh().next_client_seq > 1_700_000_000_000_000);
        assert!(MemoryCursors::new().state().cursors.is_empty());
    }

    #[test]
    fn file_cursors_survive_reopening_and_merge_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("cursors.json");
        let mut first = FileCursors::open(&path).unwrap();
        assert!(!path.exists(), "nothing is written before the first change");
        let reserved = first.reserve_client_seqs(10).unwrap();
        first.advance(&BTreeMap::from([(conversation(1), 7)])).unwrap();

        // A second process of the same device: it sees the first one's changes, and the
        // first one's later writes cannot move its cursor back or reuse its client_seqs.
        let mut second = FileCursors::open(&path).unwrap();
        assert_eq!(second.load().unwrap(), BTreeMap::from([(conversation(1), 7)]));
        let theirs = second.reserve_client_seqs(10).unwrap();
        assert_eq!(theirs.start, reserved.end);
        second.advance(&BTreeMap::from([(conversation(1), 9)])).unwrap();
        first.advance(&BTreeMap::from([(conversation(2), 1)])).unwrap();
        let ours = first.reserve_client_seqs(1).unwrap();
        assert_eq!(ours.start, theirs.end, "no client_seq is handed out twice");

        let mut reopened = FileCursors::open(&path).unwrap();
        assert_eq!(reopened.load().unwrap(), BTreeMap::from([(conversation(1), 9), (conversation(2), 1)]));
        assert_eq!(reopened.state().next_client_seq, ours.end);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(r#"{"version":1,"next_client_seq":"#), "{text}");
        assert!(text.contains(&format!(r#""{}":9"#, conversation(1))), "{text}");
        // Only the file and its lock remain: no temporary files.
        let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["cursors.json", "cursors.json.lock"]);
    }

    #[test]
    fn a_file_that_is_not_a_cursor_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursors.json");
        std::fs::write(&path, "hello").unwrap();
        let error = FileCursors::open(&path).unwrap_err();
        assert!(error.to_string().contains("expected a natter cursor file"), "{error}");
        std::fs::write(&path, r#"{"version":9,"next_client_seq":1,"cursors":{}}"#).unwrap();
        let error = FileCursors::open(&path).unwrap_err();
        assert!(error.to_string().ends_with("format version 9, expected 1"), "{error}");
    }
}
