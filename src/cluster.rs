//! The node's view of the cluster as other stages consume it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::model::{Backend, Frontend, RegKey};
use crate::registry::{LiveRegistration, View};

/// One member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Registrations the registry no longer has live that the isolation guard keeps serving
    /// (`crate::guard`); rendered beside `view.registrations`.
    pub held: BTreeMap<RegKey, LiveRegistration>,
    /// Why the node is degraded (isolated, holding registrations); empty when it is not.
    pub degraded: Vec<String>,
}

impl NodeView {
    /// The digest of what is served (`served`): the view's, with the held registrations
    /// added. O(held).
    pub fn digest(&self) -> crate::registry::ViewDigest {
        let mut d = self.view.digest;
        for (k, r) in &self.held {
            if !self.view.registrations.contains_key(k) {
                d.add(r);
            }
        }
        d
    }

    /// What is served: the live registrations and the held ones, sorted by key.
    pub fn served(&self) -> impl Iterator<Item = (&RegKey, &LiveRegistration)> {
        let mut all: BTreeMap<&RegKey, &LiveRegistration> =
            self.view.registrations.iter().collect();
        for (k, r) in &self.held {
            all.entry(k).or_insert(r);
        }
        all.into_iter()
    }
}

/// A node's view as JSON (`GET /v1/state`, and the state file `bender render --state` reads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDump {
    pub node_id: String,
    pub registrations: Vec<LiveRegistration>,
    pub backends: Vec<Backend>,
    pub frontends: Vec<Frontend>,
    #[serde(default)]
    pub members: Vec<Member>,
}

impl StateDump {
    pub fn new(node_id: &str, view: &View, members: Vec<Member>) -> Self {
        StateDump {
            node_id: node_id.to_string(),
            registrations: view.registrations.values().cloned().collect(),
            backends: view.backends.values().cloned().collect(),
            frontends: view.frontends.values().cloned().collect(),
            members,
        }
    }

    /// The view this dump describes (ready: it is a finished picture).
    pub fn into_node_view(self) -> NodeView {
        let mut view = View::default();
        for r in self.registrations {
            view.registrations.insert(r.key.clone(), r);
        }
        for b in self.backends {
            view.backends.insert(b.name.clone(), b);
        }
        for f in self.frontends {
            view.frontends.insert(f.name.clone(), f);
        }
        view.digest = crate::registry::ViewDigest::of(&view);
        NodeView {
            view,
            members: self.members,
            ready: true,
            ..Default::default()
        }
    }
}
