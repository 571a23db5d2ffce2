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
    /// A registration stopped being live: `reason` says whether it was deregistered or its
    /// TTL ran out (set by the node that emits the event; absent in a bare view diff).
    Offline {
        registration: RegKey,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<OfflineReason>,
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

/// Why a registration went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineReason {
    /// Its latest record is a deregistration.
    Deregistered,
    /// Its deadline passed with no renewal.
    Expired,
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
                reason: None,
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
            reason: None,
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

/// An event with its place in this node's stream: `epoch` names the process (its start, in ms),
/// `seq` counts from 1. As an SSE id: `<epoch>-<seq>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub epoch: u64,
    pub seq: u64,
    pub event: Event,
}

impl Numbered {
    pub fn id(&self) -> String {
        format!("{}-{}", self.epoch, self.seq)
    }
}

/// The last `capacity` events, so that a client that lost its stream can resume after the last
/// id it saw (`Last-Event-ID`) without missing any. Bounded.
#[derive(Debug)]
pub struct Journal {
    epoch: u64,
    next: u64,
    capacity: usize,
    kept: std::collections::VecDeque<Numbered>,
}

impl Journal {
    pub fn new(epoch: u64, capacity: usize) -> Self {
        Journal {
            epoch,
            next: 1,
            capacity: capacity.max(1),
            kept: Default::default(),
        }
    }

    /// Numbers and keeps `event` (dropping the oldest beyond capacity).
    pub fn push(&mut self, event: Event) -> Numbered {
        let n = Numbered {
            epoch: self.epoch,
            seq: self.next,
            event,
        };
        self.next += 1;
        if self.kept.len() == self.capacity {
            self.kept.pop_front();
        }
        self.kept.push_back(n.clone());
        n
    }

    /// The events after `last_id` (`<epoch>-<seq>`), or `None` when they cannot all be given:
    /// an id of another process, one not given yet, or one older than what is kept.
    pub fn after(&self, last_id: &str) -> Option<Vec<Numbered>> {
        let (epoch, seq) = last_id.trim().split_once('-')?;
        let (epoch, seq): (u64, u64) = (epoch.parse().ok()?, seq.parse().ok()?);
        if epoch != self.epoch || seq >= self.next {
            return None;
        }
        let oldest = self.kept.front().map_or(self.next, |n| n.seq);
        if seq + 1 < oldest {
            return None;
        }
        Some(self.kept.iter().filter(|n| n.seq > seq).cloned().collect())
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;

    fn ev(i: u16) -> Event {
        Event::Online {
            registration: RegKey::new("a", "1", "10.0.0.1", i).unwrap(),
        }
    }

    #[test]
    fn a_client_resumes_after_its_last_id_while_it_is_kept_and_only_then() {
        let mut j = Journal::new(7, 3);
        let ids: Vec<String> = (1..=5).map(|i| j.push(ev(i)).id()).collect();
        assert_eq!(ids[0], "7-1");
        // Kept: 3, 4, 5.
        let seqs =
            |v: Option<Vec<Numbered>>| v.map(|v| v.iter().map(|n| n.seq).collect::<Vec<_>>());
        assert_eq!(seqs(j.after("7-2")), Some(vec![3, 4, 5]));
        assert_eq!(seqs(j.after("7-4")), Some(vec![5]));
        assert_eq!(seqs(j.after("7-5")), Some(vec![]));
        assert_eq!(seqs(j.after("7-1")), None, "event 2 is gone");
        assert_eq!(seqs(j.after("7-6")), None, "not given yet");
        assert_eq!(seqs(j.after("8-3")), None, "another process");
        assert_eq!(seqs(j.after("garbage")), None);
        let mut empty = Journal::new(1, 4);
        assert_eq!(seqs(empty.after("1-0")), Some(vec![]));
        empty.push(ev(1));
        assert_eq!(seqs(empty.after("1-0")), Some(vec![1]));
    }
}
