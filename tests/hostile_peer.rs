//! A peer on the gossip network is input too: a raw chitchat instance (no bender code) joins a
//! real node over chitchat's in-memory transport and publishes records no client could have
//! written. The node refuses and counts them, and keeps the good ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bender::config::{Config, FileConfig, Overrides};
use bender::hlc::SystemClock;
use bender::model::{Backend, Frontend};
use bender::node::Node;
use chitchat::transport::ChannelTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatId, FailureDetectorConfig};

const DEADLINE: Duration = Duration::from_secs(20);

fn addr(i: u8) -> SocketAddr {
    ([10, 0, 9, i], 1730).into()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_no_client_could_write_are_refused_and_counted_and_good_ones_joined() {
    let transport = ChannelTransport::with_mtu(65_507);
    let config = Config::resolve(
        FileConfig::default(),
        Overrides {
            node_id: Some("honest".into()),
            cluster_id: Some("hostile-test".into()),
            gossip_listen: Some(addr(1)),
            seeds: vec![addr(2).to_string()],
            gossip_interval: Some(Duration::from_millis(50)),
            ..Default::default()
        },
    )
    .unwrap();
    let node = Node::start(config, Arc::new(SystemClock), &transport)
        .await
        .unwrap();

    let stamp = r#"[1700000000000,0,"evil"]"#;
    let records: Vec<(String, String)> = vec![
        // A newline in an extra line: config injection.
        (
            "b:web".into(),
            format!(
                r#"{{"s":{stamp},"v":{{"name":"web","app":"web","version":"1","extra":["timeout server 1s\nbackend evil"]}}}}"#
            ),
        ),
        // A backend whose name is not its key.
        (
            "b:api".into(),
            format!(r#"{{"s":{stamp},"v":{{"name":"other","app":"api","version":"1"}}}}"#),
        ),
        // A frontend named with a space.
        (
            "f:w w".into(),
            format!(r#"{{"s":{stamp},"v":{{"name":"w w","backend":"web"}}}}"#),
        ),
        // A lease with a sample fetch in its meta.
        (
            "r:web/1/10.0.0.1/80".into(),
            format!(r#"{{"s":{stamp},"d":99999999999999,"t":4000,"m":{{"zone":"%[env(HOME)]"}}}}"#),
        ),
        // A lease for a host that is an address in disguise.
        (
            "r:web/1/2130706433/80".into(),
            format!(r#"{{"s":{stamp},"d":99999999999999,"t":4000}}"#),
        ),
        // Not even JSON.
        ("b:junk".into(), "{{{".into()),
        // A good record, which must still be joined.
        (
            "f:www".into(),
            format!(r#"{{"s":{stamp},"v":{{"name":"www","backend":"web","bind":"*:80"}}}}"#),
        ),
    ];
    let evil = spawn_chitchat(
        ChitchatConfig {
            chitchat_id: ChitchatId::new("evil".to_string(), 1, addr(2)),
            cluster_id: "hostile-test".into(),
            gossip_interval: Duration::from_millis(50),
            listen_addr: addr(2),
            seed_nodes: vec![addr(1).to_string()],
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        },
        records,
        &transport,
    )
    .await
    .unwrap();

    wait_for("the good record is joined", || {
        node.get::<Frontend>("www").is_some()
    })
    .await;
    wait_for("the six bad records are refused", || {
        node.records_refused() >= 6
    })
    .await;
    assert_eq!(node.records_refused(), 6);
    assert!(node.get::<Backend>("web").is_none());
    assert!(node.get::<Backend>("api").is_none());
    assert!(node.get::<Backend>("other").is_none());
    assert!(node.list::<Frontend>().iter().all(|f| f.name == "www"));
    assert!(node.registrations(None, None, None).is_empty());
    evil.shutdown().await.unwrap();
    node.stop().await;
}
