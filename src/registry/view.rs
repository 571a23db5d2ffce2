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
        let mut view = View {
            registrations,
            backends,
            frontends,
            digest: ViewDigest::default(),
        };
        view.digest = ViewDigest::of(&view);
        view
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
                Some(r) => {
                    view.digest.add(&r);
                    match view.registrations.insert(k.clone(), r) {
                        None => out.online.push(k),
                        Some(was) => {
                            view.digest.remove(&was);
                            let now = &view.registrations[&k];
                            out.updated |= was.ttl_ms != now.ttl_ms || was.meta != now.meta;
                        }
                    }
                }
                None => {
                    if let Some(r) = view.registrations.remove(&k) {
                        view.digest.remove(&r);
                        out.offline.push(r);
                    }
                }
            }
        }
        if std::mem::take(&mut self.changes.entities) {
            let fresh = self.entities_view();
            out.entities = view.backends != fresh.0 || view.frontends != fresh.1;
            (view.backends, view.frontends) = fresh;
            view.digest.entities = ViewDigest::entities_of(&view.backends, &view.frontends);
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
    /// What the view serves, as a digest every node computes alike (the fleet status compares
    /// them). Kept by [`Registry::view`] and [`Registry::update_view`]; a view built by hand
    /// gets it from [`ViewDigest::of`].
    pub digest: ViewDigest,
}

/// A digest of what a view serves: each live registration's key and meta (not its deadline:
/// renewals do not change what HAProxy is given), and every backend and frontend. The
/// registrations' part is a sum of one hash per registration, so a change updates it in O(1);
/// the entities' part (a few hundred at most) is recomputed when they change. Stable across
/// processes and platforms (FNV-1a, then a 64-bit finaliser), so two nodes that serve the same
/// thing have the same digest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ViewDigest {
    pub registrations: u64,
    pub entities: u64,
}

impl ViewDigest {
    /// Version of this digest's definition, published beside it: digests of different versions
    /// are not compared.
    pub const SCHEME: u32 = 1;

    /// The digest of `view`, computed from scratch.
    pub fn of(view: &View) -> ViewDigest {
        let mut d = ViewDigest {
            registrations: 0,
            entities: Self::entities_of(&view.backends, &view.frontends),
        };
        for r in view.registrations.values() {
            d.add(r);
        }
        d
    }

    pub fn add(&mut self, r: &LiveRegistration) {
        self.registrations = self.registrations.wrapping_add(registration_hash(r));
    }

    pub fn remove(&mut self, r: &LiveRegistration) {
        self.registrations = self.registrations.wrapping_sub(registration_hash(r));
    }

    pub fn entities_of(
        backends: &BTreeMap<String, Backend>,
        frontends: &BTreeMap<String, Frontend>,
    ) -> u64 {
        if backends.is_empty() && frontends.is_empty() {
            return 0; // As in `ViewDigest::default()`.
        }
        let mut bytes = Vec::new();
        for b in backends.values() {
            bytes.extend(b"b\0");
            bytes.extend(serde_json::to_vec(b).unwrap_or_default());
            bytes.push(0);
        }
        for f in frontends.values() {
            bytes.extend(b"f\0");
            bytes.extend(serde_json::to_vec(f).unwrap_or_default());
            bytes.push(0);
        }
        finalise(super::codec::digest(&bytes))
    }

    /// The whole digest as one number.
    pub fn value(&self) -> u64 {
        finalise(self.registrations ^ finalise(self.entities))
    }

    /// `value` as 16 hex digits, as the fleet status shows it.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.value())
    }
}

fn registration_hash(r: &LiveRegistration) -> u64 {
    let k = &r.key;
    let mut bytes = Vec::with_capacity(64);
    for part in [&k.app, &k.version, &k.host] {
        bytes.extend(part.as_bytes());
        bytes.push(0);
    }
    bytes.extend(k.port.to_string().as_bytes());
    bytes.push(0);
    for (name, value) in &r.meta {
        bytes.extend(name.as_bytes());
        bytes.push(0);
        bytes.extend(value.as_bytes());
        bytes.push(0);
    }
    finalise(super::codec::digest(&bytes))
}

/// splitmix64's finaliser: spreads FNV's output so that sums of hashes do not cancel by
/// accident of structure.
fn finalise(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
