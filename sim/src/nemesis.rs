//! The nemesis: the [`Nemesis`] trait the harness ticks (with [`NoFaults`] and
//! [`CrashRestart`] for hand-made runs), a fault schedule drawn from the seed and a scenario's
//! fault mix ([`Schedule::draw`]), and [`ScheduledNemesis`], which applies it to a running
//! [`turmoil::Sim`]. The harness depends on this module, never the other way round.
//!
//! A schedule is a list of timed [`Action`]s, decided entirely before the run starts, so a
//! seed's faults do not depend on what the cluster does and `natter-sim replay --trace` can
//! print them up front. Every fault is an interval: it starts with one action (crash,
//! partition, hold, …) and ends with its inverse (restart, repair, release, …), except a
//! bounce, which is instantaneous. Drawing keeps these constraints, which the tests check by
//! replaying schedules for many seeds:
//!
//! - every fault starts and ends inside the scenario's fault window, so nothing happens in the
//!   heal phase after it;
//! - at most `down_nodes_max` nodes are crashed (or bouncing) at any moment, and a crashed node
//!   is never crashed or bounced again before it restarts;
//! - two faults that change the state of the same link (partition, one-way partition, hold,
//!   loss) never overlap: turmoil keeps one state per link direction, so a hold released or a
//!   loss that repairs itself would silently undo a partition on the same link; latency spikes
//!   on the same link never overlap either;
//! - a node has at most one clock skew and one storage fault at a time;
//! - unless the scenario sets `allow_majority_loss`, some live node can always reach a quorum
//!   both ways (see [`has_quorum`]), whatever combination of faults is active.
//!
//! Network faults touch node-to-node links only; clients lose their connections when their
//! node crashes or through the workload's reconnects.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::scenario::Scenario;
pub use crate::topology::node_name;

/// Most fault intervals one schedule holds.
pub const FAULTS_MAX: usize = 1024;
/// Most fault start times drawn for one schedule (some are refused by the constraints).
const STARTS_DRAWN_MAX: usize = 4 * FAULTS_MAX;
/// Kinds tried at one start time before the start is given up.
const DRAW_ATTEMPTS_MAX: usize = 4;
/// Mixed into the run's seed so the nemesis's stream differs from every other RNG seeded
/// with the same number.
const SEED_SALT: u64 = u64::from_be_bytes(*b"nemesis\0");
/// A loss fault at this rate or above counts as cutting its links when drawing decides whether
/// a quorum stays connected: a link that drops most packets carries no Raft round trips.
pub const LOSS_RATE_BLOCKING: f64 = 0.5;

/// Which node-to-node links a network fault touches: every link between two nodes in different
/// groups. Nodes in no group keep all their links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Disjoint groups of node ids, each sorted. The order matters only for one-way faults:
    /// a group cannot send to any later group.
    pub groups: Vec<Vec<u64>>,
}

impl Cut {
    /// Every affected link once, as `(smaller id, larger id)`, sorted.
    pub fn links(&self) -> Vec<(u64, u64)> {
        let mut links: Vec<(u64, u64)> =
            self.directed_links().into_iter().map(|(from, to)| (from.min(to), from.max(to))).collect();
        links.sort_unstable();
        links
    }

    /// Every affected link as `(from, to)` with `from`'s group before `to`'s: the directions a
    /// one-way fault blocks.
    pub fn directed_links(&self) -> Vec<(u64, u64)> {
        let mut links = Vec::new();
        for (index, group) in self.groups.iter().enumerate() {
            for later in &self.groups[index + 1..] {
                for &from in group {
                    for &to in later {
                        links.push((from, to));
                    }
                }
            }
        }
        links
    }

    fn display(&self, separator: &str) -> String {
        self.groups
            .iter()
            .map(|group| group.iter().map(|&node| node_name(node)).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(separator)
    }
}

/// Which directions a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// No packet crosses between groups.
    TwoWay,
    /// A group's packets to later groups are dropped; the other way still works.
    OneWay,
}

/// A fault at a node's storage seam.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageFault {
    /// Each storage operation fails with an I/O error with this probability (0..=1].
    IoErrors {
        /// Probability that one operation fails.
        failure_rate: f64,
    },
    /// Each fsync takes this much longer.
    SlowFsync {
        /// Extra delay per fsync, in milliseconds.
        delay_ms: u64,
    },
}

/// One step of a fault schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop the node's software (turmoil `crash`): in-memory state is lost, LMDB keeps every
    /// committed transaction.
    Crash {
        /// The node.
        node: u64,
    },
    /// Start a crashed node's software again (turmoil `bounce` on a crashed host).
    Restart {
        /// The node.
        node: u64,
    },
    /// Restart a running node in place (turmoil `bounce`).
    Bounce {
        /// The node.
        node: u64,
    },
    /// Drop every packet crossing the cut (turmoil `partition` / `partition_oneway`).
    Partition {
        /// The links.
        cut: Cut,
        /// Both ways, or from earlier groups to later ones only.
        direction: Direction,
    },
    /// Undo a [`Action::Partition`] with the same cut and direction (turmoil `repair` /
    /// `repair_oneway`).
    Repair {
        /// The links.
        cut: Cut,
        /// As in the partition.
        direction: Direction,
    },
    /// Lose packets on the cut's links (turmoil `set_link_fail_rate`).
    Loss {
        /// The links.
        cut: Cut,
        /// Probability that one packet is dropped (turmoil also drops what is in flight on
        /// the link when it does).
        rate: f64,
    },
    /// End a [`Action::Loss`]: the baseline fail rate again, and the link made healthy.
    LossEnd {
        /// The links.
        cut: Cut,
    },
    /// Raise the cut's links' maximum latency (turmoil `set_link_max_message_latency`); each
    /// packet draws its latency up to it, so packets overtake one another.
    Latency {
        /// The links.
        cut: Cut,
        /// The new maximum one-way latency, in milliseconds.
        latency_ms_max: u64,
    },
    /// End a [`Action::Latency`]: the baseline maximum latency again.
    LatencyEnd {
        /// The links.
        cut: Cut,
    },
    /// Hold every packet on the cut's links (turmoil `hold`).
    Hold {
        /// The links.
        cut: Cut,
    },
    /// Deliver every held packet at once and let packets flow again (turmoil `release`).
    Release {
        /// The links.
        cut: Cut,
    },
    /// Run the node's clock at `rate` times real speed (1.0 ends a skew), through
    /// [`FaultHooks::set_clock_rate`].
    ClockRate {
        /// The node.
        node: u64,
        /// Clock rate; 1.0 is normal.
        rate: f64,
    },
    /// Start a storage fault on the node, through [`FaultHooks::set_storage_fault`].
    Storage {
        /// The node.
        node: u64,
        /// The fault.
        fault: StorageFault,
    },
    /// End the node's storage fault.
    StorageHeal {
        /// The node.
        node: u64,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Crash { node } => write!(f, "crash {}", node_name(*node)),
            Action::Restart { node } => write!(f, "restart {}", node_name(*node)),
            Action::Bounce { node } => write!(f, "bounce {}", node_name(*node)),
            Action::Partition { cut, direction: Direction::TwoWay } => write!(f, "partition {}", cut.display(" | ")),
            Action::Partition { cut, direction: Direction::OneWay } => {
                write!(f, "partition one-way (no sends rightwards) {}", cut.display(" > "))
            }
            Action::Repair { cut, direction: Direction::TwoWay } => write!(f, "repair {}", cut.display(" | ")),
            Action::Repair { cut, direction: Direction::OneWay } => write!(f, "repair one-way {}", cut.display(" > ")),
            Action::Loss { cut, rate } => write!(f, "loss {:.1}% {}", rate * 100.0, cut.display(" | ")),
            Action::LossEnd { cut } => write!(f, "loss ends {}", cut.display(" | ")),
            Action::Latency { cut, latency_ms_max } => {
                write!(f, "latency up to {latency_ms_max}ms {}", cut.display(" | "))
            }
            Action::LatencyEnd { cut } => write!(f, "latency ends {}", cut.display(" | ")),
            Action::Hold { cut } => write!(f, "hold {}", cut.display(" | ")),
            Action::Release { cut } => write!(f, "release {}", cut.display(" | ")),
            Action::ClockRate { node, rate } => write!(f, "clock {} rate {rate:.3}", node_name(*node)),
            Action::Storage { node, fault: StorageFault::IoErrors { failure_rate } } => {
                write!(f, "disk {} I/O errors {:.1}%", node_name(*node), failure_rate * 100.0)
            }
            Action::Storage { node, fault: StorageFault::SlowFsync { delay_ms } } => {
                write!(f, "disk {} slow fsync +{delay_ms}ms", node_name(*node))
            }
            Action::StorageHeal { node } => write!(f, "disk {} healthy", node_name(*node)),
        }
    }
}

/// An action and the simulated time (since the run started) it happens at.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// When.
    pub at: Duration,
    /// What.
    pub action: Action,
}

impl fmt::Display for Timed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}  {}", seconds(self.at), self.action)
    }
}

/// `12.345s`, right-aligned, so a list of times lines up.
fn seconds(at: Duration) -> String {
    let milliseconds = at.as_millis();
    format!("{:>9}", format!("{}.{:03}s", milliseconds / 1000, milliseconds % 1000))
}

/// A run's faults: every action in time order (at one instant, ends before starts).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The scenario's name.
    pub scenario: String,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Start of the fault window.
    pub window_start: Duration,
    /// End of the fault window: every fault has ended by then, and the heal phase begins.
    pub window_end: Duration,
    /// The actions, in the order to apply them.
    pub actions: Vec<Timed>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "nemesis schedule: scenario {}, seed {}, {} nodes, faults in {}..{}, {} actions",
            self.scenario,
            self.seed,
            self.nodes,
            seconds(self.window_start).trim_start(),
            seconds(self.window_end).trim_start(),
            self.actions.len()
        )?;
        for timed in &self.actions {
            writeln!(f, "  {timed}")?;
        }
        writeln!(f, "  {}  heal", seconds(self.window_end))
    }
}

impl Schedule {
    /// Draws the schedule of `scenario`'s fault mix for `seed`. The same seed and scenario
    /// always give the same schedule.
    pub fn draw(seed: u64, scenario: &Scenario) -> Schedule {
        let faults = &scenario.faults;
        let window_start_ms = faults.window_start_seconds * 1000;
        let window_end_ms = faults.window_end_seconds * 1000;
        let mut drawer =
            Drawer { rng: StdRng::seed_from_u64(seed ^ SEED_SALT), scenario, window_end_ms, placed: Vec::new() };
        if faults.any() {
            drawer.draw_all(window_start_ms);
        }
        Schedule {
            seed,
            scenario: scenario.name.clone(),
            nodes: scenario.cluster.nodes,
            window_start: Duration::from_millis(window_start_ms),
            window_end: Duration::from_millis(window_end_ms),
            actions: expand(&drawer.placed),
        }
    }
}

/// What a placed fault does while it lasts.
#[derive(Debug, Clone)]
enum Effect {
    Crash { node: u64 },
    Bounce { node: u64 },
    Partition { cut: Cut, direction: Direction },
    Loss { cut: Cut, rate: f64 },
    Latency { cut: Cut, latency_ms_max: u64 },
    Hold { cut: Cut },
    ClockSkew { node: u64, rate: f64 },
    Storage { node: u64, fault: StorageFault },
}

/// The lane a fault occupies: two faults in the same lane may not overlap in time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Lane {
    /// A node's process (crash, bounce).
    Process(u64),
    /// A link's state (partition, hold, loss).
    LinkState(u64, u64),
    /// A link's latency.
    LinkLatency(u64, u64),
    /// A node's clock.
    Clock(u64),
    /// A node's storage.
    Storage(u64),
}

impl Effect {
    fn lanes(&self) -> BTreeSet<Lane> {
        match self {
            Effect::Crash { node } | Effect::Bounce { node } => BTreeSet::from([Lane::Process(*node)]),
            Effect::Partition { cut, .. } | Effect::Loss { cut, .. } | Effect::Hold { cut } => {
                cut.links().into_iter().map(|(a, b)| Lane::LinkState(a, b)).collect()
            }
            Effect::Latency { cut, .. } => cut.links().into_iter().map(|(a, b)| Lane::LinkLatency(a, b)).collect(),
            Effect::ClockSkew { node, .. } => BTreeSet::from([Lane::Clock(*node)]),
            Effect::Storage { node, .. } => BTreeSet::from([Lane::Storage(*node)]),
        }
    }

    fn down_node(&self) -> Option<u64> {
        match self {
            Effect::Crash { node } | Effect::Bounce { node } => Some(*node),
            _ => None,
        }
    }
}

/// A fault placed on the timeline: `[start_ms, end_ms)`.
#[derive(Debug, Clone)]
struct Interval {
    start_ms: u64,
    end_ms: u64,
    effect: Effect,
}

impl Interval {
    fn overlaps(&self, other: &Interval) -> bool {
        self.start_ms < other.end_ms && other.start_ms < self.end_ms
    }

    fn active_at(&self, at_ms: u64) -> bool {
        self.start_ms <= at_ms && at_ms < self.end_ms
    }
}

/// Whether some live node can exchange packets both ways with a quorum (itself included)
/// while `active` faults last. Crashed or bouncing nodes and nodes with storage I/O errors
/// (openraft stops a group whose storage fails) count as down; a link is cut by a partition in
/// either direction, a hold, or loss at [`LOSS_RATE_BLOCKING`] or more.
pub fn has_quorum<'a>(nodes: u64, quorum: u64, active: impl IntoIterator<Item = &'a Action>) -> bool {
    let mut down = BTreeSet::new();
    let mut cut = BTreeSet::new();
    for action in active {
        match action {
            Action::Crash { node } | Action::Bounce { node } => {
                down.insert(*node);
            }
            Action::Storage { node, fault: StorageFault::IoErrors { .. } } => {
                down.insert(*node);
            }
            Action::Partition { cut: links, .. } | Action::Hold { cut: links } => cut.extend(links.links()),
            Action::Loss { cut: links, rate } if *rate >= LOSS_RATE_BLOCKING => cut.extend(links.links()),
            _ => {}
        }
    }
    (1..=nodes).filter(|node| !down.contains(node)).any(|node| {
        let reachable = (1..=nodes)
            .filter(|other| *other != node && !down.contains(other))
            .filter(|other| !cut.contains(&(node.min(*other), node.max(*other))))
            .count() as u64;
        reachable + 1 >= quorum
    })
}

impl Effect {
    /// The action that starts this fault, which is also how [`has_quorum`] sees it.
    fn start_action(&self) -> Action {
        match self.clone() {
            Effect::Crash { node } => Action::Crash { node },
            Effect::Bounce { node } => Action::Bounce { node },
            Effect::Partition { cut, direction } => Action::Partition { cut, direction },
            Effect::Loss { cut, rate } => Action::Loss { cut, rate },
            Effect::Latency { cut, latency_ms_max } => Action::Latency { cut, latency_ms_max },
            Effect::Hold { cut } => Action::Hold { cut },
            Effect::ClockSkew { node, rate } => Action::ClockRate { node, rate },
            Effect::Storage { node, fault } => Action::Storage { node, fault },
        }
    }

    /// The action that ends it; a bounce has none.
    fn end_action(&self) -> Option<Action> {
        Some(match self.clone() {
            Effect::Crash { node } => Action::Restart { node },
            Effect::Bounce { .. } => return None,
            Effect::Partition { cut, direction } => Action::Repair { cut, direction },
            Effect::Loss { cut, .. } => Action::LossEnd { cut },
            Effect::Latency { cut, .. } => Action::LatencyEnd { cut },
            Effect::Hold { cut } => Action::Release { cut },
            Effect::ClockSkew { node, .. } => Action::ClockRate { node, rate: 1.0 },
            Effect::Storage { node, .. } => Action::StorageHeal { node },
        })
    }
}

/// Turns placed intervals into the ordered action list. At one instant, ends come before
/// starts, so a fault may begin on a link or node the moment the previous one left it.
fn expand(placed: &[Interval]) -> Vec<Timed> {
    let mut keyed = Vec::new();
    for (index, interval) in placed.iter().enumerate() {
        keyed.push(((interval.start_ms, 1, index), interval.effect.start_action()));
        if let Some(end) = interval.effect.end_action() {
            keyed.push(((interval.end_ms, 0, index), end));
        }
    }
    keyed.sort_by_key(|(key, _)| *key);
    keyed.into_iter().map(|((at_ms, _, _), action)| Timed { at: Duration::from_millis(at_ms), action }).collect()
}

struct Drawer<'a> {
    rng: StdRng,
    scenario: &'a Scenario,
    window_end_ms: u64,
    placed: Vec<Interval>,
}

impl Drawer<'_> {
    fn draw_all(&mut self, window_start_ms: u64) {
        let faults = &self.scenario.faults;
        // Gaps are uniform on [0, 2 × mean], so starts average `starts_per_minute`.
        let mean_gap_ms = ((60_000.0 / faults.starts_per_minute) as u64).max(1);
        let mut start_ms = window_start_ms;
        for _ in 0..STARTS_DRAWN_MAX {
            start_ms += self.rng.random_range(0..=2 * mean_gap_ms);
            if start_ms + faults.duration_ms_min > self.window_end_ms || self.placed.len() >= FAULTS_MAX {
                break;
            }
            for _ in 0..DRAW_ATTEMPTS_MAX {
                let kind = self.pick_kind();
                let Some(candidate) = self.candidate(kind, start_ms) else { continue };
                if self.fits(&candidate) {
                    self.placed.extend(candidate);
                    break;
                }
            }
        }
    }

    fn pick_kind(&mut self) -> &'static str {
        let entries = self.scenario.faults.weights.entries();
        let mut ticket = self.rng.random_range(0..self.scenario.faults.weights.total());
        for (kind, weight) in entries {
            let weight = u64::from(weight);
            if ticket < weight {
                return kind;
            }
            ticket -= weight;
        }
        unreachable!("a ticket below the total weight falls on some kind")
    }

    fn random_node(&mut self) -> u64 {
        self.rng.random_range(1..=self.scenario.cluster.nodes)
    }

    fn shuffled_nodes(&mut self) -> Vec<u64> {
        let mut nodes: Vec<u64> = (1..=self.scenario.cluster.nodes).collect();
        nodes.shuffle(&mut self.rng);
        nodes
    }

    /// A value between half of `max` and all of it: faults of a kind vary, but none is so
    /// mild that it does nothing.
    fn half_to_full(&mut self, max: f64) -> f64 {
        max * self.rng.random_range(0.5..=1.0)
    }

    /// A minority (1 up to fewer than a quorum's worth of nodes) against the rest.
    fn minority_cut(&mut self) -> Cut {
        let nodes = self.shuffled_nodes();
        let minority_max = (self.scenario.cluster.nodes - 1) / 2;
        let size = self.rng.random_range(1..=minority_max) as usize;
        let mut isolated = nodes[..size].to_vec();
        let mut rest = nodes[size..].to_vec();
        isolated.sort_unstable();
        rest.sort_unstable();
        Cut { groups: vec![isolated, rest] }
    }

    /// Groups each smaller than a quorum, covering every node: no group can elect or commit.
    fn majority_cut(&mut self) -> Cut {
        let nodes = self.shuffled_nodes();
        let group_max = self.scenario.cluster.quorum() - 1;
        let mut groups = Vec::new();
        let mut rest = &nodes[..];
        while !rest.is_empty() {
            let size = self.rng.random_range(1..=group_max.min(rest.len() as u64)) as usize;
            let mut group = rest[..size].to_vec();
            group.sort_unstable();
            groups.push(group);
            rest = &rest[size..];
        }
        Cut { groups }
    }

    /// One link, or one node against all others.
    fn link_cut(&mut self) -> Cut {
        let nodes = self.shuffled_nodes();
        if self.rng.random_bool(0.5) {
            Cut { groups: vec![vec![nodes[0]], vec![nodes[1]]] }
        } else {
            let mut rest = nodes[1..].to_vec();
            rest.sort_unstable();
            Cut { groups: vec![vec![nodes[0]], rest] }
        }
    }

    fn candidate(&mut self, kind: &str, start_ms: u64) -> Option<Vec<Interval>> {
        let faults = &self.scenario.faults;
        let duration_ms = self.rng.random_range(faults.duration_ms_min..=faults.duration_ms_max);
        let end_ms = (start_ms + duration_ms).min(self.window_end_ms);
        let single = |effect| Some(vec![Interval { start_ms, end_ms, effect }]);
        match kind {
            "crash" => single(Effect::Crash { node: self.random_node() }),
            "bounce" => {
                let node = self.random_node();
                // An instant, but it occupies the node for a millisecond so nothing else
                // restarts or crashes it at the same moment.
                Some(vec![Interval { start_ms, end_ms: start_ms + 1, effect: Effect::Bounce { node } }])
            }
            "rolling_restart" => self.rolling_restart(start_ms, duration_ms),
            "partition_minority" => {
                single(Effect::Partition { cut: self.minority_cut(), direction: Direction::TwoWay })
            }
            "partition_majority" => {
                single(Effect::Partition { cut: self.majority_cut(), direction: Direction::TwoWay })
            }
            "partition_oneway_minority" => {
                let mut cut = self.minority_cut();
                // Either the minority cannot talk, or it cannot hear.
                if self.rng.random_bool(0.5) {
                    cut.groups.reverse();
                }
                single(Effect::Partition { cut, direction: Direction::OneWay })
            }
            "partition_oneway_majority" => {
                single(Effect::Partition { cut: self.majority_cut(), direction: Direction::OneWay })
            }
            "loss" => {
                let cut = self.link_cut();
                let rate = faults.loss_rate_max * self.rng.random_range(0.1..=1.0);
                single(Effect::Loss { cut, rate })
            }
            "latency" => {
                let cut = self.link_cut();
                let latency_ms_max = (self.half_to_full(faults.latency_ms_max as f64) as u64).max(1);
                single(Effect::Latency { cut, latency_ms_max })
            }
            "hold" => single(Effect::Hold { cut: self.link_cut() }),
            "clock_skew" => {
                let node = self.random_node();
                let skew = self.half_to_full(faults.clock_rate_skew_max);
                let rate = if self.rng.random_bool(0.5) { 1.0 + skew } else { 1.0 - skew };
                single(Effect::ClockSkew { node, rate })
            }
            "disk_errors" => {
                let node = self.random_node();
                let failure_rate = self.half_to_full(faults.disk_error_rate_max);
                single(Effect::Storage { node, fault: StorageFault::IoErrors { failure_rate } })
            }
            "slow_fsync" => {
                let node = self.random_node();
                let delay_ms = (self.half_to_full(faults.fsync_delay_ms_max as f64) as u64).max(1);
                single(Effect::Storage { node, fault: StorageFault::SlowFsync { delay_ms } })
            }
            other => unreachable!("fault kind {other} is not in FaultWeights::entries"),
        }
    }

    /// Every node crashed and restarted in turn from a random one, each down for the same
    /// time, a minimum fault duration apart; shortened to fit the window, or refused if even
    /// the shortest fault would not fit.
    fn rolling_restart(&mut self, start_ms: u64, duration_ms: u64) -> Option<Vec<Interval>> {
        let faults = &self.scenario.faults;
        let nodes = self.scenario.cluster.nodes;
        let gap_ms = faults.duration_ms_min;
        let available_ms = self.window_end_ms.checked_sub(start_ms)?.checked_sub((nodes - 1) * gap_ms)?;
        let down_ms = duration_ms.min(available_ms / nodes);
        if down_ms < faults.duration_ms_min {
            return None;
        }
        let first = self.random_node();
        Some(
            (0..nodes)
                .map(|step| {
                    let node = (first - 1 + step) % nodes + 1;
                    let node_start_ms = start_ms + step * (down_ms + gap_ms);
                    Interval {
                        start_ms: node_start_ms,
                        end_ms: node_start_ms + down_ms,
                        effect: Effect::Crash { node },
                    }
                })
                .collect(),
        )
    }

    /// Whether every interval of `candidate` can join the timeline without breaking a
    /// constraint (see the module docs).
    fn fits(&self, candidate: &[Interval]) -> bool {
        let mut timeline: Vec<&Interval> = self.placed.iter().collect();
        for interval in candidate {
            if !self.fits_one(interval, &timeline) {
                return false;
            }
            timeline.push(interval);
        }
        true
    }

    fn fits_one(&self, interval: &Interval, timeline: &[&Interval]) -> bool {
        if interval.end_ms > self.window_end_ms {
            return false;
        }
        let overlapping: Vec<&Interval> = timeline.iter().copied().filter(|other| other.overlaps(interval)).collect();
        let lanes = interval.effect.lanes();
        if overlapping.iter().any(|other| !other.effect.lanes().is_disjoint(&lanes)) {
            return false;
        }
        // The set of active faults only grows when one starts, so checking the candidate's
        // start and every later start inside it covers every moment it is active.
        let mut checkpoints: BTreeSet<u64> = BTreeSet::from([interval.start_ms]);
        checkpoints.extend(overlapping.iter().map(|other| other.start_ms).filter(|start| *start > interval.start_ms));
        let faults = &self.scenario.faults;
        let cluster = &self.scenario.cluster;
        checkpoints.into_iter().all(|at_ms| {
            let active: Vec<&Interval> = overlapping
                .iter()
                .copied()
                .filter(|other| other.active_at(at_ms))
                .chain(std::iter::once(interval))
                .collect();
            let down = active.iter().filter_map(|other| other.effect.down_node()).count() as u64;
            if down > faults.down_nodes_max {
                return false;
            }
            faults.allow_majority_loss || {
                let actions: Vec<Action> = active.iter().map(|other| other.effect.start_action()).collect();
                has_quorum(cluster.nodes, cluster.quorum(), &actions)
            }
        })
    }
}

/// Injects faults into a running simulation. The harness calls [`Nemesis::tick`] before every
/// simulation step of the workload phase, then [`Nemesis::heal`] once.
pub trait Nemesis {
    /// Applies whatever is due at `elapsed` (simulated time since the workload began). Node hosts
    /// are named by [`node_name`] (`node1` … `nodeN`).
    fn tick(&mut self, sim: &mut turmoil::Sim<'_>, elapsed: Duration);
    /// Ends every fault: repairs links, restores loss and latency, restarts crashed nodes.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>);
    /// The faults applied so far, in order; the run's trace (and so its hash) records each.
    fn journal(&self) -> &[Timed] {
        &[]
    }
}

/// No faults.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFaults;

impl Nemesis for NoFaults {
    fn tick(&mut self, _sim: &mut turmoil::Sim<'_>, _elapsed: Duration) {}
    fn heal(&mut self, _sim: &mut turmoil::Sim<'_>) {}
}

/// Crashes node `node` at `at` and restarts it `down_for` later (or at heal, if that comes
/// first). The crash is a process crash: the host's tasks vanish mid-flight, its LMDB keeps
/// what was committed, and the restart runs `run_node` again on the same data directory.
#[derive(Debug, Clone, Copy)]
pub struct CrashRestart {
    /// When to crash it (simulated time since the run began).
    pub at: Duration,
    /// The node.
    pub node: u64,
    /// How long it stays down.
    pub down_for: Duration,
    crashed: bool,
    restarted: bool,
}

impl CrashRestart {
    /// Crashes `node` at `at` for `down_for`.
    pub fn new(at: Duration, node: u64, down_for: Duration) -> Self {
        Self { at, node, down_for, crashed: false, restarted: false }
    }

    /// True once the node was crashed and started again.
    pub fn done(&self) -> bool {
        self.crashed && self.restarted
    }
}

impl Nemesis for CrashRestart {
    fn tick(&mut self, sim: &mut turmoil::Sim<'_>, elapsed: Duration) {
        if !self.crashed && elapsed >= self.at {
            sim.crash(node_name(self.node));
            self.crashed = true;
        }
        if self.crashed && !self.restarted && elapsed >= self.at + self.down_for {
            sim.bounce(node_name(self.node));
            self.restarted = true;
        }
    }

    fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        if self.crashed && !self.restarted {
            sim.bounce(node_name(self.node));
            self.restarted = true;
        }
    }
}

/// The seams for faults turmoil cannot inject itself. The harness implements them over the
/// simulated clock and the storage layer; [`NoFaultHooks`] ignores them.
pub trait FaultHooks: Send + Sync {
    /// Makes `node`'s clock run at `rate` times simulated time (1.0: normal).
    fn set_clock_rate(&self, node: u64, rate: f64);
    /// Starts a storage fault on `node`, or ends it with `None`.
    fn set_storage_fault(&self, node: u64, fault: Option<StorageFault>);
}

/// Hooks that do nothing: clock skew and storage faults are scheduled and logged but have no
/// effect.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFaultHooks;

impl FaultHooks for NoFaultHooks {
    fn set_clock_rate(&self, _node: u64, _rate: f64) {}
    fn set_storage_fault(&self, _node: u64, _fault: Option<StorageFault>) {}
}

/// The network settings links go back to when a loss or latency fault ends or the nemesis
/// heals; they must match the `turmoil::Builder` the harness built the simulation with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkBaseline {
    /// The builder's `max_message_latency`.
    pub max_message_latency: Duration,
    /// The builder's `fail_rate`.
    pub fail_rate: f64,
}

impl Default for LinkBaseline {
    /// turmoil's own defaults (100 ms, no loss), which the harness keeps.
    fn default() -> Self {
        Self { max_message_latency: Duration::from_millis(100), fail_rate: 0.0 }
    }
}

/// Applies a [`Schedule`] to a simulation as its times come.
pub struct ScheduledNemesis {
    schedule: Schedule,
    next: usize,
    hooks: Arc<dyn FaultHooks + Send + Sync>,
    baseline: LinkBaseline,
    crashed: BTreeSet<u64>,
    /// Nodes whose storage has returned I/O errors since they last started: openraft stops a
    /// group whose storage failed, so the node is restarted when its disk heals, as an operator
    /// would after replacing it.
    disk_failed: BTreeSet<u64>,
    healed: bool,
    journal: Vec<Timed>,
}

impl fmt::Debug for ScheduledNemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduledNemesis")
            .field("next", &self.next)
            .field("crashed", &self.crashed)
            .field("healed", &self.healed)
            .finish_non_exhaustive()
    }
}

impl ScheduledNemesis {
    /// A nemesis that will apply `schedule`, with clock and storage faults going to `hooks`.
    pub fn new(schedule: Schedule, hooks: Arc<dyn FaultHooks + Send + Sync>) -> Self {
        Self {
            schedule,
            next: 0,
            hooks,
            baseline: LinkBaseline::default(),
            crashed: BTreeSet::new(),
            disk_failed: BTreeSet::new(),
            healed: false,
            journal: Vec::new(),
        }
    }

    /// Sets what links return to (default: turmoil's defaults).
    pub fn with_baseline(mut self, baseline: LinkBaseline) -> Self {
        self.baseline = baseline;
        self
    }

    /// The schedule being applied.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Nodes this nemesis crashed and has not restarted.
    pub fn crashed(&self) -> &BTreeSet<u64> {
        &self.crashed
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, action: &Action) {
        match action {
            Action::Crash { node } => {
                sim.crash(node_name(*node));
                self.crashed.insert(*node);
            }
            Action::Restart { node } | Action::Bounce { node } => {
                sim.bounce(node_name(*node));
                self.crashed.remove(node);
                self.disk_failed.remove(node);
            }
            Action::Partition { cut, direction: Direction::TwoWay } => {
                for (a, b) in cut.links() {
                    sim.partition(node_name(a), node_name(b));
                }
            }
            Action::Partition { cut, direction: Direction::OneWay } => {
                for (from, to) in cut.directed_links() {
                    sim.partition_oneway(node_name(from), node_name(to));
                }
            }
            Action::Repair { cut, direction: Direction::TwoWay } => {
                for (a, b) in cut.links() {
                    sim.repair(node_name(a), node_name(b));
                }
            }
            Action::Repair { cut, direction: Direction::OneWay } => {
                for (from, to) in cut.directed_links() {
                    sim.repair_oneway(node_name(from), node_name(to));
                }
            }
            Action::Loss { cut, rate } => {
                for (a, b) in cut.links() {
                    sim.set_link_fail_rate(node_name(a), node_name(b), *rate);
                }
            }
            Action::LossEnd { cut } => {
                for (a, b) in cut.links() {
                    sim.set_link_fail_rate(node_name(a), node_name(b), self.baseline.fail_rate);
                    // turmoil's loss breaks a link until the next packet repairs it; make sure
                    // it is healthy now rather than whenever that packet comes. Nothing else
                    // holds this link's state (the schedule keeps link faults apart).
                    sim.release(node_name(a), node_name(b));
                }
            }
            Action::Latency { cut, latency_ms_max } => {
                for (a, b) in cut.links() {
                    sim.set_link_max_message_latency(
                        node_name(a),
                        node_name(b),
                        Duration::from_millis(*latency_ms_max),
                    );
                }
            }
            Action::LatencyEnd { cut } => {
                for (a, b) in cut.links() {
                    sim.set_link_max_message_latency(node_name(a), node_name(b), self.baseline.max_message_latency);
                }
            }
            Action::Hold { cut } => {
                for (a, b) in cut.links() {
                    sim.hold(node_name(a), node_name(b));
                }
            }
            Action::Release { cut } => {
                for (a, b) in cut.links() {
                    sim.release(node_name(a), node_name(b));
                }
            }
            Action::ClockRate { node, rate } => self.hooks.set_clock_rate(*node, *rate),
            Action::Storage { node, fault } => {
                if matches!(fault, StorageFault::IoErrors { .. }) {
                    self.disk_failed.insert(*node);
                }
                self.hooks.set_storage_fault(*node, Some(fault.clone()));
            }
            Action::StorageHeal { node } => {
                self.hooks.set_storage_fault(*node, None);
                if self.disk_failed.remove(node) && !self.crashed.contains(node) {
                    sim.bounce(node_name(*node));
                }
            }
        }
    }
}

impl Nemesis for ScheduledNemesis {
    fn tick(&mut self, sim: &mut turmoil::Sim<'_>, elapsed: Duration) {
        if self.healed {
            return;
        }
        while let Some(timed) = self.schedule.actions.get(self.next) {
            if timed.at > elapsed {
                break;
            }
            let action = timed.action.clone();
            self.next += 1;
            self.apply(sim, &action);
            self.journal.push(Timed { at: elapsed, action });
        }
    }

    /// Every action applied so far, at the simulated time since the workload began, heal's
    /// restarts included.
    fn journal(&self) -> &[Timed] {
        &self.journal
    }

    fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        // Whatever the schedule still holds is dropped: the heal phase has no faults.
        self.healed = true;
        self.next = self.schedule.actions.len();
        let nodes = self.schedule.nodes;
        let at = sim.elapsed();
        let everyone: Vec<u64> = (1..=nodes).collect();
        let all_links = Cut { groups: everyone.iter().map(|&node| vec![node]).collect() };
        // Release before repairing: a repair alone leaves held packets held forever.
        for action in [
            Action::Release { cut: all_links.clone() },
            Action::Repair { cut: all_links.clone(), direction: Direction::TwoWay },
            Action::LossEnd { cut: all_links.clone() },
            Action::LatencyEnd { cut: all_links },
        ] {
            self.apply(sim, &action);
        }
        let crashed: Vec<u64> = self.crashed.iter().copied().collect();
        for node in crashed {
            self.apply(sim, &Action::Restart { node });
            self.journal.push(Timed { at, action: Action::Restart { node } });
        }
        for node in everyone {
            self.apply(sim, &Action::ClockRate { node, rate: 1.0 });
            self.apply(sim, &Action::StorageHeal { node });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use proptest::prelude::*;

    use super::*;
    use crate::scenario::{load_dir, scenarios_dir, FaultWeights, Faults};

    fn scenarios() -> &'static [Scenario] {
        static SCENARIOS: OnceLock<Vec<Scenario>> = OnceLock::new();
        SCENARIOS.get_or_init(|| {
            load_dir(scenarios_dir())
                .unwrap_or_else(|error| panic!("{error}"))
                .into_iter()
                .map(|(_, scenario)| scenario)
                .collect()
        })
    }

    fn scenario(name: &str) -> &'static Scenario {
        scenarios().iter().find(|scenario| scenario.name == name).unwrap_or_else(|| panic!("no scenario {name}"))
    }

    /// Replays a schedule against a model of the cluster written independently of the drawer,
    /// and lists every broken constraint.
    fn violations(schedule: &Schedule, scenario: &Scenario) -> Vec<String> {
        let faults = &scenario.faults;
        let nodes = scenario.cluster.nodes;
        let quorum = scenario.cluster.quorum();
        let mut problems = Vec::new();
        let mut crashed = BTreeSet::new();
        // Open faults, keyed by what ends them: the action text of the start, minus its verb.
        let mut open: BTreeMap<String, Action> = BTreeMap::new();
        let mut clocks = BTreeSet::new();
        let mut disks = BTreeMap::new();
        let window_start = Duration::from_secs(faults.window_start_seconds);
        let window_end = Duration::from_secs(faults.window_end_seconds);
        let mut previous = Duration::ZERO;
        let actions = &schedule.actions;
        for (index, Timed { at, action }) in actions.iter().enumerate() {
            let problem = |text: String| format!("{}: {text}", Timed { at: *at, action: action.clone() });
            if *at < previous {
                problems.push(problem("out of order".into()));
            }
            previous = *at;
            if *at < window_start || *at > window_end {
                problems.push(problem("outside the fault window".into()));
            }
            let mut bounce = None;
            match action {
                Action::Crash { node } => {
                    if !crashed.insert(*node) {
                        problems.push(problem("crashed twice".into()));
                    }
                }
                Action::Restart { node } => {
                    if !crashed.remove(node) {
                        problems.push(problem("restart of a running node".into()));
                    }
                }
                Action::Bounce { node } => {
                    if crashed.contains(node) {
                        problems.push(problem("bounce of a crashed node".into()));
                    }
                    bounce = Some(*node);
                }
                Action::Partition { cut, direction } => {
                    let covers_all = cut.groups.iter().map(Vec::len).sum::<usize>() as u64 == nodes;
                    let largest = cut.groups.iter().map(Vec::len).max().unwrap_or(0) as u64;
                    if covers_all && largest < quorum && !faults.allow_majority_loss {
                        problems.push(problem("majority partition not allowed".into()));
                    }
                    open.insert(format!("partition {cut:?} {direction:?}"), action.clone());
                }
                Action::Repair { cut, direction } => {
                    if open.remove(&format!("partition {cut:?} {direction:?}")).is_none() {
                        problems.push(problem("repair of no partition".into()));
                    }
                }
                Action::Loss { cut, .. } => {
                    open.insert(format!("loss {cut:?}"), action.clone());
                }
                Action::LossEnd { cut } => {
                    if open.remove(&format!("loss {cut:?}")).is_none() {
                        problems.push(problem("end of no loss".into()));
                    }
                }
                Action::Latency { cut, .. } => {
                    open.insert(format!("latency {cut:?}"), action.clone());
                }
                Action::LatencyEnd { cut } => {
                    if open.remove(&format!("latency {cut:?}")).is_none() {
                        problems.push(problem("end of no latency".into()));
                    }
                }
                Action::Hold { cut } => {
                    open.insert(format!("hold {cut:?}"), action.clone());
                }
                Action::Release { cut } => {
                    if open.remove(&format!("hold {cut:?}")).is_none() {
                        problems.push(problem("release of no hold".into()));
                    }
                }
                Action::ClockRate { node, rate } => {
                    let fresh = if *rate == 1.0 { clocks.remove(node) } else { clocks.insert(*node) };
                    if !fresh {
                        problems.push(problem("clock skew overlaps another or ends none".into()));
                    }
                }
                Action::Storage { node, .. } => {
                    if disks.insert(*node, action.clone()).is_some() {
                        problems.push(problem("two storage faults at once".into()));
                    }
                }
                Action::StorageHeal { node } => {
                    if disks.remove(node).is_none() {
                        problems.push(problem("heal of a healthy disk".into()));
                    }
                }
            }
            let down_now = crashed.len() as u64 + u64::from(bounce.is_some());
            if down_now > faults.down_nodes_max {
                problems.push(problem(format!("{down_now} nodes down, at most {}", faults.down_nodes_max)));
            }
            // Link faults on one link must not overlap.
            let mut link_users: BTreeMap<(u64, u64), usize> = BTreeMap::new();
            for open_action in open.values() {
                if let Action::Partition { cut, .. } | Action::Loss { cut, .. } | Action::Hold { cut } = open_action {
                    for link in cut.links() {
                        *link_users.entry(link).or_default() += 1;
                    }
                }
            }
            if link_users.values().any(|users| *users > 1) {
                problems.push(problem("two link faults on one link".into()));
            }
            // Quorum, checked once every action at this instant has been applied.
            let last_at_instant = actions.get(index + 1).is_none_or(|next| next.at != *at);
            if last_at_instant && !faults.allow_majority_loss {
                let mut up: BTreeSet<u64> = (1..=nodes).filter(|node| !crashed.contains(node)).collect();
                if let Some(node) = bounce {
                    up.remove(&node);
                }
                for disk in disks.values() {
                    if let Action::Storage { node, fault: StorageFault::IoErrors { .. } } = disk {
                        up.remove(node);
                    }
                }
                let mut blocked = BTreeSet::new();
                for open_action in open.values() {
                    match open_action {
                        Action::Partition { cut, .. } | Action::Hold { cut } => blocked.extend(cut.links()),
                        Action::Loss { cut, rate } if *rate >= LOSS_RATE_BLOCKING => blocked.extend(cut.links()),
                        _ => {}
                    }
                }
                let connected = up.iter().any(|&node| {
                    let peers = up
                        .iter()
                        .filter(|&&other| other != node && !blocked.contains(&(node.min(other), node.max(other))))
                        .count() as u64;
                    peers + 1 >= quorum
                });
                if !connected {
                    problems.push(problem("no quorum connected".into()));
                }
            }
        }
        if !crashed.is_empty() || !open.is_empty() || !clocks.is_empty() || !disks.is_empty() {
            problems.push(format!(
                "faults still active at the end of the window: crashed {crashed:?}, open {:?}, clocks {clocks:?}, disks {disks:?}",
                open.keys().collect::<Vec<_>>()
            ));
        }
        problems
    }

    fn assert_valid(schedule: &Schedule, scenario: &Scenario) {
        let problems = violations(schedule, scenario);
        assert!(problems.is_empty(), "{}\n{schedule}", problems.join("\n"));
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        for scenario in scenarios().iter().filter(|scenario| scenario.faults.any()) {
            let first = Schedule::draw(7, scenario);
            assert_eq!(first, Schedule::draw(7, scenario), "{}", scenario.name);
            assert_eq!(first.to_string(), Schedule::draw(7, scenario).to_string());
            assert_ne!(first.actions, Schedule::draw(8, scenario).actions, "{}", scenario.name);
        }
    }

    #[test]
    fn steady_state_has_no_faults() {
        let schedule = Schedule::draw(1, scenario("steady-state"));
        assert!(schedule.actions.is_empty(), "{schedule}");
    }

    /// The constraint checks below pass trivially on empty schedules; this proves the drawer
    /// actually draws every kind each scenario weights.
    #[test]
    fn every_weighted_kind_is_drawn() {
        for scenario in scenarios() {
            let mut seen = BTreeSet::new();
            for seed in 0..40 {
                for Timed { action, .. } in Schedule::draw(seed, scenario).actions {
                    seen.insert(match action {
                        Action::Crash { .. } => "crash",
                        Action::Bounce { .. } => "bounce",
                        Action::Partition { cut, direction } => {
                            let largest = cut.groups.iter().map(Vec::len).max().unwrap_or(0) as u64;
                            let majority = largest < scenario.cluster.quorum();
                            match (direction, majority) {
                                (Direction::TwoWay, false) => "partition_minority",
                                (Direction::TwoWay, true) => "partition_majority",
                                (Direction::OneWay, false) => "partition_oneway_minority",
                                (Direction::OneWay, true) => "partition_oneway_majority",
                            }
                        }
                        Action::Loss { .. } => "loss",
                        Action::Latency { .. } => "latency",
                        Action::Hold { .. } => "hold",
                        Action::ClockRate { .. } => "clock_skew",
                        Action::Storage { fault: StorageFault::IoErrors { .. }, .. } => "disk_errors",
                        Action::Storage { fault: StorageFault::SlowFsync { .. }, .. } => "slow_fsync",
                        _ => continue,
                    });
                }
            }
            let weights = &scenario.faults.weights;
            for (kind, weight) in weights.entries() {
                if kind == "rolling_restart" {
                    // A rolling restart shows up as crashes, one node after another.
                    assert!(weight == 0 || seen.contains("crash"), "{}: no rolling restart", scenario.name);
                    continue;
                }
                let drawn = weight > 0 || (kind == "crash" && weights.rolling_restart > 0);
                assert_eq!(drawn, seen.contains(kind), "{}: kind {kind} weight {weight}", scenario.name);
            }
        }
    }

    #[test]
    fn rolling_restart_takes_every_node_in_turn() {
        let scenario = scenario("rolling-restart");
        let rounds = (0..20)
            .filter(|&seed| {
                let crashes: Vec<u64> = Schedule::draw(seed, scenario)
                    .actions
                    .iter()
                    .filter_map(|timed| match timed.action {
                        Action::Crash { node } => Some(node),
                        _ => None,
                    })
                    .collect();
                crashes.windows(3).any(|window| window.iter().collect::<BTreeSet<_>>().len() == 3)
            })
            .count();
        assert!(rounds > 0, "no seed drew a rolling restart of all three nodes");
    }

    #[test]
    fn the_checker_catches_a_broken_schedule() {
        let scenario = scenario("five-nodes-two-failures");
        let mut schedule = Schedule::draw(3, scenario);
        assert_valid(&schedule, scenario);
        let late = schedule.window_end + Duration::from_millis(1);
        let crashes = [1, 2, 3].map(|node| Timed { at: schedule.window_start, action: Action::Crash { node } });
        schedule.actions.splice(0..0, crashes);
        schedule.actions.push(Timed {
            at: late,
            action: Action::Partition { cut: Cut { groups: vec![vec![1], vec![2]] }, direction: Direction::TwoWay },
        });
        let problems = violations(&schedule, scenario).join("\n");
        for expected in ["nodes down", "no quorum", "outside the fault window", "still active"] {
            assert!(problems.contains(expected), "{expected} not caught in:\n{problems}");
        }
    }

    #[test]
    fn schedule_prints_one_line_per_action() {
        let scenario = scenario("minority-partition");
        let schedule = Schedule::draw(11, scenario);
        let text = schedule.to_string();
        assert!(
            text.starts_with(
                "nemesis schedule: scenario minority-partition, seed 11, 3 nodes, faults in 5.000s..32.000s"
            ),
            "{text}"
        );
        assert_eq!(text.lines().count(), schedule.actions.len() + 2, "{text}");
        assert!(text.contains("partition") && text.contains("repair"), "{text}");
        assert!(text.trim_end().ends_with("32.000s  heal"), "{text}");
    }

    fn arbitrary_scenario() -> impl Strategy<Value = Scenario> {
        (
            1u64..=7,
            proptest::collection::vec(0u32..3, 13),
            any::<bool>(),
            0u64..=3,
            1u64..=4000,
            0u64..=6000,
            1.0f64..120.0,
        )
            .prop_map(|(nodes, weights, allow, down, duration_min, duration_extra, starts)| {
                let mut scenario = scenario("leader-crash-loop").clone();
                scenario.name = "arbitrary".into();
                scenario.cluster.nodes = nodes;
                let weight = |index: usize| weights[index];
                let mut weights = FaultWeights {
                    crash: weight(0),
                    bounce: weight(1),
                    rolling_restart: weight(2),
                    partition_minority: if nodes >= 3 { weight(3) } else { 0 },
                    partition_majority: if allow && nodes >= 2 { weight(4) } else { 0 },
                    partition_oneway_minority: if nodes >= 3 { weight(5) } else { 0 },
                    partition_oneway_majority: if allow && nodes >= 2 { weight(6) } else { 0 },
                    loss: if nodes >= 2 { weight(7) } else { 0 },
                    latency: if nodes >= 2 { weight(8) } else { 0 },
                    hold: if nodes >= 2 { weight(9) } else { 0 },
                    clock_skew: weight(10),
                    disk_errors: weight(11),
                    slow_fsync: weight(12),
                };
                // Without majority loss, fewer than a quorum (nodes / 2 + 1) may be down.
                let down_nodes_max = if allow { down.min(nodes) } else { down.min(nodes / 2) };
                if down_nodes_max == 0 {
                    weights.crash = 0;
                    weights.bounce = 0;
                    weights.rolling_restart = 0;
                }
                scenario.faults = Faults {
                    window_start_seconds: 2,
                    window_end_seconds: 30,
                    starts_per_minute: starts,
                    duration_ms_min: duration_min,
                    duration_ms_max: duration_min + duration_extra,
                    down_nodes_max,
                    allow_majority_loss: allow,
                    loss_rate_max: 1.0,
                    weights,
                    ..Faults::default()
                };
                scenario.validate().unwrap_or_else(|error| panic!("generated an invalid scenario: {error}"));
                scenario
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn scenario_files_keep_every_constraint(seed in any::<u64>(), index in 0usize..64) {
            let scenario = &scenarios()[index % scenarios().len()];
            assert_valid(&Schedule::draw(seed, scenario), scenario);
        }

        #[test]
        fn any_fault_mix_keeps_every_constraint(seed in any::<u64>(), scenario in arbitrary_scenario()) {
            let schedule = Schedule::draw(seed, &scenario);
            prop_assert_eq!(&schedule, &Schedule::draw(seed, &scenario));
            assert_valid(&schedule, &scenario);
        }
    }

    /// Hooks that record what they were asked.
    #[derive(Default)]
    struct RecordingHooks {
        calls: Mutex<Vec<String>>,
    }

    impl FaultHooks for RecordingHooks {
        fn set_clock_rate(&self, node: u64, rate: f64) {
            self.calls.lock().expect("lock").push(format!("clock {node} {rate}"));
        }

        fn set_storage_fault(&self, node: u64, fault: Option<StorageFault>) {
            self.calls.lock().expect("lock").push(format!("disk {node} {fault:?}"));
        }
    }

    const PORT: u16 = 9000;

    /// Three hosts: node1 sends a datagram to node2 every 10 ms; node2 counts what arrives.
    fn counting_sim(received: Arc<AtomicU64>) -> turmoil::Sim<'static> {
        let mut sim = turmoil::Builder::new()
            .simulation_duration(Duration::from_secs(60))
            .tick_duration(Duration::from_millis(1))
            .rng_seed(1)
            // As in the harness: turmoil's default of 64 queued datagrams would drop part of
            // a released hold.
            .udp_capacity(1 << 16)
            .build();
        sim.host("node1", || async {
            let socket = turmoil::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, PORT)).await?;
            loop {
                socket.send_to(b"ping", ("node2", PORT)).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        sim.host("node2", move || {
            let received = received.clone();
            async move {
                let socket = turmoil::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, PORT)).await?;
                let mut buffer = [0u8; 16];
                loop {
                    socket.recv_from(&mut buffer).await?;
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        sim.host("node3", || async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        sim
    }

    /// Steps the simulation until `until`, ticking the nemesis before every step.
    fn run_until(sim: &mut turmoil::Sim<'_>, nemesis: &mut ScheduledNemesis, until: Duration) {
        while sim.elapsed() < until {
            let elapsed = sim.elapsed();
            nemesis.tick(sim, elapsed);
            sim.step().expect("simulation step");
        }
    }

    fn manual(actions: Vec<(u64, Action)>) -> Schedule {
        Schedule {
            seed: 0,
            scenario: "manual".into(),
            nodes: 3,
            window_start: Duration::ZERO,
            window_end: Duration::from_secs(10),
            actions: actions
                .into_iter()
                .map(|(at_ms, action)| Timed { at: Duration::from_millis(at_ms), action })
                .collect(),
        }
    }

    fn between(one: u64, two: u64) -> Cut {
        Cut { groups: vec![vec![one], vec![two]] }
    }

    #[test]
    fn partitions_and_holds_reach_the_network() {
        let received = Arc::new(AtomicU64::new(0));
        let mut sim = counting_sim(received.clone());
        let schedule = manual(vec![
            (1000, Action::Partition { cut: between(1, 2), direction: Direction::TwoWay }),
            (2000, Action::Repair { cut: between(1, 2), direction: Direction::TwoWay }),
            (3000, Action::Partition { cut: between(1, 2), direction: Direction::OneWay }),
            (4000, Action::Repair { cut: between(1, 2), direction: Direction::OneWay }),
            (5000, Action::Partition { cut: between(2, 1), direction: Direction::OneWay }),
            (6000, Action::Repair { cut: between(2, 1), direction: Direction::OneWay }),
            (7000, Action::Hold { cut: between(1, 2) }),
            (8000, Action::Release { cut: between(1, 2) }),
        ]);
        let mut nemesis = ScheduledNemesis::new(schedule, Arc::new(NoFaultHooks));
        let mut counts = BTreeMap::new();
        for second in [1, 2, 3, 4, 5, 6, 7, 8, 9] {
            // Sample just before each action, after in-flight packets (at most 100 ms) landed.
            run_until(&mut sim, &mut nemesis, Duration::from_millis(second * 1000 - 1));
            counts.insert(second, received.load(Ordering::Relaxed));
        }
        let during = |second: u64| counts[&(second + 1)] - counts[&second];
        assert!(counts[&1] > 80, "packets flow before any fault: {counts:?}");
        assert!(during(1) < 15, "two-way partition drops node1 → node2: {counts:?}");
        assert!(during(2) > 80, "repair restores it: {counts:?}");
        assert!(during(3) < 15, "one-way node1 → node2 drops it: {counts:?}");
        assert!(during(5) > 80, "one-way node2 → node1 does not: {counts:?}");
        assert!(during(7) < 15, "hold keeps packets: {counts:?}");
        assert!(during(8) > 180, "release delivers the held ones and the new ones: {counts:?}");
        assert_eq!(nemesis.journal().len(), 8);
    }

    #[test]
    fn crash_restart_and_heal_reach_the_hosts() {
        let received = Arc::new(AtomicU64::new(0));
        let mut sim = counting_sim(received.clone());
        let hooks = Arc::new(RecordingHooks::default());
        let schedule = manual(vec![
            (500, Action::Crash { node: 3 }),
            (1000, Action::Restart { node: 3 }),
            (1500, Action::Crash { node: 1 }),
            (1600, Action::Partition { cut: between(1, 2), direction: Direction::TwoWay }),
            (1700, Action::Latency { cut: between(1, 2), latency_ms_max: 5000 }),
            (1800, Action::ClockRate { node: 2, rate: 1.2 }),
            (1900, Action::Storage { node: 2, fault: StorageFault::SlowFsync { delay_ms: 50 } }),
            (9000, Action::Restart { node: 1 }),
        ]);
        let mut nemesis = ScheduledNemesis::new(schedule, hooks.clone());
        run_until(&mut sim, &mut nemesis, Duration::from_millis(700));
        assert!(!sim.is_host_running("node3"));
        run_until(&mut sim, &mut nemesis, Duration::from_millis(1200));
        assert!(sim.is_host_running("node3"));
        run_until(&mut sim, &mut nemesis, Duration::from_millis(2000));
        assert!(!sim.is_host_running("node1"));
        assert_eq!(nemesis.crashed(), &BTreeSet::from([1]));
        let before_heal = received.load(Ordering::Relaxed);
        nemesis.heal(&mut sim);
        assert!(sim.is_host_running("node1"), "heal restarts crashed nodes");
        assert!(nemesis.crashed().is_empty());
        run_until(&mut sim, &mut nemesis, Duration::from_millis(3000));
        let after_heal = received.load(Ordering::Relaxed) - before_heal;
        // Repaired, and back to the baseline latency (≤ 100 ms), so most of the second's
        // packets arrive within it.
        assert!(after_heal > 80, "the healed link carries packets again: {after_heal}");
        let calls = hooks.calls.lock().expect("lock").clone();
        assert_eq!(calls[..2], ["clock 2 1.2".to_string(), "disk 2 Some(SlowFsync { delay_ms: 50 })".to_string()]);
        for node in 1..=3 {
            assert!(calls.contains(&format!("clock {node} 1")), "{calls:?}");
            assert!(calls.contains(&format!("disk {node} None")), "{calls:?}");
        }
        // Nothing after heal: the restart the schedule still held is dropped.
        run_until(&mut sim, &mut nemesis, Duration::from_millis(9500));
        assert!(sim.is_host_running("node1"));
        assert!(!nemesis.journal().iter().any(|timed| timed.at >= Duration::from_secs(9)));
    }
}
