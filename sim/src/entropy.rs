//! Seeded OS entropy for simulation threads.
//!
//! Some randomness is out of the node's reach: std's `HashMap` keys, tokio's internal RNG, the
//! TLS library's key shares. They all come from libc's `getrandom`, which this module replaces
//! for the whole binary: on a thread running a simulation ([`on_seeded_thread`]) it returns
//! bytes from that run's seeded RNG; everywhere else it calls the kernel as usual. The override
//! is per thread, so many seeds can run in one process, each on a fresh thread (std draws its
//! `HashMap` keys once per thread).

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Runs `work` on a new thread whose OS entropy comes from `seed` and whose OS clocks are
/// virtual ([`crate::clock`]), and returns its result.
pub fn on_seeded_thread<R: Send + 'static>(seed: u64, work: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .name(format!("natter-sim-{seed}"))
        .spawn(move || {
            SEEDED.with(|cell| *cell.borrow_mut() = Some(StdRng::seed_from_u64(seed ^ 0x5eed_0f0e_5eed)));
            // The OS clocks, too, come from the run alone (see `crate::clock`).
            crate::clock::start_virtual_clock();
            work()
        })
        .expect("spawn simulation thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Fills `buffer` from the current thread's seeded RNG; false if the thread has none.
fn fill_seeded(buffer: &mut [u8]) -> bool {
    SEEDED
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut rng) => match rng.as_mut() {
                Some(rng) => {
                    rng.fill_bytes(buffer);
                    true
                }
                None => false,
            },
            Err(_) => false,
        })
        .unwrap_or(false)
}

/// libc's `getrandom(2)` wrapper, replaced: seeded on simulation threads, the kernel elsewhere.
///
/// # Safety
/// `buffer` must be valid for writes of `length` bytes, as for libc's `getrandom`.
#[allow(unsafe_code)]
#[no_mangle]
pub unsafe extern "C" fn getrandom(
    buffer: *mut libc::c_void,
    length: libc::size_t,
    flags: libc::c_uint,
) -> libc::ssize_t {
    // SAFETY: the caller promises `buffer` is valid for `length` bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buffer.cast::<u8>(), length) };
    if fill_seeded(slice) {
        return length as libc::ssize_t;
    }
    // SAFETY: the raw syscall takes the same arguments as the libc wrapper.
    unsafe { libc::syscall(libc::SYS_getrandom, buffer, length, flags) as libc::ssize_t }
}
