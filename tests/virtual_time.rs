//! A cluster in virtual time: nodes in one process over chitchat's `ChannelTransport`, with
//! tokio's clock paused, so timers, gossip, chitchat's failure detector and every node's wall
//! clock (`TokioClock`) advance together, and hours pass in moments.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bender::config::{Config, FileConfig, Overrides};
use bender::hlc::TokioClock;
use bender::model::{Backend, RegKey, Snippets};
use bender::node::{Node, WriteMode};
use chitchat::transport::ChannelTransport;

const NOW: u64 = 1_800_000_000_000;

fn addr(i: u8) -> SocketAddr {
    ([10, 2, 0, i], 1730).into()
}

fn config(i: u8, n: u8) -> Config {
    let file: FileConfig = toml::from_str(
        r#"
dead_node_grace = "10m"
tombstone_ttl = "1h"
lease_gc_grace = "1m"
"#,
    )
    .unwrap();
    Config::resolve(
        file,
        Overrides {
            node_id: Some(format!("v{i}")),
            cluster_id: Some("virtual".into()),
            gossip_listen: Some(addr(i)),
            seeds: (1..=n)
                .filter(|j| *j != i)
                .map(|j| addr(j).to_string())
                .collect(),
            gossip_interval: Some(Duration::from_millis(500)),
            ..Default::default()
        },
    )
    .unwrap()
}

async fn settle(what: &str, nodes: &[Node], mut f: impl FnMut(&Node) -> bool) {
    for _ in 0..600 {
        if nodes.iter().all(&mut f) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("after a minute of virtual time, not every node: {what}");
}

#[tokio::test(start_paused = true)]
async fn two_hours_of_virtual_time_collect_every_lease_and_tombstone_on_every_node() {
    let t = ChannelTransport::default();
    let clock = TokioClock::new(NOW);
    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        // One node's clock runs 150 ms ahead: NTP-grade skew.
        let c = if i == 3 {
            clock.skewed(150)
        } else {
            clock.clone()
        };
        nodes.push(Node::start(config(i, 3), Arc::new(c), &t).await.unwrap());
    }
    settle("sees all three members live", &nodes, |n| {
        n.members().iter().filter(|m| m.live).count() == 3
    })
    .await;
    for port in 1..=50u16 {
        let k = RegKey::new("web", "1", "10.0.0.1", port).unwrap();
        nodes[usize::from(port) % 3]
            .register(k, Some(Duration::from_secs(10)), BTreeMap::new())
            .await
            .unwrap();
    }
    let web: Backend =
        serde_json::from_value(serde_json::json!({"name": "web", "app": "web", "version": "1"}))
            .unwrap();
    nodes[0]
        .write_entity(web, WriteMode::Create, Snippets::AllowListed)
        .await
        .unwrap();
    settle("lists 50 registrations and the backend", &nodes, |n| {
        n.counts().0 == 50 && n.counts().1 == 1
    })
    .await;
    nodes[1].delete_entity::<Backend>("web").await.unwrap();
    settle("has the deletion", &nodes, |n| n.counts().1 == 0).await;

    // Each node emits `offline` at the deadline itself: its view task wakes for it (the 1 s
    // maintenance tick would be up to a second late).
    let mut streams: Vec<_> = nodes.iter().map(|n| n.subscribe_events()).collect();
    let key = RegKey::new("web", "1", "10.0.0.2", 80).unwrap();
    let lease = nodes[0]
        .register(key.clone(), Some(Duration::from_secs(5)), BTreeMap::new())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for (n, events) in nodes.iter().zip(&mut streams) {
        loop {
            match events.recv().await.unwrap().event {
                bender::events::Event::Offline { registration, .. } if registration == key => break,
                _ => {}
            }
        }
        let late = tokio::time::Instant::now().saturating_duration_since(deadline);
        assert!(
            late < Duration::from_millis(100),
            "{}: offline {late:?} after the deadline (lease until {})",
            n.node_id(),
            lease.deadline_ms
        );
    }

    // Two hours pass: every lease expires (10 s), is collected (1 min later), and the tombstone
    // is forgotten (1 h); the members stay live throughout.
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    for n in &nodes {
        let (live, backends, frontends, held) = n.counts();
        assert_eq!(
            (live, backends, frontends, held),
            (0, 0, 0, 0),
            "{}: state left after two hours",
            n.node_id()
        );
        assert_eq!(n.members().iter().filter(|m| m.live).count(), 3);
        // Its keyspace is down to its own metadata (API address, clock), chitchat's deletion
        // markers of the collected keys included.
        assert_eq!(n.own_key_count().await, 2, "{}", n.node_id());
        assert_eq!(
            n.own_key_count_including_deleted().await,
            2,
            "{}: deletion markers left",
            n.node_id()
        );
        assert_eq!(
            n.clock_warnings(),
            0,
            "{}: {:?}",
            n.node_id(),
            n.members()
                .iter()
                .map(|m| (m.node_id.clone(), m.clock_offset_ms))
                .collect::<Vec<_>>()
        );
    }
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_waits_reaches_every_node_before_the_deadline_they_hold() {
    let t = ChannelTransport::default();
    let clock = TokioClock::new(NOW);
    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        nodes.push(
            Node::start(config(i, 3), Arc::new(clock.clone()), &t)
                .await
                .unwrap(),
        );
    }
    settle("sees all three members live", &nodes, |n| {
        n.members().iter().filter(|m| m.live).count() == 3
    })
    .await;
    let k = RegKey::new("web", "1", "10.0.0.9", 80).unwrap();
    let ttl = Some(Duration::from_secs(20));
    let deadline_of = |n: &Node| {
        n.registrations(Some("web"), None, None)
            .first()
            .map(|r| r.deadline_ms)
    };
    let first = nodes[0]
        .register(k.clone(), ttl, BTreeMap::new())
        .await
        .unwrap();
    settle("holds the registration", &nodes, |n| {
        deadline_of(n) == Some(first.deadline_ms)
    })
    .await;
    // Two seconds later the client renews, once, and then stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = nodes[0]
        .register(k.clone(), ttl, BTreeMap::new())
        .await
        .unwrap();
    assert!(last.deadline_ms >= first.deadline_ms + 2_000);
    assert_eq!(nodes[0].renewals_deferred(), (1, 1), "the renewal waits");
    for n in &nodes[1..] {
        assert_eq!(
            deadline_of(n),
            Some(first.deadline_ms),
            "nothing gossiped yet"
        );
    }
    // Just before the deadline the others held, every node holds the renewal's.
    let now = nodes[0].now_ms();
    tokio::time::sleep(Duration::from_millis(first.deadline_ms - 1 - now)).await;
    for n in &nodes {
        assert_eq!(deadline_of(n), Some(last.deadline_ms), "{:?}", n.members());
    }
    assert_eq!(nodes[0].renewals_deferred().1, 0, "nothing waits any more");
    // And it expires at that deadline, everywhere.
    let now = nodes[0].now_ms();
    tokio::time::sleep(Duration::from_millis(last.deadline_ms + 1 - now)).await;
    settle("lets it expire", &nodes, |n| deadline_of(n).is_none()).await;
    for n in nodes {
        n.stop().await;
    }
}
