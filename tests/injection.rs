//! An injection corpus against every field a client can send: each value is refused with a 4xx
//! before anything is stored, so no template ever sees it. The node renders the default
//! template to a file; at the end the registry and the rendered file are exactly as before.

mod common;

use std::time::Duration;

use common::{wait_until, Http, TestCluster, TEST_CONFIG};
use serde_json::{json, Value};

/// The corpus: what breaks out of a line, a quote, a comment, a template, an allow-list or a
/// section, what reads a file, and what is too big.
fn corpus() -> Vec<String> {
    vec![
        "a\nb".into(),
        "a\r\nfrontend evil".into(),
        "a#b".into(),
        "a\"b".into(),
        "a'b".into(),
        "a`b".into(),
        "%[env(HOME)]".into(),
        "%H".into(),
        "${HOME}".into(),
        "{{ vars }}".into(),
        "{% if true %}x{% endif %}".into(),
        "a\0b".into(),
        "a\u{2028}b".into(),
        "é".into(),
        "x".repeat(65_536),
        "backend evil".into(),
        "log-forward syslog".into(),
        "fcgi-app php".into(),
        "http-request return status 200 file /etc/bender/tokens/admin".into(),
        "errorfile 503 /etc/shadow".into(),
        "lua-load /tmp/evil.lua".into(),
        "".into(),
        " ".into(),
    ]
}

/// Values that are fine as names but must never pass as a host: addresses in disguise.
fn numeric_hosts() -> Vec<String> {
    [
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "0127.0.0.1",
        "127.1",
        "10.0.0.0x1",
    ]
    .map(String::from)
    .to_vec()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Sets `path` (dotted, with [0] for the first element) in `v` to `value`.
fn set(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let (name, index) = match p.strip_suffix("[0]") {
            Some(n) => (n, true),
            None => (*p, false),
        };
        let obj = cur.as_object_mut().expect("an object");
        if index {
            let arr = obj.entry(name).or_insert_with(|| json!([{}]));
            if last {
                arr[0] = value;
                return;
            }
            cur = &mut arr[0];
        } else if last {
            obj.insert(name.to_string(), value);
            return;
        } else {
            cur = obj.entry(name).or_insert_with(|| json!({}));
        }
    }
}

fn assert_refused(what: &str, r: &common::Resp) {
    assert!(
        (400..500).contains(&r.status) && r.status != 404,
        "{what}: expected a refusal, got {} {}",
        r.status,
        r.text
    );
    assert!(
        r.body["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{what}: {}",
        r.text
    );
}

#[test]
fn every_client_field_refuses_the_injection_corpus_before_any_template_sees_it() {
    let dir = common::haproxy::TempDir::new("injection");
    let rendered = dir.0.join("haproxy.cfg");
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/haproxy.cfg.tera");
    let c = TestCluster::start_with(
        1,
        &format!(
            "{TEST_CONFIG}\n[apply]\ndebounce_quiet = \"10ms\"\ndebounce_max = \"50ms\"\n\n[[template]]\nname = \"haproxy\"\nsource = \"{template}\"\ndestination = \"{}\"\ncheck = []\nreload = {{ method = \"none\" }}\n",
            rendered.display()
        ),
    );
    let http = Http::new();
    // Something valid to update, so PUTs reach validation.
    let backend = json!({"name": "web", "app": "web", "version": "1",
        "health_check": {"path": "/health", "interval_ms": 1000},
        "server_options": "maxconn 100", "extra": ["timeout server 30s"]});
    let frontend = json!({"name": "www", "backend": "web", "bind": "127.0.0.1:18082",
        "rules": [{"host": "api.example.com", "path_prefix": "/api", "backend": "web"}],
        "extra": ["timeout client 30s"]});
    assert_eq!(
        http.post_json(&c.url(0, "/backends"), &backend.to_string())
            .status,
        201
    );
    assert_eq!(
        http.post_json(&c.url(0, "/frontends"), &frontend.to_string())
            .status,
        201
    );
    let reg = json!({"app": "web", "version": "1", "host": "127.0.0.1", "port": 9000,
        "ttl": "1h", "meta": {"zone": "a"}});
    assert_eq!(
        http.post_json(&c.url(0, "/v1/registrations"), &reg.to_string())
            .status,
        200
    );
    let status_url = c.url(0, "/v1/status");
    wait_until(
        Duration::from_secs(20),
        "the valid state is rendered",
        || {
            std::fs::read_to_string(&rendered).is_ok_and(|t| t.contains(" 127.0.0.1:9000 weight "))
                && http.get(&status_url).body["templates"][0]["ok"] == true
        },
    );
    let state_before = http.get(&c.url(0, "/v1/state")).body;
    let file_before = std::fs::read_to_string(&rendered).unwrap();

    let mut tried = 0;
    // The 0.2.1 registration route: every path segment.
    for payload in corpus().iter().chain(numeric_hosts().iter()) {
        let p = encode(payload);
        for (field, path) in [
            ("app", format!("/registrations/{p}/1/127.0.0.1/9000")),
            ("version", format!("/registrations/web/{p}/127.0.0.1/9000")),
            ("host", format!("/registrations/web/1/{p}/9000")),
            ("port", format!("/registrations/web/1/127.0.0.1/{p}")),
        ] {
            if numeric_hosts().contains(payload) && field != "host" {
                continue;
            }
            if payload.len() > 60_000 {
                // Longer than a request head may be (64 KiB): refused by the HTTP layer, and
                // too long for an HTTP client library to send at all.
                let raw = common::raw_http(
                    &c.node(0).api,
                    &format!(
                        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    ),
                );
                assert!(
                    raw.starts_with("HTTP/1.1 4"),
                    "{field}: {}",
                    &raw[..raw.len().min(80)]
                );
            } else {
                let r = http.post_empty(&c.url(0, &path));
                if payload.is_empty() {
                    // An empty segment changes the path itself: no route matches.
                    assert_eq!(r.status, 404, "path {field} = {payload:?}: {}", r.text);
                } else {
                    assert_refused(&format!("path {field} = {payload:?}"), &r);
                }
            }
            tried += 1;
        }
    }
    // JSON bodies: every string field of registrations, backends and frontends, created
    // and updated.
    let bodies: [(&str, &str, Value, &[&str]); 4] = [
        (
            "POST",
            "/v1/registrations",
            reg.clone(),
            &[
                "app",
                "version",
                "host",
                "port",
                "ttl",
                "meta.zone",
                "meta.a b",
            ],
        ),
        (
            "POST",
            "/backends",
            json!({"name": "web2", "app": "web", "version": "1"}),
            &[
                "name",
                "app",
                "version",
                "balance",
                "mode",
                "health_check.path",
                "health_check.interval_ms",
                "server_options",
                "extra[0]",
            ],
        ),
        (
            "PUT",
            "/backends/web",
            json!({}),
            &[
                "app",
                "version",
                "balance",
                "mode",
                "health_check.path",
                "server_options",
                "extra[0]",
            ],
        ),
        (
            "POST",
            "/frontends",
            json!({"name": "www2", "backend": "web"}),
            &[
                "name",
                "backend",
                "bind",
                "mode",
                "rules[0].host",
                "rules[0].path_prefix",
                "rules[0].backend",
                "extra[0]",
            ],
        ),
    ];
    for (method, path, base, fields) in &bodies {
        for field in fields.iter() {
            let hosty = field.ends_with("host");
            let payloads: Vec<String> = if hosty {
                corpus().into_iter().chain(numeric_hosts()).collect()
            } else {
                corpus()
            };
            for payload in payloads {
                if payload.len() > 60_000 {
                    continue; // A body that big is refused whole: see below.
                }
                if *path == "/frontends" && *field == "backend" && payload.is_empty() {
                    continue; // No default backend, as 0.2.1 allowed (rendered without one).
                }
                let mut body = base.clone();
                if *field == "meta.a b" {
                    // A meta key that is not a name.
                    set(&mut body, "meta", json!({ payload.clone(): "x" }));
                } else {
                    set(&mut body, field, json!(payload));
                }
                if field.starts_with("rules[0].") && body["rules"][0].get("backend").is_none() {
                    set(&mut body, "rules[0].backend", json!("web"));
                }
                let text = body.to_string();
                let r = match *method {
                    "POST" => http.post_json(&c.url(0, path), &text),
                    _ => http.put_json(&c.url(0, path), &text),
                };
                assert_refused(&format!("{method} {path} {field} = {payload:?}"), &r);
                tried += 1;
            }
        }
    }
    // A 64 KiB value makes a body larger than max_body_bytes: refused from its declared
    // length, before it is read (sent raw: the node closes without reading the rest).
    for (method, path, _, _) in &bodies {
        let raw = common::raw_http(
            &c.node(0).api,
            &format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 65600\r\n\r\n{{\"name\":\"xxxx"),
        );
        assert!(raw.starts_with("HTTP/1.1 413"), "{method} {path}: {raw}");
        tried += 1;
    }
    // The frontend's PUT too, for its lines and rules.
    for payload in corpus().into_iter().filter(|p| p.len() < 60_000) {
        for field in ["bind", "extra[0]", "rules[0].path_prefix"] {
            let mut body = json!({});
            set(&mut body, field, json!(payload));
            if field.starts_with("rules") {
                set(&mut body, "rules[0].backend", json!("web"));
            }
            let r = http.put_json(&c.url(0, "/frontends/www"), &body.to_string());
            assert_refused(&format!("PUT /frontends/www {field} = {payload:?}"), &r);
            tried += 1;
        }
    }
    assert!(tried > 700, "{tried} attempts");

    // Nothing was stored, nothing changed what is rendered, nothing had to be left out.
    assert_eq!(http.get(&c.url(0, "/v1/state")).body, state_before);
    assert_eq!(std::fs::read_to_string(&rendered).unwrap(), file_before);
    let status = http.get(&status_url).body;
    assert_eq!(status["templates"][0]["excluded"], json!([]), "{status}");
    assert_eq!(http.get(&c.url(0, "/health")).status, 200);
}
