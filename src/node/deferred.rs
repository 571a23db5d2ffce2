//! Renewals that wait before they are gossiped (see [`crate::registry::renew`]): the latest
//! one per lease, and when each must be written at the latest. Bounded by the leases in this
//! node's keyspace (one entry per lease key).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::registry::Record;

/// How long before it is due a deferred renewal must be written: covers the maintenance round
/// that writes it (every second) and the gossip that carries it.
pub(super) const MARGIN: Duration = Duration::from_secs(2);

struct Pending {
    record: Record,
    due_ms: u64,
}

#[derive(Default)]
pub(super) struct Deferred {
    by_key: BTreeMap<String, Pending>,
    due: BTreeSet<(u64, String)>,
}

impl Deferred {
    /// Holds `record` for `key` until `due_ms`, in place of any earlier one for that key.
    /// (Every renewal of a key until it is written has the same due time, so the common case
    /// only replaces the record.)
    pub fn put(&mut self, key: String, record: Record, due_ms: u64) {
        if let Some(p) = self.by_key.get_mut(&key) {
            if p.due_ms == due_ms {
                p.record = record;
                return;
            }
        }
        self.remove(&key);
        self.due.insert((due_ms, key.clone()));
        self.by_key.insert(key, Pending { record, due_ms });
    }

    /// Forgets what waits for `key` (a newer write of it is being made).
    pub fn remove(&mut self, key: &str) {
        if let Some(p) = self.by_key.remove(key) {
            self.due.remove(&(p.due_ms, key.to_string()));
        }
    }

    /// What is due by `now_ms` (everything, with `u64::MAX`), taken out: key, record.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<(String, Record)> {
        let mut out = Vec::new();
        while let Some((due, _)) = self.due.first() {
            if *due > now_ms {
                break;
            }
            let (_, key) = self.due.pop_first().expect("a first entry");
            if let Some(p) = self.by_key.remove(&key) {
                out.push((key, p.record));
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Stamp;
    use crate::model::RegKey;
    use crate::registry::Lease;

    fn renewal(at: u64) -> Record {
        Record::Lease(
            RegKey::new("web", "1", "10.0.0.1", 80).unwrap(),
            Lease {
                stamp: Stamp(at, 0, "a".into()),
                deadline_ms: at + 10_000,
                ttl_ms: 10_000,
                meta: Default::default(),
            },
        )
    }

    #[test]
    fn only_the_latest_renewal_of_a_key_waits_and_it_comes_out_when_due() {
        let mut d = Deferred::default();
        d.put("k".into(), renewal(1), 5_000);
        d.put("k".into(), renewal(2), 5_000);
        d.put("j".into(), renewal(3), 9_000);
        assert_eq!(d.len(), 2);
        assert!(d.take_due(4_999).is_empty());
        assert_eq!(d.take_due(5_000), vec![("k".to_string(), renewal(2))]);
        // A later write of the key drops what waits; a new due time re-files it.
        d.put("k".into(), renewal(4), 7_000);
        d.remove("k");
        d.put("j".into(), renewal(5), 8_000);
        assert_eq!(d.take_due(u64::MAX), vec![("j".to_string(), renewal(5))]);
        assert_eq!(d.len(), 0);
    }
}
