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

use std::collections::{BTreeMap, BTreeSet};
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
/// to marker) and the joined registry. Visits every lease: the reference that [`plan_for`]
/// agrees with, and the safety net a node runs now and then.
pub fn plan(
    own: &BTreeMap<String, Marker>,
    registry: &Registry,
    now_ms: u64,
    cfg: GcConfig,
) -> Plan {
    let own_leases = own
        .range(LEASE_PREFIX.to_string()..)
        .take_while(|(k, _)| k.starts_with(LEASE_PREFIX))
        .map(|(k, _)| k.as_str());
    let forget = registry
        .leases
        .iter()
        .filter(|(_, s)| collectable(s.max_deadline_ms, now_ms, cfg))
        .map(|(k, _)| k);
    plan_visiting(own, registry, now_ms, cfg, own_leases, forget)
}

/// The same plan as [`plan`], visiting only the leases that can be in it: those of our copies
/// that a newer record may have outranked since the last round (`outranked`, gossip keys: the
/// node notes them as it joins peers' records), and those whose winning deadline is more than
/// the grace ago (the registry's deadline index). Equal to [`plan`] when `outranked` holds
/// every key of ours whose winner changed since the last applied plan (property-tested).
pub fn plan_for(
    own: &BTreeMap<String, Marker>,
    registry: &Registry,
    now_ms: u64,
    cfg: GcConfig,
    outranked: &BTreeSet<String>,
) -> Plan {
    let forget: Vec<&RegKey> = registry
        .leases_by_deadline_before(now_ms.saturating_sub(cfg.lease_grace_ms))
        .filter(|k| collectable(registry.leases[*k].max_deadline_ms, now_ms, cfg))
        .collect();
    let forgotten: Vec<String> = forget.iter().map(|k| super::lease_key(k)).collect();
    let candidates: BTreeSet<&str> = outranked
        .iter()
        .map(String::as_str)
        .chain(forgotten.iter().map(String::as_str))
        .filter(|k| own.contains_key(*k))
        .collect();
    plan_visiting(
        own,
        registry,
        now_ms,
        cfg,
        candidates.into_iter(),
        forget.into_iter(),
    )
}

/// After a record was joined under `key`: notes `key` in `outranked` when it is a lease of ours
/// that the join outranked (what [`plan_for`] must visit).
pub fn note_if_outranked(
    own: &BTreeMap<String, Marker>,
    registry: &Registry,
    key: &str,
    outranked: &mut BTreeSet<String>,
) {
    let Some(ours) = own.get(key) else { return };
    let winner = parse_lease_key(key).and_then(|k| registry.leases.get(&k));
    if winner.is_some_and(|s| s.reg.marker > *ours) {
        outranked.insert(key.to_string());
    }
}

fn collectable(max_deadline_ms: u64, now_ms: u64, cfg: GcConfig) -> bool {
    now_ms > max_deadline_ms.saturating_add(cfg.lease_grace_ms)
}

fn plan_visiting<'a>(
    own: &BTreeMap<String, Marker>,
    registry: &Registry,
    now_ms: u64,
    cfg: GcConfig,
    own_leases: impl Iterator<Item = &'a str>,
    forget: impl Iterator<Item = &'a RegKey>,
) -> Plan {
    let mut out = Plan::default();
    // Our lease copies.
    for key in own_leases {
        let Some(marker) = own.get(key) else { continue };
        let slot = parse_lease_key(key).and_then(|k| registry.leases.get(&k));
        let dominated = slot.is_some_and(|s| s.reg.marker > *marker);
        let expired = slot.is_none_or(|s| collectable(s.max_deadline_ms, now_ms, cfg));
        if dominated || expired {
            out.delete.push(key.to_string());
        }
    }
    out.forget_leases.extend(forget.cloned());
    out.forget_leases.sort();

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

    #[derive(Debug, Clone)]
    enum Op {
        /// A record written into our keyspace (and joined).
        Mine(Record),
        /// A record joined from a peer.
        Theirs(Record),
        /// Time passes, then a maintenance round.
        Round(u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            arb_record().prop_map(Op::Mine),
            arb_record().prop_map(Op::Theirs),
            (1u64..30).prop_map(Op::Round),
        ]
    }

    proptest! {
        /// Round after round, with records joined between them, the plan that visits only the
        /// outranked copies and the expired leases is the plan that visits everything.
        #[test]
        fn plan_for_agrees_with_the_full_plan_round_after_round(
            ops in prop::collection::vec(arb_op(), 0..40),
        ) {
            let mut reg = Registry::default();
            let mut own: BTreeMap<String, Marker> = BTreeMap::new();
            let mut outranked = BTreeSet::new();
            let mut now = 0;
            for op in ops {
                let record = match op {
                    Op::Round(dt) => {
                        now += dt;
                        let full = plan(&own, &reg, now, CFG);
                        let visiting = plan_for(&own, &reg, now, CFG, &outranked);
                        prop_assert_eq!(&visiting, &full);
                        visiting.apply(&mut reg, &mut own);
                        outranked.clear();
                        continue;
                    }
                    Op::Mine(r) => {
                        let (k, v) = encode(&r);
                        own.insert(k, (r.stamp().clone(), crate::registry::digest(v.as_bytes())));
                        r
                    }
                    Op::Theirs(r) => r,
                };
                let (k, v) = encode(&record);
                reg.insert(record, &v);
                note_if_outranked(&own, &reg, &k, &mut outranked);
            }
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
