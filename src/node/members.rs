//! Membership: the members as chitchat knows them (the newest generation of each node id),
//! with their API address and clock offset, and the peers as readiness sees them.

use std::collections::{BTreeMap, HashSet};

use chitchat::ChitchatId;

use super::{Inner, KEY_API, KEY_RECOVERING};
use crate::cluster::Member;
use crate::registry;

/// A peer's ChitchatId as the readiness bookkeeping keys it.
fn peer_key(id: &ChitchatId) -> (String, u64) {
    (id.node_id.to_string(), id.generation_id)
}

/// The newest generation of each node id chitchat knows (a restarted node appears under a new
/// generation: only its newest one counts).
fn newest_generations(cc: &chitchat::Chitchat) -> BTreeMap<String, &ChitchatId> {
    let mut newest: BTreeMap<String, &ChitchatId> = BTreeMap::new();
    for id in cc.node_states().keys() {
        let e = newest.entry(id.node_id.to_string()).or_insert(id);
        if id.generation_id > e.generation_id {
            *e = id;
        }
    }
    newest
}

/// Members as chitchat knows them (newest generation of each node id).
pub(super) async fn compute_members(inner: &Inner) -> (Vec<Member>, Vec<registry::ready::Peer>) {
    let cc = inner.chitchat.lock().await;
    let live: HashSet<&ChitchatId> = cc.live_nodes().collect();
    let newest = newest_generations(&cc);
    let known: HashSet<(String, u64)> = cc.node_states().keys().map(peer_key).collect();
    let mut clock_keys = inner.clock_keys.lock().expect("clock keys lock");
    clock_keys.retain(|k, _| known.contains(k));
    let peers: Vec<registry::ready::Peer> = cc
        .node_states()
        .keys()
        .filter(|id| id.node_id != inner.self_id.node_id)
        .map(|id| registry::ready::Peer {
            node: id.node_id.to_string(),
            recovering: cc
                .node_state(id)
                .is_some_and(|s| s.get(KEY_RECOVERING).is_some()),
            caught_up: clock_keys.get(&peer_key(id)).is_some_and(|(_, distinct)| {
                let superseded = newest
                    .get(&id.node_id.to_string())
                    .is_some_and(|n| n.generation_id > id.generation_id);
                registry::ready::caught_up(*distinct, superseded)
            }),
        })
        .collect();
    drop(clock_keys);
    let mut clocks = inner.clocks.lock().expect("clock lock");
    clocks.retain(|node| newest.contains_key(node));
    let mut out: Vec<Member> = newest
        .into_values()
        .map(|id| {
            let is_self = *id == inner.self_id;
            Member {
                node_id: id.node_id.to_string(),
                gossip_addr: id.gossip_advertise_addr,
                api_addr: cc
                    .node_state(id)
                    .and_then(|s| s.get(KEY_API))
                    .map(str::to_string),
                live: is_self || live.contains(id),
                is_self,
                clock_offset_ms: if is_self {
                    Some(0)
                } else {
                    clocks.estimate(&id.node_id)
                },
            }
        })
        .collect();
    drop(clocks);
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    (out, peers)
}

/// Every member (newest generation of each node id) with its fleet apply record as published,
/// for [`crate::fleet`]. A record over [`crate::fleet::MAX_RECORD_BYTES`] is refused here,
/// before it is copied.
pub(super) async fn fleet_members(inner: &Inner) -> Vec<crate::fleet::Member> {
    let cc = inner.chitchat.lock().await;
    let live: HashSet<&ChitchatId> = cc.live_nodes().collect();
    let newest = newest_generations(&cc);
    newest
        .into_values()
        .map(|id| {
            let is_self = *id == inner.self_id;
            let record = cc
                .node_state(id)
                .and_then(|s| s.get(crate::fleet::KEY))
                .map(crate::fleet::decode);
            crate::fleet::Member {
                node_id: id.node_id.to_string(),
                live: is_self || live.contains(id),
                is_self,
                record,
            }
        })
        .collect()
}
