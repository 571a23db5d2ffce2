//! What a starting node takes back from its snapshot, decided as a pure function.
//!
//! - Live leases and entity versions go back into its keyspace with their original stamps.
//! - Every renewal of the snapshot, live or not, is handed to the isolation guard, which serves
//!   it until its renewals arrive (a whole-cluster restart does not empty the backends).
//! - A snapshot older than `tombstone_ttl` may hold entities that were deleted while the node was
//!   away, and whose tombstones every peer has since forgotten: restoring them would resurrect
//!   them. Such entities are quarantined (kept out of the keyspace) until [`decide_quarantine`]
//!   says: once the node has caught up with every peer, they are dropped if any peer kept
//!   running meanwhile (its state decides), and restored if every peer is itself recovering
//!   from an old snapshot (the whole cluster was down: nobody forgot anything). With no peer
//!   heard of at all by the end of the warm-up, they are restored (nobody to ask); with peers
//!   known but not reachable, they wait.
//! - Records that do not decode, fail the checks client input gets, or carry a stamp further
//!   ahead than `max_clock_drift` are skipped.

use super::{decode_checked, LiveRegistration, Record};
use crate::hlc::{check_drift, Stamp};

/// The bounds restoring works with, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreConfig {
    pub tombstone_ttl_ms: u64,
    pub max_clock_drift_ms: u64,
    /// Whether the node has peers that can say what happened while it was away.
    pub has_peers: bool,
}

/// What to do with a snapshot.
#[derive(Debug, Default)]
pub struct Restored {
    /// Records to put back into the keyspace (key, value, decoded record).
    pub records: Vec<(String, String, Record)>,
    /// Entity records held back (see the module doc).
    pub quarantined: Vec<(String, String)>,
    /// Renewals for the isolation guard.
    pub held: Vec<LiveRegistration>,
    /// Records skipped, with why.
    pub skipped: Vec<(String, String)>,
    /// The greatest stamp restored (the HLC observes it).
    pub max_stamp: Option<Stamp>,
}

/// What a node's snapshot holds: every entity version (tombstones too, as written) and the
/// live leases of its own keyspace (`own`: gossip key to marker).
pub fn snapshot_records(
    registry: &super::Registry,
    own: &std::collections::BTreeMap<String, super::Marker>,
    now_ms: u64,
) -> Vec<(String, String)> {
    let mut records: Vec<(String, String)> = Vec::new();
    for (n, slot) in &registry.backends {
        records.push((super::backend_key(n), slot.encoded.to_string()));
    }
    for (n, slot) in &registry.frontends {
        records.push((super::frontend_key(n), slot.encoded.to_string()));
    }
    for (k, slot) in &registry.leases {
        if !slot.reg.val.is_live(now_ms) {
            continue;
        }
        let (key, value) = super::encode_lease(k, &slot.reg.val);
        if own.contains_key(&key) {
            records.push((key, value));
        }
    }
    records
}

/// What to do with quarantined entities now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quarantine {
    Wait,
    Restore,
    Drop,
}

/// Decides the quarantine (see the module doc), `waited` after the start, with `peers` the
/// members not known dead.
pub fn decide_quarantine(
    peers: &[super::ready::Peer],
    waited: std::time::Duration,
    warmup: std::time::Duration,
) -> Quarantine {
    if !peers.is_empty() && peers.iter().all(|p| p.caught_up) {
        if peers.iter().all(|p| p.recovering) {
            return Quarantine::Restore;
        }
        return Quarantine::Drop;
    }
    if peers.is_empty() && waited >= warmup {
        return Quarantine::Restore;
    }
    Quarantine::Wait
}

/// Decides what a node restores from a snapshot written at `saved_at_ms` (if known), at `now_ms`.
pub fn plan(
    saved_at_ms: Option<u64>,
    records: Vec<(String, String)>,
    now_ms: u64,
    cfg: RestoreConfig,
) -> Restored {
    let too_old = cfg.has_peers
        && saved_at_ms.is_some_and(|t| now_ms.saturating_sub(t) > cfg.tombstone_ttl_ms);
    let mut out = Restored::default();
    for (k, v) in records {
        let record = match decode_checked(&k, &v) {
            Ok(r) => r,
            Err(e) => {
                out.skipped.push((k, e.to_string()));
                continue;
            }
        };
        if let Err(e) = check_drift(record.stamp(), now_ms, cfg.max_clock_drift_ms) {
            out.skipped.push((k, e.to_string()));
            continue;
        }
        if let Record::Lease(key, lease) = &record {
            if !lease.is_deregistration() {
                out.held.push(lease.live_registration(key));
            }
            if !lease.is_live(now_ms) {
                continue;
            }
        } else if too_old {
            out.quarantined.push((k, v));
            continue;
        }
        if out.max_stamp.as_ref().is_none_or(|m| record.stamp() > m) {
            out.max_stamp = Some(record.stamp().clone());
        }
        out.records.push((k, v, record));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: RestoreConfig = RestoreConfig {
        tombstone_ttl_ms: 10_000,
        max_clock_drift_ms: 1_000,
        has_peers: true,
    };

    fn records() -> Vec<(String, String)> {
        vec![
            (
                "b:web".into(),
                r#"{"s":[1000,0,"n"],"v":{"name":"web","app":"web","version":"1"}}"#.into(),
            ),
            (
                "r:web/1/10.0.0.1/80".into(),
                r#"{"s":[1000,0,"n"],"d":6000,"t":5000}"#.into(),
            ),
            (
                "r:web/1/10.0.0.1/81".into(),
                r#"{"s":[1000,0,"n"],"d":1000,"t":0}"#.into(),
            ),
            (
                "b:future".into(),
                r#"{"s":[99000,0,"n"],"v":{"name":"future","app":"web","version":"1"}}"#.into(),
            ),
        ]
    }

    #[test]
    fn a_recent_snapshot_comes_back_whole_but_for_expired_leases_and_future_stamps() {
        let r = plan(Some(1_000), records(), 2_000, CFG);
        let keys: Vec<&str> = r.records.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys, ["b:web", "r:web/1/10.0.0.1/80"]);
        assert!(r.quarantined.is_empty());
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        // The deregistration is never served by the guard.
        assert_eq!(r.held.len(), 1);
    }

    fn peer(caught_up: bool, recovering: bool) -> super::super::ready::Peer {
        super::super::ready::Peer {
            node: "p".into(),
            caught_up,
            recovering,
        }
    }

    #[test]
    fn quarantined_entities_follow_peers_that_kept_running_and_come_back_when_all_were_down() {
        use std::time::Duration;
        let (early, late) = (Duration::from_secs(1), Duration::from_secs(60));
        let warmup = Duration::from_secs(5);
        // A peer that kept running decides: what it lacks was deleted.
        let ran = [peer(true, false), peer(true, true)];
        assert_eq!(decide_quarantine(&ran, early, warmup), Quarantine::Drop);
        // Everyone is back from an old snapshot: nobody forgot a deletion meanwhile.
        let all_down = [peer(true, true), peer(true, true)];
        assert_eq!(
            decide_quarantine(&all_down, early, warmup),
            Quarantine::Restore
        );
        // Peers known but not caught up: wait, even past the warm-up.
        let unreachable = [peer(false, false)];
        assert_eq!(
            decide_quarantine(&unreachable, late, warmup),
            Quarantine::Wait
        );
        // No one heard of by the end of the warm-up: restore.
        assert_eq!(decide_quarantine(&[], early, warmup), Quarantine::Wait);
        assert_eq!(decide_quarantine(&[], late, warmup), Quarantine::Restore);
    }

    #[test]
    fn entities_of_a_snapshot_older_than_the_tombstone_ttl_are_quarantined() {
        let r = plan(Some(1_000), records(), 20_000, CFG);
        assert!(r.records.is_empty(), "{:?}", r.records);
        assert_eq!(r.quarantined.len(), 1);
        // Alone, the node has no one to ask: it restores them.
        let alone = RestoreConfig {
            has_peers: false,
            ..CFG
        };
        let r = plan(Some(1_000), records(), 20_000, alone);
        assert_eq!(r.records.len(), 1);
    }
}
