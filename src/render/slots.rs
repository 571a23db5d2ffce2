//! Server slots: each backend's servers sit in numbered slots (`slot1`, `slot2`, ...) that a
//! server keeps for as long as it lives, with spare slots left empty (in maintenance). A
//! change of membership is then a change of what some slots hold, which HAProxy's runtime API
//! can make without a reload (`set server be/slotN addr|weight|state`), and the rendered file
//! describes the same slots, so a later reload agrees with what ran before it.
//!
//! Pure: [`assign`] decides which slot each server gets, [`commands`] what turns one table
//! into another at run time. Both are property-tested below.

use std::collections::BTreeMap;

use super::context::{BackendCtx, SlotCtx};

/// How slots are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSettings {
    /// A backend has a multiple of this many slots (at least one block).
    pub block: usize,
    /// How long a server that left stays in its slot, draining, before the slot is freed
    /// (0: freed at once).
    pub drain_ms: u64,
}

/// A server in a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    /// The address as the `server` line has it: an IP bender resolved, or the host as written.
    pub host: String,
    pub port: u16,
    pub weight: u16,
    /// Set while the server drains (it left the registry): when its slot is freed, in ms on
    /// the caller's clock.
    pub draining_until: Option<u64>,
}

impl Occupant {
    fn same_server(&self, host: &str, port: u16) -> bool {
        self.host == host && self.port == port
    }
}

/// What a slot tells HAProxy to do with its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotState {
    Ready,
    Drain,
    Maint,
}

impl SlotState {
    pub fn of(slot: &Option<Occupant>) -> SlotState {
        match slot {
            None => SlotState::Maint,
            Some(o) if o.draining_until.is_some() => SlotState::Drain,
            Some(_) => SlotState::Ready,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Ready => "ready",
            SlotState::Drain => "drain",
            SlotState::Maint => "maint",
        }
    }
}

/// Every backend's slots, by backend name; slot `i` of a backend is HAProxy's `slot{i+1}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub backends: BTreeMap<String, Vec<Option<Occupant>>>,
}

/// The name of slot `index` (0-based) in the config and on the runtime API.
pub fn slot_name(index: usize) -> String {
    format!("slot{}", index + 1)
}

/// The slot index of a server named `slot{n}`.
pub fn slot_index(name: &str) -> Option<usize> {
    let n: usize = name.strip_prefix("slot")?.parse().ok()?;
    n.checked_sub(1)
}

/// A server the view wants in a backend: address host, port, weight.
pub type Wanted = (String, u16, u16);

/// The servers each backend of a render context wants, in the context's order.
pub fn wanted_of(backends: &[BackendCtx]) -> BTreeMap<String, Vec<Wanted>> {
    backends
        .iter()
        .map(|b| {
            let servers = b
                .servers
                .iter()
                .map(|s| {
                    let host = s
                        .address
                        .rsplit_once(':')
                        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                        .unwrap_or(&s.host);
                    (host.to_string(), s.port, s.weight.unwrap_or(1))
                })
                .collect();
            (b.name.clone(), servers)
        })
        .collect()
}

fn round_up(n: usize, block: usize) -> usize {
    n.div_ceil(block).max(1) * block
}

/// The next table: every wanted server in a slot, each server that was in a slot still in the
/// same one (while it lives, and while it drains after leaving), new servers in the lowest free
/// slots. A backend has a multiple of `block` slots; it grows by blocks when full and gives
/// back trailing empty slots only once two blocks or more are spare (so one server coming and
/// going at a block's edge does not reload HAProxy each time). A server listed twice in a
/// backend (two registrations of one address) takes one slot.
pub fn assign(
    prev: &Table,
    wanted: &BTreeMap<String, Vec<Wanted>>,
    now_ms: u64,
    s: &SlotSettings,
) -> Table {
    let block = s.block.max(1);
    let mut next = Table::default();
    for (backend, servers) in wanted {
        let before = prev.backends.get(backend);
        let mut slots: Vec<Option<Occupant>> = before.cloned().unwrap_or_default();
        // Each address's first listing: its weight and its index in `servers`.
        let mut want: BTreeMap<(&str, u16), (u16, usize)> = BTreeMap::new();
        for (i, (h, p, w)) in servers.iter().enumerate() {
            want.entry((h.as_str(), *p)).or_insert((*w, i));
        }
        let mut placed = vec![false; servers.len()];
        for slot in slots.iter_mut() {
            let Some(o) = slot.as_mut() else { continue };
            let found = want.get(&(o.host.as_str(), o.port)).copied();
            if let Some((weight, first)) = found.filter(|&(_, first)| !placed[first]) {
                placed[first] = true;
                o.weight = weight;
                o.draining_until = None;
                continue;
            }
            let until = o.draining_until;
            match until {
                Some(until) if until <= now_ms => *slot = None,
                Some(_) => {}
                None if s.drain_ms == 0 => *slot = None,
                None => o.draining_until = Some(now_ms.saturating_add(s.drain_ms)),
            }
        }
        let mut free = 0;
        for (i, (h, p, _)) in servers.iter().enumerate() {
            let (weight, first) = want[&(h.as_str(), *p)];
            if first != i || placed[i] {
                continue; // A second listing, or already in its slot.
            }
            placed[i] = true;
            let occupant = Some(Occupant {
                host: h.clone(),
                port: *p,
                weight,
                draining_until: None,
            });
            while free < slots.len() && slots[free].is_some() {
                free += 1;
            }
            if free < slots.len() {
                slots[free] = occupant;
            } else {
                slots.push(occupant);
            }
        }
        let used = slots.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        let had = round_up(before.map_or(0, Vec::len), block);
        let target = round_up(used, block);
        let capacity = if used > had || had >= target + 2 * block {
            target
        } else {
            had
        };
        slots.resize(capacity, None);
        next.backends.insert(backend.clone(), slots);
    }
    next
}

/// The earliest instant a draining server's slot is due to be freed.
pub fn next_drain_end(table: &Table) -> Option<u64> {
    table
        .backends
        .values()
        .flatten()
        .filter_map(|o| o.as_ref()?.draining_until)
        .min()
}

/// How many slots of each state a backend has: (ready, draining, empty).
pub fn counts(slots: &[Option<Occupant>]) -> (usize, usize, usize) {
    slots
        .iter()
        .fold((0, 0, 0), |(r, d, m), o| match SlotState::of(o) {
            SlotState::Ready => (r + 1, d, m),
            SlotState::Drain => (r, d + 1, m),
            SlotState::Maint => (r, d, m + 1),
        })
}

/// The address an empty slot is rendered with (it is in maintenance: never used).
pub const EMPTY_HOST: &str = "127.0.0.1";
pub const EMPTY_PORT: u16 = 1;

/// What the template sees of a backend's slots.
pub fn slot_ctxs(slots: &[Option<Occupant>]) -> Vec<SlotCtx> {
    slots
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let (host, port, weight) = match o {
                Some(o) => (o.host.clone(), o.port, o.weight),
                None => (EMPTY_HOST.to_string(), EMPTY_PORT, 1),
            };
            let address = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            SlotCtx {
                name: slot_name(i),
                address,
                host,
                port,
                weight,
                state: SlotState::of(o).as_str(),
            }
        })
        .collect()
}

/// The same slots with everything that may change at run time replaced by one placeholder:
/// what a template renders from these is the config's structure (how many slots, where), and
/// two renders whose structures match differ only in what the runtime API can change.
pub fn blank_ctxs(count: usize) -> Vec<SlotCtx> {
    (0..count)
        .map(|i| SlotCtx {
            name: slot_name(i),
            address: "-".to_string(),
            host: "-".to_string(),
            port: 0,
            weight: 0,
            state: "-",
        })
        .collect()
}

/// One runtime API change to one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Addr(String, u16),
    Weight(u16),
    State(SlotState),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub backend: String,
    pub slot: usize,
    pub op: Op,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let server = format!("{}/{}", self.backend, slot_name(self.slot));
        match &self.op {
            Op::Addr(h, p) => write!(f, "set server {server} addr {h} port {p}"),
            Op::Weight(w) => write!(f, "set server {server} weight {w}"),
            Op::State(s) => write!(f, "set server {server} state {}", s.as_str()),
        }
    }
}

/// The runtime API commands that turn the slots of `from` into those of `to`, for the
/// backends both have with the same number of slots (any other difference is structural and
/// takes a reload). A slot's address and weight are set before it is made ready.
pub fn commands(from: &Table, to: &Table) -> Vec<Command> {
    let mut out = Vec::new();
    for (backend, new) in &to.backends {
        let Some(old) = from.backends.get(backend).filter(|o| o.len() == new.len()) else {
            continue;
        };
        for (slot, (o, n)) in old.iter().zip(new).enumerate() {
            let mut push = |op| {
                out.push(Command {
                    backend: backend.clone(),
                    slot,
                    op,
                })
            };
            if let Some(n) = n {
                if !o.as_ref().is_some_and(|o| o.same_server(&n.host, n.port)) {
                    push(Op::Addr(n.host.clone(), n.port));
                }
                if o.as_ref().map(|o| o.weight) != Some(n.weight) {
                    push(Op::Weight(n.weight));
                }
            }
            if SlotState::of(o) != SlotState::of(n) {
                push(Op::State(SlotState::of(n)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: SlotSettings = SlotSettings {
        block: 4,
        drain_ms: 1_000,
    };

    fn want(servers: &[(&str, u16, u16)]) -> BTreeMap<String, Vec<Wanted>> {
        let list = servers
            .iter()
            .map(|(h, p, w)| (h.to_string(), *p, *w))
            .collect();
        BTreeMap::from([("be".to_string(), list)])
    }

    fn hosts(t: &Table) -> Vec<Option<(String, SlotState)>> {
        t.backends["be"]
            .iter()
            .map(|o| {
                o.as_ref()
                    .map(|x| (format!("{}:{}", x.host, x.port), SlotState::of(o)))
            })
            .collect()
    }

    #[test]
    fn a_server_that_leaves_drains_in_its_slot_then_the_slot_is_freed_and_reused() {
        let t0 = assign(&Table::default(), &want(&[("a", 1, 1), ("b", 1, 1)]), 0, &S);
        assert_eq!(t0.backends["be"].len(), 4);
        let t1 = assign(&t0, &want(&[("b", 1, 1)]), 10, &S);
        assert_eq!(
            hosts(&t1)[..2],
            [
                Some(("a:1".into(), SlotState::Drain)),
                Some(("b:1".into(), SlotState::Ready))
            ]
        );
        assert_eq!(next_drain_end(&t1), Some(1_010));
        // A newcomer does not take the draining slot.
        let t2 = assign(&t1, &want(&[("b", 1, 1), ("c", 1, 1)]), 500, &S);
        assert_eq!(hosts(&t2)[2], Some(("c:1".into(), SlotState::Ready)));
        // Once the drain is over the slot is free, and the next newcomer takes it.
        let t3 = assign(&t2, &want(&[("b", 1, 1), ("c", 1, 1)]), 1_010, &S);
        assert_eq!(hosts(&t3)[0], None);
        let t4 = assign(
            &t3,
            &want(&[("b", 1, 1), ("c", 1, 1), ("d", 1, 1)]),
            1_011,
            &S,
        );
        assert_eq!(hosts(&t4)[0], Some(("d:1".into(), SlotState::Ready)));
        // A draining server that comes back is ready again in the same slot.
        let t5 = assign(&t1, &want(&[("a", 1, 1), ("b", 1, 1)]), 20, &S);
        assert_eq!(t5, t0);
    }

    #[test]
    fn slots_grow_by_blocks_and_shrink_only_when_two_blocks_are_spare() {
        let many: Vec<(String, u16, u16)> = (0..9).map(|i| (format!("h{i}"), 1, 1)).collect();
        let w = |n: usize| BTreeMap::from([("be".to_string(), many[..n].to_vec())]);
        let s = SlotSettings {
            block: 4,
            drain_ms: 0,
        };
        let t4 = assign(&Table::default(), &w(4), 0, &s);
        assert_eq!(t4.backends["be"].len(), 4);
        let t5 = assign(&t4, &w(5), 0, &s);
        assert_eq!(t5.backends["be"].len(), 8);
        assert_eq!(assign(&t5, &w(4), 0, &s).backends["be"].len(), 8);
        let t9 = assign(&t5, &w(9), 0, &s);
        assert_eq!(t9.backends["be"].len(), 12);
        assert_eq!(assign(&t9, &w(5), 0, &s).backends["be"].len(), 12);
        assert_eq!(assign(&t9, &w(4), 0, &s).backends["be"].len(), 4);
        assert_eq!(assign(&t9, &w(0), 0, &s).backends["be"].len(), 4);
    }

    #[test]
    fn commands_set_address_and_weight_before_making_a_slot_ready() {
        let t0 = assign(&Table::default(), &want(&[("10.0.0.1", 80, 1)]), 0, &S);
        let t1 = assign(
            &t0,
            &want(&[("10.0.0.1", 80, 5), ("10.0.0.2", 81, 1)]),
            0,
            &S,
        );
        let lines: Vec<String> = commands(&t0, &t1).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "set server be/slot1 weight 5",
                "set server be/slot2 addr 10.0.0.2 port 81",
                "set server be/slot2 weight 1",
                "set server be/slot2 state ready",
            ]
        );
        let t2 = assign(&t1, &want(&[("10.0.0.2", 81, 1)]), 0, &S);
        let lines: Vec<String> = commands(&t1, &t2).iter().map(|c| c.to_string()).collect();
        assert_eq!(lines, ["set server be/slot1 state drain"]);
        let t3 = assign(&t2, &want(&[("10.0.0.2", 81, 1)]), 2_000, &S);
        let lines: Vec<String> = commands(&t2, &t3).iter().map(|c| c.to_string()).collect();
        assert_eq!(lines, ["set server be/slot1 state maint"]);
    }

    /// Applies `commands` to `table` as HAProxy would (a free slot in maintenance keeps the
    /// address and weight it was last given).
    fn run(table: &Table, cmds: &[Command]) -> BTreeMap<(String, usize), (SlotState, String, u16)> {
        let mut servers: BTreeMap<(String, usize), (SlotState, String, u16)> = table
            .backends
            .iter()
            .flat_map(|(b, slots)| {
                slots.iter().enumerate().map(move |(i, o)| {
                    let (a, w) = o.as_ref().map_or(("?".to_string(), 0), |o| {
                        (format!("{}:{}", o.host, o.port), o.weight)
                    });
                    ((b.clone(), i), (SlotState::of(o), a, w))
                })
            })
            .collect();
        for c in cmds {
            let s = servers
                .get_mut(&(c.backend.clone(), c.slot))
                .expect("slot exists");
            match &c.op {
                Op::Addr(h, p) => s.1 = format!("{h}:{p}"),
                Op::Weight(w) => s.2 = *w,
                Op::State(st) => s.0 = *st,
            }
        }
        servers
    }

    fn wanted_strategy() -> impl Strategy<Value = BTreeMap<String, Vec<Wanted>>> {
        proptest::collection::btree_map(
            prop_oneof![Just("a".to_string()), Just("b".to_string())],
            proptest::collection::vec((0u8..12, 1u16..3, 0u16..3), 0..12),
            0..3,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(b, v)| {
                    let v = v
                        .into_iter()
                        .map(|(h, p, w)| (format!("10.0.0.{h}"), p, w))
                        .collect();
                    (b, v)
                })
                .collect()
        })
    }

    proptest! {
        /// Over any sequence of views and clock steps: every wanted server is in exactly one
        /// ready slot with its weight; a server keeps its slot while it lives and while it
        /// drains; a leaver drains for the drain time, then its slot is free; slot counts are
        /// multiples of the block; and the commands between two tables of equal shape turn one
        /// into the other.
        #[test]
        fn servers_keep_their_slots_and_commands_reach_the_next_table(
            steps in proptest::collection::vec((wanted_strategy(), 0u64..800), 1..25)
        ) {
            let mut table = Table::default();
            let mut now = 0u64;
            for (wanted, dt) in steps {
                now += dt;
                let next = assign(&table, &wanted, now, &S);
                for (b, slots) in &next.backends {
                    prop_assert!(!slots.is_empty() && slots.len() % S.block == 0);
                    let servers = &wanted[b];
                    for (h, p, _) in servers {
                        let n = slots.iter().filter(|o| o.as_ref().is_some_and(|o| o.same_server(h, *p))).count();
                        prop_assert_eq!(n, 1, "{}:{} in {} slots", h, p, n);
                    }
                    for (i, o) in slots.iter().enumerate() {
                        let Some(o) = o else { continue };
                        let first = servers.iter().find(|(h, p, _)| o.same_server(h, *p));
                        match first {
                            Some((_, _, w)) => {
                                prop_assert_eq!(o.draining_until, None);
                                prop_assert_eq!(o.weight, *w);
                            }
                            None => prop_assert!(o.draining_until.is_some_and(|u| u > now)),
                        }
                        // Whoever held this slot before and is still here holds it still.
                        if let Some(Some(before)) = table.backends.get(b).and_then(|s| s.get(i)) {
                            let stays = servers.iter().any(|(h, p, _)| before.same_server(h, *p))
                                || before.draining_until.is_some_and(|u| u > now);
                            if stays {
                                prop_assert!(o.same_server(&before.host, before.port));
                            }
                        }
                    }
                    // A leaver that was ready drains until now + drain.
                    if let Some(old) = table.backends.get(b) {
                        for o in old.iter().flatten() {
                            let gone = !servers.iter().any(|(h, p, _)| o.same_server(h, *p));
                            if gone && o.draining_until.is_none() {
                                let found = slots.iter().flatten().find(|x| x.same_server(&o.host, o.port));
                                prop_assert_eq!(found.and_then(|x| x.draining_until), Some(now + S.drain_ms));
                            }
                        }
                    }
                }
                let same_shape: Vec<&String> = next
                    .backends
                    .iter()
                    .filter(|(b, s)| table.backends.get(*b).is_some_and(|o| o.len() == s.len()))
                    .map(|(b, _)| b)
                    .collect();
                let after = run(&table, &commands(&table, &next));
                let expected = run(&next, &[]);
                for ((b, i), (state, addr, weight)) in &expected {
                    if !same_shape.contains(&b) {
                        continue;
                    }
                    let got = &after[&(b.clone(), *i)];
                    prop_assert_eq!(got.0, *state);
                    if *state != SlotState::Maint {
                        prop_assert_eq!((&got.1, got.2), (addr, *weight));
                    }
                }
                table = next;
            }
        }
    }
}
