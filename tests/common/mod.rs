//! Test helpers: a cluster of real `bender agent` processes on loopback, an HTTP client, and
//! waiting for conditions with a deadline (never sleeping as synchronisation).
#![allow(dead_code)]

pub mod auth;
pub mod fleet;
pub mod haproxy;
pub mod netns;
pub mod pki;
pub mod rig;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Waits until `f` holds, polling, or panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A port that was free a moment ago on 127.0.0.1 for both TCP and UDP.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A response: status, JSON body (Null when empty or not JSON), headers of interest.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub location: Option<String>,
    pub allow: Option<String>,
}

pub struct Http {
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer` with every request, when set.
    token: Option<String>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Http { agent, token: None }
    }

    /// A client that sends `token` with every request.
    pub fn with_token(token: &str) -> Self {
        Http {
            token: Some(token.to_string()),
            ..Self::new()
        }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
        let mut r = r.expect("HTTP request failed");
        let status = r.status().as_u16();
        let header = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let location = header("location");
        let allow = header("allow");
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            body,
            text,
            location,
            allow,
        }
    }

    pub fn get(&self, url: &str) -> Resp {
        Self::finish(self.auth(self.agent.get(url)).call())
    }
    pub fn delete(&self, url: &str) -> Resp {
        Self::finish(self.auth(self.agent.delete(url)).call())
    }
    pub fn post_empty(&self, url: &str) -> Resp {
        Self::finish(self.auth(self.agent.post(url)).send_empty())
    }
    pub fn post_json(&self, url: &str, body: &str) -> Resp {
        Self::finish(
            self.auth(self.agent.post(url))
                .header("content-type", "application/json")
                .send(body),
        )
    }
    pub fn put_json(&self, url: &str, body: &str) -> Resp {
        Self::finish(
            self.auth(self.agent.put(url))
                .header("content-type", "application/json")
                .send(body),
        )
    }
    pub fn send(&self, method: &str, url: &str, ctype: Option<&str>, body: &str) -> Resp {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        Self::finish(self.agent.run(req.body(body.to_string()).unwrap()))
    }
}

/// Sends raw bytes to `base` (`http://host:port`) and returns what comes back until the server
/// closes or 2 s of silence.
pub fn raw_http(base: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(request.as_bytes());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                // Stop once a whole response with a JSON body has arrived.
                if text.contains("\r\n\r\n{") && text.ends_with('}') {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Like [`raw_http`], from the local address `src` (any of 127.0.0.0/8 works on Linux): for
/// tests of what the node decides by the client's address.
pub fn raw_http_from(src: &str, base: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .expect("base is http://IP:PORT");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    socket.bind(&src.into()).expect("bind the source address");
    socket.connect(&addr.into()).expect("connect");
    let mut s: std::net::TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON request from the local address `src`, with `token` if any: (status, body).
pub fn request_from(
    src: &str,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = raw_http_from(src, base, &req);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

/// Sends SIGHUP to a node (it re-reads its config, tokens and certificates).
pub fn sighup(p: &Proc) {
    let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("send SIGHUP");
}

/// Waits for a log line of `p` containing every one of `parts`; returns it.
pub fn wait_for_log(p: &Proc, timeout: Duration, parts: &[&str]) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.logs.recv_timeout(left) {
            Ok(line) if parts.iter().all(|x| line.contains(x)) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line with {parts:?} within {timeout:?}"),
        }
    }
}

/// One `bender agent` process.
pub struct Proc {
    pub child: Child,
    pub api: String,
    pub gossip: SocketAddr,
    pub node_id: String,
    pub args: Vec<String>,
    pub logs: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `bender agent` with `args` and waits until its API answers.
    pub fn start(node_id: &str, api_port: u16, gossip: SocketAddr, args: Vec<String>) -> Proc {
        let p = Self::spawn(
            node_id,
            format!("http://127.0.0.1:{api_port}"),
            gossip,
            args,
        );
        let url = p.url("/health");
        wait_until(Duration::from_secs(20), "the node answers /health", || {
            ureq::get(&url).call().is_ok()
        });
        p
    }

    /// Starts a lone node on loopback with `config` (fresh API and gossip ports) plus
    /// `extra` arguments, and waits until its API answers.
    pub fn local(node_id: &str, config: &Path, extra: &[String]) -> Proc {
        let (api, gossip) = (free_port(), free_port());
        let mut args = vec![
            "--config".into(),
            config.display().to_string(),
            "--api-listen".into(),
            format!("127.0.0.1:{api}"),
            "--gossip-listen".into(),
            format!("127.0.0.1:{gossip}"),
        ];
        args.extend_from_slice(extra);
        Self::start(node_id, api, ([127, 0, 0, 1], gossip).into(), args)
    }

    /// Starts a lone node with `config` whose API listens on every address (so clients in the
    /// test's network namespaces reach it from their own), gossip on loopback; returns it and
    /// its API port.
    #[allow(dead_code)]
    pub fn on_every_address(node_id: &str, config: Option<&Path>) -> (Proc, u16) {
        let (api, gossip) = (free_port(), free_port());
        let mut args: Vec<String> = config
            .map(|c| vec!["--config".into(), c.display().to_string()])
            .unwrap_or_default();
        args.extend([
            "--api-listen".into(),
            format!("0.0.0.0:{api}"),
            "--gossip-listen".into(),
            format!("127.0.0.1:{gossip}"),
        ]);
        let p = Self::start(node_id, api, ([127, 0, 0, 1], gossip).into(), args);
        (p, api)
    }

    /// Starts `bender agent` with `args`, its API at `api` (a base URL), without waiting.
    pub fn spawn(node_id: &str, api: String, gossip: SocketAddr, args: Vec<String>) -> Proc {
        Self::spawn_with_env(node_id, api, gossip, args, &[])
    }

    /// [`Proc::spawn`] with extra environment variables (FAILPOINTS, say).
    pub fn spawn_with_env(
        node_id: &str,
        api: String,
        gossip: SocketAddr,
        args: Vec<String>,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bender"))
            .arg("agent")
            .args(&args)
            .env(
                "BENDER_LOG",
                std::env::var("BENDER_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bender");
        let stdout = child.stdout.take().unwrap();
        let (tx, logs) = mpsc::channel();
        let id = node_id.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if std::env::var_os("BENDER_TEST_LOGS").is_some() {
                    eprintln!("[{id}] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            api,
            gossip,
            node_id: node_id.to_string(),
            args,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.api, path)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("wait")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// N real nodes on loopback, each seeded with all the others; torn down on drop.
pub struct TestCluster {
    pub nodes: Vec<Option<Proc>>,
    ports: Vec<(u16, u16)>,
    pub dir: PathBuf,
    config: PathBuf,
}

/// A config file with short GC times so tests see garbage collection.
pub const TEST_CONFIG: &str = r#"
lease_gc_grace = "1s"
warmup = "3s"
"#;

impl TestCluster {
    pub fn start(n: usize) -> TestCluster {
        Self::start_with(n, TEST_CONFIG)
    }

    pub fn start_with(n: usize, config: &str) -> TestCluster {
        let dir = std::env::temp_dir().join(format!(
            "bender-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("bender.toml");
        std::fs::write(&config_path, config).unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut c = TestCluster {
            nodes: Vec::new(),
            ports,
            dir,
            config: config_path,
        };
        for i in 0..n {
            let p = c.spawn(i);
            c.nodes.push(Some(p));
        }
        c
    }

    fn spawn(&self, i: usize) -> Proc {
        let (api, gossip) = self.ports[i];
        let gossip_addr: SocketAddr = ([127, 0, 0, 1], gossip).into();
        let mut args = vec![
            "--config".to_string(),
            self.config.display().to_string(),
            "--node-id".into(),
            format!("node{i}"),
            "--cluster-id".into(),
            "test".into(),
            "--api-listen".into(),
            format!("127.0.0.1:{api}"),
            "--gossip-listen".into(),
            gossip_addr.to_string(),
            "--data-dir".into(),
            self.dir.join(format!("data{i}")).display().to_string(),
        ];
        for (j, (_, g)) in self.ports.iter().enumerate() {
            if j != i {
                args.push("--seed".into());
                args.push(format!("127.0.0.1:{g}"));
            }
        }
        Proc::start(&format!("node{i}"), api, gossip_addr, args)
    }

    pub fn node(&self, i: usize) -> &Proc {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        self.node(i).url(path)
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let p = self.spawn(i);
        self.nodes[i] = Some(p);
    }

    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some())
    }

    /// Waits until every running node lists `n` live members.
    pub fn wait_members(&self, n: usize) {
        let http = Http::new();
        for i in self.running() {
            let url = self.url(i, "/v1/members");
            wait_until(Duration::from_secs(20), "all members are live", || {
                let r = http.get(&url);
                r.body
                    .as_array()
                    .map(|a| a.iter().filter(|m| m["live"] == true).count() == n)
                    .unwrap_or(false)
            });
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for p in self.nodes.iter_mut().flatten() {
            p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Scrapes `url` and parses it as Prometheus text.
pub fn scrape(http: &Http, url: &str) -> prometheus_parse::Scrape {
    let r = http.get(url);
    assert_eq!(r.status, 200);
    let lines = r.text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

/// The value of the first sample of `name` with these labels.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// Runs the `bender` CLI against the node at `addr`: (exit code, stdout, stderr).
pub fn bender_cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bender"))
        .args(args)
        .env("BENDER_ADDR", addr)
        .output()
        .expect("run bender");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One server-sent event: its name, its id (if any) and its JSON data.
#[derive(Debug, Clone)]
pub struct Sse {
    pub name: String,
    pub id: Option<String>,
    pub data: Value,
}

/// Reads a node's `/v1/events` (resuming after `last_id`, if given) on a thread; returns once
/// the stream is open.
pub fn sse(url: &str, last_id: Option<&str>) -> mpsc::Receiver<Sse> {
    let (tx, rx) = mpsc::channel();
    let url = url.to_string();
    let last_id = last_id.map(str::to_string);
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let mut req = agent.get(&url);
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.call().expect("subscribe");
        let _ = ready_tx.send(());
        let reader = BufReader::new(resp.into_body().into_reader());
        // Fields come in any order; a blank line ends the event.
        let (mut name, mut id, mut data) = (String::new(), None, None);
        for line in reader.lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_string();
            } else if let Some(i) = line.strip_prefix("id:") {
                id = Some(i.trim().to_string());
            } else if let Some(d) = line.strip_prefix("data:") {
                data = Some(serde_json::from_str(d.trim()).unwrap_or(Value::Null));
            } else if line.is_empty() {
                let Some(data) = data.take() else {
                    continue; // A keep-alive comment.
                };
                let event = Sse {
                    name: std::mem::take(&mut name),
                    id: id.take(),
                    data,
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("event stream opened");
    rx
}
