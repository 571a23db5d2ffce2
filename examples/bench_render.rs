//! Times the apply pipeline's steps with the default template for 100, 1,000 and 10,000
//! servers: render (context + Tera), validate (`haproxy -c`), and swap (rename + fsync).
//!
//! Run: `cargo run --release --example bench_render` (needs `haproxy` on the PATH).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bender::cluster::NodeView;
use bender::model::{Backend, Frontend, Mode, RegKey};
use bender::registry::LiveRegistration;
use bender::render::{self, ReloadConfig, TemplateConfig};

const SERVERS_PER_BACKEND: usize = 5;

/// `servers` registrations spread over backends of 5 servers, one frontend per 100 backends.
fn view(servers: usize) -> NodeView {
    let mut nv = NodeView {
        ready: true,
        ..Default::default()
    };
    let backends = servers.div_ceil(SERVERS_PER_BACKEND);
    for b in 0..backends {
        let name = format!("app{b}");
        nv.view.backends.insert(
            name.clone(),
            Backend {
                name: name.clone(),
                app: name.clone(),
                version: "v1".into(),
                balance: Default::default(),
                mode: Mode::Http,
                health_check: None,
                server_options: None,
                extra: vec![],
            },
        );
        if b % 100 == 0 {
            let fe = format!("fe{b}");
            nv.view.frontends.insert(
                fe.clone(),
                Frontend {
                    name: fe,
                    backend: name.clone(),
                    bind: format!("127.0.0.1:{}", 20_000 + b / 100),
                    mode: Mode::Http,
                    rules: vec![],
                    extra: vec![],
                },
            );
        }
        for s in 0..SERVERS_PER_BACKEND.min(servers - b * SERVERS_PER_BACKEND) {
            let host = format!("10.{}.{}.{}", b / 250 % 250, b % 250, s + 1);
            let key = RegKey::new(&name, "v1", &host, 8080).expect("valid key");
            nv.view.registrations.insert(
                key.clone(),
                LiveRegistration {
                    key,
                    registered_ms: 0,
                    deadline_ms: 4_000,
                    ttl_ms: 4_000,
                    meta: BTreeMap::new(),
                },
            );
        }
    }
    nv
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.expect("at least one run"))
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("bender-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let vars: BTreeMap<String, String> = [
        ("stats_socket", dir.join("admin.sock").display().to_string()),
        ("server_state_file", dir.join("state").display().to_string()),
        ("log", String::new()),
        ("chroot", String::new()),
        ("user", String::new()),
        ("group", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let template = TemplateConfig {
        name: "bench".into(),
        source: Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/haproxy.cfg.tera"),
        destination: dir.join("haproxy.cfg"),
        check: None,
        reload: ReloadConfig::None,
        vars,
        server_state: None,
        slot_block: 10,
        runtime: None,
    };
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>10}",
        "servers", "bytes", "render", "validate", "swap"
    );
    for servers in [100, 1_000, 10_000] {
        let nv = view(servers);
        let (render, out) = best_of(5, || {
            render::render_once(std::slice::from_ref(&template), "bench", &nv)
        });
        let text = out?.remove(0).1;
        let tmp = dir.join(".haproxy.cfg.tmp");
        std::fs::write(&tmp, &text)?;
        let (validate, status) = best_of(3, || {
            Command::new("haproxy")
                .args(["-c", "-q", "-f"])
                .arg(&tmp)
                .status()
        });
        anyhow::ensure!(
            status?.success(),
            "haproxy -c rejected the {servers}-server config"
        );
        let (swap, result) = best_of(5, || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &template.destination)?;
            std::fs::File::open(&dir)?.sync_all()
        });
        result?;
        println!(
            "{servers:>8} {:>10} {:>12.2?} {:>12.2?} {:>10.2?}",
            text.len(),
            render,
            validate,
            swap
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
