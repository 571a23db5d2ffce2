//! The render worker with no HAProxy at all: debouncing bursts, render errors counted apart.

use super::*;

/// The worker, with no HAProxy at all: writes go to a temp dir, no check, no reload.
#[tokio::test]
async fn a_burst_of_changes_is_applied_at_most_twice_plus_once_per_further_second_and_renewals_not_at_all(
) {
    let dir = fresh_dir("burst");
    let dest = dir.join("haproxy.cfg");
    let mut t = default_template(test_vars(&dir));
    t.destination = dest.clone();
    t.check = Some(vec![]);
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(NodeView::default()));
    let (trigger, shutdown) = crate::shutdown::channel();
    let handle = spawn(
        ApplyConfig::default(),
        vec![t],
        "lb-1".into(),
        Snippets::AllowListed,
        rx,
        &crate::supervise::Failures::new(),
        shutdown,
    );

    // Not ready yet: the worker must wait for the burst below.
    let mut not_ready = fixture(1);
    not_ready.ready = false;
    tx.send(Arc::new(not_ready)).unwrap();
    let start = tokio::time::Instant::now();
    // No DNS names here: whether one resolves depends on the machine's network.
    let fixture = |k: u64| {
        let mut nv = fixture(k);
        nv.view.registrations = nv
            .view
            .registrations
            .into_iter()
            .filter(|(key, _)| key.host.parse::<std::net::IpAddr>().is_ok())
            .collect();
        nv
    };
    for k in 0..200u64 {
        let mut nv = fixture(k);
        let key = RegKey::new("web", "v1", "10.1.0.1", 1000 + k as u16).unwrap();
        nv.view
            .registrations
            .insert(key.clone(), lease("web", "v1", "10.1.0.1", key.port, k));
        tx.send(Arc::new(nv)).unwrap();
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    let burst = start.elapsed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // What is written is the render, stamped with its version.
    let expect = super::stamp::stamp(&render_default(
        &{
            let mut nv = fixture(199);
            let key = RegKey::new("web", "v1", "10.1.0.1", 1199).unwrap();
            nv.view
                .registrations
                .insert(key.clone(), lease("web", "v1", "10.1.0.1", 1199, 199));
            nv
        },
        test_vars(&dir),
    ))
    .0;
    loop {
        if std::fs::read_to_string(&dest).ok().as_deref() == Some(expect.as_str()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "final view never applied: {:?}",
            handle.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Quiet 200 ms / max 1 s: at most two applies for a burst within a second, and one more
    // per extra second when a loaded machine stretches the burst.
    let applies = handle.status()[0].applies;
    assert!(
        (1..=2 + burst.as_secs()).contains(&applies),
        "burst of {burst:?}: {:?}",
        handle.status()
    );

    // Renewals only: rendered again, never rewritten.
    let renders = handle.status()[0].renders;
    for k in 0..5u64 {
        let mut nv = fixture(10_000 + k);
        let key = RegKey::new("web", "v1", "10.1.0.1", 1199).unwrap();
        nv.view.registrations.insert(
            key.clone(),
            lease("web", "v1", "10.1.0.1", 1199, 10_000 + k),
        );
        tx.send(Arc::new(nv)).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.status()[0].renders == renders {
        assert!(
            tokio::time::Instant::now() < deadline,
            "renewals never rendered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = &handle.status()[0];
    assert_eq!(status.applies, applies, "{status:?}");
    assert!(status.ok, "{status:?}");

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(10), handle.stopped())
        .await
        .expect("the task stops after shutdown");
    assert!(handle.is_stopped());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Waits until the first template's status satisfies `f`, or panics naming `what`.
async fn wait_status(
    handle: &RenderHandle,
    what: &str,
    f: impl Fn(&TemplateStatus) -> bool,
) -> TemplateStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = handle.status().remove(0);
        if f(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A template that fails only at render time: counted as a render error (once per distinct
/// error), never as an apply, and the file keeps the last good render.
#[tokio::test]
async fn a_render_error_is_counted_apart_from_applies() {
    let dir = fresh_dir("render-error");
    let source = dir.join("t.tera");
    // Parses; fails to render as soon as a backend exists (no such var).
    std::fs::write(
        &source,
        "{% for b in backends %}{{ vars.no_such_var }}{% endfor %}backends\n",
    )
    .unwrap();
    let t = TemplateConfig {
        name: "t".into(),
        source,
        destination: dir.join("out.cfg"),
        check: Some(vec![]),
        reload: ReloadConfig::None,
        vars: BTreeMap::new(),
        server_state: None,
        slot_block: 10,
        runtime: None,
    };
    let ready = |nv: NodeView| Arc::new(NodeView { ready: true, ..nv });
    let (tx, rx) = tokio::sync::watch::channel(ready(NodeView::default()));
    let (trigger, shutdown) = crate::shutdown::channel();
    let settings = ApplyConfig {
        debounce_quiet: Duration::from_millis(10),
        debounce_max: Duration::from_millis(50),
        ..ApplyConfig::default()
    };
    let handle = spawn(
        settings,
        vec![t],
        "lb-1".into(),
        Snippets::AllowListed,
        rx,
        &crate::supervise::Failures::new(),
        shutdown,
    );
    let s = wait_status(&handle, "the first apply", |s| s.ok).await;
    assert_eq!((s.applies, s.render_errors), (1, 0), "{s:?}");

    tx.send(ready(fixture(1))).unwrap();
    let s = wait_status(&handle, "the render error", |s| s.error.is_some()).await;
    assert_eq!((s.applies, s.failures, s.render_errors), (1, 0, 1), "{s:?}");
    assert!(s.error.as_deref().unwrap().contains("no_such_var"), "{s:?}");
    // The same error again (a renewal): rendered, not counted twice.
    let renders = s.renders;
    tx.send(ready(fixture(2))).unwrap();
    let s = wait_status(&handle, "the next render", |s| s.renders > renders).await;
    assert_eq!((s.applies, s.failures, s.render_errors), (1, 0, 1), "{s:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("out.cfg")).unwrap(),
        "backends\n"
    );

    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(10), handle.stopped())
        .await
        .expect("the task stops after shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}
