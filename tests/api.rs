//! The HTTP API of one real node: every bender 0.2.1 route and status code, the v1 API, and
//! validation of bad input.

mod common;

use std::time::{Duration, Instant};

use common::{sample, scrape, wait_until, Http, TestCluster};
use serde_json::{json, Value};

#[test]
fn compat_registrations() {
    let c = TestCluster::start(1);
    let http = Http::new();
    let r = http.post_empty(&c.url(0, "/registrations/web/1.0.0/10.0.0.1/8080"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], "web/1.0.0/10.0.0.1/8080");
    assert_eq!(r.body["resource"], "Registration");
    http.post_empty(&c.url(0, "/registrations/web/2.0.0/10.0.0.2/8080"));
    http.post_empty(&c.url(0, "/registrations/api/1.0.0/10.0.0.3/9000"));

    let all = http.get(&c.url(0, "/registrations"));
    assert_eq!(all.status, 200);
    assert_eq!(all.body.as_array().unwrap().len(), 3);
    let by_app = http.get(&c.url(0, "/registrations/web"));
    assert_eq!(by_app.body.as_array().unwrap().len(), 2);
    let by_version = http.get(&c.url(0, "/registrations/web/2.0.0"));
    let list = by_version.body.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let reg = &list[0];
    let mut keys: Vec<&str> = reg
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "app",
            "host",
            "id",
            "port",
            "registered",
            "resource",
            "version"
        ]
    );
    assert_eq!(reg["port"], 8080);
    assert_eq!(reg["host"], "10.0.0.2");
    assert!(reg["registered"].as_str().unwrap().ends_with('Z'));
    assert_eq!(http.get(&c.url(0, "/registrations/none")).body, json!([]));
}

fn entity_routes(kind: &str, create: Value, update: Value, not_found: &str) {
    let c = TestCluster::start(1);
    let http = Http::new();
    let base = c.url(0, &format!("/{kind}"));
    let name = create["name"].as_str().unwrap().to_string();

    assert_eq!(http.get(&base).body, json!([]));
    let r = http.post_json(&base, &create.to_string());
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/{kind}/{name}").as_str())
    );
    let r = http.post_json(&base, &create.to_string());
    assert_eq!(r.status, 409);
    assert_eq!(r.body["code"], "CONFLICT");

    let mut missing_name = create.clone();
    missing_name.as_object_mut().unwrap().remove("name");
    let r = http.post_json(&base, &missing_name.to_string());
    assert_eq!(r.status, 400);
    assert_eq!(r.body["code"], "INVALID");
    assert!(r.body["message"].as_str().unwrap().contains("name"));

    let one = http.get(&format!("{base}/{name}"));
    assert_eq!(one.status, 200);
    for (k, v) in create.as_object().unwrap() {
        assert_eq!(&one.body[k], v, "field {k}");
    }
    let list = http.get(&base);
    assert_eq!(list.body.as_array().unwrap().len(), 1);

    let r = http.put_json(&format!("{base}/{name}"), &update.to_string());
    assert_eq!(r.status, 200, "{}", r.text);
    let one = http.get(&format!("{base}/{name}"));
    for (k, v) in update.as_object().unwrap() {
        assert_eq!(&one.body[k], v, "updated field {k}");
    }
    // A partial update keeps the fields it does not name.
    let before = http.get(&format!("{base}/{name}")).body;
    let (field, _) = update.as_object().unwrap().iter().next().unwrap();
    let r = http.put_json(
        &format!("{base}/{name}"),
        &json!({field: before[field]}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(http.get(&format!("{base}/{name}")).body, before);
    let r = http.put_json(&format!("{base}/nope"), &update.to_string());
    assert_eq!(r.status, 404);
    let r = http.put_json(
        &format!("{base}/{name}"),
        &json!({"name": "other"}).to_string(),
    );
    assert_eq!(r.status, 400);

    let r = http.get(&format!("{base}/nope"));
    assert_eq!(r.status, 404);
    assert_eq!(r.text, not_found);

    let r = http.delete(&format!("{base}/{name}"));
    assert_eq!(r.status, 204);
    assert_eq!(r.text, "");
    let r = http.delete(&format!("{base}/{name}"));
    assert_eq!(r.status, 404);
    assert_eq!(r.body["code"], "NOT_FOUND");
    assert_eq!(http.get(&format!("{base}/{name}")).status, 404);
    // A deleted name can be created again.
    assert_eq!(http.post_json(&base, &create.to_string()).status, 201);
}

#[test]
fn compat_backends() {
    entity_routes(
        "backends",
        json!({"name": "web", "app": "web", "version": "1.0.0"}),
        json!({"app": "web", "version": "2.0.0", "balance": "leastconn"}),
        r#"{"message":"Backend not found","code":"NOT_FOUND"}"#,
    );
}

#[test]
fn compat_frontends() {
    entity_routes(
        "frontends",
        json!({"name": "www", "backend": "web"}),
        json!({"backend": "web-v2", "bind": "127.0.0.1:8080"}),
        r#"{"message":"Frontend not found","code":"NOT_FOUND"}"#,
    );
}

#[test]
fn bad_input_is_a_clear_error_and_never_a_crash() {
    let c = TestCluster::start(1);
    let http = Http::new();
    let check = |r: common::Resp, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.body["code"], code, "{}", r.text);
        assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    // Path parameters.
    for path in [
        "/registrations/web/1.0/10.0.0.1/0",
        "/registrations/web/1.0/10.0.0.1/65536",
        "/registrations/web/1.0/10.0.0.1/http",
        "/registrations/web%0Abackend%20x/1.0/10.0.0.1/80",
        "/registrations/web%23x/1.0/10.0.0.1/80",
        "/registrations/web/1.0/bad_host!/80",
        "/registrations/%25%5Bsrc%5D/1.0/10.0.0.1/80",
    ] {
        check(http.post_empty(&c.url(0, path)), 400, "INVALID");
    }
    let backends = c.url(0, "/backends");
    for body in [
        r#"{"name":"web","app":"web","version":"1","color":"red"}"#,
        r#"{"name":"we b","app":"web","version":"1"}"#,
        r#"{"name":"web","app":"web"}"#,
        r#"{"name":"web","app":"web","version":"1","extra":["backend evil"]}"#,
        r#"{"name":"web","app":"web","version":"1","extra":["x\ny"]}"#,
        r#"{"name":"web","app":"web","version":"1","balance":"magic"}"#,
        r#"[1,2]"#,
        r#"{"name": "#,
        "",
    ] {
        check(http.post_json(&backends, body), 400, "INVALID");
    }
    check(
        http.post_json(
            &c.url(0, "/frontends"),
            r#"{"name":"www","backend":"web","bind":"*:99999"}"#,
        ),
        400,
        "INVALID",
    );
    check(
        http.send(
            "POST",
            &backends,
            Some("text/plain"),
            r#"{"name":"web","app":"web","version":"1"}"#,
        ),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    );
    // An oversized body is refused from its declared length, before it is read: speak raw
    // HTTP so the client does not trip over the server closing early.
    let raw = common::raw_http(
        &c.node(0).api,
        "POST /backends HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 70000\r\n\r\n{\"name\":",
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains(r#""code":"PAYLOAD_TOO_LARGE""#), "{raw}");
    // Without a declared length (chunked), the limit applies while reading.
    let chunk = "x".repeat(40_000);
    let raw = common::raw_http(
        &c.node(0).api,
        &format!(
            "POST /backends HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len(),
            chunk.len()
        ),
    );
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    let r = http.send("PATCH", &backends, None, "");
    assert_eq!(r.allow.as_deref(), Some("GET, POST"));
    check(r, 405, "METHOD_NOT_ALLOWED");
    let r = http.get(&c.url(0, "/registrations/web/1.0/10.0.0.1/80"));
    assert_eq!(
        r.allow.as_deref(),
        Some("POST"),
        "each 405 names its route's methods"
    );
    check(r, 405, "METHOD_NOT_ALLOWED");
    let r = http.send("DELETE", &c.url(0, "/v1/fleet"), None, "");
    assert_eq!(r.allow.as_deref(), Some("GET"));
    check(r, 405, "METHOD_NOT_ALLOWED");
    check(http.get(&c.url(0, "/nothing/here")), 404, "NOT_FOUND");
    // v1 validation.
    let v1 = c.url(0, "/v1/registrations");
    for body in [
        r#"{"app":"web","version":"1","host":"10.0.0.1","port":80,"ttl":"1ms"}"#,
        r#"{"app":"web","version":"1","host":"10.0.0.1","port":80,"ttl":"99h"}"#,
        r#"{"app":"web","version":"1","host":"10.0.0.1","port":80,"ttl":"soon"}"#,
        r#"{"app":"web","version":"1","host":"10.0.0.1","port":0}"#,
        r#"{"app":"web","version":"1","host":"10.0.0.1","port":80,"meta":{"w":"a b"}}"#,
        r#"{"app":"web","version":"1","host":"10.0.0.1","port":80,"nope":1}"#,
    ] {
        check(http.post_json(&v1, body), 400, "INVALID");
    }
    // The node is still healthy and nothing invalid was stored.
    assert_eq!(http.get(&c.url(0, "/health")).status, 200);
    assert_eq!(http.get(&c.url(0, "/registrations")).body, json!([]));
    assert_eq!(http.get(&backends).body, json!([]));
}

#[test]
fn v1_registration_with_ttl_meta_filters_and_deregistration() {
    let c = TestCluster::start(1);
    let http = Http::new();
    let v1 = c.url(0, "/v1/registrations");
    let r = http.post_json(
        &v1,
        r#"{"app":"web","version":"2","host":"10.0.0.9","port":81,"ttl":"30s","meta":{"weight":"10","zone":"a"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ttl_ms"], 30_000);
    assert_eq!(r.body["meta"]["zone"], "a");
    http.post_json(
        &v1,
        r#"{"app":"web","version":"2","host":"10.0.0.8","port":81,"ttl":5000}"#,
    );
    http.post_json(
        &v1,
        r#"{"app":"api","version":"2","host":"10.0.0.9","port":82}"#,
    );
    let by_host = http.get(&format!("{v1}?host=10.0.0.9"));
    assert_eq!(by_host.body.as_array().unwrap().len(), 2);
    let by_app = http.get(&format!("{v1}?app=web&version=2"));
    assert_eq!(by_app.body.as_array().unwrap().len(), 2);
    let one = http.get(&c.url(0, "/v1/registrations/web/2/10.0.0.9/81"));
    assert_eq!(one.body["meta"]["weight"], "10");

    let d = http.delete(&c.url(0, "/v1/registrations/web/2/10.0.0.9/81"));
    assert_eq!(d.status, 204);
    // Deregistration is immediate, not after the TTL.
    assert_eq!(
        http.get(&c.url(0, "/v1/registrations/web/2/10.0.0.9/81"))
            .status,
        404
    );
    assert_eq!(
        http.get(&format!("{v1}?app=web"))
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_500ms_registration_is_listed_at_once_and_gone_by_one_second_every_time() {
    let c = TestCluster::start(1);
    let http = Http::new();
    let list = c.url(0, "/registrations/short");
    for round in 0..5 {
        let body = format!(
            r#"{{"app":"short","version":"1","host":"10.0.0.1","port":{},"ttl":"500ms"}}"#,
            1000 + round
        );
        let t0 = Instant::now();
        let r = http.post_json(&c.url(0, "/v1/registrations"), &body);
        assert_eq!(r.status, 200);
        let listed = http.get(&list);
        assert_eq!(
            listed.body.as_array().unwrap().len(),
            1,
            "round {round}: listed at once"
        );
        // The property under test is a time bound: look again once one second has passed.
        let left = Duration::from_secs(1).saturating_sub(t0.elapsed());
        std::thread::sleep(left);
        assert_eq!(http.get(&list).body, json!([]), "round {round}: gone by 1s");
    }
}

#[test]
fn default_ttl_is_four_seconds_and_renewal_extends_it() {
    let c = TestCluster::start(1);
    let http = Http::new();
    let r = http.post_empty(&c.url(0, "/registrations/web/1/10.0.0.1/80"));
    assert_eq!(r.status, 200);
    let one_url = c.url(0, "/v1/registrations/web/1/10.0.0.1/80");
    let one = http.get(&one_url);
    assert_eq!(one.body["ttl_ms"], 4000);
    // Fixed-width RFC 3339 with milliseconds: later instants compare greater as strings.
    let first_expiry = one.body["expires"].as_str().unwrap().to_string();
    wait_until(
        Duration::from_secs(10),
        "a renewal moves the expiry later",
        || {
            let r = http.post_empty(&c.url(0, "/registrations/web/1/10.0.0.1/80"));
            assert_eq!(r.status, 200);
            http.get(&one_url).body["expires"].as_str().unwrap() > first_expiry.as_str()
        },
    );
    let status = http.get(&c.url(0, "/v1/status"));
    assert_eq!(status.body["registrations_live"], 1);
    assert_eq!(status.body["ready"], true);
    wait_until(Duration::from_secs(10), "the registration expires", || {
        http.get(&c.url(0, "/registrations")).body == json!([])
    });
}

#[test]
fn sigterm_stops_the_node_cleanly() {
    let mut c = TestCluster::start(1);
    let status = c.nodes[0].as_mut().unwrap().terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn metrics_are_valid_prometheus_text_and_count_what_happened() {
    let c = TestCluster::start(1);
    let http = Http::new();
    http.post_empty(&c.url(0, "/registrations/web/1/10.0.0.1/80"));
    http.post_empty(&c.url(0, "/registrations/web/1/10.0.0.1/0"));
    http.get(&c.url(0, "/backends/missing"));
    for (name, app) in [("web", "web"), ("empty", "nobody")] {
        let body = format!(r#"{{"name":"{name}","app":"{app}","version":"1"}}"#);
        assert_eq!(http.post_json(&c.url(0, "/backends"), &body).status, 201);
    }
    let url = c.url(0, "/metrics");
    wait_until(
        Duration::from_secs(10),
        "the gauges follow the view",
        || {
            let s = scrape(&http, &url);
            sample(&s, "bender_registrations_live", &[]) == Some(1.0)
                && sample(&s, "bender_events_total", &[("kind", "online")]) == Some(1.0)
                && sample(&s, "bender_backend_servers_live", &[("backend", "web")]) == Some(1.0)
        },
    );
    let s = scrape(&http, &url);
    let route = "/registrations/:app/:version/:host/:port";
    assert_eq!(
        sample(
            &s,
            "bender_api_requests_total",
            &[("route", route), ("status", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &s,
            "bender_api_requests_total",
            &[("route", route), ("status", "400")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &s,
            "bender_api_requests_total",
            &[("route", "/backends/:name"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&s, "bender_gossip_members", &[("state", "live")]),
        Some(1.0)
    );
    assert_eq!(sample(&s, "bender_gossip_dropped_total", &[]), Some(0.0));
    // A lone node gossips with nobody.
    assert_eq!(sample(&s, "bender_gossip_sent_bytes_total", &[]), Some(0.0));
    assert_eq!(
        sample(
            &s,
            "bender_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&s, "bender_backend_servers_live", &[("backend", "empty")]),
        Some(0.0)
    );
    // The process itself: a node holds some memory, has used some CPU, has sockets open.
    let rss = sample(&s, "bender_process_resident_memory_bytes", &[]).unwrap();
    assert!(rss > 1e6 && rss < 1e10, "{rss}");
    assert!(sample(&s, "bender_process_cpu_seconds_total", &[]).unwrap() > 0.0);
    let fds = sample(&s, "bender_process_open_fds", &[]).unwrap();
    assert!(fds >= 3.0 && fds <= sample(&s, "bender_process_max_fds", &[]).unwrap());
}

#[test]
fn health_and_ready() {
    let c = TestCluster::start(1);
    let http = Http::new();
    assert_eq!(http.get(&c.url(0, "/health")).status, 200);
    wait_until(Duration::from_secs(10), "a lone node is ready", || {
        http.get(&c.url(0, "/ready")).status == 200
    });
}

#[test]
fn an_event_stream_resumes_after_its_last_event_id_and_says_why_a_server_went_offline() {
    let c = TestCluster::start(1);
    let http = Http::new();
    let url = c.url(0, "/v1/events");
    let events = common::sse(&url, None);
    let next = |rx: &std::sync::mpsc::Receiver<common::Sse>| {
        rx.recv_timeout(Duration::from_secs(10)).expect("an event")
    };
    let reg = |port: u16, ttl: &str| {
        format!(r#"{{"app":"web","version":"1","host":"10.0.0.1","port":{port},"ttl":"{ttl}"}}"#)
    };
    assert_eq!(
        http.post_json(&c.url(0, "/v1/registrations"), &reg(81, "60s"))
            .status,
        200
    );
    let online = next(&events);
    assert_eq!(online.name, "online");
    assert_eq!(
        http.delete(&c.url(0, "/v1/registrations/web/1/10.0.0.1/81"))
            .status,
        204
    );
    let offline = next(&events);
    assert_eq!(
        (offline.name.as_str(), offline.data["reason"].as_str()),
        ("offline", Some("deregistered"))
    );
    // One that expires (the shortest TTL a node takes by default).
    assert_eq!(
        http.post_json(&c.url(0, "/v1/registrations"), &reg(82, "100ms"))
            .status,
        200
    );
    let online2 = next(&events);
    let expired = next(&events);
    assert_eq!(
        (expired.name.as_str(), expired.data["reason"].as_str()),
        ("offline", Some("expired"))
    );
    // Ids count up within the node's epoch.
    let ids: Vec<String> = [&online, &offline, &online2, &expired]
        .iter()
        .map(|e| e.id.clone().expect("an id"))
        .collect();
    let (epoch, first) = ids[0].split_once('-').unwrap();
    let first: u64 = first.parse().unwrap();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(*id, format!("{epoch}-{}", first + i as u64));
    }
    // A client that lost its stream after the deregistration resumes with what it missed.
    let resumed = common::sse(&url, Some(&ids[1]));
    let (a, b) = (next(&resumed), next(&resumed));
    assert_eq!(
        (a.id.as_deref(), b.id.as_deref()),
        (Some(&*ids[2]), Some(&*ids[3]))
    );
    assert_eq!(b.data["registration"]["port"], 82);
    // An id this node cannot continue from (another process's) gets the whole state first.
    let fresh = common::sse(&url, Some("1-1"));
    let r = next(&fresh);
    assert_eq!(r.name, "resync");
    assert!(r.data["state"]["registrations"].is_array(), "{:?}", r.data);
}
