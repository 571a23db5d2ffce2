//! End-to-end benchmarks with a real `bender agent` (release build) and a real HAProxy on
//! loopback, default template, default debounce, and the runtime API (`[template.runtime]`):
//! 1. time from a registration's 2xx until HAProxy routes a request to it, and from a
//!    deregistration's 2xx until it gets no new requests (p50, p99), with the reloads counted;
//! 2. a burst of 1,000 registrations into 100 backends with free slots: time from the last 2xx
//!    until HAProxy holds all of them, and the reloads it cost;
//! 3. time from the last of 10,000 registrations (2,000 backends of 5) until HAProxy runs all
//!    of them.
//!
//! 1 and 2 are run twice: with the runtime API, and without (every change reloads).
//!
//! Run: `cargo build --release && cargo run --release --example bench_e2e` (needs haproxy).

#[path = "common/mod.rs"]
mod common;
use common::{call, free_port, Procs};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An HTTP server answering every request with `name`, on its own thread.
fn app_server(name: String) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().map_while(Result::ok) {
            let name = name.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            _ if line == "\r\n" => break,
                            _ => {}
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if conn.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// GET / on a new connection; the body of a 200, if any.
fn get(port: u16) -> Option<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    if !out.starts_with("HTTP/1.1 200") {
        return None;
    }
    out.split("\r\n\r\n").nth(1).map(str::to_string)
}

/// Starts HAProxy and one bender node rendering the default template into it, with the
/// runtime API or without.
fn start(dir: &Path, runtime: bool) -> (Procs, String) {
    let _ = std::fs::remove_dir_all(dir);
    common::write_node_files(dir, runtime);
    let haproxy = Command::new("haproxy")
        .arg("-W")
        .arg("-S")
        .arg(dir.join("master.sock"))
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy");
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/bender");
    assert!(
        bin.exists(),
        "build the release binary first: cargo build --release"
    );
    let (api, gossip) = (free_port(), free_port());
    let bender = Command::new(bin)
        .args(["agent", "--node-id", "bench", "--config"])
        .arg(dir.join("bender.toml"))
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .args(["--gossip-listen", &format!("127.0.0.1:{gossip}")])
        .env("BENDER_LOG", "warn")
        .stdout(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.with_extension("log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{api}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("{base}/health")).call().is_err() {
        assert!(Instant::now() < deadline, "bender did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Procs(vec![bender, haproxy]), base)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// HAProxy's master reload counter (`show proc`), asked through bender's status.
fn reloads(base: &str) -> u64 {
    call("GET", &format!("{base}/v1/status"), None).1["templates"][0]["reloads"]
        .as_u64()
        .unwrap_or(0)
}

fn registration_to_routed(base: &str, mode: &str) {
    let fe_port = free_port();
    call(
        "POST",
        &format!("{base}/backends"),
        Some(r#"{"name":"web","app":"web","version":"1"}"#),
    );
    call(
        "POST",
        &format!("{base}/frontends"),
        Some(&format!(
            r#"{{"name":"www","backend":"web","bind":"127.0.0.1:{fe_port}"}}"#
        )),
    );
    let first = app_server("s-first".into());
    let body =
        format!(r#"{{"app":"web","version":"1","host":"127.0.0.1","port":{first},"ttl":"60s"}}"#);
    call("POST", &format!("{base}/v1/registrations"), Some(&body));
    let t0 = Instant::now();
    while get(fe_port).as_deref() != Some("s-first") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the first server never routed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let reloads_before = reloads(base);
    let mut joins = Vec::new();
    let mut leaves = Vec::new();
    // Changes during which HAProxy reloaded (slots outgrown by draining servers, say), apart.
    let mut with_reload = Vec::new();
    let mut previous = ("s-first".to_string(), first);
    for i in 0..60 {
        let name = format!("s{i}");
        let port = app_server(name.clone());
        let body = format!(
            r#"{{"app":"web","version":"1","host":"127.0.0.1","port":{port},"ttl":"60s"}}"#
        );
        let before = reloads(base);
        let (status, _) = call("POST", &format!("{base}/v1/registrations"), Some(&body));
        assert_eq!(status, 200);
        let t0 = Instant::now();
        while get(fe_port).as_deref() != Some(name.as_str()) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{name} never routed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = t0.elapsed().as_secs_f64() * 1000.0;
        if reloads(base) > before {
            with_reload.push(took);
        } else {
            joins.push(took);
        }
        // The previous server leaves: time until 10 requests in a row go elsewhere (round
        // robin over two servers: it is out of rotation), counted from the first of them.
        let (status, _) = call(
            "DELETE",
            &format!("{base}/v1/registrations/web/1/127.0.0.1/{}", previous.1),
            None,
        );
        assert!((200..300).contains(&status), "deregistration: {status}");
        let t0 = Instant::now();
        let mut run: Option<Duration> = None;
        let mut in_a_row = 0;
        while in_a_row < 10 {
            let at = t0.elapsed();
            if get(fe_port).as_deref() == Some(previous.0.as_str()) {
                in_a_row = 0;
                run = None;
            } else {
                in_a_row += 1;
                run.get_or_insert(at);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} never left",
                previous.0
            );
        }
        leaves.push(run.unwrap_or_default().as_secs_f64() * 1000.0);
        previous = (name, port);
    }
    let reloads = reloads(base) - reloads_before;
    for (what, v) in [
        ("registration 2xx -> routed, no reload", &mut joins),
        (
            "registration 2xx -> routed, with a reload",
            &mut with_reload,
        ),
        ("deregistration 2xx -> no new requests", &mut leaves),
    ] {
        if v.is_empty() {
            println!("{what} ({mode}): n=0");
            continue;
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{what} ({mode}): n={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            v[v.len() - 1]
        );
    }
    let st = call("GET", &format!("{base}/v1/status"), None).1;
    let t = &st["templates"][0];
    println!(
        "  reloads for those 120 membership changes ({mode}): {reloads} (all reloads by reason: {}; runtime updates {}, failed {})",
        t["reload_reasons"], t["runtime_updates"], t["runtime_failures"]
    );
}

/// HAProxy's ready (not disabled) server lines in the config on disk.
fn ready_servers_on_disk() -> usize {
    std::fs::read_to_string("/tmp/bender-bench-e2e/haproxy.cfg")
        .map(|c| {
            c.lines()
                .filter(|l| l.trim_start().starts_with("server ") && !l.contains(" disabled"))
                .count()
        })
        .unwrap_or(0)
}

/// The server lines of `show servers state` on the stats socket (none if it does not answer).
fn server_state_lines(dir: &Path) -> Vec<String> {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(dir.join("admin.sock")) else {
        return Vec::new();
    };
    let _ = s.write_all(b"show servers state\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(" slot"))
        .map(str::to_string)
        .collect()
}

/// Server slots HAProxy runs, in any state.
fn slots_in_haproxy(dir: &Path) -> usize {
    server_state_lines(dir).len()
}

/// Ready slots HAProxy runs (admin state without maintenance bits).
fn ready_in_haproxy(dir: &Path) -> usize {
    server_state_lines(dir)
        .iter()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 6 && f[6].parse::<u32>().is_ok_and(|a| a & 0x63 == 0)
        })
        .count()
}

/// Creates backends `{prefix}0` .. `{prefix}{n-1}`, each for app `{prefix}{i}` version 1.
fn create_backends(base: &str, prefix: &str, n: usize) {
    for b in 0..n {
        let (s, _) = call(
            "POST",
            &format!("{base}/backends"),
            Some(&format!(
                r#"{{"name":"{prefix}{b}","app":"{prefix}{b}","version":"1"}}"#
            )),
        );
        assert_eq!(s, 201);
    }
}

fn burst_of_1000(base: &str, dir: &Path, mode: &str) {
    create_backends(base, "burst", 100);
    // Settled: HAProxy runs all 100 backends (10 empty slots each) and nothing is pending.
    let t0 = Instant::now();
    while slots_in_haproxy(dir) < 1000
        || !status_ok(base)
        || t0.elapsed() < Duration::from_millis(1500)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the backends never applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = reloads(base);
    let started = Instant::now();
    for b in 0..100 {
        for s in 0..10 {
            let body = format!(
                r#"{{"app":"burst{b}","version":"1","host":"10.9.{b}.{}","port":8080,"ttl":"10m"}}"#,
                s + 1
            );
            let (st, _) = call("POST", &format!("{base}/v1/registrations"), Some(&body));
            assert_eq!(st, 200);
        }
    }
    let last = Instant::now();
    while ready_in_haproxy(dir) < 1000 {
        assert!(
            last.elapsed() < Duration::from_secs(30),
            "the burst never applied"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let applied = last.elapsed();
    println!(
        "burst of 1,000 registrations into 100 backends ({mode}): sent over HTTP in {:.0}ms; last 2xx -> all 1,000 in HAProxy: {:.0}ms; reloads: {}",
        (last - started).as_secs_f64() * 1000.0,
        applied.as_secs_f64() * 1000.0,
        reloads(base) - before
    );
}

fn status_ok(base: &str) -> bool {
    call("GET", &format!("{base}/v1/status"), None).1["templates"][0]["ok"] == true
}

fn ten_thousand_servers(base: &str, dir: &Path, mode: &str) {
    let status = |base: &str| call("GET", &format!("{base}/v1/status"), None).1;
    create_backends(base, "app", 2000);
    // Let the entity changes apply first, so the measurement below is the registrations alone.
    let settle = Instant::now();
    let mut last = status(base)["templates"][0]["config_hash"].clone();
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = status(base)["templates"][0]["config_hash"].clone();
        if now == last || settle.elapsed() > Duration::from_secs(30) {
            break;
        }
        last = now;
    }
    let before = status(base)["templates"][0]["reloads"]
        .as_u64()
        .unwrap_or(0);
    let t_start = Instant::now();
    for b in 0..2000 {
        for s in 0..5 {
            let body = format!(
                r#"{{"app":"app{b}","version":"1","host":"10.{}.{}.{}","port":8080,"ttl":"10m"}}"#,
                b / 250,
                b % 250,
                s + 1
            );
            let (st, _) = call("POST", &format!("{base}/v1/registrations"), Some(&body));
            assert_eq!(st, 200);
        }
    }
    let t_last = Instant::now();
    let registering = t_last - t_start;
    loop {
        let st = status(base);
        let t = &st["templates"][0];
        let reloads = t["reloads"].as_u64().unwrap_or(0);
        let on_disk = ready_servers_on_disk();
        if on_disk >= 10_000 && ready_in_haproxy(dir) >= 10_000 && t["ok"] == true {
            let done = t_last.elapsed();
            println!(
                "10,000 servers (2,000 backends, {mode}): registered over HTTP in {:.2}s; last 2xx -> HAProxy running them: {:.0}ms (reloads {}, runtime updates {}; render {:.0}ms, haproxy -c {:.0}ms of the last reload)",
                registering.as_secs_f64(),
                done.as_secs_f64() * 1000.0,
                reloads - before,
                t["runtime_updates"].as_u64().unwrap_or(0),
                t["last_render_seconds"].as_f64().unwrap_or(0.0) * 1000.0,
                t["last_check_seconds"].as_f64().unwrap_or(0.0) * 1000.0,
            );
            return;
        }
        assert!(
            t_last.elapsed() < Duration::from_secs(60),
            "never applied: {st}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let dir = PathBuf::from("/tmp/bender-bench-e2e");
    for (runtime, mode) in [(true, "runtime API"), (false, "reloads")] {
        {
            let (_procs, base) = start(&dir, runtime);
            registration_to_routed(&base, mode);
        }
        {
            let (_procs, base) = start(&dir, runtime);
            burst_of_1000(&base, &dir, mode);
        }
        // Creating the 2,000 backends one by one (each pre-checked with `haproxy -c`) takes
        // minutes: measured once, with the runtime API.
        if runtime {
            let (_procs, base) = start(&dir, runtime);
            ten_thousand_servers(&base, &dir, mode);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
