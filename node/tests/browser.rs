//! The web client in a real browser: headless Chromium, driven by playwright-core
//! (`tests/browser/chat.mjs`), against one in-process node. Two users in two browser contexts
//! create a 1:1, exchange messages and see the unread badge, typing and delivered and read
//! ticks, once with each transport forced (`ws`, `sse`, `poll`); no page may throw or break
//! its Content-Security-Policy. A screenshot of the chat is saved to
//! `target/browser-artifacts/chat-<transport>.png`.
//!
//! Needs Node.js, Debian's `chromium` (or `CHROMIUM=/path`) and the script's package:
//! `npm ci --prefix node/tests/browser`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use natter_node::rate::RateLimits;
use natter_raft::types::Runtime;
use support::{run_with_timeout, token, Outcome};

mod support;

/// How long one run of the browser script may take before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `<target>/browser-artifacts`, beside cargo's per-test scratch directory.
fn artifact_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target directory").join("browser-artifacts")
}

#[test]
fn two_users_chat_in_chromium_over_each_transport() {
    let playwright = browser_dir().join("node_modules/playwright-core");
    assert!(
        playwright.is_dir(),
        "{} is missing: run `npm ci --prefix node/tests/browser` (from the workspace root) first",
        playwright.display()
    );
    let artifacts = artifact_dir();
    std::fs::create_dir_all(&artifacts).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(Runtime::scope(6, async {
        let mut cluster = support::start_in_process(1, true, RateLimits::default()).await;
        let node = cluster.handles.pop().expect("one node");
        let base_url = format!("http://{}", node.http_addr().expect("http is on"));
        // Each transport has users of its own, so one run's conversation never shows in another.
        for transport in ["ws", "sse", "poll"] {
            let screenshot = artifacts.join(format!("chat-{transport}.png"));
            let _ = std::fs::remove_file(&screenshot);
            let mut command = Command::new("node");
            command
                .arg(browser_dir().join("chat.mjs"))
                .env("BASE_URL", &base_url)
                .env("TOKEN_ALICE", token(&format!("alice-{transport}")))
                .env("TOKEN_BOB", token(&format!("bob-{transport}")))
                .env("TRANSPORT", transport)
                .env("ARTIFACT_DIR", &artifacts);
            let outcome = tokio::task::spawn_blocking(move || run_with_timeout(command, SCRIPT_TIMEOUT)).await.unwrap();
            let Outcome { status, stdout, stderr, elapsed } = outcome;
            println!("{stdout}");
            println!("{transport}: the browser run took {:.1} s", elapsed.as_secs_f64());
            match status {
                None => panic!(
                    "{transport}: chat.mjs was killed after {SCRIPT_TIMEOUT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
                ),
                Some(status) => {
                    assert!(
                        status.success(),
                        "{transport}: chat.mjs exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
                    )
                }
            }
            let png = std::fs::read(&screenshot)
                .unwrap_or_else(|error| panic!("{transport}: no screenshot at {}: {error}", screenshot.display()));
            assert!(png.starts_with(PNG_MAGIC), "{transport}: {} is not a PNG", screenshot.display());
        }
        node.shutdown().await;
    }));
}
