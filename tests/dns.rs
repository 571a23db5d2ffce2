//! No DNS on the apply path: an LB host (a network namespace, with HAProxy and bender) whose
//! resolver never answers. Some registrations use host names; another app's server, registered
//! by address, still reaches HAProxy at once, and the names are reported as unresolved instead
//! of holding up `haproxy -c`.
//!
//! Needs root and iproute2 (`.ci/run` installs it).

mod common;

use std::time::{Duration, Instant};

use common::auth::Tokens;
use common::haproxy::{get_at, write_node_files, Haproxy, TempDir, TestServer};
use common::netns::Hosts;
use common::{wait_until, Http};

const WAIT: Duration = Duration::from_secs(30);

/// `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over the namespace's
/// `/etc/resolv.conf`; removed on drop.
struct ResolvConf(std::path::PathBuf);

impl ResolvConf {
    fn new(ns: &str, nameserver: &str) -> ResolvConf {
        let dir = std::path::Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:5 attempts:4\n"),
        )
        .unwrap();
        ResolvConf(dir)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_resolver_that_never_answers_delays_no_other_apps_server() {
    let mut hosts = Hosts::new(1);
    // A name server that takes every query and answers none.
    let silent = std::net::UdpSocket::bind((hosts.bridge_ip().as_str(), 53)).unwrap();
    let _resolv = ResolvConf::new(&hosts.ns(0), &hosts.bridge_ip());
    let dir = TempDir::new("dns");
    let tokens = Tokens::write(&dir.0.join("tokens"));
    let config = write_node_files(
        &dir.0,
        &format!(
            "[apply]\ndebounce_quiet = \"50ms\"\ndebounce_max = \"200ms\"\n\n{}",
            tokens.config()
        ),
    );
    let prefix = hosts.exec_prefix(0);
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let _haproxy = Haproxy::start_with(&prefix, &dir.0, &dir.0.join("haproxy.cfg"));
    hosts.start_bender(0, &["--config".into(), config.display().to_string()]);
    let api = hosts.url(0, "");
    wait_until(WAIT, "bender answers", || {
        ureq::get(&format!("{api}/health")).call().is_ok()
    });
    let admin = Http::with_token(&tokens.admin);
    for (name, port) in [("named", 8081), ("web", 8082)] {
        let r = admin.post_json(
            &format!("{api}/backends"),
            &format!(r#"{{"name":"{name}","app":"{name}","version":"1"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        let r = admin.post_json(
            &format!("{api}/frontends"),
            &format!(r#"{{"name":"{name}","backend":"{name}","bind":"*:{port}"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Eight servers known by name only.
    for i in 0..8 {
        let r = admin.post_json(
            &format!("{api}/v1/registrations"),
            &format!(
                r#"{{"app":"named","version":"1","host":"app{i}.dead.test","port":80,"ttl":"1h"}}"#
            ),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Another app's server, by address: it reaches HAProxy although no name resolves.
    let web = TestServer::start_on(&hosts.bridge_ip(), "web");
    let registered = Instant::now();
    let r = Http::with_token(&tokens.register).post_json(
        &format!("{api}/v1/registrations"),
        &format!(
            r#"{{"app":"web","version":"1","host":"{}","port":{},"ttl":"1h"}}"#,
            web.ip, web.port
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let lb = hosts.mgmt_ip(0);
    wait_until(WAIT, "the other app's server is served", || {
        get_at(&lb, 8082).is_ok_and(|r| r.status == 200 && r.body == "web")
    });
    println!("served {:?} after its registration", registered.elapsed());
    // The names are reported, not rendered, and nothing waited on them.
    let status = admin.get(&format!("{api}/v1/status")).body;
    let t = &status["templates"][0];
    assert_eq!(t["ok"], true, "{status}");
    let excluded = t["excluded"].as_array().unwrap();
    assert_eq!(excluded.len(), 8, "{status}");
    assert!(
        excluded
            .iter()
            .all(|e| e["reason"].as_str().unwrap().contains("has no address")),
        "{status}"
    );
    assert!(t["last_check_seconds"].as_f64().unwrap() < 5.0, "{status}");
    let rendered = std::fs::read_to_string(dir.0.join("haproxy.cfg")).unwrap();
    assert!(!rendered.contains("dead.test"), "{rendered}");
    drop(silent);
}
