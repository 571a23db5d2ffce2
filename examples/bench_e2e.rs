//! End-to-end benchmarks with a real `bender agent` (release build) and a real HAProxy on
//! loopback, default template and default debounce (200 ms quiet, 1 s max):
//! 1. time from a registration's 2xx until HAProxy routes a request to it (p50, p99);
//! 2. time from the last of 10,000 registrations (2,000 backends of 5) until HAProxy runs the
//!    config that holds them (render + check + swap + reload, verified).
//!
//! Run: `cargo build --release && cargo run --release --example bench_e2e` (needs haproxy).

#[path = "common/mod.rs"]
mod common;
use common::free_port;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

fn call(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let req = ureq::http::Request::builder().method(method).uri(url);
    let resp = match body {
        Some(b) => agent.run(
            req.header("content-type", "application/json")
                .body(b.to_string())
                .unwrap(),
        ),
        None => agent.run(req.body(()).unwrap()),
    };
    let mut resp = resp.expect("request");
    let status = resp.status().as_u16();
    let v = resp.body_mut().read_json().unwrap_or(Value::Null);
    (status, v)
}

/// Starts HAProxy and one bender node rendering the default template into it.
fn start(dir: &Path) -> (Procs, String) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!("global\n    stats socket {d}/admin.sock mode 660 level admin expose-fd listeners\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"),
    )
    .unwrap();
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/haproxy.cfg.tera");
    std::fs::write(
        dir.join("bender.toml"),
        format!(
            r#"
[[template]]
name = "haproxy"
source = "{template}"
destination = "{d}/haproxy.cfg"
reload = {{ method = "master-socket", socket = "{d}/master.sock" }}
server_state = {{ socket = "{d}/admin.sock", file = "{d}/server-state" }}
vars = {{ stats_socket = "{d}/admin.sock", server_state_file = "{d}/server-state", chroot = "", user = "", group = "", log = "" }}
"#
        ),
    )
    .unwrap();
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
        .stdout(Stdio::null())
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

fn registration_to_routed(base: &str) {
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
    let mut latencies = Vec::new();
    let mut previous: Option<u16> = None;
    for i in 0..60 {
        let name = format!("s{i}");
        let port = app_server(name.clone());
        let body = format!(
            r#"{{"app":"web","version":"1","host":"127.0.0.1","port":{port},"ttl":"60s"}}"#
        );
        let (status, _) = call("POST", &format!("{base}/v1/registrations"), Some(&body));
        assert_eq!(status, 200);
        let t0 = Instant::now();
        loop {
            if get(fe_port).as_deref() == Some(name.as_str()) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{name} never routed"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
        // Keep one or two servers in the backend so polling hits the new one quickly.
        if let Some(p) = previous {
            call(
                "DELETE",
                &format!("{base}/v1/registrations/web/1/127.0.0.1/{p}"),
                None,
            );
        }
        previous = Some(port);
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "registration 2xx -> routed by HAProxy (default debounce): n={} p50={:.0}ms p99={:.0}ms max={:.0}ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}

fn ten_thousand_servers(base: &str) {
    let status = |base: &str| call("GET", &format!("{base}/v1/status"), None).1;
    for b in 0..2000 {
        let (s, _) = call(
            "POST",
            &format!("{base}/backends"),
            Some(&format!(
                r#"{{"name":"app{b}","app":"app{b}","version":"1"}}"#
            )),
        );
        assert_eq!(s, 201);
    }
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
        let on_disk = std::fs::read_to_string("/tmp/bender-bench-e2e/haproxy.cfg")
            .map(|c| c.matches("\n    server ").count())
            .unwrap_or(0);
        if reloads > before && on_disk >= 10_000 && t["ok"] == true {
            let done = t_last.elapsed();
            println!(
                "10,000 servers (2,000 backends): registered over HTTP in {:.2}s; last 2xx -> HAProxy running them: {:.0}ms (render {:.0}ms, haproxy -c {:.0}ms of the last apply)",
                registering.as_secs_f64(),
                done.as_secs_f64() * 1000.0,
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
    {
        let (_procs, base) = start(&dir);
        registration_to_routed(&base);
    }
    {
        let (_procs, base) = start(&dir);
        ten_thousand_servers(&base);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
