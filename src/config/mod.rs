//! The node's configuration: a TOML file, overridden by command-line flags, validated before any
//! task starts. Every error names the key, the value and what would be valid.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::ApiConfig;
use crate::auth::{AuthConfig, CompatConfig, RegistrationConfig};
use crate::render::{ApplyConfig, TemplateConfig};

/// A configuration error, worded for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {key} = {value:?}: {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: String,
    },
}

fn invalid(key: &'static str, value: impl ToString, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// The config file as written. Every key is optional; defaults are documented in
/// `packaging/bender.toml` (installed as `/etc/bender/bender.toml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_id: Option<String>,
    pub cluster_id: Option<String>,
    pub api_listen: Option<SocketAddr>,
    pub api_advertise: Option<String>,
    pub gossip_listen: Option<SocketAddr>,
    pub gossip_advertise: Option<SocketAddr>,
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Networks allowed to gossip with this node (empty: any).
    #[serde(default)]
    pub gossip_allow: Vec<ipnet::IpNet>,
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub min_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub gossip_interval: Option<Duration>,
    pub data_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub warmup: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lease_gc_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub tombstone_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub dead_node_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub clock_offset_warn: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_clock_drift: Option<Duration>,
    /// How long a load balancer may be behind this node's view before the fleet status calls
    /// it STALE (PENDING until then).
    #[serde(default, with = "humantime_serde")]
    pub fleet_stale_after: Option<Duration>,
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub api: Option<ApiConfig>,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub registration: Option<RegistrationConfig>,
    #[serde(default)]
    pub compat: Option<CompatConfig>,
    #[serde(default)]
    pub limits: Option<crate::limits::Limits>,
    #[serde(default)]
    pub guard: Option<crate::guard::GuardConfig>,
    #[serde(default)]
    pub apply: Option<ApplyConfig>,
    #[serde(default, rename = "template")]
    pub templates: Vec<TemplateConfig>,
}

/// Overrides from the command line (all optional: `None` keeps the file's value).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub node_id: Option<String>,
    pub cluster_id: Option<String>,
    pub api_listen: Option<SocketAddr>,
    pub gossip_listen: Option<SocketAddr>,
    pub gossip_advertise: Option<SocketAddr>,
    pub seeds: Vec<String>,
    pub default_ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    pub gossip_interval: Option<Duration>,
    pub data_dir: Option<PathBuf>,
}

/// The validated configuration the node runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node_id: String,
    pub cluster_id: String,
    pub api_listen: SocketAddr,
    /// The API address peers and clients should use for this node (shown in members).
    pub api_advertise: String,
    pub gossip_listen: SocketAddr,
    pub gossip_advertise: SocketAddr,
    pub seeds: Vec<String>,
    /// Networks allowed to gossip with this node (empty: any).
    pub gossip_allow: Vec<ipnet::IpNet>,
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub gossip_interval: Duration,
    /// Where the node keeps its snapshot; `None` keeps nothing across restarts.
    pub data_dir: Option<PathBuf>,
    /// Longest wait for peers before a restarting node declares itself ready.
    pub warmup: Duration,
    /// How long an expired lease is kept after every copy's deadline passed.
    pub lease_gc_grace: Duration,
    /// How long a deleted entity's tombstone is kept.
    pub tombstone_ttl: Duration,
    /// How long chitchat keeps a dead node's state.
    pub dead_node_grace: Duration,
    pub clock_offset_warn: Duration,
    /// Records from peers stamped further ahead of the local clock than this are refused.
    pub max_clock_drift: Duration,
    pub fleet_stale_after: Duration,
    pub max_body_bytes: u64,
    /// Connection hygiene, TLS and config snippets (`[api]`).
    pub api: ApiConfig,
    /// Credentials (`[auth]`).
    pub auth: AuthConfig,
    /// Who may register which hosts (`[registration]`).
    pub registration: RegistrationConfig,
    /// Compatibility with bender 0.2.1 clients (`[compat]`).
    pub compat: CompatConfig,
    /// How much the node takes on (`[limits]`).
    pub limits: crate::limits::Limits,
    /// What the node keeps serving when registrations vanish (`[guard]`).
    pub guard: crate::guard::GuardConfig,
    /// Whether `cluster_id` was set (rather than defaulted).
    pub cluster_id_set: bool,
    pub apply: ApplyConfig,
    pub templates: Vec<TemplateConfig>,
}

pub const DEFAULT_API_PORT: u16 = 1729;
pub const DEFAULT_GOSSIP_PORT: u16 = 1730;

impl Config {
    /// Loads the file (if any), applies the overrides and validates the result.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: describe_toml_error(&text, &e),
                })?
            }
            None => FileConfig::default(),
        };
        Config::resolve(file, overrides)
    }

    /// Combines the file and the overrides, fills defaults and validates.
    pub fn resolve(file: FileConfig, o: Overrides) -> Result<Config, ConfigError> {
        let api_listen = o
            .api_listen
            .or(file.api_listen)
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_API_PORT)));
        let seeds = if o.seeds.is_empty() {
            file.seeds
        } else {
            o.seeds
        };
        // Gossip is neither encrypted nor authenticated: a lone node keeps it on loopback, and
        // a node with peers must be told which (private) address to use.
        let gossip_listen = match o.gossip_listen.or(file.gossip_listen) {
            Some(a) => a,
            None if seeds.is_empty() => SocketAddr::from(([127, 0, 0, 1], DEFAULT_GOSSIP_PORT)),
            None => {
                return Err(invalid(
                    "gossip_listen",
                    "",
                    "this host's private address (e.g. \"10.0.0.1:1730\") when seeds are set: gossip is neither encrypted nor authenticated, so it does not listen on every interface by default (see docs/security.md)",
                ))
            }
        };
        let gossip_advertise = match o.gossip_advertise.or(file.gossip_advertise) {
            Some(a) => a,
            None => default_advertise(gossip_listen, &seeds)?,
        };
        let node_id = match o.node_id.or(file.node_id) {
            Some(id) => id,
            None => default_node_id(gossip_advertise),
        };
        let api_advertise = file.api_advertise.unwrap_or_else(|| {
            let ip = if api_listen.ip().is_unspecified() {
                gossip_advertise.ip()
            } else {
                api_listen.ip()
            };
            SocketAddr::new(ip, api_listen.port()).to_string()
        });
        let cluster_id = o.cluster_id.or(file.cluster_id);
        let config = Config {
            node_id,
            cluster_id_set: cluster_id.is_some(),
            cluster_id: cluster_id.unwrap_or_else(|| "bender".to_string()),
            api_listen,
            api_advertise,
            gossip_listen,
            gossip_advertise,
            seeds,
            gossip_allow: file.gossip_allow,
            default_ttl: o
                .default_ttl
                .or(file.default_ttl)
                .unwrap_or(Duration::from_secs(4)),
            min_ttl: file.min_ttl.unwrap_or(Duration::from_millis(100)),
            max_ttl: o
                .max_ttl
                .or(file.max_ttl)
                .unwrap_or(Duration::from_secs(3600)),
            gossip_interval: o
                .gossip_interval
                .or(file.gossip_interval)
                .unwrap_or(Duration::from_millis(100)),
            data_dir: o.data_dir.or(file.data_dir),
            warmup: file.warmup.unwrap_or(Duration::from_secs(5)),
            lease_gc_grace: file.lease_gc_grace.unwrap_or(Duration::from_secs(60)),
            tombstone_ttl: file.tombstone_ttl.unwrap_or(Duration::from_secs(2 * 3600)),
            dead_node_grace: file.dead_node_grace.unwrap_or(Duration::from_secs(3600)),
            clock_offset_warn: file.clock_offset_warn.unwrap_or(Duration::from_millis(200)),
            max_clock_drift: file.max_clock_drift.unwrap_or(Duration::from_secs(60)),
            fleet_stale_after: file.fleet_stale_after.unwrap_or(Duration::from_secs(10)),
            max_body_bytes: file.max_body_bytes.unwrap_or(64 * 1024),
            api: file.api.unwrap_or_default(),
            auth: file.auth.unwrap_or_default(),
            registration: file.registration.unwrap_or_default(),
            compat: file.compat.unwrap_or_default(),
            limits: file.limits.unwrap_or_default(),
            guard: file.guard.unwrap_or_default(),
            apply: file.apply.unwrap_or_default(),
            templates: file.templates,
        };
        config.validate()?;
        Ok(config)
    }

    /// The keys whose change a running node cannot take up (SIGHUP applies the rest: the
    /// templates and `[apply]`).
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |changed: bool, key: &'static str| {
            if changed {
                keys.push(key);
            }
        };
        check(self.node_id != new.node_id, "node_id");
        check(self.cluster_id != new.cluster_id, "cluster_id");
        check(self.api_listen != new.api_listen, "api_listen");
        check(self.api_advertise != new.api_advertise, "api_advertise");
        check(self.gossip_listen != new.gossip_listen, "gossip_listen");
        check(
            self.gossip_advertise != new.gossip_advertise,
            "gossip_advertise",
        );
        check(self.seeds != new.seeds, "seeds");
        check(self.gossip_allow != new.gossip_allow, "gossip_allow");
        check(self.default_ttl != new.default_ttl, "default_ttl");
        check(self.min_ttl != new.min_ttl, "min_ttl");
        check(self.max_ttl != new.max_ttl, "max_ttl");
        check(
            self.gossip_interval != new.gossip_interval,
            "gossip_interval",
        );
        check(self.data_dir != new.data_dir, "data_dir");
        check(self.warmup != new.warmup, "warmup");
        check(self.lease_gc_grace != new.lease_gc_grace, "lease_gc_grace");
        check(self.tombstone_ttl != new.tombstone_ttl, "tombstone_ttl");
        check(
            self.dead_node_grace != new.dead_node_grace,
            "dead_node_grace",
        );
        check(
            self.clock_offset_warn != new.clock_offset_warn,
            "clock_offset_warn",
        );
        check(
            self.max_clock_drift != new.max_clock_drift,
            "max_clock_drift",
        );
        check(self.max_body_bytes != new.max_body_bytes, "max_body_bytes");
        check(
            self.fleet_stale_after != new.fleet_stale_after,
            "fleet_stale_after",
        );
        // [api.tls], [auth], [registration], [compat] and api.config_snippets are re-read on
        // SIGHUP; the connection limits are fixed when the listener starts.
        let limits = |a: &ApiConfig| {
            (
                a.header_read_timeout,
                a.body_read_timeout,
                a.idle_timeout,
                a.max_connections,
                a.max_connections_per_client,
            )
        };
        check(
            limits(&self.api) != limits(&new.api),
            "api (timeouts and connection caps)",
        );
        check(self.limits != new.limits, "limits");
        check(self.guard != new.guard, "guard");
        keys
    }

    /// Checks every value and their relations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_node_id(&self.node_id) {
            return Err(invalid(
                "node_id",
                &self.node_id,
                "1 to 128 characters from [A-Za-z0-9._-]",
            ));
        }
        if !self.seeds.is_empty() && !self.cluster_id_set {
            return Err(invalid(
                "cluster_id",
                "",
                "a name of this cluster's own (e.g. \"prod-eu\") when seeds are set: nodes of another cluster left at the default would merge with this one",
            ));
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > 128 {
            return Err(invalid(
                "cluster_id",
                &self.cluster_id,
                "a non-empty string of at most 128 characters",
            ));
        }
        if self.gossip_advertise.ip().is_unspecified() || self.gossip_advertise.port() == 0 {
            return Err(invalid(
                "gossip_advertise",
                self.gossip_advertise,
                "an address peers can reach: a concrete IP and a non-zero port",
            ));
        }
        if self.gossip_listen.port() == 0 {
            return Err(invalid(
                "gossip_listen",
                self.gossip_listen,
                "a non-zero port (peers must know where to reach this node)",
            ));
        }
        let ms = |d: Duration| humantime::format_duration(d).to_string();
        if self.min_ttl < Duration::from_millis(10) {
            return Err(invalid("min_ttl", ms(self.min_ttl), "at least 10ms"));
        }
        if self.max_ttl < self.min_ttl {
            return Err(invalid(
                "max_ttl",
                ms(self.max_ttl),
                format!("at least min_ttl ({})", ms(self.min_ttl)),
            ));
        }
        if self.default_ttl < self.min_ttl || self.default_ttl > self.max_ttl {
            return Err(invalid(
                "default_ttl",
                ms(self.default_ttl),
                format!(
                    "between min_ttl ({}) and max_ttl ({})",
                    ms(self.min_ttl),
                    ms(self.max_ttl)
                ),
            ));
        }
        if self.gossip_interval < Duration::from_millis(10)
            || self.gossip_interval > Duration::from_secs(10)
        {
            return Err(invalid(
                "gossip_interval",
                ms(self.gossip_interval),
                "between 10ms and 10s",
            ));
        }
        if self.max_clock_drift < Duration::from_secs(1)
            || self.max_clock_drift >= self.tombstone_ttl
        {
            return Err(invalid(
                "max_clock_drift",
                ms(self.max_clock_drift),
                "at least 1s and shorter than tombstone_ttl",
            ));
        }
        if self.fleet_stale_after < Duration::from_secs(1)
            || self.fleet_stale_after > Duration::from_secs(3600)
        {
            return Err(invalid(
                "fleet_stale_after",
                ms(self.fleet_stale_after),
                "between 1s and 1h",
            ));
        }
        if self.tombstone_ttl <= self.dead_node_grace {
            return Err(invalid(
                "tombstone_ttl",
                ms(self.tombstone_ttl),
                format!(
                    "longer than dead_node_grace ({}), or a dead node's stale copy could revive a deleted entity",
                    ms(self.dead_node_grace)
                ),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid(
                "max_body_bytes",
                self.max_body_bytes,
                "between 1024 and 16777216",
            ));
        }
        for seed in &self.seeds {
            let ok = seed.parse::<SocketAddr>().is_ok()
                || seed
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(invalid(
                    "seeds",
                    seed,
                    "HOST:PORT or IP:PORT, e.g. \"10.0.0.2:1730\"",
                ));
            }
        }
        for seed in &self.seeds {
            if let Ok(addr) = seed.parse::<SocketAddr>() {
                if !crate::transport::allowed(&self.gossip_allow, &addr) {
                    return Err(invalid(
                        "gossip_allow",
                        format!(
                            "{:?}",
                            self.gossip_allow
                                .iter()
                                .map(|n| n.to_string())
                                .collect::<Vec<_>>()
                        ),
                        format!("networks that include every seed (seed {seed} is outside them)"),
                    ));
                }
            }
        }
        self.api
            .validate()
            .map_err(|(key, value, expected)| invalid(key, value, expected))?;
        self.limits
            .validate()
            .map_err(|(key, value, expected)| invalid(key, value, expected))?;
        self.guard
            .validate()
            .map_err(|(key, value, expected)| invalid(key, value, expected))?;
        self.apply
            .validate()
            .map_err(|e| invalid("apply", "…", e))?;
        let mut names = std::collections::BTreeSet::new();
        for t in &self.templates {
            t.validate().map_err(|e| invalid("template", &t.name, e))?;
            if !names.insert(t.name.clone()) {
                return Err(invalid(
                    "template.name",
                    &t.name,
                    "a name used by one template only",
                ));
            }
        }
        Ok(())
    }
}

/// One line: where in the file, the line itself (which names the key), and what was wrong.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            let mut message = format!("line {line_no} ({line}): {}", e.message().trim());
            // A top-level key appended after a table lands in that table: say so.
            let above: Vec<&str> = text.lines().take(line_no - 1).map(str::trim).collect();
            let table = above.into_iter().rev().find(|l| l.starts_with('['));
            if let Some(table) = table {
                if e.message().contains("unknown field")
                    && toml::from_str::<FileConfig>(line).is_ok()
                {
                    message.push_str(&format!(
                        "; this is a top-level key, but it sits inside the {table} table above it: move it above the first table"
                    ));
                }
            }
            message
        }
        None => e.message().trim().replace('\n', " "),
    }
}

/// Where peers reach this node when the operator did not say: the listen address if it is
/// concrete, otherwise the local address that routes to the first seed (found with a UDP
/// `connect`, which sends nothing), otherwise loopback for a lone node.
fn default_advertise(listen: SocketAddr, seeds: &[String]) -> Result<SocketAddr, ConfigError> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    for seed in seeds {
        let Ok(mut addrs) = std::net::ToSocketAddrs::to_socket_addrs(seed.as_str()) else {
            continue;
        };
        let Some(addr) = addrs.next() else { continue };
        let bind: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        if let Ok(sock) = UdpSocket::bind(bind) {
            if sock.connect(addr).is_ok() {
                if let Ok(local) = sock.local_addr() {
                    return Ok(SocketAddr::new(local.ip(), listen.port()));
                }
            }
        }
    }
    if seeds.is_empty() {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            listen.port(),
        ));
    }
    Err(invalid(
        "gossip_advertise",
        "",
        "an address peers can reach (it could not be derived from gossip_listen or the seeds)",
    ))
}

/// The host name, or a name derived from the gossip address.
/// Whether `id` is a node id bender accepts: 1 to 128 characters from `[A-Za-z0-9._-]`. Peers'
/// ids are held to the same rule before a template sees them.
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn default_node_id(advertise: SocketAddr) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
    match host {
        Some(h) => h,
        None => format!("bender-{}-{}", advertise.ip(), advertise.port()).replace(':', "."),
    }
}

#[cfg(test)]
mod tests;
