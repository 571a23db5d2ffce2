//! The state of each template, as `/v1/status` and `/metrics` show it.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

use super::config::TemplateConfig;
use super::context;
use super::durations::Durations;

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
    /// The version (stamp) of the config this template last put in place: what HAProxy
    /// should run.
    pub config_hash: Option<String>,
    /// The version HAProxy says it runs (`show info`), where it can be asked.
    pub running_config: Option<String>,
    /// Why HAProxy could not be asked (it is stopped, say), until it answers again.
    pub haproxy_error: Option<String>,
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
            running_config: None,
            haproxy_error: None,
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
