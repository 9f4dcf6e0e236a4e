//! A virtual OS clock for simulation threads.
//!
//! The node reads time through its `NodeEnv` clock, which the simulator drives; libraries
//! below it may still ask the OS (`std::time::Instant`, `SystemTime`: tokio's clock base,
//! tracing timestamps, TLS certificate checks, token expiry in a JWT library). This module
//! replaces libc's `clock_gettime` for the whole binary: on a thread running a simulation
//! ([`crate::entropy::on_seeded_thread`] starts the clock) the monotonic and real-time clocks
//! read a per-thread counter that starts at fixed values and moves forward by
//! [`TICK_NANOS`] per read, so what a run observes depends only on its seed and its own
//! sequence of reads; every other thread, and every other clock, gets the kernel's answer.
//! Time still moves, so a loop that waits for an OS deadline ends.

use std::cell::Cell;

use crate::env::SIM_EPOCH_MS;

/// How far the virtual clocks move per read, in nanoseconds.
pub const TICK_NANOS: u64 = 1_000;
/// Where the virtual monotonic clock starts: one day, so no subtraction underflows.
const MONOTONIC_START_NANOS: u64 = 86_400 * 1_000_000_000;

thread_local! {
    /// Nanoseconds the virtual clocks have moved on this thread; `None` outside simulations.
    static VIRTUAL_NANOS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Switches this thread to the virtual clocks, starting at zero elapsed.
pub fn start_virtual_clock() {
    VIRTUAL_NANOS.with(|nanos| nanos.set(Some(0)));
}

/// The next reading of this thread's virtual clock, or `None` if it has none.
fn next_virtual_nanos() -> Option<u64> {
    VIRTUAL_NANOS
        .try_with(|nanos| {
            let elapsed = nanos.get()?;
            nanos.set(Some(elapsed + TICK_NANOS));
            Some(elapsed)
        })
        .ok()
        .flatten()
}

fn timespec(nanos: u64) -> libc::timespec {
    libc::timespec { tv_sec: (nanos / 1_000_000_000) as libc::time_t, tv_nsec: (nanos % 1_000_000_000) as libc::c_long }
}

/// The virtual reading of `clock`, if it is one this module virtualises and the thread runs a
/// simulation.
fn virtual_reading(clock: libc::clockid_t) -> Option<libc::timespec> {
    let start = match clock {
        libc::CLOCK_MONOTONIC | libc::CLOCK_MONOTONIC_RAW | libc::CLOCK_MONOTONIC_COARSE | libc::CLOCK_BOOTTIME => {
            MONOTONIC_START_NANOS
        }
        libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_COARSE => SIM_EPOCH_MS * 1_000_000,
        _ => return None,
    };
    next_virtual_nanos().map(|elapsed| timespec(start + elapsed))
}

/// The kernel's monotonic clock, whatever thread asks: for measuring the harness's own wall
/// time from inside a simulation thread, where `std::time::Instant` reads the virtual clock.
pub fn real_elapsed() -> std::time::Duration {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is a valid timespec to write; the raw syscall bypasses the override.
    #[allow(unsafe_code)]
    let status = unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut time) };
    assert_eq!(status, 0, "the monotonic clock is always readable");
    std::time::Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// libc's `clock_gettime`, replaced: virtual on simulation threads for the monotonic and
/// real-time clocks, the kernel's otherwise.
///
/// # Safety
/// `time` must be valid for a write of one `timespec`, as for libc's `clock_gettime`.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn clock_gettime(clock: libc::clockid_t, time: *mut libc::timespec) -> libc::c_int {
    if let Some(reading) = virtual_reading(clock) {
        // SAFETY: the caller promises `time` is valid for a write.
        unsafe { time.write(reading) };
        return 0;
    }
    // SAFETY: the raw syscall takes the same arguments as the libc wrapper.
    unsafe { libc::syscall(libc::SYS_clock_gettime, clock, time) as libc::c_int }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use super::*;

    fn readings() -> (Vec<u128>, Vec<u128>) {
        let origin = Instant::now();
        let monotonic = (0..5).map(|_| origin.elapsed().as_nanos()).collect();
        let wall =
            (0..5).map(|_| SystemTime::now().duration_since(UNIX_EPOCH).expect("after the epoch").as_nanos()).collect();
        (monotonic, wall)
    }

    #[test]
    fn simulation_threads_read_a_virtual_clock_that_moves_forward() {
        let run = || crate::entropy::on_seeded_thread(7, readings);
        let (monotonic, wall) = run();
        assert_eq!((monotonic.clone(), wall.clone()), run(), "the same reads see the same times");
        assert!(monotonic.windows(2).all(|pair| pair[0] < pair[1]), "{monotonic:?}");
        assert!(wall.windows(2).all(|pair| pair[0] < pair[1]), "{wall:?}");
        let epoch_nanos = u128::from(SIM_EPOCH_MS) * 1_000_000;
        assert!(wall[0] >= epoch_nanos && wall[0] < epoch_nanos + 1_000_000_000, "{}", wall[0]);
    }

    #[test]
    fn the_real_clock_ignores_the_virtual_one() {
        let (first, second) = crate::entropy::on_seeded_thread(3, || {
            let first = real_elapsed();
            std::thread::sleep(std::time::Duration::from_millis(20));
            (first, real_elapsed())
        });
        assert!(second - first >= std::time::Duration::from_millis(20), "{first:?} -> {second:?}");
    }

    #[test]
    fn other_threads_read_the_kernel() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after the epoch");
        // The real clock is well past the simulation's epoch (2025-11-28).
        assert!(now.as_millis() > u128::from(SIM_EPOCH_MS) + 86_400_000, "{now:?}");
    }
}
