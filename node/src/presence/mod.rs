//! Presence (DESIGN §7): who is online, away or offline. Soft state, never through Raft.
//!
//! Three pure cores, each taking events with `now` passed in and returning what to send:
//!
//! - [`LocalBoard`], one per node, tracks the node's own sessions and yields each user's
//!   [`LocalPresence`] on this node when it changes, plus a full refresh every
//!   [`PRESENCE_REPORT_INTERVAL`] so a newly elected shard leader learns the state.
//! - [`PresenceBoard`], one per node, runs on the leader of each user shard: it aggregates the
//!   reports of every node into one status per user and yields [`PresenceChange`]s. Entries
//!   expire after [`PRESENCE_ENTRY_TTL`] without renewal, so a dead node's users go offline
//!   without anyone having to notice the death.
//! - [`Coalescer`], one per watching session, keeps only the latest update per user and lets
//!   them out at most once per [`PRESENCE_FLUSH_INTERVAL`], so a flapping user cannot flood a
//!   watcher (DESIGN §9).
//!
//! The shell calls the `poll_*` method after every `handle_*` call and again at `poll_timeout`.

mod shell;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use natter_proto::frames::{ActivityStatus, PresenceStatus};
use natter_proto::limits::PRESENCE_UPDATE_INTERVAL_MS_MIN;
use natter_proto::UserId;
use natter_raft::types::NodeId;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How long a device may go without any client frame before it counts as away.
pub const AWAY_AFTER: Duration = Duration::from_secs(5 * 60);
/// How often a node re-reports every user it has, so a new shard leader (which starts with an
/// empty board) learns the state well within [`PRESENCE_ENTRY_TTL`].
pub const PRESENCE_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// How long a leader keeps a node's entry for a user without renewal. Three report intervals,
/// so one or two lost reports do not flap a user offline, yet a dead node's users go offline
/// within about 30 s.
pub const PRESENCE_ENTRY_TTL: Duration = Duration::from_secs(30);
/// Least time between two flushes to one watcher (DESIGN §9: at most one update per second).
pub const PRESENCE_FLUSH_INTERVAL: Duration = Duration::from_millis(PRESENCE_UPDATE_INTERVAL_MS_MIN);
/// Most sessions one [`LocalBoard`] tracks. Beyond it, new sessions are not tracked (their
/// devices do not count towards their user's presence) and are counted in
/// [`LocalBoard::sessions_ignored`]; the edge's connection limit should keep this unreachable.
pub const LOCAL_SESSIONS_MAX: usize = 1_000_000;
/// Most users one [`PresenceBoard`] tracks. Beyond it, reports for new users are ignored (they
/// show as offline) and counted in [`PresenceBoard::users_ignored`]; known users still update.
pub const PRESENCE_USERS_MAX: usize = 1_000_000;
/// Most users with an update waiting in one [`Coalescer`]. Beyond it, updates for users not
/// already waiting are refused and counted in [`Coalescer::updates_refused`]: refusing new users
/// keeps what is queued stable, and a user with a waiting update still gets its latest one.
pub const COALESCED_USERS_MAX: usize = 4096;

/// A user's presence on one node: what the node reports to the user's shard leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPresence {
    /// Open sessions of the user on this node; 0 means the user left this node.
    pub devices: u32,
    /// Whether any of those sessions is active (not away, not idle for [`AWAY_AFTER`]).
    pub active: bool,
    /// The custom text most recently set by any of those sessions.
    pub custom: Option<String>,
}

/// One authenticated session on this node.
#[derive(Debug)]
struct Session {
    user: UserId,
    /// Set by an explicit `away` frame; only an explicit `active` frame clears it.
    explicit_away: bool,
    /// When the session goes idle-away; `None` while it is away (explicitly or idle). While
    /// `Some`, the same `(deadline, session)` is in [`LocalBoard::idle_deadlines`].
    idle_at: Option<Instant>,
    /// The custom text this session last set, with an ordinal telling which session set it last.
    custom: Option<(u64, Option<String>)>,
}

/// A user with sessions on this node, or whose last session closed since the last report.
#[derive(Debug, Default)]
struct LocalUser {
    sessions: BTreeSet<u64>,
    reported: Option<LocalPresence>,
}

/// The node side of presence: this node's sessions, reported per user to the user's shard
/// leader ([`LocalBoard::poll_reports`]).
#[derive(Debug, Default)]
pub struct LocalBoard {
    sessions: BTreeMap<u64, Session>,
    users: BTreeMap<UserId, LocalUser>,
    /// Idle deadlines of the active sessions, soonest first, so an idle flip costs no scan.
    idle_deadlines: BTreeSet<(Instant, u64)>,
    /// Users whose presence may have changed since the last report.
    dirty: BTreeSet<UserId>,
    dirty_since: Option<Instant>,
    /// When the next full refresh is due; `None` until the board has users.
    refresh_at: Option<Instant>,
    custom_ordinal: u64,
    sessions_ignored: u64,
}

impl LocalBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Users on this node, including those whose departure is not yet reported.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the board has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user of a tracked session.
    pub fn user_of(&self, session: u64) -> Option<&UserId> {
        self.sessions.get(&session).map(|tracked| &tracked.user)
    }

    /// Sessions not tracked because [`LOCAL_SESSIONS_MAX`] were already tracked.
    pub fn sessions_ignored(&self) -> u64 {
        self.sessions_ignored
    }

    /// A session authenticated as `user`: one more device, active as of `now`.
    pub fn handle_open(&mut self, session: u64, user: UserId, now: Instant) {
        if self.sessions.contains_key(&session) {
            // Session ids are unique per node; a reused one replaces the old session rather
            // than leave a device counted for the wrong user.
            self.handle_close(session, now);
        }
        if self.sessions.len() >= LOCAL_SESSIONS_MAX {
            self.sessions_ignored += 1;
            return;
        }
        let idle_at = now + AWAY_AFTER;
        self.idle_deadlines.insert((idle_at, session));
        self.sessions.insert(
            session,
            Session { user: user.clone(), explicit_away: false, idle_at: Some(idle_at), custom: None },
        );
        self.users.entry(user.clone()).or_default().sessions.insert(session);
        self.mark(user, now);
    }

    /// An explicit `presence` frame: `Away` holds until the session says `Active` again, and
    /// `custom` (already validated by the codec) replaces the text, `None` clearing it.
    pub fn handle_activity(&mut self, session: u64, status: ActivityStatus, custom: Option<String>, now: Instant) {
        let Some(tracked) = self.sessions.get_mut(&session) else { return };
        if let Some(idle_at) = tracked.idle_at.take() {
            self.idle_deadlines.remove(&(idle_at, session));
        }
        tracked.explicit_away = status == ActivityStatus::Away;
        if !tracked.explicit_away {
            tracked.idle_at = Some(now + AWAY_AFTER);
            self.idle_deadlines.insert((now + AWAY_AFTER, session));
        }
        self.custom_ordinal += 1;
        tracked.custom = Some((self.custom_ordinal, custom));
        let user = tracked.user.clone();
        self.mark(user, now);
    }

    /// Any other client frame (send, read, typing...): activity that restarts the idle timer.
    /// It does not end an explicit away, which only the user's own `presence` frame does.
    pub fn handle_frame(&mut self, session: u64, now: Instant) {
        let Some(tracked) = self.sessions.get_mut(&session) else { return };
        if tracked.explicit_away {
            return;
        }
        let was_idle = match tracked.idle_at.replace(now + AWAY_AFTER) {
            Some(idle_at) => {
                let indexed = self.idle_deadlines.remove(&(idle_at, session));
                debug_assert!(indexed, "an active session's idle deadline is indexed");
                false
            }
            None => true,
        };
        self.idle_deadlines.insert((now + AWAY_AFTER, session));
        // Most frames come from an already active session and change nothing to report.
        if was_idle {
            let user = tracked.user.clone();
            self.mark(user, now);
        }
    }

    /// A session closed: one device fewer for its user.
    pub fn handle_close(&mut self, session: u64, now: Instant) {
        let Some(tracked) = self.sessions.remove(&session) else { return };
        if let Some(idle_at) = tracked.idle_at {
            self.idle_deadlines.remove(&(idle_at, session));
        }
        if let Some(user) = self.users.get_mut(&tracked.user) {
            user.sessions.remove(&session);
        }
        self.mark(tracked.user, now);
    }

    /// The users whose presence on this node changed since the last call, or every user when
    /// a full refresh is due; in `UserId` order. A user whose last session closed is reported
    /// once with `devices: 0` and then forgotten.
    pub fn poll_reports(&mut self, now: Instant) -> Vec<(UserId, LocalPresence)> {
        while self.idle_deadlines.first().is_some_and(|&(idle_at, _)| idle_at <= now) {
            let (idle_at, session) = self.idle_deadlines.pop_first().expect("first exists");
            let tracked = self.sessions.get_mut(&session).expect("an idle deadline belongs to a tracked session");
            assert_eq!(tracked.idle_at, Some(idle_at), "a session's idle deadline matches its index entry");
            tracked.idle_at = None;
            self.dirty.insert(tracked.user.clone());
        }
        let full = !self.users.is_empty() && self.refresh_at.is_none_or(|refresh_at| now >= refresh_at);
        let dirty = std::mem::take(&mut self.dirty);
        self.dirty_since = None;
        let targets: Vec<UserId> =
            if full { self.users.keys().cloned().collect() } else { dirty.into_iter().collect() };
        let mut reports = Vec::new();
        for user in targets {
            let Some(local) = self.users.get(&user) else { continue };
            let presence = self.presence_of(local);
            let local = self.users.get_mut(&user).expect("looked up above");
            let changed = local.reported.as_ref() != Some(&presence);
            if presence.devices == 0 {
                // A user never reported need not be un-reported: the leader never heard of them.
                if local.reported.is_some() {
                    reports.push((user.clone(), presence));
                }
                self.users.remove(&user);
            } else if full || changed {
                local.reported = Some(presence.clone());
                reports.push((user, presence));
            }
        }
        if full {
            self.refresh_at = Some(now + PRESENCE_REPORT_INTERVAL);
        }
        if self.users.is_empty() {
            self.refresh_at = None;
        }
        reports
    }

    /// When [`LocalBoard::poll_reports`] next has something to return by itself: pending
    /// changes (due at once), the next idle flip, or the next full refresh.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.idle_deadlines.first().map(|&(idle_at, _)| idle_at);
        let refresh = if self.users.is_empty() { None } else { self.refresh_at };
        [self.dirty_since, idle, refresh].into_iter().flatten().min()
    }

    /// One user's presence on this node, from their sessions.
    fn presence_of(&self, local: &LocalUser) -> LocalPresence {
        let mut active = false;
        let mut latest: Option<&(u64, Option<String>)> = None;
        for session in &local.sessions {
            let tracked = &self.sessions[session];
            active |= tracked.idle_at.is_some();
            if let Some(custom) = &tracked.custom {
                if latest.is_none_or(|best| custom.0 > best.0) {
                    latest = Some(custom);
                }
            }
        }
        let devices = u32::try_from(local.sessions.len()).unwrap_or(u32::MAX);
        LocalPresence { devices, active, custom: latest.and_then(|(_, custom)| custom.clone()) }
    }

    fn mark(&mut self, user: UserId, now: Instant) {
        self.dirty.insert(user);
        self.dirty_since.get_or_insert(now);
    }
}

/// A user's aggregate status changed; what the shard leader pushes to watchers' nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// Whose status changed.
    pub user: UserId,
    /// The new status.
    pub status: PresenceStatus,
    /// The user's custom text, if any.
    pub custom: Option<String>,
    /// Whether the user just went from online or away to offline: persist last-seen now.
    pub went_offline: bool,
}

/// One node's report for a user, as the leader holds it.
#[derive(Debug)]
struct NodeEntry {
    active: bool,
    custom: Option<String>,
    /// While the entry lives, `(expires_at, user, node)` is in [`PresenceBoard::expiries`].
    expires_at: Instant,
}

#[derive(Debug, Default)]
struct BoardUser {
    nodes: BTreeMap<NodeId, NodeEntry>,
    /// The last status returned by [`PresenceBoard::poll_changes`]; `None` before the first.
    announced: Option<(PresenceStatus, Option<String>)>,
}

/// The shard-leader side of presence: every node's reports for the users of the shards this
/// node leads, aggregated into one status per user.
#[derive(Debug, Default)]
pub struct PresenceBoard {
    users: BTreeMap<UserId, BoardUser>,
    expiries: BTreeSet<(Instant, UserId, NodeId)>,
    dirty: BTreeSet<UserId>,
    dirty_since: Option<Instant>,
    users_ignored: u64,
}

impl PresenceBoard {
    /// An empty board, as a newly elected leader starts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Users tracked.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is tracked.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Reports for new users ignored because [`PRESENCE_USERS_MAX`] users were tracked.
    pub fn users_ignored(&self) -> u64 {
        self.users_ignored
    }

    /// `node`'s reports: each renews that node's entry for the user until `now` +
    /// [`PRESENCE_ENTRY_TTL`]; `devices: 0` removes it.
    pub fn handle_report(&mut self, node: NodeId, reports: Vec<(UserId, LocalPresence)>, now: Instant) {
        for (user, presence) in reports {
            if presence.devices == 0 {
                let Some(board_user) = self.users.get_mut(&user) else { continue };
                if let Some(old) = board_user.nodes.remove(&node) {
                    self.expiries.remove(&(old.expires_at, user.clone(), node));
                    self.mark(user, now);
                }
                continue;
            }
            if !self.users.contains_key(&user) && self.users.len() >= PRESENCE_USERS_MAX {
                self.users_ignored += 1;
                continue;
            }
            let expires_at = now + PRESENCE_ENTRY_TTL;
            let entry = NodeEntry { active: presence.active, custom: presence.custom, expires_at };
            let board_user = self.users.entry(user.clone()).or_default();
            let changed = match board_user.nodes.get(&node) {
                Some(old) => {
                    self.expiries.remove(&(old.expires_at, user.clone(), node));
                    old.active != entry.active || old.custom != entry.custom
                }
                None => true,
            };
            board_user.nodes.insert(node, entry);
            self.expiries.insert((expires_at, user.clone(), node));
            if changed {
                self.mark(user, now);
            }
        }
    }

    /// A user's status over the entries held (expired ones go at the next poll), and custom
    /// text: from the lowest-numbered active node that has some, else from any node that has.
    pub fn status(&self, user: &UserId) -> (PresenceStatus, Option<String>) {
        self.users.get(user).map_or((PresenceStatus::Offline, None), aggregate)
    }

    /// Expires entries past their deadline, then returns every user whose status or custom
    /// text differs from what was last returned for them, in `UserId` order. A user returned
    /// offline is forgotten; a user never returned is not announced offline.
    pub fn poll_changes(&mut self, now: Instant) -> Vec<PresenceChange> {
        while self.expiries.first().is_some_and(|(expires_at, _, _)| *expires_at <= now) {
            let (expires_at, user, node) = self.expiries.pop_first().expect("first exists");
            let board_user = self.users.get_mut(&user).expect("an expiry belongs to a tracked user");
            let entry = board_user.nodes.remove(&node).expect("an expiry belongs to a live entry");
            assert_eq!(entry.expires_at, expires_at, "an entry's deadline matches its expiry");
            self.dirty.insert(user);
        }
        self.dirty_since = None;
        let mut changes = Vec::new();
        for user in std::mem::take(&mut self.dirty) {
            let Some(board_user) = self.users.get_mut(&user) else { continue };
            let (status, custom) = aggregate(board_user);
            let announce = match &board_user.announced {
                // Offline is no news about a user never announced (a new leader has simply
                // not heard of them yet).
                None => status != PresenceStatus::Offline,
                Some((announced_status, announced_custom)) => {
                    (*announced_status, announced_custom) != (status, &custom)
                }
            };
            if announce {
                // Only a user announced online or away gets here offline (see `announce`).
                let went_offline = status == PresenceStatus::Offline;
                changes.push(PresenceChange { user: user.clone(), status, custom: custom.clone(), went_offline });
            }
            if status == PresenceStatus::Offline {
                debug_assert!(board_user.nodes.is_empty());
                self.users.remove(&user);
            } else {
                board_user.announced = Some((status, custom));
            }
        }
        changes
    }

    /// When [`PresenceBoard::poll_changes`] next has something to do by itself: pending
    /// changes (due at once) or the next entry expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.expiries.first().map(|(expires_at, _, _)| *expires_at);
        [self.dirty_since, expiry].into_iter().flatten().min()
    }

    /// Forgets, without announcing, the users `keep` rejects: this node no longer leads their
    /// shard, and their new leader announces them.
    pub fn retain_shards(&mut self, keep: impl Fn(&UserId) -> bool) {
        self.users.retain(|user, _| keep(user));
        self.expiries.retain(|(_, user, _)| keep(user));
        self.dirty.retain(|user| keep(user));
    }

    fn mark(&mut self, user: UserId, now: Instant) {
        self.dirty.insert(user);
        self.dirty_since.get_or_insert(now);
    }
}

/// Online if any entry is active, away if entries exist but none is, offline without entries.
fn aggregate(board_user: &BoardUser) -> (PresenceStatus, Option<String>) {
    let entries = || board_user.nodes.values();
    let status = if entries().any(|entry| entry.active) {
        PresenceStatus::Online
    } else if board_user.nodes.is_empty() {
        PresenceStatus::Offline
    } else {
        PresenceStatus::Away
    };
    // An active device's text is what the user shows now; an away device's text (often set
    // before stepping away) is better than none, since devices that never set text say `None`.
    let custom = entries()
        .filter(|entry| entry.active)
        .find_map(|entry| entry.custom.clone())
        .or_else(|| entries().find_map(|entry| entry.custom.clone()));
    (status, custom)
}

/// Presence updates waiting for one watcher, at most one per user, let out at most once per
/// [`PRESENCE_FLUSH_INTERVAL`].
#[derive(Debug)]
pub struct Coalescer<T> {
    pending: BTreeMap<UserId, T>,
    pending_since: Option<Instant>,
    last_flush: Option<Instant>,
    updates_refused: u64,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Self { pending: BTreeMap::new(), pending_since: None, last_flush: None, updates_refused: 0 }
    }
}

impl<T> Coalescer<T> {
    /// A coalescer that has never flushed, so its first update goes out at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Users with an update waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Updates refused because [`COALESCED_USERS_MAX`] other users' updates were waiting.
    pub fn updates_refused(&self) -> u64 {
        self.updates_refused
    }

    /// Queues `update` for `user`, replacing any update of theirs still waiting.
    pub fn handle_update(&mut self, user: UserId, update: T, now: Instant) {
        if !self.pending.contains_key(&user) && self.pending.len() >= COALESCED_USERS_MAX {
            self.updates_refused += 1;
            return;
        }
        self.pending.insert(user, update);
        self.pending_since.get_or_insert(now);
    }

    /// Everything waiting, in `UserId` order, if [`PRESENCE_FLUSH_INTERVAL`] has passed since
    /// the last flush that sent something; otherwise nothing.
    pub fn poll_flush(&mut self, now: Instant) -> Vec<(UserId, T)> {
        if self.pending.is_empty() || self.last_flush.is_some_and(|last| now < last + PRESENCE_FLUSH_INTERVAL) {
            return Vec::new();
        }
        self.last_flush = Some(now);
        self.pending_since = None;
        std::mem::take(&mut self.pending).into_iter().collect()
    }

    /// When waiting updates may be flushed; `None` when nothing waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let since = self.pending_since?;
        Some(self.last_flush.map_or(since, |last| since.max(last + PRESENCE_FLUSH_INTERVAL)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn local(devices: u32, active: bool, custom: Option<&str>) -> LocalPresence {
        LocalPresence { devices, active, custom: custom.map(String::from) }
    }

    fn change(name: &str, status: PresenceStatus, custom: Option<&str>, went_offline: bool) -> PresenceChange {
        PresenceChange { user: user(name), status, custom: custom.map(String::from), went_offline }
    }

    #[test]
    fn idle_device_goes_away_after_five_minutes_and_returns_on_a_frame() {
        let (mut board, t0) = (LocalBoard::new(), Instant::now());
        board.handle_open(1, user("alice"), t0);
        assert_eq!(board.poll_reports(t0), vec![(user("alice"), local(1, true, None))]);
        // A frame 4 minutes in pushes the idle flip to 9 minutes.
        board.handle_frame(1, t0 + Duration::from_secs(240));
        assert_eq!(board.poll_reports(t0 + Duration::from_secs(241)), vec![(user("alice"), local(1, true, None))]);
        // Full refreshes, still active.
        assert_eq!(board.poll_reports(t0 + AWAY_AFTER), vec![(user("alice"), local(1, true, None))]);
        let idle = t0 + Duration::from_secs(240) + AWAY_AFTER;
        let before = idle - Duration::from_millis(1);
        assert_eq!(board.poll_reports(before), vec![(user("alice"), local(1, true, None))]);
        assert_eq!(board.poll_timeout(), Some(idle));
        assert_eq!(board.poll_reports(idle), vec![(user("alice"), local(1, false, None))]);
        assert_eq!(board.poll_timeout(), Some(before + PRESENCE_REPORT_INTERVAL));
        board.handle_frame(1, idle + Duration::from_secs(1));
        assert_eq!(board.poll_timeout(), Some(idle + Duration::from_secs(1)));
        assert_eq!(board.poll_reports(idle + Duration::from_secs(1)), vec![(user("alice"), local(1, true, None))]);
    }

    #[test]
    fn explicit_away_holds_through_frames_until_active() {
        let (mut board, t0) = (LocalBoard::new(), Instant::now());
        board.handle_open(1, user("alice"), t0);
        board.handle_activity(1, ActivityStatus::Away, Some("lunch".into()), t0);
        assert_eq!(board.poll_reports(t0), vec![(user("alice"), local(1, false, Some("lunch")))]);
        board.handle_frame(1, t0 + Duration::from_secs(1));
        assert_eq!(board.poll_reports(t0 + Duration::from_secs(1)), vec![]);
        board.handle_activity(1, ActivityStatus::Active, None, t0 + Duration::from_secs(2));
        assert_eq!(board.poll_reports(t0 + Duration::from_secs(2)), vec![(user("alice"), local(1, true, None))]);
    }

    #[test]
    fn one_active_device_of_two_makes_the_user_active_and_latest_custom_wins() {
        let (mut board, t0) = (LocalBoard::new(), Instant::now());
        board.handle_open(1, user("alice"), t0);
        board.handle_open(2, user("alice"), t0);
        board.handle_activity(1, ActivityStatus::Away, Some("lunch".into()), t0);
        board.handle_activity(2, ActivityStatus::Active, Some("deep work".into()), t0);
        assert_eq!(board.user_of(2), Some(&user("alice")));
        assert_eq!(board.poll_reports(t0), vec![(user("alice"), local(2, true, Some("deep work")))]);
        // The session that set the latest text leaves: the other session's text shows again.
        board.handle_close(2, t0);
        assert_eq!(board.poll_reports(t0), vec![(user("alice"), local(1, false, Some("lunch")))]);
    }

    #[test]
    fn last_session_closing_is_reported_once_then_forgotten() {
        let (mut board, t0) = (LocalBoard::new(), Instant::now());
        board.handle_open(1, user("alice"), t0);
        board.handle_open(2, user("bob"), t0);
        board.handle_close(2, t0); // bob was never reported, so is never un-reported.
        assert_eq!(board.poll_reports(t0), vec![(user("alice"), local(1, true, None))]);
        board.handle_close(1, t0 + Duration::from_secs(1));
        assert_eq!(board.poll_reports(t0 + Duration::from_secs(1)), vec![(user("alice"), local(0, false, None))]);
        assert_eq!(board.poll_reports(t0 + Duration::from_secs(20)), vec![]);
        assert!(board.is_empty());
        assert_eq!(board.poll_timeout(), None);
    }

    #[test]
    fn every_user_is_reported_again_every_report_interval() {
        let (mut board, t0) = (LocalBoard::new(), Instant::now());
        board.handle_open(1, user("bob"), t0);
        board.handle_open(2, user("alice"), t0);
        let everyone = vec![(user("alice"), local(1, true, None)), (user("bob"), local(1, true, None))];
        assert_eq!(board.poll_reports(t0), everyone);
        assert_eq!(board.poll_reports(t0 + Duration::from_secs(9)), vec![]);
        assert_eq!(board.poll_timeout(), Some(t0 + PRESENCE_REPORT_INTERVAL));
        assert_eq!(board.poll_reports(t0 + PRESENCE_REPORT_INTERVAL), everyone);
        assert_eq!(board.poll_timeout(), Some(t0 + 2 * PRESENCE_REPORT_INTERVAL));
    }

    #[test]
    fn online_on_one_node_and_away_on_another_is_online() {
        let (mut board, t0) = (PresenceBoard::new(), Instant::now());
        board.handle_report(1, vec![(user("alice"), local(1, false, Some("zzz")))], t0);
        assert_eq!(board.poll_changes(t0), vec![change("alice", PresenceStatus::Away, Some("zzz"), false)]);
        board.handle_report(2, vec![(user("alice"), local(1, true, None))], t0);
        assert_eq!(board.status(&user("alice")), (PresenceStatus::Online, Some("zzz".into())));
        assert_eq!(board.poll_changes(t0), vec![change("alice", PresenceStatus::Online, Some("zzz"), false)]);
        board.handle_report(2, vec![(user("alice"), local(1, true, Some("here")))], t0);
        assert_eq!(board.poll_changes(t0), vec![change("alice", PresenceStatus::Online, Some("here"), false)]);
        // A renewal that changes nothing announces nothing.
        board.handle_report(1, vec![(user("alice"), local(1, false, Some("zzz")))], t0);
        assert_eq!(board.poll_changes(t0), vec![]);
    }

    #[test]
    fn unrenewed_entries_expire_and_go_offline_exactly_once() {
        let (mut board, t0) = (PresenceBoard::new(), Instant::now());
        board.handle_report(1, vec![(user("alice"), local(1, true, None))], t0);
        assert_eq!(board.poll_changes(t0), vec![change("alice", PresenceStatus::Online, None, false)]);
        assert_eq!(board.poll_timeout(), Some(t0 + PRESENCE_ENTRY_TTL));
        board.handle_report(1, vec![(user("alice"), local(1, true, None))], t0 + Duration::from_secs(10));
        assert_eq!(board.poll_changes(t0 + PRESENCE_ENTRY_TTL), vec![]);
        let expiry = t0 + Duration::from_secs(10) + PRESENCE_ENTRY_TTL;
        assert_eq!(board.poll_changes(expiry - Duration::from_millis(1)), vec![]);
        assert_eq!(board.poll_changes(expiry), vec![change("alice", PresenceStatus::Offline, None, true)]);
        assert_eq!(board.poll_changes(expiry + Duration::from_secs(60)), vec![]);
        assert!(board.is_empty());
        assert_eq!(board.poll_timeout(), None);
    }

    #[test]
    fn a_report_of_no_devices_goes_offline_at_once() {
        let (mut board, t0) = (PresenceBoard::new(), Instant::now());
        board.handle_report(1, vec![(user("alice"), local(1, true, None))], t0);
        board.handle_report(2, vec![(user("alice"), local(1, false, None))], t0);
        assert_eq!(board.poll_changes(t0).len(), 1);
        board.handle_report(1, vec![(user("alice"), local(0, false, None))], t0);
        assert_eq!(board.poll_changes(t0), vec![change("alice", PresenceStatus::Away, None, false)]);
        board.handle_report(2, vec![(user("alice"), local(0, false, None))], t0);
        assert_eq!(board.poll_changes(t0), vec![change("alice", PresenceStatus::Offline, None, true)]);
        assert_eq!(board.status(&user("alice")), (PresenceStatus::Offline, None));
    }

    #[test]
    fn a_user_never_announced_is_never_announced_offline() {
        let (mut board, t0) = (PresenceBoard::new(), Instant::now());
        board.handle_report(1, vec![(user("alice"), local(0, false, None))], t0);
        board.handle_report(1, vec![(user("bob"), local(1, true, None))], t0);
        board.handle_report(1, vec![(user("bob"), local(0, false, None))], t0);
        assert_eq!(board.poll_changes(t0), vec![]);
        assert_eq!(board.poll_timeout(), None);
        assert!(board.is_empty());
    }

    #[test]
    fn retain_shards_forgets_without_announcing() {
        let (mut board, t0) = (PresenceBoard::new(), Instant::now());
        board.handle_report(1, vec![(user("alice"), local(1, true, None)), (user("bob"), local(1, true, None))], t0);
        assert_eq!(board.poll_changes(t0).len(), 2);
        board.handle_report(1, vec![(user("alice"), local(1, false, None))], t0);
        board.retain_shards(|user| user.as_str() != "alice");
        assert_eq!(board.len(), 1);
        assert_eq!(board.status(&user("alice")), (PresenceStatus::Offline, None));
        let later = t0 + PRESENCE_ENTRY_TTL;
        assert_eq!(board.poll_changes(later), vec![change("bob", PresenceStatus::Offline, None, true)]);
    }

    #[test]
    fn a_burst_yields_the_first_at_once_and_the_latest_a_second_later() {
        let (mut coalescer, t0) = (Coalescer::new(), Instant::now());
        assert_eq!(coalescer.poll_timeout(), None);
        for step in 0..10u32 {
            let now = t0 + Duration::from_millis(100 * u64::from(step));
            coalescer.handle_update(user("alice"), step, now);
            let flushed = coalescer.poll_flush(now);
            assert_eq!(flushed, if step == 0 { vec![(user("alice"), 0)] } else { vec![] }, "step {step}");
        }
        assert_eq!(coalescer.poll_timeout(), Some(t0 + PRESENCE_FLUSH_INTERVAL));
        assert_eq!(coalescer.poll_flush(t0 + PRESENCE_FLUSH_INTERVAL), vec![(user("alice"), 9)]);
        assert_eq!(coalescer.poll_timeout(), None);
        assert_eq!(coalescer.poll_flush(t0 + 5 * PRESENCE_FLUSH_INTERVAL), vec![]);
    }

    #[test]
    fn coalescer_refuses_new_users_beyond_its_bound() {
        let (mut coalescer, t0) = (Coalescer::new(), Instant::now());
        coalescer.handle_update(user("first"), 0, t0);
        assert_eq!(coalescer.poll_flush(t0).len(), 1);
        for index in 0..COALESCED_USERS_MAX {
            coalescer.handle_update(user(&format!("u{index:05}")), 1, t0);
        }
        coalescer.handle_update(user("late"), 1, t0);
        coalescer.handle_update(user("u00000"), 2, t0);
        assert_eq!((coalescer.len(), coalescer.updates_refused()), (COALESCED_USERS_MAX, 1));
        let flushed = coalescer.poll_flush(t0 + PRESENCE_FLUSH_INTERVAL);
        assert_eq!(flushed.len(), COALESCED_USERS_MAX);
        assert_eq!(flushed[0], (user("u00000"), 2));
        assert!(flushed.iter().all(|(user, _)| user.as_str() != "late"));
    }
}
