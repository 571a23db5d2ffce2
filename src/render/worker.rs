//! The render/apply task: a loop over `select!{ view changed, template edited, debounce timer,
//! shutdown }` that applies one template at a time, so HAProxy never sees two reloads race.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use notify::Watcher as _;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::config::{ApplyConfig, ReloadConfig, TemplateConfig};
use super::durations::Durations;
use super::error::RenderError;
use super::template::Compiled;
use super::{config_hash, context, files, reload, template};
use crate::cluster::NodeView;
use crate::model::Snippets;
use crate::shutdown::Shutdown;

/// The state of one template as the status endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateStatus {
    pub name: String,
    pub destination: PathBuf,
    /// True when the template loads and what HAProxy runs is the latest render.
    pub ok: bool,
    /// The last failure to render or apply, until a later render is in place.
    pub error: Option<String>,
    /// Why the template file does not load (with file:line:column); the last version that
    /// loaded keeps rendering until the file is fixed.
    pub template_error: Option<String>,
    /// Whether the template's directory is watched for edits.
    pub watching: bool,
    /// Entities and registrations this node left out of the last render because they fail its
    /// validation (a peer running another version, a hostile peer, raw snippets this node does
    /// not allow); the rest of the config is applied without them.
    pub excluded: Vec<context::Excluded>,
    /// FNV-1a of the config HAProxy is known to run (the last good one).
    pub config_hash: Option<String>,
    /// Renders done (every debounced change; most are identical and go no further).
    pub renders: u64,
    /// Attempts to put a changed config in place.
    pub applies: u64,
    /// Of those, the ones that failed (check, write, or reload).
    pub failures: u64,
    /// Renders that failed (a template error at render time), counted once per distinct error:
    /// they never reach the apply step, so they are not among `applies`.
    pub render_errors: u64,
    /// Reloads sent to HAProxy, including those that put the last good config back.
    pub reloads: u64,
    /// How long the last render took (context, template, reading the current file).
    pub last_render_seconds: Option<f64>,
    /// How long the last validation (`haproxy -c`) took.
    pub last_check_seconds: Option<f64>,
    /// Every render's duration, for `/metrics` (not in the JSON status).
    #[serde(skip)]
    pub render_durations: Durations,
    /// Every validation's duration, for `/metrics` (not in the JSON status).
    #[serde(skip)]
    pub check_durations: Durations,
    #[serde(with = "humantime_serde")]
    pub last_apply: Option<SystemTime>,
    #[serde(with = "humantime_serde")]
    pub last_success: Option<SystemTime>,
}

impl TemplateStatus {
    pub(crate) fn new(cfg: &TemplateConfig) -> Self {
        TemplateStatus {
            name: cfg.name.clone(),
            destination: cfg.destination.clone(),
            ok: false,
            error: None,
            template_error: None,
            watching: false,
            excluded: Vec::new(),
            config_hash: None,
            renders: 0,
            applies: 0,
            failures: 0,
            render_errors: 0,
            reloads: 0,
            last_render_seconds: None,
            last_check_seconds: None,
            render_durations: Durations::default(),
            check_durations: Durations::default(),
            last_apply: None,
            last_success: None,
        }
    }
}

/// One template's working state.
struct Slot {
    cfg: TemplateConfig,
    /// The source as an absolute path: what the directory watcher reports.
    source: PathBuf,
    /// The last version of the template that parsed.
    compiled: Option<Arc<Compiled>>,
    /// The config HAProxy is known to run: the file found at start, then each verified apply.
    last_good: Option<Vec<u8>>,
    /// A render that failed to apply: retried only once its back-off has passed, so renewals
    /// do not make a bad config reload HAProxy again and again.
    last_failed: Option<Failed>,
}

/// A render that failed to apply, and when it may be tried again.
#[derive(Debug, Clone)]
struct Failed {
    hash: String,
    retry_at: Instant,
    /// Consecutive unconfirmed attempts of this render: each doubles the wait.
    attempts: u32,
    /// Whether the worker wakes at `retry_at` to try again: cleared once it has woken, so a
    /// retry that cannot run (the view not ready, a template that no longer renders) does
    /// not wake it again and again.
    wake: bool,
}

/// The first wait before retrying a render whose reload had no verdict (the master did not
/// answer, or not in time): that may pass on its own, so it is retried soon, then less often.
const FIRST_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why an apply failed, for the status, and whether the cause may pass on its own.
struct ApplyFailure {
    text: String,
    /// No verdict from HAProxy (unreachable, not confirmed in time): retried with back-off.
    /// Otherwise (the check or HAProxy rejected the config) only after `retry_failed_after`.
    transient: bool,
}

impl From<String> for ApplyFailure {
    fn from(text: String) -> Self {
        ApplyFailure {
            text,
            transient: false,
        }
    }
}

/// When the next apply is due: after a quiet period, or once the oldest change is too old.
#[derive(Debug, Default)]
struct Debounce {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    fn mark(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }
    fn deadline(&self, s: &ApplyConfig) -> Option<Instant> {
        Some((self.last? + s.debounce_quiet).min(self.first? + s.debounce_max))
    }
    fn clear(&mut self) {
        *self = Debounce::default();
    }
}

pub(crate) struct Worker {
    settings: ApplyConfig,
    node_id: String,
    snippets: Snippets,
    slots: Vec<Slot>,
    status: Arc<Mutex<Vec<TemplateStatus>>>,
}

impl Worker {
    pub(crate) fn new(
        settings: ApplyConfig,
        templates: Vec<TemplateConfig>,
        node_id: String,
        snippets: Snippets,
        status: Arc<Mutex<Vec<TemplateStatus>>>,
    ) -> Self {
        let slots = templates
            .into_iter()
            .map(|cfg| Slot {
                source: std::path::absolute(&cfg.source).unwrap_or_else(|_| cfg.source.clone()),
                cfg,
                compiled: None,
                last_good: None,
                last_failed: None,
            })
            .collect();
        Worker {
            settings,
            node_id,
            snippets,
            slots,
            status,
        }
    }

    fn set_status(&self, i: usize, f: impl FnOnce(&mut TemplateStatus)) {
        let mut all = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.get_mut(i) {
            f(s);
            // Healthy: the template loads, nothing failed since, and a config is in place.
            s.ok = s.error.is_none() && s.template_error.is_none() && s.config_hash.is_some();
        }
    }

    pub(crate) async fn run(
        mut self,
        mut views: watch::Receiver<Arc<NodeView>>,
        mut shutdown: Shutdown,
    ) {
        self.load_templates().await;
        self.load_last_good().await;
        // Edits only mark the templates stale; they are re-read when the debounce fires, so an
        // editor's write-rename-chmod burst is read once, complete.
        let (edits_tx, mut edits) = mpsc::channel::<()>(1);
        let _watcher = self.watch_templates(edits_tx);
        let mut templates_stale = false;
        let mut debounce = Debounce::default();
        if views.borrow_and_update().ready {
            debounce.mark(Instant::now());
        }
        loop {
            let deadline = debounce.deadline(&self.settings);
            // A failed render is tried again when its back-off ends, even if nothing changes.
            let retry_at = self
                .slots
                .iter()
                .filter_map(|s| {
                    s.last_failed
                        .as_ref()
                        .filter(|f| f.wake)
                        .map(|f| f.retry_at)
                })
                .min();
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                changed = views.changed() => {
                    if changed.is_err() {
                        info!("render: the view channel closed; stopping");
                        break;
                    }
                    if views.borrow_and_update().ready {
                        debounce.mark(Instant::now());
                    }
                }
                Some(()) = edits.recv() => {
                    debug!("render: a template changed on disk");
                    templates_stale = true;
                    debounce.mark(Instant::now());
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() && deadline.is_none() => {
                    debug!("render: retrying a config that failed to apply");
                    let now = Instant::now();
                    for f in self.slots.iter_mut().filter_map(|s| s.last_failed.as_mut()) {
                        if f.retry_at <= now {
                            f.wake = false;
                        }
                    }
                    debounce.mark(now);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    debounce.clear();
                    if templates_stale {
                        templates_stale = false;
                        self.load_templates().await;
                    }
                    // Clone the Arc and release the channel's lock before any await.
                    let nv = views.borrow_and_update().clone();
                    if nv.ready {
                        self.apply_all(nv).await;
                    }
                }
            }
        }
    }

    /// (Re)loads every template; a template that fails keeps its last good version.
    async fn load_templates(&mut self) {
        for i in 0..self.slots.len() {
            let path = self.slots[i].source.clone();
            let loaded = tokio::task::spawn_blocking(move || template::load(&path))
                .await
                .unwrap_or_else(|e| {
                    Err(RenderError::Template {
                        path: self.slots[i].source.clone(),
                        line: None,
                        column: None,
                        message: format!("loading panicked: {e}"),
                    })
                });
            let name = self.slots[i].cfg.name.clone();
            match loaded {
                Ok(compiled) => {
                    self.slots[i].compiled = Some(Arc::new(compiled));
                    self.set_status(i, |s| {
                        if s.template_error.take().is_some() {
                            info!(template = %name, "render: template loads again");
                        }
                    });
                }
                Err(e) => {
                    let text = e.to_string();
                    let keeping = self.slots[i].compiled.is_some();
                    self.set_status(i, |s| {
                        if s.template_error.as_deref() != Some(&text) {
                            warn!(template = %name, error = %text, keeping_last_good = keeping,
                                "render: template does not load");
                        }
                        s.template_error = Some(text);
                    });
                }
            }
        }
    }

    /// Takes what is on disk at start as the config HAProxy runs: the restore point.
    async fn load_last_good(&mut self) {
        for i in 0..self.slots.len() {
            let dest = self.slots[i].cfg.destination.clone();
            match tokio::task::spawn_blocking(move || files::read_current(&dest)).await {
                Ok(Ok(current)) => {
                    let hash = current.as_deref().map(config_hash);
                    self.slots[i].last_good = current;
                    self.set_status(i, |s| s.config_hash = hash);
                }
                Ok(Err(e)) => warn!(template = %self.slots[i].cfg.name, error = %e,
                    "render: cannot read the current config; a failed apply will have nothing to restore"),
                Err(e) => warn!(error = %e, "render: reading the current config panicked"),
            }
        }
    }

    /// Watches each template's directory (editors replace files by rename, which a watch on
    /// the file itself would miss). The watcher lives as long as the returned value.
    fn watch_templates(&self, edits: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let sources: BTreeSet<PathBuf> = self.slots.iter().map(|s| s.source.clone()).collect();
        let handler = {
            let sources = sources.clone();
            move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                // Our own reads of the template show up as access events: ignore them, or
                // every load would trigger another.
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                if event.paths.iter().any(|p| sources.contains(p)) {
                    // Full means a wake-up is already queued: nothing is lost.
                    let _ = edits.try_send(());
                }
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(source) => {
                warn!(error = %source, "render: cannot watch template files; edits need a restart");
                return None;
            }
        };
        let dirs: BTreeSet<PathBuf> = sources
            .iter()
            .filter_map(|s| s.parent().map(PathBuf::from))
            .collect();
        for dir in dirs {
            match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    for (i, slot) in self.slots.iter().enumerate() {
                        if slot.source.parent() == Some(dir.as_path()) {
                            self.set_status(i, |s| s.watching = true);
                        }
                    }
                }
                Err(source) => {
                    let e = RenderError::Watch { path: dir, source };
                    warn!(error = %e, "render: template edits in this directory need a restart");
                }
            }
        }
        Some(watcher)
    }

    async fn apply_all(&mut self, nv: Arc<NodeView>) {
        for i in 0..self.slots.len() {
            self.apply_one(i, nv.clone()).await;
        }
    }

    /// Renders template `i` and, if the output differs from the file, puts it in place.
    async fn apply_one(&mut self, i: usize, nv: Arc<NodeView>) {
        let Some(compiled) = self.slots[i].compiled.clone() else {
            return; // Never loaded: the status already says why.
        };
        let name = self.slots[i].cfg.name.clone();
        let dest = self.slots[i].cfg.destination.clone();
        let node_id = self.node_id.clone();
        let vars = self.slots[i].cfg.vars.clone();
        let render_dest = dest.clone();
        let snippets = self.snippets;
        // Building the context, rendering and reading the current file are CPU and disk work:
        // keep them off the reactor.
        let render_started = Instant::now();
        let rendered = tokio::task::spawn_blocking(move || {
            let (ctx, excluded) = context::build_screened(&node_id, &nv, &vars, snippets);
            let text = compiled.render(&ctx)?;
            let current = files::read_current(&render_dest)?;
            Ok::<_, RenderError>((text.into_bytes(), current, excluded))
        })
        .await;
        let render_seconds = render_started.elapsed().as_secs_f64();
        self.set_status(i, |s| {
            s.renders += 1;
            s.last_render_seconds = Some(render_seconds);
            s.render_durations.observe(render_seconds);
        });
        let (bytes, current, excluded) = match rendered {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.render_failed(i, e.to_string()),
            Err(e) => return self.render_failed(i, format!("rendering panicked: {e}")),
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
        if current.as_deref() == Some(bytes.as_slice()) {
            // Same bytes as on disk: nothing to write, nothing to reload.
            self.slots[i].last_failed = None;
            self.set_status(i, |s| {
                if s.error.take().is_some() {
                    info!(template = %name, "render: the config on disk is current again");
                }
            });
            return;
        }
        let hash = config_hash(&bytes);
        let attempts = match &self.slots[i].last_failed {
            Some(f) if f.hash == hash && Instant::now() < f.retry_at => {
                debug!(template = %name, hash = %hash, "render: skipping a render that failed recently");
                return;
            }
            Some(f) if f.hash == hash => f.attempts,
            _ => 0,
        };
        self.set_status(i, |s| {
            s.applies += 1;
            s.last_apply = Some(SystemTime::now());
        });
        let started = Instant::now();
        match self.put_in_place(i, &bytes).await {
            Ok(verified) => {
                let slot = &mut self.slots[i];
                slot.last_good = Some(bytes);
                slot.last_failed = None;
                info!(template = %name, destination = %dest.display(), hash = %hash,
                    verified, elapsed_ms = started.elapsed().as_millis() as u64,
                    "render: applied a new config");
                if !verified {
                    warn!(template = %name,
                        "render: reload sent but not verified (no master socket configured)");
                }
                self.set_status(i, |s| {
                    s.error = None;
                    s.config_hash = Some(hash);
                    s.last_success = Some(SystemTime::now());
                });
            }
            Err(ApplyFailure { text, transient }) => {
                let wait = if transient {
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
            }
        }
    }

    fn render_failed(&mut self, i: usize, text: String) {
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
    async fn put_in_place(&mut self, i: usize, bytes: &[u8]) -> Result<bool, ApplyFailure> {
        let cfg = self.slots[i].cfg.clone();
        let dest = cfg.destination.clone();
        let owned = bytes.to_vec();
        let staged = tokio::task::spawn_blocking(move || files::Staged::write(&dest, &owned))
            .await
            .map_err(|e| format!("writing panicked: {e}"))?
            .map_err(|e| e.to_string())?;
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
        checked.map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || staged.commit())
            .await
            .map_err(|e| format!("renaming panicked: {e}"))?
            .map_err(|e| e.to_string())?;
        let (reload_error, transient) = match self.reload(i).await {
            Ok(verified) => return Ok(verified),
            Err(e @ RenderError::Reload { rejected, .. }) => (e.to_string(), !rejected),
            Err(e) => (e.to_string(), false),
        };
        let fail = |text: String| ApplyFailure { text, transient };
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
        let good_hash = self.slots[i]
            .last_good
            .as_deref()
            .map(config_hash)
            .unwrap_or_default();
        match self.reload(i).await {
            Ok(_) => Err(fail(format!(
                "{reload_error}; restored the last good config ({good_hash}) and reloaded it"
            ))),
            Err(e) => Err(fail(format!(
                "{reload_error}; restored the last good config ({good_hash}) but reloading it failed: {e}"
            ))),
        }
    }

    async fn reload(&mut self, i: usize) -> Result<bool, RenderError> {
        let cfg = &self.slots[i].cfg;
        if cfg.reload == ReloadConfig::None {
            return Ok(true);
        }
        if let Some(state) = &cfg.server_state {
            if let Err(e) = reload::save_server_state(state).await {
                // Not fatal: the new worker then starts with every server assumed up.
                warn!(template = %cfg.name, error = %e, "render: cannot save server state before reload");
            }
        }
        let reload_cfg = cfg.reload.clone();
        self.set_status(i, |s| s.reloads += 1);
        reload::reload(&reload_cfg, self.settings.reload_timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let s = ApplyConfig::default();
        let mut d = Debounce::default();
        assert_eq!(d.deadline(&s), None);
        let t0 = Instant::now();
        d.mark(t0);
        assert_eq!(d.deadline(&s), Some(t0 + s.debounce_quiet));
        // Changes every 100 ms keep pushing the quiet deadline, until the maximum wait.
        for k in 1..20u32 {
            d.mark(t0 + k * std::time::Duration::from_millis(100));
        }
        assert_eq!(d.deadline(&s), Some(t0 + s.debounce_max));
        d.clear();
        assert_eq!(d.deadline(&s), None);
    }
}
