//! Wires the stages of one node together and runs them until shutdown.

use std::sync::Arc;

use tracing::{error, info};

use crate::config::Config;
use crate::hlc::SystemClock;
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
    let node = Node::start(config, Arc::new(SystemClock), &transport).await?;
    info!(api = %bound, "API listening");
    let api = tokio::spawn(crate::api::serve(
        node.clone(),
        listener,
        None,
        shutdown.clone(),
    ));
    let mut stop = shutdown;
    stop.wait().await;
    info!("shutting down");
    if let Err(e) = api.await {
        error!(error = %e, "API task failed");
    }
    node.stop().await;
    Ok(())
}
