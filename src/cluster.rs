//! The node's view of the cluster as other stages consume it.

use std::net::SocketAddr;

use serde::Serialize;

use crate::registry::View;

/// One member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub node_id: String,
    pub gossip_addr: SocketAddr,
    /// The member's HTTP API address, as it advertises it.
    pub api_addr: Option<String>,
    pub live: bool,
    pub is_self: bool,
    /// Estimated clock offset of the member relative to this node (member - self), in ms.
    pub clock_offset_ms: Option<i64>,
}

/// Everything downstream stages (events, render) need, published on every change.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Live registrations and current entities.
    pub view: View,
    /// Members sorted by node id, this node included.
    pub members: Vec<Member>,
    /// False until the node has caught up with its peers (or the warm-up ran out): stages that
    /// act on the view (rendering HAProxy config) must wait for it.
    pub ready: bool,
}
