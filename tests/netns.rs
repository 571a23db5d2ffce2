//! Process-level partitions: three `bender agent` processes, each in its own Linux network
//! namespace (a "host"), with a management link (API, reached from the test) and a cluster link
//! (gossip). Cutting a node's cluster link partitions it; bringing it back heals.
//!
//! Needs root and iproute2 (`.ci/run` installs it); CI runs as root.

mod common;

use std::time::Duration;

use common::auth::Tokens;
use common::haproxy::TempDir;
use common::netns::Hosts;
use common::{wait_until, Http};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn live_members(http: &Http, url: &str) -> Option<usize> {
    let r = http.get(url);
    r.body
        .as_array()
        .map(|a| a.iter().filter(|m| m["live"] == true).count())
}

fn backend_version(http: &Http, url: &str) -> Option<String> {
    let r = http.get(url);
    (r.status == 200).then(|| r.body["version"].as_str().unwrap_or("").to_string())
}

#[test]
fn a_partitioned_host_diverges_then_converges_when_healed() {
    let mut hosts = Hosts::new(3);
    let dir = TempDir::new("netns");
    let tokens = Tokens::write(&dir.0.join("tokens"));
    let config = dir.0.join("bender.toml");
    std::fs::write(&config, tokens.config()).unwrap();
    for i in 0..3 {
        hosts.start_bender(i, &["--config".into(), config.display().to_string()]);
    }
    let http = Http::with_token(&tokens.admin);
    for i in 0..3 {
        let url = hosts.url(i, "/v1/members");
        wait_until(WAIT, "three live members", || {
            std::net::TcpStream::connect((hosts.mgmt_ip(i).as_str(), 1729)).is_ok()
                && live_members(&http, &url) == Some(3)
        });
    }
    http.post_json(
        &hosts.url(0, "/backends"),
        r#"{"name":"web","app":"web","version":"v0"}"#,
    );
    for i in 0..3 {
        wait_until(WAIT, "the backend reaches every host", || {
            backend_version(&http, &hosts.url(i, "/backends/web")).as_deref() == Some("v0")
        });
    }

    // Partition host 2.
    hosts.cluster_link(2, false);
    wait_until(WAIT, "host 0 sees host 2 as dead", || {
        live_members(&http, &hosts.url(0, "/v1/members")) == Some(2)
    });
    let r = http.put_json(
        &hosts.url(0, "/backends/web"),
        r#"{"app":"web","version":"a"}"#,
    );
    assert_eq!(r.status, 200);
    let reg = r#"{"app":"web","version":"a","host":"10.9.9.9","port":80,"ttl":"60s"}"#;
    assert_eq!(
        http.post_json(&hosts.url(1, "/v1/registrations"), reg)
            .status,
        200
    );
    wait_until(WAIT, "host 1 has host 0's update", || {
        backend_version(&http, &hosts.url(1, "/backends/web")).as_deref() == Some("a")
    });
    // The later write, on the partitioned side.
    let r = http.put_json(
        &hosts.url(2, "/backends/web"),
        r#"{"app":"web","version":"b"}"#,
    );
    assert_eq!(r.status, 200);
    // Neither side sees the other's writes while cut off.
    assert_eq!(
        backend_version(&http, &hosts.url(0, "/backends/web")).as_deref(),
        Some("a")
    );
    assert_eq!(
        http.get(&hosts.url(2, "/registrations/web")).body,
        Value::Array(vec![])
    );

    // Heal: every host converges on the later write and has the registration.
    hosts.cluster_link(2, true);
    for i in 0..3 {
        wait_until(WAIT, "every host converges on the later write", || {
            backend_version(&http, &hosts.url(i, "/backends/web")).as_deref() == Some("b")
        });
        wait_until(WAIT, "every host has the registration", || {
            http.get(&hosts.url(i, "/registrations/web"))
                .body
                .as_array()
                .is_some_and(|a| a.len() == 1)
        });
    }
}

/// Each host's state as host `i` sees it, by node id.
fn fleet_states(http: &Http, hosts: &Hosts, i: usize) -> Option<Vec<(String, String)>> {
    let r = http.get(&hosts.url(i, "/v1/fleet"));
    let nodes = r.body["nodes"].as_array()?;
    Some(
        nodes
            .iter()
            .map(|e| {
                (
                    e["node_id"].as_str().unwrap_or("").to_string(),
                    e["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

fn fleet_all(states: [&str; 3]) -> Option<Vec<(String, String)>> {
    Some(
        states
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("host{i}"), s.to_string()))
            .collect(),
    )
}

#[test]
fn the_fleet_status_shows_a_cut_off_host_stale_and_synced_again_after_healing() {
    let mut hosts = Hosts::new(3);
    let dir = TempDir::new("netns-fleet");
    let tokens = Tokens::write(&dir.0.join("tokens"));
    let config = dir.0.join("bender.toml");
    // STALE after 2 s behind, so the test does not wait out the default 10 s.
    std::fs::write(
        &config,
        format!("fleet_stale_after = \"2s\"\n{}", tokens.config()),
    )
    .unwrap();
    for i in 0..3 {
        hosts.start_bender(i, &["--config".into(), config.display().to_string()]);
    }
    let http = Http::with_token(&tokens.admin);
    for i in 0..3 {
        wait_until(WAIT, "every host synced on every host", || {
            std::net::TcpStream::connect((hosts.mgmt_ip(i).as_str(), 1729)).is_ok()
                && fleet_states(&http, &hosts, i) == fleet_all(["SYNCED"; 3])
        });
    }
    hosts.cluster_link(2, false);
    // A write host 2 cannot receive.
    let r = http.post_json(
        &hosts.url(0, "/backends"),
        r#"{"name":"web","app":"web","version":"v1"}"#,
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    for i in 0..2 {
        wait_until(WAIT, "host 2 stale on the majority's view", || {
            fleet_states(&http, &hosts, i) == fleet_all(["SYNCED", "SYNCED", "STALE"])
        });
    }
    let r = http.get(&hosts.url(0, "/v1/fleet"));
    let msg = r.body["nodes"][2]["message"].as_str().unwrap_or("");
    assert!(msg.contains("unreachable"), "{msg}");
    // The cut-off host sees the others unreachable, itself in sync with its own registry.
    wait_until(WAIT, "host 2 sees the others stale", || {
        fleet_states(&http, &hosts, 2) == fleet_all(["STALE", "STALE", "SYNCED"])
    });
    hosts.cluster_link(2, true);
    for i in 0..3 {
        wait_until(WAIT, "every host synced again on every host", || {
            fleet_states(&http, &hosts, i) == fleet_all(["SYNCED"; 3])
        });
    }
}
