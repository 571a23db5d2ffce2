//! The bender 0.2.1 client library (the npm package `bender-api`, unchanged) against a real
//! node. `.ci/run` installs it with `npm install --prefix tests/compat`; Node.js is on the machine.

mod common;

use std::process::Command;

use common::TestCluster;

#[test]
fn the_0_2_1_client_library_works_unchanged() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/bender-api")
            .exists(),
        "run `npm install --prefix tests/compat` first (.ci/run does)"
    );
    let c = TestCluster::start(1);
    let port = c.node(0).api.rsplit(':').next().unwrap().to_string();
    let out = Command::new("node")
        .current_dir(dir)
        .args(["client.js", "127.0.0.1", &port])
        .output()
        .expect("run node (Node.js is needed for this test)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
