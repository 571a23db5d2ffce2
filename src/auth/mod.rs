//! Who may use the API, and for what.
//!
//! Every route needs a scope: `read` (listings, events, status, metrics), `register` (app
//! servers: register, renew, deregister) or `admin` (everything, frontends and backends
//! included); `/health` and `/ready` need none. A caller proves a scope with a bearer token read
//! from a file the config names, or with a TLS client certificate the config maps to a scope.
//! The config may also open `read` to some networks, and the old unauthenticated registration
//! route to others (compatibility with bender 0.2.1 clients). A node with no credentials
//! configured at all lets only clients on its own host (loopback) in.
//!
//! The decisions are pure functions of the [`Guard`] and what a request presents; the guard is
//! built from the config (reading the token files) at start and on every SIGHUP.

pub mod browser;
mod cert;
pub mod policy;
mod tokens;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use rustls::pki_types::ServerName;
use serde::Deserialize;

pub use cert::ClientCert;
pub use policy::{Policy, RegistrationConfig, Requester};

/// What a credential lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Register,
    Admin,
}

impl Scope {
    /// Whether a credential of this scope may use a route that needs `need`. `admin` may do
    /// everything; `read` and `register` only what they name.
    pub fn grants(self, need: Scope) -> bool {
        self == Scope::Admin || self == need
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Register => "register",
            Scope::Admin => "admin",
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: `/health`, `/ready`.
    Open,
    Scope(Scope),
}

/// `[[auth.token]]`: a named credential whose tokens are the lines of a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub scope: Scope,
    pub file: PathBuf,
}

/// `[[auth.client_cert]]`: client certificates (verified against `api.tls.client_ca`) that are
/// valid for `san` (a DNS name or an IP address, or "*" for any certificate the CA signed) get
/// `scope`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    pub name: String,
    pub scope: Scope,
    pub san: String,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
    #[serde(default, rename = "client_cert")]
    pub client_certs: Vec<ClientCertConfig>,
    /// Networks whose clients may use `read` routes with no credential (a Prometheus server,
    /// say).
    #[serde(default)]
    pub open_read_from: Vec<IpNet>,
}

/// `[compat]`: letting bender 0.2.1 clients, which send no token, keep registering.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompatConfig {
    /// Networks whose clients may use `POST /registrations/:app/:version/:host/:port` with no
    /// credential (as `register`, under the registration policy). Empty: none.
    #[serde(default)]
    pub unauthenticated_register_from: Vec<IpNet>,
}

/// How a caller got its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Token,
    Certificate,
    /// A client on this host, on a node with no credentials configured.
    Loopback,
    /// `auth.open_read_from`.
    OpenRead,
    /// `compat.unauthenticated_register_from`.
    Compat,
    /// A route that needs nothing.
    Open,
}

/// Who is calling, as far as the API is concerned.
#[derive(Debug, Clone)]
pub struct Caller {
    pub addr: IpAddr,
    /// The credential's name (`[[auth.token]]` or `[[auth.client_cert]]`), if it showed one.
    pub credential: Option<Arc<str>>,
    /// The scope granted; `None` on open routes.
    pub scope: Option<Scope>,
    pub via: Via,
    pub cert: Option<ClientCert>,
}

impl Caller {
    /// Admin by a credential it presented (a token or a certificate), not by where it is.
    pub fn is_credentialed_admin(&self) -> bool {
        self.scope == Some(Scope::Admin) && matches!(self.via, Via::Token | Via::Certificate)
    }
}

/// Why a request was refused: 401 (no valid credential) or 403 (not enough).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unauthenticated(String),
    Forbidden(String),
}

/// What a request presents.
pub struct Presented<'a> {
    pub addr: IpAddr,
    /// The `Authorization` header, if any (raw bytes: it may not even be ASCII).
    pub authorization: Option<&'a [u8]>,
    pub cert: Option<&'a ClientCert>,
}

struct Credential {
    name: Arc<str>,
    scope: Scope,
}

struct CertRule {
    credential: usize,
    san: String,
}

/// The loaded credentials and rules.
pub struct Guard {
    credentials: Vec<Credential>,
    tokens: Vec<(tokens::Digest, usize)>,
    certs: Vec<CertRule>,
    open_read_from: Vec<IpNet>,
    compat_from: Vec<IpNet>,
    /// No credential is configured: only loopback clients get in (as admin).
    loopback_only: bool,
    policy: Policy,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("credentials", &self.credentials.len())
            .field("tokens", &self.tokens.len())
            .field("loopback_only", &self.loopback_only)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Reads the token files and checks every rule. Errors name the key (and the file).
    pub fn load(
        auth: &AuthConfig,
        registration: &RegistrationConfig,
        compat: &CompatConfig,
        client_ca: bool,
    ) -> Result<Guard, String> {
        let mut credentials = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        let mut token_digests = Vec::new();
        for t in &auth.tokens {
            check_credential_name("auth.token", &t.name)?;
            if !names.insert(t.name.clone()) {
                return Err(format!(
                    "auth.token {:?}: the name is used by another credential",
                    t.name
                ));
            }
            let digests =
                tokens::read_file(&t.file).map_err(|e| format!("auth.token {:?}: {e}", t.name))?;
            let idx = credentials.len();
            credentials.push(Credential {
                name: t.name.as_str().into(),
                scope: t.scope,
            });
            for d in digests {
                if let Some(&(_, other)) = token_digests.iter().find(|(x, _)| *x == d) {
                    let other: &Credential = &credentials[other];
                    return Err(format!(
                        "auth.token {:?}: a token in {} is also a token of {:?}; each token must belong to one credential",
                        t.name,
                        t.file.display(),
                        other.name
                    ));
                }
                token_digests.push((d, idx));
            }
        }
        let mut certs = Vec::new();
        for c in &auth.client_certs {
            check_credential_name("auth.client_cert", &c.name)?;
            if !names.insert(c.name.clone()) {
                return Err(format!(
                    "auth.client_cert {:?}: the name is used by another credential",
                    c.name
                ));
            }
            if !client_ca {
                return Err(format!(
                    "auth.client_cert {:?}: needs api.tls.client_ca, the CA that signs client certificates",
                    c.name
                ));
            }
            if c.san != "*"
                && (c.san.contains('*') || ServerName::try_from(c.san.as_str()).is_err())
            {
                return Err(format!(
                    "auth.client_cert {:?}: san = {:?} must be a DNS name or an IP address (matched exactly), or \"*\"",
                    c.name, c.san
                ));
            }
            let idx = credentials.len();
            credentials.push(Credential {
                name: c.name.as_str().into(),
                scope: c.scope,
            });
            certs.push(CertRule {
                credential: idx,
                san: c.san.clone(),
            });
        }
        let all_names: Vec<&str> = names.iter().map(String::as_str).collect();
        let policy = Policy::new(registration, &all_names)?;
        Ok(Guard {
            loopback_only: credentials.is_empty(),
            credentials,
            tokens: token_digests,
            certs,
            open_read_from: auth.open_read_from.clone(),
            compat_from: compat.unauthenticated_register_from.clone(),
            policy,
        })
    }

    /// True when no credential is configured, so that only loopback clients get in.
    pub fn loopback_only(&self) -> bool {
        self.loopback_only
    }

    /// The credential a certificate maps to: among the `[[auth.client_cert]]` entries whose
    /// `san` it names exactly, the one with the least scope (so that a certificate with many
    /// names never gets more than its weakest mapping); failing that, the first `san = "*"`.
    fn certificate(&self, cert: &ClientCert) -> Option<usize> {
        self.certs
            .iter()
            .filter(|c| c.san != "*" && cert.names(&c.san))
            .min_by_key(|c| self.credentials[c.credential].scope)
            .or_else(|| self.certs.iter().find(|c| c.san == "*"))
            .map(|c| c.credential)
    }

    /// Decides whether a request that presents `p` may use a route that needs `need`.
    /// `compat_register` marks the 0.2.1 registration route, which `[compat]` may open.
    pub fn authorize(
        &self,
        p: &Presented<'_>,
        need: Need,
        compat_register: bool,
    ) -> Result<Caller, Denied> {
        let addr = p.addr.to_canonical();
        let caller = |credential: Option<Arc<str>>, scope: Option<Scope>, via: Via| Caller {
            addr,
            credential,
            scope,
            via,
            // The certificate speaks for the caller only when it is what let it in: an
            // unmapped certificate on an open or compat route must not widen what the
            // registration policy lets that caller claim as its own.
            cert: if via == Via::Certificate {
                p.cert.cloned()
            } else {
                None
            },
        };
        let Need::Scope(need) = need else {
            return Ok(caller(None, None, Via::Open));
        };
        let grant = |idx: usize, via: Via| {
            let c = &self.credentials[idx];
            if c.scope.grants(need) {
                Ok(caller(Some(c.name.clone()), Some(c.scope), via))
            } else {
                Err(Denied::Forbidden(format!(
                    "credential {:?} has scope {}; this route needs {}",
                    c.name,
                    c.scope.name(),
                    need.name()
                )))
            }
        };
        if let Some(header) = p.authorization {
            let token = bearer(header).ok_or_else(|| {
                Denied::Unauthenticated(
                    "the Authorization header must be \"Bearer <token>\"".into(),
                )
            })?;
            return match tokens::find(&self.tokens, token) {
                Some(idx) => grant(idx, Via::Token),
                None => Err(Denied::Unauthenticated(
                    "the token is not valid on this node (unknown or revoked)".into(),
                )),
            };
        }
        let mapped = p.cert.and_then(|c| self.certificate(c));
        if let Some(idx) = mapped {
            return grant(idx, Via::Certificate);
        }
        if self.loopback_only && addr.is_loopback() {
            return Ok(caller(None, Some(Scope::Admin), Via::Loopback));
        }
        if need == Scope::Read && self.open_read_from.iter().any(|n| n.contains(&addr)) {
            return Ok(caller(None, Some(Scope::Read), Via::OpenRead));
        }
        if compat_register
            && need == Scope::Register
            && self.compat_from.iter().any(|n| n.contains(&addr))
        {
            return Ok(caller(None, Some(Scope::Register), Via::Compat));
        }
        if p.cert.is_some() {
            return Err(Denied::Forbidden(format!(
                "the client certificate maps to no [[auth.client_cert]] entry, and this route needs {}",
                need.name()
            )));
        }
        if self.loopback_only {
            return Err(Denied::Unauthenticated(
                "this node has no API credentials configured, so only clients on its own host may use the API; configure [[auth.token]] (see docs/security.md)".into(),
            ));
        }
        Err(Denied::Unauthenticated(format!(
            "this route needs a credential with scope {}: send \"Authorization: Bearer <token>\"",
            need.name()
        )))
    }

    /// Whether `caller` may register (or deregister) `host` for `app`. Admins may do anything.
    pub fn check_registration(
        &self,
        caller: &Caller,
        app: &str,
        host: &str,
    ) -> Result<(), policy::Refusal> {
        if caller.scope == Some(Scope::Admin) {
            return Ok(());
        }
        let cert = caller.cert.clone();
        let valid = move |name: &str| cert.as_ref().is_some_and(|c| c.names(name));
        let who = Requester {
            addr: caller.addr,
            credential: caller.credential.as_deref(),
            cert_names: caller
                .cert
                .as_ref()
                .map(|_| &valid as &dyn Fn(&str) -> bool),
        };
        self.policy.check(&who, app, host)
    }
}

fn check_credential_name(key: &str, name: &str) -> Result<(), String> {
    crate::model::validate_name("name", name).map_err(|e| format!("{key} {name:?}: {e}"))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    tokens::well_formed(token).then_some(token)
}

#[cfg(test)]
mod tests;
