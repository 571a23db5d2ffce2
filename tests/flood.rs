//! A flood of registrations against a real node driving a real HAProxy: past `[limits]` new
//! registrations get 429 with `Retry-After`, registrations it holds keep renewing, requests past
//! the in-flight cap get 429 too, and another app's new server still reaches HAProxy.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::haproxy::{served, write_node_files, Haproxy, TempDir, TestServer};
use common::{free_port, wait_until, Http, Proc};

#[test]
fn a_flood_past_the_limits_gets_429s_while_renewals_and_another_apps_server_get_through() {
    let dir = TempDir::new("flood");
    let config = write_node_files(
        &dir.0,
        "[limits]\nmax_registrations = 900\nmax_registrations_per_app = 600\n",
    );
    let _haproxy = Haproxy::start(&dir.0, &dir.0.join("haproxy.cfg"));
    let node = Proc::local("flood", &config, &[]);
    let http = Http::new();
    let (fe_flood, fe_web) = (free_port(), free_port());
    for (name, port) in [("flood", fe_flood), ("web", fe_web)] {
        let r = http.post_json(
            &node.url("/backends"),
            &format!(r#"{{"name":"{name}","app":"{name}","version":"1"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        let r = http.post_json(
            &node.url("/frontends"),
            &format!(r#"{{"name":"{name}","backend":"{name}","bind":"127.0.0.1:{port}"}}"#),
        );
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let reg = |app: &str, port: u16| {
        http.post_json(
            &node.url("/v1/registrations"),
            &format!(
                r#"{{"app":"{app}","version":"1","host":"127.0.0.1","port":{port},"ttl":"60s"}}"#
            ),
        )
    };
    // One real server of the flooded app, registered before the flood.
    let first = TestServer::start("first");
    assert_eq!(reg("flood", first.port).status, 200);

    // The flood: 1,500 new registrations of one app from four clients at once.
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let url = node.url("/v1/registrations");
            let (accepted, refused) = (accepted.clone(), refused.clone());
            std::thread::spawn(move || {
                let http = Http::new();
                for i in 0..375u16 {
                    let body = format!(
                        r#"{{"app":"flood","version":"1","host":"127.0.0.1","port":{},"ttl":"60s"}}"#,
                        20_000 + t * 1000 + i
                    );
                    let r = http.post_json(&url, &body);
                    match r.status {
                        200 => accepted.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            assert_eq!(r.body["code"], "TOO_MANY_REGISTRATIONS", "{}", r.text);
                            assert!(r.text.contains("limits.max_registrations_per_app"), "{}", r.text);
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        s => panic!("unexpected {s}: {}", r.text),
                    };
                }
            })
        })
        .collect();
    // Meanwhile: the server registered before keeps renewing, and another app's new server
    // registers and reaches HAProxy.
    let web = TestServer::start("web");
    assert_eq!(reg("web", web.port).status, 200);
    for _ in 0..20 {
        assert_eq!(
            reg("flood", first.port).status,
            200,
            "a renewal is never refused"
        );
    }
    wait_until(
        Duration::from_secs(30),
        "the other app's server is served",
        || served(fe_web).as_deref() == Some("web"),
    );
    for t in threads {
        t.join().unwrap();
    }
    // Per app: 600 held (the first server and 599 of the flood); the rest refused.
    assert_eq!(accepted.load(Ordering::Relaxed), 599);
    assert_eq!(refused.load(Ordering::Relaxed), 1500 - 599);
    let raw = common::raw_http(
        &node.api,
        "POST /registrations/flood/1/127.0.0.1/9999 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("retry-after: 5"), "{raw}");
    // The total: 900, of which 600 are flood's; 299 more of other apps, then no more.
    for i in 0..299u16 {
        assert_eq!(reg("other", 30_000 + i).status, 200);
    }
    let r = reg("other", 31_000);
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.text.contains("limits.max_registrations)"), "{}", r.text);
}
