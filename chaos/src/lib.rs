//! natter-chaos: natter under real faults. Node processes run on loopback (started with the
//! CLI's `local` module), are SIGKILLed and restarted mid-run, and the clients' history is
//! judged by the same checkers the simulator uses (`natter_sim::check`).
#![warn(missing_docs)]

pub mod messaging;
