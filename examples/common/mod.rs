//! What the benchmarks share: free loopback ports and the release binary.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Child;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A port free on loopback for both TCP and UDP (an API and a gossip port can be the same).
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The release build of bender (the benchmarks measure that, not a debug build).
#[allow(dead_code)]
pub fn binary() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/bender");
    assert!(
        p.exists(),
        "build the release binary first: cargo build --release"
    );
    p
}

/// Wall-clock time in ms since the epoch (what event arrival times are measured in).
#[allow(dead_code)]
pub fn now_ms() -> f64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    since.as_secs_f64() * 1000.0
}

/// Subscribes to a node's events; yields (event name, data, wall-clock ms at receipt).
#[allow(dead_code)]
pub fn subscribe(api: &str) -> mpsc::Receiver<(String, Value, f64)> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let url = format!("{api}/v1/events");
    std::thread::spawn(move || {
        let resp = ureq::get(&url).call().unwrap();
        let _ = ready_tx.send(());
        let mut name = String::new();
        let lines = BufReader::new(resp.into_body().into_reader()).lines();
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                let at = now_ms();
                let v = serde_json::from_str(d.trim()).unwrap_or(Value::Null);
                if tx.send((name.clone(), v, at)).is_err() {
                    return;
                }
            }
        }
    });
    ready_rx.recv().unwrap();
    rx
}

/// Child processes, stopped with SIGTERM (and waited for) when dropped.
#[allow(dead_code)]
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

/// One HTTP request; the status and the JSON body (null if none).
#[allow(dead_code)]
pub fn call(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let req = ureq::http::Request::builder().method(method).uri(url);
    let resp = match body {
        Some(b) => agent.run(
            req.header("content-type", "application/json")
                .body(b.to_string())
                .unwrap(),
        ),
        None => agent.run(req.body(()).unwrap()),
    };
    let mut resp = resp.expect("request");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_json().unwrap_or(Value::Null))
}

/// Writes what one bender node driving one HAProxy in `dir` needs: a minimal HAProxy config to
/// start the master with (bender replaces it) and a bender config rendering the default
/// template into it through `dir/master.sock`, with the runtime API or without. Returns the
/// bender config's path.
#[allow(dead_code)]
pub fn write_node_files(dir: &std::path::Path, runtime: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!("global\n    stats socket {d}/admin.sock mode 660 level admin expose-fd listeners\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"),
    )
    .unwrap();
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/haproxy.cfg.tera");
    let runtime = if runtime {
        format!(r#"runtime = {{ socket = "{d}/admin.sock", drain = "1s" }}"#)
    } else {
        String::new()
    };
    let config = dir.join("bender.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[template]]
name = "haproxy"
source = "{template}"
destination = "{d}/haproxy.cfg"
reload = {{ method = "master-socket", socket = "{d}/master.sock" }}
server_state = {{ socket = "{d}/admin.sock", file = "{d}/server-state" }}
{runtime}
vars = {{ stats_socket = "{d}/admin.sock", server_state_file = "{d}/server-state", chroot = "", user = "", group = "", log = "" }}
"#
        ),
    )
    .unwrap();
    config
}
