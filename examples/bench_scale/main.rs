//! Scale benchmarks of the node, against real `bender agent` processes on loopback:
//! 1. `lone`: one node takes N distinct registrations (wrk, old client route): new
//!    registrations/s, RSS and idle CPU with N live; then a fresh node whose N leases (TTL 20 s)
//!    expire, and its RSS 30 s, 60 s and 120 s after the deadline.
//! 2. `cluster`: 3 nodes, N new registrations into node 1: rate until node 1 lists N, time until
//!    nodes 2 and 3 do; idle CPU of each; renewals/s of the N into node 1 (wrk, 10 s), and both
//!    rates on a lone node for comparison; UDP receive-buffer drops (`RcvbufErrors`).
//! 3. `gossip`: 3 nodes, M leases (TTL 10 s) renewed every 2 s into node 1 at a paced rate:
//!    gossip bytes/s each node sends and receives over 30 s; then K of them stop renewing, and
//!    how late after its deadline each goes offline on every node (SSE).
//!
//! Run: `cargo build --release && cargo run --release --example bench_scale -- [lone|cluster|gossip|all]`
//! (default all) with `--leases N` (100000), `--gossip-leases M` (10000), `--gossip-stopped K`
//! (100), `--idle-secs S` (20). Needs `wrk` for `lone` and `cluster`. The nodes' stderr
//! (BENDER_LOG=warn) goes to `$TMPDIR/bender-bench-scale/<cluster><node>.log`.

#[path = "../common/mod.rs"]
mod common;
mod nodes;
use common::subscribe;
use nodes::*;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;

/// wrk's shape in every run here (as in bench_cluster).
const WRK: [&str; 2] = ["-t2", "-c64"];
const WRK_THREADS: usize = 2;

struct Opts {
    phase: String,
    leases: usize,
    gossip_leases: usize,
    gossip_stopped: usize,
    idle: Duration,
}

fn opts() -> Opts {
    const USAGE: &str = "usage: bench_scale [lone|cluster|gossip|all] [--leases N] \
        [--gossip-leases M] [--gossip-stopped K] [--idle-secs S]";
    let mut o = Opts {
        phase: "all".into(),
        leases: 100_000,
        gossip_leases: 10_000,
        gossip_stopped: 100,
        idle: Duration::from_secs(20),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> usize {
            let v = args.next().unwrap_or_default();
            v.parse().unwrap_or_else(|_| panic!("{a}: {v:?}: {USAGE}"))
        };
        match a.as_str() {
            "--leases" => o.leases = num(),
            "--gossip-leases" => o.gossip_leases = num(),
            "--gossip-stopped" => o.gossip_stopped = num(),
            "--idle-secs" => o.idle = Duration::from_secs(num() as u64),
            "lone" | "cluster" | "gossip" | "all" => o.phase = a,
            _ => panic!("{a:?}: {USAGE}"),
        }
    }
    assert!(o.gossip_stopped <= o.gossip_leases, "{USAGE}");
    o
}

/// wrk for `duration` with a script cycling over `n` distinct registrations: request k of
/// thread t is id (t + threads * k) mod n, so the first n requests of all threads are n distinct
/// ids (new registrations) and later ones renew them. Id i is app `scale`, host 10.x.y.z
/// numbered i / 10, port 8000 + i mod 10.
fn wrk(n: usize, node: &Node, duration: &str) -> Command {
    let script = std::env::temp_dir().join(format!("bender-bench-scale-{n}.lua"));
    let lua = format!(
        r#"
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local counter = 0
function request()
  local id = (tid + {WRK_THREADS} * counter) % {n}
  counter = counter + 1
  local h = math.floor(id / 10)
  local host = math.floor(h / 65536) % 256 .. "." .. math.floor(h / 256) % 256 .. "." .. h % 256
  return wrk.format("POST", "/registrations/scale/1/10." .. host .. "/" .. (8000 + id % 10))
end
"#
    );
    std::fs::write(&script, lua).unwrap();
    let mut cmd = Command::new("wrk");
    cmd.args(WRK)
        .arg(format!("-d{duration}"))
        .arg("-s")
        .arg(script);
    cmd.arg(&node.api)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What wrk said: requests/s, its "N requests in T" line and its error lines.
struct WrkOut {
    rps: f64,
    requests: String,
    errors: String,
}

fn wrk_out(out: Output) -> WrkOut {
    let lossy = String::from_utf8_lossy;
    let text = format!("{}{}", lossy(&out.stdout), lossy(&out.stderr));
    let rps = text.lines().find_map(|l| l.strip_prefix("Requests/sec:"));
    let rps = rps.and_then(|v| v.trim().parse().ok()).unwrap_or(f64::NAN);
    let requests = text.lines().find(|l| l.contains(" requests in "));
    let requests = requests.unwrap_or("no request count").trim().to_string();
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("rror"));
    let errors: Vec<&str> = errors.map(str::trim).collect();
    let errors = if errors.is_empty() {
        vec!["no errors"]
    } else {
        errors
    };
    WrkOut {
        rps,
        requests,
        errors: errors.join("; "),
    }
}

/// Seconds from the start of a fill until each node listed all its registrations (None: not
/// within the limit, or not within 120 s after wrk stopped), and what wrk said.
struct Fill {
    secs: Vec<Option<f64>>,
    wrk: WrkOut,
}

/// Registers `n` distinct leases into `nodes[0]` with wrk, stopped (SIGINT, so it reports) as
/// soon as `nodes[0]` lists them (or at a time limit); then waits for every node to list them.
fn fill(nodes: &[Node], n: usize) -> Fill {
    let limit = Duration::from_secs(60 + n as u64 / 1_000);
    let start = Instant::now();
    let duration = format!("{}s", limit.as_secs() + 10);
    let mut wrk = wrk(n, &nodes[0], &duration).spawn().unwrap();
    let mut secs: Vec<Option<f64>> = vec![None; nodes.len()];
    let check = |secs: &mut Vec<Option<f64>>| {
        for (i, node) in nodes.iter().enumerate() {
            if secs[i].is_none() && node.live() >= Some(n) {
                secs[i] = Some(start.elapsed().as_secs_f64());
            }
        }
    };
    poll(limit, || {
        check(&mut secs);
        secs[0].is_some() || matches!(wrk.try_wait(), Ok(Some(_)))
    });
    let pid = nix::unistd::Pid::from_raw(wrk.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let wrk = wrk_out(wrk.wait_with_output().unwrap());
    let stopped = start.elapsed().as_secs_f64();
    poll(Duration::from_secs(120), || {
        check(&mut secs);
        secs.iter().all(Option::is_some)
    });
    let (requests, errors) = (&wrk.requests, &wrk.errors);
    if secs[0].is_none_or(|s| s > stopped) {
        println!("  wrk stopped at {stopped:.1} s: {requests}; {errors}");
    }
    for (i, node) in nodes.iter().enumerate() {
        let (live, log) = (node.live_text(), node.log_tail(10));
        match secs[i] {
            None => println!("  node {} lists {live}, not {n}; log tail:\n{log}", i + 1),
            Some(s) if s > stopped => println!("  node {} listed {n} at {s:.1} s", i + 1),
            Some(_) => {}
        }
    }
    Fill { secs, wrk }
}

fn rate(n: usize, secs: Option<f64>) -> String {
    let rate = |s| format!("{:.0}/s ({n} in {s:.2} s)", n as f64 / s);
    secs.map_or("not reached".into(), rate)
}

fn phase_lone(o: &Opts) {
    let n = o.leases;
    let nodes = start("lone", 1, "300s");
    let f = fill(&nodes, n);
    let (rate, errors) = (rate(n, f.secs[0]), f.wrk.errors);
    println!(
        "lone: new registrations: {rate} [wrk {}: {errors}]",
        WRK.join(" ")
    );
    let (live, rss) = (nodes[0].live_text(), nodes[0].rss_mb());
    println!("lone: RSS with {live} live: {rss:.1} MB");
    let (idle, secs) = (idle_cpu(&nodes, o.idle), o.idle.as_secs());
    println!("lone: idle CPU with {n} live over {secs} s: {idle} of a core");
    drop(nodes);

    let nodes = start("expiry", 1, "20s");
    let f = fill(&nodes, n);
    // wrk has stopped: no lease was renewed after this.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (rate, rss) = (self::rate(n, f.secs[0]), nodes[0].rss_mb());
    println!("lone expiry: {n} leases (TTL 20 s) in {rate}, RSS with all live: {rss:.1} MB");
    let expired = poll(Duration::from_secs(60), || nodes[0].live() == Some(0));
    let after = Instant::now()
        .saturating_duration_since(deadline)
        .as_secs_f64();
    let after = if expired {
        format!("{after:.1} s")
    } else {
        "not".into()
    };
    let rss = nodes[0].rss_mb();
    println!("lone expiry: live = 0 {after} after the deadline, RSS {rss:.1} MB");
    for s in [30, 60, 120] {
        let at = deadline + Duration::from_secs(s);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let (rss, live) = (nodes[0].rss_mb(), nodes[0].live_text());
        let held = nodes[0].metric("bender_registrations_held");
        let held = held.unwrap_or(f64::NAN);
        // Later than +s if waiting for live = 0 took longer.
        let late = Instant::now().duration_since(at).as_secs_f64();
        println!(
            "lone expiry: +{s} s after the deadline (+{late:.1} s late): RSS {rss:.1} MB \
            (live {live}, held {held})"
        );
    }
}

/// wrk renewing the `n` registrations `nodes[0]` holds for 10 s.
fn renewals(nodes: &[Node], n: usize) -> WrkOut {
    wrk_out(wrk(n, &nodes[0], "10s").output().unwrap())
}

fn phase_cluster(o: &Opts) {
    let n = o.leases;
    let drops = udp_rcvbuf_errors();
    let nodes = start("cluster", 3, "300s");
    let f = fill(&nodes, n);
    let (rate, errors) = (rate(n, f.secs[0]), &f.wrk.errors);
    println!(
        "cluster: new registrations into node 1: {rate} [wrk {}: {errors}]",
        WRK.join(" ")
    );
    let secs = |s: Option<f64>| s.map_or("not reached".into(), |s| format!("{s:.2} s"));
    let (s2, s3) = (secs(f.secs[1]), secs(f.secs[2]));
    println!("cluster: time from the start until node 2 lists {n}: {s2}, node 3: {s3}");
    let (idle, secs) = (idle_cpu(&nodes, o.idle), o.idle.as_secs());
    println!("cluster: idle CPU with {n} live over {secs} s: {idle} of a core");
    println!("cluster: RSS with {n} live: {}", rss_all(&nodes));
    let r = renewals(&nodes, n);
    let (rps, errors) = (r.rps, &r.errors);
    println!("cluster: renewals of {n} into node 1 (wrk -d10s): {rps:.0} requests/s [{errors}]");
    println!("cluster: RSS after the renewals: {}", rss_all(&nodes));
    drop(nodes);
    let drops = udp_rcvbuf_errors() - drops;
    println!("cluster: UDP RcvbufErrors during the 3-node runs: {drops}");

    let lone = start("cmp", 1, "300s");
    let lf = fill(&lone, n);
    let lr = renewals(&lone, n);
    let (new, rps, errors) = (self::rate(n, lf.secs[0]), lr.rps, &lr.errors);
    println!(
        "cluster: lone node for comparison: new {new}, renewals {rps:.0} requests/s [{errors}]"
    );
    if let (Some(c), Some(l)) = (f.secs[0], lf.secs[0]) {
        let (new, renew) = (l / c * 100.0, r.rps / lr.rps * 100.0);
        println!("cluster: 3 nodes / lone: new registrations {new:.0}%, renewals {renew:.0}%");
    }
}

fn percentiles(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let (n, max) = (v.len(), v.last().copied().unwrap_or(f64::NAN));
    if n == 0 {
        return "n=0".into();
    }
    format!(
        "n={n} p50={:.1}ms p99={:.1}ms max={max:.1}ms",
        p(0.5),
        p(0.99)
    )
}

/// The paced renewers of the gossip phase, and what they did.
#[derive(Default)]
struct Renewers {
    /// Lease ids below this stop being renewed once `stop` is set.
    stopped: usize,
    stop: AtomicBool,
    done: AtomicBool,
    sent: AtomicU64,
    errors: AtomicU64,
    max_lag_us: AtomicU64,
    max_latency_us: AtomicU64,
    sum_latency_us: AtomicU64,
    slow: AtomicU64,
    /// The deadline (`expires`, ms since the epoch) of each stopped lease's last renewal.
    expires_ms: Vec<AtomicU64>,
}

fn gossip_key(id: usize) -> (String, u16) {
    let h = id / 10;
    let host = format!("10.1.{}.{}", h / 256 % 256, h % 256);
    (host, 9000 + (id % 10) as u16)
}

/// Thread `t` of `threads` renews leases t, t + threads, ... spread evenly over each `period`,
/// on one keep-alive connection; late sends go out at once (and count as lag).
fn renew_loop(r: &Renewers, api: &str, t: usize, threads: usize, m: usize, period: Duration) {
    let (agent, url) = (http(), format!("{api}/v1/registrations"));
    let mine: Vec<usize> = (t..m).step_by(threads).collect();
    let start = Instant::now() + period.mul_f64(t as f64 / threads as f64 / mine.len() as f64);
    for k in 0.. {
        let (cycle, slot) = (k / mine.len(), k % mine.len());
        let due = start + period * cycle as u32 + period * slot as u32 / mine.len() as u32;
        let lag = Instant::now().saturating_duration_since(due).as_micros() as u64;
        r.max_lag_us.fetch_max(lag, Relaxed);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let id = mine[slot];
        if r.done.load(Relaxed) {
            return;
        } else if id < r.stopped && r.stop.load(Relaxed) {
            continue;
        }
        let (host, port) = gossip_key(id);
        let body = format!(
            r#"{{"app":"gossip","version":"1","host":"{host}","port":{port},"ttl":"10s"}}"#
        );
        let sent = Instant::now();
        let post = agent.post(&url).header("content-type", "application/json");
        let resp = post.send(&body).ok();
        let v = resp.and_then(|mut resp| resp.body_mut().read_json::<Value>().ok());
        let latency = sent.elapsed().as_micros() as u64;
        r.max_latency_us.fetch_max(latency, Relaxed);
        r.sum_latency_us.fetch_add(latency, Relaxed);
        r.slow.fetch_add((latency > 100_000) as u64, Relaxed);
        let Some(v) = v else {
            r.errors.fetch_add(1, Relaxed);
            continue;
        };
        r.sent.fetch_add(1, Relaxed);
        if id < r.stopped {
            let expires = humantime::parse_rfc3339(v["expires"].as_str().unwrap()).unwrap();
            let ms = expires.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            r.expires_ms[id].store(ms, Relaxed);
        }
    }
}

fn phase_gossip(o: &Opts) {
    let (m, k) = (o.gossip_leases, o.gossip_stopped);
    let (period, threads) = (Duration::from_secs(2), 32.min(m.max(1)));
    let nodes = start("gossip", 3, "10s");
    let expires_ms = (0..k).map(|_| AtomicU64::new(0)).collect();
    let r = Arc::new(Renewers {
        stopped: k,
        expires_ms,
        ..Default::default()
    });
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (r, api) = (r.clone(), nodes[0].api.clone());
            std::thread::spawn(move || renew_loop(&r, &api, t, threads, m, period))
        })
        .collect();
    let all_live = poll(Duration::from_secs(30), || {
        nodes.iter().all(|n| n.live() >= Some(m))
    });
    assert!(all_live, "gossip: not every node lists {m}");
    // Warm-up: 10 s of steady renewals before measuring.
    std::thread::sleep(Duration::from_secs(10));
    let names = ["sent_bytes", "sent_datagrams", "received_bytes"];
    let names = names.map(|name| format!("bender_gossip_{name}_total"));
    let of = |n: &Node| names.clone().map(|m| n.metric(&m).unwrap_or(f64::NAN));
    let counters = || -> Vec<[f64; 3]> { nodes.iter().map(of).collect() };
    let (c0, t0) = (counters(), Instant::now());
    let (sent0, errors0) = (r.sent.load(Relaxed), r.errors.load(Relaxed));
    for a in [&r.max_lag_us, &r.max_latency_us, &r.sum_latency_us, &r.slow] {
        a.store(0, Relaxed);
    }
    std::thread::sleep(Duration::from_secs(30));
    let (c1, secs) = (counters(), t0.elapsed().as_secs_f64());
    let rate = (r.sent.load(Relaxed) - sent0) as f64 / secs;
    let errors = r.errors.load(Relaxed) - errors0;
    let lag = r.max_lag_us.load(Relaxed) as f64 / 1000.0;
    let latency = r.max_latency_us.load(Relaxed) as f64 / 1000.0;
    let requests = (r.sent.load(Relaxed) - sent0) as f64 + errors as f64;
    let mean = r.sum_latency_us.load(Relaxed) as f64 / 1000.0 / requests;
    let slow = r.slow.load(Relaxed);
    println!(
        "gossip: {m} leases (TTL 10 s) renewed every 2 s into node 1 by {threads} threads: \
        {rate:.0} renewals/s over {secs:.1} s, {errors} errors; max schedule lag {lag:.1} ms, \
        latency mean {mean:.1} ms, max {latency:.1} ms, {slow} slower than 100 ms"
    );
    for (i, (c0, c1)) in c0.iter().zip(&c1).enumerate() {
        let d: Vec<f64> = (0..3).map(|j| (c1[j] - c0[j]) / secs).collect();
        let (sent, dgrams, received) = (d[0] / 1000.0, d[1], d[2] / 1000.0);
        println!(
            "gossip: node {}: sent {sent:.1} KB/s ({dgrams:.0} datagrams/s), \
            received {received:.1} KB/s",
            i + 1
        );
    }

    let streams: Vec<_> = nodes.iter().map(|n| subscribe(&n.api)).collect();
    let victims: HashMap<(String, u16), usize> = (0..k).map(|id| (gossip_key(id), id)).collect();
    r.stop.store(true, Relaxed);
    let give_up = Instant::now() + Duration::from_secs(40);
    let mut arrivals: Vec<Vec<(usize, f64)>> = vec![Vec::new(); nodes.len()];
    let mut others = vec![0usize; nodes.len()];
    for (i, rx) in streams.iter().enumerate() {
        while arrivals[i].len() < k {
            let left = give_up.saturating_duration_since(Instant::now());
            let Ok((name, data, at)) = rx.recv_timeout(left) else {
                break;
            };
            if name == "resync" {
                println!(
                    "gossip: node {}: the event stream fell behind (resync)",
                    i + 1
                );
            } else if name == "offline" {
                let reg = &data["registration"];
                let host = reg["host"].as_str().unwrap_or_default().to_string();
                let key = (host, reg["port"].as_u64().unwrap_or_default() as u16);
                match victims.get(&key) {
                    Some(&id) if reg["app"] == "gossip" => arrivals[i].push((id, at)),
                    _ => others[i] += 1,
                }
            }
        }
    }
    r.done.store(true, Relaxed);
    handles.into_iter().for_each(|h| h.join().unwrap());
    for (i, a) in arrivals.into_iter().enumerate() {
        let deadline = |id: usize| r.expires_ms[id].load(Relaxed) as f64;
        let late = percentiles(a.into_iter().map(|(id, at)| at - deadline(id)).collect());
        let others = match others[i] {
            0 => String::new(),
            n => format!(" ({n} renewed leases went offline too)"),
        };
        println!(
            "gossip: node {}: expiry lateness (offline event - deadline) of {k} unrenewed \
            leases: {late}{others}",
            i + 1
        );
    }
}

fn main() {
    let o = opts();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (phase, n, m, k) = (&o.phase, o.leases, o.gossip_leases, o.gossip_stopped);
    println!(
        "bender scale benchmarks ({cores} cores): {phase}, {n} leases, gossip {m} ({k} stopped)"
    );
    let wrk = Command::new("wrk").arg("--version").output().is_ok();
    type Phase = (&'static str, fn(&Opts));
    let phases: [Phase; 3] = [
        ("lone", phase_lone),
        ("cluster", phase_cluster),
        ("gossip", phase_gossip),
    ];
    for (name, run) in phases {
        if o.phase != "all" && o.phase != name {
            continue;
        }
        if name != "gossip" && !wrk {
            println!("{name}: skipped (wrk is not installed)");
            continue;
        }
        let t = Instant::now();
        run(&o);
        println!("{name}: phase took {:.0} s", t.elapsed().as_secs_f64());
    }
}
