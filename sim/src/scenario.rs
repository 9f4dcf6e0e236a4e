//! Scenario files: what one simulated run looks like (cluster, clients, workload, fault mix,
//! durations), read from TOML in `scenarios/`.
//!
//! A scenario is the fixed half of a run; the seed is the other. [`Scenario::load`] reads and
//! validates a file; every error names the field it is about (`cluster.nodes`), and every
//! field carries its unit in its name (`run_seconds`, `duration_ms_max`).
//!
//! The timeline of a run: clients start operations from 0 s to `workload.run_seconds`; the
//! nemesis injects faults only inside `[faults.window_start_seconds,
//! faults.window_end_seconds]`, which lies inside the run, and heals everything at the window's
//! end; once the run's operations stop, every pending send must complete and every device must
//! catch up within `heal.heal_seconds_max`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most nodes a simulated cluster may have (a Raft group of 7 tolerates 3 failures; more
/// nodes only slow the simulation down).
pub const NODES_MAX: u64 = 7;
/// Most shards a scenario may ask for.
pub const SHARDS_MAX: u32 = 1024;
/// Most users a scenario may create.
pub const USERS_MAX: u32 = 10_000;
/// Most devices one user may have (the node's sessions-per-user limit, DESIGN §9).
pub const DEVICES_PER_USER_MAX: u32 = 16;
/// Most members of one conversation (DESIGN §9).
pub const GROUP_SIZE_MAX: u32 = 1024;
/// Most conversations a scenario may create.
pub const CONVERSATIONS_MAX: u32 = 100_000;
/// Most operations one client may start per simulated second.
pub const OPERATIONS_PER_CLIENT_PER_SECOND_MAX: f64 = 1_000.0;
/// Longest run, in simulated seconds.
pub const RUN_SECONDS_MAX: u64 = 3_600;
/// Most fault starts per simulated minute.
pub const STARTS_PER_MINUTE_MAX: f64 = 600.0;
/// Longest fault latency spike, in milliseconds.
pub const LATENCY_MS_MAX: u64 = 60_000;
/// Longest extra fsync delay, in milliseconds.
pub const FSYNC_DELAY_MS_MAX: u64 = 60_000;

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports and replay commands (`leader-crash-loop`).
    pub name: String,
    /// The cluster.
    pub cluster: Cluster,
    /// The simulated users, their devices and conversations.
    pub clients: Clients,
    /// What the clients do.
    pub workload: Workload,
    /// The fault mix. Absent means no faults at all.
    #[serde(default)]
    pub faults: Faults,
    /// The liveness bound after faults heal.
    pub heal: Heal,
}

/// The cluster's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Number of nodes, 1..=[`NODES_MAX`]; hosts are named `node1`..`nodeN`.
    pub nodes: u64,
    /// Number of shards, 1..=[`SHARDS_MAX`].
    pub shards: u32,
}

impl Cluster {
    /// Votes a Raft group of this cluster needs to elect a leader or commit.
    pub fn quorum(&self) -> u64 {
        self.nodes / 2 + 1
    }
}

/// The simulated users. Every device of every user is one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clients {
    /// Number of users, 1..=[`USERS_MAX`].
    pub users: u32,
    /// Fewest devices (clients) a user has, at least 1.
    pub devices_per_user_min: u32,
    /// Most devices a user has, at most [`DEVICES_PER_USER_MAX`]; each user draws a count in
    /// the range from the seed.
    pub devices_per_user_max: u32,
    /// Number of conversations, 1..=[`CONVERSATIONS_MAX`].
    pub conversations: u32,
    /// Fewest members of a conversation, at least 2.
    pub group_size_min: u32,
    /// Most members of a conversation, at most `users` and [`GROUP_SIZE_MAX`].
    pub group_size_max: u32,
}

/// What each client does while the run lasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Operations each client starts per simulated second, in 0..=[`OPERATIONS_PER_CLIENT_PER_SECOND_MAX`].
    pub operations_per_client_per_second: f64,
    /// Share (0..=1) of operations that are history reads.
    pub history_read_share: f64,
    /// Share (0..=1) of operations that drop the connection and reconnect from the cursor.
    /// The rest, `1 - history_read_share - reconnect_share`, are sends.
    pub reconnect_share: f64,
    /// How long clients keep starting operations, in simulated seconds, 1..=[`RUN_SECONDS_MAX`].
    pub run_seconds: u64,
}

impl Workload {
    /// Share of operations that are sends.
    pub fn send_share(&self) -> f64 {
        (1.0 - self.history_read_share - self.reconnect_share).max(0.0)
    }
}

/// The fault mix: how often faults start, how long they last, which kinds in what proportion,
/// and the constraints every drawn schedule keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Simulated second from which faults may start.
    pub window_start_seconds: u64,
    /// Simulated second by which every fault has ended; the nemesis heals here. At most
    /// `workload.run_seconds`.
    pub window_end_seconds: u64,
    /// Mean number of fault starts per simulated minute inside the window (gaps between starts
    /// are drawn uniformly between 0 and twice the mean), 0..=[`STARTS_PER_MINUTE_MAX`].
    pub starts_per_minute: f64,
    /// Shortest fault, in milliseconds: a crashed node's downtime, a partition's length, and so
    /// on. Bounces are instantaneous.
    pub duration_ms_min: u64,
    /// Longest fault, in milliseconds.
    pub duration_ms_max: u64,
    /// Most nodes crashed (or bouncing) at the same moment.
    pub down_nodes_max: u64,
    /// Whether faults may leave no quorum: more than a minority crashed, a majority partition,
    /// or a combination of crashes, partitions, holds and disk errors that leaves no node able
    /// to reach a quorum both ways. When false, every drawn schedule keeps a quorum connected.
    pub allow_majority_loss: bool,
    /// Highest packet loss rate of a `loss` fault, in (0, 1]; each fault draws a rate between
    /// a tenth of it and all of it.
    pub loss_rate_max: f64,
    /// Highest maximum one-way latency of a `latency` fault, in milliseconds; each fault draws
    /// between half of it and all of it.
    pub latency_ms_max: u64,
    /// Largest clock-rate skew of a `clock_skew` fault, as a fraction in (0, 0.5]: a skewed
    /// node's clock runs at `1 ± skew`, the skew drawn between half of it and all of it.
    pub clock_rate_skew_max: f64,
    /// Highest failure rate of storage operations in a `disk_errors` fault, in (0, 1]; each
    /// fault draws between half of it and all of it.
    pub disk_error_rate_max: f64,
    /// Longest extra delay of each fsync in a `slow_fsync` fault, in milliseconds; each fault
    /// draws between half of it and all of it.
    pub fsync_delay_ms_max: u64,
    /// Relative weight of each fault kind; a kind with weight 0 is never drawn.
    pub weights: FaultWeights,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            window_start_seconds: 0,
            window_end_seconds: 0,
            starts_per_minute: 0.0,
            duration_ms_min: 1_000,
            duration_ms_max: 5_000,
            down_nodes_max: 0,
            allow_majority_loss: false,
            loss_rate_max: 0.2,
            latency_ms_max: 1_000,
            clock_rate_skew_max: 0.1,
            disk_error_rate_max: 1.0,
            fsync_delay_ms_max: 200,
            weights: FaultWeights::default(),
        }
    }
}

impl Faults {
    /// Whether this mix can draw any fault at all.
    pub fn any(&self) -> bool {
        self.weights.total() > 0 && self.starts_per_minute > 0.0 && self.window_end_seconds > self.window_start_seconds
    }
}

/// Relative weights of the fault kinds (see `docs/SIMULATION.md` for what each does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultWeights {
    /// Crash a node, restart it after the fault's duration.
    pub crash: u32,
    /// Restart a node in place (crash and immediate restart).
    pub bounce: u32,
    /// Crash and restart every node in turn, one at a time.
    pub rolling_restart: u32,
    /// Cut a minority of nodes off from the rest, both ways.
    pub partition_minority: u32,
    /// Split the nodes into groups none of which holds a quorum, both ways. Needs
    /// `allow_majority_loss`.
    pub partition_majority: u32,
    /// Cut a minority off from the rest in one direction only.
    pub partition_oneway_minority: u32,
    /// Split the nodes into groups none of which holds a quorum, each group unable to send
    /// to the later ones. Needs `allow_majority_loss`.
    pub partition_oneway_majority: u32,
    /// Drop packets on some links.
    pub loss: u32,
    /// Raise the maximum latency on some links (reorders packets).
    pub latency: u32,
    /// Hold every packet on some links, then deliver them all at once.
    pub hold: u32,
    /// Run a node's clock faster or slower than the others.
    pub clock_skew: u32,
    /// Fail a share of a node's storage operations with I/O errors.
    pub disk_errors: u32,
    /// Delay each of a node's fsyncs.
    pub slow_fsync: u32,
}

impl FaultWeights {
    /// Sum of all weights.
    pub fn total(&self) -> u64 {
        self.entries().iter().map(|(_, weight)| u64::from(*weight)).sum()
    }

    /// Every kind's TOML key and weight, in a fixed order (the order the nemesis draws in).
    pub fn entries(&self) -> [(&'static str, u32); 13] {
        [
            ("crash", self.crash),
            ("bounce", self.bounce),
            ("rolling_restart", self.rolling_restart),
            ("partition_minority", self.partition_minority),
            ("partition_majority", self.partition_majority),
            ("partition_oneway_minority", self.partition_oneway_minority),
            ("partition_oneway_majority", self.partition_oneway_majority),
            ("loss", self.loss),
            ("latency", self.latency),
            ("hold", self.hold),
            ("clock_skew", self.clock_skew),
            ("disk_errors", self.disk_errors),
            ("slow_fsync", self.slow_fsync),
        ]
    }
}

/// How long the cluster gets to converge once faults heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heal {
    /// Simulated seconds after the run's operations stop within which every pending send
    /// completes and every device catches up (liveness), at least 1.
    pub heal_seconds_max: u64,
}

/// Why a scenario could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("scenario is not valid TOML: {message}")]
    Syntax {
        /// The parser's message, with the line it stopped at.
        message: String,
    },
    /// A field is missing, unknown, or of the wrong type.
    #[error("scenario field `{field}`{}: {message}", line_suffix(*.line))]
    Field {
        /// Dotted path of the field (`cluster.nodes`); for a missing or unknown field, the
        /// table it belongs in (the message names the field itself).
        field: String,
        /// 1-based line in the file, when known.
        line: Option<usize>,
        /// What was wrong.
        message: String,
    },
    /// A field parsed but its value is out of range or contradicts another field.
    #[error("scenario field `{field}`: expected {expected}, got {got}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What would be accepted.
        expected: String,
        /// What the file says.
        got: String,
    },
    /// An error in a named file.
    #[error("{path}: {error}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        error: Box<ScenarioError>,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|line| format!(" (line {line})")).unwrap_or_default()
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: path.to_path_buf(), source })?;
        Scenario::from_str(&text)
            .map_err(|error| ScenarioError::InFile { path: path.to_path_buf(), error: Box::new(error) })
    }

    /// Parses and validates a scenario from TOML text.
    #[allow(clippy::should_implement_trait)] // the inherent name mirrors `load`; FromStr is also implemented
    pub fn from_str(text: &str) -> Result<Scenario, ScenarioError> {
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|error| ScenarioError::Syntax { message: error.to_string() })?;
        let scenario: Scenario = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let field = error.path().to_string();
            let inner = error.into_inner();
            let line = inner.span().map(|span| line_of(text, span.start));
            ScenarioError::Field { field, line, message: inner.message().to_string() }
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks every range and cross-field constraint; [`Scenario::from_str`] calls it.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let Scenario { name, cluster, clients, workload, faults, heal } = self;
        require(
            "name",
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "a non-empty name of letters, digits, '-' and '_'",
            name,
        )?;

        require("cluster.nodes", (1..=NODES_MAX).contains(&cluster.nodes), format!("1..={NODES_MAX}"), cluster.nodes)?;
        require(
            "cluster.shards",
            (1..=SHARDS_MAX).contains(&cluster.shards),
            format!("1..={SHARDS_MAX}"),
            cluster.shards,
        )?;

        require("clients.users", (1..=USERS_MAX).contains(&clients.users), format!("1..={USERS_MAX}"), clients.users)?;
        require(
            "clients.devices_per_user_min",
            clients.devices_per_user_min >= 1,
            "at least 1",
            clients.devices_per_user_min,
        )?;
        require(
            "clients.devices_per_user_max",
            (clients.devices_per_user_min..=DEVICES_PER_USER_MAX).contains(&clients.devices_per_user_max),
            format!("{}..={DEVICES_PER_USER_MAX} (devices_per_user_min..)", clients.devices_per_user_min),
            clients.devices_per_user_max,
        )?;
        require(
            "clients.conversations",
            (1..=CONVERSATIONS_MAX).contains(&clients.conversations),
            format!("1..={CONVERSATIONS_MAX}"),
            clients.conversations,
        )?;
        require("clients.group_size_min", clients.group_size_min >= 2, "at least 2", clients.group_size_min)?;
        let group_size_limit = clients.users.min(GROUP_SIZE_MAX);
        require(
            "clients.group_size_max",
            (clients.group_size_min..=group_size_limit).contains(&clients.group_size_max),
            format!("{}..={group_size_limit} (group_size_min.., at most users)", clients.group_size_min),
            clients.group_size_max,
        )?;

        require(
            "workload.operations_per_client_per_second",
            (0.0..=OPERATIONS_PER_CLIENT_PER_SECOND_MAX).contains(&workload.operations_per_client_per_second),
            format!("0..={OPERATIONS_PER_CLIENT_PER_SECOND_MAX}"),
            workload.operations_per_client_per_second,
        )?;
        require_share("workload.history_read_share", workload.history_read_share)?;
        require_share("workload.reconnect_share", workload.reconnect_share)?;
        require(
            "workload.reconnect_share",
            workload.history_read_share + workload.reconnect_share <= 1.0,
            "history_read_share + reconnect_share at most 1",
            workload.history_read_share + workload.reconnect_share,
        )?;
        require(
            "workload.run_seconds",
            (1..=RUN_SECONDS_MAX).contains(&workload.run_seconds),
            format!("1..={RUN_SECONDS_MAX}"),
            workload.run_seconds,
        )?;

        require("heal.heal_seconds_max", heal.heal_seconds_max >= 1, "at least 1", heal.heal_seconds_max)?;

        validate_faults(cluster, workload, faults)
    }

    /// Simulated time a run of this scenario may take at most: the run, then the heal bound.
    pub fn simulated_seconds_max(&self) -> u64 {
        self.workload.run_seconds + self.heal.heal_seconds_max
    }
}

impl std::str::FromStr for Scenario {
    type Err = ScenarioError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Scenario::from_str(text)
    }
}

fn validate_faults(cluster: &Cluster, workload: &Workload, faults: &Faults) -> Result<(), ScenarioError> {
    require(
        "faults.window_start_seconds",
        faults.window_start_seconds <= faults.window_end_seconds,
        format!("at most window_end_seconds ({})", faults.window_end_seconds),
        faults.window_start_seconds,
    )?;
    require(
        "faults.window_end_seconds",
        faults.window_end_seconds <= workload.run_seconds,
        format!("at most workload.run_seconds ({})", workload.run_seconds),
        faults.window_end_seconds,
    )?;
    require(
        "faults.starts_per_minute",
        (0.0..=STARTS_PER_MINUTE_MAX).contains(&faults.starts_per_minute),
        format!("0..={STARTS_PER_MINUTE_MAX}"),
        faults.starts_per_minute,
    )?;
    require("faults.duration_ms_min", faults.duration_ms_min >= 1, "at least 1", faults.duration_ms_min)?;
    require(
        "faults.duration_ms_max",
        faults.duration_ms_max >= faults.duration_ms_min,
        format!("at least duration_ms_min ({})", faults.duration_ms_min),
        faults.duration_ms_max,
    )?;
    require(
        "faults.down_nodes_max",
        faults.down_nodes_max <= cluster.nodes,
        format!("at most cluster.nodes ({})", cluster.nodes),
        faults.down_nodes_max,
    )?;
    if !faults.allow_majority_loss {
        require(
            "faults.down_nodes_max",
            faults.down_nodes_max < cluster.quorum(),
            format!("less than a quorum ({}) unless allow_majority_loss = true", cluster.quorum()),
            faults.down_nodes_max,
        )?;
    }
    require(
        "faults.loss_rate_max",
        faults.loss_rate_max > 0.0 && faults.loss_rate_max <= 1.0,
        "a rate in (0, 1]",
        faults.loss_rate_max,
    )?;
    require(
        "faults.latency_ms_max",
        (1..=LATENCY_MS_MAX).contains(&faults.latency_ms_max),
        format!("1..={LATENCY_MS_MAX}"),
        faults.latency_ms_max,
    )?;
    require(
        "faults.clock_rate_skew_max",
        faults.clock_rate_skew_max > 0.0 && faults.clock_rate_skew_max <= 0.5,
        "a fraction in (0, 0.5]",
        faults.clock_rate_skew_max,
    )?;
    require(
        "faults.disk_error_rate_max",
        faults.disk_error_rate_max > 0.0 && faults.disk_error_rate_max <= 1.0,
        "a rate in (0, 1]",
        faults.disk_error_rate_max,
    )?;
    require(
        "faults.fsync_delay_ms_max",
        (1..=FSYNC_DELAY_MS_MAX).contains(&faults.fsync_delay_ms_max),
        format!("1..={FSYNC_DELAY_MS_MAX}"),
        faults.fsync_delay_ms_max,
    )?;

    let weights = &faults.weights;
    let crashes = weights.crash + weights.bounce + weights.rolling_restart;
    require(
        "faults.down_nodes_max",
        crashes == 0 || faults.down_nodes_max >= 1,
        "at least 1 when crash, bounce or rolling_restart has a weight",
        faults.down_nodes_max,
    )?;
    // A minority partition needs a non-empty minority: 3 nodes or more.
    for (field, weight) in [
        ("faults.weights.partition_minority", weights.partition_minority),
        ("faults.weights.partition_oneway_minority", weights.partition_oneway_minority),
    ] {
        require(
            field,
            weight == 0 || cluster.nodes >= 3,
            "0 with fewer than 3 nodes (no minority to cut off)",
            weight,
        )?;
    }
    for (field, weight) in [
        ("faults.weights.partition_majority", weights.partition_majority),
        ("faults.weights.partition_oneway_majority", weights.partition_oneway_majority),
    ] {
        require(field, weight == 0 || faults.allow_majority_loss, "0 unless allow_majority_loss = true", weight)?;
        require(field, weight == 0 || cluster.nodes >= 2, "0 with a single node (no links)", weight)?;
    }
    for (field, weight) in [
        ("faults.weights.loss", weights.loss),
        ("faults.weights.latency", weights.latency),
        ("faults.weights.hold", weights.hold),
    ] {
        require(field, weight == 0 || cluster.nodes >= 2, "0 with a single node (no links)", weight)?;
    }
    Ok(())
}

fn require(
    field: &'static str,
    ok: bool,
    expected: impl Into<String>,
    got: impl fmt::Display,
) -> Result<(), ScenarioError> {
    if ok {
        Ok(())
    } else {
        Err(ScenarioError::Invalid { field, expected: expected.into(), got: got.to_string() })
    }
}

fn require_share(field: &'static str, share: f64) -> Result<(), ScenarioError> {
    require(field, (0.0..=1.0).contains(&share), "a share in 0..=1", share)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// The directory holding the repository's scenario files (`<workspace>/scenarios`).
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("scenarios")
}

/// Loads every `*.toml` file in `dir`, sorted by file name.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<Vec<(PathBuf, Scenario)>, ScenarioError> {
    let dir = dir.as_ref();
    let entries = std::fs::read_dir(dir).map_err(|source| ScenarioError::Read { path: dir.to_path_buf(), source })?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| ScenarioError::Read { path: dir.to_path_buf(), source })?.path();
        if path.extension().is_some_and(|extension| extension == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    paths.into_iter().map(|path| Scenario::load(&path).map(|scenario| (path, scenario))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "minimal"

[cluster]
nodes = 3
shards = 8

[clients]
users = 4
devices_per_user_min = 1
devices_per_user_max = 2
conversations = 2
group_size_min = 2
group_size_max = 3

[workload]
operations_per_client_per_second = 1.0
history_read_share = 0.1
reconnect_share = 0.1
run_seconds = 20

[faults]
window_start_seconds = 2
window_end_seconds = 15
starts_per_minute = 10.0
down_nodes_max = 1

[faults.weights]
crash = 1

[heal]
heal_seconds_max = 10
"#;

    fn error_of(text: &str) -> ScenarioError {
        Scenario::from_str(text).expect_err("the scenario should be refused")
    }

    #[test]
    fn minimal_parses_with_defaults() {
        let scenario = Scenario::from_str(MINIMAL).expect("parses");
        assert_eq!(scenario.cluster.quorum(), 2);
        assert_eq!(scenario.faults.weights.crash, 1);
        assert_eq!(scenario.faults.duration_ms_max, Faults::default().duration_ms_max);
        assert!((scenario.workload.send_share() - 0.8).abs() < 1e-9);
        assert_eq!(scenario.simulated_seconds_max(), 30);
    }

    #[test]
    fn wrong_type_names_the_field_and_line() {
        let error = error_of(&MINIMAL.replace("shards = 8", "shards = \"eight\""));
        match &error {
            ScenarioError::Field { field, line, .. } => {
                assert_eq!(field, "cluster.shards");
                assert_eq!(*line, Some(6));
            }
            other => panic!("expected a field error, got {other:?}"),
        }
        assert!(error.to_string().contains("cluster.shards"), "{error}");
    }

    #[test]
    fn unknown_field_names_table_and_key() {
        let error = error_of(&MINIMAL.replace("crash = 1", "crash = 1\ncrsh = 2"));
        let text = error.to_string();
        assert!(text.contains("faults.weights"), "{text}");
        assert!(text.contains("crsh"), "{text}");
    }

    #[test]
    fn missing_field_is_named() {
        let error = error_of(&MINIMAL.replace("run_seconds = 20\n", ""));
        let text = error.to_string();
        assert!(text.contains("workload"), "{text}");
        assert!(text.contains("run_seconds"), "{text}");
    }

    #[test]
    fn syntax_error_is_reported() {
        assert!(matches!(error_of("name = \n"), ScenarioError::Syntax { .. }));
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let cases = [
            ("nodes = 3", "nodes = 8", "cluster.nodes"),
            ("nodes = 3", "nodes = 0", "cluster.nodes"),
            ("shards = 8", "shards = 0", "cluster.shards"),
            ("heal_seconds_max = 10", "heal_seconds_max = 0", "heal.heal_seconds_max"),
            ("group_size_max = 3", "group_size_max = 5", "clients.group_size_max"),
            ("devices_per_user_max = 2", "devices_per_user_max = 17", "clients.devices_per_user_max"),
            ("reconnect_share = 0.1", "reconnect_share = 0.95", "workload.reconnect_share"),
            ("window_end_seconds = 15", "window_end_seconds = 21", "faults.window_end_seconds"),
            ("window_start_seconds = 2", "window_start_seconds = 16", "faults.window_start_seconds"),
            ("down_nodes_max = 1", "down_nodes_max = 2", "faults.down_nodes_max"),
            ("down_nodes_max = 1", "down_nodes_max = 0", "faults.down_nodes_max"),
            ("crash = 1", "partition_majority = 1", "faults.weights.partition_majority"),
            ("name = \"minimal\"", "name = \"has space\"", "name"),
        ];
        for (from, to, field) in cases {
            let text = MINIMAL.replace(from, to);
            assert_ne!(text, MINIMAL, "{from} not found");
            match error_of(&text) {
                ScenarioError::Invalid { field: named, .. } => assert_eq!(named, field, "{from} -> {to}"),
                other => panic!("{from} -> {to}: expected an invalid field, got {other:?}"),
            }
        }
    }

    #[test]
    fn majority_loss_allowed_accepts_majority_faults() {
        let text = MINIMAL
            .replace("crash = 1", "partition_majority = 1")
            .replace("down_nodes_max = 1", "down_nodes_max = 2\nallow_majority_loss = true");
        Scenario::from_str(&text).expect("majority faults are fine when allowed");
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("natter-scenario-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad.toml");
        std::fs::write(&path, MINIMAL.replace("nodes = 3", "nodes = 9")).expect("write");
        let error = Scenario::load(&path).expect_err("refused");
        let text = error.to_string();
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert!(text.contains("bad.toml") && text.contains("cluster.nodes"), "{text}");
    }

    #[test]
    fn every_scenario_file_loads_and_validates() {
        let scenarios = load_dir(scenarios_dir()).unwrap_or_else(|error| panic!("{error}"));
        let names: Vec<&str> = scenarios.iter().map(|(_, scenario)| scenario.name.as_str()).collect();
        for expected in [
            "steady-state",
            "leader-crash-loop",
            "minority-partition",
            "majority-flapping-partition",
            "lossy-reordering-network",
            "rolling-restart",
            "slow-and-failing-disk",
            "clock-skew",
            "five-nodes-two-failures",
        ] {
            assert!(names.contains(&expected), "scenario {expected} missing from {names:?}");
        }
        for (path, scenario) in &scenarios {
            let stem = path.file_stem().and_then(|stem| stem.to_str()).expect("utf-8 file name");
            assert_eq!(stem, scenario.name, "{}: the name should match the file name", path.display());
        }
    }
}
