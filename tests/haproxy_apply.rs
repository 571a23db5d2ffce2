//! The render/apply pipeline against a real HAProxy 2.6 in master-worker mode.
//!
//! Each test starts its own `haproxy -W -S <master.sock>` (not daemonized: the test owns the
//! process and stops it on drop) in a temp dir, with tiny HTTP servers on loopback answering
//! with their own name, feeds `NodeView`s into `bender::render::spawn` and checks what real HTTP
//! requests through HAProxy get back. Conditions are awaited with deadlines, never with sleeps.
//!
//! Run with `cargo test --test haproxy_apply` (needs `/usr/sbin/haproxy`, e.g. Debian's 2.6).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bender::render::ApplyConfig;

use common::free_port;
use common::haproxy::*;
use common::rig::*;

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn traffic_follows_the_view_and_blue_green_switches() {
    let (a, b, c) = (
        TestServer::start("a-v1"),
        TestServer::start("b-v1"),
        TestServer::start("c-v2"),
    );
    let port = free_port();
    let rig = Rig::start(
        "follow",
        port,
        view(port, "v1", &[(&a, "v1"), (&b, "v1")]),
        fast(),
        None,
    );

    // Both servers are reached.
    let mut seen = std::collections::BTreeSet::new();
    wait_for("both servers to answer", WAIT, || {
        if let Some(body) = served(port) {
            seen.insert(body);
        }
        (seen.len() == 2).then_some(())
    });
    assert_eq!(seen, [a.name.clone(), b.name.clone()].into_iter().collect());
    assert_eq!(
        rig.status().reloads,
        0,
        "the first view matched the file: no reload"
    );

    // b goes away: everything goes to a.
    rig.apply(view(port, "v1", &[(&a, "v1")]));
    rig.wait_all_served_by(&a.name, 20);

    // v2 registers, then the backend is pointed at v2 (blue/green): v2 serves.
    rig.apply(view(port, "v1", &[(&a, "v1"), (&c, "v2")]));
    rig.assert_serves(&a.name);
    rig.apply(view(port, "v2", &[(&a, "v1"), (&c, "v2")]));
    rig.wait_all_served_by(&c.name, 20);
    // And back (rollback).
    rig.apply(view(port, "v1", &[(&a, "v1"), (&c, "v2")]));
    rig.wait_all_served_by(&a.name, 20);

    let s = rig.status();
    assert_eq!((s.failures, s.error.clone()), (0, None), "{s:?}");
    // The server state was saved before each reload, for load-server-state-from-file (only
    // the slots the new config keeps at the same address: none here, as slot1 changed hands).
    let state = std::fs::read_to_string(rig.dir.0.join("server-state")).unwrap();
    assert!(state.starts_with("1\n# be_id"), "{state}");
    // v2 registering changed nothing HAProxy serves (no backend used it yet): no reload then.
    assert_eq!(s.reloads, 3, "{s:?}");
    let _ = &rig.haproxy;
}

#[test]
fn a_broken_template_keeps_the_last_good_config() {
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let port = free_port();
    let tdir = TempDir::new("tpl");
    let source = tdir.0.join("haproxy.cfg.tera");
    let good = std::fs::read_to_string(DEFAULT_TEMPLATE).unwrap();
    std::fs::write(&source, &good).unwrap();
    let rig = Rig::start(
        "broken-tpl",
        port,
        view(port, "v1", &[(&a, "v1")]),
        fast(),
        Some(source.clone()),
    );
    wait_for("the template dir to be watched", WAIT, || {
        rig.status().watching.then_some(())
    });
    let before = rig.on_disk();

    // Save a broken version the way editors do: write a new file, rename it over.
    let broken = good.replacen(
        "{% for fe in frontends %}",
        "{% for fe in frontends %}{{ fe.name }",
        1,
    );
    let tmp = tdir.0.join(".haproxy.cfg.tera.swp");
    std::fs::write(&tmp, &broken).unwrap();
    std::fs::rename(&tmp, &source).unwrap();
    let err = wait_for("the template error in status", WAIT, || {
        rig.status().template_error
    });
    assert!(err.contains(&format!("{}:", source.display())), "{err}");
    let line = broken
        .lines()
        .position(|l| l.contains("{{ fe.name }"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(":{line}:")),
        "line {line} expected in {err}"
    );
    assert!(!rig.status().ok);
    assert_eq!(rig.on_disk(), before);
    rig.assert_serves("a");

    // The view still flows, through the last template that loaded.
    rig.send(view(port, "v1", &[(&a, "v1"), (&b, "v1")]));
    wait_for("b to be served", WAIT, || {
        (served(port).as_deref() == Some("b")).then_some(())
    });
    assert!(
        rig.status().template_error.is_some(),
        "still reported until fixed"
    );

    // Fixing the file clears the error.
    std::fs::write(&tmp, &good).unwrap();
    std::fs::rename(&tmp, &source).unwrap();
    wait_for("the template error to clear", WAIT, || {
        rig.status().ok.then_some(())
    });
}

#[test]
fn a_config_failing_the_check_for_no_entity_is_never_loaded() {
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let port = free_port();
    // A template that breaks its global section once a second server is live: HAProxy's alert
    // points at no entity, so nothing can be left out to save the rest.
    let tdir = TempDir::new("tpl-global");
    let source = tdir.0.join("haproxy.cfg.tera");
    let text = std::fs::read_to_string(DEFAULT_TEMPLATE).unwrap().replacen(
        "global\n    master-worker",
        "global\n    master-worker\n{%- if registrations | length > 1 %}\n    no-such-directive 1\n{%- endif %}",
        1,
    );
    std::fs::write(&source, text).unwrap();
    let rig = Rig::start(
        "check",
        port,
        view(port, "v1", &[(&a, "v1")]),
        fast(),
        Some(source),
    );
    let before = rig.on_disk();
    let reloads = master_reloads(&rig.haproxy.master_socket).unwrap();

    rig.send(view(port, "v1", &[(&a, "v1"), (&b, "v1")]));
    let err = wait_for("the check failure in status", WAIT, || rig.status().error);
    assert!(
        err.contains("[ALERT]") && err.contains("no-such-directive"),
        "{err}"
    );
    assert!(
        err.contains(&rig.template.destination.display().to_string()),
        "{err}"
    );
    assert_eq!(
        rig.on_disk(),
        before,
        "a rejected config never reaches the target"
    );
    assert_eq!(
        master_reloads(&rig.haproxy.master_socket),
        Some(reloads),
        "no reload"
    );
    rig.assert_serves("a");
    let s = rig.status();
    assert_eq!((s.reloads, s.failures, s.ok), (0, 1, false), "{s:?}");
    assert!(s.excluded.is_empty(), "{s:?}");
}

#[test]
fn an_entity_haproxy_refuses_is_left_out_and_the_rest_is_applied() {
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let port = free_port();
    let rig = Rig::start("blame", port, view(port, "v1", &[(&a, "v1")]), fast(), None);
    // A peer's backend that passes bender's allow-list (every word of it is allowed) but not
    // `haproxy -c` (the ACL was never defined), and at the same time a new server of web.
    let mut nv = view(port, "v1", &[(&a, "v1"), (&b, "v1")]);
    let mut other = backend("other", "v1");
    other.app = "other".into();
    other.extra = vec!["http-request deny if no_such_acl".into()];
    nv.view.backends.insert("other".into(), other.clone());
    rig.send(nv.clone());
    rig.wait_all_served_by_both(&a.name, &b.name);
    // The new worker serves before bender has verified it and updated its status.
    let s = wait_for("the apply to be verified", WAIT, || {
        let s = rig.status();
        (s.ok && s.error.is_none() && !s.excluded.is_empty()).then_some(s)
    });
    assert_eq!(s.excluded.len(), 1, "{s:?}");
    assert_eq!(
        (s.excluded[0].kind, s.excluded[0].name.as_str()),
        ("backend", "other")
    );
    assert!(s.excluded[0].reason.contains("no_such_acl"), "{s:?}");
    assert!(!rig.on_disk().contains("backend other"));

    // Once it is fixed, it is rendered again.
    other.extra = vec![
        "acl no_such_acl path /x".into(),
        "http-request deny if no_such_acl".into(),
    ];
    nv.view.backends.insert("other".into(), other);
    rig.send(nv);
    wait_for("the fixed backend to be rendered", WAIT, || {
        rig.on_disk().contains("backend other").then_some(())
    });
    wait_for("nothing left out", WAIT, || {
        let s = rig.status();
        (s.ok && s.excluded.is_empty()).then_some(())
    });
}

#[test]
fn a_reload_failing_after_the_check_restores_the_last_good_config() {
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let port = free_port();
    let rig = Rig::start(
        "reload-fail",
        port,
        view(port, "v1", &[(&a, "v1")]),
        fast(),
        None,
    );
    let before = rig.on_disk();

    // 192.0.2.1 (TEST-NET-1) is not on this host: `haproxy -c` accepts the bind, the reload
    // fails. No traffic is ever sent there.
    rig.send(with_unbindable_frontend(view(
        port,
        "v1",
        &[(&a, "v1"), (&b, "v1")],
    )));
    let err = wait_for("the reload failure in status", WAIT, || rig.status().error);
    assert!(err.contains("reload"), "{err}");
    assert!(err.contains("restored the last good config"), "{err}");
    assert!(err.contains("and reloaded it"), "{err}");
    assert_eq!(
        rig.on_disk(),
        before,
        "the last good config is back on disk"
    );
    let s = rig.status();
    assert_eq!((s.reloads, s.failures, s.ok), (2, 1, false), "{s:?}");
    rig.assert_serves("a");

    // HAProxy took the restored config: a new worker serves it, and nothing is failing.
    let proc_text = cli(&rig.haproxy.master_socket, "show proc").unwrap();
    assert!(proc_text.contains("[failed: 0]"), "{proc_text}");

    // Fixing the view applies normally.
    rig.apply(view(port, "v1", &[(&b, "v1")]));
    rig.wait_all_served_by("b", 10);
}

#[test]
fn a_config_refused_for_a_port_in_use_is_applied_once_the_port_is_free() {
    let a = TestServer::start("a");
    let port = free_port();
    let settings = ApplyConfig {
        retry_failed_after: Duration::from_secs(1),
        ..fast()
    };
    let rig = Rig::start(
        "port-in-use",
        port,
        view(port, "v1", &[(&a, "v1")]),
        settings,
        None,
    );
    // Another program holds the port of a new frontend: `haproxy -c` passes, HAProxy refuses
    // the reload.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second_port = taken.local_addr().unwrap().port();
    let mut nv = view(port, "v1", &[(&a, "v1")]);
    let mut second = frontend(second_port, "web");
    second.name = "second".into();
    nv.view.frontends.insert("second".into(), second);
    rig.send(nv);
    let err = wait_for("the refused reload in status", WAIT, || rig.status().error);
    assert!(err.contains("HAProxy rejected the new config"), "{err}");
    rig.assert_serves("a");

    // The port is freed and nothing else changes: the same config is tried again and applied.
    drop(taken);
    let s = wait_for("the retried config to be applied", WAIT, || {
        Some(rig.status()).filter(|s| s.ok)
    });
    assert!(s.error.is_none() && s.failures >= 1, "{s:?}");
    assert_eq!(served(second_port).as_deref(), Some("a"));
    rig.assert_serves("a");
}

#[test]
fn a_reload_the_master_never_answered_is_retried_without_a_change() {
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let port = free_port();
    let settings = ApplyConfig {
        reload_timeout: Duration::from_millis(500),
        ..fast()
    };
    let rig = Rig::start(
        "unanswered",
        port,
        view(port, "v1", &[(&a, "v1")]),
        settings,
        None,
    );
    // The master CLI is gone for a while (HAProxy restarting, say): no reload can be sent.
    let socket = rig.haproxy.master_socket.clone();
    let aside = socket.with_extension("aside");
    std::fs::rename(&socket, &aside).unwrap();
    rig.send(view(port, "v1", &[(&b, "v1")]));
    let err = wait_for("the unreachable master in status", WAIT, || {
        rig.status().error
    });
    assert!(err.contains("master CLI is unreachable"), "{err}");
    rig.assert_serves("a");

    // It is back; the view does not change again. The apply is retried on its own.
    std::fs::rename(&aside, &socket).unwrap();
    let s = wait_for("the retried config to be applied", WAIT, || {
        Some(rig.status()).filter(|s| s.ok)
    });
    assert!(s.error.is_none() && s.failures >= 1, "{s:?}");
    rig.wait_all_served_by("b", 10);
}

#[test]
fn a_burst_of_200_changes_reloads_at_most_twice_plus_once_per_further_second_of_burst() {
    let a = TestServer::start("a");
    let port = free_port();
    // The default debounce (200 ms quiet, 1 s maximum wait).
    let rig = Rig::start(
        "burst",
        port,
        view(port, "v1", &[(&a, "v1")]),
        ApplyConfig::default(),
        None,
    );
    let master_before = master_reloads(&rig.haproxy.master_socket).unwrap();
    let status_before = rig.status().reloads;

    // The 200 views are built before the burst, so the burst is only sends.
    let views: Vec<_> = (0..200u16)
        .map(|k| {
            let mut nv = view(port, "v1", &[(&a, "v1")]);
            // Each change registers one more server of a backend no frontend routes to: the
            // config changes every time, the traffic never.
            let mut filler = backend("filler", "v1");
            filler.app = "filler".into();
            nv.view.backends.insert("filler".into(), filler);
            for j in 0..=k {
                register(&mut nv, "filler", "v1", 40_000 + j, 1_000);
            }
            nv
        })
        .collect();
    let last = views.last().unwrap().clone();
    let started = Instant::now();
    for nv in views {
        rig.send(nv);
        thread::sleep(Duration::from_millis(3)); // pacing the burst, not synchronisation
    }
    let burst = started.elapsed();
    rig.apply(last);
    let master = master_reloads(&rig.haproxy.master_socket).unwrap() - master_before;
    let ours = rig.status().reloads - status_before;
    // The debounce applies once the changes pause (200 ms) or the oldest is 1 s old: a burst
    // within a second reloads at most twice. On a machine too loaded to send 200 changes
    // within a second, each further second of burst may add one reload, no more.
    let bound = 2 + burst.as_secs();
    assert!(
        (1..=bound).contains(&master),
        "HAProxy reloaded {master} times for a burst of {burst:?}"
    );
    assert_eq!(master, ours, "every reload bender sent is counted");
    rig.assert_serves("a");
}

#[test]
fn no_request_fails_across_20_reloads() {
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let port = free_port();
    let rig = Rig::start(
        "no-fail",
        port,
        view(port, "v1", &[(&a, "v1"), (&b, "v1")]),
        fast(),
        None,
    );
    wait_for("HAProxy to serve", WAIT, || served(port));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for keep_alive in [false, false, true, true] {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(thread::spawn(move || {
            let mut ka = KeepAlive {
                port,
                conn: None,
                used: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                let result = if keep_alive { ka.get() } else { get(port) };
                match result {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {} (keep-alive {keep_alive})", r.status)),
                    Err(e) => failed
                        .lock()
                        .unwrap()
                        .push(format!("{e} (keep-alive {keep_alive})")),
                }
                // A bounded load: about 200 requests a second per client.
                thread::sleep(Duration::from_millis(5));
            }
        }));
    }

    let reloads_before = rig.status().reloads;
    for i in 0..20 {
        // Alternate the server set so that every step changes the config.
        let servers: Vec<(&TestServer, &str)> = if i % 2 == 0 {
            vec![(&a, "v1")]
        } else {
            vec![(&a, "v1"), (&b, "v1")]
        };
        rig.apply(view(port, "v1", &servers));
    }
    // Let the clients run on the last worker for a moment, then stop them.
    let served_after = ok.load(Ordering::Relaxed) + 100;
    wait_for("more requests on the final config", WAIT, || {
        (ok.load(Ordering::Relaxed) >= served_after).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let reloads = rig.status().reloads - reloads_before;
    let failed = failed.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "{ok} requests succeeded, {} failed, across {reloads} reloads",
        failed.len()
    );
    assert_eq!(reloads, 20);
    assert!(ok > 500, "too little traffic to mean anything: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(10)]
    );
}

#[test]
fn a_template_that_breaks_one_backend_still_lets_another_backends_server_through() {
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let port = free_port();
    // A template (an operator's edit, a peer's other version) that renders an unknown
    // directive into one backend only.
    let tdir = TempDir::new("tpl-one");
    let source = tdir.0.join("haproxy.cfg.tera");
    let text = std::fs::read_to_string(DEFAULT_TEMPLATE).unwrap().replacen(
        "    balance {{ be.balance }}",
        "    balance {{ be.balance }}\n{%- if be.name == \"other\" %}\n    no-such-directive 1\n{%- endif %}",
        1,
    );
    assert!(text.contains("no-such-directive"));
    std::fs::write(&source, text).unwrap();
    let rig = Rig::start(
        "tpl-one",
        port,
        view(port, "v1", &[(&a, "v1")]),
        fast(),
        Some(source),
    );
    let mut nv = view(port, "v1", &[(&a, "v1"), (&b, "v1")]);
    let mut other = backend("other", "v1");
    other.app = "other".into();
    nv.view.backends.insert("other".into(), other);
    rig.send(nv);
    rig.wait_all_served_by_both(&a.name, &b.name);
    // The new worker serves before bender has verified it and updated its status.
    let s = wait_for("the apply to be verified", WAIT, || {
        let s = rig.status();
        (s.ok && !s.excluded.is_empty()).then_some(s)
    });
    assert_eq!(
        s.excluded
            .iter()
            .map(|e| (e.kind, e.name.as_str()))
            .collect::<Vec<_>>(),
        vec![("backend", "other")],
        "{s:?}"
    );
    assert!(s.excluded[0].reason.contains("no-such-directive"), "{s:?}");
}

#[test]
fn a_removed_template_keeps_the_last_version_serving_until_it_is_back() {
    let a = TestServer::start("a");
    let b = TestServer::start("b");
    let port = free_port();
    let tdir = TempDir::new("tpl-gone");
    let source = tdir.0.join("haproxy.cfg.tera");
    let good = std::fs::read_to_string(DEFAULT_TEMPLATE).unwrap();
    std::fs::write(&source, &good).unwrap();
    let rig = Rig::start(
        "tpl-gone",
        port,
        view(port, "v1", &[(&a, "v1")]),
        fast(),
        Some(source.clone()),
    );
    wait_for("the template dir to be watched", WAIT, || {
        rig.status().watching.then_some(())
    });
    std::fs::remove_file(&source).unwrap();
    let err = wait_for("the missing template in status", WAIT, || {
        rig.status().template_error
    });
    assert!(err.contains(&source.display().to_string()), "{err}");
    // Changes still reach HAProxy through the last version that loaded.
    rig.send(view(port, "v1", &[(&a, "v1"), (&b, "v1")]));
    rig.wait_all_served_by_both(&a.name, &b.name);
    std::fs::write(&source, &good).unwrap();
    wait_for("the template loads again", WAIT, || {
        rig.status().ok.then_some(())
    });
}

#[test]
fn a_verified_reload_shows_haproxy_running_the_new_config_before_any_probe() {
    let (a, b) = (TestServer::start("a"), TestServer::start("b"));
    let port = free_port();
    // No probe within the test: only the reload's own verification can say what HAProxy runs.
    let rig = Rig::start(
        "verified-ok",
        port,
        view(port, "v1", &[(&a, "v1")]),
        ApplyConfig {
            probe_interval: Duration::from_secs(3600),
            ..fast()
        },
        None,
    );
    let first = wait_for("the first config healthy", WAIT, || {
        let s = rig.status();
        s.ok.then_some(s)
    });
    // A new server: a reload (this template has no runtime API).
    rig.send(view(port, "v1", &[(&a, "v1"), (&b, "v1")]));
    let s = wait_for("the reload verified and the template healthy", WAIT, || {
        let s = rig.status();
        (s.ok && s.reloads > first.reloads && s.config_hash != first.config_hash).then_some(s)
    });
    assert_eq!(s.running_config, s.config_hash, "{s:?}");
}
