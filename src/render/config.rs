//! Configuration of the render/apply stage: the `[[template]]` blocks and the `[apply]` table of
//! the node's config file, with the checks that run before any task starts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The placeholder a `check` argument carries for the path of the rendered temp file.
pub const CHECK_PLACEHOLDER: &str = "{}";

/// One template: where it is read from, where its output goes, and how HAProxy takes it up.
///
/// ```toml
/// [[template]]
/// name = "haproxy"
/// source = "/etc/bender/haproxy.cfg.tera"
/// destination = "/etc/haproxy/haproxy.cfg"
/// reload = { method = "master-socket", socket = "/run/haproxy-master.sock" }
/// vars = { stats_socket = "/run/haproxy/admin.sock" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// A short name for logs and the status endpoint.
    pub name: String,
    /// The Tera template file. Its directory is watched: an edit re-renders.
    pub source: PathBuf,
    /// The file the rendered output replaces (atomically).
    pub destination: PathBuf,
    /// The validation command (argv); `{}` is replaced by the rendered temp file. Absent means
    /// `["haproxy", "-c", "-f", "{}"]`; an empty list disables validation (for non-HAProxy files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Vec<String>>,
    /// How HAProxy is told to load the new file.
    pub reload: ReloadConfig,
    /// Free-form values exposed to the template as `vars` (socket paths, timeouts, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Save HAProxy's server state (health, weights) before every reload so that
    /// `load-server-state-from-file` can restore it in the new worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_state: Option<ServerStateConfig>,
    /// Each backend's servers sit in `be.slots`: a multiple of this many slots, the spare ones
    /// empty (in maintenance), so a server can join without a new `server` line.
    #[serde(default = "default_slot_block")]
    pub slot_block: usize,
    /// Servers that join, leave or change weight within their backend's slots are changed
    /// through HAProxy's runtime API, with no reload. Only for templates that render
    /// `be.slots` (see docs/templates.md); absent, every change reloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeConfig>,
}

/// The runtime API path of a template.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The worker's stats socket (`stats socket ... level admin` in `global`).
    pub socket: PathBuf,
    /// How long a server that left (deregistered or expired) keeps draining, so in-flight and
    /// keep-alive requests finish, before its slot goes to maintenance.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain: Duration,
}

/// The largest `slot_block`: more spare slots than this per block only costs HAProxy memory.
pub const MAX_SLOT_BLOCK: usize = 1000;

fn default_slot_block() -> usize {
    10
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}

/// How HAProxy is reloaded once a new config is in place.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "method", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ReloadConfig {
    /// `reload` on the master CLI (`haproxy -W -S <socket>`); verified with `show proc`.
    MasterSocket { socket: PathBuf },
    /// SIGUSR2 to the master whose PID is in `pidfile`. Verified with `show proc` when
    /// `master_socket` is given; otherwise only the signal delivery is checked.
    Pidfile {
        pidfile: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        master_socket: Option<PathBuf>,
    },
    /// Run a command (e.g. `["systemctl", "reload", "haproxy"]`); a non-zero exit is a failure.
    /// systemd reports success even when HAProxy's reload failed, so give `master_socket` to
    /// verify the outcome with `show proc`.
    Command {
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        master_socket: Option<PathBuf>,
    },
    /// Only write the file (another process picks it up).
    None,
}

/// Where the running worker's server state is read from and saved to before a reload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerStateConfig {
    /// The worker's stats socket (`stats socket ... level admin` in `global`).
    pub socket: PathBuf,
    /// The file named by `server-state-file` in `global`.
    pub file: PathBuf,
}

/// The `[apply]` table: how changes are batched and how long HAProxy may take.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// Apply once the view has been quiet this long...
    #[serde(default = "default_debounce_quiet", with = "humantime_serde")]
    pub debounce_quiet: Duration,
    /// ...or once the first unapplied change is this old, whichever comes first.
    #[serde(default = "default_debounce_max", with = "humantime_serde")]
    pub debounce_max: Duration,
    /// The quiet period instead of `debounce_quiet` when every template has `runtime`: most
    /// changes then cost a few runtime API commands, not a reload.
    #[serde(default = "default_debounce_runtime", with = "humantime_serde")]
    pub debounce_runtime: Duration,
    /// Longest a `check` command may run (`haproxy -c` takes ~1 s for 10,000 backends).
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Longest a reload may take to show a new worker (or a failure) before it counts as failed.
    #[serde(default = "default_reload_timeout", with = "humantime_serde")]
    pub reload_timeout: Duration,
    /// A config that failed the check or that HAProxy refused to load is tried again after
    /// this long (a port in use may have been freed), not sooner, so that renewals do not make
    /// a bad config reload HAProxy over and over. A reload with no verdict (the master did not
    /// answer) is retried sooner: after 1 s, doubling up to this.
    #[serde(default = "default_retry_failed_after", with = "humantime_serde")]
    pub retry_failed_after: Duration,
    /// How often HAProxy is asked which config it runs (where a master or stats socket is
    /// configured): a stopped HAProxy, or one running another config than the file, is noticed
    /// and reported (and the file reloaded) without waiting for the next change.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
}

fn default_debounce_quiet() -> Duration {
    Duration::from_millis(200)
}
fn default_debounce_runtime() -> Duration {
    Duration::from_millis(10)
}
fn default_debounce_max() -> Duration {
    Duration::from_secs(1)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_reload_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_retry_failed_after() -> Duration {
    Duration::from_secs(60)
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            debounce_quiet: default_debounce_quiet(),
            debounce_max: default_debounce_max(),
            debounce_runtime: default_debounce_runtime(),
            check_timeout: default_check_timeout(),
            reload_timeout: default_reload_timeout(),
            retry_failed_after: default_retry_failed_after(),
            probe_interval: default_probe_interval(),
        }
    }
}

impl ApplyConfig {
    pub fn validate(&self) -> Result<(), String> {
        let hour = Duration::from_secs(3600);
        if self.debounce_max.is_zero() || self.debounce_max > Duration::from_secs(600) {
            return Err(format!(
                "apply.debounce_max = {:?} must be more than 0 and at most \"10m\"",
                humantime::format_duration(self.debounce_max).to_string()
            ));
        }
        if self.debounce_quiet > self.debounce_max {
            return Err(format!(
                "apply.debounce_quiet = {:?} must not exceed apply.debounce_max = {:?}",
                humantime::format_duration(self.debounce_quiet).to_string(),
                humantime::format_duration(self.debounce_max).to_string()
            ));
        }
        if self.debounce_runtime > self.debounce_max {
            return Err(format!(
                "apply.debounce_runtime = {:?} must not exceed apply.debounce_max = {:?}",
                humantime::format_duration(self.debounce_runtime).to_string(),
                humantime::format_duration(self.debounce_max).to_string()
            ));
        }
        for (key, value) in [
            ("check_timeout", self.check_timeout),
            ("reload_timeout", self.reload_timeout),
        ] {
            if value.is_zero() || value > hour {
                return Err(format!(
                    "apply.{key} = {:?} must be more than 0 and at most \"1h\"",
                    humantime::format_duration(value).to_string()
                ));
            }
        }
        if self.probe_interval < Duration::from_millis(100) || self.probe_interval > hour {
            return Err(format!(
                "apply.probe_interval = {:?} must be at least \"100ms\" and at most \"1h\"",
                humantime::format_duration(self.probe_interval).to_string()
            ));
        }
        if self.retry_failed_after < Duration::from_secs(1) || self.retry_failed_after > hour {
            return Err(format!(
                "apply.retry_failed_after = {:?} must be at least \"1s\" and at most \"1h\"",
                humantime::format_duration(self.retry_failed_after).to_string()
            ));
        }
        Ok(())
    }
}

fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn has_file_name(path: &Path) -> bool {
    path.file_name().is_some()
}

impl TemplateConfig {
    /// How this template's slots are handed out: drains only where the runtime API is used
    /// (with reloads, a leaver's slot is freed at once, as its `server` line was removed).
    pub fn slot_settings(&self) -> super::slots::SlotSettings {
        super::slots::SlotSettings {
            block: self.slot_block.clamp(1, MAX_SLOT_BLOCK),
            drain_ms: self
                .runtime
                .as_ref()
                .map_or(0, |r| r.drain.as_millis().min(u64::MAX as u128) as u64),
        }
    }

    /// The validation command with its default applied.
    pub fn check_command(&self) -> Vec<String> {
        match &self.check {
            Some(argv) => argv.clone(),
            None => ["haproxy", "-c", "-f", CHECK_PLACEHOLDER]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !is_safe_name(&self.name) {
            return Err(format!(
                "template.name = {:?} must be 1 to 64 letters, digits, '.', '_' or '-'",
                self.name
            ));
        }
        let key = |k: &str| format!("template {:?}: {k}", self.name);
        if !has_file_name(&self.source) {
            return Err(format!(
                "{} = {:?} must name a template file",
                key("source"),
                self.source
            ));
        }
        if !has_file_name(&self.destination) {
            return Err(format!(
                "{} = {:?} must name the file to write, e.g. \"/etc/haproxy/haproxy.cfg\"",
                key("destination"),
                self.destination
            ));
        }
        if self.source == self.destination {
            return Err(format!(
                "{} must differ from {} ({:?})",
                key("destination"),
                key("source"),
                self.source
            ));
        }
        if let Some(argv) = &self.check {
            if !argv.is_empty() {
                if argv[0].trim().is_empty() {
                    return Err(format!(
                        "{} must start with a program, e.g. [\"haproxy\", \"-c\", \"-f\", \"{{}}\"]",
                        key("check")
                    ));
                }
                if !argv.iter().any(|a| a.contains(CHECK_PLACEHOLDER)) {
                    return Err(format!(
                        "{} = {argv:?} must pass the rendered file as \"{{}}\", e.g. [\"haproxy\", \"-c\", \"-f\", \"{{}}\"]; [] disables the check",
                        key("check")
                    ));
                }
            }
        }
        match &self.reload {
            ReloadConfig::MasterSocket { socket } if socket.as_os_str().is_empty() => {
                return Err(format!(
                    "{} must be the master CLI socket (haproxy -S), e.g. \"/run/haproxy-master.sock\"",
                    key("reload.socket")
                ));
            }
            ReloadConfig::Pidfile { pidfile, .. } if pidfile.as_os_str().is_empty() => {
                return Err(format!(
                    "{} must be HAProxy's pidfile, e.g. \"/run/haproxy.pid\"",
                    key("reload.pidfile")
                ));
            }
            ReloadConfig::Command { command, .. }
                if command.first().is_none_or(|c| c.trim().is_empty()) =>
            {
                return Err(format!(
                    "{} must be a non-empty argv, e.g. [\"systemctl\", \"reload\", \"haproxy\"]",
                    key("reload.command")
                ));
            }
            _ => {}
        }
        for k in self.vars.keys() {
            if !is_identifier(k) {
                return Err(format!(
                    "{} has key {k:?}: keys must be identifiers (letters, digits, '_') so templates can write vars.{k}",
                    key("vars")
                ));
            }
        }
        if !(1..=MAX_SLOT_BLOCK).contains(&self.slot_block) {
            return Err(format!(
                "{} = {} must be 1 to {MAX_SLOT_BLOCK} (server slots are added in blocks of this many)",
                key("slot_block"),
                self.slot_block
            ));
        }
        if let Some(rt) = &self.runtime {
            if rt.socket.as_os_str().is_empty() {
                return Err(format!(
                    "{} must be the worker's stats socket (stats socket ... level admin), e.g. \"/run/haproxy/admin.sock\"",
                    key("runtime.socket")
                ));
            }
            if rt.drain > Duration::from_secs(3600) {
                return Err(format!(
                    "{} = {:?} must be at most 1h",
                    key("runtime.drain"),
                    humantime::format_duration(rt.drain).to_string()
                ));
            }
        }
        if let Some(state) = &self.server_state {
            if state.socket.as_os_str().is_empty() || !has_file_name(&state.file) {
                return Err(format!(
                    "{} needs socket (the stats socket) and file (the server-state-file)",
                    key("server_state")
                ));
            }
        }
        Ok(())
    }
}

/// Checks every template and that no two share a name or a destination.
pub fn validate_templates(templates: &[TemplateConfig]) -> Result<(), String> {
    let mut names = BTreeSet::new();
    let mut destinations = BTreeSet::new();
    for t in templates {
        t.validate()?;
        if !names.insert(t.name.as_str()) {
            return Err(format!("template.name = {:?} is used twice", t.name));
        }
        if !destinations.insert(t.destination.as_path()) {
            return Err(format!(
                "template {:?}: destination {:?} is written by another template too",
                t.name, t.destination
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<TemplateConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    const BASE: &str = r#"
        name = "haproxy"
        source = "/etc/bender/haproxy.cfg.tera"
        destination = "/etc/haproxy/haproxy.cfg"
    "#;

    #[test]
    fn reload_methods_parse() {
        let t = parse(&format!(
            "{BASE}reload = {{ method = \"master-socket\", socket = \"/run/haproxy-master.sock\" }}"
        ))
        .unwrap();
        assert_eq!(
            t.reload,
            ReloadConfig::MasterSocket {
                socket: "/run/haproxy-master.sock".into()
            }
        );
        assert_eq!(t.check_command(), ["haproxy", "-c", "-f", "{}"]);
        t.validate().unwrap();

        let t = parse(&format!(
            "{BASE}reload = {{ method = \"pidfile\", pidfile = \"/run/haproxy.pid\" }}"
        ))
        .unwrap();
        assert!(matches!(
            t.reload,
            ReloadConfig::Pidfile {
                master_socket: None,
                ..
            }
        ));
        let t = parse(&format!(
            "{BASE}reload = {{ method = \"command\", command = [\"systemctl\", \"reload\", \"haproxy\"] }}"
        ))
        .unwrap();
        assert!(matches!(t.reload, ReloadConfig::Command { .. }));
        let t = parse(&format!("{BASE}reload = {{ method = \"none\" }}")).unwrap();
        assert_eq!(t.reload, ReloadConfig::None);
    }

    #[test]
    fn unknown_keys_and_methods_are_rejected() {
        assert!(parse(&format!("{BASE}reload = {{ method = \"hup\" }}")).is_err());
        assert!(parse(&format!(
            "{BASE}reload = {{ method = \"none\" }}\ncheck_cmd = []"
        ))
        .is_err());
        assert!(parse(&format!(
            "{BASE}reload = {{ method = \"master-socket\", socket = \"/s\", pid = 1 }}"
        ))
        .is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut t = parse(&format!("{BASE}reload = {{ method = \"none\" }}")).unwrap();
        t.check = Some(vec!["haproxy".into(), "-c".into()]);
        assert!(t.validate().unwrap_err().contains("check"));
        t.check = Some(vec![]);
        t.validate().unwrap();
        t.vars.insert("bad-key".into(), "x".into());
        assert!(t.validate().unwrap_err().contains("vars"));
        t.vars.clear();
        t.reload = ReloadConfig::Command {
            command: vec![],
            master_socket: None,
        };
        assert!(t.validate().unwrap_err().contains("reload.command"));
        t.reload = ReloadConfig::None;
        validate_templates(std::slice::from_ref(&t)).unwrap();
        let err = validate_templates(&[t.clone(), t]).unwrap_err();
        assert!(err.contains("used twice"), "{err}");
    }

    #[test]
    fn apply_defaults_and_durations() {
        let a: ApplyConfig = toml::from_str("").unwrap();
        assert_eq!(a, ApplyConfig::default());
        assert_eq!(a.debounce_quiet, Duration::from_millis(200));
        assert_eq!(a.debounce_max, Duration::from_secs(1));
        a.validate().unwrap();
        let a: ApplyConfig =
            toml::from_str("debounce_quiet = \"2s\"\ndebounce_max = \"500ms\"").unwrap();
        let err = a.validate().unwrap_err();
        assert!(err.contains("debounce_quiet"), "{err}");
        assert!(toml::from_str::<ApplyConfig>("debounce_quiet = 5").is_err());
        // Retrying a failed config at once would reload HAProxy in a loop.
        let a: ApplyConfig = toml::from_str("retry_failed_after = \"100ms\"").unwrap();
        let err = a.validate().unwrap_err();
        assert!(
            err.starts_with("apply.retry_failed_after = \"100ms\""),
            "{err}"
        );
    }
}
