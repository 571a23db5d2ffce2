//! Process-level partitions: three `bender agent` processes, each in its own Linux network
//! namespace (a "host"), with a management link (API, reached from the test) and a cluster link
//! (gossip). Cutting a node's cluster link partitions it; bringing it back heals.
//!
//! Needs root and iproute2 (`.ci/run` installs it); CI runs as root.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{wait_until, Http};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (install iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces, bridges and processes, removed on drop.
struct Hosts {
    tag: String,
    n: usize,
    children: Vec<Child>,
}

impl Hosts {
    fn mgmt_ip(i: usize) -> String {
        format!("10.231.1.{}", i + 1)
    }
    fn cluster_ip(i: usize) -> String {
        format!("10.231.2.{}", i + 1)
    }
    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn new(n: usize) -> Hosts {
        assert!(
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0,
            "the network-namespace tests need root (CI runs as root)"
        );
        // Short, unique names: interface names are limited to 15 characters.
        let tag = format!("b{}", std::process::id() % 100_000);
        let h = Hosts {
            tag: tag.clone(),
            n,
            children: Vec::new(),
        };
        let (bm, bc) = (format!("{tag}m"), format!("{tag}c"));
        ip(&["link", "add", &bm, "type", "bridge"]);
        ip(&["link", "add", &bc, "type", "bridge"]);
        ip(&["addr", "add", "10.231.1.254/24", "dev", &bm]);
        ip(&["link", "set", &bm, "up"]);
        ip(&["link", "set", &bc, "up"]);
        for i in 0..n {
            let ns = h.ns(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            for (kind, bridge, addr) in [
                ("m", &bm, Self::mgmt_ip(i)),
                ("c", &bc, Self::cluster_ip(i)),
            ] {
                let host_end = format!("{tag}{kind}{i}");
                ip(&[
                    "link", "add", &host_end, "type", "veth", "peer", "name", "eth", "netns", &ns,
                ]);
                ip(&["-n", &ns, "link", "set", "eth", "name", &format!("{kind}0")]);
                ip(&["link", "set", &host_end, "master", bridge]);
                ip(&["link", "set", &host_end, "up"]);
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    &format!("{kind}0"),
                ]);
                ip(&["-n", &ns, "link", "set", &format!("{kind}0"), "up"]);
            }
        }
        h
    }

    fn start(&mut self) {
        for i in 0..self.n {
            let mut cmd = Command::new("ip");
            cmd.args([
                "netns",
                "exec",
                &self.ns(i),
                env!("CARGO_BIN_EXE_bender"),
                "agent",
            ])
            .args(["--node-id", &format!("host{i}")])
            .args(["--api-listen", &format!("{}:1729", Self::mgmt_ip(i))])
            .args(["--gossip-listen", &format!("{}:1730", Self::cluster_ip(i))])
            .env("BENDER_LOG", "info")
            .stdout(if std::env::var_os("BENDER_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
            for j in 0..self.n {
                if j != i {
                    cmd.args(["--seed", &format!("{}:1730", Self::cluster_ip(j))]);
                }
            }
            self.children
                .push(cmd.spawn().expect("spawn bender in a namespace"));
        }
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}:1729{path}", Self::mgmt_ip(i))
    }

    /// Cuts (or restores) host `i`'s cluster link.
    fn cluster_link(&self, i: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &format!("{}c{i}", self.tag),
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..self.n {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        for b in ["m", "c"] {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}{b}", self.tag)])
                .status();
        }
    }
}

fn live_members(http: &Http, url: &str) -> Option<usize> {
    let r = http.get(url);
    r.body
        .as_array()
        .map(|a| a.iter().filter(|m| m["live"] == true).count())
}

fn backend_version(http: &Http, url: &str) -> Option<String> {
    let r = http.get(url);
    (r.status == 200).then(|| r.body["version"].as_str().unwrap_or("").to_string())
}

#[test]
fn a_partitioned_host_diverges_then_converges_when_healed() {
    let mut hosts = Hosts::new(3);
    hosts.start();
    let http = Http::new();
    for i in 0..3 {
        let url = hosts.url(i, "/v1/members");
        wait_until(WAIT, "three live members", || {
            std::net::TcpStream::connect((Hosts::mgmt_ip(i).as_str(), 1729)).is_ok()
                && live_members(&http, &url) == Some(3)
        });
    }
    http.post_json(
        &hosts.url(0, "/backends"),
        r#"{"name":"web","app":"web","version":"v0"}"#,
    );
    for i in 0..3 {
        wait_until(WAIT, "the backend reaches every host", || {
            backend_version(&http, &hosts.url(i, "/backends/web")).as_deref() == Some("v0")
        });
    }

    // Partition host 2.
    hosts.cluster_link(2, false);
    wait_until(WAIT, "host 0 sees host 2 as dead", || {
        live_members(&http, &hosts.url(0, "/v1/members")) == Some(2)
    });
    let r = http.put_json(
        &hosts.url(0, "/backends/web"),
        r#"{"app":"web","version":"a"}"#,
    );
    assert_eq!(r.status, 200);
    let reg = r#"{"app":"web","version":"a","host":"10.9.9.9","port":80,"ttl":"60s"}"#;
    assert_eq!(
        http.post_json(&hosts.url(1, "/v1/registrations"), reg)
            .status,
        200
    );
    wait_until(WAIT, "host 1 has host 0's update", || {
        backend_version(&http, &hosts.url(1, "/backends/web")).as_deref() == Some("a")
    });
    // The later write, on the partitioned side.
    let r = http.put_json(
        &hosts.url(2, "/backends/web"),
        r#"{"app":"web","version":"b"}"#,
    );
    assert_eq!(r.status, 200);
    // Neither side sees the other's writes while cut off.
    assert_eq!(
        backend_version(&http, &hosts.url(0, "/backends/web")).as_deref(),
        Some("a")
    );
    assert_eq!(
        http.get(&hosts.url(2, "/registrations/web")).body,
        Value::Array(vec![])
    );

    // Heal: every host converges on the later write and has the registration.
    hosts.cluster_link(2, true);
    for i in 0..3 {
        wait_until(WAIT, "every host converges on the later write", || {
            backend_version(&http, &hosts.url(i, "/backends/web")).as_deref() == Some("b")
        });
        wait_until(WAIT, "every host has the registration", || {
            http.get(&hosts.url(i, "/registrations/web"))
                .body
                .as_array()
                .is_some_and(|a| a.len() == 1)
        });
    }
}
