//! End to end, as operators run it: three load-balancer "hosts" (Linux network namespaces), each
//! with its own HAProxy (master-worker) and its own `bender agent` rendering the default
//! template; app servers (tiny HTTP servers answering with their name) register over the API;
//! real HTTP requests go through each host's HAProxy.
//!
//! Needs root, iproute2 and haproxy (`.ci/run` installs them).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::auth::Tokens;
use common::haproxy::{get_at, write_node_files, Haproxy, TempDir, TestServer};
use common::netns::Hosts;
use common::{wait_until, Http};

const WAIT: Duration = Duration::from_secs(30);
const FRONTEND_PORT: u16 = 8080;

/// Keeps registrations renewed (through the hosts in turn, as the 0.2.1 client did) until
/// each is dropped from the set or the renewer stops.
struct Renewer {
    live: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    ttl: &'static str,
}

impl Renewer {
    /// Renews with `token` (a `register` token: each app server registers its own address),
    /// with leases of `ttl`.
    fn start(apis: Vec<String>, token: String, ttl: &'static str) -> Renewer {
        let live: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (live.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let http = Http::with_token(&token);
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                let paths: Vec<String> = l.lock().unwrap().iter().cloned().collect();
                for p in paths {
                    let r =
                        http.post_json(&format!("{}/v1/registrations", apis[n % apis.len()]), &p);
                    assert_eq!(r.status, 200, "{}", r.text);
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Renewer {
            live,
            stop,
            thread: Some(thread),
            ttl,
        }
    }

    fn body(&self, server: &TestServer, version: &str) -> String {
        format!(
            r#"{{"app":"web","version":"{version}","host":"{}","port":{},"ttl":"{}"}}"#,
            server.ip, server.port, self.ttl
        )
    }

    fn add(&self, server: &TestServer, version: &str) {
        let body = self.body(server, version);
        self.live.lock().unwrap().insert(body);
    }

    fn remove(&self, server: &TestServer, version: &str) {
        let body = self.body(server, version);
        self.live.lock().unwrap().remove(&body);
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A renewal the node refused panicked the renewer: that fails the test (unless it
            // is already failing), rather than only stopping the renewals.
            if let Err(panic) = t.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// What a host's HAProxy answers over `n` requests (bodies of 200 responses, or "ERR <status>").
fn answers(ip: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| match get_at(ip, FRONTEND_PORT) {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => format!("ERR {}", r.status),
            Err(e) => format!("ERR {e}"),
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Three LB hosts, each with HAProxy and bender (the same tokens everywhere).
struct Lbs {
    // Field order is drop order: HAProxy, then the hosts (and their benders), then the files.
    _haproxies: Vec<Haproxy>,
    hosts: Hosts,
    tokens: Tokens,
    apis: Vec<String>,
    _dirs: Vec<TempDir>,
}

fn start_lbs() -> Lbs {
    let mut hosts = Hosts::new(3);
    let dirs: Vec<TempDir> = (0..3).map(|i| TempDir::new(&format!("e2e{i}"))).collect();
    let mut haproxies = Vec::new();
    let mut tokens = None;
    for (i, dir) in dirs.iter().enumerate() {
        // Every host with the same tokens, as the package's operators would copy them.
        let t = Tokens::write(&dir.0.join("tokens"));
        let config = write_node_files(
            &dir.0,
            &format!(
                "warmup = \"3s\"\n[apply]\ndebounce_quiet = \"100ms\"\ndebounce_max = \"500ms\"\n\n{}",
                t.config()
            ),
        );
        tokens = Some(t);
        let prefix = hosts.exec_prefix(i);
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        haproxies.push(Haproxy::start_with(
            &prefix,
            &dir.0,
            &dir.0.join("haproxy.cfg"),
        ));
        hosts.start_bender(i, &["--config".to_string(), config.display().to_string()]);
    }
    let tokens = tokens.expect("three hosts");
    let apis: Vec<String> = (0..3).map(|i| hosts.url(i, "")).collect();
    for api in &apis {
        wait_until(WAIT, "every bender answers", || {
            ureq::get(&format!("{api}/health")).call().is_ok()
        });
        // From another host, nothing works without a token.
        let r = Http::new().get(&format!("{api}/v1/members"));
        assert_eq!(r.status, 401, "{}", r.text);
    }
    Lbs {
        _haproxies: haproxies,
        hosts,
        tokens,
        apis,
        _dirs: dirs,
    }
}

#[test]
fn traffic_follows_registrations_and_a_blue_green_switch_on_every_host() {
    let lbs = start_lbs();
    let (hosts, tokens, apis) = (&lbs.hosts, &lbs.tokens, &lbs.apis);
    let http = Http::with_token(&tokens.admin);

    // Two app servers of web@v1 register (and keep renewing through every host in turn).
    let bridge = hosts.bridge_ip();
    let a1 = TestServer::start_on(&bridge, "a1");
    let a2 = TestServer::start_on(&bridge, "a2");
    let renewer = Renewer::start(apis.clone(), tokens.register.clone(), "1500ms");
    renewer.add(&a1, "v1");
    renewer.add(&a2, "v1");
    // The backend and the frontend are created through two different hosts.
    let r = http.post_json(
        &format!("{}/backends", apis[1]),
        r#"{"name":"web","app":"web","version":"v1"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = http.post_json(
        &format!("{}/frontends", apis[2]),
        &format!(r#"{{"name":"www","backend":"web","bind":"*:{FRONTEND_PORT}"}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text);

    for i in 0..3 {
        let ip = hosts.mgmt_ip(i);
        wait_until(WAIT, "every host's HAProxy reaches both v1 servers", || {
            answers(&ip, 8) == set(&["a1", "a2"])
        });
    }

    // a2 stops renewing: after its TTL every request goes to a1, on every host.
    renewer.remove(&a2, "v1");
    for i in 0..3 {
        let ip = hosts.mgmt_ip(i);
        wait_until(WAIT, "every host drops the expired server", || {
            answers(&ip, 6) == set(&["a1"])
        });
    }

    // Blue/green: v2 registers; one PUT on host 0 switches the backend; every host serves v2.
    let b1 = TestServer::start_on(&bridge, "b1");
    renewer.add(&b1, "v2");
    let r = http.put_json(
        &format!("{}/backends/web", apis[0]),
        r#"{"app":"web","version":"v2"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    for i in 0..3 {
        let ip = hosts.mgmt_ip(i);
        wait_until(WAIT, "every host serves v2", || {
            answers(&ip, 6) == set(&["b1"])
        });
    }

    // Rollback through host 2.
    let r = http.put_json(
        &format!("{}/backends/web", apis[2]),
        r#"{"app":"web","version":"v1"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    for i in 0..3 {
        let ip = hosts.mgmt_ip(i);
        wait_until(WAIT, "every host serves v1 again", || {
            answers(&ip, 6) == set(&["a1"])
        });
    }

    // Every host reports its apply as good, and /ready says so.
    for api in apis.iter() {
        let status = http.get(&format!("{api}/v1/status"));
        assert_eq!(status.body["templates"][0]["ok"], true, "{}", status.text);
        assert_eq!(http.get(&format!("{api}/ready")).status, 200);
    }
    drop(renewer);
    drop(lbs);
}

#[test]
fn an_isolated_host_keeps_serving_every_server_then_follows_the_registry_again() {
    let lbs = start_lbs();
    let (hosts, tokens, apis) = (&lbs.hosts, &lbs.tokens, &lbs.apis);
    let http = Http::with_token(&tokens.admin);
    let r = http.post_json(
        &format!("{}/backends", apis[0]),
        r#"{"name":"web","app":"web","version":"v1"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = http.post_json(
        &format!("{}/frontends", apis[0]),
        &format!(r#"{{"name":"www","backend":"web","bind":"*:{FRONTEND_PORT}"}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    // Two servers renew (default TTL, 4 s) through hosts 0 and 1 only.
    let bridge = hosts.bridge_ip();
    let a1 = TestServer::start_on(&bridge, "a1");
    let a2 = TestServer::start_on(&bridge, "a2");
    let renewer = Renewer::start(apis[..2].to_vec(), tokens.register.clone(), "4s");
    renewer.add(&a1, "v1");
    renewer.add(&a2, "v1");
    let isolated = hosts.mgmt_ip(2);
    wait_until(WAIT, "host 2 serves both servers", || {
        answers(&isolated, 8) == set(&["a1", "a2"])
    });

    // Host 2 loses its peers for three TTLs: every lease it holds expires there, and it keeps
    // serving both servers all along.
    hosts.cluster_link(2, false);
    let status = format!("{}/v1/status", apis[2]);
    let cut = std::time::Instant::now();
    let (mut served, mut failed, mut degraded) = (0, Vec::new(), false);
    while cut.elapsed() < Duration::from_secs(12) {
        match get_at(&isolated, FRONTEND_PORT) {
            Ok(r) if r.status == 200 && (r.body == "a1" || r.body == "a2") => served += 1,
            Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
            Err(e) => failed.push(e.to_string()),
        }
        if served % 20 == 0 {
            degraded |= http.get(&status).body["degraded"]
                .as_array()
                .is_some_and(|d| !d.is_empty());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, the first: {:?}",
        failed.len(),
        served + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(degraded, "host 2 said it was degraded");
    let members = http.get(&format!("{}/v1/registrations", apis[2])).body;
    assert_eq!(
        members,
        serde_json::json!([]),
        "its registry let the leases expire"
    );

    // Healed: it follows the registry again. a2 stops renewing and host 2 drops it.
    hosts.cluster_link(2, true);
    wait_until(WAIT, "host 2 is no longer degraded", || {
        http.get(&status).body["degraded"] == serde_json::json!([])
    });
    renewer.remove(&a2, "v1");
    wait_until(
        WAIT,
        "host 2 drops the server that stopped renewing",
        || answers(&isolated, 6) == set(&["a1"]),
    );
    drop(renewer);
    drop(lbs);
}
