//! Rate limits on what clients do (sends, conversation creates, typing), per connection and
//! per user, with governor's GCRA limiters on the node's clock.
//!
//! Per user means per user on this node: a user's sessions on one node share its limits (a
//! user holds at most `SESSIONS_PER_USER_MAX` sessions, so spreading them over nodes gains at
//! most the node count).
//!
//! A send over its limit waits for its turn when that is at most [`SEND_WAIT_MAX`] away: a
//! session serves its frames in order, so a client that sends too fast is slowed down
//! (back-pressure) and its sends keep their order. Anything else over a limit (a longer wait,
//! a create, a typing signal) is refused with `rate_limited` and how long to wait; nothing of
//! it was done, so retrying it later (a send with the same `client_seq`) loses and duplicates
//! nothing.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::env::Clock;

/// Longest a send waits for its turn under a rate limit before it is refused instead.
pub const SEND_WAIT_MAX: Duration = Duration::from_millis(250);
/// Most turns a send waits for (other sessions of the user may take the turns it waited for).
pub const SEND_WAITS_MAX: u32 = 8;

/// The limits of one node (config section `[rate_limits]`). Bursts are twice the per-second
/// rates, and a third of the per-minute ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Sends per second one connection may make.
    pub sends_per_second_per_connection: u32,
    /// Sends per second one user may make over all their connections to the node.
    pub sends_per_second_per_user: u32,
    /// Conversations one connection may create per minute.
    pub creates_per_minute_per_connection: u32,
    /// Conversations one user may create per minute.
    pub creates_per_minute_per_user: u32,
    /// Typing signals per second one connection may send.
    pub typing_per_second_per_connection: u32,
    /// Typing signals per second one user may send.
    pub typing_per_second_per_user: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        // People type a few messages a minute; apps and bridges send bursts. These stop a
        // runaway client long before it hurts anyone else, and operators raise them for
        // load tests.
        Self {
            sends_per_second_per_connection: 200,
            sends_per_second_per_user: 400,
            creates_per_minute_per_connection: 30,
            creates_per_minute_per_user: 60,
            typing_per_second_per_connection: 2,
            typing_per_second_per_user: 5,
        }
    }
}

/// A rate limit of zero, which would refuse every action of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate_limits.{0} must be at least 1, got 0")]
pub struct ZeroRate(pub &'static str);

impl RateLimits {
    /// Checks every rate is above zero.
    pub fn validate(&self) -> Result<(), ZeroRate> {
        let rates = [
            ("sends_per_second_per_connection", self.sends_per_second_per_connection),
            ("sends_per_second_per_user", self.sends_per_second_per_user),
            ("creates_per_minute_per_connection", self.creates_per_minute_per_connection),
            ("creates_per_minute_per_user", self.creates_per_minute_per_user),
            ("typing_per_second_per_connection", self.typing_per_second_per_connection),
            ("typing_per_second_per_user", self.typing_per_second_per_user),
        ];
        match rates.iter().find(|(_, rate)| *rate == 0) {
            Some((name, _)) => Err(ZeroRate(name)),
            None => Ok(()),
        }
    }
}

/// What a client does that is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A `send`.
    Send,
    /// A `create_conversation`.
    Create,
    /// A `typing` signal.
    Typing,
}

impl Action {
    /// The action's name in messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Send => "sends",
            Self::Create => "conversation creates",
            Self::Typing => "typing signals",
        }
    }
}

/// governor's view of the node's clock: time since the limiter was made. Using the node's
/// clock (not the OS's) keeps limits on simulated time in the simulator.
#[derive(Clone)]
pub struct EnvClock {
    clock: Arc<dyn Clock>,
    origin: tokio::time::Instant,
}

impl EnvClock {
    /// The node's clock, counted from now.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let origin = clock.now();
        Self { clock, origin }
    }
}

impl GovernorClock for EnvClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.origin)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, EnvClock, NoOpMiddleware<Duration>>;

/// One set of limiters: a connection's or a user's.
pub struct Limiters {
    clock: EnvClock,
    sends: Limiter,
    creates: Limiter,
    typing: Limiter,
}

fn per_second(rate: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(rate.get().saturating_mul(2)).expect("at least 2");
    Quota::per_second(rate).allow_burst(burst)
}

fn per_minute(rate: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
    let burst = NonZeroU32::new((rate.get() / 3).max(1)).expect("at least 1");
    Quota::per_minute(rate).allow_burst(burst)
}

impl Limiters {
    /// A connection's limiters.
    pub fn per_connection(limits: &RateLimits, clock: Arc<dyn Clock>) -> Self {
        Self::new(
            clock,
            per_second(limits.sends_per_second_per_connection),
            per_minute(limits.creates_per_minute_per_connection),
            per_second(limits.typing_per_second_per_connection),
        )
    }

    /// A user's limiters.
    pub fn per_user(limits: &RateLimits, clock: Arc<dyn Clock>) -> Self {
        Self::new(
            clock,
            per_second(limits.sends_per_second_per_user),
            per_minute(limits.creates_per_minute_per_user),
            per_second(limits.typing_per_second_per_user),
        )
    }

    fn new(clock: Arc<dyn Clock>, sends: Quota, creates: Quota, typing: Quota) -> Self {
        let clock = EnvClock::new(clock);
        Self {
            sends: RateLimiter::direct_with_clock(sends, clock.clone()),
            creates: RateLimiter::direct_with_clock(creates, clock.clone()),
            typing: RateLimiter::direct_with_clock(typing, clock.clone()),
            clock,
        }
    }

    /// Takes one `action` if the limit allows it now; otherwise how long until it would.
    pub fn check(&self, action: Action) -> Result<(), Duration> {
        let limiter = match action {
            Action::Send => &self.sends,
            Action::Create => &self.creates,
            Action::Typing => &self.typing,
        };
        limiter.check().map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Checks `action` against a connection's and its user's limiters; the longer wait if either
/// refuses. The connection's is checked first, so a refused action never uses up the user's
/// allowance.
pub fn check_both(connection: &Limiters, user: &Limiters, action: Action) -> Result<(), Duration> {
    connection.check(action)?;
    user.check(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::SystemClock as TokioClock;

    fn limits() -> RateLimits {
        RateLimits { sends_per_second_per_connection: 10, sends_per_second_per_user: 15, ..RateLimits::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_holds_and_the_wait_is_told() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock);
        let connection = Limiters::per_connection(&limits(), clock.clone());
        // A burst of twice the rate passes at once; the next is refused with a wait of about
        // one interval (100 ms at 10/s).
        for _ in 0..20 {
            assert_eq!(connection.check(Action::Send), Ok(()));
        }
        let wait = connection.check(Action::Send).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        tokio::time::advance(wait).await;
        assert_eq!(connection.check(Action::Send), Ok(()), "allowed again once the wait is over");
        // Each action has its own limiter.
        assert_eq!(connection.check(Action::Typing), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_user_limit_binds_over_all_connections() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock);
        let user = Limiters::per_user(&limits(), clock.clone());
        let (first, second) =
            (Limiters::per_connection(&limits(), clock.clone()), Limiters::per_connection(&limits(), clock.clone()));
        let mut allowed = 0;
        for _ in 0..20 {
            allowed += usize::from(check_both(&first, &user, Action::Send).is_ok());
            allowed += usize::from(check_both(&second, &user, Action::Send).is_ok());
        }
        assert_eq!(allowed, 30, "the user's burst (2 × 15) over both connections, though each allows 20");
    }

    #[test]
    fn zero_rates_are_refused() {
        assert!(RateLimits::default().validate().is_ok());
        let zero = RateLimits { typing_per_second_per_user: 0, ..RateLimits::default() };
        assert_eq!(
            zero.validate().map_err(|error| error.to_string()),
            Err("rate_limits.typing_per_second_per_user must be at least 1, got 0".into())
        );
    }
}
