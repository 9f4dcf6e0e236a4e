//! The messaging soak on real processes: 3 nodes on loopback, 20 devices (15 users, 5 with two
//! devices) in 50 conversations send 20,000 messages while the busiest leader is SIGKILLed and
//! restarted three times. Afterwards the simulator's checkers must find nothing: every device
//! has every message of its conversations exactly once, in seq order, identical across
//! devices; every `send_ok` seq holds its message; no `client_seq` appears twice.

use natter_chaos::messaging::{run, SoakOptions};
use natter_chaos::node_binary;

#[test]
fn twenty_thousand_messages_survive_three_leader_kills() {
    let dir = tempfile::tempdir().unwrap();
    let options = SoakOptions {
        dir: dir.path().join("cluster"),
        node_binary: node_binary(),
        shards: 16,
        users: 15,
        two_device_users: 5,
        conversations: 50,
        messages: 20_000,
        kills: 3,
        seed: 20261128,
    };
    let report = run(&options).expect("soak run");
    let (acknowledged, refused, unknown) = report.outcomes;
    let delivered: usize = report.history.deliveries.values().map(Vec::len).sum();
    println!(
        "soak: {acknowledged} acknowledged, {refused} refused, {unknown} unknown sends; {delivered} deliveries to {} devices; kills {:?}; {:.1} s",
        report.history.deliveries.len(),
        report.kills,
        report.elapsed.as_secs_f64()
    );
    assert!(report.violations.is_empty(), "violations: {:#?}", &report.violations[..report.violations.len().min(20)]);
    assert_eq!(report.kills.len(), 3, "three nodes were killed and restarted");
    assert_eq!(acknowledged + refused + unknown, 20_000);
    assert_eq!(refused, 0, "nothing was refused");
    assert!(acknowledged >= 19_000, "most sends were acknowledged despite the kills ({acknowledged})");
    assert_eq!(report.history.deliveries.len(), 20, "every device received messages");
}
