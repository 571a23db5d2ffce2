//! The local snapshot: the records a node owns, kept on disk so that a restarting node (or a
//! whole cluster restarting at once) starts from what it had, not from nothing.
//!
//! The file is a JSON array of `[key, value]` gossip records, written atomically (temp file in
//! the same directory, fsync, rename, fsync of the directory).

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

/// Reads the snapshot in `dir`; a missing file is an empty snapshot.
pub fn load(dir: &Path) -> Result<Vec<(String, String)>, SnapshotError> {
    let path = dir.join(FILE_NAME);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    serde_json::from_str(&text).map_err(|source| SnapshotError::Corrupt { path, source })
}

/// Replaces the snapshot in `dir` atomically.
pub fn save(dir: &Path, records: &[(String, String)]) -> Result<(), SnapshotError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let bytes = serde_json::to_vec(records).expect("string pairs always serialize");
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
        assert!(load(&dir).unwrap().is_empty());
        let recs = vec![("b:web".to_string(), "{\"x\":1}".to_string())];
        save(&dir, &recs).unwrap();
        assert_eq!(load(&dir).unwrap(), recs);
        fs::write(dir.join(FILE_NAME), "garbage").unwrap();
        assert!(matches!(load(&dir), Err(SnapshotError::Corrupt { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
