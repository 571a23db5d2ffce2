//! The simulated workload and faults: what can happen in one step, drawn from the seed.

use std::collections::BTreeMap;

use rand::Rng;

use super::{check, Sim, BOUNDS};
use crate::model::{Backend, Balance, Mode, RegKey};
use crate::registry::{self, Lease, Record, Versioned};

/// One step of a simulation. A trace of these replays exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Register {
        node: usize,
        port: u16,
        ttl_ms: u64,
    },
    Deregister {
        node: usize,
        port: u16,
    },
    /// A backend write; `newer` writes it as a newer version would, with a field this one lacks.
    PutBackend {
        node: usize,
        name: u8,
        version: u8,
        newer: bool,
    },
    DeleteBackend {
        node: usize,
        name: u8,
    },
    Gossip {
        from: usize,
        to: usize,
    },
    Advance {
        ms: u64,
    },
    Cut {
        a: usize,
        b: usize,
    },
    Heal,
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
        snapshot: bool,
    },
    /// Down for longer than the tombstone horizon, back from its snapshot.
    LongOutage {
        node: usize,
    },
    /// Every node goes down at once and comes back from its snapshot, after `long` (past the
    /// tombstone horizon) or a short outage: the entities must all come back.
    ClusterOutage {
        long: bool,
    },
    /// Heal, let gossip settle, and check every invariant.
    Quiesce,
    /// Past every horizon: state must be down to the live entities.
    Drain,
}

const PORTS: u16 = 12;
const NAMES: u8 = 4;

fn reg_key(port: u16) -> RegKey {
    RegKey::new("web", "1", "10.0.0.1", port).expect("valid key")
}

fn backend(name: u8, version: u8) -> Backend {
    Backend {
        name: format!("b{name}"),
        app: "web".into(),
        version: version.to_string(),
        balance: Balance::Roundrobin,
        mode: Mode::Http,
        health_check: None,
        server_options: None,
        extra: vec![],
    }
}

/// Draws the next operation.
pub fn next(sim: &mut Sim) -> Op {
    let n = sim.nodes.len();
    let up: Vec<usize> = sim.nodes.iter().filter(|x| x.up).map(|x| x.index).collect();
    let down: Vec<usize> = sim
        .nodes
        .iter()
        .filter(|x| !x.up)
        .map(|x| x.index)
        .collect();
    let drop_permille = sim.drop_permille;
    let rng = sim.rng();
    let any = |rng: &mut rand_chacha::ChaCha8Rng| rng.gen_range(0..n);
    let roll = rng.gen_range(0..1000u32);
    match roll {
        0..=349 => {
            let (from, to) = (any(rng), any(rng));
            // A lost message is not an exchange at all.
            if rng.gen_range(0..1000) < drop_permille {
                Op::Advance { ms: 1 }
            } else {
                Op::Gossip { from, to }
            }
        }
        350..=469 => Op::Advance {
            ms: rng.gen_range(1..400),
        },
        470..=679 => Op::Register {
            node: any(rng),
            port: rng.gen_range(1..=PORTS),
            ttl_ms: rng.gen_range(1_000..=8_000),
        },
        680..=719 => Op::Deregister {
            node: any(rng),
            port: rng.gen_range(1..=PORTS),
        },
        720..=799 => Op::PutBackend {
            node: any(rng),
            name: rng.gen_range(0..NAMES),
            version: rng.gen_range(0..3),
            newer: rng.gen_range(0..10) == 0,
        },
        800..=829 => Op::DeleteBackend {
            node: any(rng),
            name: rng.gen_range(0..NAMES),
        },
        830..=849 => {
            let (a, b) = (any(rng), any(rng));
            Op::Cut { a, b }
        }
        850..=869 => Op::Heal,
        870..=879 if up.len() > 1 => Op::Crash {
            node: up[rng.gen_range(0..up.len())],
        },
        880..=909 if !down.is_empty() => Op::Restart {
            node: down[rng.gen_range(0..down.len())],
            snapshot: rng.gen_range(0..3) != 0,
        },
        910..=911 if up.len() > 2 => Op::LongOutage {
            node: up[rng.gen_range(0..up.len())],
        },
        912 if down.is_empty() => Op::ClusterOutage {
            long: rng.gen_range(0..2) == 0,
        },
        913..=939 => Op::Quiesce,
        _ => Op::Gossip {
            from: any(rng),
            to: any(rng),
        },
    }
}

/// Applies one operation, then checks what must hold after every step.
pub fn apply(sim: &mut Sim, op: &Op) -> Result<(), String> {
    match *op {
        Op::Register { node, port, ttl_ms } => {
            if sim.nodes[node].up {
                let key = reg_key(port);
                let record = sim.nodes[node].write(|stamp, now| {
                    Record::Lease(
                        key,
                        Lease {
                            stamp,
                            deadline_ms: now + ttl_ms,
                            ttl_ms,
                            meta: BTreeMap::new(),
                        },
                    )
                });
                ack(sim, node, &record);
            }
        }
        Op::Deregister { node, port } => {
            let key = reg_key(port);
            let n = &sim.nodes[node];
            let holds = n
                .registry
                .leases
                .get(&key)
                .is_some_and(|s| !s.reg.val.is_deregistration());
            if n.up && holds {
                let record = sim.nodes[node].write(|stamp, now| {
                    Record::Lease(
                        key,
                        Lease {
                            stamp,
                            deadline_ms: now,
                            ttl_ms: 0,
                            meta: BTreeMap::new(),
                        },
                    )
                });
                ack(sim, node, &record);
            }
        }
        Op::PutBackend {
            node,
            name,
            version,
            newer,
        } => {
            if sim.nodes[node].up {
                let b = backend(name, version);
                let n = &mut sim.nodes[node];
                let record = Record::Backend(
                    b.name.clone(),
                    Versioned {
                        stamp: n.hlc.stamp(),
                        value: Some(b),
                    },
                );
                let (key, mut value) = registry::encode(&record);
                if newer {
                    value = value.replacen("{\"name\"", "{\"added_later\":[1,2],\"name\"", 1);
                }
                let record = n.write_encoded(record, &key, value);
                ack(sim, node, &record);
            }
        }
        Op::DeleteBackend { node, name } => {
            let n = &sim.nodes[node];
            let name = format!("b{name}");
            let holds = n
                .registry
                .backends
                .get(&name)
                .is_some_and(|s| s.value().is_some());
            if n.up && holds {
                let record = sim.nodes[node]
                    .write(|stamp, _| Record::Backend(name, Versioned { stamp, value: None }));
                ack(sim, node, &record);
            }
        }
        Op::Gossip { from, to } => sim.gossip(from, to),
        Op::Advance { ms } => sim.advance(ms),
        Op::Cut { a, b } => {
            if a != b {
                sim.cut.push((a, b));
            }
        }
        Op::Heal => sim.cut.clear(),
        Op::Crash { node } => crash(sim, node),
        Op::Restart { node, snapshot } => {
            if !sim.nodes[node].up {
                // A restart takes time: at least a millisecond passes (otherwise the new
                // process, whose clock has not moved, could stamp a write exactly like one the
                // old process made after its last snapshot).
                sim.advance(1);
                let t = sim.true_ms;
                sim.nodes[node].restart(t, snapshot, &BOUNDS);
                sim.reference.on_restart(&sim.nodes[node]);
            }
        }
        Op::LongOutage { node } => {
            if sim.nodes[node].up {
                crash(sim, node);
                // The others carry on: gossip, and forget tombstones past the horizon.
                let step = BOUNDS.gc.tombstone_ttl_ms / 8;
                for _ in 0..10 {
                    sim.quiesce();
                    sim.advance(step);
                }
                sim.quiesce();
                let t = sim.true_ms;
                sim.nodes[node].restart(t, true, &BOUNDS);
                sim.reference.on_restart(&sim.nodes[node]);
            }
        }
        Op::ClusterOutage { long } => {
            if sim.nodes.iter().all(|n| n.up) {
                cluster_outage(sim, long)?;
            }
        }
        Op::Quiesce => {
            sim.quiesce();
            sim.stats.quiescent_checks += 1;
            check::quiescent(sim)?;
        }
        Op::Drain => {
            let step = BOUNDS.gc.tombstone_ttl_ms / 4;
            for _ in 0..8 {
                sim.quiesce();
                sim.advance(step);
            }
            sim.quiesce();
            check::quiescent(sim)?;
            check::drained(sim)?;
        }
    }
    check::step(sim)
}

/// A write the node acknowledged: the reference remembers it unless the node's clock is so far
/// off that every other node refuses it (by design).
fn ack(sim: &mut Sim, node: usize, record: &Record) {
    sim.stats.writes += 1;
    if !sim.is_bad(node) {
        let (key, _) = registry::encode(record);
        sim.reference.ack(&key, record);
    }
}

fn cluster_outage(sim: &mut Sim, long: bool) -> Result<(), String> {
    // Settled, and a maintenance round later, so every snapshot holds the same entities.
    sim.quiesce();
    sim.advance(1_000);
    sim.quiesce();
    sim.advance(1_000);
    let good = (0..sim.nodes.len()).find(|i| !sim.is_bad(*i)).unwrap_or(0);
    let before = sim.nodes[good].registry.view(sim.true_ms).backends;
    for n in &mut sim.nodes {
        let origin = n.origin();
        n.crash();
        sim.retire
            .push((origin, sim.true_ms + BOUNDS.dead_node_grace_ms));
    }
    let away = if long {
        BOUNDS.gc.tombstone_ttl_ms * 3 / 2
    } else {
        BOUNDS.dead_node_grace_ms / 2
    };
    sim.advance(away);
    let t = sim.true_ms;
    for n in &mut sim.nodes {
        n.restart(t, true, &BOUNDS);
        sim.reference.on_restart(n);
    }
    for _ in 0..8 {
        sim.quiesce();
        sim.advance(1_000);
    }
    sim.quiesce();
    let after = sim.nodes[good].registry.view(sim.true_ms).backends;
    if before != after {
        return Err(format!(
            "after the whole cluster was down {away} ms, backends {:?} came back as {:?}",
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        ));
    }
    Ok(())
}

fn crash(sim: &mut Sim, node: usize) {
    if !sim.nodes[node].up {
        return;
    }
    let bad = (0..sim.nodes.len()).find(|i| sim.is_bad(*i));
    sim.reference.on_crash(&sim.nodes, node, bad);
    let origin = sim.nodes[node].origin();
    sim.nodes[node].crash();
    sim.retire
        .push((origin, sim.true_ms + BOUNDS.dead_node_grace_ms));
    sim.stats.crashes += 1;
}
