//! Wires the stages of one node together and runs them until shutdown: the node (gossip and
//! registry), the HTTP API, the render stage, metrics, systemd readiness, and SIGHUP reloads.
//! Every task is supervised (`crate::supervise`): the first one that dies stops the node, and
//! `run` returns the failure, so that the process exits non-zero and systemd restarts it.

mod collectors;
mod process;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde_json::json;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::api::{Hooks, Security};
use crate::config::{Config, Overrides};
use crate::hlc::SystemClock;
use crate::metrics::Metrics;
use crate::node::{Node, NodeError};
use crate::render::{RenderHandle, TemplateStatus};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::supervise;

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen for the API on {addr}: {source}")]
    ApiBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// A token, certificate or key file the config names cannot be used (exit code 2, like
    /// any other config error: restarting cannot fix it).
    #[error("{0}")]
    Credentials(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A task of the node died (see the log); the node stopped.
    #[error("stopped after a failure: {0}")]
    Failed(String),
}

/// Longest a stopping node waits for an apply in progress.
const RENDER_DRAIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Where a reload (SIGHUP) reads the config from, and the requests to do so.
pub struct Reload {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
    pub requests: mpsc::Receiver<()>,
}

/// The render stage currently running, replaced on reload.
struct RenderSlot {
    handle: Option<RenderHandle>,
    stop: Option<Arc<ShutdownTrigger>>,
}

type SharedRender = Arc<RwLock<RenderSlot>>;

fn statuses(render: &SharedRender) -> Vec<TemplateStatus> {
    render
        .read()
        .expect("render lock")
        .handle
        .as_ref()
        .map(|h| h.status())
        .unwrap_or_default()
}

/// Runs a node with `config` until `shutdown` fires, then drains every stage.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), RunError> {
    run_with_reload(config, None, shutdown).await
}

/// [`run`], also re-reading the config file whenever `reload` asks.
pub async fn run_with_reload(
    config: Config,
    reload: Option<Reload>,
    external: Shutdown,
) -> Result<(), RunError> {
    let api_addr = config.api_listen;
    let security = Arc::new(Security::load(&config).map_err(RunError::Credentials)?);
    warn_about_exposure(&config, &security);
    raise_fd_limit(&config);
    // Bind the API first: a taken port should fail before gossip announces this node.
    let listener = crate::api::bind(api_addr)
        .await
        .map_err(|source| RunError::ApiBind {
            addr: api_addr,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(api_addr);
    let transport = crate::transport::AllowListTransport::new(config.gossip_allow.clone());
    let gossip_counters = transport.counters();
    let running_config = config.clone();
    let node = Node::start(config, Arc::new(SystemClock), &transport).await?;
    let failures = node.failures().clone();
    // One shutdown for every stage: the caller's, or the first failure of any task.
    let (trigger, shutdown) = shutdown::channel();
    {
        let failures = failures.clone();
        let mut external = external;
        tokio::spawn(async move {
            tokio::select! {
                _ = external.wait() => {}
                _ = failures.wait() => {}
            }
            trigger.trigger();
        });
    }

    let render: SharedRender = Arc::new(RwLock::new(RenderSlot {
        handle: None,
        stop: None,
    }));
    start_render(&render, &running_config, &node, &shutdown);

    let fleet = crate::fleet::publish::Fleet::new(node.clone(), running_config.fleet_stale_after);
    let summaries_render = render.clone();
    let summaries: crate::fleet::publish::Summaries = Arc::new(move || {
        summaries_render
            .read()
            .expect("render lock")
            .handle
            .as_ref()
            .map(|h| h.summaries())
    });
    let fleet_task = supervise::spawn(
        "fleet",
        &failures,
        shutdown.clone(),
        fleet.clone().run(summaries, shutdown.clone()),
    );

    let metrics = Arc::new(Metrics::new());
    collectors::register_collectors(
        &metrics,
        gossip_counters,
        node.clone(),
        render.clone(),
        fleet.clone(),
    );
    let feeder = supervise::spawn(
        "metrics",
        &failures,
        shutdown.clone(),
        collectors::feed_metrics(node.clone(), metrics.clone(), shutdown.clone()),
    );
    let notifier = supervise::spawn(
        "systemd-notify",
        &failures,
        shutdown.clone(),
        notify_systemd_when_ready(node.clone(), shutdown.clone()),
    );
    let reloader = reload.map(|r| {
        supervise::spawn(
            "reload",
            &failures,
            shutdown.clone(),
            reload_loop(
                r,
                running_config,
                node.clone(),
                render.clone(),
                security.clone(),
                shutdown.clone(),
            ),
        )
    });

    let mut hooks = Hooks::new(metrics);
    hooks.fleet = Some(fleet);
    let status_render = render.clone();
    hooks.status = Some(Arc::new(
        move || json!({ "templates": statuses(&status_render) }),
    ));
    let ready_render = render.clone();
    hooks.ready = Some(Arc::new(move || {
        match statuses(&ready_render).iter().find(|s| !s.ok) {
            None => Ok(()),
            Some(s) => Err(format!(
                "template {}: {}",
                s.name,
                s.error
                    .as_deref()
                    .or(s.template_error.as_deref())
                    .unwrap_or("not applied yet")
            )),
        }
    }));
    let preflight_render = render.clone();
    hooks.preflight = Some(Arc::new(move |change| {
        let handle = preflight_render.read().expect("render lock").handle.clone();
        Box::pin(async move {
            match handle {
                Some(h) => h.preflight().check(&change).await,
                None => Ok(()),
            }
        })
    }));
    let health_failures = failures.clone();
    hooks.health = Some(Arc::new(move || match health_failures.get() {
        Some(f) => Err(f),
        None => Ok(()),
    }));
    info!(api = %bound, tls = security.tls_enabled(), "API listening");
    let api = supervise::spawn(
        "api",
        &failures,
        shutdown.clone(),
        crate::api::serve(node.clone(), listener, hooks, security, shutdown.clone()),
    );

    let mut stop = shutdown;
    stop.wait().await;
    info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = api.await;
    if let Some(r) = reloader {
        let _ = r.await;
    }
    let handle = render.read().expect("render lock").handle.clone();
    if let Some(h) = handle {
        // An apply in progress finishes first, within a bound: systemd kills the unit after
        // TimeoutStopSec (30 s), and a node stopped mid-apply is put right at its next start
        // (it asks HAProxy which config it runs).
        if tokio::time::timeout(RENDER_DRAIN, h.stopped())
            .await
            .is_err()
        {
            warn!(
                waited = ?RENDER_DRAIN,
                "the apply in progress did not finish in time; stopping anyway (the next start reconciles HAProxy with the file)"
            );
        }
    }
    let _ = feeder.await;
    let _ = fleet_task.await;
    let _ = notifier.await;
    node.stop().await;
    match failures.get() {
        Some(f) => Err(RunError::Failed(f)),
        None => Ok(()),
    }
}

/// Starts the render stage for `config`'s templates (nothing if it has none). The stage stops
/// on node shutdown or when a reload replaces it; it reports its death to the node's failures.
fn start_render(render: &SharedRender, config: &Config, node: &Node, shutdown: &Shutdown) {
    let mut slot = render.write().expect("render lock");
    slot.handle = None;
    slot.stop = None;
    if config.templates.is_empty() {
        return;
    }
    let (trigger, stage_shutdown) = shutdown::channel();
    let trigger = Arc::new(trigger);
    let forward = trigger.clone();
    let mut stage_done = trigger.subscribe();
    let mut node_shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = node_shutdown.wait() => forward.trigger(),
            _ = stage_done.wait() => {}
        }
    });
    slot.handle = Some(crate::render::spawn(
        config.apply.clone(),
        config.templates.clone(),
        node.node_id().to_string(),
        if config.api.config_snippets {
            crate::model::Snippets::Raw
        } else {
            crate::model::Snippets::AllowListed
        },
        node.views(),
        node.failures(),
        stage_shutdown,
    ));
    slot.stop = Some(trigger);
}

/// Replaces the render stage: the running one finishes its apply in progress and stops before
/// the new one starts, so two stages never apply at once.
async fn restart_render(render: &SharedRender, config: &Config, node: &Node, shutdown: &Shutdown) {
    let (old, stop) = {
        let slot = render.read().expect("render lock");
        (slot.handle.clone(), slot.stop.clone())
    };
    if let Some(stop) = stop {
        stop.trigger();
    }
    if let Some(old) = old {
        old.stopped().await;
    }
    start_render(render, config, node, shutdown);
}

/// Re-reads the config on request: a bad file is refused (the running config stays); a good
/// one restarts the render stage with its templates and `[apply]`; keys that need a restart
/// are named in the log.
async fn reload_loop(
    mut reload: Reload,
    mut current: Config,
    node: Node,
    render: SharedRender,
    security: Arc<Security>,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            req = reload.requests.recv() => if req.is_none() { return },
            _ = shutdown.wait() => return,
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        match Config::load(reload.path.as_deref(), reload.overrides.clone()) {
            Err(e) => {
                error!(error = %e, "config reload refused; the running config stays");
            }
            Ok(new) => {
                // Tokens, certificates and keys first: if one cannot be read, nothing changes.
                if let Err(e) = security.reload(&new) {
                    error!(error = %e, "config reload refused; the running config stays");
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                    continue;
                }
                let pending = current.needs_restart(&new);
                if !pending.is_empty() {
                    warn!(keys = ?pending, "config reload: these keys changed and take effect at the next restart");
                }
                restart_render(&render, &new, &node, &shutdown).await;
                info!(templates = new.templates.len(), "config reloaded");
                current = new;
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// Says so at start when the API or gossip is more exposed than it should be.
fn warn_about_exposure(config: &Config, security: &Security) {
    if security.guard().loopback_only() {
        if config.api_listen.ip().is_loopback() {
            info!("API: no credentials configured; only clients on this host may use it");
        } else {
            warn!(api = %config.api_listen,
                "API: no credentials configured, so only clients on this host (loopback) may use it; configure [[auth.token]] for app servers and operators (see docs/security.md)");
        }
    }
    if !config.seeds.is_empty() && config.gossip_listen.ip().is_unspecified() {
        warn!(gossip = %config.gossip_listen,
            "gossip listens on every interface; it is neither encrypted nor authenticated: bind it to a private address or a WireGuard interface (see docs/security.md)");
    }
}

/// Raises the soft limit on open files to the hard limit, and warns when it is still below what
/// the API's connection cap needs (every connection is a file descriptor).
fn raise_fd_limit(config: &Config) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    // Gossip, the HAProxy checks and their pipes, template watches, snapshots: well under 256.
    let needed = config.api.max_connections as u64 + 256;
    if soft < needed {
        warn!(limit = soft, needed, max_connections = config.api.max_connections,
            "the open-file limit is below api.max_connections + 256: under a connection flood the node could run out of file descriptors; raise LimitNOFILE or lower api.max_connections");
    }
}

/// Tells systemd (Type=notify) the node is ready once it has caught up (a no-op elsewhere),
/// then waits for shutdown: a supervised task that ends early is a failure.
async fn notify_systemd_when_ready(node: Node, mut shutdown: Shutdown) {
    let mut views = node.views();
    tokio::select! {
        r = views.wait_for(|v| v.ready) => {
            if r.is_ok() {
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                    warn!(error = %e, "could not notify systemd");
                }
            }
        }
        _ = shutdown.wait() => return,
    }
    shutdown.wait().await;
}
