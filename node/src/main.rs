//! `natter-node`: runs one natter node.
//!
//! `natter-node --dev` runs a single-node cluster with no config file (data in
//! `./natter-data`); `natter-node --config FILE` runs a node of a configured cluster. Every
//! config key can be overridden by a `NATTER_*` environment variable.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use natter_node::config::Config;
use natter_node::env::NodeEnv;
use natter_raft::types::Runtime;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs a natter node.
#[derive(Debug, Parser)]
#[command(name = "natter-node", version, about)]
struct Args {
    /// Node config file (TOML). Keys can be overridden with NATTER_* environment variables.
    #[arg(long, conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Run a single-node development cluster that needs no config file.
    #[arg(long)]
    dev: bool,
    /// Data directory for --dev.
    #[arg(long, default_value = "natter-data", requires = "dev")]
    data_dir: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// Raises the open-file soft limit to the hard one: every client connection is a socket (a
/// WebSocket or SSE stream a TCP one), and the usual soft default of 1,024 would refuse
/// clients long before the node is busy.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.maximum != limit.current {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
}

fn main() -> anyhow::Result<()> {
    raise_open_files_limit();
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    let environment: Vec<(String, String)> = std::env::vars().collect();
    let config = match (&args.config, args.dev) {
        (Some(path), _) => Config::load(path, environment)?,
        (None, true) => Config::parse(&Config::dev(args.data_dir.clone()).to_toml(), environment)?,
        (None, false) => anyhow::bail!("give --config FILE, or --dev for a single-node development cluster"),
    };
    let mut config = config;
    let env = NodeEnv::production(config.data_dir.clone());
    if args.dev {
        let mut rng = env.entropy.rng("dev-certs");
        natter_node::tls::ensure_dev_certs(&config.tls, config.node_id, &mut rng)
            .context("creating dev certificates")?;
        if config.jwt_secret.is_none() {
            let path = config.data_dir.join(natter_node::auth::DEV_SECRET_FILE);
            let secret = natter_node::auth::load_or_create_secret(&path, &mut env.entropy.rng("dev-secret"))
                .with_context(|| format!("keeping the dev token secret in {}", path.display()))?;
            config.jwt_secret = Some(secret);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let seed = env.entropy.seed();
    runtime.block_on(Runtime::scope(seed, async move {
        let dev_tokens = match (&config.jwt_secret, args.dev) {
            (Some(secret), true) => {
                let key = natter_node::auth::TokenKey::new(secret.as_bytes())?;
                let token = |name: &str| {
                    let user = natter_proto::UserId::new(name).expect("valid user id");
                    key.issue(&user, env.clock.wall_ms() / 1000, 24 * 3600)
                };
                Some((token("alice"), token("bob")))
            }
            _ => None,
        };
        let ca = config.tls.ca_cert.clone();
        let node = natter_node::run_node(config, env).await?;
        if let Some((token, bob_token)) = dev_tokens {
            let http = node.http_addr().map(|addr| format!("http://{addr}")).unwrap_or_default();
            let data = args.data_dir.display();
            println!("natter dev node is up");
            println!("  data:    {data}");
            println!("  clients: {} (QUIC, ALPN natter/1, CA {})", node.peer_addr(), ca.display());
            println!("  status:  {http}/v1/admin/cluster");
            println!("  web client as alice: {http}/?token={token}");
            println!("  web client as bob:   {http}/?token={bob_token}");
            println!("  token for alice (24 h): {token}");
            println!("  more tokens: natter token --data-dir {data} --user NAME");
        }
        wait_for_signal().await?;
        tracing::info!("shutting down");
        node.shutdown().await;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    }))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        biased;
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    Ok(())
}
