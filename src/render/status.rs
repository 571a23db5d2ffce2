//! The state of each template, as `/v1/status` and `/metrics` show it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

use super::config::TemplateConfig;
use super::context;
use super::durations::Durations;
use super::runtime::ServerStatus;

/// One server as HAProxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerView {
    pub backend: String,
    /// The slot (`slot3`).
    pub server: String,
    /// `host:port` as HAProxy has it.
    pub address: String,
    /// UP, DOWN (failing its health checks), MAINT or DRAIN.
    pub status: ServerStatus,
}

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
    /// Digest of the view the config in place was rendered from (`ViewDigest::hex` of what is
    /// served): set once a render of that view is in place, or found identical to the file.
    pub rendered_from: Option<String>,
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
    /// Whether the next change of servers within their slots can go through the runtime API:
    /// HAProxy was confirmed running this template's structure and slots.
    pub runtime_ready: bool,
    /// Changes applied through HAProxy's runtime API, with no reload (read back and
    /// confirmed).
    pub runtime_updates: u64,
    /// Runtime API updates that failed or were not confirmed by the read-back (each fell back
    /// to a reload).
    pub runtime_failures: u64,
    /// Servers HAProxy was found running differently from bender's slots (changed by hand on
    /// the stats socket, say) and set back.
    pub drift_repairs: u64,
    /// Reloads by why the change could not go through the runtime API.
    pub reload_reasons: BTreeMap<&'static str, u64>,
    /// HAProxy's own view of each occupied slot (`show servers state`), where the runtime API
    /// is configured: refreshed at every runtime update and every probe.
    pub servers: Vec<ServerView>,
    /// Every runtime update's duration (commands and read-back), for `/metrics`.
    #[serde(skip)]
    pub runtime_durations: Durations,
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
            rendered_from: None,
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
            runtime_ready: false,
            runtime_updates: 0,
            runtime_failures: 0,
            drift_repairs: 0,
            reload_reasons: BTreeMap::new(),
            servers: Vec::new(),
            runtime_durations: Durations::default(),
            last_apply: None,
            last_success: None,
        }
    }
}

/// What the fleet status needs of a template, kept apart from the (possibly large) status so
/// that watching it is cheap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplySummary {
    pub name: String,
    pub config: Option<String>,
    pub from: Option<String>,
    /// The render or apply failure, the template that does not load, HAProxy that cannot be
    /// asked, or HAProxy running another config than the one in place.
    pub error: Option<String>,
    pub excluded: usize,
}

impl ApplySummary {
    pub fn of(s: &TemplateStatus) -> Self {
        // HAProxy's own words are what matter at a glance: from the first alert on.
        let error = s
            .error
            .as_deref()
            .map(|e| e.find("[ALERT]").map_or(e, |at| &e[at..]).to_string())
            .or_else(|| s.template_error.as_ref().map(|e| format!("template: {e}")))
            .or_else(|| s.haproxy_error.as_ref().map(|e| format!("HAProxy: {e}")))
            .or_else(|| match (&s.running_config, &s.config_hash) {
                (Some(r), Some(c)) if r != c => Some(format!("HAProxy runs {r}, not {c}")),
                _ => None,
            });
        ApplySummary {
            name: s.name.clone(),
            config: s.config_hash.clone(),
            from: s.rendered_from.clone(),
            error,
            excluded: s.excluded.len(),
        }
    }
}
