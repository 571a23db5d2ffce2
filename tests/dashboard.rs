//! The dashboard in a real browser: headless Chromium, driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`, which `.ci/run` installs), loads `/ui` from one node of a
//! three-node cluster (each node driving its own HAProxy, the API behind tokens), sees a
//! registration appear live, is refused a switch with a read token, switches with an admin
//! one, and sees every load balancer turn SYNCED. A screenshot is saved as a test artifact.

mod common;

use std::future::Future;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::auth::Tokens;
use common::fleet::start_fleet;
use common::haproxy::{TempDir, TestServer};
use common::{free_port, wait_until, Http};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium chromium-driver)");
        wait_until(WAIT, "chromedriver to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            // Root in CI: no sandbox; a laptop-sized window.
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Evaluates `script` in the page until `done` accepts its value, or panics naming `what`.
async fn wait_page(c: &Client, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = c.execute(script, vec![]).await.unwrap_or(Value::Null);
        if done(&v) {
            return v;
        }
        if Instant::now() > deadline {
            let shot = c.screenshot().await.unwrap_or_default();
            let path = artifact("dashboard-failure.png");
            let _ = std::fs::write(&path, shot);
            panic!(
                "timed out waiting for {what}; last value {v}; screenshot {}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Retries a browser action (the page re-renders, so an element found may go stale).
async fn act<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), fantoccini::error::CmdError>>,
{
    let deadline = Instant::now() + WAIT;
    while let Err(e) = f().await {
        assert!(Instant::now() < deadline, "{what}: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn artifact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

const FLEET: &str = "return [...document.querySelectorAll('#fleet tbody tr')].map(r => r.dataset.node + ' ' + r.querySelector('td.state').textContent)";
const PROBLEM: &str =
    "const p = document.getElementById('problem'); return p.hidden ? '' : p.textContent";

async fn use_token(c: &Client, token: &str) {
    act("entering the token", || async {
        let input = c.find(Locator::Id("token")).await?;
        input.clear().await?;
        input.send_keys(token).await?;
        c.find(Locator::Css("#auth button")).await?.click().await
    })
    .await;
}

async fn switch_to(c: &Client, backend: &str) {
    act("choosing the backend and opening the switch", || async {
        c.find(Locator::Css("select[data-frontend=www]"))
            .await?
            .select_by_value(backend)
            .await?;
        c.find(Locator::Css("button[data-switch=www]"))
            .await?
            .click()
            .await
    })
    .await;
    let text = wait_page(
        c,
        "the confirmation",
        "const d = document.getElementById('confirm'); return d.open ? document.getElementById('confirm-text').textContent : ''",
        |v| v.as_str().is_some_and(|s| !s.is_empty()),
    )
    .await;
    assert!(
        text.as_str().unwrap().contains("1 live server."),
        "the confirmation says how many live servers the target has: {text}"
    );
    act("confirming", || async {
        c.find(Locator::Id("confirm-ok")).await?.click().await
    })
    .await;
}

#[test]
fn the_dashboard_shows_registrations_live_switches_and_every_lb_turns_synced() {
    let token_dir = TempDir::new("dash-tokens");
    let tokens = Tokens::write(&token_dir.0);
    let lbs = start_fleet("dash", |_| tokens.config(), |_| None);
    let admin = Http::with_token(&tokens.admin);
    let (blue, blue2, green) = (
        TestServer::start("blue"),
        TestServer::start("blue2"),
        TestServer::start("green"),
    );
    let port = free_port();
    let register = |app: &str, s: &TestServer| {
        let r = admin.post_json(
            &lbs[1].node.url("/v1/registrations"),
            &format!(
                r#"{{"app":"{app}","version":"1","host":"127.0.0.1","port":{},"ttl":"120s"}}"#,
                s.port
            ),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
    };
    for name in ["blue", "green"] {
        let r = admin.post_json(
            &lbs[0].node.url("/backends"),
            &format!(r#"{{"name":"{name}","app":"{name}","version":"1"}}"#),
        );
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    register("blue", &blue);
    register("green", &green);
    let r = admin.post_json(
        &lbs[0].node.url("/frontends"),
        &format!(r#"{{"name":"www","backend":"blue","bind":"127.0.0.1:{port}"}}"#),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);

    let driver = Driver::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&lbs[0].node.url("/ui")).await.unwrap();
        // No token yet: the page says what it needs.
        wait_page(&c, "the page to ask for a token", PROBLEM, |v| {
            v.as_str().is_some_and(|s| s.contains("needs an API token"))
        })
        .await;
        use_token(&c, &tokens.read).await;
        let synced: Vec<Value> = (0..3).map(|i| json!(format!("lb{i} SYNCED"))).collect();
        wait_page(&c, "three synced load balancers", FLEET, |v| {
            v.as_array() == Some(&synced)
        })
        .await;
        // A registration appears while the page is open, with HAProxy's view of it.
        register("blue", &blue2);
        let server = format!("li[data-server='blue@1 127.0.0.1:{}']", blue2.port);
        wait_page(
            &c,
            "the new server, UP in HAProxy",
            &format!("const s = document.querySelector(\"{server}\"); return s ? s.textContent : ''"),
            |v| v.as_str().is_some_and(|s| s.contains("UP")),
        )
        .await;
        wait_page(
            &c,
            "its online event",
            "return document.getElementById('events').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|s| s.contains(&format!("online blue@1 127.0.0.1:{}", blue2.port)))
            },
        )
        .await;
        // The read token may look, not switch.
        switch_to(&c, "green").await;
        wait_page(&c, "the refusal", PROBLEM, |v| {
            v.as_str().is_some_and(|s| s.contains("needs an API token") && s.contains("admin"))
        })
        .await;
        use_token(&c, &tokens.admin).await;
        let before = c
            .execute("return document.getElementById('fleet-summary').dataset.view", vec![])
            .await
            .unwrap();
        switch_to(&c, "green").await;
        wait_page(
            &c,
            "www to serve green",
            "const b = document.querySelector('[data-frontend=www] .current-backend'); return b ? b.textContent : ''",
            |v| v == "green",
        )
        .await;
        // SYNCED on a view that has the switch (the fleet's view moved on).
        let fleet_after = format!(
            "const v = document.getElementById('fleet-summary').dataset.view; return v === {before} ? [] : ({})()",
            FLEET.replacen("return ", "() => ", 1)
        );
        wait_page(&c, "every load balancer synced on the switch", &fleet_after, |v| {
            v.as_array() == Some(&synced)
        })
        .await;
        let shot = c.screenshot().await.unwrap();
        std::fs::write(artifact("dashboard.png"), &shot).unwrap();
        if let Some(to) = std::env::var_os("BENDER_SCREENSHOT_TO") {
            std::fs::write(to, &shot).unwrap();
        }
        // A phone-sized window still shows the fleet and the traffic.
        c.set_window_size(390, 844).await.unwrap();
        wait_page(
            &c,
            "the page to fit a phone",
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            |v| v == &Value::Bool(true),
        )
        .await;
        c.close().await.unwrap();
    });
    // What the page showed is what the nodes hold.
    for lb in &lbs {
        assert!(lb.file().contains("default_backend green"), "{}", lb.file());
    }
}
