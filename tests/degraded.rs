//! Degraded dependencies, with a real node and a real HAProxy: HAProxy stopped and started
//! again, a destination on a full file system, a reload command that hangs. Each is reported
//! (status, /ready), never takes the node down, and clears on its own once the cause goes.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::haproxy::{served, write_node_files, Haproxy, TempDir, TestServer};
use common::{free_port, wait_until, Http, Proc};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn start_node(config: &Path) -> Proc {
    let data = config.parent().unwrap().join("data");
    Proc::local(
        "degraded",
        config,
        &["--data-dir".into(), data.display().to_string()],
    )
}

fn template_status(http: &Http, node: &Proc) -> Value {
    http.get(&node.url("/v1/status")).body["templates"][0].clone()
}

/// A backend `web` with one server and a frontend on `port`.
fn serve_one(http: &Http, node: &Proc, port: u16, server: &TestServer) {
    let r = http.post_json(
        &node.url("/backends"),
        r#"{"name":"web","app":"web","version":"1"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = http.post_json(
        &node.url("/frontends"),
        &format!(r#"{{"name":"www","backend":"web","bind":"127.0.0.1:{port}"}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = http.post_json(
        &node.url("/v1/registrations"),
        &format!(
            r#"{{"app":"web","version":"1","host":"127.0.0.1","port":{},"ttl":"1h"}}"#,
            server.port
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn haproxy_stopped_is_noticed_on_its_own_and_a_restarted_one_gets_the_latest_config() {
    let dir = TempDir::new("stopped");
    let config = write_node_files(
        &dir.0,
        "[apply]\ndebounce_quiet = \"50ms\"\ndebounce_max = \"200ms\"\nprobe_interval = \"200ms\"",
    );
    let haproxy = Haproxy::start(&dir.0, &dir.0.join("haproxy.cfg"));
    let node = start_node(&config);
    let http = Http::new();
    let (a, b) = (TestServer::start("a"), TestServer::start("b"));
    let port = free_port();
    serve_one(&http, &node, port, &a);
    wait_until(WAIT, "HAProxy serves a", || {
        served(port).as_deref() == Some("a")
    });

    // Applied means verified: HAProxy said it runs the file's version. Stopping HAProxy while
    // a reload is still being verified would make the node wait out reload_timeout (15 s) for
    // that reload and again for the rollback's, before its probe can notice anything.
    wait_until(WAIT, "the config serving a to be verified", || {
        let t = template_status(&http, &node);
        let file = std::fs::read_to_string(dir.0.join("haproxy.cfg")).unwrap_or_default();
        let stamp = file
            .lines()
            .find_map(|l| l.trim().strip_prefix("description bender-config:"))
            .map(str::to_string);
        t["ok"] == true && stamp.is_some() && t["config_hash"].as_str() == stamp.as_deref()
    });

    // HAProxy goes away, with no change to apply: the node notices and says so.
    drop(haproxy);
    wait_until(WAIT, "the status names HAProxy's absence", || {
        template_status(&http, &node)["haproxy_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not answer"))
    });
    let ready = http.get(&node.url("/ready"));
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(
        http.get(&node.url("/health")).status,
        200,
        "the node itself is fine"
    );
    // A change while it is away is kept and retried.
    let r = http.put_json(&node.url("/backends/web"), r#"{"version":"2"}"#);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = http.post_json(
        &node.url("/v1/registrations"),
        &format!(
            r#"{{"app":"web","version":"2","host":"127.0.0.1","port":{},"ttl":"1h"}}"#,
            b.port
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text);

    // HAProxy is started again (by systemd, say) from the file on disk: no node restart.
    let _haproxy = Haproxy::start(&dir.0, &dir.0.join("haproxy.cfg"));
    wait_until(WAIT, "the latest config is served", || {
        served(port).as_deref() == Some("b")
    });
    wait_until(WAIT, "the status is clean again", || {
        let t = template_status(&http, &node);
        t["ok"] == true && t["haproxy_error"].is_null() && t["running_config"] == t["config_hash"]
    });
    assert_eq!(http.get(&node.url("/ready")).status, 200);
}

#[test]
fn a_full_destination_is_retried_as_soon_as_it_takes_the_file() {
    let dir = TempDir::new("full");
    let etc = dir.0.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&etc)
        .status()
        .expect("run mount (root is needed)");
    assert!(mounted.success(), "mount a tmpfs on {}", etc.display());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(etc.clone());
    // The rendered config lives on the small file system; retry_failed_after stays at its
    // 60 s default, which a full disk must not wait for.
    let config = write_node_files(
        &dir.0,
        "[apply]\ndebounce_quiet = \"50ms\"\ndebounce_max = \"200ms\"",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("destination = \"{}/haproxy.cfg\"", dir.0.display()),
        &format!("destination = \"{}/haproxy.cfg\"", etc.display()),
    );
    std::fs::write(&config, text).unwrap();
    std::fs::copy(dir.0.join("haproxy.cfg"), etc.join("haproxy.cfg")).unwrap();
    let _haproxy = Haproxy::start(&dir.0, &etc.join("haproxy.cfg"));
    // Fill it.
    let filler = etc.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let node = start_node(&config);
    let http = Http::new();
    let a = TestServer::start("a");
    let port = free_port();
    serve_one(&http, &node, port, &a);
    wait_until(WAIT, "the write error is in the status", || {
        template_status(&http, &node)["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device"))
    });
    // Space again: the config goes in within the short write retry, not retry_failed_after.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    wait_until(Duration::from_secs(20), "the config is applied", || {
        served(port).as_deref() == Some("a")
    });
    assert!(freed.elapsed() < Duration::from_secs(20));
    wait_until(WAIT, "the status is clean again", || {
        let t = template_status(&http, &node);
        t["ok"] == true && t["error"].is_null()
    });
    assert!(
        !std::fs::read_dir(&etc)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp")),
        "no temp file left"
    );
}

/// Whether a process whose command line holds `marker` is alive.
fn alive(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
    })
}

#[test]
fn a_hanging_reload_command_is_killed_with_its_children_and_sigterm_still_stops_the_node() {
    let dir = TempDir::new("hang");
    let marker = format!("{}.{}", 900 + std::process::id() % 50, std::process::id());
    let config = write_node_files(
        &dir.0,
        "[apply]\ndebounce_quiet = \"50ms\"\ndebounce_max = \"200ms\"\nreload_timeout = \"1s\"",
    );
    // The reload is a command that starts a child and then hangs.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("reload = {{ method = \"master-socket\", socket = \"{}/master.sock\" }}", dir.0.display()),
        &format!("reload = {{ method = \"command\", command = [\"sh\", \"-c\", \"sleep {marker} & sleep {marker}\"] }}"),
    );
    assert!(text.contains("method = \"command\""), "{text}");
    std::fs::write(&config, text).unwrap();
    let _haproxy = Haproxy::start(&dir.0, &dir.0.join("haproxy.cfg"));
    let node = start_node(&config);
    let http = Http::new();
    let a = TestServer::start("a");
    serve_one(&http, &node, free_port(), &a);
    wait_until(WAIT, "the hung reload is reported", || {
        template_status(&http, &node)["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not finish within 1s"))
    });
    // The command and the child it started were killed (every time it was tried).
    wait_until(WAIT, "nothing the command started is left", || {
        !alive(&marker)
    });
    assert_eq!(http.get(&node.url("/health")).status, 200);

    // With a reload that hangs for longer, SIGTERM still stops the node well within systemd's
    // 30 s: the drain is bounded, and the next start reconciles HAProxy with the file.
    let mut node = node;
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("reload_timeout = \"1s\"", "reload_timeout = \"1h\"");
    std::fs::write(&config, text).unwrap();
    node.terminate();
    let node = start_node(&config);
    let r = http.put_json(&node.url("/backends/web"), r#"{"balance":"leastconn"}"#);
    assert_eq!(r.status, 200, "{}", r.text);
    wait_until(WAIT, "a reload hangs", || alive(&marker));
    let mut node = node;
    let asked = Instant::now();
    let status = node.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(25), "SIGTERM took {took:?}");
    wait_until(WAIT, "the hung command is gone with the node", || {
        !alive(&marker)
    });
}
