//! The wire format of the registry: one small gossip key/value per record, decoded tolerantly
//! (fields a newer version adds are ignored here and kept in the stored bytes) and checked like
//! client input before anything is joined.
//!
//! - `r:app/version/host/port` -> a lease `{s: stamp, d: deadline_ms, t: ttl_ms, m: meta}`;
//! - `b:name` / `f:name` -> an entity version `{s: stamp, v: value | null}` (null = deleted).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::LiveRegistration;
use crate::hlc::Stamp;
use crate::model::{Backend, Frontend, RegKey};

pub const LEASE_PREFIX: &str = "r:";
pub const BACKEND_PREFIX: &str = "b:";
pub const FRONTEND_PREFIX: &str = "f:";

/// Orders records: the HLC stamp, then a digest of the encoded value as a last tie-break.
pub type Marker = (Stamp, u64);

/// One renewal (or deregistration) of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(rename = "s")]
    pub stamp: Stamp,
    /// Wall-clock instant (ms since epoch) after which this lease is no longer live.
    #[serde(rename = "d")]
    pub deadline_ms: u64,
    /// The TTL the client asked for; 0 marks an explicit deregistration.
    #[serde(rename = "t")]
    pub ttl_ms: u64,
    #[serde(rename = "m", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl Lease {
    /// Live until its deadline; an explicit deregistration (`ttl_ms == 0`) never is, whatever
    /// the clock of the node that reads it says.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.is_deregistration() && self.deadline_ms > now_ms
    }

    /// Whether this is an explicit deregistration rather than a renewal.
    pub fn is_deregistration(&self) -> bool {
        self.ttl_ms == 0
    }

    /// Whether `next` only moves this lease's deadline later: both are renewals with the same
    /// TTL and meta. (What the view, its change log and deferred renewals all ask.)
    pub fn extended_by(&self, next: &Lease) -> bool {
        !self.is_deregistration()
            && !next.is_deregistration()
            && self.ttl_ms == next.ttl_ms
            && self.meta == next.meta
            && next.deadline_ms >= self.deadline_ms
    }

    /// This lease as the view shows it, for registration `key`.
    pub fn live_registration(&self, key: &RegKey) -> LiveRegistration {
        LiveRegistration {
            key: key.clone(),
            registered_ms: self.deadline_ms.saturating_sub(self.ttl_ms),
            deadline_ms: self.deadline_ms,
            ttl_ms: self.ttl_ms,
            meta: self.meta.clone(),
        }
    }
}

/// One version of an entity: a value, or `None` for a deletion (tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    #[serde(rename = "s")]
    pub stamp: Stamp,
    #[serde(rename = "v")]
    pub value: Option<T>,
}

/// A decoded gossip record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Lease(RegKey, Lease),
    Backend(String, Versioned<Backend>),
    Frontend(String, Versioned<Frontend>),
}

impl Record {
    pub fn stamp(&self) -> &Stamp {
        match self {
            Record::Lease(_, l) => &l.stamp,
            Record::Backend(_, v) => &v.stamp,
            Record::Frontend(_, v) => &v.stamp,
        }
    }
}

/// Why a gossip record could not be decoded (a peer running an incompatible version, say).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("malformed key {0:?}")]
    BadKey(String),
    #[error("malformed value for key {key:?}: {source}")]
    BadValue {
        key: String,
        source: serde_json::Error,
    },
    /// Well-formed, but a value no client could have written (checked like client input).
    #[error("invalid value for key {key:?}: {reason}")]
    Invalid { key: String, reason: String },
}

/// FNV-1a, a stable digest for the join's tie-break (std's hasher is not guaranteed stable).
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn encode_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("registry records always serialize")
}

pub fn lease_key(key: &RegKey) -> String {
    format!(
        "{LEASE_PREFIX}{}/{}/{}/{}",
        key.app, key.version, key.host, key.port
    )
}

pub fn backend_key(name: &str) -> String {
    format!("{BACKEND_PREFIX}{name}")
}

pub fn frontend_key(name: &str) -> String {
    format!("{FRONTEND_PREFIX}{name}")
}

/// Encodes a lease as a gossip key/value.
pub fn encode_lease(key: &RegKey, lease: &Lease) -> (String, String) {
    (lease_key(key), encode_json(lease))
}

pub fn encode_backend(name: &str, v: &Versioned<Backend>) -> (String, String) {
    (backend_key(name), encode_json(v))
}

pub fn encode_frontend(name: &str, v: &Versioned<Frontend>) -> (String, String) {
    (frontend_key(name), encode_json(v))
}

/// Encodes any record.
pub fn encode(record: &Record) -> (String, String) {
    match record {
        Record::Lease(k, l) => encode_lease(k, l),
        Record::Backend(n, v) => encode_backend(n, v),
        Record::Frontend(n, v) => encode_frontend(n, v),
    }
}

fn parse_value<T: DeserializeOwned>(key: &str, value: &str) -> Result<T, CodecError> {
    serde_json::from_str(value).map_err(|source| CodecError::BadValue {
        key: key.to_string(),
        source,
    })
}

/// Whether a gossip key belongs to the registry at all (other keys: node metadata).
pub fn is_registry_key(key: &str) -> bool {
    key.starts_with(LEASE_PREFIX)
        || key.starts_with(BACKEND_PREFIX)
        || key.starts_with(FRONTEND_PREFIX)
}

/// The registration a lease key names, if it is a well-formed lease key.
pub fn parse_lease_key(key: &str) -> Option<RegKey> {
    let rest = key.strip_prefix(LEASE_PREFIX)?;
    let mut parts = rest.splitn(4, '/');
    let (app, version, host, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    RegKey::new(app, version, host, port.parse().ok()?).ok()
}

/// Decodes a gossip key/value into a record.
pub fn decode(key: &str, value: &str) -> Result<Record, CodecError> {
    if key.starts_with(LEASE_PREFIX) {
        let reg = parse_lease_key(key).ok_or_else(|| CodecError::BadKey(key.to_string()))?;
        return Ok(Record::Lease(reg, parse_value(key, value)?));
    }
    if let Some(name) = key.strip_prefix(BACKEND_PREFIX) {
        return Ok(Record::Backend(name.to_string(), parse_value(key, value)?));
    }
    if let Some(name) = key.strip_prefix(FRONTEND_PREFIX) {
        return Ok(Record::Frontend(name.to_string(), parse_value(key, value)?));
    }
    Err(CodecError::UnknownKey(key.to_string()))
}

/// Decodes a gossip record and checks it as the API checks what clients send: names, meta,
/// and the structure of free-form lines (one line, no section keyword). A peer may run another
/// version or be hostile; what fails is refused, never joined. (Whether free-form lines pass
/// this node's allow-list is the render stage's decision.)
pub fn decode_checked(key: &str, value: &str) -> Result<Record, CodecError> {
    let invalid = |reason: String| CodecError::Invalid {
        key: key.chars().take(128).collect(),
        reason,
    };
    let record = decode(key, value)?;
    match &record {
        Record::Lease(_, lease) => {
            crate::model::validate_meta(&lease.meta).map_err(|e| invalid(e.to_string()))?
        }
        Record::Backend(name, v) => {
            crate::model::validate_name("name", name).map_err(|e| invalid(e.to_string()))?;
            if let Some(b) = &v.value {
                if &b.name != name {
                    return Err(invalid(format!(
                        "its name {:?} differs from its key",
                        b.name
                    )));
                }
                b.validate(crate::model::Snippets::Raw)
                    .map_err(|e| invalid(e.to_string()))?;
            }
        }
        Record::Frontend(name, v) => {
            crate::model::validate_name("name", name).map_err(|e| invalid(e.to_string()))?;
            if let Some(f) = &v.value {
                if &f.name != name {
                    return Err(invalid(format!(
                        "its name {:?} differs from its key",
                        f.name
                    )));
                }
                f.validate(crate::model::Snippets::Raw)
                    .map_err(|e| invalid(e.to_string()))?;
            }
        }
    }
    Ok(record)
}
