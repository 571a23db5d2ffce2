//! Crash safety of the apply, with the real HAProxy: a node is killed (as by SIGKILL, through a
//! named crash point) at each step of an apply, then restarted. Every time, it ends with
//! HAProxy running exactly the file on disk, that file being the latest render, and no temp file
//! left behind.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::haproxy::{
    cli, master_reloads, served, write_node_files_with, Haproxy, TempDir, TestServer,
};
use common::{free_port, Http, Proc};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

struct Lb {
    dir: TempDir,
    config: std::path::PathBuf,
    api: u16,
    gossip: u16,
    _haproxy: Haproxy,
}

impl Lb {
    fn new(tag: &str) -> Lb {
        Self::with(tag, "")
    }

    fn with(tag: &str, template_extra: &str) -> Lb {
        let dir = TempDir::new(tag);
        let config = write_node_files_with(
            &dir.0,
            // Changes wait longer than the snapshot (every second) before they are applied, so
            // that what the killed node was applying is still there when it restarts.
            "warmup = \"1s\"\n[apply]\ndebounce_quiet = \"1500ms\"\ndebounce_max = \"2s\"\ndebounce_runtime = \"1500ms\"\nprobe_interval = \"200ms\"\nretry_failed_after = \"1s\"",
            template_extra,
        );
        let haproxy = Haproxy::start(&dir.0, &dir.0.join("haproxy.cfg"));
        Lb {
            config,
            api: free_port(),
            gossip: free_port(),
            _haproxy: haproxy,
            dir,
        }
    }

    fn start(&self, failpoint: Option<&str>) -> Proc {
        let args = vec![
            "--config".into(),
            self.config.display().to_string(),
            "--node-id".into(),
            "lb".into(),
            "--api-listen".into(),
            format!("127.0.0.1:{}", self.api),
            "--gossip-listen".into(),
            format!("127.0.0.1:{}", self.gossip),
            "--data-dir".into(),
            self.dir.0.join("data").display().to_string(),
        ];
        let env: Vec<(&str, &str)> = failpoint.map(|f| ("FAILPOINTS", f)).into_iter().collect();
        let p = Proc::spawn_with_env(
            "lb",
            format!("http://127.0.0.1:{}", self.api),
            ([127, 0, 0, 1], self.gossip).into(),
            args,
            &env,
        );
        let url = p.url("/health");
        common::wait_until(WAIT, "the node answers", || ureq::get(&url).call().is_ok());
        p
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api)
    }

    /// The config version HAProxy's current worker says it runs.
    fn running(&self) -> Option<String> {
        let info = cli(&self.dir.0.join("admin.sock"), "show info").ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("description: bender-config:"))
            .map(|s| s.trim().to_string())
    }

    fn file(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("haproxy.cfg")).unwrap()
    }

    fn strays(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".haproxy.cfg.bender-") && n.ends_with(".tmp"))
            .collect()
    }
}

fn stamp_of(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("description bender-config:"))
        .map(str::to_string)
}

fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the crash point was never reached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets up an LB serving servers `a` and `b`, then kills its node at `point` during the apply
/// that adds a second frontend (for `render.after_restore`, one HAProxy cannot bind, so that
/// the apply rolls back), restarts it, and checks it ends consistent.
fn killed_at(point: &str) {
    let lb = Lb::new(&point.replace('.', "-"));
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let port = free_port();
    let http = Http::new();
    let mut node = lb.start(None);
    let r = http.post_json(
        &lb.url("/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = http.post_json(
        &lb.url("/frontends"),
        &format!(r#"{{"name":"www","backend":"web","bind":"127.0.0.1:{port}"}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let reg = |s: &TestServer| {
        let r = http.post_json(
            &lb.url("/v1/registrations"),
            &format!(
                r#"{{"app":"web","version":"1","host":"127.0.0.1","port":{},"ttl":"1h"}}"#,
                s.port
            ),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    };
    reg(&a);
    reg(&b);
    common::wait_until(WAIT, "HAProxy runs the first config", || {
        lb.running().is_some()
            && lb.running() == stamp_of(&lb.file())
            && lb.file().contains(&format!("127.0.0.1:{}", b.port))
    });
    // A clean stop (its snapshot keeps the entities and leases), then a start that will crash.
    assert!(node.terminate().success());
    let mut node = lb.start(Some(&format!("{point}=return")));
    // The port of the second frontend; for a refused reload, another process holds it.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second = blocker.local_addr().unwrap().port();
    let blocker = (point == "render.after_restore").then_some(blocker);
    let r = http.post_json(
        &lb.url("/frontends"),
        &format!(r#"{{"name":"second","backend":"web","bind":"127.0.0.1:{second}"}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let status = wait_exit(&mut node);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed at {point}: {status}"
    );
    drop(blocker);

    // Restarted without the crash point: it must end with HAProxy running the file's version,
    // the file being the latest render, and no temp file left.
    let node = lb.start(None);
    common::wait_until(
        WAIT,
        "HAProxy runs the file on disk, which is current",
        || {
            let s = http.get(&lb.url("/v1/status"));
            let t = &s.body["templates"][0];
            let file = lb.file();
            t["ok"] == Value::Bool(true)
                && lb.running().is_some()
                && lb.running() == stamp_of(&file)
                && t["config_hash"].as_str() == stamp_of(&file).as_deref()
                && file.contains("frontend second")
                && file.contains(&format!("127.0.0.1:{}", b.port))
        },
    );
    assert_eq!(
        lb.strays(),
        Vec::<String>::new(),
        "temp files left after {point}"
    );
    assert!(Path::new(&lb.dir.0.join(".haproxy.cfg.bender-last-good")).exists());
    drop(node);
}

/// Killed after HAProxy took a new server through the runtime API, before the file says so:
/// the restarted node takes HAProxy's slots as they are and writes the file, with no reload.
#[test]
fn killed_after_the_runtime_commands_before_the_file_is_written() {
    let lb = Lb::with(
        "runtime-after-commands",
        r#"runtime = { socket = "{dir}/admin.sock", drain = "1s" }"#,
    );
    let (a, b) = (TestServer::start("a"), TestServer::start("b"));
    let port = free_port();
    let http = Http::new();
    let node = lb.start(None);
    for (path, body) in [
        (
            "/backends",
            r#"{"name":"web","app":"web","version":"1"}"#.to_string(),
        ),
        (
            "/frontends",
            format!(r#"{{"name":"www","backend":"web","bind":"127.0.0.1:{port}"}}"#),
        ),
    ] {
        let r = http.post_json(&lb.url(path), &body);
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let reg = |s: &TestServer| {
        let body = format!(
            r#"{{"app":"web","version":"1","host":"127.0.0.1","port":{},"ttl":"1h"}}"#,
            s.port
        );
        let r = http.post_json(&lb.url("/v1/registrations"), &body);
        assert_eq!(r.status, 200, "{}", r.text);
    };
    reg(&a);
    common::wait_until(WAIT, "the runtime API path to be open", || {
        let s = http.get(&lb.url("/v1/status"));
        s.body["templates"][0]["runtime_ready"] == Value::Bool(true)
            && lb.file().contains(&format!("127.0.0.1:{}", a.port))
    });
    let mut node = node;
    assert!(node.terminate().success());
    let reloads = master_reloads(&lb.dir.0.join("master.sock")).unwrap();
    let mut node = lb.start(Some("render.runtime.after_commands=return"));
    reg(&b);
    let status = wait_exit(&mut node);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed after the runtime commands: {status}"
    );
    let b_addr = format!("127.0.0.1:{}", b.port);
    assert!(
        !lb.file().contains(&b_addr),
        "the file was written before the crash"
    );
    assert_eq!(
        served_by_both(port, "a", "b"),
        Some(()),
        "HAProxy took b at run time"
    );
    let node = lb.start(None);
    common::wait_until(WAIT, "the file to catch up with HAProxy", || {
        let s = http.get(&lb.url("/v1/status"));
        let file = lb.file();
        s.body["templates"][0]["ok"] == Value::Bool(true)
            && file.contains(&b_addr)
            && lb.running() == stamp_of(&file)
    });
    assert_eq!(
        master_reloads(&lb.dir.0.join("master.sock")),
        Some(reloads),
        "a restart after the runtime commands reloaded HAProxy"
    );
    drop(node);
}

/// Whether requests through `port` reach both `a` and `b` (within 40 requests).
fn served_by_both(port: u16, a: &str, b: &str) -> Option<()> {
    let seen: std::collections::BTreeSet<String> = (0..40).filter_map(|_| served(port)).collect();
    (seen.contains(a) && seen.contains(b)).then_some(())
}

#[test]
fn killed_after_writing_the_temp_file() {
    killed_at("render.after_write");
}

#[test]
fn killed_after_the_check() {
    killed_at("render.after_check");
}

#[test]
fn killed_between_rename_and_reload() {
    killed_at("render.after_rename");
}

#[test]
fn killed_after_the_reload_before_verifying_it() {
    killed_at("render.after_reload");
}

#[test]
fn killed_before_keeping_the_last_good_copy() {
    killed_at("render.before_keep");
}

#[test]
fn killed_after_restoring_the_last_good_config_of_a_refused_reload() {
    killed_at("render.after_restore");
}

#[test]
fn a_sighup_during_an_apply_waits_for_it_before_the_new_stage_starts() {
    let lb = Lb::new("sighup-apply");
    // Each apply pauses 2 s between its check and its rename.
    let node = lb.start(Some("render.after_check=sleep(2000)"));
    let http = Http::new();
    let r = http.post_json(
        &lb.url("/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    // The apply is under way once its temp file exists (it is renamed after the pause).
    let tmp_exists = || {
        std::fs::read_dir(&lb.dir.0).unwrap().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".haproxy.cfg.bender-")
        })
    };
    common::wait_until(WAIT, "an apply is under way", tmp_exists);
    common::sighup(&node);
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !seen.iter().any(|l: &String| l.contains("config reloaded")) {
        let left = deadline.saturating_duration_since(Instant::now());
        seen.push(
            node.logs
                .recv_timeout(left)
                .expect("a log line before the deadline"),
        );
    }
    let applied = seen
        .iter()
        .position(|l| l.contains("render: applied a new config"));
    let reloaded = seen
        .iter()
        .position(|l| l.contains("config reloaded"))
        .unwrap();
    assert!(
        applied.is_some_and(|a| a < reloaded),
        "the apply in progress finished before the new stage started: {seen:#?}"
    );
}
