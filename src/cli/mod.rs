//! The `bender` command line: `agent` runs a node; the other subcommands are the operator's
//! tools and talk to a node's HTTP API (address from `--addr` or `BENDER_ADDR`).

mod entities;
mod fleet;
mod human;
mod list;
pub mod man;
mod ops;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use ops::run_operator_command;

/// Parses a duration flag, with an error that says what is valid.
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| "expected a duration such as \"500ms\", \"4s\" or \"1m\"".to_string())
}

/// Parses `key=value`.
fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// `host=NAME,path=/PREFIX,backend=NAME` as the API's rule object; `""` for none.
fn rule(s: &str) -> Result<Option<serde_json::Value>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let mut rule = serde_json::Map::new();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected host=NAME,path=/PREFIX,backend=NAME, got {s:?}"))?;
        let key = match k.trim() {
            "host" => "host",
            "path" | "path_prefix" => "path_prefix",
            "backend" => "backend",
            other => {
                return Err(format!(
                    "unknown rule part {other:?} (valid: host, path, backend)"
                ))
            }
        };
        rule.insert(key.into(), serde_json::Value::String(v.trim().to_string()));
    }
    if !rule.contains_key("backend") {
        return Err(format!("a rule needs backend=NAME: {s:?}"));
    }
    if !rule.contains_key("host") && !rule.contains_key("path_prefix") {
        return Err(format!(
            "a rule needs host=NAME, path=/PREFIX or both: {s:?}"
        ));
    }
    Ok(Some(serde_json::Value::Object(rule)))
}

#[derive(Parser)]
#[command(
    name = "bender",
    version,
    about = "A distributed, expiring service registry that drives HAProxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a bender node.
    Agent(AgentArgs),
    /// Register an app instance once, or keep it registered until SIGTERM (sidecar mode).
    Register(RegisterArgs),
    /// Deregister an app instance now.
    Deregister(InstanceArgs),
    /// List registrations, backends or frontends.
    List(ListArgs),
    /// Show the cluster's members.
    Members(OutputArgs),
    /// Create, update, delete or switch backends (blue/green).
    Backend(BackendArgs),
    /// Create, update, delete or switch frontends (blue/green).
    Frontend(FrontendArgs),
    /// Show a node's status, or with --fleet every load balancer's.
    Status(StatusArgs),
    /// Render the templates once, from a running node or a state file (for template authors).
    Render(RenderArgs),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write every page (bender.1, bender-agent.1, ...) to a
    /// directory.
    Man {
        /// Write bender.1 and one page per subcommand here instead of printing bender.1.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct AgentArgs {
    /// Config file (TOML); flags override its values.
    #[arg(long, env = "BENDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Unique id of this node in the cluster [default: the host name].
    #[arg(long)]
    pub node_id: Option<String>,
    /// Cluster id; nodes only gossip with nodes of the same cluster [default: bender].
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// HTTP API listen address [default: 0.0.0.0:1729].
    #[arg(long)]
    pub api_listen: Option<std::net::SocketAddr>,
    /// Gossip (UDP) listen address [default: 0.0.0.0:1730].
    #[arg(long)]
    pub gossip_listen: Option<std::net::SocketAddr>,
    /// Gossip address peers use to reach this node [default: derived from the listen address].
    #[arg(long)]
    pub gossip_advertise: Option<std::net::SocketAddr>,
    /// A peer's gossip address (HOST:PORT); repeat for several.
    #[arg(long = "seed")]
    pub seeds: Vec<String>,
    /// TTL of registrations that do not give one, e.g. "500ms", "4s" [default: 4s].
    #[arg(long, value_parser = duration)]
    pub default_ttl: Option<Duration>,
    /// Longest TTL a client may ask for [default: 1h].
    #[arg(long, value_parser = duration)]
    pub max_ttl: Option<Duration>,
    /// Time between gossip rounds [default: 100ms].
    #[arg(long, value_parser = duration)]
    pub gossip_interval: Option<Duration>,
    /// Directory for the node's snapshot [default: none, nothing kept across restarts].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Log lines as plain text, or as one JSON object per line for log shippers. The level
    /// filter comes from BENDER_LOG (e.g. "info", "debug", "bender=debug").
    #[arg(long, env = "BENDER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How the agent writes its log lines (to stdout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the node's API is.
#[derive(Args, Clone)]
pub struct Connect {
    /// Node API address(es), `host:port` or URL; comma-separated or repeated, tried in turn.
    #[arg(
        long = "addr",
        env = "BENDER_ADDR",
        default_value = "127.0.0.1:1729",
        value_delimiter = ',',
        global = true
    )]
    pub addrs: Vec<String>,
    /// File holding the API token (its first line). BENDER_TOKEN may hold the token itself;
    /// tokens are never taken from the command line, where `ps` would show them
    /// [default: /etc/bender/tokens/admin, when readable and no --cert is given].
    #[arg(long, env = "BENDER_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate to verify an https:// node with (a private CA).
    #[arg(long, env = "BENDER_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for nodes that map client certificates to scopes (mTLS).
    #[arg(long = "cert", env = "BENDER_CERT", global = true)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long = "key", env = "BENDER_KEY", global = true)]
    pub key_file: Option<PathBuf>,
}

/// Where the CLI looks for a token when neither --token-file nor BENDER_TOKEN gives one: the
/// admin token the package generates (readable by root only).
pub const DEFAULT_TOKEN_FILE: &str = "/etc/bender/tokens/admin";

impl Connect {
    /// The credentials these flags and the environment name.
    pub fn credentials(&self) -> Result<crate::client::Credentials, String> {
        let token = match (&self.token_file, std::env::var("BENDER_TOKEN")) {
            (Some(path), _) => Some(crate::client::read_token_file(path)?),
            (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
            // A client certificate is a credential of its own: no default token beside it.
            _ if self.cert_file.is_some() => None,
            _ => {
                let default = std::path::Path::new(DEFAULT_TOKEN_FILE);
                crate::client::read_token_file(default).ok()
            }
        };
        Ok(crate::client::Credentials {
            token,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        })
    }
}

#[derive(Args)]
pub struct RenderArgs {
    /// Config file whose `[[template]]` blocks are rendered.
    #[arg(long, env = "BENDER_CONFIG")]
    pub config: PathBuf,
    /// Read the view from this JSON file (what `GET /v1/state` returns) instead of a node.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Write each rendered template to DIR/NAME instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Validate each rendered file with its check command (by default `haproxy -c -f`).
    #[arg(long)]
    pub check: bool,
    /// Only the template with this name.
    #[arg(long)]
    pub template: Option<String>,
    #[command(flatten)]
    pub connect: Connect,
}

#[derive(Args)]
pub struct OutputArgs {
    #[command(flatten)]
    pub connect: Connect,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Every load balancer's apply state (SYNCED, PENDING, STALE, ERROR), as this node sees it.
    #[arg(long)]
    pub fleet: bool,
}

/// How a switch is made and waited for.
#[derive(Args, Clone)]
pub struct SwitchWait {
    /// Switch even if the target has no live server (its traffic then fails).
    #[arg(long)]
    pub force: bool,
    /// Wait until every reachable load balancer runs the switch, printing progress.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits before it gives up (exit 1), naming the laggards.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub timeout: Duration,
}

#[derive(Args)]
pub struct InstanceArgs {
    #[command(flatten)]
    pub connect: Connect,
    pub app: String,
    pub version: String,
    pub host: String,
    pub port: u16,
}

#[derive(Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Lease TTL, e.g. "10s" [default: the node's default TTL].
    #[arg(long, value_parser = duration)]
    pub ttl: Option<Duration>,
    /// Metadata, KEY=VALUE; repeat for several (e.g. --meta weight=10 --meta zone=a).
    #[arg(long, value_parser = key_value)]
    pub meta: Vec<(String, String)>,
    /// Keep renewing at a third of the TTL until SIGTERM/SIGINT, then deregister.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ListWhat {
    Registrations,
    Backends,
    Frontends,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(value_enum, default_value = "registrations")]
    pub what: ListWhat,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Only this app (registrations).
    #[arg(long)]
    pub app: Option<String>,
    /// Only this version (registrations).
    #[arg(long)]
    pub version: Option<String>,
}

#[derive(Args)]
pub struct BackendArgs {
    #[command(subcommand)]
    pub action: BackendAction,
    #[command(flatten)]
    pub connect: Connect,
    /// Print the API's JSON instead of a sentence (create, update, switch) or lines (get).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Default)]
pub struct BackendFields {
    /// App served by the backend.
    #[arg(long)]
    pub app: Option<String>,
    /// Version of the app served (blue/green: switch it).
    #[arg(long)]
    pub version: Option<String>,
    /// Load-balancing algorithm.
    #[arg(long, value_parser = ["roundrobin", "static-rr", "leastconn", "first", "source", "random"])]
    pub balance: Option<String>,
    /// Proxy mode.
    #[arg(long, value_parser = ["http", "tcp"])]
    pub mode: Option<String>,
    /// Path of an HTTP health check (e.g. /health).
    #[arg(long)]
    pub health_path: Option<String>,
    /// Time between health checks, e.g. "2s".
    #[arg(long, value_parser = duration)]
    pub health_interval: Option<Duration>,
    /// Options appended to every server line (e.g. "maxconn 100").
    #[arg(long)]
    pub server_options: Option<String>,
    /// A line appended to the backend section (allow-listed directives); repeat for several.
    /// Given, the lines replace the current ones; --extra "" clears them.
    #[arg(long)]
    pub extra: Vec<String>,
}

#[derive(Subcommand)]
pub enum BackendAction {
    /// Show one backend.
    Get { name: String },
    /// Create a backend.
    Create {
        name: String,
        #[command(flatten)]
        fields: BackendFields,
    },
    /// Change some fields of a backend (the rest is kept).
    Update {
        name: String,
        #[command(flatten)]
        fields: BackendFields,
    },
    /// Point a backend at another version of its app, in one call (blue/green). Refused when
    /// that version has no live server, unless --force.
    Switch {
        name: String,
        /// The version to serve.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        wait: SwitchWait,
    },
    /// Delete a backend.
    Delete { name: String },
}

#[derive(Args, Default)]
pub struct FrontendFields {
    /// Backend served by default.
    #[arg(long)]
    pub backend: Option<String>,
    /// Bind address, e.g. "*:80".
    #[arg(long)]
    pub bind: Option<String>,
    /// Proxy mode.
    #[arg(long, value_parser = ["http", "tcp"])]
    pub mode: Option<String>,
    /// A routing rule, `host=NAME,path=/PREFIX,backend=NAME` (host, path or both); repeat for
    /// several, tried in order. Given, the rules replace the current ones; --rule "" clears them.
    #[arg(long, value_parser = rule)]
    pub rule: Vec<Option<serde_json::Value>>,
    /// A line appended to the frontend section (allow-listed directives); repeat for several.
    /// Given, the lines replace the current ones; --extra "" clears them.
    #[arg(long)]
    pub extra: Vec<String>,
}

#[derive(Args)]
pub struct FrontendArgs {
    #[command(subcommand)]
    pub action: FrontendAction,
    #[command(flatten)]
    pub connect: Connect,
    /// Print the API's JSON instead of a sentence (create, update, switch) or lines (get).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum FrontendAction {
    /// Show one frontend.
    Get { name: String },
    /// Create a frontend.
    Create {
        name: String,
        #[command(flatten)]
        fields: FrontendFields,
    },
    /// Change some fields of a frontend (the rest is kept).
    Update {
        name: String,
        #[command(flatten)]
        fields: FrontendFields,
    },
    /// Point a frontend at another backend, in one call (blue/green). Refused when that
    /// backend has no live server, unless --force.
    Switch {
        name: String,
        /// The backend to serve.
        #[arg(long)]
        backend: String,
        #[command(flatten)]
        wait: SwitchWait,
    },
    /// Delete a frontend.
    Delete { name: String },
}
