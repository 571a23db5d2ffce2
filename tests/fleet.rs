//! The fleet status and the safe switch, on three real nodes, each driving its own real
//! HAProxy on loopback (the three share the frontend's port: HAProxy binds with SO_REUSEPORT).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::fleet::{start_fleet, Lb};
use common::haproxy::{TempDir, TestServer};
use common::{bender_cli as bender, free_port, sample, scrape, wait_until, Http, Proc};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn fleet(http: &Http, lb: &Lb) -> Value {
    let r = http.get(&lb.node.url("/v1/fleet"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// Each node's state as `lb` sees it, by node id.
fn states(http: &Http, lb: &Lb) -> Vec<(String, String)> {
    fleet(http, lb)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["node_id"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn all(state: &str) -> Vec<(String, String)> {
    (0..3)
        .map(|i| (format!("lb{i}"), state.to_string()))
        .collect()
}

/// Backends blue and green (each with a live server) behind frontend www on `port`.
fn blue_green(http: &Http, lb: &Lb, port: u16, blue: &TestServer, green: &TestServer) {
    for (name, server) in [("blue", blue), ("green", green)] {
        let r = http.post_json(
            &lb.node.url("/backends"),
            &format!(r#"{{"name":"{name}","app":"{name}","version":"1"}}"#),
        );
        assert_eq!(r.status, 201, "{:?}", r.body);
        let r = http.post_json(
            &lb.node.url("/v1/registrations"),
            &format!(
                r#"{{"app":"{name}","version":"1","host":"127.0.0.1","port":{},"ttl":"120s"}}"#,
                server.port
            ),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = http.post_json(
        &lb.node.url("/frontends"),
        &format!(r#"{{"name":"www","backend":"blue","bind":"127.0.0.1:{port}"}}"#),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
}

#[test]
fn switch_wait_returns_only_once_every_lb_runs_the_switch() {
    // lb2 applies slowly (it waits for 1.5 s of quiet): a switch that returned on the first
    // node's word would find lb2 still on blue.
    let lbs = start_fleet(
        "fleet-wait",
        |i| {
            if i == 2 {
                "[apply]\ndebounce_quiet = \"1500ms\"\ndebounce_runtime = \"1500ms\"\ndebounce_max = \"3s\"\n"
                    .into()
            } else {
                String::new()
            }
        },
        |_| None,
    );
    let http = Http::new();
    let (blue, green) = (TestServer::start("blue"), TestServer::start("green"));
    let port = free_port();
    blue_green(&http, &lbs[0], port, &blue, &green);
    for lb in &lbs {
        wait_until(WAIT, "every node to see the fleet synced", || {
            states(&http, lb) == all("SYNCED")
        });
    }
    assert!(lbs
        .iter()
        .all(|lb| lb.file().contains("default_backend blue")));
    let (code, out, err) = bender(
        &lbs[0].node.api,
        &[
            "frontend",
            "switch",
            "www",
            "--backend",
            "green",
            "--wait",
            "--timeout",
            "30s",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // The moment it returns, every LB's HAProxy has the switch.
    for lb in &lbs {
        assert!(
            lb.file().contains("default_backend green"),
            "{}: {}",
            lb.node.node_id,
            lb.file()
        );
        let s = http.get(&lb.node.url("/v1/status")).body;
        let t = &s["templates"][0];
        assert!(t["ok"] == true && t["error"].is_null(), "{s}");
    }
    assert!(
        out.contains("frontend www switched from blue to green"),
        "{out}"
    );
    assert!(out.contains("every load balancer runs it (3/3)"), "{out}");
    // The slow one was waited for, and the wait said so.
    assert!(
        err.contains("waiting for") && err.contains("lb2 (PENDING)"),
        "{err}"
    );
}

#[test]
fn a_config_one_lb_refuses_is_error_on_every_node_until_fixed() {
    // lb2's template breaks HAProxy's global section once there is more than one backend: no
    // entity to leave out, so its apply fails (HAProxy keeps the last good config).
    let broken = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/templates/haproxy.cfg.tera"
    ))
    .unwrap()
    .replacen(
        "    stats timeout 30s",
        "    stats timeout 30s\n{%- if backends | length > 1 %}\n    no-such-global-directive 1\n{%- endif %}",
        1,
    );
    assert!(broken.contains("no-such-global-directive"));
    let lbs = start_fleet(
        "fleet-error",
        |_| String::new(),
        |i| (i == 2).then(|| broken.clone()),
    );
    let http = Http::new();
    let blue = TestServer::start("blue");
    let r = http.post_json(
        &lbs[0].node.url("/backends"),
        r#"{"name":"blue","app":"blue","version":"1"}"#,
    );
    assert_eq!(r.status, 201);
    for lb in &lbs {
        wait_until(WAIT, "the fleet synced", || {
            states(&http, lb) == all("SYNCED")
        });
    }
    // A second backend, written on lb0 (whose template is fine, so its checks let it in).
    let r = http.post_json(
        &lbs[0].node.url("/backends"),
        r#"{"name":"green","app":"green","version":"1"}"#,
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let mut expected = all("SYNCED");
    expected[2].1 = "ERROR".into();
    for lb in &lbs {
        wait_until(WAIT, "lb2 in ERROR on every node", || {
            states(&http, lb) == expected
        });
        let f = fleet(&http, lb);
        let msg = f["nodes"][2]["message"].as_str().unwrap_or("").to_string();
        assert!(msg.contains("no-such-global-directive"), "{msg}");
        wait_until(WAIT, "the metric to count it", || {
            let m = scrape(&http, &lb.node.url("/metrics"));
            sample(&m, "bender_fleet_nodes", &[("state", "error")]) == Some(1.0)
                && sample(&m, "bender_fleet_nodes", &[("state", "synced")]) == Some(2.0)
        });
    }
    let (code, out, _) = bender(&lbs[1].node.api, &["status", "--fleet"]);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.starts_with("lb2"))
        .unwrap_or_default();
    assert!(
        line.contains("ERROR") && line.contains("no-such-global-directive"),
        "{out}"
    );
    // The fix: the second backend goes; lb2 applies again.
    let r = http.delete(&lbs[0].node.url("/backends/green"));
    assert_eq!(r.status, 204);
    for lb in &lbs {
        wait_until(WAIT, "lb2 synced again", || {
            states(&http, lb) == all("SYNCED")
        });
    }
    drop(blue);
}

#[test]
fn a_switch_to_a_target_with_no_live_server_is_refused_unless_forced() {
    let dir = TempDir::new("fleet-refuse");
    let config: PathBuf = dir.0.join("bender.toml");
    std::fs::write(&config, "").unwrap();
    let node = Proc::local("lone", &config, &[]);
    let http = Http::new();
    let live = TestServer::start("blue");
    for (name, version) in [("blue", "1"), ("green", "1")] {
        http.post_json(
            &node.url("/backends"),
            &format!(r#"{{"name":"{name}","app":"{name}","version":"{version}"}}"#),
        );
    }
    http.post_json(
        &node.url("/v1/registrations"),
        &format!(
            r#"{{"app":"blue","version":"1","host":"127.0.0.1","port":{},"ttl":"120s"}}"#,
            live.port
        ),
    );
    http.post_json(
        &node.url("/frontends"),
        r#"{"name":"www","backend":"blue","bind":"127.0.0.1:8080"}"#,
    );
    // The API: green has no server, nor has blue@2.
    let r = http.post_json(
        &node.url("/v1/frontends/www/switch"),
        r#"{"backend":"green"}"#,
    );
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("NO_LIVE_SERVERS")),
        "{:?}",
        r.body
    );
    assert!(
        r.body["message"].as_str().unwrap().contains("green@1"),
        "{:?}",
        r.body
    );
    let r = http.post_json(&node.url("/v1/backends/blue/switch"), r#"{"version":"2"}"#);
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(
        http.get(&node.url("/frontends/www")).body["backend"],
        "blue"
    );
    assert_eq!(http.get(&node.url("/backends/blue")).body["version"], "1");
    // The CLI says so and exits 1; --force switches anyway, with a warning.
    let (code, _, err) = bender(
        &node.api,
        &["frontend", "switch", "www", "--backend", "green"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no live servers") && err.contains("NO_LIVE_SERVERS"),
        "{err}"
    );
    let (code, out, err) = bender(
        &node.api,
        &["frontend", "switch", "www", "--backend", "green", "--force"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("(0 live servers)") && err.contains("forced"),
        "{out}{err}"
    );
    assert_eq!(
        http.get(&node.url("/frontends/www")).body["backend"],
        "green"
    );
    // A live target needs no force; the wrong field is a 400, an unknown target too.
    let r = http.post_json(
        &node.url("/v1/frontends/www/switch"),
        r#"{"backend":"blue"}"#,
    );
    assert_eq!(
        (r.status, r.body["live_servers"].as_u64()),
        (200, Some(1)),
        "{:?}",
        r.body
    );
    let r = http.post_json(&node.url("/v1/frontends/www/switch"), r#"{"version":"2"}"#);
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = http.post_json(
        &node.url("/v1/frontends/www/switch"),
        r#"{"backend":"nope"}"#,
    );
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = http.post_json(
        &node.url("/v1/frontends/nope/switch"),
        r#"{"backend":"blue"}"#,
    );
    assert_eq!(r.status, 404, "{:?}", r.body);
}
