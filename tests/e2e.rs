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
}

impl Renewer {
    /// Renews with `token` (a `register` token: each app server registers its own address).
    fn start(apis: Vec<String>, token: String) -> Renewer {
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
        }
    }

    fn body(server: &TestServer, version: &str) -> String {
        format!(
            r#"{{"app":"web","version":"{version}","host":"{}","port":{},"ttl":"1500ms"}}"#,
            server.ip, server.port
        )
    }

    fn add(&self, server: &TestServer, version: &str) {
        self.live
            .lock()
            .unwrap()
            .insert(Self::body(server, version));
    }

    fn remove(&self, server: &TestServer, version: &str) {
        self.live
            .lock()
            .unwrap()
            .remove(&Self::body(server, version));
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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

#[test]
fn traffic_follows_registrations_and_a_blue_green_switch_on_every_host() {
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
    let http = Http::with_token(&tokens.admin);
    let apis: Vec<String> = (0..3).map(|i| hosts.url(i, "")).collect();
    for api in &apis {
        wait_until(WAIT, "every bender answers", || {
            ureq::get(&format!("{api}/health")).call().is_ok()
        });
        // From another host, nothing works without a token.
        let r = Http::new().get(&format!("{api}/v1/members"));
        assert_eq!(r.status, 401, "{}", r.text);
    }

    // Two app servers of web@v1 register (and keep renewing through every host in turn).
    let bridge = hosts.bridge_ip();
    let a1 = TestServer::start_on(&bridge, "a1");
    let a2 = TestServer::start_on(&bridge, "a2");
    let renewer = Renewer::start(apis.clone(), tokens.register.clone());
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
    for api in &apis {
        let status = http.get(&format!("{api}/v1/status"));
        assert_eq!(status.body["templates"][0]["ok"], true, "{}", status.text);
        assert_eq!(http.get(&format!("{api}/ready")).status, 200);
    }
    drop(renewer);
    drop(haproxies);
}
