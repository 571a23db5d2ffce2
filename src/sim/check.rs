//! The reference model and the invariants every simulated node is checked against.
//!
//! The reference remembers every acknowledged write (by gossip key, with its stamp). A write is
//! *lost* only when every node that held it crashed before passing it on (a 2xx means "in the
//! receiving node's replicated state", not "on disk everywhere"). The latest write of a key that
//! is not lost is what every node must end up with, or something newer.

use std::collections::BTreeMap;

use super::{Sim, BOUNDS};
use crate::hlc::Stamp;
use crate::registry::{parse_lease_key, Record, Registry, BACKEND_PREFIX};

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    pub stamp: Stamp,
    pub kind: Kind,
    pub lost: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Renewal { deadline_ms: u64 },
    Deregistration,
    Value,
    Tombstone,
}

/// Every acknowledged write, by gossip key.
#[derive(Debug, Default)]
pub struct Reference {
    pub writes: BTreeMap<String, Vec<Ack>>,
}

impl Reference {
    pub fn ack(&mut self, key: &str, record: &Record) {
        let kind = match record {
            Record::Lease(_, l) if l.is_deregistration() => Kind::Deregistration,
            Record::Lease(_, l) => Kind::Renewal {
                deadline_ms: l.deadline_ms,
            },
            Record::Backend(_, v) if v.value.is_some() => Kind::Value,
            Record::Frontend(_, v) if v.value.is_some() => Kind::Value,
            _ => Kind::Tombstone,
        };
        self.writes.entry(key.to_string()).or_default().push(Ack {
            stamp: record.stamp().clone(),
            kind,
            lost: false,
        });
    }

    /// Node `crashed` is going down: writes no other running node holds are lost. (A node
    /// whose clock is far off holds what it likes, and no one takes the records it stamps;
    /// but it relays the copies of other nodes' keyspaces it holds, and a write in one of
    /// those is kept.)
    pub fn on_crash(
        &mut self,
        sim_nodes: &[super::node::SimNode],
        crashed: usize,
        bad: Option<usize>,
    ) {
        let bad_name = bad.map(|b| sim_nodes[b].name.as_str());
        for (key, acks) in &mut self.writes {
            for ack in acks.iter_mut().filter(|a| !a.lost) {
                let others = || sim_nodes.iter().filter(|n| n.up && n.index != crashed);
                let kept = others()
                    .filter(|n| Some(n.index) != bad)
                    .any(|n| winner(&n.registry, key).is_some_and(|w| w >= ack.stamp))
                    || others().any(|n| relays(n, key, &ack.stamp, bad_name));
                if !kept {
                    ack.lost = true;
                }
            }
        }
    }

    /// Node `n` restarted: a write taken for lost that its snapshot gave back is not lost
    /// (it deletes or outranks what it did before, and its tombstone is forgotten like any).
    pub fn on_restart(&mut self, n: &super::node::SimNode) {
        for (key, acks) in &mut self.writes {
            let Some(w) = winner(&n.registry, key) else {
                continue;
            };
            for ack in acks.iter_mut().filter(|a| a.lost && a.stamp == w) {
                ack.lost = false;
            }
        }
    }

    /// The latest write of `key` that is not lost.
    pub fn latest(&self, key: &str) -> Option<&Ack> {
        self.writes
            .get(key)?
            .iter()
            .filter(|a| !a.lost)
            .max_by(|a, b| a.stamp.cmp(&b.stamp))
    }
}

/// Whether `n` holds, in its copy of some other node's keyspace, a record of `key` stamped
/// `stamp` or later, by a node other than `bad` (it passes it on when it gossips, and the
/// others take it).
fn relays(n: &super::node::SimNode, key: &str, stamp: &Stamp, bad: Option<&str>) -> bool {
    n.copies.values().any(|c| {
        matches!(c.space.keys.get(key), Some((_, Some(v)))
            if crate::registry::decode(key, v)
                .is_ok_and(|r| r.stamp() >= stamp && Some(r.stamp().node()) != bad))
    })
}

/// The stamp of the record a registry holds for a gossip key.
pub fn winner(reg: &Registry, key: &str) -> Option<Stamp> {
    if let Some(k) = parse_lease_key(key) {
        return reg.leases.get(&k).map(|s| s.reg.marker.0.clone());
    }
    let name = key.strip_prefix(BACKEND_PREFIX)?;
    reg.backends.get(name).map(|s| s.reg.marker.0.clone())
}

fn live(reg: &Registry, key: &str, now: u64) -> bool {
    if let Some(k) = parse_lease_key(key) {
        return reg.leases.get(&k).is_some_and(|s| s.reg.val.is_live(now));
    }
    let name = key.strip_prefix(BACKEND_PREFIX).unwrap_or(key);
    reg.backends.get(name).is_some_and(|s| s.value().is_some())
}

/// The nodes whose state the checks hold to: running, ready, with a sane clock.
fn checked(sim: &Sim) -> impl Iterator<Item = &super::node::SimNode> {
    sim.nodes
        .iter()
        .filter(move |n| n.up && n.ready && !sim.is_bad(n.index))
}

/// After every step: a node that has received a deregistration never lists the registration
/// as live, whatever its clock says.
pub fn step(sim: &Sim) -> Result<(), String> {
    for (key, _) in sim
        .reference
        .writes
        .iter()
        .filter(|(k, _)| k.starts_with("r:"))
    {
        let Some(latest) = sim.reference.latest(key) else {
            continue;
        };
        if latest.kind != Kind::Deregistration {
            continue;
        }
        for n in sim.nodes.iter().filter(|n| n.up) {
            // (A greater winner is a lost renewal that came back from a snapshot: it may live.)
            let holds_it = winner(&n.registry, key).as_ref() == Some(&latest.stamp);
            if holds_it && live(&n.registry, key, n.now()) {
                return Err(format!(
                    "{} lists {key} as live after receiving its deregistration {:?}",
                    n.name, latest.stamp
                ));
            }
        }
    }
    Ok(())
}

/// After gossip has settled: every checked node agrees with the others and with the reference.
pub fn quiescent(sim: &Sim) -> Result<(), String> {
    let nodes: Vec<_> = checked(sim).collect();
    // Convergence: the same view at the same instant, the same entity bytes.
    if let Some(first) = nodes.first() {
        let t = sim.true_ms;
        let view = first.registry.view(t);
        for n in &nodes[1..] {
            if n.registry.view(t) != view {
                return Err(format!(
                    "{} and {} have exchanged everything but their views differ",
                    first.name, n.name
                ));
            }
            for (name, slot) in &n.registry.backends {
                let other = first.registry.backends.get(name).map(|s| &s.encoded);
                if slot.value().is_some() && other != Some(&slot.encoded) {
                    return Err(format!(
                        "{} and {} hold different bytes for backend {name}",
                        first.name, n.name
                    ));
                }
            }
        }
    }
    // Nothing acknowledged is lost, nothing deleted comes back.
    for (key, acks) in &sim.reference.writes {
        let Some(latest) = sim.reference.latest(key) else {
            continue;
        };
        for n in &nodes {
            let w = winner(&n.registry, key);
            // A write taken for lost (its node crashed before passing it on) may come back
            // from that node's snapshot: then it is the newest, and what counts.
            let effective = match &w {
                Some(w) if *w > latest.stamp => match acks.iter().find(|a| a.stamp == *w) {
                    Some(a) => a,
                    None => {
                        return Err(format!(
                            "{} holds {key} at {w:?}, a write the reference does not hold (a peer whose clock is off must be refused)",
                            n.name
                        ))
                    }
                },
                _ => latest,
            };
            let current = w.as_ref() == Some(&effective.stamp);
            let now = n.now();
            let is_live = live(&n.registry, key, now);
            match effective.kind {
                Kind::Value if !current => {
                    return Err(format!(
                        "{} lost the acknowledged write {:?} of {key} (holds {w:?})",
                        n.name, effective.stamp
                    ))
                }
                Kind::Tombstone if is_live => {
                    return Err(format!(
                        "{} brought back {key}, deleted at {:?} (holds {w:?})",
                        n.name, effective.stamp
                    ))
                }
                // Surely live on every clock (skews are within 1 s): it must be listed.
                Kind::Renewal { deadline_ms }
                    if deadline_ms > now + 1_000 && !(current && is_live) =>
                {
                    return Err(format!(
                        "{} does not list {key}, renewed at {:?} until {deadline_ms} (holds {w:?})",
                        n.name, effective.stamp
                    ))
                }
                Kind::Renewal { .. } if !current && is_live => {
                    return Err(format!(
                        "{} lists {key} from an older renewal than {:?} (holds {w:?})",
                        n.name, effective.stamp
                    ))
                }
                Kind::Deregistration if is_live => {
                    return Err(format!(
                        "{} lists {key}, deregistered at {:?} (holds {w:?})",
                        n.name, effective.stamp
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// After every TTL, grace and tombstone horizon has passed: only live entities remain.
pub fn drained(sim: &Sim) -> Result<(), String> {
    for n in checked(sim) {
        if !n.registry.leases.is_empty() {
            return Err(format!(
                "{} still holds {} leases after every one expired and the grace passed",
                n.name,
                n.registry.leases.len()
            ));
        }
        let tombstones = n
            .registry
            .backends
            .values()
            .filter(|s| s.value().is_none())
            .count();
        if tombstones > 0 {
            return Err(format!(
                "{} still holds {tombstones} tombstones past tombstone_ttl ({} ms)",
                n.name, BOUNDS.gc.tombstone_ttl_ms
            ));
        }
        let entities = n.registry.backends.len();
        // Its entities (adopted), and its clock key.
        if n.space.live_keys() > entities + 1 {
            return Err(format!(
                "{} keeps {} keys for {entities} entities",
                n.name,
                n.space.live_keys()
            ));
        }
        if n.copies.len() > sim.nodes.len() {
            return Err(format!(
                "{} keeps copies of {} keyspaces in a cluster of {}",
                n.name,
                n.copies.len(),
                sim.nodes.len()
            ));
        }
    }
    Ok(())
}
