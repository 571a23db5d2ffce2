//! The bender 0.2.1 client library (the npm package `bender-api`, unchanged) against real
//! nodes: an open one, and one that requires credentials but has `[compat]` on. `.ci/run`
//! installs it with `npm install --prefix tests/compat`; Node.js is on the machine.

mod common;

use std::process::Command;

use common::auth::Tokens;
use common::{Http, TestCluster, TEST_CONFIG};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");

/// Runs one of the scripts in tests/compat against `c`'s first node.
fn run_script(script: &str, c: &TestCluster) {
    let port = c.node(0).api.rsplit(':').next().unwrap().to_string();
    let out = Command::new("node")
        .current_dir(DIR)
        .args([script, "127.0.0.1", &port])
        .output()
        .expect("run node (Node.js is needed for this test)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With credentials required, `[compat]` lets the old client register its own address from the
/// listed networks and nothing else.
#[test]
fn the_0_2_1_client_registers_in_compatibility_mode_and_is_refused_the_rest() {
    let dir = common::haproxy::TempDir::new("compat");
    let tokens = Tokens::write(&dir.0);
    let c = TestCluster::start_with(
        1,
        &format!(
            "{TEST_CONFIG}\n{}\n[compat]\nunauthenticated_register_from = [\"127.0.0.0/8\"]\n",
            tokens.config()
        ),
    );
    run_script("compat-mode.js", &c);
    let regs = Http::with_token(&tokens.read).get(&c.url(0, "/registrations"));
    let ids: Vec<&str> = regs
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web/1.0.0/127.0.0.1/8080"]);
}

#[test]
fn the_0_2_1_client_library_works_unchanged() {
    assert!(
        std::path::Path::new(DIR)
            .join("node_modules/bender-api")
            .exists(),
        "run `npm install --prefix tests/compat` first (.ci/run does)"
    );
    let c = TestCluster::start(1);
    run_script("client.js", &c);
}
