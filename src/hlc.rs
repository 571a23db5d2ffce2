//! Time for the rest of bender: an injectable wall clock and a hybrid logical clock (HLC) whose
//! stamps order every write in the cluster.
//!
//! A stamp is `(wall_ms, logical, node)`. It never goes backwards on one node, it moves past every
//! stamp the node has observed from others, and the node id breaks ties, so two writes anywhere
//! never share a stamp.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// The node's hybrid logical clock.
pub struct Hlc {
    node: String,
    clock: Arc<dyn Clock>,
    last: Mutex<(u64, u32)>,
}

impl Hlc {
    pub fn new(node: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Hlc {
            node: node.into(),
            clock,
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

    /// Moves the clock past a stamp seen from another node, so later local writes order after it.
    pub fn observe(&self, stamp: &Stamp) {
        let mut last = self.last.lock().expect("hlc lock is never poisoned");
        if (stamp.0, stamp.1) > *last {
            *last = (stamp.0, stamp.1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_even_when_the_clock_stands_still_or_goes_back() {
        let clock = ManualClock::new(1_000);
        let hlc = Hlc::new("a", Arc::new(clock.clone()));
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
        let hlc = Hlc::new("a", Arc::new(clock));
        let remote = Stamp(5_000, 7, "b".into());
        hlc.observe(&remote);
        assert!(hlc.stamp() > remote);
    }
}
