//! Events: what changed between two consecutive views of one node. Every node diffs its own
//! views, so each change in the cluster is emitted exactly once per node, in the same form
//! everywhere, with no coordination.

use serde::Serialize;

use crate::model::{Backend, Frontend, RegKey};
use crate::registry::{View, ViewChanges};

/// One change a node observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A registration became live.
    Online {
        registration: RegKey,
    },
    /// A registration stopped being live (expired or deregistered).
    Offline {
        registration: RegKey,
    },
    /// A backend was created or changed.
    BackendUpdated {
        backend: Backend,
    },
    BackendDeleted {
        name: String,
    },
    /// A frontend was created or changed.
    FrontendUpdated {
        frontend: Frontend,
    },
    FrontendDeleted {
        name: String,
    },
}

impl Event {
    /// The SSE event name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Online { .. } => "online",
            Event::Offline { .. } => "offline",
            Event::BackendUpdated { .. } => "backend_updated",
            Event::BackendDeleted { .. } => "backend_deleted",
            Event::FrontendUpdated { .. } => "frontend_updated",
            Event::FrontendDeleted { .. } => "frontend_deleted",
        }
    }
}

/// The events that lead from `old` to `new`, in a stable order. Renewals (a later deadline for a
/// registration that stays live) are not events.
pub fn diff(old: &View, new: &View) -> Vec<Event> {
    let mut out = Vec::new();
    for k in old.registrations.keys() {
        if !new.registrations.contains_key(k) {
            out.push(Event::Offline {
                registration: k.clone(),
            });
        }
    }
    for k in new.registrations.keys() {
        if !old.registrations.contains_key(k) {
            out.push(Event::Online {
                registration: k.clone(),
            });
        }
    }
    out.extend(entity_diff(old, new));
    out
}

/// The events of one [`Registry::update_view`] from `old` to `new`: the same as `diff(old,
/// new)`, at the cost of what changed.
///
/// [`Registry::update_view`]: crate::registry::Registry::update_view
pub fn of_changes(changes: &ViewChanges, old: &View, new: &View) -> Vec<Event> {
    let mut out: Vec<Event> = changes
        .offline
        .iter()
        .map(|r| Event::Offline {
            registration: r.key.clone(),
        })
        .chain(changes.online.iter().map(|k| Event::Online {
            registration: k.clone(),
        }))
        .collect();
    if changes.entities {
        out.extend(entity_diff(old, new));
    }
    out
}

/// Backends and frontends deleted or updated from `old` to `new`.
fn entity_diff(old: &View, new: &View) -> Vec<Event> {
    let mut out = Vec::new();
    for name in old.backends.keys() {
        if !new.backends.contains_key(name) {
            out.push(Event::BackendDeleted { name: name.clone() });
        }
    }
    for (name, b) in &new.backends {
        if old.backends.get(name) != Some(b) {
            out.push(Event::BackendUpdated { backend: b.clone() });
        }
    }
    for name in old.frontends.keys() {
        if !new.frontends.contains_key(name) {
            out.push(Event::FrontendDeleted { name: name.clone() });
        }
    }
    for (name, f) in &new.frontends {
        if old.frontends.get(name) != Some(f) {
            out.push(Event::FrontendUpdated {
                frontend: f.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::LiveRegistration;
    use std::collections::BTreeMap;

    fn live(port: u16, deadline: u64) -> (RegKey, LiveRegistration) {
        let key = RegKey::new("app", "v1", "10.0.0.1", port).unwrap();
        (
            key.clone(),
            LiveRegistration {
                key,
                registered_ms: 0,
                deadline_ms: deadline,
                ttl_ms: deadline,
                meta: BTreeMap::new(),
            },
        )
    }

    #[test]
    fn renewals_are_not_events_but_comings_and_goings_are() {
        let mut a = View::default();
        a.registrations.extend([live(1, 10), live(2, 10)]);
        let mut b = View::default();
        b.registrations.extend([live(1, 20), live(3, 20)]);
        let events = diff(&a, &b);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind(), "offline");
        assert_eq!(events[1].kind(), "online");
        assert!(diff(&b, &b).is_empty());
    }
}
