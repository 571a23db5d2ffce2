//! The replication holes of the consistency issue, each shown on nodes in one process over
//! chitchat's in-memory `ChannelTransport`, with clocks set by hand where skew matters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bender::config::{Config, FileConfig, Overrides};
use bender::hlc::ManualClock;
use bender::model::{Backend, RegKey, Snippets};
use bender::node::{Node, WriteMode};
use bender::registry;
use chitchat::transport::ChannelTransport;

const DEADLINE: Duration = Duration::from_secs(30);
const NOW: u64 = 1_800_000_000_000;

fn addr(i: u8) -> SocketAddr {
    ([10, 1, 0, i], 1730).into()
}

/// Node `i` of a cluster of `n`, with extra config file lines.
fn config(i: u8, n: u8, extra: &str, data_dir: Option<&Path>) -> Config {
    config_gossiping_every(i, n, extra, data_dir, Duration::from_millis(50))
}

fn config_gossiping_every(
    i: u8,
    n: u8,
    extra: &str,
    data_dir: Option<&Path>,
    interval: Duration,
) -> Config {
    let peers: Vec<u8> = (1..=n).filter(|j| *j != i).collect();
    config_with_peers(i, &peers, extra, data_dir, interval)
}

/// Node `i` seeded with `peers` (for tests whose node ids must differ from the others').
fn config_with_peers(
    i: u8,
    peers: &[u8],
    extra: &str,
    data_dir: Option<&Path>,
    interval: Duration,
) -> Config {
    let seeds = peers.iter().map(|j| addr(*j).to_string()).collect();
    let file: FileConfig = toml::from_str(extra).expect("test config parses");
    Config::resolve(
        file,
        Overrides {
            node_id: Some(format!("n{i}")),
            cluster_id: Some("consistency-test".into()),
            gossip_listen: Some(addr(i)),
            seeds,
            gossip_interval: Some(interval),
            data_dir: data_dir.map(Path::to_path_buf),
            ..Default::default()
        },
    )
    .expect("valid test config")
}

/// Starts a node on `clock`.
async fn start_node(t: &ChannelTransport, clock: &ManualClock, config: Config) -> Node {
    Node::start(config, Arc::new(clock.clone()), t)
        .await
        .expect("the node starts")
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn key(port: u16) -> RegKey {
    RegKey::new("web", "1", "10.9.0.1", port).unwrap()
}

fn lists(node: &Node, k: &RegKey) -> bool {
    node.registrations(Some(&k.app), None, None)
        .iter()
        .any(|r| r.key == *k)
}

fn backend(version: &str) -> Backend {
    serde_json::from_value(serde_json::json!({"name": "web", "app": "web", "version": version}))
        .unwrap()
}

async fn all_live(nodes: &[&Node]) {
    let n = nodes.len();
    wait_for("all members are live", || {
        nodes
            .iter()
            .all(|x| x.members().iter().filter(|m| m.live).count() == n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_renewals_of_one_key_through_one_node_leave_the_newest_in_its_keyspace() {
    let t = ChannelTransport::default();
    let clock = ManualClock::new(NOW);
    let node = Node::start(config(1, 1, "", None), Arc::new(clock), &t)
        .await
        .unwrap();
    let k = key(80);
    for round in 0..40 {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let node = node.clone();
            let k = k.clone();
            tasks.push(tokio::spawn(async move {
                let meta = BTreeMap::from([("w".to_string(), format!("{round}-{i}"))]);
                node.register(k, Some(Duration::from_secs(60)), meta)
                    .await
                    .unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // What peers receive (the keyspace) is what this node believes (the registry).
        let own = node.own_value(&registry::lease_key(&k)).await.unwrap();
        let Ok(registry::Record::Lease(_, in_keyspace)) =
            registry::decode(&registry::lease_key(&k), &own)
        else {
            panic!("not a lease: {own}")
        };
        let believed = node.registrations(Some("web"), None, None);
        assert_eq!(
            in_keyspace.meta, believed[0].meta,
            "round {round}: the keyspace holds an older renewal than the registry"
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistration_ends_the_registration_on_a_node_whose_clock_lags() {
    let t = ChannelTransport::default();
    let right = ManualClock::new(NOW);
    let behind = ManualClock::new(NOW - 5_000);
    let a = Node::start(config(1, 2, "", None), Arc::new(right), &t)
        .await
        .unwrap();
    let b = Node::start(config(2, 2, "", None), Arc::new(behind), &t)
        .await
        .unwrap();
    all_live(&[&a, &b]).await;
    let k = key(81);
    a.register(k.clone(), Some(Duration::from_secs(30)), BTreeMap::new())
        .await
        .unwrap();
    wait_for("the lagging node lists the registration", || lists(&b, &k)).await;
    assert!(a.deregister(k.clone()).await);
    // Neither clock moves: only the record's arrival can end it on the lagging node.
    wait_for("the lagging node no longer lists it", || !lists(&b, &k)).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistration_of_an_unknown_registration_writes_nothing() {
    let t = ChannelTransport::default();
    let node = Node::start(config(1, 1, "", None), Arc::new(ManualClock::new(NOW)), &t)
        .await
        .unwrap();
    let before = node.own_key_count().await;
    assert!(!node.deregister(key(82)).await);
    assert_eq!(node.own_key_count().await, before);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_its_clock_in_2100_is_refused_and_does_not_drag_the_stamps() {
    let t = ChannelTransport::default();
    let a = Node::start(config(1, 2, "", None), Arc::new(ManualClock::new(NOW)), &t)
        .await
        .unwrap();
    let year_2100 = 4_102_444_800_000;
    let b = Node::start(
        config(2, 2, "", None),
        Arc::new(ManualClock::new(year_2100)),
        &t,
    )
    .await
    .unwrap();
    all_live(&[&a, &b]).await;
    b.write_entity(backend("1"), WriteMode::Create, Snippets::AllowListed)
        .await
        .unwrap();
    wait_for("the future-stamped record is refused", || {
        a.stamps_refused() > 0
    })
    .await;
    assert!(a.get::<Backend>("web").is_none());
    // A's own writes keep stamps from its own clock.
    let k = key(83);
    a.register(k.clone(), Some(Duration::from_secs(30)), BTreeMap::new())
        .await
        .unwrap();
    let own = a.own_value(&registry::lease_key(&k)).await.unwrap();
    let Ok(record) = registry::decode(&registry::lease_key(&k), &own) else {
        panic!("not a record: {own}")
    };
    assert!(
        record.stamp().wall_ms() < NOW + 60_000,
        "stamp dragged to {:?}",
        record.stamp()
    );
    a.stop().await;
    b.stop().await;
}

/// Short horizons, so a test can go past them: dead nodes are forgotten after 1 s, deletions
/// after 10 s.
const SHORT_HORIZONS: &str = r#"
dead_node_grace = "1s"
tombstone_ttl = "10s"
max_clock_drift = "2s"
warmup = "20s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_longer_than_the_tombstone_ttl_does_not_resurrect_a_deleted_entity() {
    let dir = tempdir("resurrect");
    let t = ChannelTransport::default();
    let clock = ManualClock::new(NOW);
    let a = start_node(&t, &clock, config(1, 2, SHORT_HORIZONS, Some(&dir))).await;
    let b = start_node(&t, &clock, config(2, 2, SHORT_HORIZONS, None)).await;
    all_live(&[&a, &b]).await;
    a.write_entity(backend("1"), WriteMode::Create, Snippets::AllowListed)
        .await
        .unwrap();
    wait_for("both nodes have the backend", || {
        b.get::<Backend>("web").is_some()
    })
    .await;
    a.stop().await; // saves its snapshot, with the backend
    wait_for("the stopped node is forgotten", || {
        b.members().iter().all(|m| m.node_id != "n1")
    })
    .await;
    b.delete_entity::<Backend>("web").await.unwrap();
    clock.advance(11_000);
    let start = tokio::time::Instant::now();
    while b.own_value("b:web").await.is_some() {
        assert!(
            start.elapsed() < DEADLINE,
            "the tombstone is never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = start_node(&t, &clock, config(1, 2, SHORT_HORIZONS, Some(&dir))).await;
    // A restore would put it in the registry at the moment of the decision (and a snapshot
    // taken as recent would have put it there at the start): once the node has decided on what
    // it held back, it either has it or never will.
    wait_for("the restarted node decides on its old snapshot", || {
        a.is_ready() && a.held_back_entities() == 0
    })
    .await;
    assert!(
        a.get::<Backend>("web").is_none(),
        "the restarted node revived it"
    );
    assert!(b.get::<Backend>("web").is_none(), "its peer got it back");
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_restores_the_entities_of_an_old_snapshot() {
    let dir = tempdir("old-alone");
    let t = ChannelTransport::default();
    let clock = ManualClock::new(NOW);
    let a = start_node(&t, &clock, config(1, 1, SHORT_HORIZONS, Some(&dir))).await;
    a.write_entity(backend("1"), WriteMode::Create, Snippets::AllowListed)
        .await
        .unwrap();
    a.stop().await;
    clock.advance(3_600_000);
    let a = start_node(&t, &clock, config(1, 1, SHORT_HORIZONS, Some(&dir))).await;
    assert!(a.get::<Backend>("web").is_some());
    a.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_is_ready_only_once_every_lease_of_its_peer_has_arrived() {
    // About 8 MB of leases (each with 720 bytes of meta): over a hundred gossip datagrams of
    // 64 KB, so catching up takes many rounds (a timer of a few gossip intervals, or the first
    // sign of the peer, would call the node ready half-way).
    const LEASES: u16 = 10_000;
    let meta: BTreeMap<String, String> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|k| (k.to_string(), "x".repeat(120)))
        .collect();
    let extra = "warmup = \"60s\"\n[limits]\nmax_registrations = 20000\nmax_registrations_per_app = 20000\n";
    let every = Duration::from_millis(50);
    let t = ChannelTransport::default();
    let clock = ManualClock::new(NOW);
    let b = Node::start(
        config_gossiping_every(2, 2, extra, None, every),
        Arc::new(clock.clone()),
        &t,
    )
    .await
    .unwrap();
    for port in 1..=LEASES {
        b.register(key(port), Some(Duration::from_secs(600)), meta.clone())
            .await
            .unwrap();
    }
    let a = Node::start(
        config_gossiping_every(1, 2, extra, None, every),
        Arc::new(clock.clone()),
        &t,
    )
    .await
    .unwrap();
    let mut views = a.views();
    let first_ready = views
        .wait_for(|v| v.ready)
        .await
        .expect("the node publishes views")
        .clone();
    assert_eq!(
        first_ready.view.registrations.len(),
        LEASES as usize,
        "ready before every lease had arrived"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_counted_exactly_when_more_expire_at_once_than_the_stream_holds() {
    const LEASES: u16 = 9_000;
    let limits = "[limits]\nmax_registrations = 20000\nmax_registrations_per_app = 20000\n";
    let t = ChannelTransport::default();
    let clock = ManualClock::new(NOW);
    let node = Node::start(config(1, 1, limits, None), Arc::new(clock.clone()), &t)
        .await
        .unwrap();
    let mut slow = node.subscribe_events();
    for port in 1..=LEASES {
        node.register(key(port), Some(Duration::from_secs(5)), BTreeMap::new())
            .await
            .unwrap();
    }
    wait_for("every registration is online", || {
        node.event_counts()
            .iter()
            .any(|(k, n)| *k == "online" && *n == LEASES as u64)
    })
    .await;
    clock.advance(6_000);
    wait_for("every registration went offline, counted once each", || {
        node.event_counts()
            .iter()
            .any(|(k, n)| *k == "offline" && *n == LEASES as u64)
    })
    .await;
    // The subscriber that read nothing is told it fell behind.
    assert!(matches!(
        slow.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
    ));
    node.stop().await;
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("bender-consistency-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_one_clock_never_warn_about_each_other_during_a_write_burst() {
    // Both nodes read the same (system) clock: any offset they see is delay, and a burst of
    // writes on one delays its clock key behind every lease written before it.
    let extra = "[limits]\nmax_registrations = 100000\nmax_registrations_per_app = 100000\n";
    let every = Duration::from_millis(100);
    let t = ChannelTransport::default();
    let clock = Arc::new(bender::hlc::SystemClock);
    let a = Node::start(
        config_gossiping_every(1, 2, extra, None, every),
        clock.clone(),
        &t,
    )
    .await
    .unwrap();
    let b = Node::start(config_gossiping_every(2, 2, extra, None, every), clock, &t)
        .await
        .unwrap();
    all_live(&[&a, &b]).await;
    // 2 KB of meta per lease: about 30 leases per gossip datagram.
    let meta: BTreeMap<String, String> = (0..16)
        .map(|k| (format!("k{k}"), "x".repeat(128)))
        .collect();
    let writer = b.clone();
    let burst = tokio::spawn(async move {
        for p in 0..6_000u32 {
            let host = format!("10.{}.{}.1", p / 256, p % 256);
            let k = RegKey::new("web", "1", &host, 80).unwrap();
            writer
                .register(k, Some(Duration::from_secs(600)), meta.clone())
                .await
                .unwrap();
        }
    });
    let mut worst = 0i64;
    while !burst.is_finished() {
        for m in a.members().iter().filter(|m| m.node_id == "n2") {
            worst = worst.max(m.clock_offset_ms.unwrap_or(0).abs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (a.clock_warnings(), b.clock_warnings()),
        (0, 0),
        "a node warned about a peer on the same clock (worst estimate {worst} ms)"
    );
    assert!(
        worst <= 200,
        "estimate {worst} ms for a peer on the same clock"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_whose_hand_over_queue_overflows_rereads_and_misses_nothing() {
    // More keys than the callback's queue holds (16,384) arrive while the joining node's view
    // task is stalled until the queue overflows (a failpoint named after the node, whose id no
    // other test uses).
    const LEASES: u16 = 18_000;
    let extra = "warmup = \"60s\"\n[limits]\nmax_registrations = 40000\nmax_registrations_per_app = 40000\n";
    let every = Duration::from_millis(50);
    let t = ChannelTransport::default();
    let clock = ManualClock::new(NOW);
    let b = start_node(&t, &clock, config_with_peers(8, &[7], extra, None, every)).await;
    for port in 1..=LEASES {
        b.register(key(port), Some(Duration::from_secs(600)), BTreeMap::new())
            .await
            .unwrap();
    }
    fail::cfg("node.view.stall.n7", "1*return").unwrap();
    let a = start_node(&t, &clock, config_with_peers(7, &[8], extra, None, every)).await;
    wait_for("the joining node has every lease", || {
        a.registrations(Some("web"), None, None).len() == LEASES as usize
    })
    .await;
    assert!(
        a.resyncs() > 0,
        "the queue never overflowed: the test proves nothing"
    );
    a.stop().await;
    b.stop().await;
}
