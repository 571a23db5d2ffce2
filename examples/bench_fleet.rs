//! How long a blue/green switch takes to be in place everywhere, as the fleet status says it:
//! three `bender agent` processes (release build) on loopback, each driving its own real
//! HAProxy (default template, runtime API on, default debounce). Backends blue and green each
//! have a live server; frontend www is switched between them 50 times. For each switch: time
//! from the switch's 2xx until the node that took it reports, in `/v1/fleet`, every load
//! balancer SYNCED on a view with the switch (what `--wait` waits for). Prints p50/p99/max.
//!
//! Run: `cargo build --release && cargo run --release --example bench_fleet` (needs haproxy).

#[path = "common/mod.rs"]
mod common;
use common::{binary, call, free_port, Procs};

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SWITCHES: usize = 50;

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn all_synced(api: &str, before: &str) -> bool {
    let (status, f) = call("GET", &format!("{api}/v1/fleet"), None);
    status == 200
        && f["entities"].as_str() != Some(before)
        && f["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 3 && n.iter().all(|e| e["state"] == "SYNCED"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let root = PathBuf::from("/tmp/bender-bench-fleet");
    let _ = std::fs::remove_dir_all(&root);
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut procs = Procs(Vec::new());
    let mut apis = Vec::new();
    for (i, (api, gossip)) in ports.iter().enumerate() {
        let dir = root.join(format!("lb{i}"));
        let config = common::write_node_files(&dir, true);
        procs.0.push(
            Command::new("haproxy")
                .args(["-W", "-S"])
                .arg(dir.join("master.sock"))
                .arg("-f")
                .arg(dir.join("haproxy.cfg"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("haproxy"),
        );
        let mut cmd = Command::new(binary());
        cmd.arg("agent")
            .arg("--config")
            .arg(&config)
            .args([
                "--node-id",
                &format!("lb{i}"),
                "--cluster-id",
                "bench-fleet",
            ])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--gossip-listen", &format!("127.0.0.1:{gossip}")])
            .env("BENDER_LOG", "warn")
            .stdout(Stdio::null());
        for (j, (_, g)) in ports.iter().enumerate() {
            if j != i {
                cmd.args(["--seed", &format!("127.0.0.1:{g}")]);
            }
        }
        procs.0.push(cmd.spawn().expect("bender"));
        apis.push(format!("http://127.0.0.1:{api}"));
    }
    for api in &apis {
        wait("the node", || {
            ureq::get(&format!("{api}/health")).call().is_ok()
        });
    }
    let servers: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    for (name, l) in ["blue", "green"].iter().zip(&servers) {
        let (s, _) = call(
            "POST",
            &format!("{}/backends", apis[0]),
            Some(&format!(
                r#"{{"name":"{name}","app":"{name}","version":"1"}}"#
            )),
        );
        assert_eq!(s, 201);
        let port = l.local_addr().unwrap().port();
        let (s, _) = call(
            "POST",
            &format!("{}/v1/registrations", apis[0]),
            Some(&format!(
                r#"{{"app":"{name}","version":"1","host":"127.0.0.1","port":{port},"ttl":"1h"}}"#
            )),
        );
        assert_eq!(s, 200);
    }
    let fe = free_port();
    let (s, _) = call(
        "POST",
        &format!("{}/frontends", apis[0]),
        Some(&format!(
            r#"{{"name":"www","backend":"blue","bind":"127.0.0.1:{fe}"}}"#
        )),
    );
    assert_eq!(s, 201);
    wait("the fleet synced", || all_synced(&apis[0], ""));
    let mut took = Vec::new();
    for n in 0..SWITCHES {
        let to = if n % 2 == 0 { "green" } else { "blue" };
        let (s, v) = call(
            "POST",
            &format!("{}/v1/frontends/www/switch", apis[0]),
            Some(&format!(r#"{{"backend":"{to}"}}"#)),
        );
        let at = Instant::now();
        assert_eq!(s, 200, "{v}");
        let before = v["entities_before"].as_str().unwrap().to_string();
        wait("every LB synced on the switch", || {
            all_synced(&apis[0], &before)
        });
        took.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "switch 2xx -> all 3 LBs SYNCED ({SWITCHES} frontend switches, each a reload): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took[took.len() - 1]
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&root);
}
