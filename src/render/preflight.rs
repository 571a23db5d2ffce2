//! Refusing writes HAProxy would refuse: before the node acknowledges an entity write, it renders
//! its templates from the latest view with the write applied and runs each template's check on
//! the result. If the check fails because of the written entity, the write is refused with
//! HAProxy's own alert lines, naming the field where it can; nothing is stored or replicated.
//!
//! A failure the write did not cause (another entity, already broken; a template error that
//! is there with or without it) does not block the write: the apply stage leaves out what it can
//! pin on entities and reports the rest. A check that cannot run (HAProxy missing, a timeout)
//! does not block writes either: the apply stage reports it.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

use super::config::{ApplyConfig, TemplateConfig};
use super::error::RenderError;
use super::sections::{self, EntityRef};
use super::template::Compiled;
use super::{context, files};
use crate::cluster::NodeView;
use crate::model::{Backend, Frontend, Snippets};

/// An entity write to try before it is made: the new value, or `None` for a deletion.
#[derive(Debug, Clone)]
pub enum Change {
    Backend(String, Option<Backend>),
    Frontend(String, Option<Frontend>),
}

impl Change {
    fn entity(&self) -> EntityRef {
        match self {
            Change::Backend(n, _) => EntityRef::Backend(n.clone()),
            Change::Frontend(n, _) => EntityRef::Frontend(n.clone()),
        }
    }

    fn apply_to(&self, nv: &NodeView) -> NodeView {
        let mut out = nv.clone();
        match self {
            Change::Backend(n, Some(b)) => {
                out.view.backends.insert(n.clone(), b.clone());
            }
            Change::Backend(n, None) => {
                out.view.backends.remove(n);
            }
            Change::Frontend(n, Some(f)) => {
                out.view.frontends.insert(n.clone(), f.clone());
            }
            Change::Frontend(n, None) => {
                out.view.frontends.remove(n);
            }
        }
        out
    }
}

/// Why a write is refused: HAProxy's words, where they point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `extra[0]`, `server_options`, or the entity when no field can be told.
    pub field: String,
    pub message: String,
}

/// Checks writes against the templates the render stage runs. Cheap to clone.
#[derive(Clone)]
pub struct Preflight {
    /// True once the worker has loaded the templates (the first time).
    pub(crate) loaded: watch::Receiver<bool>,
    pub(crate) templates: Vec<TemplateConfig>,
    /// The last version of each template that parsed, shared with the worker.
    pub(crate) compiled: Arc<RwLock<Vec<Option<Arc<Compiled>>>>>,
    pub(crate) views: watch::Receiver<Arc<NodeView>>,
    pub(crate) node_id: String,
    pub(crate) snippets: Snippets,
    pub(crate) settings: ApplyConfig,
    /// One check at a time: entity writes are rare, and each check is a process.
    pub(crate) gate: Arc<Semaphore>,
    /// The apply stage's resolver: a write is checked with the addresses the apply renders.
    pub(crate) resolver: super::resolve::Resolver,
}

impl std::fmt::Debug for Preflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preflight")
            .field("templates", &self.templates.len())
            .finish_non_exhaustive()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Renders `nv` with template `compiled` and runs `cfg`'s check on it (in a temp file beside the
/// destination, removed after). `Ok(None)`: it passes; `Ok(Some(output))`: the check refused
/// it; `Err`: it could not be rendered or checked.
async fn render_and_check(
    cfg: &TemplateConfig,
    compiled: Arc<Compiled>,
    nv: NodeView,
    node_id: String,
    snippets: Snippets,
    timeout: std::time::Duration,
    resolver: super::resolve::Resolver,
) -> Result<(String, Option<String>), RenderError> {
    let vars = cfg.vars.clone();
    let settings = cfg.slot_settings();
    let text = tokio::task::spawn_blocking(move || {
        let resolve = |name: &str| resolver.address(name);
        let names = context::Names::Resolved(&resolve);
        let (mut ctx, _) = context::build_without(
            &node_id,
            &nv,
            &vars,
            snippets,
            &context::Quarantine::new(),
            &names,
        );
        context::fresh_slots(&mut ctx, &settings);
        compiled.render(&ctx)
    })
    .await
    .map_err(|e| RenderError::CheckRun {
        command: "render".into(),
        reason: e.to_string(),
    })??;
    if cfg.check_command().is_empty() {
        return Ok((text, None));
    }
    let dest = cfg.destination.clone();
    let name = format!(
        ".{}.bender-preflight-{}-{}.tmp",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".into()),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(name);
    let write_text = text.clone();
    let tmp_w = tmp.clone();
    let written = tokio::task::spawn_blocking(move || {
        let r = std::fs::write(&tmp_w, write_text);
        if r.is_err() {
            // A partial file (a full disk) must not stay behind.
            let _ = std::fs::remove_file(&tmp_w);
        }
        r
    })
    .await
    .map_err(|e| RenderError::CheckRun {
        command: "write".into(),
        reason: e.to_string(),
    })?;
    written.map_err(|e| RenderError::io("writing", &tmp, e))?;
    let checked = files::check(&cfg.check_command(), &tmp, &dest, timeout).await;
    let _ = std::fs::remove_file(&tmp);
    match checked {
        Ok(()) => Ok((text, None)),
        Err(RenderError::Check { output, .. }) => Ok((text, Some(output))),
        Err(e) => Err(e),
    }
}

impl Preflight {
    /// Whether `change` may be made: `Err` with HAProxy's words when a template's check
    /// refuses the view with it, for reasons it causes.
    pub async fn check(&self, change: &Change) -> Result<(), Refusal> {
        // A write that arrives while the stage starts waits for the templates: checked late
        // rather than not at all. (If the stage is gone, the node is stopping anyway.)
        let _ = self.loaded.clone().wait_for(|l| *l).await;
        let _permit = self.gate.acquire().await;
        let base = self.views.borrow().clone();
        let with = change.apply_to(&base);
        let compiled: Vec<Option<Arc<Compiled>>> = self
            .compiled
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let target = change.entity();
        for (cfg, compiled) in self.templates.iter().zip(compiled) {
            let Some(compiled) = compiled else { continue };
            let run = |nv: NodeView| {
                render_and_check(
                    cfg,
                    compiled.clone(),
                    nv,
                    self.node_id.clone(),
                    self.snippets,
                    self.settings.check_timeout,
                    self.resolver.clone(),
                )
            };
            let (text, output) = match run(with.clone()).await {
                Ok(r) => r,
                Err(e @ RenderError::Template { .. }) => {
                    // Refuse only if the template renders without the change.
                    if run(base.as_ref().clone()).await.is_ok() {
                        return Err(Refusal {
                            field: target.to_string(),
                            message: format!("template {} cannot render it: {e}", cfg.name),
                        });
                    }
                    continue;
                }
                Err(e) => {
                    warn!(template = %cfg.name, error = %e, "preflight: cannot check a write; accepting it, the apply stage will report");
                    continue;
                }
            };
            let Some(output) = output else { continue };
            let dest = cfg.destination.display().to_string();
            let backends: BTreeSet<String> = with.view.backends.keys().cloned().collect();
            let frontends: BTreeSet<String> = with.view.frontends.keys().cloned().collect();
            let blamed = sections::blame(&output, &dest, &text, &backends, &frontends);
            let on_target: Vec<&str> = blamed
                .iter()
                .filter(|(_, es)| es.contains(&target))
                .map(|(a, _)| a.as_str())
                .collect();
            let unblamed = blamed.iter().any(|(_, es)| es.is_empty());
            let alerts: Vec<&str> = if !on_target.is_empty() {
                on_target
            } else if unblamed {
                // It points nowhere in particular: the write's fault only if the view without
                // it passes.
                match run(base.as_ref().clone()).await {
                    Ok((_, None)) => blamed.iter().map(|(a, _)| a.as_str()).collect(),
                    _ => continue,
                }
            } else {
                continue; // Other entities' problems; the apply stage leaves them out.
            };
            let lines = sections::alert_line_numbers(&alerts.join("\n"), &dest);
            let (b, f) = match change {
                Change::Backend(_, b) => (b.as_ref(), None),
                Change::Frontend(_, f) => (None, f.as_ref()),
            };
            let field = lines
                .iter()
                .find_map(|n| sections::field_of_line(&text, *n, b, f))
                .unwrap_or_else(|| target.to_string());
            debug!(template = %cfg.name, entity = %target, field = %field, "preflight: write refused");
            return Err(Refusal {
                field,
                message: format!(
                    "HAProxy refuses {target} (template {}): {}",
                    cfg.name,
                    alerts
                        .iter()
                        .map(|a| a.trim())
                        .collect::<Vec<_>>()
                        .join(" | ")
                ),
            });
        }
        Ok(())
    }
}
