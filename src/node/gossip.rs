//! chitchat's side of the node: its configuration, the key-change callback that hands peers'
//! records to the view task, the re-read of every peer's keyspace when that hand-over overflowed,
//! and the eager pusher.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ListenerHandle,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Inner, NodeError, KEY_CLOCK};
use crate::config::Config;
use crate::shutdown::Shutdown;

/// Shortest time between two eager pushes, so a write burst is one round of gossip.
const PUSH_MIN_INTERVAL: Duration = Duration::from_millis(5);
/// Key-value changes from peers the callback may queue for the view task. Past it the callback
/// drops them and flags a re-read of every peer's keyspace (which loses nothing: chitchat holds
/// every value, and the join is idempotent).
pub(super) const REMOTE_QUEUE: usize = 16_384;
/// How long a deleted key stays in chitchat as a tombstone (peers that have not heard of the
/// deletion by then get the owner's whole keyspace instead, which chitchat handles). Churned
/// leases leave one tombstone each, so this bounds the state that churn leaves behind.
const KEY_TOMBSTONE_GRACE: Duration = Duration::from_secs(300);

/// A key/value a peer's keyspace gained, as chitchat's callback hands it over.
pub(super) struct Received {
    pub key: String,
    pub value: String,
    pub node: String,
    pub generation: u64,
    /// When it was received, for the clock key (offset estimates); `None` for a re-read.
    pub at_ms: Option<u64>,
}

/// Starts chitchat with this node's initial keyspace.
pub(super) async fn spawn(
    config: &Config,
    self_id: ChitchatId,
    initial: Vec<(String, String)>,
    transport: &dyn Transport,
) -> Result<ChitchatHandle, NodeError> {
    let cc_config = ChitchatConfig {
        chitchat_id: self_id,
        cluster_id: config.cluster_id.clone(),
        gossip_interval: config.gossip_interval,
        listen_addr: config.gossip_listen,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            initial_interval: config.gossip_interval,
            dead_node_grace_period: config.dead_node_grace,
            ..Default::default()
        },
        marked_for_deletion_grace_period: KEY_TOMBSTONE_GRACE.min(config.dead_node_grace),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    spawn_chitchat(cc_config, initial, transport)
        .await
        .map_err(|e| NodeError::Gossip {
            addr: config.gossip_listen,
            message: format!("{e:#}"),
        })
}

/// Subscribes to peers' key changes. What gossip delivered before the subscription is read
/// under the same lock, so that nothing falls between the two; it comes back as the first batch.
pub(super) async fn subscribe(
    inner: &Arc<Inner>,
) -> ((mpsc::Receiver<Received>, Vec<Received>), ListenerHandle) {
    let (tx, rx) = mpsc::channel::<Received>(REMOTE_QUEUE);
    let cc = inner.chitchat.lock().await;
    let first = read_all(&cc, &inner.self_id);
    let self_id = inner.self_id.clone();
    let clock = inner.hlc.clock().clone();
    let weak = Arc::downgrade(inner);
    // The callback runs under chitchat's lock: it only forwards what changed, and never waits.
    let listener = cc.subscribe_event("", move |ev| {
        if ev.node == &self_id {
            return;
        }
        // The receipt time of a peer's clock is read here, not when the view task gets to
        // it, so the offset estimate does not include our own queueing.
        let at_ms = (ev.key == KEY_CLOCK).then(|| clock.now_ms());
        let item = Received {
            key: ev.key.to_string(),
            value: ev.value.to_string(),
            node: ev.node.node_id.to_string(),
            generation: ev.node.generation_id,
            at_ms,
        };
        if tx.try_send(item).is_err() {
            if let Some(inner) = weak.upgrade() {
                if !inner.overflowed.swap(true, Ordering::AcqRel) {
                    inner.dirty.notify_one();
                }
            }
        }
    });
    drop(cc);
    ((rx, first), listener)
}

/// Every key of every peer's keyspace, as `Received` items without receipt times.
pub(super) fn read_all(cc: &chitchat::Chitchat, self_id: &ChitchatId) -> Vec<Received> {
    let mut out = Vec::new();
    for (id, state) in cc.node_states() {
        if id == self_id {
            continue;
        }
        for (k, v) in state.key_values() {
            out.push(Received {
                key: k.to_string(),
                value: v.to_string(),
                node: id.node_id.to_string(),
                generation: id.generation_id,
                at_ms: None,
            });
        }
    }
    out
}

/// After the callback's queue overflowed: every peer's keyspace, read again.
pub(super) async fn resync(inner: &Inner) -> Option<Vec<Received>> {
    if !inner.overflowed.swap(false, Ordering::AcqRel) {
        return None;
    }
    let n = inner.counters.resyncs.fetch_add(1, Ordering::Relaxed);
    let cc = inner.chitchat.lock().await;
    let items = read_all(&cc, &inner.self_id);
    drop(cc);
    if n < 10 || n % 100 == 0 {
        warn!(
            keys = items.len(),
            resyncs = n + 1,
            "more key changes from peers than the queue holds; re-read every peer's keyspace"
        );
    }
    Some(items)
}

/// Leases the node holds per millisecond of pause between two eager pushes.
/// chitchat answers each push with a delta it computes by scanning every key newer than the
/// peer's digest (under the lock every write needs), so a push costs in proportion to the
/// keyspace: pausing in proportion too keeps that work bounded (about 5 ms at 10k keys, 50 ms
/// at 100k) while small clusters keep pushing every 5 ms.
const PUSH_KEYS_PER_MS: usize = 2_000;

/// The pause after an eager push, given how many leases the node holds.
pub(super) fn push_pause(keys: usize) -> Duration {
    PUSH_MIN_INTERVAL.max(Duration::from_millis((keys / PUSH_KEYS_PER_MS) as u64))
}

/// Gossips right away with every live peer after local writes, so a write reaches the cluster in
/// about one round trip instead of up to one gossip interval.
pub(super) async fn push_task(inner: Arc<Inner>, mut stop: Shutdown) {
    loop {
        tokio::select! {
            _ = inner.push.notified() => {}
            _ = stop.wait() => return,
        }
        let (peers, keys): (Vec<SocketAddr>, usize) = {
            let cc = inner.chitchat.lock().await;
            let peers = cc
                .live_nodes()
                .filter(|id| **id != inner.self_id)
                .map(|id| id.gossip_advertise_addr)
                .collect();
            // The registry holds a record per key of every keyspace (a lease copied by many
            // nodes counts once): a lower bound of the keys, read in O(1).
            let keys = inner
                .local
                .lock()
                .expect("local lock")
                .registry
                .leases
                .len();
            (peers, keys)
        };
        for peer in peers {
            if let Err(e) = inner.handle.gossip(peer) {
                debug!(error = %e, "eager gossip failed");
            }
        }
        tokio::time::sleep(push_pause(keys)).await;
    }
}

#[cfg(test)]
mod push_tests {
    use super::*;

    #[test]
    fn the_push_pause_is_5_ms_for_small_keyspaces_and_grows_with_the_keyspace() {
        assert_eq!(push_pause(0), Duration::from_millis(5));
        assert_eq!(push_pause(10_000), Duration::from_millis(5));
        assert_eq!(push_pause(100_000), Duration::from_millis(50));
        assert_eq!(push_pause(300_000), Duration::from_millis(150));
    }
}
