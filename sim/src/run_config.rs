//! How a simulated run is shaped: cluster, workload, bounds, faults and canaries.

use std::sync::Arc;
use std::time::Duration;

use natter_canary::Canary;

use crate::faults::SimFaults;

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Shards.
    pub shards: u32,
    /// Users.
    pub users: usize,
    /// Fewest devices a user has.
    pub devices_per_user_min: usize,
    /// Most devices a user has.
    pub devices_per_user_max: usize,
    /// Conversations, created before the workload.
    pub conversations: usize,
    /// Fewest members of a conversation (2 or more; a pair without a title is a 1:1).
    pub group_size_min: usize,
    /// Most members of a conversation.
    pub group_size_max: usize,
    /// Mean operations (sends, reads, reconnects) per device per simulated second.
    pub sends_per_device_per_second: f64,
    /// Most sends in the whole run; the workload stops early when they are used up.
    pub sends_max: usize,
    /// Share of operations that are history reads (0..1).
    pub history_read_share: f64,
    /// Share of operations that are client reconnects (0..1).
    pub reconnect_share: f64,
    /// How long the workload runs, simulated time from when sending starts.
    pub run_duration: Duration,
    /// Longest the setup (connects and creates) may take, simulated time.
    pub setup_bound: Duration,
    /// Longest the heal phase may take before a liveness violation, simulated time.
    pub heal_bound: Duration,
    /// How long a client waits for a send's answer before calling it unknown.
    pub request_timeout: Duration,
    /// turmoil's UDP queue per host, in datagrams (its default of 64 drops silently).
    pub udp_capacity: usize,
    /// Simulated time per simulation step (every host runs this much per step).
    pub tick: Duration,
    /// Bugs planted on the run's thread, to prove the checkers; only a build with natter-sim's
    /// `canaries` feature can plant any (see [`plant_canaries`]).
    pub canaries: Vec<Canary>,
    /// The nemesis's hooks into nodes' clocks and storage; `None`: neither is faulted.
    pub faults: Option<Arc<SimFaults>>,
}

impl Default for RunConfig {
    /// The steady-state shape: 3 nodes, 8 shards, 6 users with 1-2 devices, 5 conversations,
    /// about 2 sends per device per second for 20 s.
    fn default() -> Self {
        Self {
            nodes: 3,
            shards: 8,
            users: 6,
            devices_per_user_min: 1,
            devices_per_user_max: 2,
            conversations: 5,
            group_size_min: 2,
            group_size_max: 4,
            sends_per_device_per_second: 2.0,
            sends_max: 400,
            history_read_share: 0.05,
            reconnect_share: 0.02,
            run_duration: Duration::from_secs(20),
            setup_bound: Duration::from_secs(30),
            heal_bound: Duration::from_secs(30),
            request_timeout: Duration::from_secs(20),
            udp_capacity: 1 << 16,
            tick: Duration::from_millis(1),
            canaries: Vec::new(),
            faults: None,
        }
    }
}
