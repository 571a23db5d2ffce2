//! The `bender` command line: bad flags and bad config are one-line errors naming the key, with
//! exit code 2, and the node never starts.

use std::process::Command;

mod common;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bender"))
        .args(args)
        .output()
        .expect("run bender");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_flags_are_one_line_errors_with_exit_code_2() {
    for (args, needle) in [
        (&["agent", "--default-ttl", "soon"][..], "--default-ttl"),
        (&["agent", "--default-ttl", "2h"][..], "default_ttl"),
        (&["agent", "--default-ttl", "1ms"][..], "default_ttl"),
        (&["agent", "--api-listen", "nowhere"][..], "--api-listen"),
        (&["agent", "--node-id", "a b"][..], "node_id"),
        (&["agent", "--seed", "nope"][..], "seeds"),
        (&["agent", "--gossip-interval", "1h"][..], "gossip_interval"),
        (&["agent", "--no-such-flag"][..], "--no-such-flag"),
        (
            &["agent", "--log-format", "xml"][..],
            "--log-format <LOG_FORMAT>' [possible values: text, json]",
        ),
        // All of clap's message, on the one line: the missing arguments by name, the tip.
        (&["render"][..], "not provided: --config <CONFIG>"),
        (
            &["agent", "--defualt-ttl", "1s"][..],
            "tip: a similar argument exists: '--default-ttl'",
        ),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("(valid: )"), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_config_files_name_the_key() {
    let dir = std::env::temp_dir().join(format!("bender-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, needle) in [
        ("default_ttl = \"x\"\n", "default_ttl"),
        ("nonsense = 1\n", "nonsense"),
        ("max_ttl = \"1s\"\ndefault_ttl = \"2s\"\n", "default_ttl"),
        ("tombstone_ttl = \"1m\"\n", "tombstone_ttl"),
        ("gossip_allow = [\"not-a-net\"]\n", "gossip_allow"),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = run(&["agent", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{text}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{text}: {stderr}");
        assert!(stderr.contains(needle), "{text}: {stderr}");
    }
    let (code, stderr) = run(&["agent", "--config", "/nonexistent/bender.toml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/bender.toml"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn version_and_help_succeed() {
    let (code, _) = run(&["--version"]);
    assert_eq!(code, 0);
    let (code, _) = run(&["agent", "--help"]);
    assert_eq!(code, 0);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (api, gossip) = (common::free_port(), common::free_port());
    let node = common::Proc::start(
        "json",
        api,
        ([127, 0, 0, 1], gossip).into(),
        [
            "--log-format".to_string(),
            "json".into(),
            "--api-listen".into(),
            format!("127.0.0.1:{api}"),
            "--gossip-listen".into(),
            format!("127.0.0.1:{gossip}"),
        ]
        .to_vec(),
    );
    let next = || -> serde_json::Value {
        let line = node
            .logs
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a log line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    // The node answered /health, so its start-up lines are out: every one is a JSON object.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &serde_json::Value| l["message"] == "API listening")
    {
        assert!(seen.len() < 20, "no \"API listening\" line among {seen:?}");
        seen.push(next());
    }
    let started = seen
        .iter()
        .find(|l| l["message"] == "node started")
        .unwrap_or_else(|| panic!("no \"node started\" line among {seen:?}"));
    assert_eq!(started["level"], "INFO", "{started}");
    assert!(started["timestamp"].is_string(), "{started}");
    assert_eq!(started["ready"], true, "{started}");
}

#[test]
fn output_to_a_reader_that_went_away_ends_quietly_on_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    // `bender completions bash | head -c1`, made deterministic: the reader is gone before
    // the first write.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_bender"))
        .args(["completions", "bash"])
        .stdout(writer)
        .output()
        .expect("run bender");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "no panic, no 'Broken pipe': {stderr}");
    assert_eq!(
        out.status.signal(),
        Some(nix::libc::SIGPIPE),
        "{:?}",
        out.status
    );
}
