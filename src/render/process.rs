//! Running a check or reload command: in a process group of its own, bounded in time, and with
//! the whole group killed when it ends or times out, so that nothing it started (a `sleep`
//! behind a shell, a hung helper holding its pipes) outlives it.

use std::process::{Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Why a command did not give an answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// It could not be started.
    Spawn(std::io::Error),
    /// Waiting for it failed.
    Wait(std::io::Error),
    /// No answer within the timeout (the group was killed).
    Timeout,
}

/// Kills the process group on drop (the command's children included).
struct Group(Option<i32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH: nothing left in the group.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Runs `program args` with no stdin, collecting stdout and stderr, for at most `timeout`.
pub(crate) async fn run(
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Result<Output, Failure> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(Failure::Spawn)?;
    let _group = Group(child.id().and_then(|id| i32::try_from(id).ok()));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(Failure::Wait(e)),
        Err(_) => Err(Failure::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(marker: &str) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_with_everything_it_started() {
        let marker = format!("{}.{}", 700 + std::process::id() % 100, std::process::id());
        let script = format!("sleep {marker} & sleep {marker}");
        let r = run("sh", &["-c".into(), script], Duration::from_millis(300)).await;
        assert!(matches!(r, Err(Failure::Timeout)), "{r:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(&marker) {
            assert!(
                std::time::Instant::now() < deadline,
                "a child outlived the command"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = run(
            "sh",
            &["-c".into(), "echo ok".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout, b"ok\n");
    }
}
