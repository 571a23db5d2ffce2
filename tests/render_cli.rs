//! `bender render` (templates rendered once from a running node or a state file, optionally
//! checked by HAProxy) and SIGHUP config reloads of a running node.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{wait_until, Http, Proc};

const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/haproxy.cfg.tera");

fn bender(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bender"))
        .args(args)
        .output()
        .expect("run bender");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config with one template of `source`, rendered to `dest`, never reloading anything.
fn config(dir: &Path, source: &str, dest: &Path, extra: &str) -> std::path::PathBuf {
    let d = dir.display();
    let text = format!(
        r#"{extra}
[[template]]
name = "haproxy"
source = "{source}"
destination = "{}"
reload = {{ method = "none" }}
vars = {{ stats_socket = "{d}/admin.sock", server_state_file = "{d}/state", chroot = "", user = "", group = "", log = "" }}
"#,
        dest.display()
    );
    let path = dir.join("bender.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_node(dir: &Path, config: &Path) -> Proc {
    let (api, gossip) = (common::free_port(), common::free_port());
    let _ = dir;
    Proc::start(
        "r0",
        api,
        ([127, 0, 0, 1], gossip).into(),
        vec![
            "--config".into(),
            config.display().to_string(),
            "--node-id".into(),
            "r0".into(),
            "--api-listen".into(),
            format!("127.0.0.1:{api}"),
            "--gossip-listen".into(),
            format!("127.0.0.1:{gossip}"),
        ],
    )
}

#[test]
fn render_from_a_node_or_a_state_file_with_the_haproxy_check() {
    let dir = common::haproxy::TempDir::new("render-cli");
    let dest = dir.0.join("out.cfg");
    let cfg = config(&dir.0, TEMPLATE, &dest, "");
    let node = start_node(&dir.0, &cfg);
    let http = Http::new();
    http.post_json(
        &node.url("/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    http.post_json(
        &node.url("/frontends"),
        r#"{"name":"www","backend":"web","bind":"127.0.0.1:18080"}"#,
    );
    http.post_json(
        &node.url("/v1/registrations"),
        r#"{"app":"web","version":"1","host":"10.0.0.7","port":8080,"ttl":"60s"}"#,
    );
    let cfg_s = cfg.display().to_string();

    // From the running node, to stdout, checked by HAProxy.
    let (code, out, err) = bender(&["render", "--config", &cfg_s, "--addr", &node.api, "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backend web"), "{out}");
    assert!(out.contains("10.0.0.7:8080"), "{out}");
    assert!(out.contains("bind 127.0.0.1:18080"), "{out}");
    assert!(err.contains("check passed"), "{err}");

    // From a state file, to a directory: the same bytes, with no node needed.
    let state = http.get(&node.url("/v1/state")).text;
    let state_file = dir.0.join("state.json");
    std::fs::write(&state_file, &state).unwrap();
    drop(node);
    let out_dir = dir.0.join("rendered");
    let (code, _, err) = bender(&[
        "render",
        "--config",
        &cfg_s,
        "--state",
        state_file.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("haproxy")).unwrap(),
        out
    );

    // A template HAProxy rejects: the check fails with HAProxy's words, exit 1.
    let bad = dir.0.join("bad.tera");
    std::fs::write(&bad, "global\n    no-such-keyword {{ node.id }}\n").unwrap();
    let bad_cfg = config(&dir.0, bad.to_str().unwrap(), &dest, "");
    let (code, _, err) = bender(&[
        "render",
        "--config",
        bad_cfg.to_str().unwrap(),
        "--state",
        state_file.to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("check failed") && err.contains("no-such-keyword"),
        "{err}"
    );

    // A template that does not parse: file:line in the error.
    std::fs::write(&bad, "global\n{% for x in %}\n").unwrap();
    let (code, _, err) = bender(&[
        "render",
        "--config",
        bad_cfg.to_str().unwrap(),
        "--state",
        state_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.tera:2"), "{err}");
}

#[test]
fn sighup_applies_a_good_config_and_refuses_a_bad_one() {
    let dir = common::haproxy::TempDir::new("sighup");
    let simple = dir.0.join("simple.tera");
    std::fs::write(&simple, "{% for b in backends %}{{ b.name }}\n{% endfor %}").unwrap();
    let first = dir.0.join("first.txt");
    let cfg = config(&dir.0, simple.to_str().unwrap(), &first, "");
    // Plain text: no HAProxy check for this template.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[[template]]", "[[template]]\ncheck = []");
    std::fs::write(&cfg, text).unwrap();
    let node = start_node(&dir.0, &cfg);
    let http = Http::new();
    http.post_json(
        &node.url("/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    wait_until(
        Duration::from_secs(10),
        "the first template is rendered",
        || std::fs::read_to_string(&first).is_ok_and(|t| t == "web\n"),
    );
    let hup = || {
        let pid = nix::unistd::Pid::from_raw(node.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    };

    // A bad file is refused: the node keeps running with the old config, and says why.
    std::fs::write(&cfg, "default_ttl = \"forever\"\n").unwrap();
    hup();
    let mut refused = false;
    wait_until(
        Duration::from_secs(10),
        "the reload is refused in the log",
        || {
            while let Ok(line) = node.logs.try_recv() {
                refused |= line.contains("config reload refused") && line.contains("default_ttl");
            }
            refused
        },
    );
    assert_eq!(http.get(&node.url("/health")).status, 200);
    let status = http.get(&node.url("/v1/status")).body;
    assert_eq!(status["templates"][0]["name"], "haproxy");

    // A good file takes effect: the template now goes to a new destination.
    let second = dir.0.join("second.txt");
    let cfg2 = config(&dir.0, simple.to_str().unwrap(), &second, "");
    let text = std::fs::read_to_string(&cfg2)
        .unwrap()
        .replace("[[template]]", "[[template]]\ncheck = []");
    std::fs::write(&cfg, text).unwrap();
    hup();
    wait_until(
        Duration::from_secs(10),
        "the new destination is rendered",
        || std::fs::read_to_string(&second).is_ok_and(|t| t == "web\n"),
    );
    // The fleet status follows the new render stage: this node runs its view, with the new
    // stage's config.
    wait_until(
        Duration::from_secs(10),
        "the fleet status after the reload",
        || {
            let f = http.get(&node.url("/v1/fleet")).body;
            let me = &f["nodes"][0];
            me["state"] == "SYNCED"
                && me["record"]["templates"][0]["from"] == f["view"]
                && me["record"]["templates"][0]["config"]
                    == http.get(&node.url("/v1/status")).body["templates"][0]["config_hash"]
        },
    );
}
