//! Canaries: bugs planted on purpose so the simulator can prove its checkers catch them
//! (DESIGN §8). A checker that never fails proves nothing; each canary breaks one guarantee
//! the way a real bug would, and a test asserts the simulator reports it within a bounded
//! number of seeds.
//!
//! Canaries exist only in builds with the `canaries` feature, which only the simulator
//! enables; without it [`active`] is a constant `false` and the checks compile away, so a
//! production binary cannot be made to misbehave. They are planted per thread: the simulator
//! runs each seed, every host of it, on one thread, so seeds running side by side in one
//! process do not see each other's canaries.

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

#[cfg(feature = "canaries")]
thread_local! {
    static PLANTED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether `canary` is planted on this thread. Always false without the `canaries` feature.
#[inline]
pub fn active(canary: Canary) -> bool {
    #[cfg(feature = "canaries")]
    {
        PLANTED.with(|planted| planted.get() & canary.bit() != 0)
    }
    #[cfg(not(feature = "canaries"))]
    {
        let _ = canary.bit();
        false
    }
}

/// Plants `canaries` on this thread (replacing any planted before); returns false, planting
/// nothing, in a build without the `canaries` feature.
pub fn plant(canaries: &[Canary]) -> bool {
    #[cfg(feature = "canaries")]
    {
        PLANTED.with(|planted| planted.set(canaries.iter().fold(0, |bits, canary| bits | canary.bit())));
        true
    }
    #[cfg(not(feature = "canaries"))]
    {
        let _ = canaries;
        false
    }
}

/// Removes every canary from this thread.
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
    fn canaries_are_planted_per_thread() {
        let planted = plant(&[Canary::DedupSkipped]);
        assert_eq!(active(Canary::DedupSkipped), planted && cfg!(feature = "canaries"));
        assert!(!active(Canary::AckBeforeCommit));
        let elsewhere = std::thread::spawn(|| active(Canary::DedupSkipped)).join().unwrap();
        assert!(!elsewhere, "another thread has no canary");
        clear();
        assert!(!active(Canary::DedupSkipped));
    }
}
