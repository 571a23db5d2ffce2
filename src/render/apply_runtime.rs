//! The runtime API path of an apply: when the new render differs from what HAProxy runs only
//! in what server slots hold, the difference goes over the stats socket (one connection,
//! read back), the file is written to match, and nothing reloads. Anything else, or any doubt,
//! is a reload, with its reason counted. The probe also reads every slot back, and sets back
//! what someone changed by hand.

use std::collections::BTreeSet;
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::runtime::{self, Observed};
use super::slots::{self, Table};
use super::status::ServerView;
use super::worker::{Applied, Worker};
use super::{files, stamp};

/// Why a change was applied by a reload rather than at run time.
#[derive(Debug, Clone)]
pub(super) enum ReloadReason {
    /// The template has no `runtime` table.
    NoRuntime,
    /// Nothing HAProxy runs has been confirmed yet (first apply, or after a failure).
    Unconfirmed,
    /// More than the slots changed: a backend, a frontend, the slot count, the template.
    Structure,
    /// HAProxy runs another config than the one the slots were applied to.
    OtherConfig,
    /// The runtime API did not take the change (the text says why).
    RuntimeFailed(String),
}

impl ReloadReason {
    pub(super) fn label(&self) -> &'static str {
        match self {
            ReloadReason::NoRuntime => "no_runtime_api",
            ReloadReason::Unconfirmed => "unconfirmed",
            ReloadReason::Structure => "structure",
            ReloadReason::OtherConfig => "other_config_running",
            ReloadReason::RuntimeFailed(_) => "runtime_failed",
        }
    }
}

impl std::fmt::Display for ReloadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadReason::NoRuntime => write!(f, "the template does not use the runtime API"),
            ReloadReason::Unconfirmed => write!(f, "what HAProxy runs is not confirmed yet"),
            ReloadReason::Structure => write!(f, "more than server slots changed"),
            ReloadReason::OtherConfig => write!(f, "HAProxy runs another config"),
            ReloadReason::RuntimeFailed(why) => write!(f, "the runtime API failed: {why}"),
        }
    }
}

/// At most this many mismatches are named in a log line or an error.
const NAMED: usize = 5;

fn summary(list: &[String]) -> String {
    let mut s = list[..list.len().min(NAMED)].join("; ");
    if list.len() > NAMED {
        s.push_str(&format!("; and {} more", list.len() - NAMED));
    }
    s
}

impl Worker {
    /// Once, before the first render of a template with the runtime API: the slots HAProxy
    /// holds become the starting table, so a restarted bender keeps every server where it is;
    /// and if HAProxy runs the config on disk, those slots count as confirmed.
    pub(super) async fn seed_slots(&mut self, i: usize) {
        let Some(rt) = self.slots[i].cfg.runtime.clone() else {
            return;
        };
        if std::mem::replace(&mut self.slots[i].seeded, true) {
            return;
        }
        let name = self.slots[i].cfg.name.clone();
        match runtime::read(&rt.socket, &BTreeSet::new()).await {
            Ok(observed) => {
                let drain_until = self.now_ms() + self.slots[i].cfg.slot_settings().drain_ms;
                let table = runtime::observed_table(&observed, drain_until);
                let on_disk = self.slots[i]
                    .last_good
                    .as_deref()
                    .and_then(|b| stamp::of_file(&String::from_utf8_lossy(b)));
                let running = self.slots[i].running.clone();
                if running.is_some() && running == on_disk {
                    self.slots[i].applied = running.map(|version| Applied {
                        version,
                        table: table.clone(),
                    });
                }
                info!(template = %name, backends = table.backends.len(),
                    confirmed = self.slots[i].applied.is_some(),
                    "render: took the server slots HAProxy holds as the starting point");
                self.slots[i].servers = table;
                self.record_servers(i, &observed, None, true);
            }
            Err(e) => {
                debug!(template = %name, error = %e,
                    "render: cannot read HAProxy's slots; handing them out afresh");
            }
        }
    }

    /// Applies the change at run time if only slots changed and HAProxy runs this structure;
    /// `Err` says why it must reload instead.
    pub(super) async fn try_runtime(
        &mut self,
        i: usize,
        table: &Table,
        bytes: &[u8],
        version: &str,
    ) -> Result<(), ReloadReason> {
        let Some(rt) = self.slots[i].cfg.runtime.clone() else {
            return Err(ReloadReason::NoRuntime);
        };
        let Some(applied) = self.slots[i].applied.clone() else {
            return Err(ReloadReason::Unconfirmed);
        };
        if applied.version != version {
            return Err(ReloadReason::Structure);
        }
        if self.slots[i].running.as_deref() != Some(version) {
            return Err(ReloadReason::OtherConfig);
        }
        let name = self.slots[i].cfg.name.clone();
        let commands = slots::commands(&applied.table, table);
        let started = Instant::now();
        if !commands.is_empty() {
            let outcome =
                runtime::apply(&rt.socket, &commands)
                    .await
                    .and_then(|(observed, touched)| {
                        let now = runtime::observed_table(&observed, 0);
                        let wrong = runtime::mismatches(table, &now, Some(&touched));
                        if wrong.is_empty() {
                            Ok(observed)
                        } else {
                            Err(format!(
                                "HAProxy does not hold what was set: {}",
                                summary(&wrong)
                            ))
                        }
                    });
            let observed = match outcome {
                Ok(o) => o,
                Err(e) => {
                    warn!(template = %name, error = %e, commands = commands.len(),
                        "render: runtime API update failed; reloading instead");
                    self.slots[i].applied = None;
                    self.set_status(i, |s| s.runtime_failures += 1);
                    return Err(ReloadReason::RuntimeFailed(e));
                }
            };
            self.record_servers(i, &observed, Some(table), false);
        }
        crate::crash_point!("render.runtime.after_commands");
        // HAProxy holds the new slots: the file says the same, so a later reload agrees. Not
        // checked with `haproxy -c`: it differs from the structure HAProxy validated and runs
        // only in slot values bender produced itself (an IP, a port, a weight, a state).
        let dest = self.slots[i].cfg.destination.clone();
        let owned = bytes.to_vec();
        let written = tokio::task::spawn_blocking(move || files::write_atomic(&dest, &owned))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let seconds = started.elapsed().as_secs_f64();
        self.slots[i].applied = Some(Applied {
            version: version.to_string(),
            table: table.clone(),
        });
        if let Err(e) = written {
            // HAProxy runs the change; the file lags until the disk takes it (the next render
            // finds it different and writes it again, still with no reload).
            error!(template = %name, error = %e,
                "render: HAProxy took the change at run time, but the file could not be written");
            self.set_status(i, |s| s.error = Some(format!("writing the config: {e}")));
            return Ok(());
        }
        self.slots[i].last_good = Some(bytes.to_vec());
        self.keep_last_good(i, bytes, true).await;
        self.slots[i].last_failed = None;
        info!(template = %name, commands = commands.len(),
            elapsed_ms = (seconds * 1000.0) as u64,
            "render: servers changed through the runtime API (no reload)");
        self.set_status(i, |s| {
            s.runtime_updates += 1;
            s.runtime_durations.observe(seconds);
            s.error = None;
            s.config_hash = Some(version.to_string());
            s.last_apply = Some(SystemTime::now());
            s.last_success = Some(SystemTime::now());
        });
        Ok(())
    }

    /// Reads every slot back from HAProxy (at each probe); slots that differ from what was
    /// applied (changed by hand, say) are set back. If that fails, the file is reloaded.
    /// Reads HAProxy's view of each server into the status (after a reload: the new worker's).
    pub(super) async fn refresh_servers(&mut self, i: usize) {
        let Some(rt) = self.slots[i].cfg.runtime.clone() else {
            return;
        };
        match runtime::read(&rt.socket, &BTreeSet::new()).await {
            Ok(observed) => {
                let table = self.slots[i].applied.as_ref().map(|a| a.table.clone());
                self.record_servers(i, &observed, table.as_ref(), true);
            }
            Err(e) => debug!(template = %self.slots[i].cfg.name, error = %e,
                "render: cannot read HAProxy's servers after the reload"),
        }
    }

    pub(super) async fn check_drift(&mut self, i: usize) {
        let (Some(rt), Some(applied)) = (
            self.slots[i].cfg.runtime.clone(),
            self.slots[i].applied.clone(),
        ) else {
            return;
        };
        let name = self.slots[i].cfg.name.clone();
        let observed = match runtime::read(&rt.socket, &BTreeSet::new()).await {
            Ok(o) => o,
            Err(e) => {
                debug!(template = %name, error = %e, "render: cannot read HAProxy's slots");
                return;
            }
        };
        self.record_servers(i, &observed, Some(&applied.table), true);
        let running = runtime::observed_table(&observed, 0);
        let wrong = runtime::mismatches(&applied.table, &running, None);
        if wrong.is_empty() {
            return;
        }
        warn!(template = %name, servers = wrong.len(), differences = %summary(&wrong),
            "render: HAProxy's servers differ from bender's slots; setting them back");
        let repair = slots::commands(&running, &applied.table);
        let fixed = runtime::apply(&rt.socket, &repair)
            .await
            .map(|(observed, touched)| {
                let now = runtime::observed_table(&observed, 0);
                (
                    runtime::mismatches(&applied.table, &now, Some(&touched)),
                    observed,
                )
            });
        match fixed {
            Ok((still, observed)) if still.is_empty() => {
                self.record_servers(i, &observed, Some(&applied.table), false);
                self.set_status(i, |s| s.drift_repairs += wrong.len() as u64);
                info!(template = %name, servers = wrong.len(), "render: HAProxy's servers set back");
            }
            other => {
                let why = match other {
                    Ok((still, _)) => summary(&still),
                    Err(e) => e,
                };
                error!(template = %name, error = %why,
                    "render: cannot set HAProxy's servers back at run time; reloading the config on disk");
                self.slots[i].applied = None;
                let Some(bytes) = self.slots[i].last_good.clone() else {
                    return;
                };
                let version = applied.version.clone();
                self.set_status(i, |s| *s.reload_reasons.entry("drift").or_default() += 1);
                let _ = self.reload_only(i, version, bytes, applied.table).await;
            }
        }
    }

    /// Keeps HAProxy's view of the occupied slots in the status: all of it after a `full`
    /// read, else the backends read.
    fn record_servers(
        &mut self,
        i: usize,
        observed: &[Observed],
        table: Option<&Table>,
        full: bool,
    ) {
        let backends: BTreeSet<&str> = observed.iter().map(|o| o.backend.as_str()).collect();
        let fresh: Vec<ServerView> = observed
            .iter()
            .filter(|o| {
                // Occupied slots only: an empty slot is in maintenance by design.
                let index = slots::slot_index(&o.server);
                match (table, index) {
                    (Some(t), Some(idx)) => t
                        .backends
                        .get(&o.backend)
                        .and_then(|s| s.get(idx))
                        .is_some_and(Option::is_some),
                    (None, Some(_)) => o.state != slots::SlotState::Maint,
                    (_, None) => true,
                }
            })
            .map(|o| ServerView {
                backend: o.backend.clone(),
                server: o.server.clone(),
                address: if o.host.contains(':') {
                    format!("[{}]:{}", o.host, o.port)
                } else {
                    format!("{}:{}", o.host, o.port)
                },
                status: o.status(),
            })
            .collect();
        self.set_status(i, |s| {
            s.servers
                .retain(|v| !full && !backends.contains(v.backend.as_str()));
            s.servers.extend(fresh);
            s.servers.sort_by(|a, b| {
                let key = |v: &ServerView| (v.backend.clone(), slots::slot_index(&v.server));
                key(a).cmp(&key(b))
            });
        });
    }
}
