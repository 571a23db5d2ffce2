//! The apply path under faults, against real `bender agent` processes and a real HAProxy:
//!
//! 1. flood: 100,000 registrations (20 apps x 5,000) from 8 clients as fast as they go; during
//!    it, another app's new server registers: how long until HAProxy serves it; what the flood
//!    got (2xx / 429); the node's peak RSS;
//! 2. restart: a cluster of three nodes (one drives HAProxy) stopped for longer than the TTL and
//!    started again, while app servers renew every 2 s and a client requests through HAProxy
//!    all along: how many requests failed;
//! 3. kills: 100 rounds of random changes and a SIGKILL of the node at a random moment, then a
//!    restart: how often the file is invalid, HAProxy runs another config than the file once
//!    the node has settled, or temp files are left.
//!
//! Run: `apt-get install -y haproxy && cargo build --release && cargo run --release --example bench_faults`
//! (`bench_faults flood`, `restart` or `kills` runs one part.)

#[path = "common/mod.rs"]
mod common;
use common::{binary, free_port};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A minimal HTTP/1.1 exchange: (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A server answering every request with its name.
fn app_server(name: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 4096];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                                name.len()
                            );
                            if c.write_all(resp.as_bytes()).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

struct Haproxy(Child);
impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Node {
    child: Option<Child>,
    api: String,
}

impl Node {
    fn start(args: Vec<String>, api: String, env: &[(&str, &str)]) -> Node {
        let child = Command::new(binary())
            .arg("agent")
            .args(&args)
            .envs(env.iter().copied())
            .env("BENDER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let n = Node {
            child: Some(child),
            api,
        };
        wait("the node answers", Duration::from_secs(30), || {
            http(&n.api, "GET", "/health", "").is_some()
        });
        n
    }
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory with an initial haproxy.cfg, a bender.toml rendering into it, and HAProxy.
struct Lb {
    dir: PathBuf,
    config: PathBuf,
    _haproxy: Haproxy,
}

fn lb(tag: &str, extra: &str) -> Lb {
    let dir =
        std::env::temp_dir().join(format!("bender-bench-faults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!("global\n    stats socket {d}/admin.sock mode 660 level admin expose-fd listeners\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"),
    )
    .unwrap();
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/haproxy.cfg.tera");
    let config = dir.join("bender.toml");
    std::fs::write(
        &config,
        format!(
            r#"{extra}
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
        .args(["-W", "-S"])
        .arg(dir.join("master.sock"))
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy");
    wait("HAProxy starts", Duration::from_secs(10), || {
        dir.join("master.sock").exists()
    });
    Lb {
        dir,
        config,
        _haproxy: Haproxy(haproxy),
    }
}

fn node_args(config: &Path, api: u16, gossip: u16, data: &Path, extra: &[String]) -> Vec<String> {
    let mut a = vec![
        "--config".into(),
        config.display().to_string(),
        "--api-listen".into(),
        format!("127.0.0.1:{api}"),
        "--gossip-listen".into(),
        format!("127.0.0.1:{gossip}"),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    a.extend(extra.iter().cloned());
    a
}

fn create(api: &str, name: &str, port: u16) {
    let r = http(
        api,
        "POST",
        "/backends",
        &format!(r#"{{"name":"{name}","app":"{name}","version":"1"}}"#),
    );
    assert!(matches!(r, Some((201 | 409, _))), "{r:?}");
    let r = http(
        api,
        "POST",
        "/frontends",
        &format!(r#"{{"name":"{name}","backend":"{name}","bind":"127.0.0.1:{port}"}}"#),
    );
    assert!(matches!(r, Some((201 | 409, _))), "{r:?}");
}

fn reg(api: &str, app: &str, port: u16, ttl: &str) -> Option<u16> {
    http(
        api,
        "POST",
        "/v1/registrations",
        &format!(
            r#"{{"app":"{app}","version":"1","host":"127.0.0.1","port":{port},"ttl":"{ttl}"}}"#
        ),
    )
    .map(|(s, _)| s)
}

fn served(port: u16) -> Option<String> {
    http(&format!("127.0.0.1:{port}"), "GET", "/", "").and_then(|(s, b)| (s == 200).then_some(b))
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn bench_flood() {
    let lb = lb("flood", "");
    let (api_port, gossip) = (free_port(), free_port());
    let api = format!("127.0.0.1:{api_port}");
    let node = Node::start(
        node_args(&lb.config, api_port, gossip, &lb.dir.join("data"), &[]),
        api.clone(),
        &[],
    );
    let fe = free_port();
    create(&api, "web", fe);
    for a in 0..20 {
        create(&api, &format!("flood{a}"), free_port());
    }
    let ok = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let flooders: Vec<_> = (0..8)
        .map(|t| {
            let (api, ok, refused, other) =
                (api.clone(), ok.clone(), refused.clone(), other.clone());
            std::thread::spawn(move || {
                for i in 0..12_500u32 {
                    let n = t * 12_500 + i;
                    let app = format!("flood{}", n % 20);
                    match reg(&api, &app, 10_000 + (n / 20) as u16, "60s") {
                        Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                        Some(429) => refused.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    // A second into the flood, another app's new server.
    std::thread::sleep(Duration::from_secs(1));
    let web = app_server("web");
    let t0 = Instant::now();
    assert_eq!(reg(&api, "web", web, "5m"), Some(200));
    let mut reached = None;
    while t0.elapsed() < Duration::from_secs(120) {
        if served(fe).as_deref() == Some("web") {
            reached = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for f in flooders {
        f.join().unwrap();
    }
    let took = started.elapsed();
    println!(
        "flood: 100,000 registrations (20 apps x 5,000, 8 clients) in {:.1} s: {} accepted, {} refused with 429, {} other",
        took.as_secs_f64(),
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    match reached {
        Some(d) => println!(
            "flood: another app's new server served by HAProxy {:.0} ms after its 2xx",
            d.as_secs_f64() * 1000.0
        ),
        None => println!("flood: another app's new server NOT served within 120 s"),
    }
    println!(
        "flood: the node's peak RSS {:.0} MB",
        peak_rss_mb(node.pid())
    );
    let _ = std::fs::remove_dir_all(&lb.dir);
}

/// Whole-cluster restarts in the restart benchmark.
const RESTARTS: usize = 5;

fn bench_restart() {
    let lb = lb("restart", "warmup = \"5s\"\n");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let seeds: Vec<String> = ports
        .iter()
        .flat_map(|(_, g)| ["--seed".to_string(), format!("127.0.0.1:{g}")])
        .collect();
    let data = |i: usize| lb.dir.join(format!("data{i}"));
    let plain = lb.dir.join("plain.toml");
    std::fs::write(&plain, "warmup = \"5s\"\n").unwrap();
    let args = |i: usize| {
        let cfg = if i == 0 {
            lb.config.clone()
        } else {
            plain.clone()
        };
        let mut extra = vec![
            "--node-id".into(),
            format!("n{i}"),
            "--cluster-id".into(),
            "bench".into(),
        ];
        extra.extend(seeds.iter().cloned());
        node_args(&cfg, ports[i].0, ports[i].1, &data(i), &extra)
    };
    let start_all = || -> Vec<Node> {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let a = args(i);
                let api = format!("127.0.0.1:{}", ports[i].0);
                std::thread::spawn(move || Node::start(a, api, &[]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    let mut nodes = start_all();
    let api0 = nodes[0].api.clone();
    let fe = free_port();
    create(&api0, "web", fe);
    let servers: Vec<u16> = ["s1", "s2", "s3", "s4"]
        .into_iter()
        .map(app_server)
        .collect();
    // App servers renew every 2 s through the nodes in turn (the 0.2.1 client's habit),
    // with the default 4 s TTL; a refused or failed renewal is simply tried again next time.
    let stop = Arc::new(AtomicBool::new(false));
    let apis: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
    let renewer = {
        let (stop, servers, apis) = (stop.clone(), servers.clone(), apis.clone());
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                for s in &servers {
                    let _ = reg(&apis[k % 3], "web", *s, "4s");
                    k += 1;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        })
    };
    wait("HAProxy serves the app", Duration::from_secs(30), || {
        served(fe).is_some()
    });
    // Requests through HAProxy all along.
    let (good, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, good, bad) = (stop.clone(), good.clone(), bad.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match served(fe) {
                    Some(_) => good.fetch_add(1, Ordering::Relaxed),
                    None => bad.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    // Five times: all three stopped for longer than the TTL (every lease has expired when they
    // come back), at a different moment of the app servers' 2 s renewal cycle each time.
    for round in 0..RESTARTS {
        for n in &mut nodes {
            n.stop();
        }
        std::thread::sleep(Duration::from_millis(6_000 + 400 * round as u64));
        nodes = start_all();
        std::thread::sleep(Duration::from_secs(5));
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    renewer.join().unwrap();
    let (g, b) = (good.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    println!(
        "restart: 3 nodes stopped for 6-8 s (TTL 4 s) and started again, {RESTARTS} times: {} of {} requests through HAProxy failed ({:.2}% served)",
        b,
        g + b,
        100.0 * g as f64 / (g + b).max(1) as f64
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&lb.dir);
}

fn bench_kills(rounds: usize) {
    let lb = lb("kills", "[apply]\ndebounce_quiet = \"10ms\"\ndebounce_max = \"50ms\"\nprobe_interval = \"200ms\"\nretry_failed_after = \"1s\"\n");
    let (api_port, gossip) = (free_port(), free_port());
    let api = format!("127.0.0.1:{api_port}");
    let args = node_args(&lb.config, api_port, gossip, &lb.dir.join("data"), &[]);
    let servers: Vec<u16> = ["k1", "k2", "k3"].into_iter().map(app_server).collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut invalid, mut stale, mut strays) = (0, 0, 0);
    let cfg = lb.dir.join("haproxy.cfg");
    for round in 0..rounds {
        let mut node = Node::start(args.clone(), api.clone(), &[]);
        if round == 0 {
            create(&api, "web", free_port());
        }
        // Random changes, then a kill at a random moment among them.
        let changes = 1 + next(6);
        let kill_after = next(changes + 1);
        for c in 0..changes {
            if c == kill_after {
                break;
            }
            match next(3) {
                0 => {
                    let _ = reg(&api, "web", servers[next(3) as usize], "1h");
                }
                1 => {
                    let _ = http(
                        &api,
                        "PUT",
                        "/backends/web",
                        &format!(
                            r#"{{"balance":"{}"}}"#,
                            ["roundrobin", "leastconn", "first"][next(3) as usize]
                        ),
                    );
                }
                _ => {
                    let _ = http(
                        &api,
                        "DELETE",
                        &format!(
                            "/v1/registrations/web/1/127.0.0.1/{}",
                            servers[next(3) as usize]
                        ),
                        "",
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(next(40)));
        }
        std::thread::sleep(Duration::from_millis(next(80)));
        node.kill();
        // The file on disk must always be a valid config.
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-q")
            .arg("-f")
            .arg(&cfg)
            .status()
            .unwrap();
        if !check.success() {
            invalid += 1;
        }
        // Restarted, the node must settle with HAProxy running the file, and no temp file left.
        let mut node = Node::start(args.clone(), api.clone(), &[]);
        let settled = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            http(&api, "GET", "/v1/status", "").is_some_and(|(_, b)| {
                let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
                let t = &v["templates"][0];
                t["ok"] == true
                    && t["running_config"] == t["config_hash"]
                    && !t["running_config"].is_null()
            })
        });
        if !settled {
            stale += 1;
        }
        // Stopped cleanly (an apply in progress finishes), what is left is what the restart
        // failed to clean up after the killed process.
        node.stop();
        let left: Vec<String> = std::fs::read_dir(&lb.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        if !left.is_empty() {
            println!("kills: round {round}: left behind: {left:?}");
        }
        strays += left.len();
    }
    println!(
        "kills: {rounds} rounds of random changes and a SIGKILL: {invalid} invalid configs on disk, {stale} restarts that did not settle on HAProxy running the file within 6 s, {strays} stray temp files after restart"
    );
    let _ = std::fs::remove_dir_all(&lb.dir);
}

fn main() {
    let which = std::env::args().nth(1);
    println!(
        "bender fault benchmarks ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if which.as_deref().is_none_or(|w| w == "flood") {
        bench_flood();
    }
    if which.as_deref().is_none_or(|w| w == "restart") {
        bench_restart();
    }
    if which.as_deref().is_none_or(|w| w == "kills") {
        bench_kills(100);
    }
}
