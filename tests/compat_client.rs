//! The bender 0.2.1 client library (the npm package `bender-api`, unchanged) against real
//! nodes: an open one, and one that requires credentials but has `[compat]` on. `.ci/run`
//! installs it with `npm install --prefix tests/compat`; Node.js is on the machine.

mod common;

use std::process::Command;

use common::auth::Tokens;
use common::{Http, TestCluster, TEST_CONFIG};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");

/// Runs one of the scripts in tests/compat against the node at `host:port`.
fn run_script(script: &str, host: &str, port: &str) {
    let out = Command::new("node")
        .current_dir(DIR)
        .args([script, host, port])
        .output()
        .expect("run node (Node.js is needed for this test)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a script against `c`'s first node.
fn run_script_on(script: &str, c: &TestCluster) {
    let port = c.node(0).api.rsplit(':').next().unwrap().to_string();
    run_script(script, "127.0.0.1", &port);
}

/// With credentials required, `[compat]` lets the old client register its own address from the
/// listed networks and nothing else. The client has an address of its own (not loopback, which
/// is nobody's): the test-host bridge's.
#[test]
fn the_0_2_1_client_registers_in_compatibility_mode_and_is_refused_the_rest() {
    let (_hosts, addrs) = common::netns::own_addresses(1);
    let own = &addrs[0];
    let dir = common::haproxy::TempDir::new("compat");
    let tokens = Tokens::write(&dir.0);
    let config = dir.0.join("bender.toml");
    std::fs::write(
        &config,
        format!(
            "{TEST_CONFIG}\n{}\n[compat]\nunauthenticated_register_from = [\"{own}/32\"]\n",
            tokens.config()
        ),
    )
    .unwrap();
    let (node, api) = common::Proc::on_every_address("compat", Some(&config));
    run_script("compat-mode.js", own, &api.to_string());
    let regs = Http::with_token(&tokens.read).get(&node.url("/registrations"));
    let ids: Vec<&str> = regs
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [format!("web/1.0.0/{own}/8080")]);
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
    run_script_on("client.js", &c);
}
