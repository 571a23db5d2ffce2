//! Several real `bender agent` processes on loopback over real UDP: convergence, renewals
//! through another node, concurrent entity writes, a delete racing an update, restarts, the event
//! stream, and garbage collection.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Http, TestCluster};
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(15);

fn all_agree(c: &TestCluster, path: &str) -> Option<Value> {
    let http = Http::new();
    let mut seen: Option<Value> = None;
    for i in c.running() {
        let r = http.get(&c.url(i, path));
        let body = json!({"status": r.status, "body": r.body});
        match &seen {
            None => seen = Some(body),
            Some(s) if *s == body => {}
            Some(_) => return None,
        }
    }
    seen
}

#[test]
fn registrations_and_entities_converge_on_three_nodes() {
    let c = TestCluster::start(3);
    c.wait_members(3);
    let http = Http::new();
    http.post_empty(&c.url(0, "/registrations/web/1/10.0.0.1/80"));
    http.post_empty(&c.url(1, "/registrations/web/1/10.0.0.2/80"));
    http.post_json(
        &c.url(2, "/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    http.post_json(&c.url(0, "/frontends"), r#"{"name":"www","backend":"web"}"#);
    for i in 0..3 {
        wait_until(CONVERGE, "node lists both registrations", || {
            http.get(&c.url(i, "/registrations/web/1"))
                .body
                .as_array()
                .is_some_and(|a| a.len() == 2)
        });
        wait_until(CONVERGE, "node lists the backend and frontend", || {
            http.get(&c.url(i, "/backends/web")).status == 200
                && http.get(&c.url(i, "/frontends/www")).status == 200
        });
    }
}

#[test]
fn renewals_through_a_different_node_keep_a_registration_live() {
    let c = TestCluster::start(3);
    c.wait_members(3);
    let http = Http::new();
    let body = r#"{"app":"web","version":"1","host":"10.0.0.1","port":80,"ttl":"1s"}"#;
    assert_eq!(
        http.post_json(&c.url(0, "/v1/registrations"), body).status,
        200
    );
    // Renew through the other nodes in turn, as the old client rotates through servers, for
    // three TTLs; the registration must stay live everywhere the whole time.
    let start = Instant::now();
    let mut n = 1;
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            http.post_json(&c.url(n % 3, "/v1/registrations"), body)
                .status,
            200
        );
        n += 1;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            for i in 0..3 {
                let r = http.get(&c.url(i, "/registrations/web/1"));
                // Before the first gossip round a node may not have it yet; once it has, it
                // must never lose it while renewals continue.
                if start.elapsed() > Duration::from_millis(500) {
                    assert_eq!(r.body.as_array().unwrap().len(), 1, "node {i} lost it");
                }
            }
        }
    }
    // Renewals stop: it expires everywhere.
    for i in 0..3 {
        wait_until(CONVERGE, "the registration expires everywhere", || {
            http.get(&c.url(i, "/registrations")).body == json!([])
        });
    }
}

#[test]
fn concurrent_updates_of_one_backend_end_identical_with_one_writers_whole_value() {
    let c = TestCluster::start(3);
    c.wait_members(3);
    let http = Http::new();
    http.post_json(
        &c.url(0, "/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    wait_until(CONVERGE, "the backend reaches node 1", || {
        http.get(&c.url(1, "/backends/web")).status == 200
    });
    for round in 0..5 {
        // Whole values (every field given): a PUT merges the fields it names into the node's
        // current value, so only whole bodies make each writer's value unambiguous.
        let a = json!({"app": "web", "version": format!("a{round}"), "balance": "leastconn", "mode": "http"});
        let b = json!({"app": "web", "version": format!("b{round}"), "balance": "roundrobin", "mode": "tcp"});
        let (ua, ub) = (c.url(0, "/backends/web"), c.url(1, "/backends/web"));
        let (sa, sb) = (a.to_string(), b.to_string());
        let ta = std::thread::spawn(move || Http::new().put_json(&ua, &sa).status);
        let tb = std::thread::spawn(move || Http::new().put_json(&ub, &sb).status);
        assert_eq!(ta.join().unwrap(), 200);
        assert_eq!(tb.join().unwrap(), 200);
        let mut agreed = Value::Null;
        wait_until(
            CONVERGE,
            "all nodes agree on the backend",
            || match all_agree(&c, "/backends/web") {
                Some(v) => {
                    agreed = v;
                    true
                }
                None => false,
            },
        );
        let got = &agreed["body"];
        // One writer's whole value: no mixing of fields from both.
        let is_a = got["version"] == a["version"]
            && got["balance"] == "leastconn"
            && got["mode"] == "http";
        let is_b = got["version"] == b["version"]
            && got["balance"] == "roundrobin"
            && got["mode"] == "tcp";
        assert!(is_a ^ is_b, "round {round}: mixed or unknown value {got}");
    }
}

#[test]
fn a_delete_racing_an_update_ends_the_same_everywhere_and_a_later_delete_sticks() {
    let c = TestCluster::start(3);
    c.wait_members(3);
    let http = Http::new();
    for round in 0..5 {
        let name = format!("web{round}");
        let r = http.post_json(
            &c.url(0, "/backends"),
            &json!({"name": name, "app": "web", "version": "1"}).to_string(),
        );
        assert_eq!(r.status, 201);
        wait_until(CONVERGE, "the backend reaches every node", || {
            all_agree(&c, &format!("/backends/{name}")).is_some_and(|v| v["status"] == 200)
        });
        let del = c.url(0, &format!("/backends/{name}"));
        let put = c.url(1, &format!("/backends/{name}"));
        let td = std::thread::spawn(move || Http::new().delete(&del).status);
        let tp = std::thread::spawn(move || {
            Http::new()
                .put_json(&put, r#"{"app":"web","version":"2"}"#)
                .status
        });
        assert_eq!(td.join().unwrap(), 204);
        // The update may arrive after the delete already reached node 1 (then it is a 404: an
        // update of a deleted backend), or before it: both are fine, disagreement is not.
        let put_status = tp.join().unwrap();
        assert!(put_status == 200 || put_status == 404, "{put_status}");
        let mut agreed = Value::Null;
        wait_until(
            CONVERGE,
            "all nodes agree after the race",
            || match all_agree(&c, &format!("/backends/{name}")) {
                Some(v) => {
                    agreed = v;
                    true
                }
                None => false,
            },
        );
        let deleted = agreed["status"] == 404;
        let updated = agreed["status"] == 200 && agreed["body"]["version"] == "2";
        assert!(deleted || updated, "round {round}: {agreed}");
        if put_status == 404 {
            assert!(
                deleted,
                "round {round}: a refused update cannot win: {agreed}"
            );
        }
        // A delete issued after the dust settled is final everywhere: no older write revives it.
        if updated {
            assert_eq!(
                http.delete(&c.url(2, &format!("/backends/{name}"))).status,
                204
            );
        }
        wait_until(CONVERGE, "the delete reaches every node", || {
            all_agree(&c, &format!("/backends/{name}")).is_some_and(|v| v["status"] == 404)
        });
    }
}

#[test]
fn a_killed_node_restarts_and_catches_up() {
    let mut c = TestCluster::start(3);
    c.wait_members(3);
    let http = Http::new();
    http.post_json(
        &c.url(0, "/backends"),
        r#"{"name":"before","app":"web","version":"1"}"#,
    );
    wait_until(CONVERGE, "node 2 has the first backend", || {
        http.get(&c.url(2, "/backends/before")).status == 200
    });
    c.kill(2);
    // Writes while node 2 is down.
    http.post_json(
        &c.url(1, "/backends"),
        r#"{"name":"during","app":"web","version":"1"}"#,
    );
    http.post_json(
        &c.url(0, "/v1/registrations"),
        r#"{"app":"web","version":"1","host":"10.0.0.7","port":80,"ttl":"60s"}"#,
    );
    assert_eq!(http.delete(&c.url(0, "/backends/before")).status, 204);
    c.restart(2);
    wait_until(CONVERGE, "the restarted node catches up", || {
        http.get(&c.url(2, "/backends/during")).status == 200
            && http.get(&c.url(2, "/backends/before")).status == 404
            && http
                .get(&c.url(2, "/registrations/web/1"))
                .body
                .as_array()
                .is_some_and(|a| a.len() == 1)
    });
    wait_until(CONVERGE, "the restarted node is ready", || {
        http.get(&c.url(2, "/v1/status")).body["ready"] == true
    });
}

#[test]
fn entities_survive_a_restart_of_the_whole_cluster() {
    let mut c = TestCluster::start(3);
    c.wait_members(3);
    let http = Http::new();
    http.post_json(
        &c.url(1, "/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    http.post_json(&c.url(1, "/frontends"), r#"{"name":"www","backend":"web"}"#);
    wait_until(CONVERGE, "every node has the entities", || {
        all_agree(&c, "/frontends/www").is_some_and(|v| v["status"] == 200)
            && all_agree(&c, "/backends/web").is_some_and(|v| v["status"] == 200)
    });
    // Let the snapshot be written (it is saved on every maintenance round that saw a change).
    wait_until(CONVERGE, "every node has snapshotted the entities", || {
        (0..3).all(|i| {
            std::fs::read_to_string(c.dir.join(format!("data{i}/snapshot.json")))
                .is_ok_and(|s| s.contains("b:web") && s.contains("f:www"))
        })
    });
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    for i in 0..3 {
        assert_eq!(http.get(&c.url(i, "/backends/web")).status, 200, "node {i}");
        assert_eq!(
            http.get(&c.url(i, "/frontends/www")).status,
            200,
            "node {i}"
        );
    }
}

/// SSE events (name and JSON) from a node's `/v1/events`.
fn subscribe(url: &str) -> std::sync::mpsc::Receiver<(String, Value)> {
    let events = common::sse(url, None);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for e in events {
            if tx.send((e.name, e.data)).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn every_node_emits_each_change_exactly_once() {
    let c = TestCluster::start(3);
    c.wait_members(3);
    let http = Http::new();
    let streams: Vec<_> = (0..3).map(|i| subscribe(&c.url(i, "/v1/events"))).collect();
    http.post_json(
        &c.url(0, "/v1/registrations"),
        r#"{"app":"ev","version":"1","host":"10.0.0.1","port":80,"ttl":"700ms"}"#,
    );
    // Renew through another node: a renewal is not an event.
    http.post_json(
        &c.url(1, "/v1/registrations"),
        r#"{"app":"ev","version":"1","host":"10.0.0.1","port":80,"ttl":"700ms"}"#,
    );
    http.post_json(
        &c.url(2, "/backends"),
        r#"{"name":"ev","app":"ev","version":"1"}"#,
    );
    wait_until(CONVERGE, "the backend reaches every node", || {
        all_agree(&c, "/backends/ev").is_some_and(|v| v["status"] == 200)
    });
    assert_eq!(http.delete(&c.url(1, "/backends/ev")).status, 204);
    let expected = ["online", "offline", "backend_updated", "backend_deleted"];
    for (i, rx) in streams.iter().enumerate() {
        let mut got: Vec<String> = Vec::new();
        let deadline = Instant::now() + CONVERGE;
        while !expected.iter().all(|e| got.iter().any(|g| g == e)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((name, data)) => {
                    if name.starts_with("backend") {
                        let n = data["backend"]["name"].as_str().or(data["name"].as_str());
                        assert_eq!(n, Some("ev"));
                    } else {
                        assert_eq!(data["registration"]["app"], "ev", "{data}");
                    }
                    got.push(name)
                }
                Err(_) => panic!("node {i}: missing events, got {got:?}"),
            }
        }
        // Nothing more arrives for these changes before a later one: a duplicate would be
        // emitted before the sentinel's own event (each node emits its events in order).
        if i == 0 {
            http.post_json(
                &c.url(0, "/v1/registrations"),
                r#"{"app":"sentinel","version":"1","host":"10.0.0.9","port":80,"ttl":"60s"}"#,
            );
        }
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((name, data)) if data["registration"]["app"] == "sentinel" => {
                assert_eq!(name, "online")
            }
            Ok(extra) => panic!("node {i}: duplicate event {extra:?} after {got:?}"),
            Err(_) => panic!("node {i}: the sentinel's event never arrived"),
        }
        let mut sorted = got.clone();
        sorted.sort();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(sorted, want, "node {i}");
    }
}

#[test]
fn expired_leases_are_garbage_collected_everywhere() {
    let c = TestCluster::start(2);
    c.wait_members(2);
    let http = Http::new();
    for port in 1..=50 {
        let body =
            format!(r#"{{"app":"gc","version":"1","host":"10.0.0.1","port":{port},"ttl":"2s"}}"#);
        let r = http.post_json(&c.url(port as usize % 2, "/v1/registrations"), &body);
        assert_eq!(r.status, 200);
    }
    // Every lease on both nodes (the TTL leaves gossip time to carry all 50 first).
    wait_until(CONVERGE, "both nodes hold all 50 leases", || {
        (0..2).all(|i| http.get(&c.url(i, "/v1/status")).body["leases_held"] == 50)
    });
    // lease_gc_grace is 1s in the test config: everything is forgotten soon after expiry.
    wait_until(CONVERGE, "expired leases are forgotten", || {
        (0..2).all(|i| {
            let s = http.get(&c.url(i, "/v1/status")).body;
            s["leases_held"] == 0 && s["registrations_live"] == 0
        })
    });
}

#[test]
fn a_node_killed_with_sigkill_comes_back_with_the_leases_it_held() {
    let mut c = TestCluster::start(1);
    let http = Http::new();
    for port in 1..=200 {
        let body =
            format!(r#"{{"app":"web","version":"1","host":"10.0.0.1","port":{port},"ttl":"60s"}}"#);
        assert_eq!(
            http.post_json(&c.url(0, "/v1/registrations"), &body).status,
            200
        );
    }
    // The snapshot follows the set of leases (not only entity changes and clean stops).
    let snapshot = c.dir.join("data0/snapshot.json");
    wait_until(CONVERGE, "the snapshot holds every lease", || {
        std::fs::read_to_string(&snapshot)
            .is_ok_and(|s| s.matches("r:web/1/10.0.0.1/").count() == 200)
    });
    c.kill(0);
    c.restart(0);
    let listed = http.get(&c.url(0, "/registrations/web/1")).body;
    assert_eq!(listed.as_array().map(Vec::len), Some(200));
}
