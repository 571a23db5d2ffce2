//! Readiness of a starting node, decided as a pure function: ready means caught up with every
//! peer, with the warm-up only as the bound on how long to wait.
//!
//! "Caught up with a peer" is observable because chitchat delivers a node's keys in version
//! order (a delta lists them sorted by version, and a receiver ignores anything at or below the
//! version it holds). Every node rewrites its clock key each maintenance round, which gives that
//! key the newest version of its keyspace at that moment; so once a value of the clock key of a
//! peer has arrived, every key that peer held when it wrote that value has arrived too. The
//! node takes a peer as caught up once a value written after this node started has arrived:
//! the second distinct value it sees (the first may predate it, and keys the peer wrote after
//! that first value carry newer versions). This holds whether or not the failure detector has
//! the peer live yet: a peer just discovered is not live for a few seconds while its keyspace
//! arrives, and its first clock value can be older than thousands of its keys (measured: a node
//! called itself ready with 3,685 of 10,000 leases when it took the first value of a peer not
//! yet live). A member that writes nothing more (a dead node whose state peers still relay)
//! holds readiness until the warm-up ends, unless a newer generation of it (it restarted)
//! supersedes it: that one counts at its first value.

use std::time::Duration;

/// One peer as a starting node knows it: any other member whose state it holds, live or not
/// (a member just discovered is not live yet while its keyspace arrives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    /// Whether its clock key (the newest key of its keyspace) has arrived.
    pub caught_up: bool,
    /// Whether it started from a snapshot older than the tombstone horizon and still holds
    /// that snapshot's entities back (see [`super::restore`]).
    pub recovering: bool,
}

/// Why a node is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No peers are configured: there is nothing to catch up with.
    NoPeers,
    /// Every known peer's keyspace has arrived.
    CaughtUp,
    /// The warm-up ran out first (peers unreachable, or too slow to send everything).
    WarmupElapsed,
}

/// Whether a starting node is ready, and if not which peers it still waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready(Why),
    Waiting { behind: Vec<String> },
}

/// Whether a peer is caught up, given how many distinct values of its clock key have arrived
/// since this node started: the second one was written after this node started, and arrived
/// after every key the peer held when writing it. An old generation of a node that restarted
/// since (`superseded`) writes nothing more; its last value is as far as it goes.
pub fn caught_up(distinct_clock_values: u8, superseded: bool) -> bool {
    distinct_clock_values >= if superseded { 1 } else { 2 }
}

/// Decides readiness after `waited` since the start, with `peers` the other members.
pub fn decide(has_peers: bool, peers: &[Peer], waited: Duration, warmup: Duration) -> Readiness {
    if !has_peers {
        return Readiness::Ready(Why::NoPeers);
    }
    if !peers.is_empty() && peers.iter().all(|p| p.caught_up) {
        return Readiness::Ready(Why::CaughtUp);
    }
    if waited >= warmup {
        return Readiness::Ready(Why::WarmupElapsed);
    }
    Readiness::Waiting {
        behind: peers
            .iter()
            .filter(|p| !p.caught_up)
            .map(|p| p.node.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(node: &str, caught_up: bool) -> Peer {
        Peer {
            node: node.into(),
            caught_up,
            recovering: false,
        }
    }

    const WARMUP: Duration = Duration::from_secs(30);

    #[test]
    fn a_node_that_has_not_heard_from_any_peer_waits_for_the_warmup() {
        let short = Duration::from_secs(1);
        assert_eq!(
            decide(true, &[], short, WARMUP),
            Readiness::Waiting { behind: vec![] }
        );
        assert_eq!(
            decide(true, &[], WARMUP, WARMUP),
            Readiness::Ready(Why::WarmupElapsed)
        );
    }

    #[test]
    fn a_node_waits_for_the_peer_whose_keyspace_has_not_arrived() {
        let peers = [peer("a", true), peer("b", false)];
        assert_eq!(
            decide(true, &peers, Duration::ZERO, WARMUP),
            Readiness::Waiting {
                behind: vec!["b".into()]
            }
        );
    }

    proptest! {
        /// Ready before the warm-up only when there is nothing to wait for or every known peer
        /// is caught up; never waiting past the warm-up.
        #[test]
        fn ready_means_caught_up_or_out_of_time(
            has_peers in any::<bool>(),
            flags in prop::collection::vec(any::<bool>(), 0..5),
            waited_ms in 0u64..60_000,
        ) {
            let peers: Vec<Peer> = flags.iter().enumerate()
                .map(|(i, c)| peer(&format!("n{i}"), *c)).collect();
            let waited = Duration::from_millis(waited_ms);
            match decide(has_peers, &peers, waited, WARMUP) {
                Readiness::Ready(Why::NoPeers) => prop_assert!(!has_peers),
                Readiness::Ready(Why::CaughtUp) => {
                    prop_assert!(!peers.is_empty() && flags.iter().all(|c| *c))
                }
                Readiness::Ready(Why::WarmupElapsed) => prop_assert!(waited >= WARMUP),
                Readiness::Waiting { behind } => {
                    prop_assert!(has_peers && waited < WARMUP);
                    prop_assert_eq!(behind.len(), flags.iter().filter(|c| !**c).count());
                }
            }
        }
    }
}
