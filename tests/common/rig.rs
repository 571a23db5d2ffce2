//! The render/apply pipeline in-process against a real HAProxy 2.6: views to feed it, and the
//! rig (HAProxy + the render task, started on a first view) that `haproxy_apply.rs` and
//! `runtime_api.rs` drive.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bender::cluster::NodeView;
use bender::model::{Backend, Frontend, Mode, RegKey};
use bender::registry::LiveRegistration;
use bender::render::{
    self, ApplyConfig, ReloadConfig, RenderHandle, RuntimeConfig, ServerStateConfig,
    TemplateConfig, TemplateStatus,
};
use bender::shutdown::{self, ShutdownTrigger};
use tokio::sync::watch;

use super::haproxy::*;

pub const DEFAULT_TEMPLATE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/templates/haproxy.cfg.tera");

// ---------------------------------------------------------------------------------------------
// Views.

pub fn backend(name: &str, version: &str) -> Backend {
    Backend {
        name: name.into(),
        app: "web".into(),
        version: version.into(),
        balance: Default::default(),
        mode: Mode::Http,
        health_check: None,
        server_options: None,
        extra: vec![],
    }
}

pub fn frontend(port: u16, backend: &str) -> Frontend {
    Frontend {
        name: "www".into(),
        backend: backend.into(),
        bind: format!("127.0.0.1:{port}"),
        mode: Mode::Http,
        rules: vec![],
        extra: vec![],
    }
}

/// Frontend `www` on `port` -> backend `web` (app web@`version`), with `servers` registered
/// as (server, version).
pub fn view(port: u16, version: &str, servers: &[(&TestServer, &str)]) -> NodeView {
    let mut nv = NodeView {
        ready: true,
        ..Default::default()
    };
    nv.view
        .backends
        .insert("web".into(), backend("web", version));
    nv.view
        .frontends
        .insert("www".into(), frontend(port, "web"));
    for (s, v) in servers {
        register(&mut nv, "web", v, s.port, 1_000);
    }
    nv
}

pub fn register(nv: &mut NodeView, app: &str, version: &str, port: u16, renewed_ms: u64) {
    let key = RegKey::new(app, version, "127.0.0.1", port).unwrap();
    nv.view.registrations.insert(
        key.clone(),
        LiveRegistration {
            key,
            registered_ms: renewed_ms,
            deadline_ms: renewed_ms + 4_000,
            ttl_ms: 4_000,
            meta: BTreeMap::new(),
        },
    );
}

// ---------------------------------------------------------------------------------------------
// The rig: HAProxy + the render task, started on a first view.

pub struct Rig {
    // Field order is drop order: stop the task, then HAProxy, then remove the directory.
    pub trigger: ShutdownTrigger,
    pub handle: RenderHandle,
    pub rt: tokio::runtime::Runtime,
    pub views: watch::Sender<Arc<NodeView>>,
    pub template: TemplateConfig,
    pub haproxy: Haproxy,
    pub port: u16,
    pub dir: TempDir,
}

impl Rig {
    pub fn start(
        tag: &str,
        port: u16,
        first: NodeView,
        apply: ApplyConfig,
        source: Option<PathBuf>,
    ) -> Rig {
        Self::start_with(tag, port, first, apply, source, None)
    }

    /// With the runtime API on the stats socket, servers draining for `drain`.
    pub fn start_runtime(
        tag: &str,
        port: u16,
        first: NodeView,
        apply: ApplyConfig,
        drain: Duration,
    ) -> Rig {
        Self::start_with(tag, port, first, apply, None, Some(drain))
    }

    /// With a template of the test's and the runtime API (servers draining for `drain`).
    pub fn start_custom_runtime(
        tag: &str,
        port: u16,
        first: NodeView,
        apply: ApplyConfig,
        source: PathBuf,
        drain: Duration,
    ) -> Rig {
        Self::start_with(tag, port, first, apply, Some(source), Some(drain))
    }

    fn start_with(
        tag: &str,
        port: u16,
        first: NodeView,
        apply: ApplyConfig,
        source: Option<PathBuf>,
        drain: Option<Duration>,
    ) -> Rig {
        let dir = TempDir::new(tag);
        let vars: BTreeMap<String, String> = [
            (
                "stats_socket",
                dir.0.join("admin.sock").display().to_string(),
            ),
            (
                "server_state_file",
                dir.0.join("server-state").display().to_string(),
            ),
            ("log", String::new()),
            ("chroot", String::new()),
            ("user", String::new()),
            ("group", String::new()),
            // Old workers must not outlive the test by much.
            ("hard_stop_after", "15s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let template = TemplateConfig {
            name: "haproxy".into(),
            source: source.unwrap_or_else(|| DEFAULT_TEMPLATE.into()),
            destination: dir.0.join("haproxy.cfg"),
            check: None,
            reload: ReloadConfig::MasterSocket {
                socket: dir.0.join("master.sock"),
            },
            vars,
            server_state: Some(ServerStateConfig {
                socket: dir.0.join("admin.sock"),
                file: dir.0.join("server-state"),
            }),
            slot_block: 10,
            runtime: drain.map(|drain| RuntimeConfig {
                socket: dir.0.join("admin.sock"),
                drain,
            }),
        };
        template.validate().unwrap();
        apply.validate().unwrap();
        // HAProxy starts on what the pipeline would render, as after a bender restart.
        let text = render::render_once(std::slice::from_ref(&template), "lb-1", &first).unwrap();
        std::fs::write(&template.destination, &text[0].1).unwrap();
        let haproxy = Haproxy::start(&dir.0, &template.destination);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (views, rx) = watch::channel(Arc::new(first));
        let (trigger, shutdown) = shutdown::channel();
        let handle = {
            let _in_runtime = rt.enter();
            render::spawn(
                apply,
                vec![template.clone()],
                "lb-1".into(),
                bender::model::Snippets::AllowListed,
                rx,
                &bender::supervise::Failures::new(),
                shutdown,
            )
        };
        Rig {
            trigger,
            handle,
            rt,
            views,
            template,
            haproxy,
            port,
            dir,
        }
    }

    pub fn status(&self) -> TemplateStatus {
        self.handle.status().remove(0)
    }

    pub fn send(&self, nv: NodeView) {
        self.views
            .send(Arc::new(nv))
            .expect("the render task is running");
    }

    pub fn on_disk(&self) -> String {
        std::fs::read_to_string(&self.template.destination).unwrap()
    }

    /// Sends `nv` and waits until its render is on disk and HAProxy runs it: every backend's
    /// ready slots on disk are the view's servers, and HAProxy runs the file's version.
    /// (Not the bytes of a fresh render: servers keep the slots they had.)
    pub fn apply(&self, nv: NodeView) {
        let want = ready_servers(
            &render::render_once(std::slice::from_ref(&self.template), "lb-1", &nv).unwrap()[0].1,
        );
        self.send(nv);
        wait_for("the new config to be applied", WAIT, || {
            let s = self.status();
            let text = self.on_disk();
            // The version the file carries is the status's only once it was applied.
            let version = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("description bender-config:"))
                .map(str::to_string);
            (s.ok && ready_servers(&text) == want && version.is_some() && version == s.config_hash)
                .then_some(())
        });
    }

    /// Waits until `n` requests in a row are all answered by `name`.
    pub fn wait_all_served_by(&self, name: &str, n: usize) {
        wait_for(&format!("every request to reach {name}"), WAIT, || {
            (0..n)
                .all(|_| served(self.port).as_deref() == Some(name))
                .then_some(())
        });
    }

    /// Waits until requests reach both `a` and `b`.
    pub fn wait_all_served_by_both(&self, a: &str, b: &str) {
        wait_for(&format!("requests to reach {a} and {b}"), WAIT, || {
            let seen: std::collections::BTreeSet<String> =
                (0..10).filter_map(|_| served(self.port)).collect();
            (seen.contains(a) && seen.contains(b)).then_some(())
        });
    }

    pub fn assert_serves(&self, name: &str) {
        for _ in 0..10 {
            assert_eq!(
                served(self.port).as_deref(),
                Some(name),
                "HAProxy stopped serving {name}"
            );
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.trigger.trigger();
        let handle = self.handle.clone();
        let stopped = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), handle.stopped()).await
        });
        if stopped.is_err() && !thread::panicking() {
            panic!("the render task did not stop after shutdown");
        }
        if thread::panicking() {
            eprintln!(
                "--- haproxy log ---\n{}",
                std::fs::read_to_string(self.dir.0.join("haproxy.log")).unwrap_or_default()
            );
            eprintln!("--- status ---\n{:?}", self.handle.status());
        }
    }
}

pub fn fast() -> ApplyConfig {
    ApplyConfig {
        debounce_quiet: Duration::from_millis(50),
        debounce_max: Duration::from_millis(200),
        ..ApplyConfig::default()
    }
}

/// Each backend's servers a rendered config makes ready: `server` lines not `disabled`, by
/// backend, as sorted addresses.
pub fn ready_servers(config: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut backend = None;
    for line in config.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("backend ") {
            backend = Some(name.to_string());
            out.entry(name.to_string()).or_default();
        } else if t.starts_with("frontend ") || t.starts_with("defaults") || t.starts_with("global")
        {
            backend = None;
        } else if let (Some(b), Some(rest)) = (&backend, t.strip_prefix("server ")) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.len() >= 2 && !words.contains(&"disabled") {
                out.get_mut(b)
                    .expect("entered above")
                    .push(words[1].to_string());
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// `nv` with a frontend bound to 192.0.2.1:80 (TEST-NET-1, not on this host): `haproxy -c`
/// accepts the bind, the reload fails.
pub fn with_unbindable_frontend(mut nv: NodeView) -> NodeView {
    let mut unbindable = frontend(80, "web");
    unbindable.name = "unbindable".into();
    unbindable.bind = "192.0.2.1:80".into();
    nv.view.frontends.insert("unbindable".into(), unbindable);
    nv
}
