//! Maintenance: applies [`registry::gc::plan`] to this node's keyspace and registry, publishes
//! the node's clock, and keeps the local snapshot current.

use std::time::Duration;

use tracing::{debug, warn};

use std::sync::atomic::Ordering;

use super::{clock, Inner, Local, KEY_CLOCK};
use crate::registry::{self, gc};
use crate::snapshot;

/// How often a node garbage-collects, adopts entities, snapshots and publishes its clock.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);
/// Longest time the snapshot goes without being rewritten: after a crash it holds the leases of
/// at most this long ago, and its age says when the node last ran (see `tombstone_ttl`).
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(10);

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
    let Local { registry, own, .. } = &mut *local;
    let plan = gc::plan(own, registry, now, cfg);
    let state = cc.self_node_state();
    for key in &plan.delete {
        state.delete(key);
    }
    for (key, value, _) in &plan.adopt {
        state.set(key.clone(), value.to_string());
    }
    plan.apply(registry, own);
    let round = inner.counters.rounds.fetch_add(1, Ordering::Relaxed) + 1;
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

/// What the last snapshot held, so an unchanged state is not rewritten.
#[derive(Default)]
pub(super) struct SnapshotState {
    digest: Option<u64>,
    saved_at: Option<tokio::time::Instant>,
}

/// Writes the entity records and this node's live leases to the data dir when they changed (a
/// lease coming or going, an entity written), and at least every `SNAPSHOT_REFRESH`, so that
/// deadlines and its age stay roughly current. Renewals alone do not force a write.
pub(super) fn save_snapshot(inner: &Inner, last: &mut SnapshotState) {
    let Some(dir) = &inner.config.data_dir else {
        return;
    };
    let now = inner.hlc.now_ms();
    let (records, digest) = {
        let local = inner.local.lock().expect("local lock");
        let r = &local.registry;
        let mut out: Vec<(String, String)> = Vec::new();
        let mut digest = 0u64;
        let mut fold = |k: &str, v: &str| {
            digest = digest.rotate_left(7)
                ^ registry::digest(k.as_bytes())
                ^ registry::digest(v.as_bytes());
        };
        for (n, slot) in &r.backends {
            let k = registry::backend_key(n);
            fold(&k, &slot.encoded);
            out.push((k, slot.encoded.to_string()));
        }
        for (n, slot) in &r.frontends {
            let k = registry::frontend_key(n);
            fold(&k, &slot.encoded);
            out.push((k, slot.encoded.to_string()));
        }
        for (k, slot) in &r.leases {
            let key = registry::lease_key(k);
            if slot.reg.val.is_live(now) && local.own.contains_key(&key) {
                // The set of leases (not their deadlines) decides whether this is a change.
                fold(&key, "");
                out.push(registry::encode_lease(k, &slot.reg.val));
            }
        }
        (out, digest)
    };
    let changed = last.digest != Some(digest);
    let stale = last
        .saved_at
        .is_none_or(|t| t.elapsed() >= SNAPSHOT_REFRESH);
    if !changed && !stale {
        return;
    }
    let snap = snapshot::Snapshot {
        saved_at_ms: Some(now),
        records,
    };
    match snapshot::save(dir, &snap) {
        Ok(()) => {
            last.digest = Some(digest);
            last.saved_at = Some(tokio::time::Instant::now());
            debug!(records = snap.records.len(), "snapshot saved");
        }
        Err(e) => warn!(error = %e, "could not save snapshot"),
    }
}
