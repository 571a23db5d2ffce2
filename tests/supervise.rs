//! A task of a real node that dies is not silent: its failure is logged, and the process exits
//! non-zero so that systemd restarts it (`Restart=on-failure`).

mod common;

use std::time::{Duration, Instant};

use common::{free_port, Proc};

#[test]
fn a_task_that_panics_is_logged_and_the_process_exits_non_zero() {
    let (api, gossip) = (free_port(), free_port());
    let mut node = Proc::spawn_with_env(
        "doomed",
        format!("http://127.0.0.1:{api}"),
        ([127, 0, 0, 1], gossip).into(),
        vec![
            "--api-listen".into(),
            format!("127.0.0.1:{api}"),
            "--gossip-listen".into(),
            format!("127.0.0.1:{gossip}"),
        ],
        // The view task panics at its first maintenance round.
        &[("FAILPOINTS", "node.maintenance=panic(injected)")],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the node kept running with a dead task"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1), "{status}");
    let logs: Vec<String> = node.logs.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("a task of the node failed")
            && l.contains("task view panicked: injected")),
        "{logs:#?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("node stopped")),
        "it drained first: {logs:#?}"
    );
}
