//! The real node code under a seeded random workload, in virtual time: five nodes over chitchat's
//! `ChannelTransport`, registrations, deregistrations and entity writes through random nodes,
//! links cut and healed, time jumping ahead. After each healed, settled period every node must
//! have the same view; at the end, past every horizon, only entities remain. (chitchat picks its
//! gossip peers at random, so a seed fixes the workload, not every message: src/sim is the
//! replayable model; this runs the real thing.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bender::config::{Config, FileConfig, Overrides};
use bender::hlc::TokioClock;
use bender::model::{Backend, RegKey, Snippets};
use bender::node::{Node, WriteMode};
use chitchat::transport::ChannelTransport;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NODES: u8 = 5;

fn addr(i: u8) -> SocketAddr {
    ([10, 4, 0, i], 1730).into()
}

fn config(i: u8) -> Config {
    let file: FileConfig = toml::from_str(
        "dead_node_grace = \"2m\"\ntombstone_ttl = \"5m\"\nlease_gc_grace = \"30s\"\nwarmup = \"5s\"\n",
    )
    .unwrap();
    Config::resolve(
        file,
        Overrides {
            node_id: Some(format!("w{i}")),
            cluster_id: Some("workload".into()),
            gossip_listen: Some(addr(i)),
            seeds: (1..=NODES)
                .filter(|j| *j != i)
                .map(|j| addr(j).to_string())
                .collect(),
            gossip_interval: Some(Duration::from_millis(200)),
            ..Default::default()
        },
    )
    .unwrap()
}

async fn heal(t: &ChannelTransport) {
    for a in 1..=NODES {
        for b in 1..=NODES {
            if a != b {
                t.add_link(addr(a), addr(b)).await;
            }
        }
    }
}

/// Heals every link and lets the cluster settle; then every node must have the same view.
async fn settled_views_agree(t: &ChannelTransport, nodes: &[Node], seed: u64, step: usize) {
    heal(t).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let first = nodes[0].current_view();
    for n in &nodes[1..] {
        let v = n.current_view();
        assert_eq!(
            v.registrations.keys().collect::<Vec<_>>(),
            first.registrations.keys().collect::<Vec<_>>(),
            "seed {seed} step {step}: {} and w1 list different registrations",
            n.node_id()
        );
        assert_eq!(
            v.backends,
            first.backends,
            "seed {seed} step {step}: {} and w1 hold different backends",
            n.node_id()
        );
    }
}

async fn run(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t = ChannelTransport::default();
    let clock = TokioClock::new(1_800_000_000_000);
    let mut nodes = Vec::new();
    for i in 1..=NODES {
        let c = clock.skewed(rng.gen_range(-100..=100));
        nodes.push(Node::start(config(i), Arc::new(c), &t).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for step in 0..300 {
        let n = &nodes[rng.gen_range(0..nodes.len())];
        let port = rng.gen_range(1..=12u16);
        let key = RegKey::new("web", "1", "10.0.0.1", port).unwrap();
        match rng.gen_range(0..100) {
            0..=34 => {
                let ttl = Duration::from_millis(rng.gen_range(2_000..=20_000));
                n.register(key, Some(ttl), BTreeMap::new()).await.unwrap();
            }
            35..=44 => {
                n.deregister(key).await;
            }
            45..=59 => {
                let b: Backend = serde_json::from_value(serde_json::json!({
                    "name": format!("b{}", port % 3),
                    "app": "web",
                    "version": rng.gen_range(0..3).to_string(),
                }))
                .unwrap();
                let mode = if n.get::<Backend>(&b.name).is_some() {
                    WriteMode::Update
                } else {
                    WriteMode::Create
                };
                n.write_entity(b, mode, Snippets::AllowListed)
                    .await
                    .unwrap();
            }
            60..=64 => {
                let _ = n.delete_entity::<Backend>(&format!("b{}", port % 3)).await;
            }
            65..=69 => {
                let (a, b) = (rng.gen_range(1..=NODES), rng.gen_range(1..=NODES));
                if a != b {
                    t.remove_link(addr(a), addr(b)).await;
                }
            }
            70..=72 => heal(&t).await,
            73..=74 => settled_views_agree(&t, &nodes, seed, step).await,
            _ => tokio::time::sleep(Duration::from_millis(rng.gen_range(10..1_500))).await,
        }
    }
    settled_views_agree(&t, &nodes, seed, 300).await;
    // Past every lease, grace and tombstone: only entities remain, in every keyspace.
    tokio::time::sleep(Duration::from_secs(7 * 60)).await;
    let entities = nodes[0].counts().1;
    for n in &nodes {
        let (live, backends, _, held) = n.counts();
        assert_eq!(
            (live, held),
            (0, 0),
            "seed {seed}: {} kept leases",
            n.node_id()
        );
        assert_eq!(backends, entities, "seed {seed}: {}", n.node_id());
        assert_eq!(
            n.own_key_count().await,
            2 + entities,
            "seed {seed}: {} keeps more than its entities and metadata",
            n.node_id()
        );
    }
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn five_real_nodes_under_a_seeded_workload_agree_after_every_heal_and_end_bounded() {
    for seed in [1, 2] {
        run(seed).await;
    }
}
