//! The `[api]` table: connection hygiene (timeouts, caps), TLS, and whether raw config
//! snippets are accepted.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Longest a client may take to send a request's headers, and longest a keep-alive
    /// connection may wait idle for its next request.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body.
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// A connection on which nothing moves in either direction for this long is closed
    /// (a client that stopped reading its answer, say). Event streams send a keep-alive every
    /// 15 s: keep this longer, or idle event streams are closed too.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections open at once; past it a new connection gets 503 and is closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections open at once from one client address; past it, 429.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Accept raw HAProxy lines in `extra` and `server_options` (beyond the allow-list) from
    /// admin credentials. Off by default: see docs/security.md before turning it on.
    #[serde(default)]
    pub config_snippets: bool,
    /// Serve the API over TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[api.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificate(s) that sign client certificates: enables mTLS, with the certificates
    /// mapped to scopes by `[[auth.client_cert]]`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Refuse the TLS handshake of a client without a certificate (needs `client_ca`).
    #[serde(default)]
    pub require_client_cert: bool,
    /// PEM certificate revocation list(s) of the client CA: a revoked client certificate is
    /// refused at the handshake. Re-read on SIGHUP, like the rest (needs `client_ca`).
    #[serde(default)]
    pub client_crl: Option<PathBuf>,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    16_384
}
fn default_max_connections_per_client() -> usize {
    512
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            config_snippets: false,
            tls: None,
        }
    }
}

impl ApiConfig {
    /// Checks every value; the error names the key and what is valid.
    pub fn validate(&self) -> Result<(), (&'static str, String, String)> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        for (key, value, min) in [
            (
                "api.header_read_timeout",
                self.header_read_timeout,
                Duration::from_millis(100),
            ),
            (
                "api.body_read_timeout",
                self.body_read_timeout,
                Duration::from_millis(100),
            ),
            (
                "api.idle_timeout",
                self.idle_timeout,
                Duration::from_secs(1),
            ),
        ] {
            if value < min || value > Duration::from_secs(3600) {
                return Err((key, fmt(value), format!("between {} and 1h", fmt(min))));
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err((
                "api.max_connections",
                self.max_connections.to_string(),
                "between 1 and 1000000".into(),
            ));
        }
        if self.max_connections_per_client == 0
            || self.max_connections_per_client > self.max_connections
        {
            return Err((
                "api.max_connections_per_client",
                self.max_connections_per_client.to_string(),
                format!(
                    "between 1 and api.max_connections ({})",
                    self.max_connections
                ),
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.require_client_cert && tls.client_ca.is_none() {
                return Err((
                    "api.tls.require_client_cert",
                    "true".into(),
                    "needs api.tls.client_ca, the CA that signs client certificates".into(),
                ));
            }
        }
        Ok(())
    }
}
