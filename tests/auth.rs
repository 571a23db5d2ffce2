//! Who may use the API of a real node: every route under each scope, with no token and with a
//! wrong one; token rotation by SIGHUP without a restart; the registration policy; raw config
//! snippets; refused writes in the log.

mod common;

use std::time::Duration;

use common::auth::{write_token_file, Tokens};
use common::{request_from, sighup, wait_for_log, wait_until, Http, TestCluster, TEST_CONFIG};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn temp_dir(tag: &str) -> common::haproxy::TempDir {
    common::haproxy::TempDir::new(tag)
}

/// A node whose API needs the three tokens, plus `extra` config (tables).
fn node_with_tokens(extra: &str) -> (TestCluster, Tokens, common::haproxy::TempDir) {
    let dir = temp_dir("auth");
    let tokens = Tokens::write(&dir.0);
    let c = TestCluster::start_with(1, &format!("{TEST_CONFIG}\n{}\n{extra}", tokens.config()));
    (c, tokens, dir)
}

/// Every route, with a request that succeeds given enough scope, and the scope it needs.
fn routes() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
)> {
    let be = r#"{"name":"api","app":"api","version":"1"}"#;
    let fe = r#"{"name":"www2","backend":"web","bind":"127.0.0.1:18080"}"#;
    let reg = r#"{"app":"web","version":"1","host":"127.0.0.1","port":9001}"#;
    vec![
        ("GET", "/health", "", None),
        ("GET", "/ready", "", None),
        ("GET", "/registrations", "", Some("read")),
        ("GET", "/registrations/web", "", Some("read")),
        ("GET", "/registrations/web/1", "", Some("read")),
        (
            "POST",
            "/registrations/web/1/127.0.0.1/9002",
            "",
            Some("register"),
        ),
        ("GET", "/v1/registrations", "", Some("read")),
        ("POST", "/v1/registrations", reg, Some("register")),
        (
            "GET",
            "/v1/registrations/web/1/127.0.0.1/9001",
            "",
            Some("read"),
        ),
        (
            "DELETE",
            "/v1/registrations/web/1/127.0.0.1/9002",
            "",
            Some("register"),
        ),
        ("GET", "/backends", "", Some("read")),
        ("POST", "/backends", be, Some("admin")),
        ("GET", "/backends/web", "", Some("read")),
        ("PUT", "/backends/web", r#"{"version":"2"}"#, Some("admin")),
        ("GET", "/v1/backends", "", Some("read")),
        ("DELETE", "/backends/api", "", Some("admin")),
        ("GET", "/frontends", "", Some("read")),
        ("POST", "/frontends", fe, Some("admin")),
        ("GET", "/frontends/www", "", Some("read")),
        (
            "PUT",
            "/v1/frontends/www",
            r#"{"backend":"web"}"#,
            Some("admin"),
        ),
        ("DELETE", "/frontends/www2", "", Some("admin")),
        ("GET", "/v1/members", "", Some("read")),
        ("GET", "/v1/state", "", Some("read")),
        ("GET", "/v1/status", "", Some("read")),
        ("GET", "/metrics", "", Some("read")),
    ]
}

fn grants(scope: &str, need: &str) -> bool {
    scope == "admin" || scope == need
}

#[test]
fn every_route_is_401_without_a_valid_token_403_without_the_scope_and_served_with_it() {
    // The routes register servers on 127.0.0.1, which only an explicit rule allows.
    let (c, t, _dir) = node_with_tokens(
        "[[registration.allow]]\nname = \"local\"\nclients = [\"127.0.0.0/8\"]\napps = [\"web\"]\nhosts = [\"127.0.0.1/32\"]\n",
    );
    let base = c.node(0).api.clone();
    let admin = Http::with_token(&t.admin);
    let r = admin.post_json(
        &c.url(0, "/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = admin.post_json(
        &c.url(0, "/frontends"),
        r#"{"name":"www","backend":"web","bind":"127.0.0.1:18081"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = admin.post_json(
        &c.url(0, "/v1/registrations"),
        r#"{"app":"web","version":"1","host":"127.0.0.1","port":9001,"ttl":"1h"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);

    let credentials: [(&str, Option<&str>); 5] = [
        ("none", None),
        ("wrong", Some("wrong-token-0123456789abcdef")),
        ("read", Some(&t.read)),
        ("register", Some(&t.register)),
        ("admin", Some(&t.admin)),
    ];
    for (who, token) in credentials {
        for (method, path, body, need) in routes() {
            let (status, resp) = request_from("127.0.0.1", &base, method, path, token, body);
            let what = format!("{who}: {method} {path} -> {status} {resp}");
            match need {
                None => assert!(status < 400, "{what}"),
                Some(_) if matches!(who, "none" | "wrong") => {
                    assert_eq!(status, 401, "{what}");
                    assert_eq!(resp["code"], "UNAUTHORIZED", "{what}");
                    assert!(
                        resp["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "{what}"
                    );
                }
                Some(need) if !grants(who, need) => {
                    assert_eq!(status, 403, "{what}");
                    assert_eq!(resp["code"], "FORBIDDEN", "{what}");
                    assert!(resp["message"].as_str().unwrap().contains(need), "{what}");
                }
                Some(_) => assert!(status < 300, "{what}"),
            }
        }
    }
    // 401 tells the client how to authenticate.
    let raw = common::raw_http(
        &base,
        "GET /v1/members HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{raw}"
    );
}

#[test]
fn refused_writes_are_logged_with_the_client_address_and_counted() {
    let (c, t, _dir) = node_with_tokens("");
    let base = c.node(0).api.clone();
    let (status, _) = request_from(
        "127.0.0.3",
        &base,
        "DELETE",
        "/frontends/www",
        Some(&t.register),
        "",
    );
    assert_eq!(status, 403);
    let line = wait_for_log(c.node(0), WAIT, &["API write refused", "127.0.0.3"]);
    assert!(
        line.contains("forbidden") && line.contains("DELETE"),
        "{line}"
    );
    let http = Http::with_token(&t.read);
    let scrape = common::scrape(&http, &c.url(0, "/metrics"));
    assert_eq!(
        common::sample(
            &scrape,
            "bender_api_refused_total",
            &[("reason", "forbidden")]
        ),
        Some(1.0)
    );
}

#[test]
fn tokens_rotate_on_sighup_without_a_restart() {
    let (c, t, _dir) = node_with_tokens("");
    let url = c.url(0, "/v1/members");
    let new = "admin-rotated-0123456789abcdef012";
    assert_eq!(Http::with_token(&t.admin).get(&url).status, 200);
    assert_eq!(Http::with_token(new).get(&url).status, 401);

    // Step 1: the new token is added beside the old one; both work after the reload.
    write_token_file(&t.file("admin"), &[&t.admin, new]);
    sighup(c.node(0));
    wait_until(WAIT, "the new token works", || {
        Http::with_token(new).get(&url).status == 200
    });
    assert_eq!(Http::with_token(&t.admin).get(&url).status, 200);

    // A token file that cannot be used is refused, and the running tokens stay.
    std::fs::set_permissions(
        t.file("admin"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    sighup(c.node(0));
    let line = wait_for_log(c.node(0), WAIT, &["config reload refused"]);
    assert!(line.contains("every user"), "{line}");
    assert_eq!(Http::with_token(new).get(&url).status, 200);

    // Step 2: the old token is removed; it stops working, with no restart.
    write_token_file(&t.file("admin"), &[new]);
    sighup(c.node(0));
    wait_until(WAIT, "the old token is refused", || {
        Http::with_token(&t.admin).get(&url).status == 401
    });
    assert_eq!(Http::with_token(new).get(&url).status, 200);
    let (status, body) = request_from("127.0.0.1", &c.node(0).api, "GET", "/health", None, "");
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ok")),
        "no restart needed"
    );
}

#[test]
fn a_register_token_registers_its_own_address_only_unless_a_rule_allows_more() {
    // Three clients with addresses of their own; the third is a NAT gateway a rule covers.
    let (_hosts, addrs) = common::netns::own_addresses(3);
    let (a, b, nat) = (&addrs[0], &addrs[1], &addrs[2]);
    let dir = temp_dir("policy");
    let t = Tokens::write(&dir.0);
    let config = dir.0.join("bender.toml");
    std::fs::write(
        &config,
        format!(
            "{TEST_CONFIG}\n{}\n[[registration.allow]]\nname = \"nat-gateway\"\nclients = [\"{nat}/32\"]\napps = [\"web\"]\nhosts = [\"10.0.1.0/24\"]\n",
            t.config()
        ),
    )
    .unwrap();
    let (_node, api) = common::Proc::on_every_address("policy", Some(&config));
    let base = format!("http://{a}:{api}");
    let reg = |src: &str, app: &str, host: &str| {
        let body = format!(r#"{{"app":"{app}","version":"1","host":"{host}","port":8080}}"#);
        request_from(
            src,
            &base,
            "POST",
            "/v1/registrations",
            Some(&t.register),
            &body,
        )
    };
    // Its own address: yes, whichever client.
    assert_eq!(reg(a, "web", a).0, 200);
    assert_eq!(reg(b, "api", b).0, 200);
    // Another host: no, and the refusal names the rule.
    let (status, body) = reg(b, "web", "10.0.0.9");
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "FORBIDDEN");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("registration.default") && msg.contains("own-address"),
        "{msg}"
    );
    assert_eq!(reg(b, "web", a).0, 403, "another client's address");
    // The LB itself is nobody's own address: a client on the LB's host may not point every
    // LB's traffic at the LBs' own loopback (their API, their stats port).
    let local = format!("http://127.0.0.1:{api}");
    let (status, body) = request_from(
        "127.0.0.1",
        &local,
        "POST",
        "/v1/registrations",
        Some(&t.register),
        r#"{"app":"web","version":"1","host":"127.0.0.1","port":1729}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("the LB itself"),
        "{body}"
    );
    // The old route too, and deregistering someone else is refused the same way.
    let (status, _) = request_from(
        b,
        &base,
        "POST",
        "/registrations/web/1/10.0.0.9/8080",
        Some(&t.register),
        "",
    );
    assert_eq!(status, 403);
    let (status, body) = request_from(
        b,
        &base,
        "DELETE",
        &format!("/v1/registrations/web/1/{a}/8080"),
        Some(&t.register),
        "",
    );
    assert_eq!(status, 403, "{body}");
    // The rule lets its clients register the hosts it lists, for its apps only.
    assert_eq!(reg(nat, "web", "10.0.1.7").0, 200);
    let (status, body) = reg(nat, "api", "10.0.1.7");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("nat-gateway"),
        "{body}"
    );
    let (status, _) = reg(nat, "web", "10.0.2.7");
    assert_eq!(status, 403);
    // An admin may register anything.
    let (status, _) = request_from(
        b,
        &base,
        "POST",
        "/v1/registrations",
        Some(&t.admin),
        r#"{"app":"web","version":"1","host":"10.0.0.9","port":8080}"#,
    );
    assert_eq!(status, 200);
    let listed = Http::with_token(&t.read).get(&format!("{local}/v1/registrations"));
    let mut hosts: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    hosts.sort_unstable();
    let mut expected = vec!["10.0.0.9", "10.0.1.7", a.as_str(), b.as_str()];
    expected.sort_unstable();
    assert_eq!(hosts, expected);
}

#[test]
fn raw_snippets_need_the_node_switch_and_an_admin_token() {
    let raw = r#"{"name":"web","app":"web","version":"1","extra":["http-response set-header X-Node %[hostname]"]}"#;
    let listed = r#"{"name":"web","app":"web","version":"1","extra":["http-response set-header X-Frame-Options DENY"]}"#;
    // Off by default: an admin gets 400, naming the switch; allow-listed lines pass.
    let (c, t, _dir) = node_with_tokens("");
    let admin = Http::with_token(&t.admin);
    let r = admin.post_json(&c.url(0, "/backends"), raw);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("config_snippets"), "{}", r.text);
    assert_eq!(admin.post_json(&c.url(0, "/backends"), listed).status, 201);
    drop(c);

    // On: an admin token may write raw lines.
    let (c, t, _dir) = node_with_tokens("[api]\nconfig_snippets = true\n");
    let r = Http::with_token(&t.admin).post_json(&c.url(0, "/backends"), raw);
    assert_eq!(r.status, 201, "{}", r.text);
    drop(c);

    // Being on the node's own host is not a credential: a node without tokens lets loopback
    // in as admin, but not with raw lines.
    let c = TestCluster::start_with(
        1,
        &format!("{TEST_CONFIG}\n[api]\nconfig_snippets = true\n"),
    );
    let r = Http::new().post_json(&c.url(0, "/backends"), raw);
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        Http::new().post_json(&c.url(0, "/backends"), listed).status,
        201
    );
}

#[test]
fn a_node_without_credentials_refuses_clients_from_other_addresses() {
    // Bound to every address, so the test can also connect from its non-loopback address.
    let (node, api) = common::Proc::on_every_address("open", None);
    let line = wait_for_log(&node, WAIT, &["no credentials configured"]);
    assert!(line.contains("WARN"), "{line}");
    let base = format!("http://127.0.0.1:{api}");
    assert_eq!(
        request_from("127.0.0.1", &base, "GET", "/v1/members", None, "").0,
        200
    );
    // An address of this host that is not loopback: the test-host bridge's (needs root, as
    // the other network tests do).
    let hosts = common::netns::Hosts::new(1);
    let own = hosts.bridge_ip();
    let (status, body) = request_from(
        &own,
        &format!("http://{own}:{api}"),
        "GET",
        "/v1/members",
        None,
        "",
    );
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("own host"),
        "{body}"
    );
}

/// What a web page can make a browser on the LB's host send: a "simple" POST with a body it
/// does not declare JSON, a request from another origin, or one to a name the page's owner
/// points at 127.0.0.1 (DNS rebinding). A node without credentials lets loopback in as admin,
/// so each must be refused; the CLI and curl send none of these and are served.
#[test]
fn browser_requests_from_other_sites_and_rebound_names_are_refused() {
    let c = TestCluster::start(1);
    let base = c.node(0).api.clone();
    let status = |req: &str| -> (u16, String) {
        let raw = common::raw_http(&base, req);
        let code = raw
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (code, raw)
    };
    let body = r#"{"app":"web","version":"1","host":"6.6.6.6","port":80}"#;
    let post = |headers: &str, ctype: &str| {
        format!(
            "POST /v1/registrations HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}{ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // fetch(..., {mode: "no-cors", body: new Blob([...])}): no Content-Type at all.
    let (code, raw) = status(&post("", ""));
    assert_eq!(code, 415, "{raw}");
    let (code, raw) = status(&post("", "Content-Type: text/plain\r\n"));
    assert_eq!(code, 415, "{raw}");
    // From another site, declared or not.
    let json = "Content-Type: application/json\r\n";
    for headers in [
        "Origin: https://evil.example\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Origin: null\r\n",
    ] {
        let (code, raw) = status(&post(headers, json));
        assert_eq!(code, 403, "{headers}: {raw}");
        assert!(raw.contains("cross-site"), "{raw}");
    }
    // A rebound name: same-origin as far as the browser knows.
    let (code, raw) = status(
        "GET /v1/state HTTP/1.1\r\nHost: rebind.evil.example:1729\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 403, "{raw}");
    assert!(raw.contains("rebind.evil.example"), "{raw}");
    let listed = Http::new().get(&c.url(0, "/v1/registrations"));
    assert_eq!(listed.body, json!([]), "nothing was registered");
    // What the CLI or curl sends is served.
    let (code, raw) = status(&post("", json));
    assert_eq!(code, 200, "{raw}");
    let scrape = common::scrape(&Http::new(), &c.url(0, "/metrics"));
    assert_eq!(
        common::sample(
            &scrape,
            "bender_api_refused_total",
            &[("reason", "cross_site")]
        ),
        Some(4.0)
    );
}
