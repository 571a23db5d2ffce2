//! A node restarted in a cluster holding 60,000 live leases, against real `bender agent`
//! processes on loopback: how long until it is ready, and how many registrations it has live
//! when it says so (the target: all of them, within 3 s), with its data dir and without.
//!
//! Run: `cargo build --release && cargo run --release --example bench_restart`

#[path = "common/mod.rs"]
mod common;
use common::{binary, free_port};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NODES: usize = 3;
const LEASES: usize = 60_000;

struct Cluster {
    dir: PathBuf,
    ports: Vec<(u16, u16)>,
    children: Vec<Option<Child>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn api(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i].0)
    }

    fn spawn(&mut self, i: usize) {
        let config = self.dir.join("bender.toml");
        let (api, gossip) = self.ports[i];
        let mut cmd = Command::new(binary());
        cmd.args(["agent", "--config"])
            .arg(&config)
            .args([
                "--node-id",
                &format!("restart{i}"),
                "--cluster-id",
                "restart",
            ])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--gossip-listen", &format!("127.0.0.1:{gossip}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("data{i}")))
            .env("BENDER_LOG", "warn")
            .stdout(Stdio::null());
        for (j, (_, g)) in self.ports.iter().enumerate() {
            if j != i {
                cmd.args(["--seed", &format!("127.0.0.1:{g}")]);
            }
        }
        self.children[i] = Some(cmd.spawn().unwrap());
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn status(api: &str) -> Option<Value> {
    ureq::get(&format!("{api}/v1/status"))
        .call()
        .ok()?
        .body_mut()
        .read_json::<Value>()
        .ok()
}

fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Registers `count` leases (TTL 30 min) through `api`, from 4 threads.
fn load(api: &str, first: usize, count: usize) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let api = api.to_string();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                for n in (first + t..first + count).step_by(4) {
                    let body = format!(
                        r#"{{"app":"bench","version":"1","host":"10.{}.{}.{}","port":80,"ttl":"30m"}}"#,
                        n / 65536,
                        (n / 256) % 256,
                        n % 256
                    );
                    let r = agent
                        .post(&format!("{api}/v1/registrations"))
                        .header("content-type", "application/json")
                        .send(body.as_str());
                    assert!(r.is_ok(), "registration {n} refused: {r:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Restarts node 0 (after `prepare` on its data dir) and reports when it is ready and how many
/// registrations it has live then.
fn restart(c: &mut Cluster, what: &str, prepare: impl FnOnce(&Path)) {
    c.kill(0);
    prepare(&c.dir.join("data0"));
    let start = Instant::now();
    c.spawn(0);
    let api = c.api(0);
    let mut first_ready = None;
    wait_until(
        "the restarted node is ready",
        Duration::from_secs(60),
        || match status(&api) {
            Some(s) if s["ready"] == true => {
                first_ready = Some((
                    start.elapsed(),
                    s["registrations_live"].as_u64().unwrap_or(0),
                ));
                true
            }
            _ => false,
        },
    );
    let (after, live) = first_ready.unwrap();
    println!(
        "restart {what}: ready {:.0} ms after start, with {live} of {LEASES} registrations live{}",
        after.as_secs_f64() * 1000.0,
        if live as usize >= LEASES {
            ""
        } else {
            "  <-- FEWER"
        }
    );
}

fn main() {
    let dir = std::env::temp_dir().join(format!("bender-bench-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bender.toml"),
        "[limits]\nmax_registrations = 100000\nmax_registrations_per_app = 100000\n",
    )
    .unwrap();
    let mut c = Cluster {
        dir,
        ports: (0..NODES).map(|_| (free_port(), free_port())).collect(),
        children: (0..NODES).map(|_| None).collect(),
    };
    for i in 0..NODES {
        c.spawn(i);
    }
    wait_until("the cluster forms", Duration::from_secs(30), || {
        (0..NODES).all(|i| {
            status(&c.api(i)).is_some_and(|s| s["members_live"] == NODES && s["ready"] == true)
        })
    });
    let started = Instant::now();
    let per_node = LEASES / NODES;
    let loaders: Vec<_> = (0..NODES)
        .map(|i| {
            let api = c.api(i);
            std::thread::spawn(move || load(&api, i * per_node, per_node))
        })
        .collect();
    for l in loaders {
        l.join().unwrap();
    }
    wait_until(
        "every node has every lease",
        Duration::from_secs(60),
        || {
            (0..NODES).all(|i| {
                status(&c.api(i)).is_some_and(|s| s["registrations_live"] == LEASES as u64)
            })
        },
    );
    println!(
        "loaded {LEASES} leases over {NODES} nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A maintenance round or two, so the snapshot holds the node's leases.
    std::thread::sleep(Duration::from_secs(2));
    restart(&mut c, "with its data dir", |_| {});
    wait_until(
        "node 0 has every lease again",
        Duration::from_secs(60),
        || status(&c.api(0)).is_some_and(|s| s["registrations_live"] == LEASES as u64),
    );
    restart(&mut c, "without its data dir", |d| {
        let _ = std::fs::remove_dir_all(d);
    });
}
