//! Servers through HAProxy's runtime API: the render pipeline in-process against a real
//! HAProxy 2.6 whose template has a `runtime` table. Membership changes must cost no reload
//! (counted by HAProxy's master, `show proc`) and fail no request; a server changed by hand on
//! the stats socket is set back; a structural change still reloads.
//!
//! Run with `cargo test --test runtime_api` (needs `/usr/sbin/haproxy`, e.g. Debian's 2.6).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bender::cluster::NodeView;
use bender::render::{ApplyConfig, ServerStatus};

use common::free_port;
use common::haproxy::*;
use common::rig::*;

fn settings() -> ApplyConfig {
    ApplyConfig {
        probe_interval: Duration::from_millis(200),
        ..fast()
    }
}

/// The view with backend `web` holding `servers` (weights from `weights`, by index).
fn web(port: u16, servers: &[&TestServer], weights: &[(usize, &str)]) -> NodeView {
    let mut nv = view(port, "v1", &[]);
    for (i, s) in servers.iter().enumerate() {
        register(&mut nv, "web", "v1", s.port, 1_000);
        if let Some((_, w)) = weights.iter().find(|(k, _)| *k == i) {
            let key = bender::model::RegKey::new("web", "v1", "127.0.0.1", s.port).unwrap();
            let reg = nv.view.registrations.get_mut(&key).unwrap();
            reg.meta.insert("weight".into(), w.to_string());
        }
    }
    nv
}

/// `show servers state web` as (slot, admin-derived state, port, weight) for occupied slots.
fn slots(rig: &Rig) -> Vec<(String, &'static str, u16, u16)> {
    let text = cli(&rig.dir.0.join("admin.sock"), "show servers state web").unwrap();
    text.lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(" slot"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let admin: u32 = f.get(6)?.parse().ok()?;
            let state = if admin & 0x63 != 0 {
                "maint"
            } else if admin & 0x18 != 0 {
                "drain"
            } else {
                "ready"
            };
            let port: u16 = f.get(18)?.parse().ok()?;
            let weight: u16 = f.get(7)?.parse().ok()?;
            (state != "maint").then(|| (f[3].to_string(), state, port, weight))
        })
        .collect()
}

/// Waits until the runtime API path is ready: HAProxy confirmed running the slots.
fn wait_confirmed(rig: &Rig, what: &str) {
    wait_for(what, WAIT, || {
        let s = rig.status();
        (s.ok && s.runtime_ready).then_some(())
    });
}

/// Requests in a loop on new connections and on one keep-alive connection until stopped,
/// counting what failed (anything but a 200 from one of the test servers).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..2)
            .map(|kind| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                thread::spawn(move || {
                    let mut keep = KeepAlive {
                        port,
                        conn: None,
                        used: 0,
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let r = if kind == 0 { get(port) } else { keep.get() };
                        match r {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failed.lock().unwrap().push(format!("status {}", r.status)),
                            Err(e) => failed.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread panicked");
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

#[test]
fn churn_of_100_registrations_costs_no_reload_and_no_failed_request() {
    let servers: Vec<TestServer> = (0..8)
        .map(|i| TestServer::start(&format!("s{i}")))
        .collect();
    let port = free_port();
    let all: Vec<&TestServer> = servers.iter().collect();
    let rig = Rig::start_runtime(
        "runtime-churn",
        port,
        web(port, &all[..1], &[]),
        settings(),
        Duration::from_millis(100),
    );
    rig.wait_all_served_by("s0", 5);
    wait_confirmed(&rig, "the slots to be confirmed");
    let reloads_before = master_reloads(&rig.haproxy.master_socket).expect("show proc");
    let updates_before = rig.status().runtime_updates;
    let load = Load::start(port);
    // 100 changes: servers join and leave, s0 stays throughout. Each view is applied before
    // the next is sent (the runtime API has taken it when the status counts it).
    let mut live: BTreeSet<usize> = BTreeSet::from([0]);
    for step in 0..100usize {
        let k = 1 + step % 7;
        if !live.remove(&k) {
            live.insert(k);
        }
        let members: Vec<&TestServer> = live.iter().map(|&i| &servers[i]).collect();
        let before = rig.status().runtime_updates;
        rig.send(web(port, &members, &[]));
        wait_for("the change to go through the runtime API", WAIT, || {
            (rig.status().runtime_updates > before).then_some(())
        });
        if step == 50 {
            // Traffic follows the registry mid-churn: HAProxy's ready slots are the live set.
            let mut ports: Vec<u16> = slots(&rig)
                .into_iter()
                .filter(|s| s.1 == "ready")
                .map(|s| s.2)
                .collect();
            ports.sort();
            let mut want: Vec<u16> = live.iter().map(|&i| servers[i].port).collect();
            want.sort();
            assert_eq!(ports, want, "HAProxy's ready slots mid-churn");
        }
    }
    let (ok, failed) = load.finish();
    let s = rig.status();
    let reloads_after = master_reloads(&rig.haproxy.master_socket).expect("show proc");
    assert_eq!(
        reloads_after, reloads_before,
        "membership churn reloaded HAProxy (status: {s:?})"
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 0);
    assert!(s.runtime_updates >= updates_before + 100);
    assert_eq!(s.runtime_failures, 0);
    // Every server that left is drained, then its slot freed; the requests reach exactly the
    // live set.
    let names: BTreeSet<String> = live.iter().map(|&i| servers[i].name.clone()).collect();
    wait_for("the drains to end", WAIT, || {
        slots(&rig).iter().all(|s| s.1 == "ready").then_some(())
    });
    wait_for("requests to reach every live server", WAIT, || {
        let seen: BTreeSet<String> = (0..40).filter_map(|_| served(port)).collect();
        (seen == names).then_some(())
    });
    // The file on disk says what HAProxy runs: a reload now changes nothing.
    let on_disk = rig.on_disk();
    for i in &live {
        assert!(
            on_disk.contains(&format!("127.0.0.1:{} weight 1", servers[*i].port)),
            "{on_disk}"
        );
    }
}

#[test]
fn a_leaver_drains_then_its_slot_goes_to_maintenance_and_weights_apply_at_run_time() {
    let (a, b) = (TestServer::start("a"), TestServer::start("b"));
    let port = free_port();
    let rig = Rig::start_runtime(
        "runtime-drain",
        port,
        web(port, &[&a, &b], &[]),
        settings(),
        Duration::from_millis(500),
    );
    rig.wait_all_served_by_both("a", "b");
    wait_confirmed(&rig, "the slots to be confirmed");
    let reloads = master_reloads(&rig.haproxy.master_socket).unwrap();
    let slot_of = |port: u16| {
        slots(&rig)
            .into_iter()
            .find(|s| s.2 == port)
            .map(|s| s.0)
            .expect("a slot for the server")
    };
    let (slot_a, slot_b) = (slot_of(a.port), slot_of(b.port));
    rig.send(web(port, &[&a, &b], &[(1, "7")]));
    wait_for("b's weight to reach HAProxy", WAIT, || {
        slots(&rig)
            .contains(&(slot_b.clone(), "ready", b.port, 7))
            .then_some(())
    });
    rig.send(web(port, &[&b], &[(0, "7")]));
    wait_for("a to drain", WAIT, || {
        slots(&rig)
            .contains(&(slot_a.clone(), "drain", a.port, 1))
            .then_some(())
    });
    rig.assert_serves("b");
    wait_for("a's slot to go to maintenance", WAIT, || {
        (slots(&rig) == [(slot_b.clone(), "ready", b.port, 7)]).then_some(())
    });
    assert_eq!(master_reloads(&rig.haproxy.master_socket), Some(reloads));
    // The weight, the drain, the maintenance: HAProxy shows each before the status counts it
    // (after the read-back and the file).
    let s = wait_for("three runtime updates in status", WAIT, || {
        let s = rig.status();
        (s.runtime_updates >= 3).then_some(s)
    });
    assert_eq!(s.runtime_failures, 0, "{s:?}");
}

#[test]
fn a_server_changed_by_hand_on_the_stats_socket_is_set_back() {
    let a = TestServer::start("a");
    let port = free_port();
    let rig = Rig::start_runtime(
        "runtime-drift",
        port,
        web(port, &[&a], &[]),
        settings(),
        Duration::from_millis(100),
    );
    rig.wait_all_served_by("a", 3);
    wait_confirmed(&rig, "the slots to be confirmed");
    let reloads = master_reloads(&rig.haproxy.master_socket).unwrap();
    let admin = rig.dir.0.join("admin.sock");
    cli(&admin, "set server web/slot1 state maint").unwrap();
    cli(&admin, "set server web/slot3 addr 127.0.0.1 port 9").unwrap();
    cli(&admin, "set server web/slot3 state ready").unwrap();
    wait_for("the drift to be repaired", WAIT, || {
        (rig.status().drift_repairs >= 2).then_some(())
    });
    assert_eq!(slots(&rig), [("slot1".to_string(), "ready", a.port, 1)]);
    rig.assert_serves("a");
    assert_eq!(master_reloads(&rig.haproxy.master_socket), Some(reloads));
}

#[test]
fn more_servers_than_slots_reload_then_the_next_change_goes_through_the_runtime_api() {
    let servers: Vec<TestServer> = (0..11)
        .map(|i| TestServer::start(&format!("s{i}")))
        .collect();
    let port = free_port();
    let all: Vec<&TestServer> = servers.iter().collect();
    let rig = Rig::start_runtime(
        "runtime-structure",
        port,
        web(port, &all[..10], &[]),
        settings(),
        Duration::from_millis(100),
    );
    wait_confirmed(&rig, "the slots to be confirmed");
    let before = rig.status();
    let reloads = master_reloads(&rig.haproxy.master_socket).unwrap();
    // The 11th server needs a second block of slots: a reload.
    rig.send(web(port, &all, &[]));
    wait_for("the bigger backend to be reloaded", WAIT, || {
        let s = rig.status();
        (s.ok
            && s.runtime_ready
            && s.reloads > before.reloads
            && s.reload_reasons.get("structure") > before.reload_reasons.get("structure"))
        .then_some(())
    });
    // The status counts the reload (and its reason) as it starts: the master's count follows
    // once HAProxy has loaded the file.
    wait_for("the master to count the reload", WAIT, || {
        master_reloads(&rig.haproxy.master_socket)
            .filter(|n| *n > reloads)
            .map(|_| ())
    });
    wait_for("s10 to be served", WAIT, || {
        (0..40)
            .filter_map(|_| served(port))
            .any(|n| n == "s10")
            .then_some(())
    });
    assert_eq!(slots(&rig).len(), 11);
    // After the reload the runtime API path is confirmed again: the next change costs none.
    let reloads = wait_for("the master CLI", WAIT, || {
        master_reloads(&rig.haproxy.master_socket)
    });
    let updates = rig.status().runtime_updates;
    rig.send(web(port, &all[1..], &[]));
    wait_for("the leaver to go through the runtime API", WAIT, || {
        (rig.status().runtime_updates > updates).then_some(())
    });
    assert_eq!(master_reloads(&rig.haproxy.master_socket), Some(reloads));
}

#[test]
fn a_refused_structural_change_rolls_back_and_servers_still_change_at_run_time_after_the_fix() {
    let (a, b) = (TestServer::start("a"), TestServer::start("b"));
    let port = free_port();
    let rig = Rig::start_runtime(
        "runtime-refused",
        port,
        web(port, &[&a], &[]),
        ApplyConfig {
            retry_failed_after: Duration::from_secs(1),
            ..settings()
        },
        Duration::from_millis(100),
    );
    wait_confirmed(&rig, "the slots to be confirmed");
    // 192.0.2.1 (TEST-NET-1) is not on this host: `haproxy -c` accepts the bind, the reload
    // fails, and the last good config is put back.
    rig.send(with_unbindable_frontend(web(port, &[&a, &b], &[])));
    let err = wait_for("the reload failure in status", WAIT, || rig.status().error);
    assert!(err.contains("restored the last good config"), "{err}");
    rig.assert_serves("a");
    // The fix: the frontend goes, b stays. The structure is HAProxy's again, so b joins at
    // run time, with no further reload.
    let reloads = wait_for("the master CLI", WAIT, || {
        master_reloads(&rig.haproxy.master_socket)
    });
    let updates = rig.status().runtime_updates;
    rig.send(web(port, &[&a, &b], &[]));
    rig.wait_all_served_by_both("a", "b");
    // HAProxy serves b as soon as the commands land; the status follows once the read-back
    // agreed and the file is written.
    wait_for("the runtime update in status", WAIT, || {
        let s = rig.status();
        (s.ok && s.error.is_none() && s.runtime_updates > updates).then_some(())
    });
    assert_eq!(master_reloads(&rig.haproxy.master_socket), Some(reloads));
}

#[test]
fn a_server_failing_its_health_checks_is_down_in_haproxy_s_view() {
    let a = TestServer::start("a");
    let dead = free_port(); // Nobody listens there.
    let port = free_port();
    let mut nv = web(port, &[&a], &[]);
    register(&mut nv, "web", "v1", dead, 1_000);
    let be = nv.view.backends.get_mut("web").unwrap();
    be.health_check = Some(bender::model::HealthCheck {
        path: Some("/".into()),
        interval_ms: Some(100),
    });
    let rig = Rig::start_runtime(
        "runtime-down",
        port,
        nv,
        settings(),
        Duration::from_millis(100),
    );
    let want = |addr: String, status: ServerStatus| {
        move |s: &bender::render::ServerView| s.address == addr && s.status == status
    };
    wait_for("the dead server to be DOWN and a UP", WAIT, || {
        let s = rig.status();
        (s.servers
            .iter()
            .any(want(format!("127.0.0.1:{dead}"), ServerStatus::Down))
            && s.servers
                .iter()
                .any(want(format!("127.0.0.1:{}", a.port), ServerStatus::Up)))
        .then_some(())
    });
    rig.wait_all_served_by("a", 10);
}

#[test]
fn a_template_without_slots_reloads_for_every_server_change() {
    let (a, b) = (TestServer::start("a"), TestServer::start("b"));
    let port = free_port();
    let dir = TempDir::new("runtime-noslots-template");
    let source = dir.0.join("servers.cfg.tera");
    // The default template with the servers rendered from `be.servers`, not `be.slots`.
    let default = std::fs::read_to_string(DEFAULT_TEMPLATE).unwrap();
    let start = default
        .find("{%- for s in be.slots %}")
        .expect("the slot loop");
    let end = start + default[start..].find("{%- endfor %}").unwrap() + "{%- endfor %}".len();
    let custom = format!(
        "{}{}{}",
        &default[..start],
        "{%- for s in be.servers %}\n    server {{ s.name }} {{ s.address }}\n{%- endfor %}",
        &default[end..]
    );
    std::fs::write(&source, custom).unwrap();
    let rig = Rig::start_custom_runtime(
        "runtime-noslots",
        port,
        web(port, &[&a], &[]),
        settings(),
        source,
        Duration::from_millis(100),
    );
    rig.wait_all_served_by("a", 5);
    wait_confirmed(&rig, "the first config to be confirmed");
    let before = rig.status();
    rig.send(web(port, &[&a, &b], &[]));
    rig.wait_all_served_by_both("a", "b");
    wait_for("the reload to be counted", WAIT, || {
        let s = rig.status();
        (s.ok && s.reloads > before.reloads).then_some(())
    });
    let s = rig.status();
    assert_eq!(s.runtime_updates, before.runtime_updates, "{s:?}");
    assert!(s.reload_reasons.get("structure") > before.reload_reasons.get("structure"));
}
