//! The `bender` command: parse the CLI, set up logging, load the config, run (or run an
//! operator subcommand against a node's API).

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

use bender::cli::{AgentArgs, Cli, Command, LogFormat};
use bender::config::{Config, Overrides};

// The API allocates a little per request; mimalloc serves many small short-lived allocations on
// several threads faster than glibc's malloc (about +20% renewals/s, see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            // One line (operators grep logs for it) carrying all of clap's message: what is
            // wrong, what is missing, what is valid, and its tip.
            let valid = match e.get(clap::error::ContextKind::ValidValue) {
                Some(clap::error::ContextValue::Strings(values)) if !values.is_empty() => {
                    format!(" (valid: {})", values.join(", "))
                }
                _ => String::new(),
            };
            let message = one_line(&e.render().to_string());
            let valid = if message.contains("possible values") {
                ""
            } else {
                &valid
            };
            eprintln!("bender: {message}{valid}");
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Agent(_)) {
        // `bender render | head`: a reader that goes away ends the command quietly, as it does
        // any Unix tool, rather than with a "Broken pipe" panic (Rust ignores SIGPIPE).
        // SAFETY: no other thread runs yet, and the default action needs no handler.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    match cli.command {
        Command::Agent(args) => agent(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "bender", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match man(dir.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bender: {e}");
                ExitCode::FAILURE
            }
        },
        other => bender::cli::run_operator_command(other),
    }
}

/// `bender man`: bender.1 on stdout, or every page into `dir`.
fn man(dir: Option<&std::path::Path>) -> std::io::Result<()> {
    use std::io::Write;
    let pages = bender::cli::man::pages()?;
    match dir {
        None => std::io::stdout().write_all(&pages[0].1),
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            for (name, roff) in &pages {
                std::fs::write(dir.join(name), roff)?;
            }
            Ok(())
        }
    }
}

fn agent(args: AgentArgs) -> ExitCode {
    // Failpoints for the crash-safety tests (FAILPOINTS="name=action;..."); none are set in
    // production, where each costs one lookup in an empty table.
    let _failpoints = fail::FailScenario::setup();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("BENDER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false);
    match args.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        // One object per line: timestamp, level, fields (the message among them), span-free.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
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
    let config_path = args.config;
    let config = match Config::load(config_path.as_deref(), overrides.clone()) {
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
        // SIGHUP re-reads the config file and the templates. One pending request is enough:
        // SIGHUPs that arrive while one waits are folded into it.
        let (hup_tx, requests) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup =
                signal(SignalKind::hangup()).expect("installing a SIGHUP handler cannot fail");
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the config");
                match hup_tx.try_send(()) {
                    Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => return,
                }
            }
        });
        let reload = bender::Reload {
            path: config_path,
            overrides,
            requests,
        };
        match bender::run_with_reload(config, Some(reload), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ bender::RunError::Credentials(_)) => {
                eprintln!("bender: {e}");
                ExitCode::from(2)
            }
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

/// clap's rendered error as one line: its lines joined, tips after a `;`, without the usage
/// and "for more information" footer (`--help` shows those).
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("Usage:") || line.starts_with("For more information")
        {
            continue;
        }
        let line = line.trim_start_matches("error: ");
        if !out.is_empty() {
            out.push_str(if line.starts_with("tip:") { "; " } else { " " });
        }
        out.push_str(line);
    }
    if out.is_empty() {
        out.push_str("invalid arguments");
    }
    out
}
