//! A seeded, deterministic simulation of a whole cluster in one process, for hunting the
//! replication holes DESIGN.md's invariants rule out.
//!
//! Each simulated node runs the registry core's real decisions (the CRDT join, the codec's checks,
//! the HLC and its drift bound, the GC plan, readiness, snapshot restore) around a model of
//! chitchat ([`node`]): owned, versioned keyspaces, copies relayed in version order within an
//! MTU, deletions never reported, old generations forgotten after `dead_node_grace`. The workload
//! ([`Op`]) draws registrations, renewals, TTL changes, deregistrations, entity writes and
//! deletes (some carrying fields a newer version added), partitions and heals, message loss,
//! crashes and restarts with and without a snapshot, a restart after a long outage, clock skew
//! per node and one peer whose clock is hours off. After every step, and fully after each
//! quiescent period, [`check`] compares every node with a reference model of what was
//! acknowledged. On a violation the run stops with the seed, the step and a minimised trace.
//!
//! Reproduce a failure with `cargo run --release --example bench_sim -- --seed N --nodes K
//! --steps S`; the printed trace replays with [`replay`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::registry::gc::GcConfig;

mod check;
pub mod node;
mod workload;

pub use check::Reference;
pub use workload::Op;

use node::{Bounds, SimNode};

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub steps: usize,
    /// Whether node `nodes - 1` has a clock hours off (its writes are refused by the others).
    pub bad_clock: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub steps: usize,
    pub writes: usize,
    pub exchanges: usize,
    pub quiescent_checks: usize,
    pub crashes: usize,
    pub refused: u64,
}

/// An invariant that broke.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub step: usize,
    pub what: String,
    /// The shortest prefix-and-subset of the run's operations found to still fail.
    pub trace: Vec<Op>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} step {}: {}", self.seed, self.step, self.what)?;
        writeln!(f, "minimised trace ({} operations):", self.trace.len())?;
        for op in &self.trace {
            writeln!(f, "  {op:?}")?;
        }
        Ok(())
    }
}

/// Bounds short enough that a run goes past them many times.
pub const BOUNDS: Bounds = Bounds {
    gc: GcConfig {
        lease_grace_ms: 5_000,
        tombstone_ttl_ms: 120_000,
    },
    max_clock_drift_ms: 10_000,
    warmup_ms: 5_000,
    dead_node_grace_ms: 30_000,
};

/// The simulated cluster.
pub struct Sim {
    pub nodes: Vec<SimNode>,
    pub true_ms: u64,
    pub next_maintenance_ms: u64,
    /// Pairs of node indexes that cannot talk.
    pub cut: Vec<(usize, usize)>,
    /// Per mille of exchanges lost.
    pub drop_permille: u32,
    /// Copies of these generations are forgotten at the given true time.
    pub retire: Vec<(node::Origin, u64)>,
    pub reference: Reference,
    pub stats: Stats,
    rng: ChaCha8Rng,
    bad: Option<usize>,
}

const START_MS: u64 = 1_800_000_000_000;
/// Keys per gossip exchange (about what one datagram carries).
const EXCHANGE_BUDGET: usize = 64;

impl Sim {
    pub fn new(cfg: &SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let bad = (cfg.bad_clock && cfg.nodes > 2).then_some(cfg.nodes - 1);
        let nodes = (0..cfg.nodes)
            .map(|i| {
                // NTP-grade skew, except the bad clock.
                let skew = if Some(i) == bad {
                    6 * 3_600_000
                } else {
                    rng.gen_range(-500..=500)
                };
                SimNode::new(i, skew, START_MS, &BOUNDS)
            })
            .collect();
        let drop_permille = rng.gen_range(0..=20);
        Sim {
            nodes,
            true_ms: START_MS,
            next_maintenance_ms: START_MS + 1_000,
            cut: Vec::new(),
            drop_permille,
            retire: Vec::new(),
            reference: Reference::default(),
            stats: Stats::default(),
            rng,
            bad,
        }
    }

    /// Whether node `i` has the bad clock.
    pub fn is_bad(&self, i: usize) -> bool {
        self.bad == Some(i)
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        !self
            .cut
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b))
    }

    /// Advances true time, running every maintenance round that falls in it.
    pub fn advance(&mut self, ms: u64) {
        let end = self.true_ms + ms;
        while self.next_maintenance_ms <= end {
            self.set_time(self.next_maintenance_ms);
            self.maintain_all();
            self.next_maintenance_ms += 1_000;
        }
        self.set_time(end);
    }

    fn set_time(&mut self, t: u64) {
        self.true_ms = t;
        for n in &mut self.nodes {
            n.tick(t);
        }
    }

    fn maintain_all(&mut self) {
        let t = self.true_ms;
        let gone: Vec<node::Origin> = self
            .retire
            .iter()
            .filter(|(_, at)| *at <= t)
            .map(|(o, _)| *o)
            .collect();
        self.retire.retain(|(_, at)| *at > t);
        let live: Vec<node::Origin> = self
            .nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| n.origin())
            .collect();
        for n in &mut self.nodes {
            for o in &gone {
                n.copies.remove(o);
            }
            if n.up {
                n.maintain(&live, &BOUNDS);
            }
        }
    }

    /// One gossip exchange between two nodes, unless they are down or cut apart. (Lost
    /// messages are never generated as exchanges: the workload decides loss, so a trace
    /// replays exactly.)
    pub fn gossip(&mut self, from: usize, to: usize) {
        let (a, b) = (&self.nodes[from], &self.nodes[to]);
        if from == to || !a.up || !b.up || !self.connected(from, to) {
            return;
        }
        self.stats.exchanges += 1;
        node::exchange(&mut self.nodes, from, to, EXCHANGE_BUDGET, &BOUNDS);
    }

    /// Heals every cut, stops loss, and gossips until nothing changes anywhere.
    pub fn quiesce(&mut self) {
        self.cut.clear();
        self.drop_permille = 0;
        for _ in 0..10_000 {
            let mut changed = false;
            let n = self.nodes.len();
            for from in 0..n {
                for to in 0..n {
                    let ok = from != to && self.nodes[from].up && self.nodes[to].up;
                    if ok && node::exchange(&mut self.nodes, from, to, EXCHANGE_BUDGET, &BOUNDS) {
                        changed = true;
                    }
                }
            }
            if !changed {
                return;
            }
        }
        panic!("gossip never settles");
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

/// Runs a seeded simulation. On a violation, the failure carries a minimised trace.
pub fn run(cfg: &SimConfig) -> Result<Stats, Failure> {
    let mut sim = Sim::new(cfg);
    let mut trace = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let op = workload::next(&mut sim);
        trace.push(op.clone());
        if let Err(what) = workload::apply(&mut sim, &op) {
            let trace = minimise(cfg, trace, &what);
            return Err(Failure {
                seed: cfg.seed,
                step,
                what,
                trace,
            });
        }
        sim.stats.steps += 1;
    }
    // Drain: past every TTL, grace and tombstone, then the state must be empty but for entities.
    let end = Op::Drain;
    trace.push(end.clone());
    if let Err(what) = workload::apply(&mut sim, &end) {
        let trace = minimise(cfg, trace, &what);
        return Err(Failure {
            seed: cfg.seed,
            step: cfg.steps,
            what,
            trace,
        });
    }
    sim.stats.refused = sim.nodes.iter().map(|n| n.refused).sum();
    Ok(sim.stats)
}

/// Replays a list of operations on a fresh cluster (the seed only sets the clocks' skew);
/// returns the first violation.
pub fn replay(cfg: &SimConfig, ops: &[Op]) -> Result<(), String> {
    let mut sim = Sim::new(cfg);
    for op in ops {
        workload::apply(&mut sim, op)?;
    }
    Ok(())
}

/// Shortens a failing trace by dropping chunks of operations (halving the chunk size down to
/// single operations) while it still fails; the failing operation itself stays last. Bounded
/// in replays, so a long run still reports quickly.
fn minimise(cfg: &SimConfig, trace: Vec<Op>, what: &str) -> Vec<Op> {
    // The same failure, not any failure: the message without its numbers.
    let signature = |m: &str| -> String { m.chars().filter(|c| !c.is_ascii_digit()).collect() };
    let wanted = signature(what);
    let fails = |ops: &[Op]| replay(cfg, ops).is_err_and(|m| signature(&m) == wanted);
    let mut ops = trace;
    let mut budget = 3_000usize;
    let mut size = (ops.len() / 2).max(1);
    loop {
        let mut i = 0;
        while i + 1 < ops.len() && budget > 0 {
            let end = (i + size).min(ops.len() - 1);
            let mut shorter = ops.clone();
            shorter.drain(i..end);
            budget -= 1;
            if fails(&shorter) {
                ops = shorter;
            } else {
                i = end;
            }
        }
        if size == 1 || budget == 0 {
            return ops;
        }
        size /= 2;
    }
}
