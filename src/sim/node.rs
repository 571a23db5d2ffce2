//! One simulated node: the registry core's real decisions (join, codec checks, drift bound, GC
//! plan, readiness, snapshot restore, HLC) around a model of chitchat's keyspaces.
//!
//! The model keeps what the invariants depend on: each node owns a keyspace of versioned keys;
//! every node holds copies of the keyspaces it has heard of (its own peers' and, relayed, theirs),
//! receives a peer's keys in version order a bounded number at a time (the MTU), never sees
//! deletions as events, and forgets a restarted node's old generation after `dead_node_grace`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::hlc::{check_drift, Hlc, ManualClock};
use crate::registry::{self, gc, ready, restore, Marker, Record, Registry};

/// A keyspace as chitchat holds it: versioned keys, deletions kept as markers.
#[derive(Debug, Clone, Default)]
pub struct Keyspace {
    pub max_version: u64,
    pub keys: BTreeMap<String, (u64, Option<String>)>,
}

impl Keyspace {
    pub fn set(&mut self, key: &str, value: String) {
        self.max_version += 1;
        self.keys
            .insert(key.to_string(), (self.max_version, Some(value)));
    }

    pub fn delete(&mut self, key: &str) {
        if matches!(self.keys.get(key), Some((_, Some(_)))) {
            self.max_version += 1;
            self.keys.insert(key.to_string(), (self.max_version, None));
        }
    }

    /// Keys with a value (deletion markers aside).
    pub fn live_keys(&self) -> usize {
        self.keys.values().filter(|(_, v)| v.is_some()).count()
    }
}

/// What a node knows of another node's keyspace (one generation of it).
#[derive(Debug, Clone, Default)]
pub struct Copy {
    pub space: Keyspace,
    /// Distinct values of the clock key that arrived.
    pub clock_values: u8,
}

/// A node generation's identity: (node index, generation).
pub type Origin = (usize, u64);

/// The bounds the simulated nodes run with, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub gc: gc::GcConfig,
    pub max_clock_drift_ms: u64,
    pub warmup_ms: u64,
    pub dead_node_grace_ms: u64,
}

/// One simulated node.
pub struct SimNode {
    pub index: usize,
    pub name: String,
    pub generation: u64,
    pub up: bool,
    pub skew_ms: i64,
    pub clock: ManualClock,
    pub hlc: Hlc,
    pub space: Keyspace,
    pub copies: BTreeMap<Origin, Copy>,
    pub registry: Registry,
    pub own: BTreeMap<String, Marker>,
    /// Our lease copies a join outranked since the last round (what `gc::plan_for` visits).
    pub outranked: BTreeSet<String>,
    pub quarantined: Vec<(String, String)>,
    /// The last snapshot written: (saved at, records).
    pub disk: Option<(u64, Vec<(String, String)>)>,
    pub started_ms: u64,
    pub ready: bool,
    pub round: u64,
    /// Records refused (codec, checks, drift).
    pub refused: u64,
}

impl SimNode {
    pub fn new(index: usize, skew_ms: i64, true_ms: u64, bounds: &Bounds) -> SimNode {
        let name = format!("n{index}");
        let clock = ManualClock::new(apply_skew(true_ms, skew_ms));
        let hlc = Hlc::new(
            name.clone(),
            Arc::new(clock.clone()),
            std::time::Duration::from_millis(bounds.max_clock_drift_ms),
        );
        SimNode {
            index,
            name,
            generation: 0,
            up: true,
            skew_ms,
            clock,
            hlc,
            space: Keyspace::default(),
            copies: BTreeMap::new(),
            registry: Registry::default(),
            own: BTreeMap::new(),
            outranked: BTreeSet::new(),
            quarantined: Vec::new(),
            disk: None,
            started_ms: true_ms,
            ready: true,
            round: 0,
            refused: 0,
        }
    }

    pub fn now(&self) -> u64 {
        self.hlc.now_ms()
    }

    pub fn origin(&self) -> Origin {
        (self.index, self.generation)
    }

    /// Sets the node's clock from the true time.
    pub fn tick(&mut self, true_ms: u64) {
        self.clock.set(apply_skew(true_ms, self.skew_ms));
    }

    /// A client write through this node: stamped now, put in its keyspace, joined locally.
    /// `mangle` may rewrite the encoded value (a newer version adding fields).
    pub fn write(&mut self, build: impl FnOnce(crate::hlc::Stamp, u64) -> Record) -> Record {
        let record = build(self.hlc.stamp(), self.now());
        let (key, value) = registry::encode(&record);
        self.write_encoded(record, &key, value)
    }

    pub fn write_encoded(&mut self, record: Record, key: &str, value: String) -> Record {
        let marker = (record.stamp().clone(), registry::digest(value.as_bytes()));
        self.registry.insert(record.clone(), &value);
        self.space.set(key, value);
        self.own.insert(key.to_string(), marker);
        record
    }

    /// A key/value of `origin`'s keyspace arriving here.
    pub fn deliver(&mut self, origin: Origin, key: &str, value: &str, bounds: &Bounds) {
        if registry::is_registry_key(key) {
            let Ok(record) = registry::decode_checked(key, value) else {
                self.refused += 1;
                return;
            };
            if check_drift(record.stamp(), self.now(), bounds.max_clock_drift_ms).is_err() {
                self.refused += 1;
                return;
            }
            let _ = self.hlc.observe(record.stamp());
            self.registry.insert(record, value);
            gc::note_if_outranked(&self.own, &self.registry, key, &mut self.outranked);
        } else if key == "n:clock" {
            if let Some(c) = self.copies.get_mut(&origin) {
                c.clock_values = c.clock_values.saturating_add(1);
            }
        }
    }

    /// One maintenance round: the GC plan, the clock key, the snapshot, readiness.
    pub fn maintain(&mut self, live_origins: &[Origin], bounds: &Bounds) {
        let now = self.now();
        let plan = gc::plan_for(&self.own, &self.registry, now, bounds.gc, &self.outranked);
        self.outranked.clear();
        for key in &plan.delete {
            self.space.delete(key);
        }
        for (key, value, _) in &plan.adopt {
            self.space.set(key, value.to_string());
        }
        plan.apply(&mut self.registry, &mut self.own);
        self.round += 1;
        self.space.set("n:clock", format!("{now} {}", self.round));
        self.save_snapshot();
        if !self.ready || !self.quarantined.is_empty() {
            let peers: Vec<ready::Peer> = live_origins
                .iter()
                .filter(|o| o.0 != self.index)
                .map(|o| ready::Peer {
                    node: format!("n{}", o.0),
                    recovering: self.copies.get(o).is_some_and(|c| {
                        matches!(c.space.keys.get("n:recovering"), Some((_, Some(_))))
                    }),
                    caught_up: self
                        .copies
                        .get(o)
                        .is_some_and(|c| ready::caught_up(c.clock_values, false)),
                })
                .collect();
            let waited = std::time::Duration::from_millis(now.saturating_sub(self.started_ms));
            let warmup = std::time::Duration::from_millis(bounds.warmup_ms);
            if !self.ready {
                let decision = ready::decide(true, &peers, waited, warmup);
                self.ready = matches!(decision, ready::Readiness::Ready(_));
            }
            if !self.quarantined.is_empty() {
                let decision = restore::decide_quarantine(&peers, waited, warmup);
                if decision != restore::Quarantine::Wait {
                    self.space.delete("n:recovering");
                    let held = std::mem::take(&mut self.quarantined);
                    if decision == restore::Quarantine::Restore {
                        for (k, v) in held {
                            if let Ok(r) = registry::decode_checked(&k, &v) {
                                self.registry.insert(r, &v);
                            }
                        }
                    }
                }
            }
        }
    }

    fn save_snapshot(&mut self) {
        let now = self.now();
        let records = restore::snapshot_records(&self.registry, &self.own, now);
        self.disk = Some((now, records));
    }

    /// A crash: memory is gone, the last snapshot stays on disk.
    pub fn crash(&mut self) {
        self.up = false;
    }

    /// A restart under a new generation, from the snapshot or from nothing.
    pub fn restart(&mut self, true_ms: u64, with_snapshot: bool, bounds: &Bounds) {
        self.tick(true_ms);
        self.up = true;
        self.generation += 1;
        self.space = Keyspace::default();
        self.copies.clear();
        self.registry = Registry::default();
        self.own.clear();
        self.outranked.clear();
        self.quarantined.clear();
        self.started_ms = self.now();
        self.ready = false;
        self.round = 0;
        self.hlc = Hlc::new(
            self.name.clone(),
            Arc::new(self.clock.clone()),
            std::time::Duration::from_millis(bounds.max_clock_drift_ms),
        );
        if let (true, Some((saved_at, records))) = (with_snapshot, self.disk.clone()) {
            let cfg = restore::RestoreConfig {
                tombstone_ttl_ms: bounds.gc.tombstone_ttl_ms,
                max_clock_drift_ms: bounds.max_clock_drift_ms,
                has_peers: true,
            };
            let plan = restore::plan(Some(saved_at), records, self.now(), cfg);
            if let Some(s) = &plan.max_stamp {
                let _ = self.hlc.observe(s);
            }
            for (k, v, record) in plan.records {
                self.write_encoded(record, &k, v);
            }
            self.quarantined = plan.quarantined;
            if !self.quarantined.is_empty() {
                self.space.set("n:recovering", "1".into());
            }
        }
        self.space.set("n:clock", format!("{} 0", self.now()));
    }

    /// Keyspaces this node can pass on: its own and its copies.
    pub fn known(&self) -> Vec<(Origin, &Keyspace)> {
        let mut out = vec![(self.origin(), &self.space)];
        out.extend(self.copies.iter().map(|(o, c)| (*o, &c.space)));
        out
    }
}

fn apply_skew(true_ms: u64, skew_ms: i64) -> u64 {
    (true_ms as i64 + skew_ms).max(0) as u64
}

/// What one exchange hands over.
enum Delivery {
    /// A key of `origin`'s keyspace, at `version`; `None` is a deletion.
    Key {
        origin: Origin,
        key: String,
        version: u64,
        value: Option<String>,
    },
    /// Everything of `origin` up to `version` was handed over (deletions included).
    UpTo { origin: Origin, version: u64 },
}

/// One gossip exchange: `to` receives, from what `from` knows, every key newer than its own copy
/// holds, in version order, at most `budget` keys in all. Returns whether anything was new.
pub fn exchange(
    nodes: &mut [SimNode],
    from: usize,
    to: usize,
    budget: usize,
    bounds: &Bounds,
) -> bool {
    let mut deliveries: Vec<Delivery> = Vec::new();
    {
        let (src, dst) = (&nodes[from], &nodes[to]);
        let mut left = budget;
        for (origin, space) in src.known() {
            if origin == dst.origin() || left == 0 {
                continue;
            }
            let have = dst.copies.get(&origin).map_or(0, |c| c.space.max_version);
            if space.max_version <= have {
                continue;
            }
            let mut newer: Vec<(&String, &(u64, Option<String>))> =
                space.keys.iter().filter(|(_, (v, _))| *v > have).collect();
            newer.sort_by_key(|(_, (v, _))| *v);
            let complete = newer.len() <= left;
            for (k, (version, value)) in newer.into_iter().take(left) {
                deliveries.push(Delivery::Key {
                    origin,
                    key: k.clone(),
                    version: *version,
                    value: value.clone(),
                });
                left -= 1;
            }
            if complete {
                deliveries.push(Delivery::UpTo {
                    origin,
                    version: space.max_version,
                });
            }
        }
    }
    let changed = !deliveries.is_empty();
    let dst = &mut nodes[to];
    for d in deliveries {
        match d {
            Delivery::UpTo { origin, version } => {
                let copy = dst.copies.entry(origin).or_default();
                copy.space.max_version = copy.space.max_version.max(version);
            }
            Delivery::Key {
                origin,
                key,
                version,
                value,
            } => {
                let copy = dst.copies.entry(origin).or_default();
                copy.space.max_version = copy.space.max_version.max(version);
                copy.space
                    .keys
                    .insert(key.clone(), (version, value.clone()));
                if let Some(v) = value {
                    dst.deliver(origin, &key, &v, bounds);
                }
            }
        }
    }
    changed
}
