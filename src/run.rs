//! Wires the stages of one node together and runs them until shutdown.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tracing::{error, info, warn};

use crate::api::Hooks;
use crate::config::Config;
use crate::hlc::SystemClock;
use crate::metrics::Metrics;
use crate::node::{Node, NodeError};
use crate::shutdown::Shutdown;

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen for the API on {addr}: {source}")]
    ApiBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Runs a node with `config` until `shutdown` fires, then drains every stage.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), RunError> {
    let api_addr = config.api_listen;
    // Bind the API first: a taken port should fail before gossip announces this node.
    let listener = crate::api::bind(api_addr)
        .await
        .map_err(|source| RunError::ApiBind {
            addr: api_addr,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(api_addr);
    let transport = crate::transport::AllowListTransport::new(config.gossip_allow.clone());
    let dropped = transport.dropped();
    let node = Node::start(config, Arc::new(SystemClock), &transport).await?;

    let metrics = Arc::new(Metrics::new());
    metrics.register_collector(Box::new(crate::metrics::FnCollector(
        move |enc: &mut prometheus_client::encoding::DescriptorEncoder| {
            use prometheus_client::encoding::EncodeMetric;
            let c = prometheus_client::metrics::counter::ConstCounter::new(
                dropped.load(std::sync::atomic::Ordering::Relaxed),
            );
            c.encode(enc.encode_descriptor(
                "gossip_dropped",
                "Gossip datagrams dropped because the sender is outside gossip_allow",
                None,
                c.metric_type(),
            )?)
        },
    )));
    let feeder = tokio::spawn(feed_metrics(
        node.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let notifier = tokio::spawn(notify_systemd_when_ready(node.clone(), shutdown.clone()));

    info!(api = %bound, "API listening");
    let hooks = Hooks::new(metrics);
    let api = tokio::spawn(crate::api::serve(
        node.clone(),
        listener,
        hooks,
        shutdown.clone(),
    ));
    let mut stop = shutdown;
    stop.wait().await;
    info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Err(e) = api.await {
        error!(error = %e, "API task failed");
    }
    let _ = feeder.await;
    let _ = notifier.await;
    node.stop().await;
    Ok(())
}

/// Counts events and keeps the gauges in step with the published view.
async fn feed_metrics(node: Node, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
    let mut events = node.subscribe_events();
    let mut views = node.views();
    metrics.record_view(&views.borrow_and_update());
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(event) => metrics.record_event(&event),
                Err(RecvError::Lagged(n)) => warn!(missed = n, "metrics missed events"),
                Err(RecvError::Closed) => return,
            },
            changed = views.changed() => {
                if changed.is_err() { return; }
                metrics.record_view(&views.borrow_and_update());
            }
            _ = shutdown.wait() => return,
        }
    }
}

/// Tells systemd (Type=notify) the node is ready once it has caught up; a no-op elsewhere.
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
        _ = shutdown.wait() => {}
    }
}
