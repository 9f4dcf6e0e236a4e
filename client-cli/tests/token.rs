//! `natter token`: mints tokens the node's verifier accepts, from any of its secret sources,
//! and refuses bad input with a clear message.

use std::process::Command;

use natter_node::auth::{TokenKey, DEV_SECRET_FILE};
use natter_proto::UserId;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn natter(args: &[&str], secret_env: Option<&str>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natter"));
    command.args(args).env_remove("NATTER_JWT_SECRET");
    if let Some(secret) = secret_env {
        command.env("NATTER_JWT_SECRET", secret);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn minted_tokens_verify_with_the_cluster_secret() {
    let key = TokenKey::new(SECRET.as_bytes()).unwrap();
    let (code, token, _) = natter(&["token", "--user", "alice", "--secret", SECRET], None);
    assert_eq!(code, 0);
    assert_eq!(key.verify(token.trim(), now()), Ok(UserId::new("alice").unwrap()));
    // 24 h by default: still valid in 23 h, expired in 25 h.
    assert!(key.verify(token.trim(), now() + 23 * 3600).is_ok());
    assert!(key.verify(token.trim(), now() + 25 * 3600).is_err());

    let (code, token, _) = natter(&["token", "--user", "bob", "--ttl", "90s"], Some(SECRET));
    assert_eq!(code, 0, "secret from NATTER_JWT_SECRET");
    assert_eq!(key.verify(token.trim(), now()), Ok(UserId::new("bob").unwrap()));
    assert!(key.verify(token.trim(), now() + 91).is_err());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DEV_SECRET_FILE), format!("{SECRET}\n")).unwrap();
    let (code, token, _) = natter(&["token", "--user", "carol", "--data-dir", dir.path().to_str().unwrap()], None);
    assert_eq!(code, 0, "secret from a data dir");
    assert_eq!(key.verify(token.trim(), now()), Ok(UserId::new("carol").unwrap()));
}

#[test]
fn bad_token_requests_are_refused_clearly() {
    let (code, out, err) = natter(&["token", "--user", "alice"], None);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.contains("give --secret, NATTER_JWT_SECRET or --data-dir DIR"), "{err}");

    let (code, _, err) = natter(&["token", "--user", "not a user", "--secret", SECRET], None);
    assert_ne!(code, 0);
    assert!(err.contains("user id has character ' '"), "{err}");

    let (code, _, err) = natter(&["token", "--user", "alice", "--ttl", "3w", "--secret", SECRET], None);
    assert_ne!(code, 0);
    assert!(err.contains("unknown duration unit"), "{err}");

    let (code, _, err) = natter(&["token", "--user", "alice", "--secret", "short"], None);
    assert_ne!(code, 0);
    assert!(err.contains("jwt secret of 5 bytes, expected at least 32"), "{err}");
}
