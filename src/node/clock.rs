//! Peers' clock offsets, bounded from both sides by the clock keys nodes exchange.
//!
//! A sample is (the peer's clock as it wrote its clock key) - (our clock when the key arrived):
//! the offset (peer - us) minus the delay between writing and receipt, a delay that is never
//! negative, so the greatest recent sample is a *lower* bound of the offset. Under a write burst
//! that delay is large: a node's keys arrive in version order, and its clock key waits behind
//! every key written before it (measured: -250 ms between two nodes on one host clock, -1.4 s on
//! real processes). So every node also publishes, in its own clock key, its lower bound for each
//! peer; the peer's bound for us, negated, is an *upper* bound of our offset for it. The true
//! offset lies between the two. The estimate is the offset in that interval closest to zero (the
//! least the clocks can be apart, given what was seen: delays on the two paths are far from
//! symmetric under a burst, so the middle would be no better), and a warning needs the whole
//! interval beyond the bound, which delays on either path cannot produce. A peer that publishes
//! no bounds (an older version) is judged on the lower bound alone, as before.

use std::collections::{HashMap, VecDeque};

/// Clock samples kept per peer.
const CLOCK_SAMPLES: usize = 8;
/// Bounds published in one clock key, at most (the key stays small in large clusters; peers
/// that doubt our clock come first).
pub(super) const MAX_PUBLISHED: usize = 64;

/// Offsets of peers' clocks (ms, peer - self), by node id.
#[derive(Debug, Default)]
pub(super) struct Offsets {
    samples: HashMap<String, VecDeque<i64>>,
    /// Each peer's published lower bound of (us - peer).
    theirs: HashMap<String, i64>,
    /// Peers that run a version publishing bounds (whether or not one for us has come yet).
    publishing: std::collections::HashSet<String>,
    /// Peers whose offset is currently beyond the warning bound.
    beyond: HashMap<String, i64>,
}

/// An estimate that just went past the warning bound.
pub(super) struct Crossed {
    pub offset_ms: i64,
    /// Whether both bounds say so (otherwise only the lower bound was available).
    pub bounded: bool,
}

impl Offsets {
    /// Adds a sample and the peer's published bound for us (if it publishes one; `publishing`
    /// says whether its version publishes bounds at all); says when the offset has just gone
    /// past `warn_ms`.
    pub fn record(
        &mut self,
        node: &str,
        sample: i64,
        their_bound: Option<i64>,
        publishing: bool,
        warn_ms: i64,
    ) -> Option<Crossed> {
        if publishing {
            self.publishing.insert(node.to_string());
        } else {
            self.publishing.remove(node);
        }
        let samples = self.samples.entry(node.to_string()).or_default();
        samples.push_back(sample);
        if samples.len() > CLOCK_SAMPLES {
            samples.pop_front();
        }
        let enough = samples.len() >= 2;
        match their_bound {
            Some(b) => {
                self.theirs.insert(node.to_string(), b);
            }
            None => {
                self.theirs.remove(node);
            }
        }
        let now_beyond = enough.then(|| self.beyond_bound(node, warn_ms)).flatten();
        let was = self.beyond.contains_key(node);
        match now_beyond {
            Some(off) => {
                self.beyond.insert(node.to_string(), off);
                (!was).then(|| Crossed {
                    offset_ms: off,
                    bounded: self.theirs.contains_key(node),
                })
            }
            None => {
                self.beyond.remove(node);
                None
            }
        }
    }

    /// (lower, upper) bounds of a peer's offset; the upper one only if the peer publishes.
    pub fn bounds(&self, node: &str) -> Option<(i64, Option<i64>)> {
        let lower = self.samples.get(node)?.iter().copied().max()?;
        Some((lower, self.theirs.get(node).map(|t| -t)))
    }

    /// The current estimate for a peer: the offset within its bounds closest to zero (the lower
    /// bound alone if the peer publishes none, or if the bounds cross because a clock just
    /// stepped).
    pub fn estimate(&self, node: &str) -> Option<i64> {
        let (lower, upper) = self.bounds(node)?;
        Some(match upper {
            Some(u) if u >= lower => 0i64.clamp(lower, u),
            _ => lower,
        })
    }

    fn beyond_bound(&self, node: &str, warn_ms: i64) -> Option<i64> {
        let (lower, upper) = self.bounds(node)?;
        if upper.is_none() && self.publishing.contains(node) {
            // Its bound for us has not come yet (it has just started, or has just met us): a
            // low lower bound may be delay alone; only a high one proves anything.
            return (lower > warn_ms).then_some(lower);
        }
        self.estimate(node).filter(|e| e.abs() > warn_ms)
    }

    /// What this node publishes: its lower bound of each peer's offset, those peers first whose
    /// own bound says they doubt our clock, at most `MAX_PUBLISHED`.
    pub fn published(&self, warn_ms: i64) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = self
            .samples
            .keys()
            .filter_map(|n| Some((n.clone(), self.bounds(n)?.0)))
            .collect();
        let doubts_us = |n: &str| self.theirs.get(n).is_some_and(|t| t.abs() > warn_ms);
        out.sort_by(|a, b| doubts_us(&b.0).cmp(&doubts_us(&a.0)).then(a.0.cmp(&b.0)));
        out.truncate(MAX_PUBLISHED);
        out
    }

    /// Forgets peers that are no longer members, so the maps stay as large as the membership.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.samples.retain(|node, _| keep(node));
        self.theirs.retain(|node, _| keep(node));
        self.publishing.retain(|node| keep(node));
        self.beyond.retain(|node, _| keep(node));
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }
}

/// The clock key's value: `"<ms> <round>"`, then this node's bounds for its peers
/// (`" n2=-3,n3=5"`). Older versions wrote the ms alone; the first number is all they read.
pub(super) fn encode(now_ms: u64, round: u64, bounds: &[(String, i64)]) -> String {
    let mut out = format!("{now_ms} {round}");
    if !bounds.is_empty() {
        out.push(' ');
        let parts: Vec<String> = bounds.iter().map(|(n, b)| format!("{n}={b}")).collect();
        out.push_str(&parts.join(","));
    }
    out
}

/// A clock key's value as read by node `me`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClockValue {
    pub ms: u64,
    /// The writer's lower bound of (me - writer), if it published one.
    pub bound: Option<i64>,
    /// Whether the writer runs a version that publishes bounds (its value has a round).
    pub publishing: bool,
}

/// The wall clock (ms) in a clock key's value, and the bound it publishes for node `me`.
pub(super) fn decode(value: &str, me: &str) -> Option<ClockValue> {
    let mut parts = value.split(' ');
    let ms = parts.next()?.parse().ok()?;
    let publishing = parts.next().is_some();
    let bound = parts.next().and_then(|list| {
        list.split(',').find_map(|kv| {
            let (n, b) = kv.split_once('=')?;
            (n == me).then(|| b.parse().ok()).flatten()
        })
    });
    Some(ClockValue {
        ms,
        bound,
        publishing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_that_queued_does_not_move_the_lower_bound_away_from_the_true_offset() {
        let mut o = Offsets::default();
        // True offset +50 ms; receipt delays of 1-3 ms, then one of 1.4 s behind a burst.
        for delay in [1, 3, 2, 1_400, 2] {
            o.record("b", 50 - delay, None, false, 200);
        }
        assert_eq!(o.estimate("b"), Some(49));
    }

    #[test]
    fn delays_on_one_path_never_make_a_warning_when_the_peer_publishes_its_bound() {
        let mut o = Offsets::default();
        // Same clock; our copy of the peer's keys is 1.4 s behind (its burst), while our keys
        // reach it at once, so it sees us at about 0.
        let mut warned = 0;
        for _ in 0..8 {
            warned += usize::from(o.record("b", -1_400, Some(-2), true, 200).is_some());
        }
        assert_eq!(warned, 0);
        let (lower, upper) = o.bounds("b").unwrap();
        assert_eq!((lower, upper), (-1_400, Some(2)));
        assert_eq!(o.estimate("b"), Some(0));
    }

    #[test]
    fn a_peer_that_has_not_published_its_bound_for_us_yet_is_not_warned_about_for_a_delay() {
        let mut o = Offsets::default();
        // Its first clock values were written before we met: they arrive late.
        for _ in 0..3 {
            assert!(o.record("b", -900, None, true, 200).is_none());
        }
        // An older version publishes nothing: judged on the lower bound alone, as before.
        assert!(o.record("c", -900, None, false, 200).is_none());
        assert!(o.record("c", -900, None, false, 200).is_some());
    }

    #[test]
    fn a_clock_that_is_really_off_is_warned_about_once() {
        let mut o = Offsets::default();
        // The peer is 5 s ahead: we see +5 s (minus small delays), it sees us at -5 s.
        let warned: usize = (0..8)
            .map(|_| usize::from(o.record("b", 4_998, Some(-5_001), true, 200).is_some()))
            .sum();
        assert_eq!(warned, 1);
        assert!((4_998..=5_001).contains(&o.estimate("b").unwrap()));
    }

    #[test]
    fn the_clock_key_round_trips_and_an_older_value_still_reads() {
        let v = encode(1_000, 7, &[("n1".into(), -3), ("n3".into(), 12)]);
        assert_eq!(v, "1000 7 n1=-3,n3=12");
        let read = |v: &str, me: &str| decode(v, me).map(|c| (c.ms, c.bound, c.publishing));
        assert_eq!(read(&v, "n3"), Some((1_000, Some(12), true)));
        assert_eq!(read(&v, "n9"), Some((1_000, None, true)));
        assert_eq!(read("1000", "n1"), Some((1_000, None, false)));
        assert_eq!(read("1000 7", "n1"), Some((1_000, None, true)));
        assert_eq!(read("x", "n1"), None);
    }

    #[test]
    fn departed_peers_are_forgotten() {
        let mut o = Offsets::default();
        o.record("b", 1, Some(0), true, 200);
        o.record("c", 1, None, false, 200);
        o.retain(|n| n == "c");
        assert_eq!(o.len(), 1);
        assert_eq!(o.estimate("b"), None);
        assert_eq!(o.published(200).len(), 1);
    }
}
