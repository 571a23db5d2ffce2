//! Garbage collection and adoption, decided as a pure function of what this node holds.
//!
//! Each maintenance round the node asks [`plan`] what to do and applies the answer to its gossip
//! keyspace and its registry ([`Plan::apply`] for the in-memory side). The rules keep the
//! invariants of the join:
//! - a lease copy of ours that a newer copy elsewhere outranks can never win again: delete it;
//! - a lease whose every known copy expired more than `lease_grace` ago: delete ours and forget
//!   it (a copy with an older stamp can no longer be live, so nothing can resurrect it);
//! - every entity's winning version is copied into our keyspace, byte for byte, so entities
//!   outlive the node that received them; tombstones older than `tombstone_ttl` are forgotten.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{backend_key, frontend_key, parse_lease_key, EntitySlot, Marker, Registry};
use super::{BACKEND_PREFIX, FRONTEND_PREFIX, LEASE_PREFIX};
use crate::model::RegKey;

/// The bounds garbage collection works with, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcConfig {
    /// How long after its last deadline a lease is kept (so late copies still join into it).
    pub lease_grace_ms: u64,
    /// How long a deletion is remembered, so that older writes arriving late lose to it.
    pub tombstone_ttl_ms: u64,
}

/// What one maintenance round does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys of our keyspace to delete.
    pub delete: Vec<String>,
    /// Winning entity records our keyspace lacks: key, the encoded value as written, marker.
    pub adopt: Vec<(String, Arc<str>, Marker)>,
    /// Leases the registry forgets.
    pub forget_leases: Vec<RegKey>,
    /// Entities (by gossip key) the registry forgets.
    pub forget_entities: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty()
            && self.adopt.is_empty()
            && self.forget_leases.is_empty()
            && self.forget_entities.is_empty()
    }

    /// Applies the plan to the in-memory side: the registry and the markers of our keyspace.
    /// (The node applies `delete` and `adopt` to the keyspace itself.)
    pub fn apply(&self, registry: &mut Registry, own: &mut BTreeMap<String, Marker>) {
        for key in &self.delete {
            own.remove(key);
        }
        for (key, _, marker) in &self.adopt {
            own.insert(key.clone(), marker.clone());
        }
        for k in &self.forget_leases {
            registry.remove_lease(k);
        }
        for key in &self.forget_entities {
            if let Some(name) = key.strip_prefix(BACKEND_PREFIX) {
                registry.backends.remove(name);
            } else if let Some(name) = key.strip_prefix(FRONTEND_PREFIX) {
                registry.frontends.remove(name);
            }
        }
    }
}

/// What to delete, adopt and forget at `now_ms`, given our keyspace's records (`own`: gossip key
/// to marker) and the joined registry.
pub fn plan(
    own: &BTreeMap<String, Marker>,
    registry: &Registry,
    now_ms: u64,
    cfg: GcConfig,
) -> Plan {
    let mut out = Plan::default();
    let collectable =
        |max_deadline_ms: u64| now_ms > max_deadline_ms.saturating_add(cfg.lease_grace_ms);

    // Our lease copies.
    for (key, marker) in own.range(LEASE_PREFIX.to_string()..) {
        if !key.starts_with(LEASE_PREFIX) {
            break;
        }
        let slot = parse_lease_key(key).and_then(|k| registry.leases.get(&k));
        let dominated = slot.is_some_and(|s| s.reg.marker > *marker);
        let expired = slot.is_none_or(|s| collectable(s.max_deadline_ms));
        if dominated || expired {
            out.delete.push(key.clone());
        }
    }
    for (k, slot) in &registry.leases {
        if collectable(slot.max_deadline_ms) {
            out.forget_leases.push(k.clone());
        }
    }

    // Entities.
    entities(&registry.backends, backend_key, own, now_ms, cfg, &mut out);
    entities(
        &registry.frontends,
        frontend_key,
        own,
        now_ms,
        cfg,
        &mut out,
    );
    out.delete.sort();
    out.delete.dedup();
    out
}

fn entities<T>(
    slots: &BTreeMap<String, EntitySlot<T>>,
    key_of: fn(&str) -> String,
    own: &BTreeMap<String, Marker>,
    now_ms: u64,
    cfg: GcConfig,
    out: &mut Plan,
) {
    for (name, slot) in slots {
        let key = key_of(name);
        let tombstone = slot.reg.val.value.is_none();
        let old = now_ms
            > slot
                .reg
                .val
                .stamp
                .wall_ms()
                .saturating_add(cfg.tombstone_ttl_ms);
        if tombstone && old {
            if own.contains_key(&key) {
                out.delete.push(key.clone());
            }
            out.forget_entities.push(key);
        } else if own.get(&key) != Some(&slot.reg.marker) {
            out.adopt
                .push((key, slot.encoded.clone(), slot.reg.marker.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Stamp;
    use crate::registry::{encode, Lease, Record, Versioned};
    use proptest::prelude::*;

    const CFG: GcConfig = GcConfig {
        lease_grace_ms: 10,
        tombstone_ttl_ms: 30,
    };

    /// A node's state: the records it wrote itself (its keyspace) and those it received.
    fn node_state(
        own_records: &[Record],
        others: &[Record],
    ) -> (Registry, BTreeMap<String, Marker>) {
        let mut reg = Registry::default();
        let mut own = BTreeMap::new();
        for r in own_records {
            let (k, v) = encode(r);
            own.insert(
                k,
                (r.stamp().clone(), crate::registry::digest(v.as_bytes())),
            );
            reg.insert(r.clone(), &v);
        }
        for r in others {
            let (_, v) = encode(r);
            reg.insert(r.clone(), &v);
        }
        (reg, own)
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let stamp = (0u64..60, 0u32..2, prop_oneof![Just("a"), Just("b")])
            .prop_map(|(ms, l, n)| Stamp(ms, l, n.to_string()));
        let lease = (stamp.clone(), 1u16..4, 0u64..30).prop_map(|(s, port, ttl)| {
            Record::Lease(
                RegKey::new("app", "v1", "10.0.0.1", port).unwrap(),
                Lease {
                    deadline_ms: s.0 + ttl,
                    ttl_ms: ttl,
                    stamp: s,
                    meta: Default::default(),
                },
            )
        });
        let backend = (stamp, prop_oneof![Just("web"), Just("api")], any::<bool>()).prop_map(
            |(s, name, alive)| {
                Record::Backend(
                    name.to_string(),
                    Versioned {
                        stamp: s,
                        value: alive.then(|| crate::registry::tests::backend(name, "v1")),
                    },
                )
            },
        );
        prop_oneof![lease, backend]
    }

    proptest! {
        /// Collecting never changes what is live now or at any later instant.
        #[test]
        fn applying_a_plan_never_changes_the_view_now_or_later(
            mine in prop::collection::vec(arb_record(), 0..8),
            theirs in prop::collection::vec(arb_record(), 0..8),
            now in 0u64..120,
        ) {
            let (mut reg, mut own) = node_state(&mine, &theirs);
            let before = reg.clone();
            plan(&own, &reg, now, CFG).apply(&mut reg, &mut own);
            for t in [now, now + 1, now + 10, now + 100] {
                prop_assert_eq!(reg.view(t), before.view(t));
            }
            // The per-app count the limits read follows what is forgotten.
            prop_assert_eq!(reg.leases_of_app("app"), reg.leases.len());
        }

        /// The copy that wins a lease is never deleted from our keyspace while it can matter,
        /// and every winning entity version ends up in our keyspace unless forgotten.
        #[test]
        fn a_plan_keeps_winning_copies_and_adopts_every_entity(
            mine in prop::collection::vec(arb_record(), 0..8),
            theirs in prop::collection::vec(arb_record(), 0..8),
            now in 0u64..120,
        ) {
            let (reg, own) = node_state(&mine, &theirs);
            let p = plan(&own, &reg, now, CFG);
            for key in &p.delete {
                if let Some(k) = parse_lease_key(key) {
                    let slot = &reg.leases[&k];
                    let ours_wins = own.get(key) == Some(&slot.reg.marker);
                    prop_assert!(!ours_wins || now > slot.max_deadline_ms + CFG.lease_grace_ms);
                }
            }
            let mut reg2 = reg.clone();
            let mut own2 = own.clone();
            p.apply(&mut reg2, &mut own2);
            for (name, slot) in &reg2.backends {
                prop_assert_eq!(own2.get(&backend_key(name)), Some(&slot.reg.marker));
            }
        }

        /// A second round right after the first has nothing left to do.
        #[test]
        fn a_plan_is_idempotent(
            mine in prop::collection::vec(arb_record(), 0..8),
            theirs in prop::collection::vec(arb_record(), 0..8),
            now in 0u64..120,
        ) {
            let (mut reg, mut own) = node_state(&mine, &theirs);
            plan(&own, &reg, now, CFG).apply(&mut reg, &mut own);
            prop_assert!(plan(&own, &reg, now, CFG).is_empty());
        }
    }

    #[test]
    fn an_adopted_entity_keeps_the_bytes_its_writer_encoded() {
        let mut reg = Registry::default();
        let newer =
            r#"{"s":[5,0,"b"],"v":{"name":"web","app":"web","version":"1","added_in_v9":true}}"#;
        reg.insert_encoded("b:web", newer).unwrap();
        let p = plan(&BTreeMap::new(), &reg, 6, CFG);
        assert_eq!(p.adopt.len(), 1);
        assert_eq!(&*p.adopt[0].1, newer);
    }
}
