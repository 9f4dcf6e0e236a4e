//! Three real `natter-node` processes on loopback: every shard elects a leader, proposals
//! through every node commit, the node leading the most shards is SIGKILLed and the others
//! re-elect within 3 s and keep committing, and the killed node restarts and catches up.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{shard_view, ProcessCluster};

const SHARDS: u32 = 64;

fn probe_all(cluster: &ProcessCluster, id: u64) {
    let (status, body) = cluster.post(id, "/v1/admin/probe");
    assert_eq!(status, 200, "probe through node {id} failed: {body}");
    let results: serde_json::Value = serde_json::from_str(&body).unwrap();
    let committed = results["results"].as_array().unwrap().iter().filter(|r| r["committed"] == true).count();
    assert_eq!(committed, SHARDS as usize, "every shard commits through node {id}");
}

#[test]
fn three_nodes_elect_commit_fail_over_and_catch_up() {
    let mut cluster = ProcessCluster::new(3, SHARDS);
    for id in 1..=3 {
        cluster.start(id);
    }
    for id in 1..=3 {
        cluster.wait_ready(id, Duration::from_secs(30));
    }

    // Every shard has a leader, and all three nodes agree on it.
    let started = Instant::now();
    let leaders_by_shard: BTreeMap<u64, u64> = loop {
        let views: Vec<_> = (1..=3).map(|id| shard_view(&cluster.status(id).unwrap())).collect();
        let agreed = (0..SHARDS as u64).all(|shard| {
            let leaders: Vec<Option<u64>> = views.iter().map(|view| view[&shard].0).collect();
            leaders[0].is_some() && leaders.iter().all(|leader| *leader == leaders[0])
        });
        if agreed {
            break (0..SHARDS as u64).map(|shard| (shard, views[0][&shard].0.unwrap())).collect();
        }
        assert!(started.elapsed() < Duration::from_secs(15), "nodes never agreed on leaders: {views:?}");
        std::thread::sleep(Duration::from_millis(50));
    };

    // Proposals through every node commit on every shard (forwarded to each leader).
    for id in 1..=3 {
        probe_all(&cluster, id);
    }

    // Kill the node leading the most shards.
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for leader in leaders_by_shard.values() {
        *led.entry(*leader).or_default() += 1;
    }
    let (&victim, &count) = led.iter().max_by_key(|(_, count)| **count).unwrap();
    println!("leaders per node: {led:?}; killing node {victim}, which leads {count} shards");
    cluster.kill(victim);
    let killed_at = Instant::now();
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();

    // The survivors re-elect: every shard gets a leader other than the victim, agreed by both.
    let reelected_after = loop {
        let views: Vec<_> = survivors.iter().filter_map(|&id| cluster.status(id)).map(|s| shard_view(&s)).collect();
        let done = views.len() == survivors.len()
            && (0..SHARDS as u64).all(|shard| {
                let leader = views[0][&shard].0;
                leader.is_some() && leader != Some(victim) && views.iter().all(|view| view[&shard].0 == leader)
            });
        if done {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(20), "survivors never re-elected");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("re-elected every shard {reelected_after:?} after SIGKILL of node {victim}");
    assert!(reelected_after <= Duration::from_secs(3), "re-election took {reelected_after:?}, expected at most 3 s");

    // Proposals keep committing through the survivors.
    for &id in &survivors {
        probe_all(&cluster, id);
    }
    let target: BTreeMap<u64, u64> = {
        let views: Vec<_> = survivors.iter().map(|&id| shard_view(&cluster.status(id).unwrap())).collect();
        (0..SHARDS as u64).map(|shard| (shard, views.iter().map(|view| view[&shard].1).max().unwrap())).collect()
    };

    // The killed node restarts with its LMDB state and catches up.
    cluster.start(victim);
    cluster.wait_ready(victim, Duration::from_secs(30));
    let restarted_at = Instant::now();
    loop {
        let view = cluster.status(victim).map(|status| shard_view(&status));
        let behind: Vec<u64> = match &view {
            Some(view) => {
                target.iter().filter(|(shard, index)| view[shard].1 < **index).map(|(shard, _)| *shard).collect()
            }
            None => target.keys().copied().collect(),
        };
        if behind.is_empty() {
            break;
        }
        assert!(restarted_at.elapsed() < Duration::from_secs(30), "node {victim} still behind on shards {behind:?}");
        if std::env::var_os("NATTER_TEST_TRACE").is_some() {
            println!("{:?} behind: {}", restarted_at.elapsed(), behind.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("node {victim} caught up {:?} after restart", restarted_at.elapsed());
    if let Some(trace_dir) = std::env::var_os("NATTER_TEST_TRACE") {
        for id in 1..=3 {
            std::fs::write(std::path::Path::new(&trace_dir).join(format!("node-{id}.log")), cluster.log(id)).unwrap();
        }
    }

    // And the whole cluster still commits through the restarted node.
    probe_all(&cluster, victim);

    // Graceful shutdown exits 0.
    for id in 1..=3 {
        let status = cluster.terminate(id);
        assert!(status.success(), "node {id} exited with {status}; log:\n{}", cluster.log(id));
    }
}
