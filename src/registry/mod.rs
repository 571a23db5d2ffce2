//! The registry core: the CRDT that every node's gossip keyspace is joined into. This module and
//! its children do no I/O and take time as a parameter.
//!
//! - [`codec`]: the gossip keys and values (one small record per lease or entity version);
//! - [`view`]: what is live at an instant, and when that next changes on its own;
//! - [`gc`]: what a node may delete from its keyspace, adopt into it, or forget;
//! - [`ready`]: whether a starting node has caught up with its peers;
//! - [`restore`]: what a starting node takes back from its snapshot;
//! - [`renew`]: which renewals may wait before they are gossiped.
//!
//! The registry is a map of last-writer-wins registers (crdts' `LWWReg`) keyed by record key,
//! with the HLC stamp as marker. The join keeps, per key, the record with the greatest marker; the
//! marker ends with a digest of the encoded value so that even two different values carrying the
//! same stamp (which the HLC never issues) would join deterministically. Leases also carry the
//! greatest deadline of any copy seen (a max-register), which garbage collection needs.
//!
//! Liveness is a pure function of this state and the clock: a registration is live iff its
//! greatest-stamped lease is a renewal (not a deregistration) whose deadline is in the future.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crdts::{CvRDT, LWWReg};

use crate::hlc::Stamp;
use crate::model::{Backend, Frontend, RegKey};

pub mod codec;
pub mod gc;
pub mod ready;
pub mod renew;
pub mod restore;
mod view;

pub use codec::*;
pub use view::{LiveRegistration, View, ViewChanges, ViewDigest};

#[cfg(test)]
pub(crate) mod tests;

/// A lease register plus the greatest deadline of any copy joined into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSlot {
    pub reg: LWWReg<Lease, Marker>,
    /// Max-register over every copy's deadline: a copy with an older stamp could otherwise
    /// become the winner again if the newest copy were garbage-collected too early.
    pub max_deadline_ms: u64,
}

impl LeaseSlot {
    fn merge(&mut self, other: LeaseSlot) {
        self.max_deadline_ms = self.max_deadline_ms.max(other.max_deadline_ms);
        self.reg.merge(other.reg);
    }
}

/// An entity register plus the winning record's bytes exactly as its writer encoded them: they
/// may carry fields this version does not know, and adoption copies them verbatim so that a
/// newer peer's fields survive in every keyspace (the marker's digest covers these bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySlot<T> {
    pub reg: LWWReg<Versioned<T>, Marker>,
    pub encoded: Arc<str>,
}

impl<T: Clone + PartialEq> EntitySlot<T> {
    fn merge(&mut self, other: EntitySlot<T>) {
        if other.reg.marker > self.reg.marker {
            *self = other;
        }
    }

    /// The current value, unless the winning record is a deletion.
    pub fn value(&self) -> Option<&T> {
        self.reg.val.value.as_ref()
    }
}

/// The replicated registry state: a join-semilattice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub leases: BTreeMap<RegKey, LeaseSlot>,
    pub backends: BTreeMap<String, EntitySlot<Backend>>,
    pub frontends: BTreeMap<String, EntitySlot<Frontend>>,
    /// Leases held per app (derived from `leases`, kept in step by `insert`, `remove_lease` and
    /// `merge`): the per-app limit is checked on every new registration.
    per_app: BTreeMap<String, usize>,
    /// Every lease by its winning record's deadline (derived from `leases`, kept in step like
    /// `per_app`): what expires next, and what garbage collection may visit, without a scan.
    by_deadline: BTreeSet<(u64, RegKey)>,
    /// What changed since the view was last brought up to date ([`Registry::update_view`]).
    changes: Changes,
}

/// The keys whose change the view must look at, since [`Registry::update_view`] last ran:
/// bookkeeping about the path to the state, not state (two registries that hold the same
/// records are equal whatever their change logs say).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Leases whose winning record changed in a way that may change the view: new, TTL or meta
    /// changed, a deregistration, an earlier deadline, or a renewal of one that had expired by
    /// the last update. A renewal that only moves a live lease's deadline later is not here
    /// (the deadline index tells when it expires).
    pub leases: BTreeSet<RegKey>,
    /// Whether any entity's winning record changed.
    pub entities: bool,
    /// The instant the view was last brought up to, if ever.
    pub view_ms: Option<u64>,
}

impl PartialEq for Changes {
    fn eq(&self, _: &Changes) -> bool {
        true
    }
}
impl Eq for Changes {}

fn join_map<K: Ord, V, F: Fn(&mut V, V)>(into: &mut BTreeMap<K, V>, from: BTreeMap<K, V>, f: F) {
    for (k, v) in from {
        match into.entry(k) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(v);
            }
            std::collections::btree_map::Entry::Occupied(mut e) => f(e.get_mut(), v),
        }
    }
}

fn insert_entity<T: Clone + PartialEq>(
    map: &mut BTreeMap<String, EntitySlot<T>>,
    name: String,
    val: Versioned<T>,
    marker: Marker,
    encoded: &str,
) {
    let slot = EntitySlot {
        reg: LWWReg { val, marker },
        encoded: Arc::from(encoded),
    };
    match map.entry(name) {
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(slot);
        }
        std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(slot),
    }
}

impl Registry {
    /// Joins one encoded record into the registry.
    pub fn insert_encoded(&mut self, key: &str, value: &str) -> Result<(), CodecError> {
        let record = decode(key, value)?;
        self.insert(record, value);
        Ok(())
    }

    /// Joins one record, whose encoding is `encoded`, into the registry. Equivalent to merging
    /// a registry holding only that record, without building one.
    pub fn insert(&mut self, record: Record, encoded: &str) {
        use std::collections::btree_map::Entry;
        let value_digest = digest(encoded.as_bytes());
        match record {
            Record::Lease(k, lease) => {
                let marker = (lease.stamp.clone(), value_digest);
                let deadline = lease.deadline_ms;
                match self.leases.entry(k) {
                    Entry::Vacant(e) => {
                        *self.per_app.entry(e.key().app.clone()).or_default() += 1;
                        self.by_deadline.insert((deadline, e.key().clone()));
                        self.changes.leases.insert(e.key().clone());
                        e.insert(LeaseSlot {
                            reg: LWWReg { val: lease, marker },
                            max_deadline_ms: deadline,
                        });
                    }
                    Entry::Occupied(mut e) => {
                        let slot = e.get_mut();
                        slot.max_deadline_ms = slot.max_deadline_ms.max(deadline);
                        if marker <= slot.reg.marker {
                            return;
                        }
                        let old = std::mem::replace(&mut slot.reg, LWWReg { val: lease, marker });
                        let new = &slot.reg.val;
                        // Only moves a deadline later, of a lease live at the last update?
                        let extends = old.val.extended_by(new)
                            && self
                                .changes
                                .view_ms
                                .is_some_and(|at| old.val.deadline_ms > at);
                        let (old_deadline, new_deadline) = (old.val.deadline_ms, new.deadline_ms);
                        let key = e.key();
                        if old_deadline != new_deadline {
                            self.by_deadline.remove(&(old_deadline, key.clone()));
                            self.by_deadline.insert((new_deadline, key.clone()));
                        }
                        if !extends {
                            self.changes.leases.insert(key.clone());
                        }
                    }
                }
            }
            Record::Backend(n, v) => {
                let marker = (v.stamp.clone(), value_digest);
                self.changes.entities |=
                    self.backends.get(&n).is_none_or(|s| marker > s.reg.marker);
                insert_entity(&mut self.backends, n, v, marker, encoded);
            }
            Record::Frontend(n, v) => {
                let marker = (v.stamp.clone(), value_digest);
                self.changes.entities |=
                    self.frontends.get(&n).is_none_or(|s| marker > s.reg.marker);
                insert_entity(&mut self.frontends, n, v, marker, encoded);
            }
        }
    }

    /// Whether joining `record` could change the view at `now_ms`. A renewal of a registration
    /// that is live, with the same TTL and meta, cannot (only its deadline moves), nor can a
    /// record that loses the join; anything else may (including a renewal whose deadline is
    /// earlier than the current one: the next expiry moves).
    pub fn changes_view(&self, record: &Record, now_ms: u64) -> bool {
        match record {
            Record::Lease(k, lease) => match self.leases.get(k) {
                None => lease.is_live(now_ms),
                Some(slot) => {
                    let cur = &slot.reg.val;
                    if lease.stamp <= cur.stamp {
                        return false;
                    }
                    // A deadline that moves earlier (a renewal from a node whose clock lags,
                    // or a shorter TTL) changes when the view next changes on its own.
                    !(cur.is_live(now_ms) && lease.is_live(now_ms) && cur.extended_by(lease))
                }
            },
            _ => true,
        }
    }

    /// Forgets a lease (garbage collection).
    pub fn remove_lease(&mut self, k: &RegKey) {
        if let Some(slot) = self.leases.remove(k) {
            self.by_deadline
                .remove(&(slot.reg.val.deadline_ms, k.clone()));
            self.changes.leases.insert(k.clone());
            if let Some(n) = self.per_app.get_mut(&k.app) {
                *n -= 1;
                if *n == 0 {
                    self.per_app.remove(&k.app);
                }
            }
        }
    }

    /// The CRDT join: commutative, associative and idempotent.
    pub fn merge(&mut self, other: Registry) {
        join_map(&mut self.leases, other.leases, LeaseSlot::merge);
        self.per_app.clear();
        self.by_deadline.clear();
        for (k, slot) in &self.leases {
            *self.per_app.entry(k.app.clone()).or_default() += 1;
            self.by_deadline
                .insert((slot.reg.val.deadline_ms, k.clone()));
        }
        join_map(&mut self.backends, other.backends, EntitySlot::merge);
        join_map(&mut self.frontends, other.frontends, EntitySlot::merge);
        // Anything may have changed: the next view update starts over.
        self.changes.view_ms = None;
        self.changes.entities = true;
    }

    /// Leases whose winning record's deadline is before `before_ms`, in deadline order.
    pub fn leases_by_deadline_before(&self, before_ms: u64) -> impl Iterator<Item = &RegKey> {
        self.by_deadline
            .range(..(before_ms, RegKey::MIN))
            .map(|(_, k)| k)
    }

    /// How many leases of `app` the registry holds (live or not yet collected).
    pub fn leases_of_app(&self, app: &str) -> usize {
        self.per_app.get(app).copied().unwrap_or(0)
    }

    /// The greatest stamp anywhere in the registry (the HLC observes it).
    pub fn max_stamp(&self) -> Option<&Stamp> {
        let l = self.leases.values().map(|s| &s.reg.marker.0);
        let b = self.backends.values().map(|r| &r.reg.marker.0);
        let f = self.frontends.values().map(|r| &r.reg.marker.0);
        l.chain(b).chain(f).max()
    }
}
