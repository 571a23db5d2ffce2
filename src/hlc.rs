//! Time for the rest of bender: an injectable wall clock and a hybrid logical clock (HLC) whose
//! stamps order every write in the cluster.
//!
//! A stamp is `(wall_ms, logical, node)`. It never goes backwards on one node, it moves past every
//! stamp the node has observed from others, and the node id breaks ties, so two writes anywhere
//! never share a stamp.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Wall-clock time in milliseconds since the Unix epoch. Injected so tests control time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The real system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        ManualClock(Arc::new(ms.into()))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A wall clock that follows tokio's clock (which a test may pause and advance), from a given
/// start: with `#[tokio::test(start_paused = true)]` every node's wall clock, timers and
/// chitchat's failure detector move together in virtual time, so a cluster runs for hours in
/// milliseconds. An offset makes one node's clock run ahead or behind.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start_ms: u64,
    origin: tokio::time::Instant,
    offset_ms: i64,
}

impl TokioClock {
    pub fn new(start_ms: u64) -> Self {
        TokioClock {
            start_ms,
            origin: tokio::time::Instant::now(),
            offset_ms: 0,
        }
    }

    /// The same clock, `offset_ms` ahead (or behind, if negative).
    pub fn skewed(&self, offset_ms: i64) -> Self {
        TokioClock {
            offset_ms,
            ..self.clone()
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        let elapsed = self.origin.elapsed().as_millis() as i64;
        (self.start_ms as i64 + elapsed + self.offset_ms).max(0) as u64
    }
}

/// A hybrid logical clock stamp. Serialized as `[wall_ms, logical, "node"]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp(pub u64, pub u32, pub String);

impl Stamp {
    pub fn wall_ms(&self) -> u64 {
        self.0
    }
    pub fn node(&self) -> &str {
        &self.2
    }
}

/// A stamp further ahead of the local clock than the drift bound allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stamp {ahead_ms} ms ahead of this node's clock (max_clock_drift is {max_ms} ms)")]
pub struct TooFarAhead {
    pub ahead_ms: u64,
    pub max_ms: u64,
}

/// Whether a stamp is acceptable at local time `now_ms`: not more than `max_drift_ms` ahead.
/// One peer with a clock set to 2100 must not drag every node's stamps (and with them tombstone
/// expiry) into the future.
pub fn check_drift(stamp: &Stamp, now_ms: u64, max_drift_ms: u64) -> Result<(), TooFarAhead> {
    let ahead_ms = stamp.0.saturating_sub(now_ms);
    if ahead_ms > max_drift_ms {
        return Err(TooFarAhead {
            ahead_ms,
            max_ms: max_drift_ms,
        });
    }
    Ok(())
}

/// The node's hybrid logical clock.
pub struct Hlc {
    node: String,
    clock: Arc<dyn Clock>,
    max_drift_ms: u64,
    last: Mutex<(u64, u32)>,
}

impl Hlc {
    /// A clock for `node` that refuses to observe stamps more than `max_drift` ahead.
    pub fn new(node: impl Into<String>, clock: Arc<dyn Clock>, max_drift: Duration) -> Self {
        Hlc {
            node: node.into(),
            clock,
            max_drift_ms: max_drift.as_millis() as u64,
            last: Mutex::new((0, 0)),
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Wall-clock now, in ms.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A fresh stamp, greater than every stamp this node issued or observed.
    pub fn stamp(&self) -> Stamp {
        let now = self.clock.now_ms();
        let mut last = self.last.lock().expect("hlc lock is never poisoned");
        if now > last.0 {
            *last = (now, 0);
        } else {
            last.1 = last.1.saturating_add(1);
        }
        Stamp(last.0, last.1, self.node.clone())
    }

    /// Moves the clock past a stamp seen from another node, so later local writes order after
    /// it; refuses (and does not move for) a stamp further ahead than the drift bound.
    pub fn observe(&self, stamp: &Stamp) -> Result<(), TooFarAhead> {
        check_drift(stamp, self.clock.now_ms(), self.max_drift_ms)?;
        let mut last = self.last.lock().expect("hlc lock is never poisoned");
        if (stamp.0, stamp.1) > *last {
            *last = (stamp.0, stamp.1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRIFT: Duration = Duration::from_secs(60);

    #[test]
    fn stamps_increase_even_when_the_clock_stands_still_or_goes_back() {
        let clock = ManualClock::new(1_000);
        let hlc = Hlc::new("a", Arc::new(clock.clone()), DRIFT);
        let s1 = hlc.stamp();
        let s2 = hlc.stamp();
        assert!(s2 > s1);
        clock.set(500);
        let s3 = hlc.stamp();
        assert!(s3 > s2);
        clock.set(2_000);
        let s4 = hlc.stamp();
        assert_eq!(s4, Stamp(2_000, 0, "a".into()));
    }

    #[test]
    fn observing_a_later_stamp_orders_local_writes_after_it() {
        let clock = ManualClock::new(1_000);
        let hlc = Hlc::new("a", Arc::new(clock), DRIFT);
        let remote = Stamp(5_000, 7, "b".into());
        hlc.observe(&remote).unwrap();
        assert!(hlc.stamp() > remote);
    }

    #[test]
    fn a_stamp_further_ahead_than_the_drift_bound_is_refused_and_not_observed() {
        let clock = ManualClock::new(1_000);
        let hlc = Hlc::new("a", Arc::new(clock), DRIFT);
        let year_2100 = Stamp(4_102_444_800_000, 0, "b".into());
        let err = hlc.observe(&year_2100).unwrap_err();
        assert_eq!(err.max_ms, 60_000);
        assert!(hlc.stamp().0 < 100_000, "the clock was dragged ahead");
        // Just inside the bound is fine.
        hlc.observe(&Stamp(61_000, 0, "b".into())).unwrap();
        assert!(hlc.stamp() > Stamp(61_000, 0, "b".into()));
    }
}
