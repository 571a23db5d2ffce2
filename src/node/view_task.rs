//! The view task: joins records from peers, decides readiness, recomputes the view when
//! something may have changed it, emits the events between consecutive views, and runs
//! maintenance.
//!
//! Reads from peers: chitchat's key-change callback only forwards the raw key/value here. The join
//! is monotone, so deletions (which chitchat does not report) never need to be seen: a node only
//! deletes copies that can no longer win (see [`crate::registry::gc`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::gossip::{self, Received};
use super::members::compute_members;
use super::{clock, has_peers, maintain, Inner, KEY_CLOCK, KEY_RECOVERING};
use crate::cluster::{Member, NodeView};
use crate::events::{self, Event};
use crate::guard::Guard;
use crate::model::RegKey;
use crate::registry::{self, ready, Record};
use crate::shutdown::Shutdown;

/// Shortest time between two view recomputations under a stream of writes.
const VIEW_MIN_INTERVAL: Duration = Duration::from_millis(2);

/// Joins records from peers, recomputes the view, emits events, and runs maintenance.
pub(super) async fn run(
    inner: Arc<Inner>,
    (mut remote, first): (mpsc::Receiver<Received>, Vec<Received>),
    mut guard: Guard,
    mut stop: Shutdown,
) {
    let started = Instant::now();
    let mut prev: Arc<NodeView> = inner.views.borrow().clone();
    // The view as of the last update; `update_view` keeps it current.
    let mut view = prev.view.clone();
    let mut ready = prev.ready;
    let mut maintenance = tokio::time::interval(maintain::INTERVAL);
    maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut membership = tokio::time::interval(inner.config.gossip_interval);
    membership.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snapshot = maintain::SnapshotState::default();
    let mut members: Vec<Member> = Vec::new();
    let mut batch = Vec::new();
    let has_peers = has_peers(&inner.config);
    join_remote(&inner, first.into_iter());
    // Test hook: `node.view.stall.<node id>=1*return` stalls this task once, until the
    // hand-over queue has overflowed (at most 30 s): the overflow test's way to let chitchat
    // deliver more than the queue holds before anything is taken out.
    fail::eval(&format!("node.view.stall.{}", inner.config.node_id), |_| {
        let start = std::time::Instant::now();
        while !inner.overflowed.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // When the view next changes on its own (a deadline passing). Computed with each view:
    // without a recompute deadlines only move later (renewals), so waking at this one is at
    // worst early, never late; an earlier deadline always comes with a recompute.
    let mut sleep_until = Instant::now();
    loop {
        // Recompute the view only when something may have changed it: renewals of live
        // registrations do not, and under a renewal load they are almost every record.
        let mut recompute = false;
        tokio::select! {
            n = remote.recv_many(&mut batch, 4096) => {
                if n == 0 { return; }
                recompute = join_remote(&inner, batch.drain(..));
            }
            _ = inner.dirty.notified() => recompute = true,
            _ = tokio::time::sleep_until(sleep_until) => recompute = true,
            _ = membership.tick() => {
                let (now_members, peers) = compute_members(&inner).await;
                recompute |= now_members != members;
                members = now_members;
                // A pending re-read may hold records the caught-up marks already count.
                if !ready && !inner.overflowed.load(Ordering::Acquire) {
                    let decision = ready::decide(has_peers, &peers, started.elapsed(), inner.config.warmup);
                    if let ready::Readiness::Ready(why) = decision {
                        ready = true;
                        recompute = true;
                        info!(
                            waited_ms = started.elapsed().as_millis() as u64,
                            why = ?why,
                            peers = peers.len(),
                            "node ready"
                        );
                    }
                }
                let quarantined = !inner.local.lock().expect("local lock").quarantined.is_empty();
                if quarantined {
                    let decision = registry::restore::decide_quarantine(&peers, started.elapsed(), inner.config.warmup);
                    recompute |= resolve_quarantine(&inner, decision).await;
                }
            }
            _ = maintenance.tick() => {
                // Test hook: FAILPOINTS=node.maintenance=panic kills this task.
                fail::fail_point!("node.maintenance");
                maintain::run(&inner).await;
                // The write (an fsync of up to a few MB) runs off the async threads.
                if let Some(due) = maintain::snapshot_due(&inner, &snapshot) {
                    let written = tokio::task::spawn_blocking(move || {
                        let ok = maintain::write_snapshot(&due);
                        (ok, due)
                    })
                    .await;
                    if let Ok((true, due)) = written {
                        snapshot.written(&due);
                    }
                }
                recompute = true;
            }
            _ = stop.wait() => return,
        }
        if let Some(items) = gossip::resync(&inner).await {
            recompute |= join_remote(&inner, items.into_iter());
        }
        // Fold in everything else that is already waiting before recomputing.
        while let Ok(item) = remote.try_recv() {
            batch.push(item);
        }
        if !batch.is_empty() {
            recompute |= join_remote(&inner, batch.drain(..));
        }
        if !recompute {
            continue;
        }
        // Isolated: peers configured, none live, once the node is ready (before that it
        // renders nothing anyway).
        let isolated = has_peers && ready && !members.iter().any(|m| !m.is_self && m.live);
        // The view, brought up to date from what changed (not recomputed), and the guard's
        // step from what stopped being live.
        let (changes, step, deregistered) = {
            let now = inner.hlc.now_ms();
            let mut local = inner.local.lock().expect("local lock");
            let changes = local.registry.update_view(&mut view, now);
            let registry = &local.registry;
            let deregistered = |k: &RegKey| {
                registry
                    .leases
                    .get(k)
                    .is_some_and(|s| s.reg.val.is_deregistration())
            };
            let step = guard.step(
                &changes.offline,
                &view.registrations,
                &deregistered,
                isolated,
                now,
                &inner.config.guard,
            );
            let next = registry
                .next_deadline(now)
                .into_iter()
                .chain(guard.next_release())
                .min();
            sleep_until = next
                .map(|d| Instant::now() + Duration::from_millis(d.saturating_sub(now)))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let gone_by_deregistration: HashSet<RegKey> = changes
                .offline
                .iter()
                .map(|r| &r.key)
                .filter(|k| deregistered(k))
                .cloned()
                .collect();
            (changes, step, gone_by_deregistration)
        };
        for mut event in events::of_changes(&changes, &prev.view, &view) {
            if let Event::Offline {
                registration,
                reason,
            } = &mut event
            {
                *reason = Some(if deregistered.contains(registration) {
                    events::OfflineReason::Deregistered
                } else {
                    events::OfflineReason::Expired
                });
            }
            log_event(&event);
            inner.counters.count_event(&event);
            inner.emit(event);
        }
        if step.degraded != prev.degraded {
            if step.degraded.is_empty() {
                info!("guard: back to normal; nothing is held");
            } else {
                warn!(why = ?step.degraded, held = step.held.len(),
                    "guard: degraded; serving registrations the registry no longer has live");
            }
        }
        // Renewals that only move deadlines change nothing downstream: the view's entries keep
        // the deadlines they had when they last changed otherwise.
        let changed = !changes.online.is_empty()
            || !changes.offline.is_empty()
            || changes.updated
            || changes.entities
            || prev.members != members
            || prev.ready != ready
            || prev.held.keys().ne(step.held.keys())
            || prev.degraded != step.degraded;
        if changed {
            let next = Arc::new(NodeView {
                view: view.clone(),
                members: members.clone(),
                ready,
                held: step.held,
                degraded: step.degraded,
            });
            inner.views.send_replace(next.clone());
            prev = next;
        }
        tokio::time::sleep(VIEW_MIN_INTERVAL).await;
    }
}

/// Entities of a snapshot older than the tombstone horizon, once [`decide_quarantine`] says
/// what becomes of them: restored (they join the registry now; the next maintenance round
/// adopts the winners into the keyspace, as it does every entity) or dropped. Either way the
/// node stops saying it is recovering. Returns whether anything was restored.
///
/// [`decide_quarantine`]: registry::restore::decide_quarantine
async fn resolve_quarantine(inner: &Inner, decision: registry::restore::Quarantine) -> bool {
    use registry::restore::Quarantine;
    if decision == Quarantine::Wait {
        return false;
    }
    let mut cc = inner.chitchat.lock().await;
    let mut local = inner.local.lock().expect("local lock");
    let held = std::mem::take(&mut local.quarantined);
    cc.self_node_state().delete(KEY_RECOVERING);
    if decision == Quarantine::Drop {
        warn!(
            entities = held.len(),
            "dropped the entities of an old snapshot: peers that kept running hold the cluster's state"
        );
        return false;
    }
    let mut restored = 0usize;
    for (k, v) in held {
        if let Ok(record) = registry::decode_checked(&k, &v) {
            local.registry.insert(record, &v);
            restored += 1;
        }
    }
    warn!(
        entities = restored,
        "restored the entities of an old snapshot: every peer is back from an outage as long, or none answered"
    );
    restored > 0
}

fn log_event(event: &Event) {
    match event {
        Event::Online { registration } => info!(registration = %registration, "online"),
        Event::Offline {
            registration,
            reason,
        } => info!(registration = %registration, reason = ?reason, "offline"),
        Event::BackendUpdated { backend } => {
            info!(backend = %backend.name, app = %backend.app, version = %backend.version, "backend updated")
        }
        Event::BackendDeleted { name } => info!(backend = %name, "backend deleted"),
        Event::FrontendUpdated { frontend } => {
            info!(frontend = %frontend.name, backend = %frontend.backend, "frontend updated")
        }
        Event::FrontendDeleted { name } => info!(frontend = %name, "frontend deleted"),
    }
}

/// Joins records received from peers; samples peers' clocks; notes which peers' keyspaces have
/// arrived. Returns whether any record may have changed the view.
fn join_remote(inner: &Inner, items: impl Iterator<Item = Received>) -> bool {
    let now = inner.hlc.now_ms();
    let mut changed = false;
    let mut local = inner.local.lock().expect("local lock");
    for Received {
        key,
        value,
        node,
        generation,
        at_ms,
    } in items
    {
        if registry::is_registry_key(&key) {
            let record = registry::decode_checked(&key, &value);
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    // A flood of bad records must not flood the log: the first ten, then every
                    // thousandth; the metric counts them all.
                    let n = inner
                        .counters
                        .records_refused
                        .fetch_add(1, Ordering::Relaxed);
                    if n < 10 || n % 1000 == 0 {
                        warn!(peer = ?node, error = %e, refused = n + 1,
                            "refusing a record from a peer (another version, or not a value a client could write)")
                    }
                    continue;
                }
            };
            // The HLC refuses (and does not move for) a stamp beyond the drift bound.
            if let Err(e) = inner.hlc.observe(record.stamp()) {
                let n = inner
                    .counters
                    .stamps_refused
                    .fetch_add(1, Ordering::Relaxed);
                if n < 10 || n % 1000 == 0 {
                    warn!(peer = ?node, key = %key, error = %e, refused = n + 1,
                        "refusing a record stamped in the future: check that peer's clock (NTP)")
                }
                continue;
            }
            changed |= join_one(&mut local, &key, record, &value, now);
        } else if key == KEY_CLOCK {
            let mut clock_keys = inner.clock_keys.lock().expect("clock keys lock");
            let seen = clock_keys
                .entry((node.clone(), generation))
                .or_insert_with(|| (String::new(), 0));
            if seen.0 != value {
                seen.0.clone_from(&value);
                seen.1 = seen.1.saturating_add(1);
            }
            drop(clock_keys);
            if let (Some(v), Some(at)) = (clock::decode(&value, &inner.config.node_id), at_ms) {
                let warn_ms = inner.config.clock_offset_warn.as_millis() as i64;
                let crossed = inner.clocks.lock().expect("clock lock").record(
                    &node,
                    v.ms as i64 - at as i64,
                    v.bound,
                    v.publishing,
                    warn_ms,
                );
                if let Some(c) = crossed {
                    inner
                        .counters
                        .clock_warnings
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %node, offset_ms = c.offset_ms, bound_ms = warn_ms,
                        from_both_sides = c.bounded,
                        "peer clock offset exceeds the bound: lease expiry will be early or late by about this much; check NTP");
                }
            }
        }
    }
    changed
}

/// Joins one peer's record; notes our copy of its key if the join outranked it (maintenance
/// deletes it then, see [`registry::gc::plan_for`]).
fn join_one(local: &mut super::Local, key: &str, record: Record, value: &str, now: u64) -> bool {
    let changes = local.registry.changes_view(&record, now);
    local.registry.insert(record, value);
    let super::Local {
        registry,
        own,
        outranked,
        ..
    } = local;
    registry::gc::note_if_outranked(own, registry, key, outranked);
    changes
}
