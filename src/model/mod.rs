//! The entities bender replicates (registrations, backends, frontends) and the validation every
//! client-supplied value passes before it is stored, gossiped or rendered into a config file.
//!
//! Validation is strict on purpose: anything that reaches a HAProxy config must not be able to
//! open a new line, a comment, a quoted string or a sample fetch. Names come from a small safe
//! character set; free-form HAProxy lines pass the allow-list in [`snippets`] (or, where the
//! node's operator enabled raw snippets, are single printable lines that open no section).

pub mod snippets;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use snippets::{Section, Snippets};

/// Longest name, app or version accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Longest DNS host name accepted.
pub const MAX_HOST_LEN: usize = 253;
/// Most meta entries a registration may carry (meta is gossiped with every renewal).
pub const MAX_META_ENTRIES: usize = 16;
/// Longest meta value.
pub const MAX_META_VALUE_LEN: usize = 128;
/// Most extra config lines an entity may carry.
pub const MAX_EXTRA_LINES: usize = 32;
/// Most routing rules a frontend may carry.
pub const MAX_RULES: usize = 64;

/// A validation failure: which field, and what would have been valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks an app name, version, backend or frontend name: 1..=64 characters from
/// `[A-Za-z0-9._-]`, starting with a letter or digit. This is also what makes the gossip key
/// encoding (`r:app/version/host/port`) unambiguous.
pub fn validate_name(field: &str, value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(Invalid::new(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let all_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !all_ok {
        return Err(Invalid::new(
            field,
            format!(
                "{value:?} must use only letters, digits, '.', '_' and '-', and start with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// Checks a host: an IP address or a DNS name (labels of letters, digits and '-'). A name that
/// libc would read as an address (`2130706433`, `0x7f.1`, `0127.0.0.1`: inet_aton's decimal,
/// hex and octal forms) is refused: a host must be what it looks like.
pub fn validate_host(field: &str, value: &str) -> Result<(), Invalid> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bad = || {
        Invalid::new(
            field,
            format!("{value:?} must be an IP address or a DNS name"),
        )
    };
    if value.is_empty() || value.len() > MAX_HOST_LEN {
        return Err(bad());
    }
    for label in value.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(bad());
        }
    }
    let numeric = |l: &str| {
        let hex = l.strip_prefix("0x").or_else(|| l.strip_prefix("0X"));
        match hex {
            Some(h) => h.chars().all(|c| c.is_ascii_hexdigit()),
            None => l.chars().all(|c| c.is_ascii_digit()),
        }
    };
    let labels: Vec<&str> = value.split('.').collect();
    // A top-level domain is never all digits (RFC 3696), and an all-numeric name is an address
    // in disguise.
    if labels.iter().all(|l| numeric(l)) || labels.last().is_some_and(|l| numeric(l)) {
        return Err(Invalid::new(
            field,
            format!(
                "{value:?} looks like a number that libc would read as an IP address; write the address itself, e.g. \"127.0.0.1\""
            ),
        ));
    }
    Ok(())
}

/// Parses a port given as text (path segments); 1..=65535.
pub fn parse_port(field: &str, value: &str) -> Result<u16, Invalid> {
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Invalid::new(
            field,
            format!("{value:?} must be a port number from 1 to 65535"),
        )),
    }
}

fn validate_port(field: &str, port: u16) -> Result<(), Invalid> {
    if port == 0 {
        return Err(Invalid::new(field, "must be a port number from 1 to 65535"));
    }
    Ok(())
}

/// Checks a free-form but single-token value that may be rendered (meta values, paths): the
/// safe characters of [`snippets`] only (letters, digits and `-._~:/?&=+,;@!*()`), so no space,
/// quote, `#`, `%` (sample fetch, log-format variable), `$`, brace or backslash.
pub fn validate_token_text(field: &str, value: &str, max_len: usize) -> Result<(), Invalid> {
    if value.len() > max_len {
        return Err(Invalid::new(
            field,
            format!("must be at most {max_len} characters"),
        ));
    }
    if !value.is_empty() && !snippets::is_value(value) {
        return Err(Invalid::new(
            field,
            format!(
                "{:?} may contain only letters, digits and -._~:/?&=+,;@!*()",
                value.chars().take(64).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Identity of a registration (lease): (app, version, host, port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegKey {
    pub app: String,
    pub version: String,
    pub host: String,
    pub port: u16,
}

impl RegKey {
    /// The least key of all (a bound for ranges).
    pub const MIN: RegKey = RegKey {
        app: String::new(),
        version: String::new(),
        host: String::new(),
        port: 0,
    };

    /// Builds a key from untrusted parts, validating each.
    pub fn new(app: &str, version: &str, host: &str, port: u16) -> Result<Self, Invalid> {
        validate_name("app", app)?;
        validate_name("version", version)?;
        validate_host("host", host)?;
        validate_port("port", port)?;
        Ok(RegKey {
            app: app.to_string(),
            version: version.to_string(),
            host: host.to_string(),
            port,
        })
    }

    /// The registration's id as the API shows it.
    pub fn id(&self) -> String {
        format!("{}/{}/{}/{}", self.app, self.version, self.host, self.port)
    }
}

impl fmt::Display for RegKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} {}:{}",
            self.app, self.version, self.host, self.port
        )
    }
}

/// Validates registration meta: a few small `name -> value` pairs.
pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if meta.len() > MAX_META_ENTRIES {
        return Err(Invalid::new(
            "meta",
            format!("at most {MAX_META_ENTRIES} entries"),
        ));
    }
    for (k, v) in meta {
        validate_name("meta key", k)?;
        if v.is_empty() {
            return Err(Invalid::new(format!("meta.{k}"), "must not be empty"));
        }
        validate_token_text(&format!("meta.{k}"), v, MAX_META_VALUE_LEN)?;
    }
    Ok(())
}

/// HAProxy proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Http,
    Tcp,
}

/// HAProxy load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    Roundrobin,
    StaticRr,
    Leastconn,
    First,
    Source,
    Random,
}

/// An HTTP health check for a backend's servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Path requested by `option httpchk` (http mode); absent means a TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Interval between checks, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u32>,
}

/// A backend: the live registrations of app@version, and how HAProxy balances them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub name: String,
    pub app: String,
    pub version: String,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Options appended to every `server` line (e.g. "maxconn 100 weight 10").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_options: Option<String>,
    /// Extra lines appended to the backend section.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

impl Backend {
    /// Checks every field; free-form lines as `snippets` says.
    pub fn validate(&self, snippets: Snippets) -> Result<(), Invalid> {
        validate_name("name", &self.name)?;
        validate_name("app", &self.app)?;
        validate_name("version", &self.version)?;
        if let Some(hc) = &self.health_check {
            if let Some(path) = &hc.path {
                if !path.starts_with('/') {
                    return Err(Invalid::new("health_check.path", "must start with '/'"));
                }
                validate_token_text("health_check.path", path, 256)?;
            }
            if let Some(ms) = hc.interval_ms {
                if !(100..=3_600_000).contains(&ms) {
                    return Err(Invalid::new(
                        "health_check.interval_ms",
                        "must be from 100 to 3600000",
                    ));
                }
            }
        }
        if let Some(opts) = &self.server_options {
            snippets::validate_server_options("server_options", opts, snippets)?;
        }
        snippets::validate_lines(
            "extra",
            Section::Backend,
            &self.extra,
            snippets,
            MAX_EXTRA_LINES,
        )
    }
}

/// A host/path routing rule: requests matching it go to another backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Host header to match (exact, without port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix to match (starts with '/').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    pub backend: String,
}

/// A frontend: where HAProxy listens and which backend it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    pub name: String,
    /// The default backend; empty for none (bender 0.2.1 took a frontend with only a name):
    /// requests no rule routes then get a 503.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// Bind address, `[ip]:port` (e.g. `*:80`, `127.0.0.1:8080`, `[::]:443`).
    #[serde(default = "default_bind")]
    pub bind: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

fn default_bind() -> String {
    "*:80".to_string()
}

/// Checks a bind address: `*:port`, `:port`, `ip:port` or `[ipv6]:port`.
pub fn validate_bind(field: &str, bind: &str) -> Result<(), Invalid> {
    let bad = || {
        Invalid::new(
            field,
            format!("{bind:?} must be ADDRESS:PORT, e.g. \"*:80\" or \"127.0.0.1:8080\""),
        )
    };
    let (addr, port) = bind.rsplit_once(':').ok_or_else(bad)?;
    parse_port(field, port).map_err(|_| bad())?;
    let addr_ok = addr.is_empty()
        || addr == "*"
        || addr.parse::<IpAddr>().is_ok()
        || addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
    if !addr_ok {
        return Err(bad());
    }
    Ok(())
}

impl Frontend {
    /// Checks every field; free-form lines as `snippets` says.
    pub fn validate(&self, snippets: Snippets) -> Result<(), Invalid> {
        validate_name("name", &self.name)?;
        if !self.backend.is_empty() {
            validate_name("backend", &self.backend)?;
        }
        validate_bind("bind", &self.bind)?;
        if self.rules.len() > MAX_RULES {
            return Err(Invalid::new("rules", format!("at most {MAX_RULES} rules")));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            validate_name(&format!("rules[{i}].backend"), &rule.backend)?;
            if rule.host.is_none() && rule.path_prefix.is_none() {
                return Err(Invalid::new(
                    format!("rules[{i}]"),
                    "needs a host, a path_prefix, or both",
                ));
            }
            if let Some(host) = &rule.host {
                validate_host(&format!("rules[{i}].host"), host)?;
            }
            if let Some(path) = &rule.path_prefix {
                if !path.starts_with('/') {
                    return Err(Invalid::new(
                        format!("rules[{i}].path_prefix"),
                        "must start with '/'",
                    ));
                }
                validate_token_text(&format!("rules[{i}].path_prefix"), path, 256)?;
            }
        }
        snippets::validate_lines(
            "extra",
            Section::Frontend,
            &self.extra,
            snippets,
            MAX_EXTRA_LINES,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_accept_the_safe_set_only() {
        for ok in ["a", "hello-world", "v1.2.3", "A_b", "1x"] {
            assert!(validate_name("app", ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "-a", ".a", "a b", "a\nb", "a#b", "a\"b", "a/b", "%[src]", "a'b", "é",
        ] {
            let err = validate_name("app", bad).unwrap_err();
            assert_eq!(err.field, "app", "{bad}");
        }
        assert!(validate_name("app", &"a".repeat(65)).is_err());
        assert!(validate_name("app", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn hosts_are_ips_or_dns_names() {
        for ok in [
            "127.0.0.1",
            "::1",
            "fe80::1",
            "app-1.example.com",
            "localhost",
        ] {
            assert!(validate_host("host", ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a..b", "-a.com", "a_b.com", "a b", "a\nb", "[::1]", "a:80",
        ] {
            assert!(validate_host("host", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_that_libc_would_read_as_addresses_are_refused() {
        for bad in [
            "2130706433",
            "0x7f.1",
            "0x7f000001",
            "0127.0.0.1",
            "127.1",
            "127.000.000.001",
            "10.0.0.0x1",
            "app.123",
        ] {
            let err = validate_host("host", bad).unwrap_err();
            assert_eq!(err.field, "host", "{bad}");
        }
        for ok in ["0x7f.example.com", "123.example.com", "a1", "web-01.prod"] {
            assert!(validate_host("host", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn token_text_is_one_safe_token() {
        for ok in ["eu-west-1", "/health?full=1&x=y", "a:b", ""] {
            assert!(validate_token_text("meta.zone", ok, 128).is_ok(), "{ok:?}");
        }
        for bad in [
            "a b",
            "%[env(HOME)]",
            "%H",
            "{{x}}",
            "${HOME}",
            "a\"b",
            "a#b",
            "é",
            "a\u{2028}b",
            "a\0b",
        ] {
            assert!(
                validate_token_text("meta.zone", bad, 128).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ports_are_1_to_65535() {
        assert_eq!(parse_port("port", "80"), Ok(80));
        for bad in ["0", "65536", "-1", "x", ""] {
            assert!(parse_port("port", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn extra_lines_cannot_escape_their_section() {
        let line = |l: &str, s| snippets::validate_line("extra", Section::Backend, l, s);
        assert!(line("timeout server 30s", Snippets::AllowListed).is_ok());
        for bad in [
            "a\nb",
            "backend evil",
            "frontend x",
            "acl x # comment",
            "x \"q\"",
            "",
        ] {
            assert!(line(bad, Snippets::Raw).is_err(), "{bad:?}");
            assert!(line(bad, Snippets::AllowListed).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn binds() {
        for ok in ["*:80", ":80", "127.0.0.1:8080", "[::]:443", "::1:80"] {
            assert!(validate_bind("bind", ok).is_ok(), "{ok}");
        }
        for bad in ["80", "*:0", "host:80", "1.2.3.4:x", "*:80\n"] {
            assert!(validate_bind("bind", bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Whatever a client sends, a name that passes validation can hold nothing that would
        /// change the meaning of a HAProxy config line.
        #[test]
        fn valid_names_are_config_safe(s in "\\PC{0,80}") {
            if validate_name("n", &s).is_ok() {
                let unsafe_chars = "#\"'%[]{}\\/:";
                prop_assert!(!s.chars().any(|c| c.is_whitespace() || unsafe_chars.contains(c)));
            }
        }

        #[test]
        fn valid_extra_lines_are_single_lines(s in "\\PC{0,80}") {
            if snippets::validate_raw_line("x", &s).is_ok() {
                prop_assert!(!s.contains('\n') && !s.contains('\r') && !s.contains('#'));
            }
        }
    }
}
