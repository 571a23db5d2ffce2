//! Renders HAProxy configs from Tera templates and applies them: the only module that knows
//! Tera and HAProxy.
//!
//! Data flow: the node publishes a [`NodeView`] on a `watch` channel → [`spawn`]'s task
//! debounces changes (quiet period + maximum wait) → for every template: build a sorted, stable
//! [`RenderContext`] (no deadlines, so renewals change nothing) → render → if the bytes equal
//! the file on disk, stop → write a temp file next to the target, fsync, `haproxy -c` → rename,
//! fsync the directory → reload HAProxy → verify on the master CLI → on failure put the last
//! good config back and reload again. One apply runs at a time, and nothing here can take
//! HAProxy down: every failure leaves the last good config serving and shows up in
//! [`RenderHandle::status`] and the log.
//!
//! Module map: `config` (the `[[template]]`/`[apply]` keys), `context` (the template context),
//! `template` (Tera and the `haproxy_quote` filter), `files` (atomic write and check),
//! `reload` (reload methods and `show proc`), `worker` (the task: debounce, watch, apply).

mod apply;
mod apply_runtime;
mod config;
mod context;
mod durations;
mod error;
mod files;
mod preflight;
mod process;
mod reload;
mod resolve;
mod runtime;
pub mod sections;
pub mod slots;
mod stamp;
mod status;
mod template;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::cluster::NodeView;
use crate::model::Snippets;
use crate::shutdown::Shutdown;
use crate::supervise::{self, Failures};

pub use config::{
    validate_templates, ApplyConfig, ReloadConfig, RuntimeConfig, ServerStateConfig,
    TemplateConfig, CHECK_PLACEHOLDER,
};
pub use context::{
    BackendCtx, Excluded, FrontendCtx, MemberCtx, NodeCtx, RegistrationCtx, RenderContext, RuleCtx,
    ServerCtx, SlotCtx,
};
pub use durations::Durations;
pub use error::RenderError;
pub use preflight::{Change, Preflight, Refusal};
pub use runtime::ServerStatus;
pub use status::{ApplySummary, ServerView, TemplateStatus};
pub use template::haproxy_quote;

/// A handle on the render task: cheap to clone, readable from any thread.
#[derive(Debug, Clone)]
pub struct RenderHandle {
    status: Arc<Mutex<Vec<TemplateStatus>>>,
    summaries: watch::Receiver<Vec<ApplySummary>>,
    /// Closed (its sender dropped) when the task has ended.
    done: watch::Receiver<()>,
    preflight: Preflight,
}

impl RenderHandle {
    /// The state of every template, in configuration order.
    pub fn status(&self) -> Vec<TemplateStatus> {
        // A panic while holding this lock would only have left a half-updated status.
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Each template's apply state in brief, changed whenever one changes (closed when the
    /// task ends).
    pub fn summaries(&self) -> watch::Receiver<Vec<ApplySummary>> {
        self.summaries.clone()
    }

    /// Resolves once the task has ended (after shutdown, or when the view channel closed). An
    /// apply in progress is finished first: HAProxy is never left between two configs.
    pub async fn stopped(&self) {
        let mut done = self.done.clone();
        // `changed` fails exactly when the sender is gone; no value is ever sent.
        while done.changed().await.is_ok() {}
    }

    /// Whether the task has ended.
    pub fn is_stopped(&self) -> bool {
        self.done.has_changed().is_err()
    }

    /// Checks an entity write against this stage's templates before it is made.
    pub fn preflight(&self) -> Preflight {
        self.preflight.clone()
    }
}

/// Starts the render/apply task. Nothing is rendered until the view is `ready`. Templates are
/// loaded (and their directories watched) by the task; a template that fails to load is
/// reported in `status()` and retried on its next edit.
///
/// Call [`validate_templates`] and [`ApplyConfig::validate`] first.
pub fn spawn(
    settings: ApplyConfig,
    templates: Vec<TemplateConfig>,
    node_id: String,
    snippets: Snippets,
    views: watch::Receiver<Arc<NodeView>>,
    failures: &Failures,
    shutdown: Shutdown,
) -> RenderHandle {
    let status = Arc::new(Mutex::new(
        templates
            .iter()
            .map(TemplateStatus::new)
            .collect::<Vec<_>>(),
    ));
    let (done_tx, done) = watch::channel(());
    let compiled = Arc::new(std::sync::RwLock::new(vec![None; templates.len()]));
    let resolver = resolve::Resolver::new();
    let (loaded_tx, loaded) = watch::channel(false);
    let preflight = Preflight {
        loaded,
        templates: templates.clone(),
        compiled: compiled.clone(),
        views: views.clone(),
        node_id: node_id.clone(),
        snippets,
        settings: settings.clone(),
        gate: Arc::new(tokio::sync::Semaphore::new(1)),
        resolver: resolver.clone(),
    };
    let worker = worker::Worker::new(
        settings,
        templates,
        node_id,
        snippets,
        status.clone(),
        compiled,
        resolver,
    );
    let summaries = worker.summaries.subscribe();
    // A worker that panics or ends while its stage runs is a failure of the node.
    supervise::spawn("render", failures, shutdown.clone(), async move {
        worker.run(views, shutdown, loaded_tx).await;
        drop(done_tx);
    });
    RenderHandle {
        status,
        summaries,
        done,
        preflight,
    }
}

/// Renders every template once from `nv` without writing anything: `(name, text)` in
/// configuration order, free-form lines checked against the allow-list. For `bender render`
/// and tests.
pub fn render_once(
    templates: &[TemplateConfig],
    node_id: &str,
    nv: &NodeView,
) -> Result<Vec<(String, String)>, RenderError> {
    render_once_screened(templates, node_id, nv, Snippets::AllowListed).map(|(out, _)| out)
}

/// Rendered templates: `(name, text)` in configuration order.
pub type Rendered = Vec<(String, String)>;

/// [`render_once`], with free-form lines checked as `snippets` says; also returns what was
/// left out.
pub fn render_once_screened(
    templates: &[TemplateConfig],
    node_id: &str,
    nv: &NodeView,
    snippets: Snippets,
) -> Result<(Rendered, Vec<Excluded>), RenderError> {
    let mut excluded = Vec::new();
    let out = templates
        .iter()
        .map(|t| {
            let compiled = template::load(&t.source)?;
            let (mut ctx, left_out) = context::build_screened(node_id, nv, &t.vars, snippets);
            context::fresh_slots(&mut ctx, &t.slot_settings());
            excluded = left_out;
            let text = compiled.render(&ctx)?;
            Ok((t.name.clone(), text))
        })
        .collect::<Result<Vec<_>, RenderError>>()?;
    Ok((out, excluded))
}

/// Builds the context a template would see for `nv` (for documentation and debugging).
pub fn context(
    node_id: &str,
    nv: &NodeView,
    vars: &std::collections::BTreeMap<String, String>,
) -> RenderContext {
    context::build(node_id, nv, vars)
}

/// FNV-1a of a rendered config: a stable, dependency-free fingerprint for status and logs
/// (not a security boundary).
pub fn config_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
