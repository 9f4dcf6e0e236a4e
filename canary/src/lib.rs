//! natter-canary: bugs planted on purpose so the simulator can prove its checkers catch them
//! (DESIGN §8). A checker that never fails proves nothing; each canary breaks one guarantee
//! the way a real bug would, and a test asserts the simulator reports it within a bounded
//! number of seeds.
//!
//! Code that a canary would break asks [`active`] at the spot the bug belongs. Only the
//! `canaries` feature makes canaries plantable (`plant`, `clear`, and the marker below);
//! without it [`active`] is a constant `false`, the checks compile away, and nothing of the
//! planting exists, so a production binary cannot be made to misbehave. Only natter-sim's own
//! `canaries` feature enables this one, and nothing enables that in a workspace build.
//!
//! With the feature, [`active`] keeps `MARKER` (`natter-canary-code-linked`) in every binary
//! that links it: `scripts/check-no-canaries.sh` fails if a production binary holds those
//! bytes, and also if the simulator built with canaries does not, so the check is proven
//! able to fail.
//!
//! Canaries are planted per thread: the simulator runs each seed, every host of it, on one
//! thread, so seeds running side by side in one process do not see each other's canaries.
//!
//! **API boundary:** natter-raft, natter-node and natter-client call [`active`] and depend on
//! this crate without the feature.
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

/// A planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Canary {
    /// The edge answers `send_ok` before the append commits, with the seq it expects.
    AckBeforeCommit,
    /// The state machine forgets it has seen a `client_seq`, so a resend is appended again.
    DedupSkipped,
    /// The client moves its cursor back by one when it reconnects, so it hands a message twice.
    CursorBackwards,
    /// A node registers its interest in a conversation only once, so after a leader change
    /// the new leader never pushes to it nor tells it how far the conversation has got.
    InterestNotReregistered,
    /// Reads are served from the local replica without asking the leader, so a lagging
    /// follower serves stale history.
    StaleFollowerRead,
}

impl Canary {
    /// Every canary, in a fixed order.
    pub const ALL: [Canary; 5] = [
        Canary::AckBeforeCommit,
        Canary::DedupSkipped,
        Canary::CursorBackwards,
        Canary::InterestNotReregistered,
        Canary::StaleFollowerRead,
    ];

    /// The name `--canary` takes.
    pub fn name(self) -> &'static str {
        match self {
            Canary::AckBeforeCommit => "ack-before-commit",
            Canary::DedupSkipped => "dedup-skipped",
            Canary::CursorBackwards => "cursor-backwards",
            Canary::InterestNotReregistered => "interest-not-reregistered",
            Canary::StaleFollowerRead => "stale-follower-read",
        }
    }

    #[cfg(feature = "canaries")]
    fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for Canary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A canary name that is not one of [`Canary::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown canary {0:?}, expected one of ack-before-commit, dedup-skipped, cursor-backwards, interest-not-reregistered, stale-follower-read")]
pub struct UnknownCanary(pub String);

impl FromStr for Canary {
    type Err = UnknownCanary;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Canary::ALL.into_iter().find(|canary| canary.name() == name).ok_or_else(|| UnknownCanary(name.to_owned()))
    }
}

/// Whether this build can plant canaries (the `canaries` feature is on).
pub const PLANTABLE: bool = cfg!(feature = "canaries");

/// Bytes every binary that can plant canaries holds, and no other: [`active`] keeps them
/// reachable. `scripts/check-no-canaries.sh` searches binaries for them.
#[cfg(feature = "canaries")]
pub const MARKER: &[u8] = b"natter-canary-code-linked";

#[cfg(feature = "canaries")]
thread_local! {
    static PLANTED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether `canary` is planted on this thread: always false, a constant, in a build without
/// the `canaries` feature.
#[cfg(not(feature = "canaries"))]
#[inline(always)]
pub fn active(canary: Canary) -> bool {
    let _ = canary;
    false
}

/// Whether `canary` is planted on this thread.
#[cfg(feature = "canaries")]
#[inline]
pub fn active(canary: Canary) -> bool {
    let planted = PLANTED.with(|planted| planted.get() & canary.bit() != 0);
    if planted {
        // The optimiser cannot see through black_box, so the marker's bytes stay in every
        // binary that calls this function, which is what the no-canaries check looks for.
        std::hint::black_box(MARKER);
    }
    planted
}

/// Plants `canaries` on this thread, replacing any planted before.
#[cfg(feature = "canaries")]
pub fn plant(canaries: &[Canary]) {
    PLANTED.with(|planted| planted.set(canaries.iter().fold(0, |bits, canary| bits | canary.bit())));
}

/// Removes every canary from this thread.
#[cfg(feature = "canaries")]
pub fn clear() {
    plant(&[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for canary in Canary::ALL {
            assert_eq!(canary.name().parse::<Canary>(), Ok(canary));
        }
        assert_eq!("dedup".parse::<Canary>(), Err(UnknownCanary("dedup".into())));
    }

    #[test]
    fn nothing_is_active_unless_planted() {
        for canary in Canary::ALL {
            assert!(!active(canary), "{canary} is active on a thread that planted nothing");
        }
        assert_eq!(PLANTABLE, cfg!(feature = "canaries"));
    }

    // Planting itself is tested where it is compiled in: natter-sim's `tests/canaries.rs`.
}
