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
    value: String,
    due_ms: u64,
}

#[derive(Default)]
pub(super) struct Deferred {
    by_key: BTreeMap<String, Pending>,
    due: BTreeSet<(u64, String)>,
}

impl Deferred {
    /// Holds `record` (encoded as `value`) for `key` until `due_ms`, in place of any earlier
    /// one for that key.
    pub fn put(&mut self, key: String, record: Record, value: String, due_ms: u64) {
        self.remove(&key);
        self.due.insert((due_ms, key.clone()));
        self.by_key.insert(
            key,
            Pending {
                record,
                value,
                due_ms,
            },
        );
    }

    /// Forgets what waits for `key` (a newer write of it is being made).
    pub fn remove(&mut self, key: &str) {
        if let Some(p) = self.by_key.remove(key) {
            self.due.remove(&(p.due_ms, key.to_string()));
        }
    }

    /// What is due by `now_ms` (everything, with `u64::MAX`), taken out: key, record, value.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<(String, Record, String)> {
        let mut out = Vec::new();
        while let Some((due, _)) = self.due.first() {
            if *due > now_ms {
                break;
            }
            let (_, key) = self.due.pop_first().expect("a first entry");
            if let Some(p) = self.by_key.remove(&key) {
                out.push((key, p.record, p.value));
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }
}
