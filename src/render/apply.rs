//! One apply of one template: render (leaving out what is quarantined), compare with the file,
//! write a temp file, check it, rename it, reload HAProxy, verify, and put the last good config
//! back when HAProxy refuses the new one. A check failure pinned on entities quarantines them
//! and the rest is tried again (`Round::Blamed`).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::config::ReloadConfig;
use super::error::RenderError;
use super::sections::{self, EntityRef};
use super::worker::{Applied, Failed, Worker, FIRST_RETRY};
use super::{config_hash, context, files, reload, slots, stamp};

/// The version a config carries (its stamp), or its hash when it has none.
pub(super) fn version_of(bytes: &[u8]) -> String {
    stamp::of_file(&String::from_utf8_lossy(bytes)).unwrap_or_else(|| config_hash(bytes))
}
use crate::cluster::NodeView;

/// Why an apply failed, for the status, and whether the cause may pass on its own.
pub(super) struct ApplyFailure {
    text: String,
    /// No verdict from HAProxy (unreachable, not confirmed in time): retried with back-off.
    /// Otherwise (the check or HAProxy rejected the config) only after `retry_failed_after`.
    transient: bool,
    /// What the check said, when the check is what refused the config.
    check_output: Option<String>,
    /// The file could not be written (a full or read-only file system): retried soon and
    /// often, so the config goes in as soon as the disk takes it.
    io: bool,
}

impl From<String> for ApplyFailure {
    fn from(text: String) -> Self {
        ApplyFailure {
            text,
            transient: false,
            check_output: None,
            io: false,
        }
    }
}

impl ApplyFailure {
    fn io(e: RenderError) -> Self {
        ApplyFailure {
            text: e.to_string(),
            transient: true,
            check_output: None,
            io: true,
        }
    }
}

/// The longest wait before retrying a config the disk did not take.
const IO_RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(5);

/// How one render-and-apply ended.
pub(super) enum Round {
    /// Applied, refused, or nothing to do: the outcome is in the status.
    Done,
    /// The check refused it, and these entities are to blame: leave them out and try again.
    Blamed(Vec<(EntityRef, (u64, String))>),
}

impl Worker {
    /// One render-and-apply of template `i`.
    pub(super) async fn apply_round(&mut self, i: usize, nv: Arc<NodeView>) -> Round {
        let Some(compiled) = self.slots[i].compiled.clone() else {
            return Round::Done; // Never loaded: the status already says why.
        };
        let name = self.slots[i].cfg.name.clone();
        let dest = self.slots[i].cfg.destination.clone();
        let node_id = self.node_id.clone();
        let vars = self.slots[i].cfg.vars.clone();
        let render_dest = dest.clone();
        let snippets = self.snippets;
        // Quarantined entities whose value changed get another chance.
        self.slots[i].quarantine.retain(|e, (digest, _)| match e {
            EntityRef::Backend(n) => {
                nv.view.backends.get(n).map(context::entity_digest) == Some(*digest)
            }
            EntityRef::Frontend(n) => {
                nv.view.frontends.get(n).map(context::entity_digest) == Some(*digest)
            }
        });
        let quarantine = self.slots[i].quarantine.clone();
        let view = nv.clone();
        let resolver = self.resolver.clone();
        let settings = self.slots[i].cfg.slot_settings();
        let runtime = self.slots[i].cfg.runtime.is_some();
        self.seed_slots(i).await;
        let prev = self.slots[i].servers.clone();
        let now_ms = self.now_ms();
        // Building the context, rendering and reading the current file are CPU and disk work:
        // keep them off the reactor.
        let render_started = Instant::now();
        let rendered = tokio::task::spawn_blocking(move || {
            // Host names are rendered as addresses bender resolved: `haproxy -c` never waits on
            // DNS. Names no registration uses any more are forgotten.
            let resolve = |name: &str| resolver.address(name);
            let names = context::Names::Resolved(&resolve);
            let (mut ctx, excluded) =
                context::build_without(&node_id, &view, &vars, snippets, &quarantine, &names);
            let hosts: std::collections::BTreeSet<&str> = view
                .served()
                .map(|(k, _)| k.host.as_str())
                .filter(|h| h.parse::<std::net::IpAddr>().is_err())
                .collect();
            resolver.retain(&hosts);
            // Servers keep the slots they had.
            let table = slots::assign(&prev, &slots::wanted_of(&ctx.backends), now_ms, &settings);
            context::fill_slots(&mut ctx, &table);
            let text = compiled.render(&ctx)?;
            let (stamped, version) = if runtime {
                let structure = compiled.render(&context::structure_of(&ctx))?;
                stamp::stamp_as(&text, config_hash(structure.as_bytes()))
            } else {
                stamp::stamp(&text)
            };
            let current = files::read_current(&render_dest)?;
            Ok::<_, RenderError>((stamped.into_bytes(), version, current, excluded, table))
        })
        .await;
        let render_seconds = render_started.elapsed().as_secs_f64();
        self.set_status(i, |s| {
            s.renders += 1;
            s.last_render_seconds = Some(render_seconds);
            s.render_durations.observe(render_seconds);
        });
        let (bytes, version, current, excluded, table) = match rendered {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.render_failed(i, e.to_string());
                return Round::Done;
            }
            Err(e) => {
                self.render_failed(i, format!("rendering panicked: {e}"));
                return Round::Done;
            }
        };
        self.set_status(i, |s| {
            if s.excluded != excluded {
                for e in excluded.iter().filter(|e| !s.excluded.contains(e)) {
                    // Names and reasons may come from a peer: Debug-quoted, never raw.
                    warn!(template = %name, kind = e.kind, entity = ?e.name, reason = ?e.reason,
                        "render: left out of the config (it fails this node's validation); the rest is applied");
                }
                s.excluded = excluded;
            }
        });
        let hash = version;
        self.slots[i].servers = table.clone();
        // What HAProxy runs, as last seen (None: it cannot be asked, or runs no stamped config).
        let running = self.slots[i].running.clone();
        let same_file = current.as_deref() == Some(bytes.as_slice());
        if same_file && running.as_ref().is_some_and(|r| *r != hash) {
            // The file is current but HAProxy runs something else: a crash between rename and
            // reload, or a reload that did not take. Reload what is on disk.
            return self.reload_only(i, hash, bytes, table).await;
        }
        if same_file {
            // Same bytes as on disk: nothing to write, nothing to reload.
            self.slots[i].last_failed = None;
            self.set_status(i, |s| {
                if s.error.take().is_some() {
                    info!(template = %name, "render: the config on disk is current again");
                }
            });
            return Round::Done;
        }
        // Only servers changed within their slots, and HAProxy runs this structure: the runtime
        // API, no reload. Otherwise (or if that fails), a reload, and the reason is counted.
        let reason = match self.try_runtime(i, &table, &bytes, &hash).await {
            Ok(()) => return Round::Done,
            Err(reason) => reason,
        };
        let attempts = match &self.slots[i].last_failed {
            Some(f) if f.hash == hash && Instant::now() < f.retry_at => {
                debug!(template = %name, hash = %hash, "render: skipping a render that failed recently");
                return Round::Done;
            }
            Some(f) if f.hash == hash => f.attempts,
            _ => 0,
        };
        self.set_status(i, |s| {
            s.applies += 1;
            s.last_apply = Some(SystemTime::now());
        });
        let started = Instant::now();
        self.set_status(i, |s| {
            *s.reload_reasons.entry(reason.label()).or_default() += 1
        });
        match self.put_in_place(i, &bytes, &hash).await {
            Ok(verified) => {
                self.keep_last_good(i, &bytes, verified).await;
                let slot = &mut self.slots[i];
                slot.last_good = Some(bytes);
                slot.last_failed = None;
                if verified {
                    slot.running = Some(hash.clone());
                }
                slot.applied = (runtime && verified).then(|| Applied {
                    version: hash.clone(),
                    table,
                });
                // The new worker's view of each server, not the old one's until the next probe.
                if runtime && verified {
                    self.refresh_servers(i).await;
                }
                info!(template = %name, destination = %dest.display(), hash = %hash,
                    verified, elapsed_ms = started.elapsed().as_millis() as u64,
                    reload_reason = %reason, "render: applied a new config");
                // Said once per template: it is how the template is configured, not news.
                if !verified && !std::mem::replace(&mut self.slots[i].said_unverified, true) {
                    warn!(template = %name,
                        "render: reloads are sent but not verified: give the reload a master_socket to check that HAProxy took each one (said once; every apply logs `verified = false`)");
                }
                // A verified reload is HAProxy saying it runs this version: the status says
                // so now, not at the next probe (until then it would read not ok).
                let asked = verified && reload::probe_of(&self.slots[i].cfg).is_some();
                self.set_status(i, |s| {
                    s.error = None;
                    if asked {
                        s.running_config = Some(hash.clone());
                    }
                    s.config_hash = Some(hash);
                    s.last_success = Some(SystemTime::now());
                });
                Round::Done
            }
            Err(ApplyFailure {
                check_output: Some(output),
                ..
            }) if !self.blame(i, &nv, &bytes, &output).is_empty() => {
                // Not counted as a failure: the rest is applied without what HAProxy refused.
                self.set_status(i, |s| s.applies -= 1);
                Round::Blamed(self.blame(i, &nv, &bytes, &output))
            }
            Err(ApplyFailure {
                text,
                transient,
                io,
                ..
            }) => {
                let wait = if io {
                    FIRST_RETRY
                        .saturating_mul(1 << attempts.min(16))
                        .min(IO_RETRY_CAP)
                } else if transient {
                    FIRST_RETRY
                        .saturating_mul(1 << attempts.min(16))
                        .min(self.settings.retry_failed_after)
                } else {
                    self.settings.retry_failed_after
                };
                self.slots[i].last_failed = Some(Failed {
                    hash: hash.clone(),
                    retry_at: Instant::now() + wait,
                    attempts: attempts + 1,
                    wake: true,
                });
                error!(template = %name, destination = %dest.display(), hash = %hash,
                    error = %text, retry_in = %humantime::format_duration(wait),
                    "render: apply failed; the last good config keeps serving");
                self.set_status(i, |s| {
                    s.failures += 1;
                    s.error = Some(text);
                });
                Round::Done
            }
        }
    }

    /// The entities (not yet quarantined) that a failed check's alerts point at, each with the
    /// alert that blames it.
    fn blame(
        &self,
        i: usize,
        nv: &NodeView,
        bytes: &[u8],
        output: &str,
    ) -> Vec<(EntityRef, (u64, String))> {
        let text = String::from_utf8_lossy(bytes);
        let dest = self.slots[i].cfg.destination.display().to_string();
        let backends = nv.view.backends.keys().cloned().collect();
        let frontends = nv.view.frontends.keys().cloned().collect();
        let mut out: Vec<(EntityRef, (u64, String))> = Vec::new();
        for (alert, entities) in sections::blame(output, &dest, &text, &backends, &frontends) {
            for e in entities {
                if self.slots[i].quarantine.contains_key(&e) || out.iter().any(|(x, _)| *x == e) {
                    continue;
                }
                let digest = match &e {
                    EntityRef::Backend(n) => nv.view.backends.get(n).map(context::entity_digest),
                    EntityRef::Frontend(n) => nv.view.frontends.get(n).map(context::entity_digest),
                };
                if let Some(d) = digest {
                    out.push((e, (d, alert.trim().to_string())));
                }
            }
        }
        out
    }

    pub(super) fn render_failed(&mut self, i: usize, text: String) {
        let name = self.slots[i].cfg.name.clone();
        self.set_status(i, |s| {
            // Renewals re-render constantly: log a failure once, not on every render.
            if s.error.as_deref() != Some(&text) {
                error!(template = %name, error = %text,
                    "render: cannot render; the last good config keeps serving");
                s.render_errors += 1;
            }
            s.error = Some(text);
        });
    }

    /// Check, write, reload, verify; on a failed reload, put the last good config back.
    /// Returns whether the reload was verified, or why the apply failed.
    async fn put_in_place(
        &mut self,
        i: usize,
        bytes: &[u8],
        version: &str,
    ) -> Result<bool, ApplyFailure> {
        let cfg = self.slots[i].cfg.clone();
        let dest = cfg.destination.clone();
        let owned = bytes.to_vec();
        let staged = tokio::task::spawn_blocking(move || files::Staged::write(&dest, &owned))
            .await
            .map_err(|e| format!("writing panicked: {e}"))?
            .map_err(ApplyFailure::io)?;
        crate::crash_point!("render.after_write");
        let check_started = Instant::now();
        let checked = files::check(
            &cfg.check_command(),
            staged.path(),
            &cfg.destination,
            self.settings.check_timeout,
        )
        .await;
        let check_seconds = check_started.elapsed().as_secs_f64();
        self.set_status(i, |s| {
            s.last_check_seconds = Some(check_seconds);
            s.check_durations.observe(check_seconds);
        });
        checked.map_err(|e| {
            let check_output = match &e {
                RenderError::Check { output, .. } => Some(output.clone()),
                _ => None,
            };
            // A check that could not run (no answer in time, say) may pass on its own.
            let transient = check_output.is_none();
            ApplyFailure {
                text: e.to_string(),
                transient,
                check_output,
                io: false,
            }
        })?;
        crate::crash_point!("render.after_check");
        tokio::task::spawn_blocking(move || staged.commit())
            .await
            .map_err(|e| format!("renaming panicked: {e}"))?
            .map_err(ApplyFailure::io)?;
        crate::crash_point!("render.after_rename");
        let (reload_error, transient) = match self.reload(i, Some(version)).await {
            Ok(verified) => return Ok(verified),
            Err(e @ RenderError::Reload { rejected, .. }) => (e.to_string(), !rejected),
            Err(e) => (e.to_string(), false),
        };
        let fail = |text: String| ApplyFailure {
            text,
            transient,
            check_output: None,
            io: false,
        };
        // HAProxy refused the file (a bind it cannot make, say). Its old worker still serves
        // the old config; put that config back on disk so a restart does not pick up the bad
        // one, and reload so the master leaves its failed state.
        let Some(good) = self.slots[i].last_good.clone() else {
            return Err(fail(format!(
                "{reload_error}; no earlier config to restore, the new one stays on disk"
            )));
        };
        let dest = cfg.destination.clone();
        let restored = tokio::task::spawn_blocking(move || files::write_atomic(&dest, &good))
            .await
            .map_err(|e| format!("restoring panicked: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = restored {
            return Err(fail(format!(
                "{reload_error}; restoring the last good config failed too: {e}"
            )));
        }
        crate::crash_point!("render.after_restore");
        let good_hash = self.slots[i]
            .last_good
            .as_deref()
            .map(version_of)
            .unwrap_or_default();
        // An unstamped config (one from before bender stamped them) cannot be checked for.
        let good_stamp = self.slots[i]
            .last_good
            .as_deref()
            .and_then(|g| stamp::of_file(&String::from_utf8_lossy(g)));
        match self.reload(i, good_stamp.as_deref()).await {
            Ok(_) => Err(fail(format!(
                "{reload_error}; restored the last good config ({good_hash}) and reloaded it"
            ))),
            Err(e) => Err(fail(format!(
                "{reload_error}; restored the last good config ({good_hash}) but reloading it failed: {e}"
            ))),
        }
    }

    /// Reloads HAProxy as configured and, where HAProxy can be asked (`reload::probe_of`),
    /// waits until it runs `expect`. Returns whether the outcome was verified.
    pub(super) async fn reload(
        &mut self,
        i: usize,
        expect: Option<&str>,
    ) -> Result<bool, RenderError> {
        let cfg = self.slots[i].cfg.clone();
        if cfg.reload == ReloadConfig::None {
            return Ok(true);
        }
        if let Some(state) = &cfg.server_state {
            if let Err(e) = reload::save_server_state(state, &self.slots[i].servers).await {
                // Not fatal: the new worker then starts with every server assumed up.
                warn!(template = %cfg.name, error = %e, "render: cannot save server state before reload");
            }
        }
        self.set_status(i, |s| s.reloads += 1);
        let verified = reload::reload(&cfg.reload, self.settings.reload_timeout).await?;
        crate::crash_point!("render.after_reload");
        let (Some(expect), Some(probe)) = (expect, reload::probe_of(&cfg)) else {
            return Ok(verified);
        };
        match reload::wait_for_version(&probe, expect, self.settings.reload_timeout).await {
            Ok(()) => Ok(true),
            Err((reason, rejected)) => Err(RenderError::Reload {
                method: "version check",
                reason,
                rejected,
            }),
        }
    }

    /// Reloads the config already on disk (HAProxy runs another one) and verifies it.
    pub(super) async fn reload_only(
        &mut self,
        i: usize,
        version: String,
        bytes: Vec<u8>,
        table: slots::Table,
    ) -> Round {
        if self.slots[i]
            .last_failed
            .as_ref()
            .is_some_and(|f| f.hash == version && Instant::now() < f.retry_at)
        {
            return Round::Done; // Tried recently; its back-off wakes the worker.
        }
        let name = self.slots[i].cfg.name.clone();
        warn!(template = %name, file = %version,
            running = ?self.slots[i].running,
            "render: HAProxy does not run the config on disk; reloading it");
        self.set_status(i, |s| s.applies += 1);
        match self.reload(i, Some(&version)).await {
            Ok(verified) => {
                self.keep_last_good(i, &bytes, verified).await;
                let slot = &mut self.slots[i];
                slot.last_good = Some(bytes);
                slot.last_failed = None;
                slot.running = verified.then_some(version.clone());
                slot.applied = (verified && slot.cfg.runtime.is_some()).then(|| Applied {
                    version: version.clone(),
                    table,
                });
                info!(template = %name, hash = %version, verified, "render: HAProxy runs the config on disk again");
                let asked = verified && reload::probe_of(&self.slots[i].cfg).is_some();
                self.set_status(i, |s| {
                    s.error = None;
                    if asked {
                        s.running_config = Some(version.clone());
                    }
                    s.config_hash = Some(version);
                    s.last_success = Some(SystemTime::now());
                });
            }
            Err(e) => {
                // Put the last good config back where it differs from the file, as a refused
                // apply does; the next round finds the file current.
                let text = e.to_string();
                error!(template = %name, error = %text, "render: reloading the config on disk failed");
                if let Some(good) = self.slots[i].last_good.clone().filter(|g| *g != bytes) {
                    let dest = self.slots[i].cfg.destination.clone();
                    let _ = tokio::task::spawn_blocking(move || files::write_atomic(&dest, &good))
                        .await;
                }
                self.slots[i].last_failed = Some(Failed {
                    hash: version,
                    retry_at: Instant::now() + self.settings.retry_failed_after,
                    attempts: 1,
                    wake: true,
                });
                self.set_status(i, |s| {
                    s.failures += 1;
                    s.error = Some(text);
                });
            }
        }
        Round::Done
    }

    /// Keeps a copy of a config HAProxy was seen to run, beside the target, for a restarted
    /// node to put back (only verified ones: an unverified reload may not have taken).
    pub(super) async fn keep_last_good(&self, i: usize, bytes: &[u8], verified: bool) {
        if !verified {
            return;
        }
        crate::crash_point!("render.before_keep");
        let path = files::last_good_path(&self.slots[i].cfg.destination);
        let owned = bytes.to_vec();
        let kept = tokio::task::spawn_blocking(move || files::write_atomic(&path, &owned)).await;
        if let Ok(Err(e)) = kept {
            warn!(template = %self.slots[i].cfg.name, error = %e,
                "render: cannot keep a copy of the applied config; a restart after a crash may have nothing to restore");
        }
    }
}
