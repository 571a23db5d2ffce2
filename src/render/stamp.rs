//! Knowing what HAProxy runs: every rendered config carries its version (`description
//! bender-config:<hash>` in `global`), which HAProxy's `show info` echoes. Comparing the
//! version of the file with the version running tells a crash between rename and reload (or a
//! reload that silently did nothing) from a consistent state.

use super::config_hash;

/// The text of the `global` description line bender adds.
const PREFIX: &str = "bender-config:";

/// Stamps `text` with its version: a `description` line right after the first `global` line.
/// Returns the stamped text and the version (the hash of the unstamped text). A config without
/// a `global` section is returned as it is: its version cannot be read back from HAProxy.
pub fn stamp(text: &str) -> (String, String) {
    stamp_as(text, config_hash(text.as_bytes()))
}

/// Stamps `text` with a version of the caller's: a template using the runtime API is stamped
/// with the hash of its structure (the render with every slot blanked), so a change HAProxy
/// takes at run time leaves the version it runs, the one `show info` reports, unchanged.
pub fn stamp_as(text: &str, version: String) -> (String, String) {
    let mut out = String::with_capacity(text.len() + 64);
    let mut done = false;
    for line in text.split_inclusive('\n') {
        out.push_str(line);
        if !done && line.trim_end() == "global" {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("    description {PREFIX}{version}\n"));
            done = true;
        }
    }
    (out, version)
}

/// The version a stamped config file carries.
pub fn of_file(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("description ")
            .and_then(|d| d.trim().strip_prefix(PREFIX))
            .map(str::to_string)
    })
}

/// The version in HAProxy's answer to `show info` (`description: bender-config:<hash>`).
pub fn of_info(info: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix("description:")
            .and_then(|d| d.trim().strip_prefix(PREFIX))
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_goes_into_global_and_reads_back_from_the_file_and_show_info() {
        let text = "# header\nglobal\n    master-worker\n\ndefaults\n    mode http\n";
        let (stamped, v) = stamp(text);
        assert_eq!(v, config_hash(text.as_bytes()));
        assert_eq!(
            stamped,
            format!("# header\nglobal\n    description bender-config:{v}\n    master-worker\n\ndefaults\n    mode http\n")
        );
        assert_eq!(of_file(&stamped), Some(v.clone()));
        let info = format!("Name: HAProxy\nPid: 7\ndescription: bender-config:{v}\nUptime: 0d\n");
        assert_eq!(of_info(&info), Some(v));
        assert_eq!(of_info("Name: HAProxy\n"), None);
        // Same text, same stamp; no global, no stamp.
        assert_eq!(stamp(text).0, stamped);
        assert_eq!(stamp("defaults\n").0, "defaults\n");
        assert_eq!(of_file("defaults\n"), None);
    }
}
