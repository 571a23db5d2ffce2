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
    // Only a name, as bender 0.2.1 took it: no default backend.
    let bare = Frontend {
        name: "bare".into(),
        backend: String::new(),
        bind: "127.0.0.1:8082".into(),
        mode: Mode::Http,
        rules: vec![],
        extra: vec![],
    };
    for f in [www, pg, orphan, bare] {
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

/// Checks `text` with `haproxy -c` (the default template's check command), as the apply path
/// stages it in `dir`, then removes `dir`; panics with HAProxy's answer if it is refused.
async fn assert_haproxy_accepts(dir: &Path, text: &str, timeout: Duration) {
    let target = dir.join("haproxy.cfg");
    let staged = files::Staged::write(&target, text.as_bytes()).unwrap();
    let argv = default_template(BTreeMap::new()).check_command();
    let result = files::check(&argv, staged.path(), &target, timeout).await;
    drop(staged);
    std::fs::remove_dir_all(dir).unwrap();
    result.unwrap();
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
        slot_block: 10,
        runtime: None,
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
    let text = render_default(&fixture(1_000), test_vars(&dir));
    assert_haproxy_accepts(&dir, &text, Duration::from_secs(30)).await;
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

mod haproxy_check;
mod screening;
mod worker;
