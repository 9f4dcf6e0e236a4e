//! The `natter` command line: argument parsing, running a command, and its human and JSON
//! output. The binary is [`main`]; everything else here is callable (and tested) directly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use natter_proto::limits::HISTORY_PAGE_MAX;
use natter_raft::placement::SHARD_COUNT_DEFAULT;
use serde::Serialize;

use crate::certs::{self, CERT_NODES_MAX};
use crate::error::Error;
use crate::local::{self, UpOptions, UpReport, LOCAL_NODES_MAX, READY_TIMEOUT_DEFAULT};
use crate::messaging::{self, Connection, CreateOptions, Format, HistoryOptions, SendOptions, TailOptions};
use crate::process::{StopOutcome, Stopped, STOP_GRACE_DEFAULT};
use crate::status;
use crate::table::render_table;

/// Most shards `natter cluster up` creates a cluster with.
pub const SHARDS_MAX: u32 = 4096;

/// The natter command-line tool: messages, local clusters and cluster status.
#[derive(Debug, Parser)]
#[command(name = "natter", version)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// A `natter` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Development helpers.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Start and stop a local cluster of natter-node processes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Show a node's view of the cluster: nodes, shards, leaders.
    Status(StatusArgs),
    /// Mint a client token (HS256 JWT) for a user, signed with the cluster's secret.
    Token(TokenArgs),
    /// Create a conversation with other users (one member and no title: the 1:1 conversation).
    Create(CreateArgs),
    /// Send a message; TEXT `-` sends each line of stdin as a message.
    Send(SendArgs),
    /// Follow all of the user's conversations and print messages as they arrive.
    Tail(TailArgs),
    /// Print a page of a conversation's messages, oldest first.
    History(HistoryArgs),
    /// List the user's conversations.
    Conversations(ConnectArgs),
}

/// How the messaging commands reach the cluster, and their output format.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// QUIC address of any node; repeat or separate with commas to give several, tried in
    /// order [default: 127.0.0.1:7401, the `natter-node --dev` node]
    #[arg(long = "server", value_name = "ADDR", env = "NATTER_SERVER", value_delimiter = ',', hide_env_values = true)]
    pub servers: Vec<String>,
    /// The user's token, from `natter token`
    #[arg(long, value_name = "TOKEN", env = "NATTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA certificate [default: natter-data/tls/ca.pem if it exists]
    #[arg(long, value_name = "FILE", env = "NATTER_CA", hide_env_values = true)]
    pub ca: Option<PathBuf>,
    /// This device's id; cursors and client_seqs are kept per device
    #[arg(long, value_name = "DEVICE", default_value = "cli")]
    pub device: String,
    /// Print one JSON object per line (the protocol's JSON frames)
    #[arg(long)]
    pub json: bool,
}

impl ConnectArgs {
    /// The messaging module's options for these arguments.
    pub fn into_options(self) -> (Connection, Format) {
        let format = if self.json { Format::Json } else { Format::Human };
        (Connection { servers: self.servers, token: self.token, ca: self.ca, device: self.device }, format)
    }
}

/// Arguments of `natter create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The other members, comma separated (you are always a member)
    #[arg(long, value_name = "USERS", value_delimiter = ',', required = true)]
    pub members: Vec<String>,
    /// A title (makes a group even with one other member)
    #[arg(long, value_name = "TITLE")]
    pub title: Option<String>,
    /// How to reach the cluster, and the output format.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `natter send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The conversation id (26 characters, from `natter create` or `natter conversations`)
    #[arg(value_name = "CONVERSATION")]
    pub conversation: String,
    /// The message; `-` reads stdin and sends each line as a message
    #[arg(value_name = "TEXT", allow_hyphen_values = true)]
    pub text: String,
    /// The device's state file (cursors and the next client_seq) [default:
    /// ~/.natter/cursors-CLUSTER-USER-DEVICE.json]
    #[arg(long, value_name = "FILE")]
    pub cursors: Option<PathBuf>,
    /// How to reach the cluster, and the output format.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `natter tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The device's state file: tail resumes after the last message it printed [default:
    /// ~/.natter/cursors-CLUSTER-USER-DEVICE.json]
    #[arg(long, value_name = "FILE")]
    pub cursors: Option<PathBuf>,
    /// Stop after printing N messages [default: run until interrupted]
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Also print delivery and read receipts
    #[arg(long)]
    pub receipts: bool,
    /// Also print who is typing and members' presence (online, away, offline, last seen)
    #[arg(long)]
    pub signals: bool,
    /// How to reach the cluster, and the output format.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `natter history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The conversation id
    #[arg(value_name = "CONVERSATION")]
    pub conversation: String,
    /// Most messages to print
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(HISTORY_PAGE_MAX)))]
    pub limit: u32,
    /// Only messages with seq below SEQ [default: the newest]
    #[arg(long, value_name = "SEQ")]
    pub before: Option<u64>,
    /// How to reach the cluster, and the output format.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Arguments of `natter token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id the token names (its `sub` claim).
    #[arg(long, value_name = "USER")]
    pub user: String,
    /// How long the token is valid: seconds, or with a unit (90s, 15m, 24h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub ttl: String,
    /// The cluster's secret [env: NATTER_JWT_SECRET].
    #[arg(long, value_name = "SECRET", env = "NATTER_JWT_SECRET", hide_env_values = true, conflicts_with = "data_dir")]
    pub secret: Option<String>,
    /// Read the secret a `natter-node --dev` data dir or a `natter cluster up` dir keeps.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// `natter dev …`.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Write a cluster CA and a certificate per node for inter-node mutual TLS.
    Certs(CertsArgs),
}

/// Arguments of `natter dev certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.pem, ca.key, node-N.pem and node-N.key into.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Number of node certificates (node-1 … node-N).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=CERT_NODES_MAX))]
    pub nodes: u64,
    /// Replace an existing CA (ca.key) and every node certificate.
    #[arg(long)]
    pub force: bool,
}

/// `natter cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster in DIR and start its nodes on loopback, detached; wait until all are ready.
    Up(UpArgs),
    /// Stop every node of the cluster in DIR (SIGTERM, then SIGKILL after 20 s).
    Down(DownArgs),
}

/// Arguments of `natter cluster up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=LOCAL_NODES_MAX))]
    pub nodes: u64,
    /// Cluster directory: certificates, configs, data, logs and pid files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Number of shards, fixed for the cluster's lifetime.
    #[arg(long, value_name = "S", default_value_t = SHARD_COUNT_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=i64::from(SHARDS_MAX)))]
    pub shards: u32,
    /// The natter-node executable [default: next to natter, else on PATH].
    #[arg(long, value_name = "PATH")]
    pub node_bin: Option<PathBuf>,
    /// Delete a stopped cluster's files in DIR (configs, certificates, data, logs) first.
    #[arg(long)]
    pub force: bool,
    /// Print the started nodes as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `natter cluster down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Cluster directory given to `natter cluster up`.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Print each node's stop as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `natter status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// HTTP address of the node to ask [default: 127.0.0.1:7480, the `natter-node --dev` node].
    #[arg(long, value_name = "ADDR", conflicts_with = "dir")]
    pub http: Option<String>,
    /// Ask node 1 of the local cluster in DIR (made by `natter cluster up`).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print the node's answer as served (JSON).
    #[arg(long)]
    pub json: bool,
}

/// Runs `natter` with the process's arguments; prints errors as one line on stderr (plus a
/// failing node's log tail) and exits non-zero on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    match run(cli, &mut stdout, &mut stderr) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`natter status | head`) is not worth an error message.
        Err(Error::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(stderr, "natter: error: {error}");
            if let Some(details) = error.details().filter(|details| !details.is_empty()) {
                for line in details.lines() {
                    let _ = writeln!(stderr, "  | {line}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs one command: results to `out`, progress to `progress`.
pub fn run(cli: Cli, out: &mut dyn Write, progress: &mut dyn Write) -> Result<(), Error> {
    let text = match cli.command {
        Command::Dev(DevCommand::Certs(args)) => {
            let ids: Vec<u64> = (1..=args.nodes).collect();
            let written = certs::write_dev_certs(&args.dir, &ids, args.force)?;
            render_certs(&args.dir, args.nodes, &written)
        }
        Command::Cluster(ClusterCommand::Up(args)) => {
            let exe_dir = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf));
            let node_binary = local::locate_node_binary(
                args.node_bin.as_deref(),
                exe_dir.as_deref(),
                std::env::var_os("PATH").as_deref(),
            )?;
            let options = UpOptions {
                dir: args.dir,
                nodes: args.nodes,
                shards: args.shards,
                node_binary,
                force: args.force,
                ready_timeout: READY_TIMEOUT_DEFAULT,
                rate_limits: natter_node::rate::RateLimits::default(),
            };
            let report = local::up(&options, progress)?;
            if args.json {
                to_json(&report)
            } else {
                render_up(&report)
            }
        }
        Command::Cluster(ClusterCommand::Down(args)) => {
            let report = local::down(&args.dir, STOP_GRACE_DEFAULT)?;
            if args.json {
                to_json(&DownReport { dir: &args.dir, nodes: &report })
            } else {
                render_down(&args.dir, &report, STOP_GRACE_DEFAULT)
            }
        }
        Command::Token(args) => {
            let secret = match (args.secret, &args.data_dir) {
                (Some(secret), _) => secret,
                (None, Some(dir)) => {
                    let path = dir.join(natter_node::auth::DEV_SECRET_FILE);
                    std::fs::read_to_string(&path).map_err(Error::io("cannot read", &path))?.trim().to_owned()
                }
                (None, None) => return Err(Error::Usage("give --secret, NATTER_JWT_SECRET or --data-dir DIR".into())),
            };
            let user = natter_proto::UserId::new(args.user).map_err(|error| Error::Usage(error.to_string()))?;
            let ttl = natter_node::auth::parse_ttl(&args.ttl).map_err(|error| Error::Usage(error.to_string()))?;
            let key =
                natter_node::auth::TokenKey::new(secret.as_bytes()).map_err(|error| Error::Usage(error.to_string()))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            format!("{}\n", key.issue(&user, now, ttl))
        }
        Command::Create(args) => {
            let (connection, format) = args.connect.into_options();
            let options = CreateOptions { members: args.members, title: args.title };
            return messaging::create(&connection, options, format, out);
        }
        Command::Send(args) => {
            let (connection, format) = args.connect.into_options();
            let options = SendOptions { conversation: args.conversation, text: args.text, cursors: args.cursors };
            return messaging::send(&connection, options, format, out);
        }
        Command::Tail(args) => {
            let (connection, format) = args.connect.into_options();
            let options = TailOptions {
                cursors: args.cursors,
                count: args.count,
                receipts: args.receipts,
                signals: args.signals,
            };
            return messaging::tail(&connection, options, format, out, progress);
        }
        Command::History(args) => {
            let (connection, format) = args.connect.into_options();
            let options = HistoryOptions { conversation: args.conversation, limit: args.limit, before: args.before };
            return messaging::history(&connection, options, format, out);
        }
        Command::Conversations(args) => {
            let (connection, format) = args.into_options();
            return messaging::conversations(&connection, format, out);
        }
        Command::Status(args) => {
            let address = match (&args.http, &args.dir) {
                (Some(address), _) => address.clone(),
                (None, Some(dir)) => status::http_addr_from_dir(dir)?.to_string(),
                (None, None) => status::DEFAULT_HTTP_ADDR.to_string(),
            };
            let (body, parsed) = status::fetch(&status::base_url(&address)?)?;
            if args.json {
                format!("{}\n", body.trim_end())
            } else {
                status::render(&parsed)
            }
        }
    };
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(Error::Output)
}

/// `cluster down --json` output.
#[derive(Serialize)]
struct DownReport<'a> {
    dir: &'a Path,
    nodes: &'a [Stopped],
}

fn to_json(value: &impl Serialize) -> String {
    format!("{}\n", serde_json::to_string_pretty(value).expect("reports serialize"))
}

/// `path` as a shell word: unchanged when safe, else single-quoted.
pub fn shell_word(path: &Path) -> String {
    let text = path.to_string_lossy();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn seconds(milliseconds: u64) -> String {
    format!("{:.1} s", milliseconds as f64 / 1000.0)
}

/// Human output of `natter dev certs`.
pub fn render_certs(dir: &Path, nodes: u64, written: &[PathBuf]) -> String {
    let noun = if nodes == 1 { "node" } else { "nodes" };
    let mut out = format!("wrote a new cluster CA and certificates for {nodes} {noun} to {}:\n", dir.display());
    for path in written {
        out.push_str(&format!("  {}\n", path.display()));
    }
    out.push_str("private keys (*.key) are readable by their owner only; ca.key can mint node certificates\n");
    out
}

/// Human output of `natter cluster up`: the nodes and what to try next.
pub fn render_up(report: &UpReport) -> String {
    let dir = shell_word(&report.dir);
    let mut out = format!(
        "cluster of {} nodes ready in {} ({} shards, {})\n\n",
        report.nodes.len(),
        seconds(report.ready_ms),
        report.shards,
        report.dir.display()
    );
    let rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|node| {
            vec![node.id.to_string(), node.peer_addr.to_string(), node.http_addr.to_string(), node.pid.to_string()]
        })
        .collect();
    out.push_str(&render_table(&["NODE", "PEER ADDR (UDP)", "HTTP ADDR (TCP)", "PID"], &rows));
    out.push_str(&format!("\nconfigs and logs: {dir}/node-N.toml, {dir}/node-N.log\n\ntry next:\n"));
    out.push_str(&format!("  natter status --dir {dir}\n"));
    if let Some(first) = report.nodes.first() {
        out.push_str(&format!("  curl -X POST http://{}/v1/admin/probe\n", first.http_addr));
        out.push_str(&format!("  curl http://{}/metrics\n", first.http_addr));
    }
    out.push_str(&format!("  natter cluster down --dir {dir}\n"));
    out
}

/// Human output of `natter cluster down`.
pub fn render_down(dir: &Path, report: &[Stopped], grace: Duration) -> String {
    if report.is_empty() {
        return format!("nothing to stop: no node of {} is recorded as running\n", dir.display());
    }
    let mut out = String::new();
    for stopped in report {
        let what = match stopped.outcome {
            StopOutcome::Stopped => format!("stopped in {}", seconds(stopped.elapsed_ms)),
            StopOutcome::Killed => format!(
                "did not stop within {} s of SIGTERM; killed with SIGKILL ({} in all)",
                grace.as_secs(),
                seconds(stopped.elapsed_ms)
            ),
            StopOutcome::NotRunning => "was not running; removed its stale pid file".to_string(),
        };
        out.push_str(&format!("node {} (pid {}): {what}\n", stopped.node, stopped.pid));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::StartedNode;

    #[test]
    fn up_output_lists_nodes_and_next_commands() {
        let report = UpReport {
            dir: PathBuf::from("/tmp/my cluster"),
            shards: 8,
            node_binary: PathBuf::from("/usr/bin/natter-node"),
            nodes: (1..=2)
                .map(|id| StartedNode {
                    id,
                    peer_addr: format!("127.0.0.1:{}", 40000 + id).parse().unwrap(),
                    http_addr: format!("127.0.0.1:{}", 41000 + id).parse().unwrap(),
                    pid: 100 + id as u32,
                    config: PathBuf::from(format!("/tmp/my cluster/node-{id}.toml")),
                    log: PathBuf::from(format!("/tmp/my cluster/node-{id}.log")),
                })
                .collect(),
            ready_ms: 2345,
        };
        assert_eq!(
            render_up(&report),
            "cluster of 2 nodes ready in 2.3 s (8 shards, /tmp/my cluster)

  NODE  PEER ADDR (UDP)  HTTP ADDR (TCP)  PID
  1     127.0.0.1:40001  127.0.0.1:41001  101
  2     127.0.0.1:40002  127.0.0.1:41002  102

configs and logs: '/tmp/my cluster'/node-N.toml, '/tmp/my cluster'/node-N.log

try next:
  natter status --dir '/tmp/my cluster'
  curl -X POST http://127.0.0.1:41001/v1/admin/probe
  curl http://127.0.0.1:41001/metrics
  natter cluster down --dir '/tmp/my cluster'
"
        );
    }

    #[test]
    fn down_output_says_what_happened_to_each_node() {
        let report = [
            Stopped { node: 1, pid: 11, outcome: StopOutcome::Stopped, elapsed_ms: 420 },
            Stopped { node: 2, pid: 12, outcome: StopOutcome::Killed, elapsed_ms: 20_050 },
            Stopped { node: 3, pid: 13, outcome: StopOutcome::NotRunning, elapsed_ms: 0 },
        ];
        assert_eq!(
            render_down(Path::new("/tmp/c"), &report, Duration::from_secs(20)),
            "node 1 (pid 11): stopped in 0.4 s
node 2 (pid 12): did not stop within 20 s of SIGTERM; killed with SIGKILL (20.1 s in all)
node 3 (pid 13): was not running; removed its stale pid file
"
        );
        assert_eq!(
            render_down(Path::new("/tmp/c"), &[], Duration::from_secs(20)),
            "nothing to stop: no node of /tmp/c is recorded as running\n"
        );
    }

    #[test]
    fn shell_words_quote_only_when_needed() {
        assert_eq!(shell_word(Path::new("/tmp/natter-1.x")), "/tmp/natter-1.x");
        assert_eq!(shell_word(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(shell_word(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }

    #[test]
    fn certs_output_lists_files() {
        let text = render_certs(Path::new("d"), 1, &[PathBuf::from("d/ca.pem"), PathBuf::from("d/ca.key")]);
        assert!(text.starts_with("wrote a new cluster CA and certificates for 1 node to d:\n  d/ca.pem\n"));
    }

    #[test]
    fn arguments_parse_and_conflict() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["natter", "cluster", "up", "--dir", "d", "--shards", "8"]).unwrap();
        let Command::Cluster(ClusterCommand::Up(args)) = cli.command else { panic!("parsed as {cli:?}") };
        assert_eq!((args.nodes, args.shards, args.force), (3, 8, false));
        assert!(Cli::try_parse_from(["natter", "status", "--http", "a:1", "--dir", "d"]).is_err());
        assert!(Cli::try_parse_from(["natter", "cluster", "up", "--dir", "d", "--nodes", "0"]).is_err());
        assert!(Cli::try_parse_from(["natter", "cluster", "up", "--dir", "d", "--shards", "0"]).is_err());
        assert!(Cli::try_parse_from(["natter", "cluster", "up", "--nodes", "3"]).is_err(), "--dir is required");
    }

    #[test]
    fn connection_arguments_become_messaging_options() {
        let cli = Cli::try_parse_from([
            "natter", "send", "c1", "hi", "--server", "a:1,b:2", "--token", "t", "--device", "phone", "--json",
        ])
        .unwrap();
        let Command::Send(args) = cli.command else { panic!("parsed as {cli:?}") };
        let (connection, format) = args.connect.into_options();
        assert_eq!(
            connection,
            Connection {
                servers: vec!["a:1".into(), "b:2".into()],
                token: Some("t".into()),
                ca: None,
                device: "phone".into()
            }
        );
        assert_eq!(format, Format::Json);
        let cli = Cli::try_parse_from(["natter", "conversations", "--token", "t"]).unwrap();
        let Command::Conversations(args) = cli.command else { panic!("parsed as {cli:?}") };
        assert_eq!(args.into_options().1, Format::Human);
    }
}
