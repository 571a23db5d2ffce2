//! Test scaffolding around a real HAProxy: temp dirs, tiny backend HTTP servers answering with
//! their name, an HTTP client (new connection or keep-alive), HAProxy's CLI, and a HAProxy
//! master-worker process owned by the test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown as NetShutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Scaffolding: temp dirs, backend servers, an HTTP client, HAProxy itself.

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bender-haproxy-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback HTTP/1.1 server answering every request with its name (keep-alive supported).
pub struct TestServer {
    pub name: String,
    pub ip: String,
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start(name: &str) -> TestServer {
        Self::start_on("127.0.0.1", name)
    }

    /// A server on `ip` (e.g. a bridge address namespaced hosts can reach).
    pub fn start_on(ip: &str, name: &str) -> TestServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind test server");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let body = name.to_string();
        let stopping = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let body = body.clone();
                thread::spawn(move || serve(conn, &body));
            }
        });
        TestServer {
            name: name.to_string(),
            ip: ip.to_string(),
            port,
            stop,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect((self.ip.as_str(), self.port));
    }
}

pub fn serve(conn: TcpStream, body: &str) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut writer = conn;
    loop {
        // Read one request head; GET and HAProxy's checks carry no body.
        let mut close = false;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
            if header.to_ascii_lowercase().starts_with("connection:")
                && header.to_ascii_lowercase().contains("close")
            {
                close = true;
            }
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// One HTTP response as the test sees it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub close: bool,
}

pub fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    let mut close = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof in headers",
            ));
        }
        if header == "\r\n" {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
            close = true;
        }
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
    })
}

/// GET on a new connection.
pub fn get(port: u16) -> std::io::Result<Response> {
    get_at("127.0.0.1", port)
}

/// GET on a new connection to `ip:port`.
pub fn get_at(ip: &str, port: u16) -> std::io::Result<Response> {
    let conn = TcpStream::connect((ip, port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = conn.try_clone()?;
    writer.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    read_response(&mut BufReader::new(conn))
}

/// A keep-alive client: reuses its connection until the server says `Connection: close`.
pub struct KeepAlive {
    pub port: u16,
    pub conn: Option<(TcpStream, BufReader<TcpStream>)>,
    /// Requests answered on the current connection.
    pub used: u32,
}

impl KeepAlive {
    pub fn get(&mut self) -> std::io::Result<Response> {
        if self.conn.is_none() {
            let conn = TcpStream::connect(("127.0.0.1", self.port))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            let reader = BufReader::new(conn.try_clone()?);
            self.conn = Some((conn, reader));
            self.used = 0;
        }
        let (conn, reader) = self.conn.as_mut().expect("connected above");
        let result = conn
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .and_then(|()| read_response(reader));
        let used = self.used;
        self.used += 1;
        let result = result.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{e} (request {} on its connection)", used + 1),
            )
        });
        match &result {
            Ok(r) if !r.close => {}
            _ => {
                if let Some((c, _)) = self.conn.take() {
                    let _ = c.shutdown(NetShutdown::Both);
                }
            }
        }
        result
    }
}

/// The body HAProxy answers with, if it answers 200.
pub fn served(port: u16) -> Option<String> {
    match get(port) {
        Ok(r) if r.status == 200 => Some(r.body),
        _ => None,
    }
}

/// Sends one command to a HAProxy CLI socket.
pub fn cli(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    s.shutdown(NetShutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The master's reload counter from `show proc`.
pub fn master_reloads(socket: &Path) -> Option<u64> {
    let text = cli(socket, "show proc").ok()?;
    let line = text.lines().find(|l| l.contains("master"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A HAProxy master-worker process owned by the test.
pub struct Haproxy {
    pub child: Child,
    pub master_socket: PathBuf,
}

impl Haproxy {
    pub fn start(dir: &Path, config: &Path) -> Haproxy {
        Self::start_with(&[], dir, config)
    }

    /// Starts HAProxy behind a command prefix (e.g. `ip netns exec NS`).
    pub fn start_with(prefix: &[&str], dir: &Path, config: &Path) -> Haproxy {
        let master_socket = dir.join("master.sock");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("log file");
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg("haproxy");
                c
            }
            None => Command::new("haproxy"),
        };
        let child = command
            .arg("-W")
            .arg("-S")
            .arg(&master_socket)
            .arg("-f")
            .arg(config)
            .arg("-p")
            .arg(dir.join("haproxy.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start haproxy (is it installed?)");
        let mut h = Haproxy {
            child,
            master_socket,
        };
        let log_path = dir.join("haproxy.log");
        let deadline = Instant::now() + WAIT;
        loop {
            let listed = cli(&h.master_socket, "show proc").is_ok_and(|t| t.contains("worker"));
            if listed {
                break;
            }
            let exited = h.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "HAProxy did not start ({exited:?}):\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too; SIGKILL only if it does not exit.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes what one bender node driving one HAProxy in `dir` needs: a minimal HAProxy config to
/// start the master with (bender replaces it on its first apply) and a bender config rendering
/// the default template into it, reloading through `dir/master.sock`. `extra` goes at the top
/// of the bender config. Returns the bender config's path.
pub fn write_node_files(dir: &Path, extra: &str) -> PathBuf {
    write_node_files_with(dir, extra, "")
}

/// [`write_node_files`], with `template_extra` added to the `[[template]]` table.
pub fn write_node_files_with(dir: &Path, extra: &str, template_extra: &str) -> PathBuf {
    let d = dir.display();
    let template_extra = template_extra.replace("{dir}", &d.to_string());
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/haproxy.cfg.tera");
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n    stats socket {d}/admin.sock mode 660 level admin expose-fd listeners\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
        ),
    )
    .expect("write haproxy.cfg");
    let config = format!(
        r#"{extra}
[[template]]
name = "haproxy"
source = "{template}"
destination = "{d}/haproxy.cfg"
reload = {{ method = "master-socket", socket = "{d}/master.sock" }}
server_state = {{ socket = "{d}/admin.sock", file = "{d}/server-state" }}
vars = {{ stats_socket = "{d}/admin.sock", server_state_file = "{d}/server-state", chroot = "", user = "", group = "", log = "" }}
{template_extra}
"#
    );
    let path = dir.join("bender.toml");
    std::fs::write(&path, config).expect("write bender.toml");
    path
}
