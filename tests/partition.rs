//! Nodes in one process over chitchat's in-memory `ChannelTransport`: a link cut and healed.
//! A shared manual clock makes the HLC order of the conflicting writes deterministic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bender::config::{Config, FileConfig, Overrides};
use bender::hlc::ManualClock;
use bender::model::{Backend, RegKey, Snippets};
use bender::node::{Node, WriteMode};
use chitchat::transport::ChannelTransport;

const DEADLINE: Duration = Duration::from_secs(15);

fn addr(i: u8) -> SocketAddr {
    ([10, 0, 0, i], 1730).into()
}

fn config(i: u8) -> Config {
    let seeds = (1..=3)
        .filter(|j| *j != i)
        .map(|j| addr(j).to_string())
        .collect();
    let file = FileConfig {
        warmup: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    Config::resolve(
        file,
        Overrides {
            node_id: Some(format!("n{i}")),
            cluster_id: Some("partition-test".into()),
            gossip_listen: Some(addr(i)),
            seeds,
            gossip_interval: Some(Duration::from_millis(50)),
            ..Default::default()
        },
    )
    .expect("valid test config")
}

fn backend(version: &str) -> Backend {
    serde_json::from_value(serde_json::json!({"name": "web", "app": "web", "version": version}))
        .unwrap()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Three nodes sharing `clock`, once they all see each other live.
async fn start_three(transport: &ChannelTransport, clock: &ManualClock) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        nodes.push(
            Node::start(config(i), Arc::new(clock.clone()), transport)
                .await
                .unwrap(),
        );
    }
    wait_for("all members are live", || {
        nodes
            .iter()
            .all(|n| n.members().iter().filter(|m| m.live).count() == 3)
    })
    .await;
    nodes
}

fn version_on(node: &Node) -> Option<String> {
    node.get::<Backend>("web").map(|b| b.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_heals_and_the_later_write_wins_everywhere() {
    let transport = ChannelTransport::with_mtu(65_507);
    let clock = ManualClock::new(1_000_000);
    let nodes = start_three(&transport, &clock).await;

    nodes[0]
        .write_entity(backend("v0"), WriteMode::Create, Snippets::AllowListed)
        .await
        .unwrap();
    wait_for("the backend reaches every node", || {
        nodes.iter().all(|n| version_on(n).as_deref() == Some("v0"))
    })
    .await;

    // Cut n1 off from both peers.
    transport.remove_link(addr(1), addr(2)).await;
    transport.remove_link(addr(1), addr(3)).await;

    // Conflicting writes on both sides; n2's is later on the (shared) clock.
    clock.advance(10);
    nodes[0]
        .write_entity(backend("a"), WriteMode::Update, Snippets::AllowListed)
        .await
        .unwrap();
    let key = RegKey::new("web", "v1", "10.1.1.1", 80).unwrap();
    nodes[0]
        .register(
            key.clone(),
            Some(Duration::from_secs(30)),
            Default::default(),
        )
        .await
        .unwrap();
    clock.advance(10);
    nodes[1]
        .write_entity(backend("b"), WriteMode::Update, Snippets::AllowListed)
        .await
        .unwrap();

    wait_for("n3 sees n2's write", || {
        version_on(&nodes[2]).as_deref() == Some("b")
    })
    .await;
    assert_eq!(version_on(&nodes[0]).as_deref(), Some("a"), "n1 is cut off");
    assert!(
        nodes[2].registrations(None, None, None).is_empty(),
        "the partitioned node's registration cannot have crossed the cut"
    );

    // Heal.
    transport.add_link(addr(1), addr(2)).await;
    transport.add_link(addr(1), addr(3)).await;
    wait_for("every node converges on the later write", || {
        nodes.iter().all(|n| version_on(n).as_deref() == Some("b"))
    })
    .await;
    wait_for("the registration reaches every node", || {
        nodes
            .iter()
            .all(|n| n.registrations(Some("web"), None, None).len() == 1)
    })
    .await;

    // Expiry needs no coordination: moving the clock past the deadline ends it everywhere, in
    // what each node lists, in the view it publishes (what HAProxy gets) and as an `offline`
    // event. (The manual clock jumps, so the view task sees it at its next maintenance round;
    // tests/virtual_time.rs checks the wake-up at the deadline itself.)
    let mut streams: Vec<_> = nodes.iter().map(|n| n.subscribe_events()).collect();
    clock.advance(30_001);
    wait_for("the registration expires on every node", || {
        nodes.iter().all(|n| {
            n.registrations(None, None, None).is_empty()
                && n.views().borrow().view.registrations.is_empty()
        })
    })
    .await;
    for (i, events) in streams.iter_mut().enumerate() {
        let offline = tokio::time::timeout(DEADLINE, async {
            loop {
                if let bender::events::Event::Offline { .. } = events.recv().await.unwrap().event {
                    return;
                }
            }
        })
        .await;
        assert!(offline.is_ok(), "node {i} emitted no offline event");
    }

    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_made_during_a_partition_is_not_undone_by_the_healed_side() {
    let transport = ChannelTransport::with_mtu(65_507);
    let clock = ManualClock::new(5_000_000);
    let nodes = start_three(&transport, &clock).await;
    nodes[1]
        .write_entity(backend("v1"), WriteMode::Create, Snippets::AllowListed)
        .await
        .unwrap();
    wait_for("the backend reaches every node", || {
        nodes.iter().all(|n| version_on(n).is_some())
    })
    .await;
    transport.remove_link(addr(3), addr(1)).await;
    transport.remove_link(addr(3), addr(2)).await;
    clock.advance(10);
    nodes[0].delete_entity::<Backend>("web").await.unwrap();
    wait_for("n2 sees the delete", || version_on(&nodes[1]).is_none()).await;
    assert_eq!(version_on(&nodes[2]).as_deref(), Some("v1"));
    transport.add_link(addr(3), addr(1)).await;
    transport.add_link(addr(3), addr(2)).await;
    wait_for("the delete reaches the healed node", || {
        version_on(&nodes[2]).is_none()
    })
    .await;
    // The only copy of the old version left is the one the healed node had adopted into its own
    // keyspace. Once its maintenance adopts the deletion in its place, no copy can revive it.
    let start = tokio::time::Instant::now();
    while !nodes[2]
        .own_value("b:web")
        .await
        .is_some_and(|v| v.contains(r#""v":null"#))
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the healed node never adopts the deletion"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(nodes.iter().all(|n| version_on(n).is_none()));
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_estimates_its_peers_clock_offsets() {
    let transport = ChannelTransport::with_mtu(65_507);
    // Node 2's clock is 500 ms ahead of node 1's; manual clocks stand still, so receipt delays
    // cannot blur the estimate.
    let c1 = ManualClock::new(9_000_000);
    let c2 = ManualClock::new(9_000_500);
    let n1 = Node::start(config(1), Arc::new(c1), &transport)
        .await
        .unwrap();
    let n2 = Node::start(config(2), Arc::new(c2), &transport)
        .await
        .unwrap();
    let offset_of = |n: &Node, peer: &str| {
        n.members()
            .into_iter()
            .find(|m| m.node_id == peer)
            .and_then(|m| m.clock_offset_ms)
    };
    wait_for("both estimates", || {
        offset_of(&n1, "n2") == Some(500) && offset_of(&n2, "n1") == Some(-500)
    })
    .await;
    n1.stop().await;
    n2.stop().await;
}

/// The registry and the live keyspace; chitchat's own deletion markers outlive this test's
/// real time, and tests/virtual_time.rs checks that they go too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_and_old_tombstones_are_collected_from_the_registry_and_the_live_keyspace() {
    let transport = ChannelTransport::with_mtu(65_507);
    let clock = ManualClock::new(20_000_000);
    let node = Node::start(config(1), Arc::new(clock.clone()), &transport)
        .await
        .unwrap();
    let base = node.own_key_count().await; // node metadata: API address, clock
    node.write_entity(backend("v1"), WriteMode::Create, Snippets::AllowListed)
        .await
        .unwrap();
    let key = RegKey::new("web", "v1", "10.1.1.1", 80).unwrap();
    node.register(key, Some(Duration::from_secs(1)), Default::default())
        .await
        .unwrap();
    assert_eq!(node.own_key_count().await, base + 2);
    node.delete_entity::<Backend>("web").await.unwrap();
    // The tombstone is still held (it must outlive any stale copy), the lease too.
    assert_eq!(node.own_key_count().await, base + 2);

    // Past the lease's deadline + lease_gc_grace (60 s): the lease goes, the tombstone stays.
    clock.advance(62_000);
    let mut n = 0;
    let start = tokio::time::Instant::now();
    while n != base + 1 {
        assert!(start.elapsed() < DEADLINE, "lease not collected: {n} keys");
        tokio::time::sleep(Duration::from_millis(20)).await;
        n = node.own_key_count().await;
    }
    assert_eq!(node.counts().3, 0, "the registry forgot the lease");
    // Past tombstone_ttl (2 h): the tombstone goes too.
    clock.advance(2 * 3600 * 1000);
    let start = tokio::time::Instant::now();
    while n != base {
        assert!(
            start.elapsed() < DEADLINE,
            "tombstone not collected: {n} keys"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        n = node.own_key_count().await;
    }
    node.stop().await;
}
