//! Benchmarks of the node, against real `bender agent` processes on loopback:
//! 1. renewals per second on one node under wrk (old client route, 1,000 registrations);
//! 2. time from a registration's 2xx on one node until every node of 3 and of 5 has it (SSE);
//! 3. how long after its deadline an unrenewed registration goes offline on every node.
//!
//! Run: `cargo build --release && cargo run --release --example bench_cluster`
//! (needs `wrk` for part 1: `apt-get install -y wrk`; part 1 is skipped without it).

#[path = "common/mod.rs"]
mod common;
use common::{binary, free_port, now_ms, subscribe};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;

struct Cluster {
    children: Vec<Child>,
    apis: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(n: usize) -> Cluster {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let mut children = Vec::new();
    let mut apis = Vec::new();
    for (i, (api, gossip)) in ports.iter().enumerate() {
        let mut cmd = Command::new(binary());
        cmd.args([
            "agent",
            "--node-id",
            &format!("bench{i}"),
            "--cluster-id",
            "bench",
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
        children.push(cmd.spawn().unwrap());
        apis.push(format!("http://127.0.0.1:{api}"));
    }
    let c = Cluster { children, apis };
    let deadline = Instant::now() + Duration::from_secs(30);
    for api in &c.apis {
        loop {
            let members = ureq::get(&format!("{api}/v1/members"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok());
            let live = members
                .as_ref()
                .and_then(|m| m.as_array())
                .map(|a| a.iter().filter(|m| m["live"] == true).count());
            if live == Some(n) {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not form");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    c
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn report(what: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{what}: n={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

fn bench_renewals() {
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("renewals: skipped (wrk is not installed)");
        return;
    }
    let c = start(1);
    let script = std::env::temp_dir().join("bender-bench-renew.lua");
    std::fs::write(
        &script,
        r#"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/registrations/bench/1/10.0.0.1/" .. (counter % 1000 + 1))
end
"#,
    )
    .unwrap();
    let out = Command::new("wrk")
        .args(["-t2", "-c64", "-d10s", "-s"])
        .arg(&script)
        .arg(&c.apis[0])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .unwrap_or("Requests/sec: ?");
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .unwrap_or("no errors");
    println!("renewals on one node (wrk -t2 -c64 -d10s, 1,000 registrations): {rps}; {errors}");
}

fn bench_propagation(n: usize, count: usize) {
    let c = start(n);
    let streams: Vec<_> = c.apis.iter().map(|a| subscribe(a)).collect();
    let mut latencies = Vec::new();
    for i in 0..count {
        let writer = i % n;
        let body = format!(
            r#"{{"app":"prop","version":"1","host":"10.0.0.1","port":{},"ttl":"60s"}}"#,
            i + 1
        );
        let t0 = now_ms();
        let r = ureq::post(&format!("{}/v1/registrations", c.apis[writer]))
            .header("content-type", "application/json")
            .send(&body)
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let t_ok = now_ms().max(t0);
        let mut last = t_ok;
        for rx in &streams {
            loop {
                let (name, data, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
                if name == "online" && data["registration"]["port"] == (i + 1) as u64 {
                    last = last.max(at);
                    break;
                }
            }
        }
        latencies.push(last - t_ok);
    }
    report(
        &format!("propagation 2xx -> listed on all {n} nodes"),
        latencies,
    );
}

fn bench_expiry(n: usize, count: usize) {
    let c = start(n);
    let streams: Vec<_> = c.apis.iter().map(|a| subscribe(a)).collect();
    let mut deadlines = std::collections::HashMap::new();
    for i in 0..count {
        let body = format!(
            r#"{{"app":"exp","version":"1","host":"10.0.0.1","port":{},"ttl":"{}ms"}}"#,
            i + 1,
            300 + (i * 7) % 400
        );
        let mut r = ureq::post(&format!("{}/v1/registrations", c.apis[i % n]))
            .header("content-type", "application/json")
            .send(&body)
            .unwrap();
        let v: Value = r.body_mut().read_json().unwrap();
        let expires = humantime::parse_rfc3339(v["expires"].as_str().unwrap()).unwrap();
        let ms = expires.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0;
        deadlines.insert((i + 1) as u64, ms);
    }
    let mut lags = Vec::new();
    for rx in &streams {
        let mut seen = 0;
        while seen < count {
            let (name, data, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            if name == "offline" {
                let port = data["registration"]["port"].as_u64().unwrap();
                lags.push(at - deadlines[&port]);
                seen += 1;
            }
        }
    }
    report(
        &format!("expiry: deadline -> offline on each of {n} nodes"),
        lags,
    );
}

fn main() {
    println!(
        "bender benchmarks ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    bench_renewals();
    bench_propagation(3, 300);
    bench_propagation(5, 300);
    bench_expiry(3, 200);
    bench_expiry(5, 200);
}
