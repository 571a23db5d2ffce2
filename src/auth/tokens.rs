//! API tokens: read from files the config names, kept only as SHA-256 digests, and compared in
//! constant time.
//!
//! A token file holds one or more tokens, one per line (blank lines and lines starting with `#`
//! are skipped), so a key rotates without a restart: add the new token, `systemctl reload
//! bender`, move the clients over, remove the old one, reload again.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use subtle::ConstantTimeEq;

/// Shortest token accepted: 16 characters (the packaged ones are 64 hex digits).
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 512;

pub(crate) type Digest = [u8; 32];

pub(crate) fn digest(token: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether a token is well-formed: printable ASCII without spaces, of a sensible length.
pub(crate) fn well_formed(token: &str) -> bool {
    (MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads the tokens of one file. Refuses a file other users may read or write, an empty one,
/// and malformed tokens, naming the file and the line.
pub(crate) fn read_file(path: &Path) -> Result<Vec<Digest>, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "token file {} is accessible to every user (mode {mode:04o}): make it 0640 (owner root, group bender) or 0600",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !well_formed(t) {
            return Err(format!(
                "token file {} line {}: a token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} printable characters without spaces (e.g. `openssl rand -hex 32`)",
                path.display(),
                n + 1
            ));
        }
        out.push(digest(t.as_bytes()));
    }
    if out.is_empty() {
        return Err(format!("token file {} holds no token", path.display()));
    }
    Ok(out)
}

/// The index of the entry whose digest equals `presented`'s, comparing against every entry so
/// that the time taken does not depend on which (if any) matched.
pub(crate) fn find(entries: &[(Digest, usize)], presented: &str) -> Option<usize> {
    let d = digest(presented.as_bytes());
    let mut found: Option<usize> = None;
    for (candidate, owner) in entries {
        if bool::from(candidate.ct_eq(&d)) {
            found = Some(*owner);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_private_and_hold_well_formed_tokens() {
        let dir = std::env::temp_dir().join(format!("bender-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("admin");
        std::fs::write(
            &f,
            "# rotated 2026-12-01\n0123456789abcdef0123\n\nfedcba9876543210fedc\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_file(&f).unwrap_err();
        assert!(err.contains("every user") && err.contains("0644"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let digests = read_file(&f).unwrap();
        assert_eq!(digests.len(), 2);
        let entries: Vec<(Digest, usize)> = digests.into_iter().map(|d| (d, 7)).collect();
        assert_eq!(find(&entries, "fedcba9876543210fedc"), Some(7));
        assert_eq!(find(&entries, "fedcba9876543210fedd"), None);
        assert_eq!(find(&entries, ""), None);

        std::fs::write(&f, "short\n").unwrap();
        let err = read_file(&f).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(read_file(&f).unwrap_err().contains("no token"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
