//! The nodes of the scale benchmarks: `bender agent` processes on loopback, what they
//! report (metrics) and what they cost (RSS, CPU ticks), and the host's UDP drops.

use super::common::{binary, free_port};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn http() -> ureq::Agent {
    let config = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10)));
    config.build().into()
}

/// Polls `cond` every 50 ms until it holds (true) or `limit` has passed (false).
pub fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `bender agent` process, killed on drop.
pub struct Node {
    pub child: Child,
    pub api: String,
    pub log: PathBuf,
    pub http: ureq::Agent,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str) -> Option<String> {
        let mut resp = self.http.get(&format!("{}{path}", self.api)).call().ok()?;
        resp.body_mut().read_to_string().ok()
    }

    /// The sum of a metric's samples (all label sets), or None if the node does not answer.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics")?;
        let samples = text.lines().filter_map(|l| l.strip_prefix(name));
        let values = samples.filter(|rest| rest.starts_with([' ', '{']));
        values
            .map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `bender_registrations_live`, or None if the node does not answer within 10 s.
    pub fn live(&self) -> Option<usize> {
        let live = self.metric("bender_registrations_live");
        live.map(|l| l as usize)
    }

    pub fn live_text(&self) -> String {
        self.live()
            .map_or("? (no answer)".into(), |l| l.to_string())
    }

    pub fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap();
        kb.trim_end_matches("kB").trim().parse::<f64>().unwrap() / 1024.0
    }

    /// utime + stime (fields 14 and 15 of /proc/<pid>/stat), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // After the command name (which may hold spaces) comes field 3.
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` nodes gossiping on loopback, once every one sees all `n` live. Their config file raises
/// the limits and sets the TTL the old client route gets (it takes none of its own).
pub fn start(tag: &str, n: usize, default_ttl: &str) -> Vec<Node> {
    let dir = std::env::temp_dir().join("bender-bench-scale");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!("{tag}.toml"));
    let limits = "[limits]\nmax_registrations = 300000\nmax_registrations_per_app = 300000\n";
    let toml = format!("default_ttl = \"{default_ttl}\"\n{limits}");
    std::fs::write(&config, toml).unwrap();
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let mut nodes = Vec::new();
    for (i, (api, gossip)) in ports.iter().enumerate() {
        let log = dir.join(format!("{tag}{i}.log"));
        let mut cmd = Command::new(binary());
        cmd.args(["agent", "--cluster-id", tag])
            .args(["--node-id", &format!("{tag}{i}")])
            .arg("--config")
            .arg(&config)
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--gossip-listen", &format!("127.0.0.1:{gossip}")])
            .env("BENDER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (_, g) in ports.iter().filter(|(a, _)| a != api) {
            cmd.args(["--seed", &format!("127.0.0.1:{g}")]);
        }
        let (child, api) = (cmd.spawn().unwrap(), format!("http://127.0.0.1:{api}"));
        nodes.push(Node {
            child,
            api,
            log,
            http: http(),
        });
    }
    for node in &nodes {
        let formed = poll(Duration::from_secs(30), || {
            let members = node.get("/v1/members").unwrap_or_default();
            let members: Value = serde_json::from_str(&members).unwrap_or_default();
            let live = members
                .as_array()
                .map(|a| a.iter().filter(|m| m["live"] == true).count());
            live == Some(n)
        });
        assert!(
            formed,
            "{tag}: cluster did not form; log:\n{}",
            node.log_tail(20)
        );
    }
    nodes
}

/// CPU of each node over `window` (no traffic), in % of one core.
pub fn idle_cpu(nodes: &[Node], window: Duration) -> String {
    let tck = Command::new("getconf").arg("CLK_TCK").output().ok();
    let tck = tck.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
    let per_s = tck.unwrap_or(100.0) * window.as_secs_f64() / 100.0;
    let before: Vec<u64> = nodes.iter().map(Node::cpu_ticks).collect();
    std::thread::sleep(window);
    let cpu = nodes
        .iter()
        .zip(before)
        .map(|(n, b)| (n.cpu_ticks() - b) as f64 / per_s);
    cpu.map(|c| format!("{c:.2}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn rss_all(nodes: &[Node]) -> String {
    let v: Vec<String> = nodes
        .iter()
        .map(|n| format!("{:.1} MB", n.rss_mb()))
        .collect();
    v.join(", ")
}

pub fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let udp: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let i = udp[0].iter().position(|f| *f == "RcvbufErrors").unwrap();
    udp[1][i].parse().unwrap()
}
