//! The `bender` command: parse the CLI, set up logging, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use bender::config::{Config, Overrides};

// The API allocates a little per request; mimalloc serves that faster than glibc's malloc under
// many small short-lived allocations on several threads (measured: see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bender",
    version,
    about = "A distributed, expiring service registry that drives HAProxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a bender node.
    Agent(AgentArgs),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Config file (TOML); flags override its values.
    #[arg(long, env = "BENDER_CONFIG")]
    config: Option<PathBuf>,
    /// Unique id of this node in the cluster [default: the host name].
    #[arg(long)]
    node_id: Option<String>,
    /// Cluster id; nodes only gossip with nodes of the same cluster [default: bender].
    #[arg(long)]
    cluster_id: Option<String>,
    /// HTTP API listen address [default: 0.0.0.0:1729].
    #[arg(long)]
    api_listen: Option<std::net::SocketAddr>,
    /// Gossip (UDP) listen address [default: 0.0.0.0:1730].
    #[arg(long)]
    gossip_listen: Option<std::net::SocketAddr>,
    /// Gossip address peers use to reach this node [default: derived from the listen address].
    #[arg(long)]
    gossip_advertise: Option<std::net::SocketAddr>,
    /// A peer's gossip address (HOST:PORT); repeat for several.
    #[arg(long = "seed")]
    seeds: Vec<String>,
    /// TTL of registrations that do not give one, e.g. "500ms", "4s" [default: 4s].
    #[arg(long, value_parser = duration)]
    default_ttl: Option<Duration>,
    /// Longest TTL a client may ask for [default: 1h].
    #[arg(long, value_parser = duration)]
    max_ttl: Option<Duration>,
    /// Time between gossip rounds [default: 100ms].
    #[arg(long, value_parser = duration)]
    gossip_interval: Option<Duration>,
    /// Directory for the node's snapshot [default: none, nothing kept across restarts].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Parses a duration flag, with an error that says what is valid.
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| format!("expected a duration such as \"500ms\", \"4s\" or \"1m\""))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            // One line, naming the flag and what is valid: operators grep logs for it.
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("bender: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("BENDER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match cli.command {
        Command::Agent(args) => agent(args),
    }
}

fn agent(args: AgentArgs) -> ExitCode {
    let overrides = Overrides {
        node_id: args.node_id,
        cluster_id: args.cluster_id,
        api_listen: args.api_listen,
        gossip_listen: args.gossip_listen,
        gossip_advertise: args.gossip_advertise,
        seeds: args.seeds,
        default_ttl: args.default_ttl,
        max_ttl: args.max_ttl,
        gossip_interval: args.gossip_interval,
        data_dir: args.data_dir,
    };
    let config = match Config::load(args.config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bender: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bender: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (trigger, shutdown) = bender::shutdown::channel();
        tokio::spawn(async move {
            wait_for_signal().await;
            trigger.trigger();
        });
        match bender::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "bender stopped");
                eprintln!("bender: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
