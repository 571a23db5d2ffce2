//! Golden and property tests of rendering: a fixture view in, the exact HAProxy text out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::cluster::Member;
use crate::model::{Backend, Balance, Frontend, HealthCheck, Mode, RegKey, Rule, Snippets};
use crate::registry::{LiveRegistration, View};

const GOLDEN: &str = "tests/fixtures/default-template.golden.cfg";

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn backend(name: &str, app: &str, version: &str) -> Backend {
    Backend {
        name: name.into(),
        app: app.into(),
        version: version.into(),
        balance: Balance::Roundrobin,
        mode: Mode::Http,
        health_check: None,
        server_options: None,
        extra: vec![],
    }
}

fn lease(app: &str, version: &str, host: &str, port: u16, renewed_ms: u64) -> LiveRegistration {
    LiveRegistration {
        key: RegKey::new(app, version, host, port).unwrap(),
        registered_ms: renewed_ms,
        deadline_ms: renewed_ms + 4000,
        ttl_ms: 4000,
        meta: BTreeMap::new(),
    }
}

/// A view exercising every part of the default template. `renewed_ms` moves every lease's
/// renewal time and deadline, as renewals do.
pub(crate) fn fixture(renewed_ms: u64) -> NodeView {
    let mut view = View::default();
    let mut web = backend("web", "web", "v1");
    web.health_check = Some(HealthCheck {
        path: Some("/health".into()),
        interval_ms: Some(2000),
    });
    web.server_options = Some("maxconn 100".into());
    web.extra = vec!["timeout server 60s".into()];
    let web2 = backend("web-v2", "web", "v2");
    let mut api = backend("api", "api", "v1");
    api.balance = Balance::Leastconn;
    let empty = backend("empty", "ghost", "v1");
    let mut db = backend("db", "db", "v1");
    db.mode = Mode::Tcp;
    db.health_check = Some(HealthCheck {
        path: None,
        interval_ms: None,
    });
    for b in [web, web2, api, empty, db] {
        view.backends.insert(b.name.clone(), b);
    }
    let www = Frontend {
        name: "www".into(),
        backend: "web".into(),
        bind: "127.0.0.1:8080".into(),
        mode: Mode::Http,
        rules: vec![
            Rule {
                host: Some("api.example.com".into()),
                path_prefix: None,
                backend: "api".into(),
            },
            Rule {
                host: None,
                path_prefix: Some("/v2/".into()),
                backend: "web-v2".into(),
            },
            Rule {
                host: Some("old.example.com".into()),
                path_prefix: Some("/x".into()),
                backend: "gone".into(),
            },
        ],
        extra: vec!["http-request set-header X-Via bender".into()],
    };
    let pg = Frontend {
        name: "pg".into(),
        backend: "db".into(),
        bind: "127.0.0.1:15432".into(),
        mode: Mode::Tcp,
        rules: vec![],
        extra: vec![],
    };
    let orphan = Frontend {
        name: "orphan".into(),
        backend: "nowhere".into(),
        bind: "127.0.0.1:8081".into(),
        mode: Mode::Http,
        rules: vec![],
        extra: vec![],
    };
    for f in [www, pg, orphan] {
        view.frontends.insert(f.name.clone(), f);
    }
    let mut weighted = lease("api", "v1", "10.0.1.1", 80, renewed_ms);
    weighted.meta.insert("weight".into(), "50".into());
    weighted.meta.insert("zone".into(), "a".into());
    let mut badweight = lease("api", "v1", "10.0.1.2", 80, renewed_ms + 7);
    badweight.meta.insert("weight".into(), "heavy".into());
    for l in [
        lease("web", "v1", "10.0.0.2", 8080, renewed_ms),
        lease("web", "v1", "10.0.0.1", 8080, renewed_ms + 1),
        lease("web", "v1", "10.0.0.1", 8081, renewed_ms + 2),
        lease("web", "v2", "::1", 9000, renewed_ms + 3),
        lease("web", "v2", "app-3.example.com", 9000, renewed_ms + 4),
        lease("db", "v1", "10.0.2.1", 5432, renewed_ms + 5),
        lease("lonely", "v9", "10.9.9.9", 1, renewed_ms + 6),
        weighted,
        badweight,
    ] {
        view.registrations.insert(l.key.clone(), l);
    }
    let members = vec![
        Member {
            node_id: "lb-1".into(),
            gossip_addr: "10.0.9.1:1730".parse().unwrap(),
            api_addr: Some("10.0.9.1:1729".into()),
            live: true,
            is_self: true,
            clock_offset_ms: Some(0),
        },
        Member {
            node_id: "lb-2".into(),
            gossip_addr: "10.0.9.2:1730".parse().unwrap(),
            api_addr: None,
            live: true,
            is_self: false,
            clock_offset_ms: Some(renewed_ms as i64 % 17),
        },
    ];
    NodeView {
        view,
        members,
        ready: true,
        ..Default::default()
    }
}

/// Vars that let the default template run unprivileged, with sockets under `dir`.
pub(crate) fn test_vars(dir: &Path) -> BTreeMap<String, String> {
    [
        ("stats_socket", dir.join("admin.sock").display().to_string()),
        (
            "server_state_file",
            dir.join("server-state").display().to_string(),
        ),
        ("log", String::new()),
        ("chroot", String::new()),
        ("user", String::new()),
        ("group", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// An empty directory of this test process, named after `tag`.
fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bender-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn default_template(vars: BTreeMap<String, String>) -> TemplateConfig {
    TemplateConfig {
        name: "haproxy".into(),
        source: manifest("templates/haproxy.cfg.tera"),
        destination: PathBuf::from("/nonexistent/haproxy.cfg"),
        check: None,
        reload: ReloadConfig::None,
        vars,
        server_state: None,
    }
}

fn render_default(nv: &NodeView, vars: BTreeMap<String, String>) -> String {
    let out = render_once(&[default_template(vars)], "lb-1", nv).unwrap();
    out.into_iter().next().unwrap().1
}

fn golden_vars() -> BTreeMap<String, String> {
    test_vars(Path::new("/run/bender-test"))
}

#[test]
fn default_template_matches_the_golden_file() {
    let text = render_default(&fixture(1_000), golden_vars());
    let golden = manifest(GOLDEN);
    if std::env::var_os("BENDER_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (BENDER_UPDATE_GOLDEN=1 writes it)",
            golden.display()
        )
    });
    assert_eq!(
        text, expected,
        "rendered output differs from {GOLDEN}; rerun with BENDER_UPDATE_GOLDEN=1 and review the diff"
    );
}

#[tokio::test]
async fn the_golden_config_passes_haproxy_check() {
    let dir = fresh_dir("golden");
    let target = dir.join("haproxy.cfg");
    let text = render_default(&fixture(1_000), test_vars(&dir));
    let staged = files::Staged::write(&target, text.as_bytes()).unwrap();
    let argv = default_template(BTreeMap::new()).check_command();
    let result = files::check(&argv, staged.path(), &target, Duration::from_secs(30)).await;
    drop(staged);
    std::fs::remove_dir_all(&dir).unwrap();
    result.unwrap();
}

#[test]
fn rendering_is_deterministic() {
    let a = render_default(&fixture(1_000), golden_vars());
    for _ in 0..5 {
        assert_eq!(render_default(&fixture(1_000), golden_vars()), a);
    }
    // The same view built in another order renders the same bytes.
    let mut nv = fixture(1_000);
    let regs: Vec<_> = nv.view.registrations.values().cloned().rev().collect();
    nv.view.registrations.clear();
    for r in regs {
        nv.view.registrations.insert(r.key.clone(), r);
    }
    assert_eq!(render_default(&nv, golden_vars()), a);
}

#[test]
fn renewals_render_the_same_bytes() {
    let before = fixture(1_000);
    let after = fixture(987_654);
    assert_ne!(before.view, after.view, "the fixture's deadlines moved");
    assert_eq!(
        render_default(&before, golden_vars()),
        render_default(&after, golden_vars())
    );
    let vars = BTreeMap::new();
    assert_eq!(context("n", &before, &vars), context("n", &after, &vars));
}

#[test]
fn context_sorts_servers_and_names_them_stably() {
    let ctx = context("lb-1", &fixture(1), &BTreeMap::new());
    let names: Vec<&str> = ctx.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["api", "db", "empty", "web", "web-v2"]);
    let web2 = &ctx.backends[4];
    let servers: Vec<(&str, &str)> = web2
        .servers
        .iter()
        .map(|s| (s.name.as_str(), s.address.as_str()))
        .collect();
    assert_eq!(
        servers,
        [
            ("web-v2-__1-9000", "[::1]:9000"),
            ("web-v2-app-3.example.com-9000", "app-3.example.com:9000"),
        ]
    );
    let api = &ctx.backends[0];
    assert_eq!(api.servers[0].weight, Some(50));
    assert_eq!(
        api.servers[1].weight, None,
        "a bad weight is ignored, not rendered"
    );
    let www = ctx.frontends.iter().find(|f| f.name == "www").unwrap();
    let usable: Vec<bool> = www.rules.iter().map(|r| r.usable).collect();
    assert_eq!(usable, [true, true, false]);
    assert!(ctx
        .frontends
        .iter()
        .any(|f| f.name == "orphan" && f.default_backend.is_none()));
}

#[test]
fn a_broken_template_reports_file_and_line() {
    let dir = fresh_dir("broken");
    let source = dir.join("broken.cfg.tera");
    std::fs::write(
        &source,
        "global\n    maxconn 10\n{% for b in backends %}\nbackend {{ b.name }\n",
    )
    .unwrap();
    let mut t = default_template(BTreeMap::new());
    t.source = source.clone();
    let err = render_once(&[t], "n", &fixture(1)).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.to_string()
            .contains(&format!("{}:4:", source.display())),
        "{err}"
    );
}

/// The worker, with no HAProxy at all: writes go to a temp dir, no check, no reload.
#[tokio::test]
async fn a_burst_of_changes_is_applied_at_most_twice_plus_once_per_further_second_and_renewals_not_at_all(
) {
    let dir = fresh_dir("burst");
    let dest = dir.join("haproxy.cfg");
    let mut t = default_template(test_vars(&dir));
    t.destination = dest.clone();
    t.check = Some(vec![]);
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(NodeView::default()));
    let (trigger, shutdown) = crate::shutdown::channel();
    let handle = spawn(
        ApplyConfig::default(),
        vec![t],
        "lb-1".into(),
        Snippets::AllowListed,
        rx,
        &crate::supervise::Failures::new(),
        shutdown,
    );

    // Not ready yet: the worker must wait for the burst below.
    let mut not_ready = fixture(1);
    not_ready.ready = false;
    tx.send(Arc::new(not_ready)).unwrap();
    let start = tokio::time::Instant::now();
    // No DNS names here: whether one resolves depends on the machine's network.
    let fixture = |k: u64| {
        let mut nv = fixture(k);
        nv.view
            .registrations
            .retain(|key, _| key.host.parse::<std::net::IpAddr>().is_ok());
        nv
    };
    for k in 0..200u64 {
        let mut nv = fixture(k);
        let key = RegKey::new("web", "v1", "10.1.0.1", 1000 + k as u16).unwrap();
        nv.view
            .registrations
            .insert(key.clone(), lease("web", "v1", "10.1.0.1", key.port, k));
        tx.send(Arc::new(nv)).unwrap();
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    let burst = start.elapsed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // What is written is the render, stamped with its version.
    let expect = super::stamp::stamp(&render_default(
        &{
            let mut nv = fixture(199);
            let key = RegKey::new("web", "v1", "10.1.0.1", 1199).unwrap();
            nv.view
                .registrations
                .insert(key.clone(), lease("web", "v1", "10.1.0.1", 1199, 199));
            nv
        },
        test_vars(&dir),
    ))
    .0;
    loop {
        if std::fs::read_to_string(&dest).ok().as_deref() == Some(expect.as_str()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "final view never applied: {:?}",
            handle.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Quiet 200 ms / max 1 s: at most two applies for a burst within a second, and one more
    // per extra second when a loaded machine stretches the burst.
    let applies = handle.status()[0].applies;
    assert!(
        (1..=2 + burst.as_secs()).contains(&applies),
        "burst of {burst:?}: {:?}",
        handle.status()
    );

    // Renewals only: rendered again, never rewritten.
    let renders = handle.status()[0].renders;
    for k in 0..5u64 {
        let mut nv = fixture(10_000 + k);
        let key = RegKey::new("web", "v1", "10.1.0.1", 1199).unwrap();
        nv.view.registrations.insert(
            key.clone(),
            lease("web", "v1", "10.1.0.1", 1199, 10_000 + k),
        );
        tx.send(Arc::new(nv)).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.status()[0].renders == renders {
        assert!(
            tokio::time::Instant::now() < deadline,
            "renewals never rendered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = &handle.status()[0];
    assert_eq!(status.applies, applies, "{status:?}");
    assert!(status.ok, "{status:?}");

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(10), handle.stopped())
        .await
        .expect("the task stops after shutdown");
    assert!(handle.is_stopped());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Waits until the first template's status satisfies `f`, or panics naming `what`.
async fn wait_status(
    handle: &RenderHandle,
    what: &str,
    f: impl Fn(&TemplateStatus) -> bool,
) -> TemplateStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = handle.status().remove(0);
        if f(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A template that fails only at render time: counted as a render error (once per distinct
/// error), never as an apply, and the file keeps the last good render.
#[tokio::test]
async fn a_render_error_is_counted_apart_from_applies() {
    let dir = fresh_dir("render-error");
    let source = dir.join("t.tera");
    // Parses; fails to render as soon as a backend exists (no such var).
    std::fs::write(
        &source,
        "{% for b in backends %}{{ vars.no_such_var }}{% endfor %}backends\n",
    )
    .unwrap();
    let t = TemplateConfig {
        name: "t".into(),
        source,
        destination: dir.join("out.cfg"),
        check: Some(vec![]),
        reload: ReloadConfig::None,
        vars: BTreeMap::new(),
        server_state: None,
    };
    let ready = |nv: NodeView| Arc::new(NodeView { ready: true, ..nv });
    let (tx, rx) = tokio::sync::watch::channel(ready(NodeView::default()));
    let (trigger, shutdown) = crate::shutdown::channel();
    let settings = ApplyConfig {
        debounce_quiet: Duration::from_millis(10),
        debounce_max: Duration::from_millis(50),
        ..ApplyConfig::default()
    };
    let handle = spawn(
        settings,
        vec![t],
        "lb-1".into(),
        Snippets::AllowListed,
        rx,
        &crate::supervise::Failures::new(),
        shutdown,
    );
    let s = wait_status(&handle, "the first apply", |s| s.ok).await;
    assert_eq!((s.applies, s.render_errors), (1, 0), "{s:?}");

    tx.send(ready(fixture(1))).unwrap();
    let s = wait_status(&handle, "the render error", |s| s.error.is_some()).await;
    assert_eq!((s.applies, s.failures, s.render_errors), (1, 0, 1), "{s:?}");
    assert!(s.error.as_deref().unwrap().contains("no_such_var"), "{s:?}");
    // The same error again (a renewal): rendered, not counted twice.
    let renders = s.renders;
    tx.send(ready(fixture(2))).unwrap();
    let s = wait_status(&handle, "the next render", |s| s.renders > renders).await;
    assert_eq!((s.applies, s.failures, s.render_errors), (1, 0, 1), "{s:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("out.cfg")).unwrap(),
        "backends\n"
    );

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(10), handle.stopped())
        .await
        .expect("the task stops after shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The worked example of docs/templates.md renders, and HAProxy accepts the result.
#[tokio::test]
async fn the_documented_example_template_works() {
    let doc = std::fs::read_to_string(manifest("docs/templates.md")).unwrap();
    let after_marker = doc
        .split("<!-- example-template")
        .nth(1)
        .expect("docs/templates.md has the example marker");
    let body = after_marker
        .split("```jinja\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a jinja block follows the marker");
    let dir = fresh_dir("doc");
    let source = dir.join("example.cfg.tera");
    std::fs::write(&source, body).unwrap();
    let mut t = default_template(test_vars(&dir));
    t.source = source;
    t.vars.insert("zone".into(), "b".into());
    t.vars
        .insert("health_bind".into(), "127.0.0.1:18404".into());
    let text = render_once(&[t], "lb-1", &fixture(1)).unwrap().remove(0).1;
    assert!(
        text.contains("server api-v1-10.0.1.1-80 10.0.1.1:80 backup weight 50"),
        "{text}"
    );
    assert!(
        text.contains("server web-v1-10.0.0.2-8080 10.0.0.2:8080\n"),
        "{text}"
    );
    assert!(text.contains("set-header X-Served-By \"lb-1\""), "{text}");
    let target = dir.join("haproxy.cfg");
    let staged = files::Staged::write(&target, text.as_bytes()).unwrap();
    let argv = default_template(BTreeMap::new()).check_command();
    let result = files::check(&argv, staged.path(), &target, Duration::from_secs(30)).await;
    drop(staged);
    std::fs::remove_dir_all(&dir).unwrap();
    result.unwrap();
}

/// Every alternative of every allow-listed form, and every server option, is something HAProxy
/// accepts: each goes into a frontend or backend of its own, and the config passes
/// `haproxy -c`.
#[tokio::test]
async fn every_allowed_form_and_server_option_passes_haproxy_check() {
    use crate::model::snippets::{expansions, Section};
    let (lines, options) = expansions();
    let mut text = String::from(
        "defaults\n    mode http\n    timeout client 1s\n    timeout server 1s\n    timeout connect 1s\n",
    );
    let dir = fresh_dir("expansions");
    for (n, (section, line)) in lines.iter().enumerate() {
        match section {
            Section::Frontend => text.push_str(&format!(
                "frontend f{n}\n    bind {}\n    acl a path /\n    {line}\n",
                dir.join(format!("f{n}.sock")).display()
            )),
            Section::Backend => text.push_str(&format!(
                "backend b{n}\n    acl a path /\n    {line}\n    server s 127.0.0.1:1\n"
            )),
        }
    }
    for (n, opts) in options.iter().enumerate() {
        // TLS to a server needs a CA or `verify none`, which is the template's to set.
        let with = match opts.as_str() {
            "ssl" | "check-ssl" => format!("{opts} verify none"),
            o => o.to_string(),
        };
        text.push_str(&format!("backend o{n}\n    server s 127.0.0.1:1 {with}\n"));
    }
    let target = dir.join("haproxy.cfg");
    let staged = files::Staged::write(&target, text.as_bytes()).unwrap();
    let argv = default_template(BTreeMap::new()).check_command();
    let result = files::check(&argv, staged.path(), &target, Duration::from_secs(60)).await;
    drop(staged);
    std::fs::remove_dir_all(&dir).unwrap();
    result.unwrap();
}

/// Every allow-listed form (model::snippets::EXAMPLES) is something HAProxy accepts: each example
/// goes into a backend or frontend of the default template, and the whole config passes
/// `haproxy -c`.
#[tokio::test]
async fn every_allow_listed_example_passes_haproxy_check() {
    use crate::model::snippets::{Section, EXAMPLES, SERVER_OPTIONS_EXAMPLES};
    let mut nv = fixture(1_000);
    let mut fe = nv.view.frontends.values().next().unwrap().clone();
    fe.extra = EXAMPLES
        .iter()
        .filter(|(s, _)| *s == Section::Frontend)
        .map(|(_, l)| l.to_string())
        .collect();
    nv.view.frontends.insert(fe.name.clone(), fe);
    for (i, opts) in SERVER_OPTIONS_EXAMPLES.iter().enumerate() {
        let mut b = backend(&format!("opts{i}"), "web", "v1");
        b.server_options = Some(opts.to_string());
        if i == 0 {
            b.extra = EXAMPLES
                .iter()
                .filter(|(s, _)| *s == Section::Backend)
                .map(|(_, l)| l.to_string())
                .collect();
        }
        b.validate(Snippets::AllowListed).unwrap();
        nv.view.backends.insert(b.name.clone(), b);
    }
    let dir = fresh_dir("allow-list");
    let target = dir.join("haproxy.cfg");
    let (ctx, excluded) =
        context::build_screened("n", &nv, &test_vars(&dir), Snippets::AllowListed);
    assert_eq!(excluded, vec![], "every example passes the allow-list");
    let compiled = template::load(&manifest("templates/haproxy.cfg.tera")).unwrap();
    let text = compiled.render(&ctx).unwrap();
    for (_, line) in EXAMPLES {
        assert!(text.contains(line), "{line} is rendered");
    }
    let staged = files::Staged::write(&target, text.as_bytes()).unwrap();
    let argv = default_template(BTreeMap::new()).check_command();
    let result = files::check(&argv, staged.path(), &target, Duration::from_secs(30)).await;
    drop(staged);
    std::fs::remove_dir_all(&dir).unwrap();
    result.unwrap();
}

/// Members come from peers as they are: an id that is not a node id is left out, and an API
/// address that is not a plain `host:port` is rendered as none.
#[test]
fn hostile_member_ids_and_api_addresses_never_reach_a_template() {
    let mut nv = fixture(1_000);
    let peer = |id: &str, api: &str| Member {
        node_id: id.into(),
        gossip_addr: "10.0.9.3:1730".parse().unwrap(),
        api_addr: Some(api.into()),
        live: true,
        is_self: false,
        clock_offset_ms: None,
    };
    nv.members
        .push(peer("x\nlua-load /tmp/p.lua", "10.0.9.3:1729"));
    for (i, api) in [
        "a]:80",
        "[[::1]]]:80",
        "[::1]:80",
        "lb-9.example:1729",
        "h:1:2",
    ]
    .iter()
    .enumerate()
    {
        nv.members.push(peer(&format!("lb-{}", 10 + i), api));
    }
    let ctx = context::build("lb-1", &nv, &BTreeMap::new());
    let members: Vec<(&str, Option<&str>)> = ctx
        .members
        .iter()
        .map(|m| (m.node_id.as_str(), m.api_addr.as_deref()))
        .collect();
    assert_eq!(
        members,
        vec![
            ("lb-1", Some("10.0.9.1:1729")),
            ("lb-2", None),
            ("lb-10", None),
            ("lb-11", None),
            ("lb-12", Some("[::1]:80")),
            ("lb-13", Some("lb-9.example:1729")),
            ("lb-14", None),
        ]
    );
}

/// A backend a peer sent with lines this node does not allow is left out of the render and
/// reported; everything else still renders.
#[test]
fn entities_failing_this_nodes_validation_are_left_out_and_reported() {
    let mut nv = fixture(1_000);
    let mut evil = backend("evil", "web", "v1");
    evil.extra = vec!["http-response set-header X-Leak %[env(HOME)]".into()];
    nv.view.backends.insert("evil".into(), evil.clone());
    let mut liar = backend("liar", "web", "v1");
    liar.name = "other".into();
    nv.view.backends.insert("liar".into(), liar);
    let (ctx, excluded) =
        context::build_screened("n", &nv, &BTreeMap::new(), Snippets::AllowListed);
    let names: Vec<&str> = ctx.backends.iter().map(|b| b.name.as_str()).collect();
    assert!(
        !names.contains(&"evil") && !names.contains(&"other"),
        "{names:?}"
    );
    assert!(names.contains(&"web"), "the rest renders: {names:?}");
    assert_eq!(
        excluded
            .iter()
            .map(|e| (e.kind, e.name.as_str()))
            .collect::<Vec<_>>(),
        vec![("backend", "evil"), ("backend", "liar")]
    );
    assert!(
        excluded[0].reason.contains("extra[0]"),
        "{}",
        excluded[0].reason
    );
    // A node that enables raw snippets renders it.
    let (ctx, _) = context::build_screened("n", &nv, &BTreeMap::new(), Snippets::Raw);
    assert!(ctx.backends.iter().any(|b| b.name == "evil"));
}
