//! The web client's unit tests (`web/tests/*.test.js`, for the pure `web/state.js`) under
//! `cargo test`: runs Node.js's built-in test runner, `node --test web/tests/`, and fails if any
//! of them fails. Needs Node.js 20 or later and no npm packages.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the whole run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn state_unit_tests_pass_under_node_test() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/tests");
    let mut child = Command::new("node")
        .arg("--test")
        .arg(&tests)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("could not start `node --test`: {error} (is Node.js 20+ installed?)"));
    // Read both pipes as the child writes them, so a full pipe never stalls it.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
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
