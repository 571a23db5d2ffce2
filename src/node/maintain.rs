//! Maintenance: applies [`registry::gc::plan`] to this node's keyspace and registry, publishes
//! the node's clock, and keeps the local snapshot current.

use std::time::Duration;

use tracing::{debug, warn};

use std::sync::atomic::Ordering;

use super::{clock, Inner, Local, KEY_CLOCK};
use crate::registry::{self, gc, Record};
use crate::snapshot;

/// How often a node garbage-collects, adopts entities, snapshots and publishes its clock.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);
/// Longest time the snapshot goes without being rewritten: after a crash it holds the leases of
/// at most this long ago, and its age says when the node last ran (see `tombstone_ttl`).
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(10);

/// Every this many rounds, garbage collection visits every lease (`gc::plan`) instead of only
/// those that can be in the plan (`gc::plan_for`): a safety net that costs one pass a minute.
const FULL_PLAN_EVERY: u64 = 60;

/// One maintenance round.
pub(super) async fn run(inner: &Inner) {
    let cfg = gc::GcConfig {
        lease_grace_ms: inner.config.lease_gc_grace.as_millis() as u64,
        tombstone_ttl_ms: inner.config.tombstone_ttl.as_millis() as u64,
    };
    let mut cc = inner.chitchat.lock().await;
    let mut local = inner.local.lock().expect("local lock");
    // The clock is read once the locks are held: a peer's offset estimate must not include the
    // time this node waited for them (under a write burst, that was seconds).
    let now = inner.hlc.now_ms();
    let round = inner.counters.rounds.fetch_add(1, Ordering::Relaxed) + 1;
    let state = cc.self_node_state();
    write_due(state, &mut local, now);
    let Local {
        registry,
        own,
        outranked,
        own_lease_set_version,
        ..
    } = &mut *local;
    let plan = if round % FULL_PLAN_EVERY == 0 {
        gc::plan(own, registry, now, cfg)
    } else {
        gc::plan_for(own, registry, now, cfg, outranked)
    };
    outranked.clear();
    if !plan.delete.is_empty() {
        *own_lease_set_version += 1;
    }
    for key in &plan.delete {
        state.delete(key);
    }
    for (key, value, _) in &plan.adopt {
        state.set(key.clone(), value.to_string());
    }
    plan.apply(registry, own);
    let warn_ms = inner.config.clock_offset_warn.as_millis() as i64;
    let bounds = inner.clocks.lock().expect("clock lock").published(warn_ms);
    state.set(KEY_CLOCK, clock::encode(now, round, &bounds));
    drop(local);
    drop(cc);
    inner.push.notify_one();
    if !plan.is_empty() {
        debug!(
            deleted = plan.delete.len(),
            adopted = plan.adopt.len(),
            forgot_leases = plan.forget_leases.len(),
            forgot_entities = plan.forget_entities.len(),
            "maintenance"
        );
    }
}

/// Writes the deferred renewals due by `now_ms` into the keyspace and the registry, unless a
/// newer record of the lease arrived meanwhile (then the deferred one could never win).
fn write_due(state: &mut chitchat::NodeState, local: &mut Local, now_ms: u64) {
    for (key, record) in local.deferred.take_due(now_ms) {
        let Record::Lease(k, _) = &record else {
            continue;
        };
        let (_, value) = registry::encode(&record);
        let current = local.registry.leases.get(k).map(|s| &s.reg.marker);
        if current.is_none() || current != local.own.get(&key) {
            continue;
        }
        let marker = super::write::marker_of(&record, &value);
        local.registry.insert(record, &value);
        state.set(key.clone(), value);
        local.own.insert(key, marker);
    }
}

/// Writes every deferred renewal due by `now_ms` now (at stop: all of them) and gossips them.
pub(super) async fn flush_deferred(inner: &Inner, now_ms: u64) {
    let mut cc = inner.chitchat.lock().await;
    let mut local = inner.local.lock().expect("local lock");
    write_due(cc.self_node_state(), &mut local, now_ms);
    drop(local);
    drop(cc);
    inner.push.notify_one();
}

/// What the last snapshot held, so an unchanged state is not rewritten.
#[derive(Default)]
pub(super) struct SnapshotState {
    digest: Option<u64>,
    saved_at: Option<tokio::time::Instant>,
}

/// A snapshot due to be written, and what it holds (for `SnapshotState::written`).
pub(super) struct DueSnapshot {
    pub dir: std::path::PathBuf,
    pub snapshot: snapshot::Snapshot,
    digest: u64,
}

impl SnapshotState {
    pub fn written(&mut self, due: &DueSnapshot) {
        self.digest = Some(due.digest);
        self.saved_at = Some(tokio::time::Instant::now());
    }
}

/// The snapshot to write, if one is due: the entity records and this node's live leases, when
/// they changed (a lease of ours coming or going, an entity written) or the last one is older
/// than `SNAPSHOT_REFRESH` (so deadlines and its age stay roughly current). Renewals alone
/// change nothing. Deciding costs a pass over the entities; records are encoded only when due.
pub(super) fn snapshot_due(inner: &Inner, last: &SnapshotState) -> Option<DueSnapshot> {
    let dir = inner.config.data_dir.as_ref()?;
    let now = inner.hlc.now_ms();
    let local = inner.local.lock().expect("local lock");
    let r = &local.registry;
    let mut digest = 0u64;
    let mut fold = |k: &str, v: &str| {
        digest =
            digest.rotate_left(7) ^ registry::digest(k.as_bytes()) ^ registry::digest(v.as_bytes());
    };
    for (n, slot) in &r.backends {
        fold(n, &slot.encoded);
    }
    for (n, slot) in &r.frontends {
        fold(n, &slot.encoded);
    }
    // The set of our lease keys (not their deadlines) decides whether this is a change: the
    // write path and maintenance count its changes.
    fold(&local.own_lease_set_version.to_string(), "");
    let changed = last.digest != Some(digest);
    let stale = last
        .saved_at
        .is_none_or(|t| t.elapsed() >= SNAPSHOT_REFRESH);
    if !changed && !stale {
        return None;
    }
    let records = registry::restore::snapshot_records(r, &local.own, now);
    Some(DueSnapshot {
        dir: dir.clone(),
        snapshot: snapshot::Snapshot {
            saved_at_ms: Some(now),
            records,
        },
        digest,
    })
}

/// Writes a due snapshot (blocking: call it off the async threads), logging the outcome.
pub(super) fn write_snapshot(due: &DueSnapshot) -> bool {
    match snapshot::save(&due.dir, &due.snapshot) {
        Ok(()) => {
            debug!(records = due.snapshot.records.len(), "snapshot saved");
            true
        }
        Err(e) => {
            warn!(error = %e, "could not save snapshot");
            false
        }
    }
}
