//! A small blocking client of a node's HTTP API, for the operator's CLI.

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
}

/// A client that tries each configured node in turn, as the 0.2.1 client rotated through servers.
pub struct Client {
    bases: Vec<String>,
    agent: ureq::Agent,
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
        let bases = addrs
            .iter()
            .flat_map(|a| a.split(','))
            .filter(|a| !a.trim().is_empty())
            .map(base_url)
            .collect();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Client { bases, agent }
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
        let builder = ureq::http::Request::builder().method(method).uri(&url);
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
