//! What a node serves at an instant, computed from the registry, and when that next changes on
//! its own (a deadline passing, with no write at all).
//!
//! [`Registry::view`] computes it from scratch; [`Registry::update_view`] brings an earlier view
//! up to date visiting only what changed since (the registry's change log) and what expired
//! since (its deadline index), so its cost follows the change, not the size of the registry.
//! The two agree (property-tested in `registry/tests.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Registry;
use crate::model::{Backend, Frontend, RegKey};

impl Registry {
    /// What is live at `now_ms`.
    pub fn view(&self, now_ms: u64) -> View {
        let registrations = self
            .leases
            .iter()
            .filter(|(_, slot)| slot.reg.val.is_live(now_ms))
            .map(|(k, slot)| (k.clone(), slot.reg.val.live_registration(k)))
            .collect();
        let (backends, frontends) = self.entities_view();
        View {
            registrations,
            backends,
            frontends,
        }
    }

    /// Brings `view`, the view this registry's last `update_view` produced (or any view, if
    /// this is the first), to `now_ms`: afterwards it equals `self.view(now_ms)`. Returns what
    /// changed, for events. Visits the leases the change log names and those whose deadline
    /// passed since the last update; entities (a few hundred at most) are recomputed when any
    /// changed. Starts over when there is no last update, or the clock went back.
    pub fn update_view(&mut self, view: &mut View, now_ms: u64) -> ViewChanges {
        let mut out = ViewChanges::default();
        let since = match self.changes.view_ms {
            Some(at) if at <= now_ms => at,
            _ => {
                let fresh = self.view(now_ms);
                for (k, r) in view.registrations.iter() {
                    if !fresh.registrations.contains_key(k) {
                        out.offline.push(r.clone());
                    }
                }
                for k in fresh.registrations.keys() {
                    if !view.registrations.contains_key(k) {
                        out.online.push(k.clone());
                    }
                }
                out.entities = view.backends != fresh.backends || view.frontends != fresh.frontends;
                out.updated = fresh.registrations.iter().any(|(k, r)| {
                    view.registrations
                        .get(k)
                        .is_some_and(|was| was.ttl_ms != r.ttl_ms || was.meta != r.meta)
                });
                *view = fresh;
                self.changes = super::Changes {
                    view_ms: Some(now_ms),
                    ..Default::default()
                };
                return out;
            }
        };
        // Expired since: every lease whose winning deadline is in (since, now].
        let expired: Vec<RegKey> = self
            .by_deadline
            .range((since + 1, RegKey::MIN)..(now_ms + 1, RegKey::MIN))
            .map(|(_, k)| k.clone())
            .collect();
        let touched = std::mem::take(&mut self.changes.leases);
        for k in expired.into_iter().chain(touched) {
            let live = self
                .leases
                .get(&k)
                .filter(|s| s.reg.val.is_live(now_ms))
                .map(|s| s.reg.val.live_registration(&k));
            match live {
                Some(r) => match view.registrations.insert(k.clone(), r) {
                    None => out.online.push(k),
                    Some(was) => {
                        let now = &view.registrations[&k];
                        out.updated |= was.ttl_ms != now.ttl_ms || was.meta != now.meta;
                    }
                },
                None => {
                    if let Some(r) = view.registrations.remove(&k) {
                        out.offline.push(r);
                    }
                }
            }
        }
        if std::mem::take(&mut self.changes.entities) {
            let fresh = self.entities_view();
            out.entities = view.backends != fresh.0 || view.frontends != fresh.1;
            (view.backends, view.frontends) = fresh;
        }
        self.changes.view_ms = Some(now_ms);
        out.online.sort();
        out.offline.sort_by(|a, b| a.key.cmp(&b.key));
        out.offline.dedup_by(|a, b| a.key == b.key);
        out
    }

    fn entities_view(&self) -> (BTreeMap<String, Backend>, BTreeMap<String, Frontend>) {
        let backends = self
            .backends
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.value()?.clone())))
            .collect();
        let frontends = self
            .frontends
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.value()?.clone())))
            .collect();
        (backends, frontends)
    }

    /// The earliest deadline after `now_ms` of a winning, live lease: when the view next
    /// changes on its own.
    pub fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        self.by_deadline
            .range((now_ms + 1, RegKey::MIN)..)
            .find(|(_, k)| {
                self.leases
                    .get(k)
                    .is_some_and(|s| !s.reg.val.is_deregistration())
            })
            .map(|(d, _)| *d)
    }
}

/// What [`Registry::update_view`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewChanges {
    /// Registrations that became live, sorted.
    pub online: Vec<RegKey>,
    /// Registrations that stopped being live (as they were), sorted by key.
    pub offline: Vec<LiveRegistration>,
    /// Whether a registration that stays live changed its TTL or meta.
    pub updated: bool,
    /// Whether any backend or frontend changed.
    pub entities: bool,
}

/// A live registration as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRegistration {
    pub key: RegKey,
    /// When the latest renewal happened (deadline - ttl).
    pub registered_ms: u64,
    pub deadline_ms: u64,
    pub ttl_ms: u64,
    pub meta: BTreeMap<String, String>,
}

/// What a node serves: live registrations and current entities, in sorted order. The
/// registrations are a persistent map: a copy (each published view is one) costs nothing, and
/// a change to one copy costs O(log n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub registrations: imbl::OrdMap<RegKey, LiveRegistration>,
    pub backends: BTreeMap<String, Backend>,
    pub frontends: BTreeMap<String, Frontend>,
}

impl View {
    /// Live registrations of app@version, sorted by (host, port).
    pub fn servers_of<'a>(
        &'a self,
        app: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a LiveRegistration> + 'a {
        self.registrations
            .values()
            .filter(move |r| r.key.app == app && r.key.version == version)
    }
}
