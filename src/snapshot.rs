//! The local snapshot: the records a node owns, kept on disk so that a restarting node (or a
//! whole cluster restarting at once) starts from what it had, not from nothing.
//!
//! The file is `{"saved_at_ms": N, "records": [[key, value], ...]}` (gossip records, and when the
//! node wrote them), written atomically (temp file in the same directory, fsync, rename, fsync of
//! the directory). A bare array of records (the format before `saved_at_ms`) is still read, with
//! the file's modification time as its age.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Snapshot I/O errors.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub const FILE_NAME: &str = "snapshot.json";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// When the node wrote it (ms since the epoch); `None` when unknown.
    pub saved_at_ms: Option<u64>,
    pub records: Vec<(String, String)>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OnDisk {
    Current(Snapshot),
    Legacy(Vec<(String, String)>),
}

/// Reads the snapshot in `dir`; a missing file is an empty snapshot.
pub fn load(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let path = dir.join(FILE_NAME);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Snapshot::default()),
        Err(e) => return Err(io(&path)(e)),
    };
    match serde_json::from_str(&text) {
        Ok(OnDisk::Current(s)) => Ok(s),
        Ok(OnDisk::Legacy(records)) => {
            let saved_at_ms = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64);
            Ok(Snapshot {
                saved_at_ms,
                records,
            })
        }
        Err(_) => {
            // Report what is wrong with it as the current format.
            let source = serde_json::from_str::<Snapshot>(&text).expect_err("did not parse");
            Err(SnapshotError::Corrupt { path, source })
        }
    }
}

/// Replaces the snapshot in `dir` atomically.
pub fn save(dir: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let bytes = serde_json::to_vec(snapshot).expect("string pairs always serialize");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_absence() {
        let dir = std::env::temp_dir().join(format!("bender-snap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(load(&dir).unwrap(), Snapshot::default());
        let snap = Snapshot {
            saved_at_ms: Some(5),
            records: vec![("b:web".to_string(), "{\"x\":1}".to_string())],
        };
        save(&dir, &snap).unwrap();
        assert_eq!(load(&dir).unwrap(), snap);
        // The format before `saved_at_ms`: its age is the file's.
        fs::write(dir.join(FILE_NAME), r#"[["b:web","{}"]]"#).unwrap();
        let legacy = load(&dir).unwrap();
        assert_eq!(legacy.records.len(), 1);
        assert!(legacy.saved_at_ms.is_some());
        fs::write(dir.join(FILE_NAME), "garbage").unwrap();
        assert!(matches!(load(&dir), Err(SnapshotError::Corrupt { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
