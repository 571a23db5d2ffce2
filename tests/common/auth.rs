//! Test credentials: token files with the permissions bender demands, and the config that names
//! them.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One token per scope, written to files in a directory.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub admin: String,
    pub register: String,
    pub read: String,
    pub dir: PathBuf,
}

/// Writes `lines` to `path` (one token per line) with mode 0600.
pub fn write_token_file(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write token file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

impl Tokens {
    pub fn write(dir: &Path) -> Tokens {
        std::fs::create_dir_all(dir).unwrap();
        let t = Tokens {
            admin: "admin-0123456789abcdef0123456789".into(),
            register: "register-0123456789abcdef012345".into(),
            read: "read-0123456789abcdef0123456789ab".into(),
            dir: dir.to_path_buf(),
        };
        for (name, tok) in [
            ("admin", &t.admin),
            ("register", &t.register),
            ("read", &t.read),
        ] {
            write_token_file(&t.file(name), &[tok]);
        }
        t
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.token"))
    }

    /// `[[auth.token]]` tables naming the three files (TOML: put after top-level keys).
    pub fn config(&self) -> String {
        let mut s = String::new();
        for (name, scope) in [
            ("ops", "admin"),
            ("apps", "register"),
            ("monitoring", "read"),
        ] {
            let file = match scope {
                "admin" => self.file("admin"),
                "register" => self.file("register"),
                _ => self.file("read"),
            };
            s.push_str(&format!(
                "[[auth.token]]\nname = \"{name}\"\nscope = \"{scope}\"\nfile = \"{}\"\n\n",
                file.display()
            ));
        }
        s
    }
}
