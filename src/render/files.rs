//! Putting a rendered config in place safely: a temp file next to the target, fsync, the check
//! command, rename over the target, fsync of the directory. A crash at any point leaves either
//! the old or the new file, never a partial one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::CHECK_PLACEHOLDER;
use super::error::RenderError;

/// At most this many `[ALERT]` lines of a failed check are kept in the error.
const MAX_ALERT_LINES: usize = 20;

/// Reads the current target, `None` if it does not exist yet.
pub(crate) fn read_current(path: &Path) -> Result<Option<Vec<u8>>, RenderError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RenderError::io("reading", path, e)),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A rendered config written and synced next to its target, not yet in place. Dropping it
/// without [`Staged::commit`] removes the temp file.
#[derive(Debug)]
pub(crate) struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    /// Writes `bytes` to a temp file in the target's directory (same filesystem, so the rename
    /// is atomic) with the target's permissions, and syncs it.
    pub(crate) fn write(target: &Path, bytes: &[u8]) -> Result<Staged, RenderError> {
        let file_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".to_string());
        // A dot file with our PID: never picked up as the real config, never shared with
        // another bender process writing the same directory.
        let tmp =
            parent_dir(target).join(format!(".{file_name}.bender-{}.tmp", std::process::id()));
        let mode = fs::metadata(target)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        let staged = Staged {
            tmp,
            target: target.to_path_buf(),
            committed: false,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&staged.tmp)
            .map_err(|e| RenderError::io("creating", &staged.tmp, e))?;
        // `mode` only applies when the file is created: a leftover temp file keeps its own.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| RenderError::io("setting permissions of", &staged.tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| RenderError::io("writing", &staged.tmp, e))?;
        f.sync_all()
            .map_err(|e| RenderError::io("syncing", &staged.tmp, e))?;
        Ok(staged)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the temp file over the target and syncs the directory so the rename is durable.
    pub(crate) fn commit(mut self) -> Result<(), RenderError> {
        fs::rename(&self.tmp, &self.target)
            .map_err(|e| RenderError::io("renaming over", &self.target, e))?;
        self.committed = true;
        let dir = parent_dir(&self.target);
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| RenderError::io("syncing directory", dir, e))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Where the last config HAProxy was seen to run is kept, beside the target: what a restarted
/// node puts back if HAProxy refuses the file it finds (a crash between rename and reload).
pub(crate) fn last_good_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".to_string());
    parent_dir(target).join(format!(".{name}.bender-last-good"))
}

/// Removes temp files an earlier bender process left beside `target` (it was killed between
/// writing and renaming one): `.<name>.bender-*.tmp`. Returns how many.
pub(crate) fn remove_stray(target: &Path) -> usize {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return 0;
    };
    let prefix = format!(".{name}.bender-");
    let Ok(entries) = fs::read_dir(parent_dir(target)) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if file.starts_with(&prefix) && file.ends_with(".tmp") && fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Writes `bytes` over `target` atomically (used to put the last good config back).
pub(crate) fn write_atomic(target: &Path, bytes: &[u8]) -> Result<(), RenderError> {
    Staged::write(target, bytes)?.commit()
}

/// Runs the check command on the staged file. On failure the error holds HAProxy's `[ALERT]`
/// lines (or the tail of its output), with the temp file's name replaced by the target's.
pub(crate) async fn check(
    argv: &[String],
    staged: &Path,
    target: &Path,
    timeout: Duration,
) -> Result<(), RenderError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let staged_str = staged.to_string_lossy();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace(CHECK_PLACEHOLDER, &staged_str))
        .collect();
    let command = argv.join(" ");
    use super::process::{run, Failure};
    let output = match run(program, &args, timeout).await {
        Ok(output) => output,
        Err(Failure::Spawn(e)) | Err(Failure::Wait(e)) => {
            return Err(RenderError::CheckRun {
                command,
                reason: e.to_string(),
            })
        }
        Err(Failure::Timeout) => {
            return Err(RenderError::CheckRun {
                command,
                reason: format!(
                    "no answer within {} (killed, with everything it started)",
                    humantime::format_duration(timeout)
                ),
            })
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    )
    .replace(staged_str.as_ref(), &target.to_string_lossy());
    Err(RenderError::Check {
        destination: target.to_path_buf(),
        command,
        output: summarize_check_output(&text, output.status),
    })
}

/// The lines of a failed check worth showing: HAProxy's `[ALERT]`s, else the last lines.
fn summarize_check_output(text: &str, status: std::process::ExitStatus) -> String {
    let alerts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("[ALERT]"))
        .take(MAX_ALERT_LINES)
        .map(str::trim)
        .collect();
    let lines = if alerts.is_empty() {
        let all: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        all[all.len().saturating_sub(MAX_ALERT_LINES)..].to_vec()
    } else {
        alerts
    };
    if lines.is_empty() {
        format!("exited with {status}")
    } else {
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bender-files-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn staged_files_vanish_unless_committed() {
        let dir = temp_dir("stage");
        let target = dir.join("haproxy.cfg");
        fs::write(&target, "old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let staged = Staged::write(&target, b"new").unwrap();
        let tmp = staged.path().to_path_buf();
        assert!(tmp.exists());
        drop(staged);
        assert!(!tmp.exists());
        assert_eq!(fs::read(&target).unwrap(), b"old");

        Staged::write(&target, b"new").unwrap().commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "the target keeps its permissions");
        assert_eq!(read_current(&dir.join("absent")).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn failed_checks_report_haproxy_alerts_under_the_target_name() {
        let dir = temp_dir("check");
        let target = dir.join("haproxy.cfg");
        let staged = Staged::write(&target, b"global\n    nosuchkeyword 1\n").unwrap();
        let argv: Vec<String> = ["haproxy", "-c", "-f", "{}"].map(String::from).to_vec();
        let err = check(&argv, staged.path(), &target, Duration::from_secs(30))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RenderError::Check { .. }), "{text}");
        assert!(text.contains("[ALERT]"), "{text}");
        assert!(text.contains(&format!("{}:2", target.display())), "{text}");
        assert!(!text.contains(".bender-"), "{text}");

        // A config HAProxy accepts needs a listener: a stats socket is one.
        let valid = format!(
            "global\n    stats socket {}\n",
            dir.join("s.sock").display()
        );
        let ok = Staged::write(&target, valid.as_bytes()).unwrap();
        check(&argv, ok.path(), &target, Duration::from_secs(30))
            .await
            .unwrap();
        let missing: Vec<String> = vec!["/nonexistent/checker".into(), "{}".into()];
        let err = check(&missing, ok.path(), &target, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, RenderError::CheckRun { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
