//! Peers' clock offsets, estimated from the clock key every node rewrites each maintenance round.
//!
//! A sample is (the peer's clock as it wrote the key) - (our clock when the key arrived): the
//! offset minus the delay between writing and receipt, and that delay is never negative. So the
//! greatest of the recent samples is the best estimate, and a sample that queued (behind a write
//! burst, a busy peer, a late gossip round) only ever lowers the estimate for as long as it is
//! among the recent ones: it cannot raise it. The peer reads its clock after taking the locks that
//! the write needs (see `maintain`), so time spent waiting for them is not counted either.

use std::collections::{HashMap, VecDeque};

/// Clock samples kept per peer.
const CLOCK_SAMPLES: usize = 8;

/// Offsets of peers' clocks (ms, peer - self), by node id.
#[derive(Debug, Default)]
pub(super) struct Offsets {
    samples: HashMap<String, VecDeque<i64>>,
}

/// An estimate that just crossed the warning bound.
pub(super) struct Crossed {
    pub offset_ms: i64,
}

impl Offsets {
    /// Adds a sample; says when the estimate has just gone past `warn_ms`.
    pub fn record(&mut self, node: &str, sample: i64, warn_ms: i64) -> Option<Crossed> {
        let samples = self.samples.entry(node.to_string()).or_default();
        let before = samples.iter().copied().max();
        samples.push_back(sample);
        if samples.len() > CLOCK_SAMPLES {
            samples.pop_front();
        }
        let after = samples.iter().copied().max().unwrap_or(sample);
        let was_bad = before.is_some_and(|b| b.abs() > warn_ms);
        (after.abs() > warn_ms && !was_bad && samples.len() >= 2)
            .then_some(Crossed { offset_ms: after })
    }

    /// The current estimate for a peer.
    pub fn estimate(&self, node: &str) -> Option<i64> {
        self.samples.get(node).and_then(|s| s.iter().copied().max())
    }

    /// Forgets peers that are no longer members, so the map stays as large as the membership.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.samples.retain(|node, _| keep(node));
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_that_queued_does_not_move_the_estimate_away_from_the_true_offset() {
        let mut o = Offsets::default();
        // True offset +50 ms; receipt delays of 1-3 ms, then one of 1.4 s behind a burst.
        for delay in [1, 3, 2, 1_400, 2] {
            o.record("b", 50 - delay, 200);
        }
        assert_eq!(o.estimate("b"), Some(49));
    }

    #[test]
    fn departed_peers_are_forgotten() {
        let mut o = Offsets::default();
        o.record("b", 1, 200);
        o.record("c", 1, 200);
        o.retain(|n| n == "c");
        assert_eq!(o.len(), 1);
        assert_eq!(o.estimate("b"), None);
    }
}
