//! Telling HAProxy to load a new config, and finding out whether it did.
//!
//! HAProxy 2.6's master CLI answers `reload` with nothing, and systemd reports success even when
//! HAProxy's reload failed, so the outcome is read from `show proc` on the master CLI: the
//! master's reload counter rises on every attempt, its `failed` counter rises on a failure, and
//! a worker PID that was not there before means the new config is serving. A failed reload
//! leaves the old worker serving the old config.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::config::{ReloadConfig, ServerStateConfig, TemplateConfig};
use super::error::RenderError;
use super::files;

/// Longest a single CLI exchange may take. The master is unreachable for a moment while it
/// re-executes itself during a reload: a stuck connection must not eat the whole reload timeout.
const CLI_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest CLI answer read (`show servers state` of 10,000 servers is ~1.5 MB).
const MAX_CLI_ANSWER: u64 = 64 * 1024 * 1024;
/// How often `show proc` is polled while a reload is in progress.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// What `show proc` says about the master and its current workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcSnapshot {
    /// Reloads attempted since the master started.
    pub reloads: u64,
    /// Failed reloads; HAProxy 2.6 resets it to 0 on a successful reload.
    pub failed: u64,
    /// PIDs of the current (not old) workers.
    pub workers: Vec<u32>,
}

/// Sends one command to a HAProxy CLI socket and reads the whole answer. The write side is shut
/// down after the command: the 2.6 master CLI otherwise keeps the connection open.
pub(crate) async fn cli(socket: &Path, command: &str) -> Result<String, String> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("cannot write to {}: {e}", socket.display()))?;
        stream
            .shutdown()
            .await
            .map_err(|e| format!("cannot write to {}: {e}", socket.display()))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_CLI_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("cannot read from {}: {e}", socket.display()))?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(CLI_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} did not answer {command:?} within {}",
            socket.display(),
            humantime::format_duration(CLI_TIMEOUT)
        )),
    }
}

/// Parses the answer to `show proc` (HAProxy 2.6):
///
/// ```text
/// #<PID>          <type>          <reloads>       <uptime>        <version>
/// 7727            master          2 [failed: 1]   0d00h20m25s     2.6.12-1+deb12u4
/// # workers
/// 23048           worker          1               0d00h00m06s     2.6.12-1+deb12u4
/// # old workers
/// 7730            worker          2               0d00h01m00s     2.6.12-1+deb12u4
/// # programs
/// ```
pub(crate) fn parse_show_proc(text: &str) -> Option<ProcSnapshot> {
    let mut master = None;
    let mut workers = Vec::new();
    let mut section = "";
    for line in text.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('#') {
            // "#<PID> ..." is the column header; "# workers", "# old workers" open sections.
            section = match header.trim() {
                "workers" => "workers",
                h if h.starts_with('<') => "",
                _ => "other",
            };
            continue;
        }
        let mut cols = line.split_whitespace();
        let (Some(pid), Some(kind)) = (cols.next(), cols.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        match (section, kind) {
            ("", "master") => {
                let reloads = cols.next()?.parse().ok()?;
                let rest: String = cols.collect::<Vec<_>>().join(" ");
                let failed = rest
                    .split_once("[failed:")
                    .and_then(|(_, f)| f.split(']').next())
                    .and_then(|f| f.trim().parse().ok())
                    .unwrap_or(0);
                master = Some((reloads, failed));
            }
            ("workers", "worker") => workers.push(pid),
            _ => {}
        }
    }
    let (reloads, failed) = master?;
    Some(ProcSnapshot {
        reloads,
        failed,
        workers,
    })
}

pub(crate) async fn show_proc(master_socket: &Path) -> Result<ProcSnapshot, String> {
    let text = cli(master_socket, "show proc").await?;
    parse_show_proc(&text).ok_or_else(|| {
        format!(
            "unexpected answer to \"show proc\" from {}: {:?}",
            master_socket.display(),
            text.lines().next().unwrap_or("")
        )
    })
}

/// Why a reload was not confirmed.
#[derive(Debug)]
enum Unconfirmed {
    /// HAProxy's master counted the reload as failed.
    Rejected(String),
    /// No verdict: the master did not answer, or not in time.
    Unknown(String),
}

/// Reads `show proc`, retrying while the master does not answer (it re-executes itself during a
/// reload, so a reload still in progress makes it unreachable for a moment), until `deadline`.
async fn show_proc_until(master_socket: &Path, deadline: Instant) -> Result<ProcSnapshot, String> {
    loop {
        match show_proc(master_socket).await {
            Ok(snapshot) => return Ok(snapshot),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Waits until the master has finished the reload that followed `before`: `Ok` when a new
/// worker serves, `Err` when the master counted a failure or nothing happened in time.
async fn verify(
    master_socket: &Path,
    before: &ProcSnapshot,
    timeout: Duration,
) -> Result<(), Unconfirmed> {
    let deadline = Instant::now() + timeout;
    loop {
        let last_problem = match show_proc(master_socket).await {
            Ok(now) if now.reloads > before.reloads => {
                if now.workers.iter().any(|pid| !before.workers.contains(pid)) {
                    return Ok(());
                }
                if now.failed > 0 {
                    return Err(Unconfirmed::Rejected(format!(
                        "HAProxy rejected the new config ({} failed reload(s) in a row; see HAProxy's log); the previous worker keeps serving",
                        now.failed
                    )));
                }
                "the master reloaded but no new worker appeared yet".to_string()
            }
            Ok(_) => "the master has not started the reload yet".to_string(),
            // Expected for a moment: the master re-executes itself to reload.
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Unconfirmed::Unknown(format!(
                "not confirmed within {}: {last_problem}",
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn method_name(cfg: &ReloadConfig) -> &'static str {
    match cfg {
        ReloadConfig::MasterSocket { .. } => "master-socket",
        ReloadConfig::Pidfile { .. } => "pidfile",
        ReloadConfig::Command { .. } => "command",
        ReloadConfig::None => "none",
    }
}

fn read_pid(pidfile: &Path) -> Result<nix::unistd::Pid, String> {
    let text = std::fs::read_to_string(pidfile)
        .map_err(|e| format!("cannot read {}: {e}", pidfile.display()))?;
    // HAProxy writes the master's PID on the first line.
    match text.lines().next().map(str::trim).map(str::parse::<i32>) {
        Some(Ok(pid)) if pid > 1 => Ok(nix::unistd::Pid::from_raw(pid)),
        _ => Err(format!("{} holds no PID: {text:?}", pidfile.display())),
    }
}

async fn run_command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    use super::process::{run, Failure};
    match run(program, args, timeout).await {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{argv:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(Failure::Spawn(e)) => Err(format!("cannot run {argv:?}: {e}")),
        Err(Failure::Wait(e)) => Err(format!("{argv:?}: {e}")),
        Err(Failure::Timeout) => Err(format!(
            "{argv:?} did not finish within {} (it and everything it started were killed)",
            humantime::format_duration(timeout)
        )),
    }
}

/// Reloads HAProxy as configured and verifies the outcome where the method allows it.
/// Returns whether the outcome was verified (false: the signal or command went out, but
/// there is no master socket to confirm it).
pub(crate) async fn reload(cfg: &ReloadConfig, timeout: Duration) -> Result<bool, RenderError> {
    let method = method_name(cfg);
    // Failures to reach HAProxy or to learn the outcome may pass on their own; a command that
    // exits non-zero or a master that counts a failure is a verdict.
    let fail = |reason: String| RenderError::Reload {
        method,
        reason,
        rejected: false,
    };
    let master_socket = match cfg {
        ReloadConfig::MasterSocket { socket } => Some(socket.as_path()),
        ReloadConfig::Pidfile { master_socket, .. }
        | ReloadConfig::Command { master_socket, .. } => master_socket.as_deref(),
        ReloadConfig::None => return Ok(true),
    };
    let deadline = Instant::now() + timeout;
    let before = match master_socket {
        Some(socket) => Some(
            show_proc_until(socket, deadline)
                .await
                .map_err(|e| fail(format!("HAProxy's master CLI is unreachable: {e}")))?,
        ),
        None => None,
    };
    match cfg {
        ReloadConfig::MasterSocket { socket } => {
            cli(socket, "reload").await.map_err(fail)?;
        }
        ReloadConfig::Pidfile { pidfile, .. } => {
            let pid = read_pid(pidfile).map_err(fail)?;
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2)
                .map_err(|e| fail(format!("cannot signal master PID {pid}: {e}")))?;
        }
        ReloadConfig::Command { command, .. } => {
            run_command(command, timeout)
                .await
                .map_err(|reason| RenderError::Reload {
                    method,
                    reason,
                    rejected: true,
                })?;
        }
        ReloadConfig::None => {}
    }
    match (master_socket, before) {
        (Some(socket), Some(before)) => match verify(socket, &before, timeout).await {
            Ok(()) => Ok(true),
            Err(Unconfirmed::Rejected(reason)) => Err(RenderError::Reload {
                method,
                reason,
                rejected: true,
            }),
            Err(Unconfirmed::Unknown(reason)) => Err(fail(reason)),
        },
        _ => Ok(false),
    }
}

/// Where to ask HAProxy which config version it runs: the master CLI (`@1 show info`, the
/// current worker) or the stats socket the server state is read from (`show info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    Master(std::path::PathBuf),
    Stats(std::path::PathBuf),
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Master(p) => write!(f, "the master CLI {}", p.display()),
            Probe::Stats(p) => write!(f, "the stats socket {}", p.display()),
        }
    }
}

/// How to tell what a template's HAProxy runs, if the config gives a way.
pub(crate) fn probe_of(cfg: &TemplateConfig) -> Option<Probe> {
    match &cfg.reload {
        ReloadConfig::None => None,
        ReloadConfig::MasterSocket { socket } => Some(Probe::Master(socket.clone())),
        ReloadConfig::Pidfile {
            master_socket: Some(s),
            ..
        }
        | ReloadConfig::Command {
            master_socket: Some(s),
            ..
        } => Some(Probe::Master(s.clone())),
        _ => cfg
            .server_state
            .as_ref()
            .map(|s| Probe::Stats(s.socket.clone())),
    }
}

/// The config version HAProxy runs (`None`: it runs a config without a bender stamp).
pub(crate) async fn running_version(probe: &Probe) -> Result<Option<String>, String> {
    let info = match probe {
        Probe::Master(s) => cli(s, "@1 show info").await?,
        Probe::Stats(s) => cli(s, "show info").await?,
    };
    if !info.contains("Pid:") {
        return Err(format!(
            "unexpected answer to \"show info\" from {probe}: {:?}",
            info.lines().next().unwrap_or("")
        ));
    }
    Ok(super::stamp::of_info(&info))
}

/// Waits until HAProxy runs version `expected`. `Err((reason, rejected))`: `rejected` when
/// HAProxy answered all along with another version (it did not take the new config).
pub(crate) async fn wait_for_version(
    probe: &Probe,
    expected: &str,
    timeout: Duration,
) -> Result<(), (String, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = running_version(probe).await;
        match &last {
            Ok(Some(v)) if v == expected => return Ok(()),
            _ if Instant::now() < deadline => tokio::time::sleep(POLL_INTERVAL).await,
            Ok(v) => {
                return Err((
                    format!(
                        "HAProxy still runs config {} after {}, not {expected} (asked {probe}); the previous config keeps serving",
                        v.as_deref().unwrap_or("(unstamped)"),
                        humantime::format_duration(timeout)
                    ),
                    true,
                ))
            }
            Err(e) => {
                return Err((
                    format!(
                        "cannot tell which config HAProxy runs after {}: {e}",
                        humantime::format_duration(timeout)
                    ),
                    false,
                ))
            }
        }
    }
}

/// Saves the running worker's server state to the `server-state-file`, so the next worker
/// starts with the same health and weights instead of assuming every server is up.
///
/// Only what the new config's slots agree with is kept (`runtime::filter_saved_state`): the
/// file would otherwise put a server the new config moved or freed back as it was.
pub(crate) async fn save_server_state(
    cfg: &ServerStateConfig,
    slots: &super::slots::Table,
) -> Result<(), String> {
    let state = cli(&cfg.socket, "show servers state").await?;
    // The dump starts with a format version line ("1"); anything else is an error message.
    if !state.starts_with('1') {
        return Err(format!(
            "unexpected answer to \"show servers state\": {:?}",
            state.lines().next().unwrap_or("")
        ));
    }
    let state = super::runtime::filter_saved_state(&state, slots);
    let file = cfg.file.clone();
    tokio::task::spawn_blocking(move || files::write_atomic(&file, state.as_bytes()))
        .await
        .map_err(|e| format!("saving server state: {e}"))?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_proc_of_haproxy_2_6() {
        let text =
            "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
7727            master          2 [failed: 1]   0d00h20m25s     2.6.12-1+deb12u4\n\
# workers\n\
23048           worker          1               0d00h00m06s     2.6.12-1+deb12u4\n\
# old workers\n\
7730            worker          2               0d00h01m00s     2.6.12-1+deb12u4\n\
# programs\n\n";
        assert_eq!(
            parse_show_proc(text),
            Some(ProcSnapshot {
                reloads: 2,
                failed: 1,
                workers: vec![23048]
            })
        );
        assert_eq!(parse_show_proc("Unknown command.\n"), None);
    }

    #[test]
    fn pidfiles() {
        let dir = std::env::temp_dir().join(format!("bender-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pid");
        std::fs::write(&p, "1234\n").unwrap();
        assert_eq!(read_pid(&p).unwrap().as_raw(), 1234);
        std::fs::write(&p, "junk").unwrap();
        assert!(read_pid(&p).is_err());
        std::fs::write(&p, "1\n").unwrap();
        assert!(read_pid(&p).is_err(), "never signal init");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
