//! Three load balancers on loopback: each a real `bender agent` driving its own real HAProxy
//! (the three share a frontend's port: HAProxy binds with SO_REUSEPORT).

use super::haproxy::{write_node_files_with, Haproxy, TempDir};
use super::{free_port, Proc};

/// One load balancer: a bender node and the HAProxy it drives.
pub struct Lb {
    pub node: Proc,
    pub dir: TempDir,
    _haproxy: Haproxy,
}

impl Lb {
    /// The HAProxy config on disk.
    pub fn file(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("haproxy.cfg")).unwrap_or_default()
    }
}

/// Three nodes, `lb0`..`lb2`; `extra(i)` goes at the top of node i's config, and `template(i)`
/// (if any) replaces the default template's text for node i.
pub fn start_fleet(
    tag: &str,
    extra: impl Fn(usize) -> String,
    template: impl Fn(usize) -> Option<String>,
) -> Vec<Lb> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    (0..3)
        .map(|i| {
            let dir = TempDir::new(&format!("{tag}-{i}"));
            let mut config = write_node_files_with(
                &dir.0,
                &extra(i),
                r#"runtime = { socket = "{dir}/admin.sock", drain = "1s" }"#,
            );
            if let Some(text) = template(i) {
                let source = dir.0.join("haproxy.cfg.tera");
                std::fs::write(&source, text).unwrap();
                let body = std::fs::read_to_string(&config).unwrap().replace(
                    concat!(env!("CARGO_MANIFEST_DIR"), "/templates/haproxy.cfg.tera"),
                    &source.display().to_string(),
                );
                config = dir.0.join("bender-custom.toml");
                std::fs::write(&config, body).unwrap();
            }
            let haproxy = Haproxy::start(&dir.0, &dir.0.join("haproxy.cfg"));
            let (api, gossip) = ports[i];
            let mut args = vec![
                "--config".to_string(),
                config.display().to_string(),
                "--node-id".into(),
                format!("lb{i}"),
                "--cluster-id".into(),
                tag.into(),
                "--api-listen".into(),
                format!("127.0.0.1:{api}"),
                "--gossip-listen".into(),
                format!("127.0.0.1:{gossip}"),
            ];
            for (j, (_, g)) in ports.iter().enumerate() {
                if j != i {
                    args.extend(["--seed".into(), format!("127.0.0.1:{g}")]);
                }
            }
            let node = Proc::start(
                &format!("lb{i}"),
                api,
                ([127, 0, 0, 1], gossip).into(),
                args,
            );
            Lb {
                node,
                dir,
                _haproxy: haproxy,
            }
        })
        .collect()
}
