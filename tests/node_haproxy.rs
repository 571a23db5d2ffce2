//! A real node driving a real HAProxy on loopback: a burst of registrations through the API is
//! applied with at most two reloads, counted by HAProxy itself.

mod common;

use std::time::{Duration, Instant};

use common::haproxy::{master_reloads, served, write_node_files, Haproxy, TempDir, TestServer};
use common::{free_port, sample, scrape, wait_until, Http, Proc};

#[test]
fn a_burst_of_200_registrations_reloads_haproxy_at_most_twice_plus_once_per_further_second_of_burst(
) {
    let dir = TempDir::new("burst");
    let config = write_node_files(&dir.0, "");
    let haproxy = Haproxy::start(&dir.0, &dir.0.join("haproxy.cfg"));
    let node = Proc::local("burst", &config, &[]);
    let http = Http::new();
    let fe_port = free_port();
    let app = TestServer::start("app");
    http.post_json(
        &node.url("/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    http.post_json(
        &node.url("/frontends"),
        &format!(r#"{{"name":"www","backend":"web","bind":"127.0.0.1:{fe_port}"}}"#),
    );
    http.post_json(
        &node.url("/v1/registrations"),
        &format!(
            r#"{{"app":"web","version":"1","host":"127.0.0.1","port":{},"ttl":"60s"}}"#,
            app.port
        ),
    );
    wait_until(
        Duration::from_secs(20),
        "HAProxy serves the first server",
        || served(fe_port).as_deref() == Some("app"),
    );
    // The master answers `show proc` between reloads: retry through one in progress.
    let reloads = || {
        common::haproxy::wait_for("show proc", Duration::from_secs(10), || {
            master_reloads(&haproxy.master_socket)
        })
    };
    let before = reloads();

    // 200 more servers: loopback ports nobody listens on (only the reloads are counted here,
    // and no request is sent through HAProxy after this point).
    let start = Instant::now();
    for i in 0..200 {
        let body = format!(
            r#"{{"app":"web","version":"1","host":"127.0.0.1","port":{},"ttl":"60s"}}"#,
            40_000 + i
        );
        assert_eq!(
            http.post_json(&node.url("/v1/registrations"), &body).status,
            200
        );
    }
    let burst = start.elapsed();
    let cfg_path = dir.0.join("haproxy.cfg");
    // Applied means HAProxy runs it: the status's config hash (set after a verified reload) is
    // the file's. The file alone is renamed in place before the reload.
    wait_until(
        Duration::from_secs(20),
        "all 201 servers are applied",
        || {
            let Ok(bytes) = std::fs::read(&cfg_path) else {
                return false;
            };
            let text = String::from_utf8_lossy(&bytes);
            // Ready slots: `server` lines that are not `disabled` (spare slots are).
            let servers = text
                .lines()
                .filter(|l| l.starts_with("    server ") && !l.contains(" disabled"))
                .count();
            // The version the file is stamped with (`description bender-config:<version>`).
            let version = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("description bender-config:"));
            let st = http.get(&node.url("/v1/status")).body;
            servers == 201
                && version.is_some()
                && st["templates"][0]["config_hash"].as_str() == version
        },
    );
    let after = reloads();
    // The debounce applies once the changes pause (200 ms) or the oldest is 1 s old: a burst
    // within a second reloads at most twice, and each further second of a burst slowed down by
    // a loaded machine may add one reload, no more.
    let bound = 2 + burst.as_secs();
    assert!(
        (1..=bound).contains(&(after - before)),
        "{} reloads for a burst of {burst:?}",
        after - before
    );

    // /metrics tells the same story as the status and as HAProxy.
    let status = http.get(&node.url("/v1/status")).body["templates"][0].clone();
    let m = scrape(&http, &node.url("/metrics"));
    let t = [("template", "haproxy")];
    let applies = status["applies"].as_f64().unwrap();
    assert!(applies >= 2.0, "{status}");
    assert_eq!(
        sample(&m, "bender_applies_total", &[t[0], ("result", "ok")]),
        Some(applies)
    );
    assert_eq!(
        sample(&m, "bender_applies_total", &[t[0], ("result", "error")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "bender_reloads_total", &t),
        status["reloads"].as_f64()
    );
    assert_eq!(sample(&m, "bender_template_ok", &t), Some(1.0));
    assert!(sample(&m, "bender_seconds_since_last_successful_apply", &t).is_some());
    // Every render and every `haproxy -c` is in its histogram.
    for (name, count) in [
        ("bender_render_duration_seconds", status["renders"].as_f64()),
        ("bender_validate_duration_seconds", Some(applies)),
    ] {
        assert_eq!(sample(&m, &format!("{name}_count"), &t), count, "{name}");
        let buckets = m
            .samples
            .iter()
            .find_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) if s.metric == name => Some(b.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} has buckets"));
        let inf = buckets.last().unwrap();
        assert!(inf.less_than.is_infinite(), "{name}: last bucket {inf:?}");
        assert_eq!(
            Some(inf.count),
            count,
            "{name}: +Inf holds every observation"
        );
    }
}
