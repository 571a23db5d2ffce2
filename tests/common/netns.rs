//! Test hosts in Linux network namespaces. Needs root and iproute2 (`.ci/run` installs it).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

pub fn ip(args: &[&str]) {
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

/// Namespaces (one per "host"), bridges and processes, removed on drop. Host `i` has a
/// management address (API, HAProxy frontends; reachable from the test, which sits on the
/// bridge at `bridge_ip()`) and a cluster address (gossip only).
pub struct Hosts {
    /// Which instance in this process: keeps names and subnets apart between tests.
    pub k: usize,
    pub tag: String,
    pub n: usize,
    pub children: Vec<Child>,
}

impl Hosts {
    /// Host `i`'s management address.
    pub fn mgmt_ip(&self, i: usize) -> String {
        format!("10.231.{}.{}", 2 * self.k + 1, i + 1)
    }
    /// Host `i`'s cluster (gossip) address.
    pub fn cluster_ip(&self, i: usize) -> String {
        format!("10.231.{}.{}", 2 * self.k + 2, i + 1)
    }
    /// The test's own address on the management bridge (backend servers listen here).
    pub fn bridge_ip(&self) -> String {
        format!("10.231.{}.254", 2 * self.k + 1)
    }
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    pub fn new(n: usize) -> Hosts {
        assert!(
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0,
            "the network-namespace tests need root (CI runs as root)"
        );
        // Short, unique names: interface names are limited to 15 characters.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(k < 100, "too many test host sets in one process");
        let tag = format!("b{}{k}", std::process::id() % 10_000);
        let h = Hosts {
            k,
            tag: tag.clone(),
            n,
            children: Vec::new(),
        };
        let (bm, bc) = (format!("{tag}m"), format!("{tag}c"));
        ip(&["link", "add", &bm, "type", "bridge"]);
        ip(&["link", "add", &bc, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", h.bridge_ip()), "dev", &bm]);
        ip(&["link", "set", &bm, "up"]);
        ip(&["link", "set", &bc, "up"]);
        for i in 0..n {
            let ns = h.ns(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            for (kind, bridge, addr) in [("m", &bm, h.mgmt_ip(i)), ("c", &bc, h.cluster_ip(i))] {
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

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}:1729{path}", self.mgmt_ip(i))
    }

    /// Cuts (or restores) host `i`'s cluster link.
    pub fn cluster_link(&self, i: usize, up: bool) {
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

impl Hosts {
    /// Starts `bender agent` in host `i`'s namespace with the gossip/API addresses set and every
    /// other host as a seed, plus `extra` arguments.
    pub fn start_bender(&mut self, i: usize, extra: &[String]) {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns(i),
            env!("CARGO_BIN_EXE_bender"),
            "agent",
        ])
        .args([
            "--node-id",
            &format!("host{i}"),
            "--cluster-id",
            "netns-test",
        ])
        .args(["--api-listen", &format!("{}:1729", self.mgmt_ip(i))])
        .args(["--gossip-listen", &format!("{}:1730", self.cluster_ip(i))])
        .args(extra)
        .env("BENDER_LOG", "info")
        .stdout(if std::env::var_os("BENDER_TEST_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        for j in 0..self.n {
            if j != i {
                cmd.args(["--seed", &format!("{}:1730", self.cluster_ip(j))]);
            }
        }
        self.children
            .push(cmd.spawn().expect("spawn bender in a namespace"));
    }

    /// The command prefix that runs a program in host `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }
}

/// Addresses of this host that are not loopback, as app servers on other machines would have:
/// the test-host bridge of a [`Hosts`] with `n` addresses on it (kept while it lives).
pub fn own_addresses(n: usize) -> (Hosts, Vec<String>) {
    let hosts = Hosts::new(1);
    let base = hosts.bridge_ip();
    let prefix = base.rsplit_once('.').unwrap().0.to_string();
    let mut addrs = vec![base];
    for i in 1..n {
        let a = format!("{prefix}.{}", 254 - i);
        ip(&[
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            &format!("{}m", hosts.tag),
        ]);
        addrs.push(a);
    }
    (hosts, addrs)
}
