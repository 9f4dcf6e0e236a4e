//! The web client's unit tests (`web/tests/*.test.js`, for the pure `web/state.js`) under
//! `cargo test`: runs Node.js's built-in test runner, `node --test web/tests/`, and fails if any
//! of them fails. Needs Node.js 20 or later and no npm packages.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod support;

/// How long the whole run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn state_unit_tests_pass_under_node_test() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/tests");
    let mut command = Command::new("node");
    command.arg("--test").arg(&tests);
    let support::Outcome { status, stdout, stderr, .. } = support::run_with_timeout(command, RUN_TIMEOUT);
    println!("{stdout}");
    let Some(status) = status else {
        panic!(
            "`node --test {}` was killed after {RUN_TIMEOUT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            tests.display()
        )
    };
    assert!(
        status.success(),
        "`node --test {}` exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        tests.display()
    );
    // A runner that found no test file would pass too: there must have been tests, and all passed.
    let count = |label: &str| {
        stdout.lines().find_map(|line| line.strip_prefix(&format!("# {label} "))?.trim().parse::<u32>().ok())
    };
    assert!(count("pass").is_some_and(|passed| passed > 0), "no test ran:\n{stdout}");
    assert_eq!(count("fail"), Some(0), "{stdout}");
}
