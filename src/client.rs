//! A small blocking client of a node's HTTP API, for the operator's CLI: tries each node in
//! turn, sends a bearer token, and speaks TLS (with a private CA, and a client certificate for
//! mTLS) to `https://` addresses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach bender at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from {addr}: {message}")]
    Decode { addr: String, message: String },
    /// A credential or CA file the flags name cannot be used.
    #[error("{0}")]
    Setup(String),
    /// The command line asks for something that cannot be done (found before sending).
    #[error("{0}")]
    Usage(String),
    /// What the command waited for did not happen in time.
    #[error("{0}")]
    TimedOut(String),
}

/// How the client proves who it is, and whom it trusts.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The bearer token sent with every request.
    pub token: Option<String>,
    /// PEM CA certificate(s) to verify the node's certificate with (default: the public roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for nodes that map client certificates to scopes.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Reads a token file: the first line that is neither blank nor a `#` comment.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .ok_or_else(|| format!("token file {} holds no token", path.display()))
}

fn tls_config(c: &Credentials) -> Result<ureq::tls::TlsConfig, String> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let certs_of = |p: &Path| -> Result<Vec<Certificate<'static>>, String> {
        let pem = read(p)?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", p.display()));
        }
        Ok(certs)
    };
    let mut builder = TlsConfig::builder();
    if let Some(ca) = &c.ca_file {
        builder = builder.root_certs(RootCerts::Specific(Arc::new(certs_of(ca)?)));
    }
    match (&c.cert_file, &c.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs_of(cert)?;
            let key = PrivateKey::from_pem(&read(key)?)
                .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        _ => return Err("a client certificate needs both --cert and --key".into()),
    }
    Ok(builder.build())
}

/// A client that tries each configured node in turn, as the 0.2.1 client rotated through servers.
pub struct Client {
    bases: Vec<String>,
    agent: ureq::Agent,
    authorization: Option<String>,
}

fn base_url(addr: &str) -> String {
    let addr = addr.trim().trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    /// `addrs`: one or more `host:port` or URLs (comma-separated entries are split too).
    pub fn new(addrs: &[String]) -> Self {
        Self::with_credentials(addrs, &Credentials::default())
            .expect("no files to read without credentials")
    }

    /// A client that authenticates as `c` says. Fails when a file it names cannot be used.
    pub fn with_credentials(addrs: &[String], c: &Credentials) -> Result<Self, String> {
        let bases = addrs
            .iter()
            .flat_map(|a| a.split(','))
            .filter(|a| !a.trim().is_empty())
            .map(base_url)
            .collect();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .tls_config(tls_config(c)?)
            .build()
            .into();
        Ok(Client {
            bases,
            agent,
            authorization: c.token.as_ref().map(|t| format!("Bearer {t}")),
        })
    }

    /// Sends a request to the first node that answers; returns the JSON body (Null if empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut last = None;
        for base in &self.bases {
            match self.call_one(base, method, path, body) {
                Err(e @ ClientError::Unreachable { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(ClientError::Unreachable {
            addr: "(none)".into(),
            message: "no node address given".into(),
        }))
    }

    fn call_one(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{base}{path}");
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
            addr: base.to_string(),
            message: e.to_string(),
        };
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(a) = &self.authorization {
            builder = builder.header("authorization", a);
        }
        let result = match body {
            Some(b) => {
                let req = builder
                    .header("content-type", "application/json")
                    .body(b.to_string())
                    .map_err(|e| unreachable(&e))?;
                self.agent.run(req)
            }
            None => {
                let req = builder.body(()).map_err(|e| unreachable(&e))?;
                self.agent.run(req)
            }
        };
        let mut resp = result.map_err(|e| unreachable(&e))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::Decode {
                addr: base.to_string(),
                message: e.to_string(),
            })?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| ClientError::Decode {
                addr: base.to_string(),
                message: format!("{e}: {text}"),
            })?
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(ClientError::Api {
                status,
                code: value["code"].as_str().unwrap_or("UNKNOWN").to_string(),
                message: value["message"]
                    .as_str()
                    .unwrap_or("no message")
                    .to_string(),
            })
        }
    }
}
