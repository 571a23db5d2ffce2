//! The operator's CLI against running nodes: every subcommand, and the sidecar that keeps a
//! registration alive and removes it at once on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bender_cli as bender, wait_until, Http, TestCluster};
use serde_json::Value;

fn json(addr: &str, args: &[&str]) -> Value {
    let (code, out, err) = bender(addr, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn every_operator_subcommand_against_a_two_node_cluster() {
    let c = TestCluster::start(2);
    c.wait_members(2);
    let a = c.node(0).api.clone();
    let b = c.node(1).api.clone();

    let (code, out, err) = bender(
        &a,
        &[
            "register", "web", "1", "10.0.0.1", "8080", "--ttl", "30s", "--meta", "zone=a",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("registered web@1 10.0.0.1:8080"), "{out}");
    wait_until(Duration::from_secs(10), "the other node lists it", || {
        json(&b, &["list", "--json"])
            .as_array()
            .is_some_and(|l| l.len() == 1)
    });
    let listed = json(&b, &["list", "registrations", "--app", "web", "--json"]);
    assert_eq!(listed[0]["meta"]["zone"], "a");
    let (_, table, _) = bender(&b, &["list"]);
    assert!(table.starts_with("APP"), "{table}");
    assert!(table.contains("10.0.0.1:8080"), "{table}");

    let members = json(&a, &["members", "--json"]);
    assert_eq!(members.as_array().unwrap().len(), 2);
    let (_, table, _) = bender(&a, &["members"]);
    assert!(
        table.contains("node0 (this)") && table.contains("live"),
        "{table}"
    );

    // Blue/green with the CLI.
    let (code, out, err) = bender(
        &a,
        &[
            "backend",
            "create",
            "web",
            "--app",
            "web",
            "--version",
            "1",
            "--balance",
            "leastconn",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // For people a sentence, for scripts (--json) the API's answer.
    assert_eq!(
        out.trim(),
        "backend web created: serves web@1 (leastconn, http)"
    );
    let (_, lines, _) = bender(&a, &["backend", "get", "web"]);
    assert!(
        lines.contains("app: web\n") && lines.contains("balance: leastconn\n"),
        "{lines}"
    );
    // web@2 has no live server: refused, unless forced.
    let (code, _, err) = bender(&b, &["backend", "switch", "web", "--version", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NO_LIVE_SERVERS"), "{err}");
    let (code, out, err) = bender(
        &b,
        &["backend", "switch", "web", "--version", "2", "--force"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("backend web switched from 1 to 2 (0 live servers)"),
        "{out}"
    );
    wait_until(Duration::from_secs(10), "the switch reaches node 0", || {
        json(&a, &["list", "backends", "--json"])[0]["version"] == "2"
    });
    // The switch kept the other fields.
    assert_eq!(
        json(&a, &["list", "backends", "--json"])[0]["balance"],
        "leastconn"
    );
    let (code, _, err) = bender(
        &a,
        &["backend", "update", "web", "--health-path", "/health"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&a, &["backend", "get", "web", "--json"])["health_check"]["path"],
        "/health"
    );

    let (code, _, err) = bender(
        &a,
        &[
            "frontend",
            "create",
            "www",
            "--backend",
            "web",
            "--bind",
            "127.0.0.1:8080",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // A switch needs the backend to exist (400 otherwise) and, without --force, live servers.
    let (code, _, err) = bender(&a, &["frontend", "switch", "www", "--backend", "web2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no backend \"web2\""), "{err}");
    let (code, _, err) = bender(
        &a,
        &[
            "backend",
            "create",
            "web2",
            "--app",
            "web",
            "--version",
            "2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = bender(
        &a,
        &["frontend", "switch", "www", "--backend", "web2", "--force"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&a, &["frontend", "get", "www", "--json"])["backend"],
        "web2"
    );
    let (_, table, _) = bender(&a, &["list", "frontends"]);
    assert!(
        table.contains("web2") && table.contains("127.0.0.1:8080"),
        "{table}"
    );
    let (code, _, _) = bender(&a, &["frontend", "delete", "www"]);
    assert_eq!(code, 0);
    let (code, _, _) = bender(&a, &["backend", "delete", "web"]);
    assert_eq!(code, 0);
    let (code, _, err) = bender(&a, &["backend", "delete", "web"]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "{err}");

    let status = json(&a, &["status", "--json"]);
    assert_eq!(status["node_id"], "node0");
    let (_, table, _) = bender(&a, &["status"]);
    assert!(table.contains("registrations_live"), "{table}");

    let (code, _, _) = bender(&a, &["deregister", "web", "1", "10.0.0.1", "8080"]);
    assert_eq!(code, 0);
    wait_until(
        Duration::from_secs(10),
        "the deregistration reaches node 1",
        || {
            json(&b, &["list", "--json"])
                .as_array()
                .is_some_and(|l| l.is_empty())
        },
    );

    // A dead first address falls through to the next one.
    let both = format!("127.0.0.1:1,{a}");
    assert!(json(&both, &["members", "--json"]).is_array());
    let (code, _, err) = bender("127.0.0.1:1", &["members"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach bender"), "{err}");
}

#[test]
fn the_sidecar_renews_and_deregisters_at_once_on_sigterm() {
    let c = TestCluster::start(2);
    c.wait_members(2);
    let http = Http::new();
    let mut sidecar = Command::new(env!("CARGO_BIN_EXE_bender"))
        .args([
            "register", "side", "1", "10.0.0.5", "9000", "--ttl", "1500ms", "--keep",
        ])
        .env("BENDER_ADDR", &c.node(0).api)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let other = c.url(1, "/registrations/side");
    wait_until(
        Duration::from_secs(10),
        "the other node sees the sidecar's registration",
        || {
            http.get(&other)
                .body
                .as_array()
                .is_some_and(|a| a.len() == 1)
        },
    );
    // It stays live across several TTLs because the sidecar renews.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2000) {
        assert_eq!(
            http.get(&other).body.as_array().unwrap().len(),
            1,
            "lapsed while renewing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = common::sse(&c.url(1, "/v1/events"), None);
    let pid = nix::unistd::Pid::from_raw(sidecar.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = sidecar.wait().unwrap();
    assert!(status.success());
    // Gone because the sidecar deregistered before exiting, not because its TTL ran out: the
    // other node's offline event says which.
    let offline = loop {
        let e = events
            .recv_timeout(Duration::from_secs(10))
            .expect("the offline event");
        if e.name == "offline" && e.data["registration"]["app"] == "side" {
            break e;
        }
    };
    assert_eq!(offline.data["reason"], "deregistered", "{:?}", offline.data);
    assert!(http
        .get(&other)
        .body
        .as_array()
        .is_some_and(|a| a.is_empty()));
}

#[test]
fn status_shows_a_failing_template_its_one_line_error_and_what_ready_answers() {
    let dir = common::haproxy::TempDir::new("cli-status");
    let template = dir.0.join("broken.tera");
    // A syntax error on the second line: the error text spans several lines.
    std::fs::write(&template, "global\n{% if %}\n").unwrap();
    let c = TestCluster::start_with(
        1,
        &format!(
            "{}\n[[template]]\nname = \"broken\"\nsource = \"{}\"\ndestination = \"{}\"\ncheck = []\nreload = {{ method = \"none\" }}\n",
            common::TEST_CONFIG,
            template.display(),
            dir.0.join("haproxy.cfg").display()
        ),
    );
    let a = c.node(0).api.clone();
    wait_until(
        Duration::from_secs(10),
        "the status reports the template error",
        || json(&a, &["status", "--json"])["templates"][0]["template_error"].is_string(),
    );
    let (code, table, err) = bender(&a, &["status"]);
    assert_eq!(code, 0, "{err}");
    let ready = table.lines().find(|l| l.starts_with("ready")).unwrap_or("");
    assert!(ready.contains("no:"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("broken"))
        .unwrap_or_else(|| panic!("no row for the template: {table}"));
    assert!(row.contains("error"), "{table}");
    assert!(
        row.contains("broken.tera"),
        "the error names the file: {table}"
    );
    // One row per template: the multi-line error does not break the table.
    assert_eq!(
        table.lines().filter(|l| !l.trim().is_empty()).count(),
        7 + 2,
        "{table}"
    );
}

#[test]
fn every_field_the_api_takes_is_settable_from_the_cli() {
    let c = TestCluster::start(1);
    let a = c.node(0).api.clone();
    let ok = |args: &[&str]| {
        let (code, out, err) = bender(&a, args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    };
    ok(&[
        "backend",
        "create",
        "web",
        "--app",
        "web",
        "--version",
        "1",
        "--health-path",
        "/health",
        "--health-interval",
        "2s",
        "--server-options",
        "maxconn 100",
        "--extra",
        "timeout server 10s",
        "--extra",
        "option redispatch",
    ]);
    ok(&["backend", "create", "api", "--app", "api", "--version", "1"]);
    let b = json(&a, &["backend", "get", "web", "--json"]);
    assert_eq!(
        b["health_check"],
        serde_json::json!({"path": "/health", "interval_ms": 2000})
    );
    assert_eq!(b["server_options"], "maxconn 100");
    assert_eq!(
        b["extra"],
        serde_json::json!(["timeout server 10s", "option redispatch"])
    );
    // An update changes what it names: the interval stays when only the path changes.
    ok(&[
        "backend",
        "update",
        "web",
        "--health-path",
        "/ready",
        "--extra",
        "",
    ]);
    let b = json(&a, &["backend", "get", "web", "--json"]);
    assert_eq!(
        b["health_check"],
        serde_json::json!({"path": "/ready", "interval_ms": 2000})
    );
    assert!(b.get("extra").is_none(), "{b}");
    ok(&[
        "frontend",
        "create",
        "www",
        "--backend",
        "web",
        "--bind",
        "127.0.0.1:8080",
        "--rule",
        "host=api.example.com,backend=api",
        "--rule",
        "host=example.com,path=/api,backend=api",
        "--extra",
        "option httplog",
    ]);
    let f = json(&a, &["frontend", "get", "www", "--json"]);
    assert_eq!(
        f["rules"],
        serde_json::json!([
            {"host": "api.example.com", "backend": "api"},
            {"host": "example.com", "path_prefix": "/api", "backend": "api"},
        ])
    );
    assert_eq!(f["extra"], serde_json::json!(["option httplog"]));
    ok(&["frontend", "update", "www", "--rule", ""]);
    assert!(json(&a, &["frontend", "get", "www", "--json"])
        .get("rules")
        .is_none());
    // What the CLI can tell is wrong is refused before anything is sent, with exit code 2.
    for (args, says) in [
        (
            &["backend", "create", "x", "--version", "1"][..],
            "needs --app and --version",
        ),
        (
            &[
                "backend",
                "create",
                "x",
                "--app",
                "x",
                "--version",
                "1",
                "--balance",
                "fastest",
            ][..],
            "possible values: roundrobin",
        ),
        (
            &["frontend", "create", "y", "--rule", "path=/a"][..],
            "needs backend=NAME",
        ),
        (
            &["list", "frontends", "--app", "web"][..],
            "filter registrations only",
        ),
    ] {
        let (code, _, err) = bender(&a, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
