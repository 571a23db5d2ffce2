//! The render/apply task: a loop over `select!{ view changed, template edited, debounce timer,
//! shutdown }` that applies one template at a time, so HAProxy never sees two reloads race.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use notify::Watcher as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::apply::version_of;
use super::apply::Round;
use super::config::{ApplyConfig, TemplateConfig};
use super::context::Quarantine;
use super::error::RenderError;
use super::resolve::Resolver;
use super::status::{ApplySummary, TemplateStatus};
use super::template::Compiled;
use super::{files, reload, slots, template};
use crate::cluster::NodeView;
use crate::model::Snippets;
use crate::shutdown::Shutdown;

/// One template's working state.
pub(super) struct Slot {
    pub(super) cfg: TemplateConfig,
    /// The source as an absolute path: what the directory watcher reports.
    pub(super) source: PathBuf,
    /// The last version of the template that parsed.
    pub(super) compiled: Option<Arc<Compiled>>,
    /// The config HAProxy is known to run: the file found at start, then each verified apply.
    pub(super) last_good: Option<Vec<u8>>,
    /// A render that failed to apply: retried only once its back-off has passed, so renewals
    /// do not make a bad config reload HAProxy again and again.
    pub(super) last_failed: Option<Failed>,
    /// Entities HAProxy refused in this template's render: left out until they change (or the
    /// template does), so that the rest of the config keeps being applied.
    pub(super) quarantine: Quarantine,
    /// The config version HAProxy was last seen to run (None: unknown, or unstamped).
    pub(super) running: Option<String>,
    /// The server slots of the last render: each server keeps its slot from one render to the
    /// next. Seeded from HAProxy at the first render where the runtime API is configured.
    pub(super) servers: slots::Table,
    pub(super) seeded: bool,
    /// What HAProxy was last confirmed to run, for the runtime API path; None when unknown (no
    /// runtime API, nothing confirmed yet, or a failure since): the next change reloads.
    pub(super) applied: Option<Applied>,
    /// Whether the log said that this template's reloads cannot be verified.
    pub(super) said_unverified: bool,
}

/// A config structure HAProxy runs and the slots it was confirmed to hold.
#[derive(Debug, Clone)]
pub(super) struct Applied {
    pub(super) version: String,
    pub(super) table: slots::Table,
}

/// A render that failed to apply, and when it may be tried again.
#[derive(Debug, Clone)]
pub(super) struct Failed {
    pub(super) hash: String,
    pub(super) retry_at: Instant,
    /// Consecutive unconfirmed attempts of this render: each doubles the wait.
    pub(super) attempts: u32,
    /// Whether the worker wakes at `retry_at` to try again: cleared once it has woken, so a
    /// retry that cannot run (the view not ready, a template that no longer renders) does
    /// not wake it again and again.
    pub(super) wake: bool,
}

/// The first wait before retrying a render whose reload had no verdict (the master did not
/// answer, or not in time): that may pass on its own, so it is retried soon, then less often.
pub(super) const FIRST_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// How many times one apply leaves out the entities a failed check blamed and tries again.
const MAX_QUARANTINE_ROUNDS: usize = 4;

/// The last version of each template that parsed, by template index.
pub(crate) type SharedCompiled = Arc<std::sync::RwLock<Vec<Option<Arc<Compiled>>>>>;

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
    fn deadline(&self, s: &ApplyConfig, quiet: std::time::Duration) -> Option<Instant> {
        Some((self.last? + quiet).min(self.first? + s.debounce_max))
    }
    fn clear(&mut self) {
        *self = Debounce::default();
    }
}

pub(crate) struct Worker {
    /// Host names of registrations, resolved in the background (shared with the preflight).
    pub(super) resolver: Resolver,
    /// The templates that parsed, shared with the preflight check of writes.
    pub(super) shared_compiled: SharedCompiled,
    pub(super) settings: ApplyConfig,
    pub(super) node_id: String,
    pub(super) snippets: Snippets,
    pub(super) slots: Vec<Slot>,
    pub(super) status: Arc<Mutex<Vec<TemplateStatus>>>,
    /// Each template's [`ApplySummary`], sent whenever one changes (the fleet status).
    pub(super) summaries: watch::Sender<Vec<ApplySummary>>,
    /// The origin of the clock slot drains are timed on.
    pub(super) epoch: Instant,
}

impl Worker {
    pub(crate) fn new(
        settings: ApplyConfig,
        templates: Vec<TemplateConfig>,
        node_id: String,
        snippets: Snippets,
        status: Arc<Mutex<Vec<TemplateStatus>>>,
        shared_compiled: SharedCompiled,
        resolver: Resolver,
    ) -> Self {
        let (summaries, _) = watch::channel(
            templates
                .iter()
                .map(|t| ApplySummary {
                    name: t.name.clone(),
                    ..Default::default()
                })
                .collect(),
        );
        let slots = templates
            .into_iter()
            .map(|cfg| Slot {
                source: std::path::absolute(&cfg.source).unwrap_or_else(|_| cfg.source.clone()),
                cfg,
                compiled: None,
                last_good: None,
                last_failed: None,
                quarantine: Quarantine::new(),
                running: None,
                servers: slots::Table::default(),
                seeded: false,
                applied: None,
                said_unverified: false,
            })
            .collect();
        Worker {
            resolver,
            shared_compiled,
            settings,
            node_id,
            snippets,
            slots,
            status,
            summaries,
            epoch: Instant::now(),
        }
    }

    /// Milliseconds on the worker's clock (tokio's, so tests can pause it).
    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// When the next draining server's slot is to be freed, on tokio's clock.
    fn next_drain_end(&self) -> Option<Instant> {
        let ms = self
            .slots
            .iter()
            .filter_map(|s| slots::next_drain_end(&s.servers))
            .min()?;
        Some(self.epoch + std::time::Duration::from_millis(ms))
    }

    /// The quiet period changes wait for: short when every template can take membership
    /// changes at run time (a reload is then the exception), else `debounce_quiet`.
    fn quiet(&self) -> std::time::Duration {
        if !self.slots.is_empty() && self.slots.iter().all(|s| s.cfg.runtime.is_some()) {
            self.settings.debounce_runtime
        } else {
            self.settings.debounce_quiet
        }
    }

    pub(super) fn set_status(&self, i: usize, f: impl FnOnce(&mut TemplateStatus)) {
        let mut all = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.get_mut(i) {
            f(s);
            // Healthy: the template loads, nothing failed since, and a config is in place.
            // and HAProxy answers, running that config (when it can be asked).
            s.ok = s.error.is_none()
                && s.template_error.is_none()
                && s.config_hash.is_some()
                && s.haproxy_error.is_none()
                && s.running_config
                    .as_ref()
                    .is_none_or(|r| Some(r) == s.config_hash.as_ref());
            let summary = ApplySummary::of(s);
            self.summaries.send_if_modified(|all| match all.get_mut(i) {
                Some(old) if *old != summary => {
                    *old = summary;
                    true
                }
                _ => false,
            });
        }
    }

    pub(crate) async fn run(
        mut self,
        mut views: watch::Receiver<Arc<NodeView>>,
        mut shutdown: Shutdown,
        loaded: watch::Sender<bool>,
    ) {
        self.load_templates().await;
        self.remove_stray_files().await;
        // The preflight check of writes waits for this: before it no template is compiled (a
        // write would pass unchecked), and the stray-file sweep above would take the
        // preflight's own temp file from under its check.
        let _ = loaded.send(true);
        self.load_last_good().await;
        // What HAProxy runs before the first apply: a crash between rename and reload left the
        // file ahead of it, and the first apply must reload it.
        self.probe_all().await;
        let mut answers = self.resolver.answers();
        let mut probes = tokio::time::interval(self.settings.probe_interval);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probes.tick().await;
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
            let deadline = debounce.deadline(&self.settings, self.quiet());
            let drain_end = self.next_drain_end();
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
                Ok(()) = answers.changed() => {
                    // A host name got (or lost) an address: render with it.
                    if views.borrow().ready {
                        debounce.mark(Instant::now());
                    }
                }
                _ = probes.tick() => {
                    // HAProxy is watched on its own, not only at the next change: a restart with
                    // another file, a reload that did not take, HAProxy gone.
                    if self.probe_all().await && views.borrow().ready && deadline.is_none() {
                        debounce.mark(Instant::now());
                    }
                    for i in 0..self.slots.len() {
                        self.check_drift(i).await;
                        self.show_runtime_ready(i);
                    }
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
                _ = tokio::time::sleep_until(drain_end.unwrap_or_else(Instant::now)), if drain_end.is_some() && deadline.is_none() && views.borrow().ready => {
                    // A draining server's time is up: its slot goes to maintenance.
                    debounce.mark(Instant::now());
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
                        let started = Instant::now();
                        self.apply_all(nv).await;
                        // What changed during the apply has waited as long as the apply took:
                        // count that towards debounce_max, so that under a stream of changes the
                        // next apply follows within a quiet period instead of a whole maximum.
                        if views.has_changed().unwrap_or(false) && views.borrow().ready {
                            debounce.mark(started);
                            debounce.mark(Instant::now());
                        }
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
                    let compiled = Arc::new(compiled);
                    if let Some(shared) = self
                        .shared_compiled
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(i)
                    {
                        *shared = Some(compiled.clone());
                    }
                    self.slots[i].compiled = Some(compiled);
                    // A new template may accept what the old one made HAProxy refuse.
                    self.slots[i].quarantine.clear();
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

    /// Removes the temp files a killed bender left beside each destination.
    async fn remove_stray_files(&mut self) {
        for i in 0..self.slots.len() {
            // Beside the destination, its kept copy, and the server-state file: every file
            // bender writes through a temp file.
            let mut targets = vec![
                self.slots[i].cfg.destination.clone(),
                files::last_good_path(&self.slots[i].cfg.destination),
            ];
            targets.extend(
                self.slots[i]
                    .cfg
                    .server_state
                    .as_ref()
                    .map(|s| s.file.clone()),
            );
            let removed = tokio::task::spawn_blocking(move || {
                targets
                    .iter()
                    .map(|t| files::remove_stray(t))
                    .sum::<usize>()
            })
            .await
            .unwrap_or(0);
            if removed > 0 {
                info!(template = %self.slots[i].cfg.name, removed,
                    "render: removed temp files an earlier run left behind");
            }
        }
    }

    /// The restore point at start: the copy of the last config HAProxy was seen to run (kept
    /// beside the destination), else what is on disk.
    async fn load_last_good(&mut self) {
        for i in 0..self.slots.len() {
            let dest = self.slots[i].cfg.destination.clone();
            let read = move || {
                let kept = files::read_current(&files::last_good_path(&dest))?;
                Ok::<_, RenderError>((kept, files::read_current(&dest)?))
            };
            match tokio::task::spawn_blocking(read).await {
                Ok(Ok((kept, current))) => {
                    let version = current.as_deref().map(version_of);
                    self.slots[i].last_good = kept.or(current);
                    self.set_status(i, |s| s.config_hash = version);
                }
                Ok(Err(e)) => warn!(template = %self.slots[i].cfg.name, error = %e,
                    "render: cannot read the current config; a failed apply will have nothing to restore"),
                Err(e) => warn!(error = %e, "render: reading the current config panicked"),
            }
        }
    }

    /// Asks each template's HAProxy which config version it runs. Returns whether any runs
    /// another version than the file the template last put in place.
    async fn probe_all(&mut self) -> bool {
        let mut stale = false;
        for i in 0..self.slots.len() {
            let Some(probe) = reload::probe_of(&self.slots[i].cfg) else {
                continue;
            };
            let name = self.slots[i].cfg.name.clone();
            match reload::running_version(&probe).await {
                Ok(running) => {
                    self.slots[i].running = running.clone();
                    self.set_status(i, |s| {
                        if s.haproxy_error.take().is_some() {
                            info!(template = %name, running = ?running, "render: HAProxy answers again");
                        }
                        stale |= running.is_some() && running != s.config_hash;
                        s.running_config = running;
                    });
                }
                Err(e) => {
                    self.slots[i].running = None;
                    let text = format!("HAProxy does not answer on {probe}: {e}");
                    self.set_status(i, |s| {
                        if s.haproxy_error.as_deref() != Some(&text) {
                            error!(template = %name, error = %text, "render: HAProxy does not answer; it may be stopped");
                        }
                        s.haproxy_error = Some(text);
                        s.running_config = None;
                    });
                }
            }
        }
        stale
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
        let from = nv.digest().hex();
        for i in 0..self.slots.len() {
            self.apply_one(i, nv.clone()).await;
            // The config in place now stands for this view, unless this round failed.
            self.set_status(i, |s| {
                if s.error.is_none() && s.config_hash.is_some() {
                    s.rendered_from = Some(from.clone());
                }
            });
        }
    }

    /// Renders template `i` and, if the output differs from the file, puts it in place. When
    /// the check refuses it for reasons it can pin on entities, those are left out and the rest
    /// is tried again (up to [`MAX_QUARANTINE_ROUNDS`] times).
    async fn apply_one(&mut self, i: usize, nv: Arc<NodeView>) {
        self.apply_rounds(i, nv).await;
        self.show_runtime_ready(i);
    }

    /// The status says whether the runtime API path is open.
    pub(super) fn show_runtime_ready(&self, i: usize) {
        let ready = self.slots[i].applied.is_some();
        self.set_status(i, |s| s.runtime_ready = ready);
    }

    async fn apply_rounds(&mut self, i: usize, nv: Arc<NodeView>) {
        for round in 0..=MAX_QUARANTINE_ROUNDS {
            match self.apply_round(i, nv.clone()).await {
                Round::Done => return,
                Round::Blamed(entities) if round < MAX_QUARANTINE_ROUNDS => {
                    let name = self.slots[i].cfg.name.clone();
                    for (e, why) in &entities {
                        error!(template = %name, entity = %e, alert = ?why,
                            "render: HAProxy refuses this entity; leaving it out of the config and applying the rest");
                    }
                    self.slots[i].quarantine.extend(entities);
                }
                Round::Blamed(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let s = ApplyConfig::default();
        let mut d = Debounce::default();
        let q = s.debounce_quiet;
        assert_eq!(d.deadline(&s, q), None);
        let t0 = Instant::now();
        d.mark(t0);
        assert_eq!(d.deadline(&s, q), Some(t0 + s.debounce_quiet));
        // Changes every 100 ms keep pushing the quiet deadline, until the maximum wait.
        for k in 1..20u32 {
            d.mark(t0 + k * std::time::Duration::from_millis(100));
        }
        assert_eq!(d.deadline(&s, q), Some(t0 + s.debounce_max));
        d.clear();
        assert_eq!(d.deadline(&s, q), None);
    }
}
