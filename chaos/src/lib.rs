//! natter-chaos: natter under real faults. Node processes run on loopback (started with the
//! CLI's `local` module), are SIGKILLed and restarted mid-run, and the clients' history is
//! judged by the same checkers the simulator uses (`natter_check`).
#![warn(missing_docs)]

pub mod messaging;

use std::path::{Path, PathBuf};

/// `<target>/debug/natter-node` beside the running test binary (`<target>/<profile>/deps/`),
/// built first if the test was run without the workspace.
///
/// # Panics
/// If the test binary is not in a cargo target directory, or the build fails.
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe.parent().and_then(Path::parent).and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let binary = target.join("debug").join("natter-node");
    if !binary.is_file() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "natter-node"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building natter-node failed");
    }
    binary
}
