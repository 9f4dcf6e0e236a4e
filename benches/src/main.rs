//! `natter-bench`: natter's load generator, always measured against a baseline in the same run.
//!
//! - `natter-bench propose`: Raft proposals (`Command::Append`) on a loopback cluster of real
//!   nodes started in this process, from closed-loop proposers.
//! - `natter-bench etcd-put`: the same closed loop against etcd 3.4 (`/v3/kv/put` through its
//!   HTTP/JSON gateway), on a 3-member cluster that `benches/etcd-cluster.sh` starts.
//! - `natter-bench compare`: both, back to back, and the natter/etcd ratios.
//! - `natter-bench messages`: messages sent by `natter-client`s over QUIC to a cluster of
//!   `natter-node` processes, each to a recipient online on another node: committed messages
//!   per second, send→ack and send→delivery latencies, every acknowledged message delivered.
//! - `natter-bench idle-sessions`: a node's resident memory as idle client sessions are added.
//! - `natter-bench idle-websockets`: the same for idle WebSocket sessions of the browser edge,
//!   on a single node process, against DESIGN's 8 KiB per connection.
//! - `natter-bench ws-fanout`: one group conversation whose members are each on a WebSocket,
//!   one sender: committed messages and deliveries per second, send→delivery latency, and
//!   every member got every message exactly once, in order.
//!
//! Every run is bounded in time, talks only to 127.0.0.1 and stops by itself. Data goes to a
//! temp dir on the real disk (a tmpfs would make fsync free and the figures meaningless).
//! Results are recorded in `docs/BENCHMARKS.md`.

mod clients;
mod etcd;
mod histogram;
mod natter;
mod report;
mod websockets;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use natter_node::rate::RateLimits;
use natter_raft::types::Runtime;
use natter_raft::Durability;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter};

use crate::report::RunReport;

/// Longest run per proposer count, in seconds.
pub const SECONDS_MAX: u64 = 120;
/// Most concurrent proposers (tasks for natter, threads for etcd).
pub const PROPOSERS_MAX: usize = 1024;
/// Most nodes of the natter cluster.
pub const NODES_MAX: u64 = 5;
/// Most shards of the natter cluster.
pub const SHARDS_MAX: u32 = 1024;
/// Most concurrent senders of `messages` (each is two client connections).
pub const SENDERS_MAX: usize = 1024;
/// Most idle sessions `idle-sessions` opens.
pub const IDLE_SESSIONS_MAX: usize = 100_000;
/// Most idle WebSockets `idle-websockets` opens.
pub const IDLE_WEBSOCKETS_MAX: usize = 100_000;
/// Most outstanding sends of the `ws-fanout` sender.
pub const FANOUT_WINDOW_MAX: usize = natter_proto::limits::OUTSTANDING_SENDS_MAX;
/// Shortest body of `messages`: the send time is written into its first 16 bytes.
pub const BODY_BYTES_MIN: usize = 16;
/// The send rate limits the process benchmarks give their nodes unless told to keep the
/// defaults: far above anything a sender reaches here.
pub const BENCH_SENDS_PER_SECOND: u32 = 1_000_000;
/// Filesystems on which fsync costs nothing, so durability would not be measured.
const MEMORY_FILESYSTEMS: [&str; 2] = ["tmpfs", "ramfs"];

/// natter's load generator.
#[derive(Debug, Parser)]
#[command(name = "natter-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Proposals (message appends) on a loopback natter cluster started in this process.
    Propose(ProposeArgs),
    /// Puts into a 3-member etcd 3.4 cluster on loopback (the baseline).
    EtcdPut(EtcdArgs),
    /// Both, back to back, with a table of natter/etcd ratios.
    Compare(CompareArgs),
    /// Messages through natter-client over QUIC on a cluster of natter-node processes.
    Messages(MessagesArgs),
    /// Resident memory of a natter-node process as idle client sessions are added.
    IdleSessions(IdleArgs),
    /// Resident memory and CPU of one natter-node process as idle WebSocket sessions are added.
    IdleWebsockets(IdleWebsocketsArgs),
    /// One group conversation, every member on a WebSocket, every message to every member.
    WsFanout(FanoutArgs),
}

/// Options of the commands that run `natter-node` processes.
#[derive(Debug, Args)]
struct ProcessArgs {
    /// Nodes in the cluster (shards are replicated on min(3, nodes)).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Shards (Raft groups).
    #[arg(long, default_value_t = 64)]
    shards: u32,
    /// The natter-node executable; by default the one next to natter-bench (build both with
    /// `cargo build --release -p natter-node -p natter-bench`).
    #[arg(long)]
    node_binary: Option<PathBuf>,
    /// Where the cluster's temp dir goes; must be on a real disk (not tmpfs).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Keep the nodes' default send rate limits (200/s per connection, 400/s per user)
    /// instead of raising them out of the way: the benchmarks measure the cluster, not the
    /// limiter (one closed-loop sender would otherwise stop at 200 sends a second).
    #[arg(long)]
    default_rate_limits: bool,
}

#[derive(Debug, Args)]
struct MessagesArgs {
    /// Concurrent closed-loop senders (each with its own online recipient); one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,64,512")]
    senders: Vec<usize>,
    /// Length of each run, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Bytes of each message body (at least 16: the send time is written into it).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Also run etcd puts with the same client counts (the baseline) and print ratios.
    #[arg(long)]
    etcd: bool,
    /// The script that starts and stops etcd.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/etcd-cluster.sh"))]
    etcd_script: PathBuf,
    #[command(flatten)]
    cluster: ProcessArgs,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Idle sessions to open on node 1, in four equal steps.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    #[command(flatten)]
    cluster: ProcessArgs,
}

#[derive(Debug, Args)]
// One node process unless told otherwise: its memory and CPU are then the sessions' alone.
#[command(mut_arg("nodes", |nodes| nodes.default_value("1")))]
struct IdleWebsocketsArgs {
    /// Idle WebSockets to open on node 1, one user each; a list (ascending) samples the node
    /// after each count.
    #[arg(long, value_delimiter = ',', default_value = "15000")]
    connections: Vec<usize>,
    #[command(flatten)]
    cluster: ProcessArgs,
}

#[derive(Debug, Args)]
struct FanoutArgs {
    /// Members of the conversation, each a user with one WebSocket (round-robin over the nodes).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// How long the sender sends, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Sends the sender keeps outstanding (a new one goes as each `send_ok` comes back).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Bytes of each message body (at least 16: the send time is written into it).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// How long the group sits idle after every member joined, before sending; the nodes'
    /// CPU use over this time is the "idle group" column.
    #[arg(long, default_value_t = 3)]
    settle_seconds: u64,
    #[command(flatten)]
    cluster: ProcessArgs,
}

/// Options every command shares.
#[derive(Debug, Args)]
struct RunArgs {
    /// Concurrent closed-loop proposers; one run per value, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    proposers: Vec<usize>,
    /// Length of each run, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Where the temp data dirs go; must be on a real disk (not tmpfs).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct NatterArgs {
    /// Nodes in the cluster (shards are replicated on min(3, nodes)).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Shards (Raft groups).
    #[arg(long, default_value_t = 64)]
    shards: u32,
    /// Bytes of each message body.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Which node each proposal goes to: the next in turn (most are forwarded to the leader),
    /// or the shard's leader (none forwarded; a diagnostic).
    #[arg(long, value_enum, default_value = "round-robin")]
    route: natter::Route,
    /// Skip fsync on commit (a diagnostic: shows what fsync costs; not comparable with etcd).
    #[arg(long)]
    no_fsync: bool,
}

#[derive(Debug, Args)]
struct EtcdOnlyArgs {
    /// Bytes of each value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Client URLs of a running etcd cluster (loopback only); without them a 3-member cluster
    /// is started with the script for the duration of the command.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The script that starts and stops etcd.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/etcd-cluster.sh"))]
    etcd_script: PathBuf,
}

#[derive(Debug, Args)]
struct ProposeArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    natter: NatterArgs,
}

#[derive(Debug, Args)]
struct EtcdArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    etcd: EtcdOnlyArgs,
}

#[derive(Debug, Args)]
struct CompareArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    natter: NatterArgs,
    #[command(flatten)]
    etcd: EtcdOnlyArgs,
}

/// Switches logging off once measuring is over, unless `NATTER_LOG` asked for logs: stopping
/// three nodes at once makes openraft log an error for every message to a stopped group.
static QUIET_LOGS: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

fn quiet_logs() {
    if let Some(quiet) = QUIET_LOGS.get() {
        quiet();
    }
}

fn main() -> anyhow::Result<()> {
    let (filter, explicit) = match EnvFilter::try_from_env("NATTER_LOG") {
        Ok(filter) => (filter, true),
        Err(_) => (EnvFilter::new("warn,openraft=error"), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry().with(filter).with(fmt::layer().with_writer(std::io::stderr)).init();
    if !explicit {
        let _ = QUIET_LOGS.set(Box::new(move || {
            let _ = handle.reload(EnvFilter::new("off"));
        }));
    }
    let cli = Cli::parse();
    match cli.command {
        Commands::Propose(args) => {
            check_run(&args.run)?;
            check_natter(&args.natter)?;
            print_machine(&args.run.dir);
            let reports = propose(&args.run, &args.natter)?;
            println!("\n{}", report::runs_table(&reports));
        }
        Commands::EtcdPut(args) => {
            check_run(&args.run)?;
            check_etcd(&args.etcd)?;
            print_machine(&args.run.dir);
            let reports = etcd_puts(&args.run, &args.etcd)?;
            println!("\n{}", report::runs_table(&reports));
        }
        Commands::Compare(args) => {
            check_run(&args.run)?;
            check_natter(&args.natter)?;
            check_etcd(&args.etcd)?;
            print_machine(&args.run.dir);
            let natter = propose(&args.run, &args.natter)?;
            let etcd = etcd_puts(&args.run, &args.etcd)?;
            let all: Vec<RunReport> = natter.iter().chain(&etcd).cloned().collect();
            println!("\n{}", report::runs_table(&all));
            println!("{}", report::ratio_table(&natter, &etcd));
            println!("(throughput ratio > 1 and latency ratios < 1 favour natter)");
        }
        Commands::Messages(args) => {
            check_messages(&args)?;
            print_machine(&args.cluster.dir);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let cluster = start_processes(&args.cluster)?;
            let duration = Duration::from_secs(args.seconds);
            let mut reports = Vec::new();
            for (run, &senders) in args.senders.iter().enumerate() {
                let report = runtime.block_on(clients::run_messages(&cluster, run, senders, args.body_bytes, duration));
                println!("{}", report.line());
                reports.push(report);
            }
            drop(cluster);
            println!("\n{}", report::messages_table(&reports));
            if args.etcd {
                let run =
                    RunArgs { proposers: args.senders.clone(), seconds: args.seconds, dir: args.cluster.dir.clone() };
                let etcd = EtcdOnlyArgs {
                    value_bytes: args.body_bytes,
                    endpoints: Vec::new(),
                    etcd_script: args.etcd_script.clone(),
                };
                let baseline = etcd_puts(&run, &etcd)?;
                println!("\n{}", report::runs_table(&baseline));
                println!("{}", report::ratio_table(&report::messages_as_runs(&reports), &baseline));
                println!("(natter: committed client messages and send→ack; etcd: puts; ratios > 1 in throughput and < 1 in latency favour natter)");
            }
            if reports.iter().any(|report| report.undelivered > 0) {
                bail!("acknowledged messages were not delivered");
            }
        }
        Commands::IdleSessions(args) => {
            if args.sessions == 0 || args.sessions > IDLE_SESSIONS_MAX {
                bail!("--sessions must be in 1..={IDLE_SESSIONS_MAX}, got {}", args.sessions);
            }
            check_processes(&args.cluster)?;
            print_machine(&args.cluster.dir);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let cluster = start_processes(&args.cluster)?;
            let steps: Vec<usize> = (1..=4).map(|step| (args.sessions * step).div_ceil(4)).collect();
            let samples = runtime.block_on(clients::run_idle(&cluster, &steps))?;
            drop(cluster);
            println!("\n{}", report::idle_table("session", &samples));
        }
        Commands::IdleWebsockets(args) => {
            let steps = check_idle_websockets(&args)?;
            print_machine(&args.cluster.dir);
            let total = steps.last().copied().unwrap_or(0) as u64;
            // Raised before the node starts, so it inherits the limit for its side of the sockets.
            let open_files = websockets::raise_open_files(total + websockets::OPEN_FILES_SPARE)?;
            println!("open files: soft limit {open_files} (this process and the node)");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let cluster = start_processes(&args.cluster)?;
            let samples = runtime.block_on(websockets::run_idle_websockets(&cluster, &steps))?;
            drop(cluster);
            println!("\n{}", report::idle_table("websocket", &samples));
            let per_connection = websockets::idle_kib_per_connection(&samples).unwrap_or(f64::NAN);
            let target = websockets::IDLE_WEBSOCKET_KIB_TARGET;
            let last = samples.last().expect("a sample per step");
            println!(
                "idle-websockets: {} connections, {per_connection:.2} KiB per connection (DESIGN: ≤ {target} KiB, {}), \
                 node CPU {:.1}% of a core idle (over {} s; {:.1}% with none)",
                last.sessions,
                if per_connection <= target { "met" } else { "MISSED" },
                last.cpu_percent,
                websockets::IDLE_CPU_WINDOW.as_secs(),
                samples[0].cpu_percent,
            );
        }
        Commands::WsFanout(args) => {
            check_fanout(&args)?;
            print_machine(&args.cluster.dir);
            websockets::raise_open_files(args.members as u64 + 1 + websockets::OPEN_FILES_SPARE)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let cluster = start_processes(&args.cluster)?;
            let duration = Duration::from_secs(args.seconds);
            let report = runtime.block_on(websockets::run_fanout(
                &cluster,
                args.members,
                args.window,
                args.body_bytes,
                duration,
                Duration::from_secs(args.settle_seconds),
            ))?;
            drop(cluster);
            println!("\n{}", report::fanout_table(&report));
            for failure in &report.failures {
                println!("  {failure}");
            }
            println!("{}", report.line());
            if !report.verified() {
                bail!("not every member got every message exactly once and in order");
            }
        }
    }
    Ok(())
}

/// Refuses idle-websocket options outside the limits; the counts to sample at, ascending.
fn check_idle_websockets(args: &IdleWebsocketsArgs) -> anyhow::Result<Vec<usize>> {
    let counts = &args.connections;
    if counts.is_empty() || counts.iter().any(|&count| count == 0 || count > IDLE_WEBSOCKETS_MAX) {
        bail!("--connections must list counts in 1..={IDLE_WEBSOCKETS_MAX}, got {counts:?}");
    }
    check_processes(&args.cluster)?;
    let mut steps = counts.clone();
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}

/// Refuses fan-out options outside the limits.
fn check_fanout(args: &FanoutArgs) -> anyhow::Result<()> {
    let members_max = natter_proto::limits::MEMBERS_MAX;
    if !(2..=members_max).contains(&args.members) {
        bail!("--members must be in 2..={members_max}, got {}", args.members);
    }
    check_seconds(args.seconds)?;
    if args.window == 0 || args.window > FANOUT_WINDOW_MAX {
        bail!("--window must be in 1..={FANOUT_WINDOW_MAX}, got {}", args.window);
    }
    check_stamped_body(args.body_bytes)?;
    check_processes(&args.cluster)
}

/// Refuses messaging options outside the limits.
fn check_messages(args: &MessagesArgs) -> anyhow::Result<()> {
    if args.senders.is_empty() || args.senders.iter().any(|&count| count == 0 || count > SENDERS_MAX) {
        bail!("--senders must list counts in 1..={SENDERS_MAX}, got {:?}", args.senders);
    }
    check_seconds(args.seconds)?;
    check_stamped_body(args.body_bytes)?;
    check_processes(&args.cluster)
}

/// Refuses a run length outside the limits.
fn check_seconds(seconds: u64) -> anyhow::Result<()> {
    if seconds == 0 || seconds > SECONDS_MAX {
        bail!("--seconds must be in 1..={SECONDS_MAX}, got {seconds}");
    }
    Ok(())
}

/// Refuses a body too short for its send time, or over the protocol's limit.
fn check_stamped_body(body_bytes: usize) -> anyhow::Result<()> {
    let body_max = natter_proto::limits::BODY_BYTES_MAX;
    if body_bytes < BODY_BYTES_MIN || body_bytes > body_max {
        bail!("--body-bytes must be in {BODY_BYTES_MIN}..={body_max}, got {body_bytes}");
    }
    Ok(())
}

/// Refuses cluster options outside the limits, and a data dir on a memory filesystem.
fn check_processes(args: &ProcessArgs) -> anyhow::Result<()> {
    check_cluster_size(args.nodes, args.shards)?;
    check_real_disk(&args.dir)
}

/// Refuses node and shard counts outside the limits.
fn check_cluster_size(nodes: u64, shards: u32) -> anyhow::Result<()> {
    if nodes == 0 || nodes > NODES_MAX {
        bail!("--nodes must be in 1..={NODES_MAX}, got {nodes}");
    }
    if shards == 0 || shards > SHARDS_MAX {
        bail!("--shards must be in 1..={SHARDS_MAX}, got {shards}");
    }
    Ok(())
}

/// Starts the node processes of `args`, from the given binary or the one next to this one.
fn start_processes(args: &ProcessArgs) -> anyhow::Result<clients::ProcessCluster> {
    let rate_limits = if args.default_rate_limits {
        RateLimits::default()
    } else {
        RateLimits {
            sends_per_second_per_connection: BENCH_SENDS_PER_SECOND,
            sends_per_second_per_user: BENCH_SENDS_PER_SECOND,
            ..RateLimits::default()
        }
    };
    println!(
        "rate limits: {} sends/s per connection, {} per user{}",
        rate_limits.sends_per_second_per_connection,
        rate_limits.sends_per_second_per_user,
        if args.default_rate_limits {
            " (the defaults)"
        } else {
            " (raised out of the way; --default-rate-limits keeps them)"
        }
    );
    let exe_dir = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf));
    let binary = natter_cli::local::locate_node_binary(args.node_binary.as_deref(), exe_dir.as_deref(), None)
        .context("finding natter-node (build it with `cargo build --release -p natter-node`)")?;
    clients::ProcessCluster::start(&args.dir, args.nodes, args.shards, &binary, rate_limits)
}

/// Refuses options outside the limits, and a data dir on a memory filesystem.
fn check_run(run: &RunArgs) -> anyhow::Result<()> {
    if run.proposers.is_empty() || run.proposers.iter().any(|&count| count == 0 || count > PROPOSERS_MAX) {
        bail!("--proposers must list counts in 1..={PROPOSERS_MAX}, got {:?}", run.proposers);
    }
    check_seconds(run.seconds)?;
    check_real_disk(&run.dir)
}

/// Refuses a data dir on a memory filesystem, where fsync is free.
fn check_real_disk(dir: &Path) -> anyhow::Result<()> {
    let dir = dir.canonicalize().with_context(|| format!("--dir {}", dir.display()))?;
    if let Some(filesystem) = filesystem_of(&dir) {
        if MEMORY_FILESYSTEMS.contains(&filesystem.as_str()) {
            bail!("--dir {} is on {filesystem}, where fsync is free; pick a dir on a real disk", dir.display());
        }
    }
    Ok(())
}

/// Refuses natter options outside the limits.
fn check_natter(natter: &NatterArgs) -> anyhow::Result<()> {
    check_cluster_size(natter.nodes, natter.shards)?;
    if natter.body_bytes == 0 || natter.body_bytes > natter_proto::limits::BODY_BYTES_MAX {
        bail!("--body-bytes must be in 1..={}, got {}", natter_proto::limits::BODY_BYTES_MAX, natter.body_bytes);
    }
    Ok(())
}

/// Refuses etcd options outside the limits, and endpoints off this machine.
fn check_etcd(etcd: &EtcdOnlyArgs) -> anyhow::Result<()> {
    if etcd.value_bytes == 0 || etcd.value_bytes > natter_proto::limits::BODY_BYTES_MAX {
        bail!("--value-bytes must be in 1..={}, got {}", natter_proto::limits::BODY_BYTES_MAX, etcd.value_bytes);
    }
    for endpoint in &etcd.endpoints {
        etcd::check_loopback(endpoint)?;
    }
    Ok(())
}

/// Runs the natter proposal benchmark once per proposer count on one cluster.
fn propose(run: &RunArgs, natter: &NatterArgs) -> anyhow::Result<Vec<RunReport>> {
    let durability = if natter.no_fsync { Durability::NoSync } else { Durability::Sync };
    println!(
        "natter: {} nodes on 127.0.0.1, {} shards, {}-byte bodies, group commit {}, route {}, {} s per run",
        natter.nodes,
        natter.shards,
        natter.body_bytes,
        if natter.no_fsync { "WITHOUT fsync (diagnostic)" } else { "+ fsync" },
        natter.route.name(),
        run.seconds
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The node code spawns through openraft's seeded runtime, which must be entered first.
    let seed: u64 = rand::random();
    let duration = Duration::from_secs(run.seconds);
    let reports = runtime.block_on(Runtime::scope(seed, async {
        let started = tokio::time::Instant::now();
        let cluster = natter::LoopbackCluster::start(&run.dir, natter.nodes, natter.shards, durability).await?;
        let ready = cluster.wait_ready(natter::READY_TIMEOUT).await;
        let mut reports = Vec::new();
        if ready.is_ok() {
            println!("natter: every shard has a leader on every node after {:.2} s", started.elapsed().as_secs_f64());
            for (index, &proposers) in run.proposers.iter().enumerate() {
                let report = cluster.run(index, proposers, natter.body_bytes, natter.route, duration).await;
                println!("{}", report.line());
                reports.push(report);
            }
        }
        quiet_logs();
        cluster.shutdown().await;
        ready.map(|_| reports)
    }));
    runtime.shutdown_timeout(natter::SHUTDOWN_TIMEOUT);
    reports
}

/// Runs the etcd put benchmark once per proposer count, on the given endpoints or on a cluster
/// started for the purpose.
fn etcd_puts(run: &RunArgs, etcd: &EtcdOnlyArgs) -> anyhow::Result<Vec<RunReport>> {
    let mut started_cluster = None;
    let endpoints = if etcd.endpoints.is_empty() {
        let cluster = etcd::EtcdCluster::start(&etcd.etcd_script, &run.dir)?;
        started_cluster.insert(cluster).endpoints().to_vec()
    } else {
        etcd.endpoints.clone()
    };
    println!(
        "etcd: {} members ({}), {}-byte values, {} s per run",
        endpoints.len(),
        endpoints.join(","),
        etcd.value_bytes,
        run.seconds
    );
    let duration = Duration::from_secs(run.seconds);
    let mut reports = Vec::new();
    for (index, &clients) in run.proposers.iter().enumerate() {
        let report = etcd::run_puts(&endpoints, index, clients, etcd.value_bytes, duration);
        println!("{}", report.line());
        reports.push(report);
    }
    if let Some(mut cluster) = started_cluster {
        cluster.stop();
    }
    Ok(reports)
}

/// Prints what the figures depend on: CPU, cores, load, and the data dir's filesystem.
fn print_machine(dir: &Path) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").map(|rest| rest.trim_start_matches([' ', '\t', ':'])))
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let filesystem = dir.canonicalize().ok().and_then(|dir| filesystem_of(&dir)).unwrap_or_else(|| "unknown".into());
    println!(
        "machine: {model}, {cores} cores, load average {}; data under {} ({filesystem})",
        load.join(" "),
        dir.display()
    );
}

/// The filesystem type of the mount holding `path` (absolute, canonical), from
/// `/proc/self/mounts`.
fn filesystem_of(path: &Path) -> Option<String> {
    mount_type(&std::fs::read_to_string("/proc/self/mounts").ok()?, path)
}

/// The type of the longest mount point in `mounts` (the `/proc/self/mounts` format) that
/// contains `path`.
fn mount_type(mounts: &str, path: &Path) -> Option<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, mount_point, filesystem) = (fields.next()?, fields.next()?, fields.next()?);
            Some((mount_point, filesystem))
        })
        .filter(|(mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.len())
        .map(|(_, filesystem)| filesystem.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_containing_mount_point_wins() {
        let mounts = "/dev/vda / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\ntmpfs /tmpx tmpfs rw 0 0\n";
        assert_eq!(mount_type(mounts, Path::new("/dev/shm/a")).as_deref(), Some("tmpfs"));
        assert_eq!(mount_type(mounts, Path::new("/tmp/a")).as_deref(), Some("ext4"));
        assert_eq!(mount_type(mounts, Path::new("/tmpx")).as_deref(), Some("tmpfs"));
        assert_eq!(mount_type("", Path::new("/")), None);
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from(["natter-bench", "compare", "--seconds", "2", "--proposers", "1,8"]).unwrap();
        let Commands::Compare(args) = cli.command else { panic!("expected compare") };
        assert_eq!(args.run.proposers, [1, 8]);
        assert_eq!(args.run.seconds, 2);
        assert_eq!(args.natter.shards, 64);
        assert!(args.etcd.endpoints.is_empty());
    }

    #[test]
    fn idle_websockets_run_one_node_unless_told() {
        let cli = Cli::try_parse_from(["natter-bench", "idle-websockets", "--connections", "15000,1000"]).unwrap();
        let Commands::IdleWebsockets(args) = cli.command else { panic!("expected idle-websockets") };
        assert_eq!(args.cluster.nodes, 1);
        assert_eq!(check_idle_websockets(&args).unwrap(), [1000, 15000]);
        let cli = Cli::try_parse_from(["natter-bench", "idle-websockets", "--nodes", "3"]).unwrap();
        let Commands::IdleWebsockets(args) = cli.command else { panic!("expected idle-websockets") };
        assert_eq!((args.cluster.nodes, args.connections.as_slice()), (3, [15000].as_slice()));
        let cli = Cli::try_parse_from(["natter-bench", "idle-sessions"]).unwrap();
        let Commands::IdleSessions(args) = cli.command else { panic!("expected idle-sessions") };
        assert_eq!(args.cluster.nodes, 3, "the other commands keep three nodes");
    }

    #[test]
    fn fanout_members_fit_one_conversation() {
        let cli = Cli::try_parse_from(["natter-bench", "ws-fanout"]).unwrap();
        let Commands::WsFanout(args) = cli.command else { panic!("expected ws-fanout") };
        assert_eq!((args.members, args.seconds, args.window, args.cluster.nodes), (1000, 5, 64, 3));
        assert!(check_fanout(&args).is_ok());
        let cli = Cli::try_parse_from(["natter-bench", "ws-fanout", "--members", "1025"]).unwrap();
        let Commands::WsFanout(args) = cli.command else { panic!("expected ws-fanout") };
        assert!(check_fanout(&args).is_err());
    }
}
