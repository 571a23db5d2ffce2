//! The registry core: the CRDT that every node's gossip keyspace is joined into, its wire codec,
//! and the live view computed from it. This module does no I/O and takes time as a parameter.
//!
//! Every record is one small gossip key/value:
//! - `r:app/version/host/port` -> a lease `{s: stamp, d: deadline_ms, t: ttl_ms, m: meta}`;
//! - `b:name` / `f:name` -> an entity version `{s: stamp, v: value | null}` (null = deleted).
//!
//! The registry is a map of last-writer-wins registers (crdts' `LWWReg`) keyed by those keys, with
//! the HLC stamp as marker. The join keeps, per key, the record with the greatest marker; the
//! marker ends with a digest of the encoded value so that even two different values carrying the
//! same stamp (which the HLC never issues) would join deterministically. Leases also carry the
//! greatest deadline of any copy seen (a max-register), which garbage collection needs.
//!
//! Liveness is a pure function of this state and the clock: a registration is live iff the
//! deadline of its greatest-stamped lease is in the future.

use std::collections::BTreeMap;

use crdts::{CvRDT, LWWReg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.deadline_ms > now_ms
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

/// A lease register plus the greatest deadline of any copy joined into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSlot {
    pub reg: LWWReg<Lease, Marker>,
    /// Max-register over every copy's deadline: a copy with an older stamp could otherwise
    /// become the winner again if the newest copy were garbage-collected too early.
    pub max_deadline_ms: u64,
}

impl LeaseSlot {
    fn merge(&mut self, other: LeaseSlot) {
        self.max_deadline_ms = self.max_deadline_ms.max(other.max_deadline_ms);
        self.reg.merge(other.reg);
    }
}

/// The replicated registry state: a join-semilattice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub leases: BTreeMap<RegKey, LeaseSlot>,
    pub backends: BTreeMap<String, LWWReg<Versioned<Backend>, Marker>>,
    pub frontends: BTreeMap<String, LWWReg<Versioned<Frontend>, Marker>>,
}

fn join_map<K: Ord, V, F: Fn(&mut V, V)>(into: &mut BTreeMap<K, V>, from: BTreeMap<K, V>, f: F) {
    for (k, v) in from {
        match into.entry(k) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(v);
            }
            std::collections::btree_map::Entry::Occupied(mut e) => f(e.get_mut(), v),
        }
    }
}

fn insert_reg<V: PartialEq>(
    map: &mut BTreeMap<String, LWWReg<V, Marker>>,
    name: String,
    val: V,
    marker: Marker,
) {
    match map.entry(name) {
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(LWWReg { val, marker });
        }
        std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().update(val, marker),
    }
}

impl Registry {
    /// Joins one encoded record into the registry.
    pub fn insert_encoded(&mut self, key: &str, value: &str) -> Result<(), CodecError> {
        let record = decode(key, value)?;
        self.insert(record, digest(value.as_bytes()));
        Ok(())
    }

    /// Joins one record (whose encoded value has digest `value_digest`) into the registry.
    /// Equivalent to merging a registry holding only that record, without building one.
    pub fn insert(&mut self, record: Record, value_digest: u64) {
        use std::collections::btree_map::Entry;
        match record {
            Record::Lease(k, lease) => {
                let marker = (lease.stamp.clone(), value_digest);
                let deadline = lease.deadline_ms;
                match self.leases.entry(k) {
                    Entry::Vacant(e) => {
                        e.insert(LeaseSlot {
                            reg: LWWReg { val: lease, marker },
                            max_deadline_ms: deadline,
                        });
                    }
                    Entry::Occupied(mut e) => {
                        let slot = e.get_mut();
                        slot.max_deadline_ms = slot.max_deadline_ms.max(deadline);
                        slot.reg.update(lease, marker);
                    }
                }
            }
            Record::Backend(n, v) => {
                let marker = (v.stamp.clone(), value_digest);
                insert_reg(&mut self.backends, n, v, marker);
            }
            Record::Frontend(n, v) => {
                let marker = (v.stamp.clone(), value_digest);
                insert_reg(&mut self.frontends, n, v, marker);
            }
        }
    }

    /// Whether joining `record` could change the view at `now_ms`. A renewal of a registration
    /// that is live, with the same TTL and meta, cannot (only its deadline moves), nor can a
    /// record that loses the join; anything else may.
    pub fn changes_view(&self, record: &Record, now_ms: u64) -> bool {
        match record {
            Record::Lease(k, lease) => match self.leases.get(k) {
                None => lease.is_live(now_ms),
                Some(slot) => {
                    let cur = &slot.reg.val;
                    if lease.stamp <= cur.stamp {
                        return false;
                    }
                    !(cur.is_live(now_ms)
                        && lease.is_live(now_ms)
                        && cur.ttl_ms == lease.ttl_ms
                        && cur.meta == lease.meta)
                }
            },
            _ => true,
        }
    }

    /// The CRDT join: commutative, associative and idempotent.
    pub fn merge(&mut self, other: Registry) {
        join_map(&mut self.leases, other.leases, LeaseSlot::merge);
        join_map(&mut self.backends, other.backends, |a, b| a.merge(b));
        join_map(&mut self.frontends, other.frontends, |a, b| a.merge(b));
    }

    /// How many leases of `app` the registry holds (live or not yet collected).
    pub fn leases_of_app(&self, app: &str) -> usize {
        let from = RegKey {
            app: app.to_string(),
            version: String::new(),
            host: String::new(),
            port: 0,
        };
        self.leases
            .range(from..)
            .take_while(|(k, _)| k.app == app)
            .count()
    }

    /// The greatest stamp anywhere in the registry (the HLC observes it).
    pub fn max_stamp(&self) -> Option<&Stamp> {
        let l = self.leases.values().map(|s| &s.reg.marker.0);
        let b = self.backends.values().map(|r| &r.marker.0);
        let f = self.frontends.values().map(|r| &r.marker.0);
        l.chain(b).chain(f).max()
    }

    /// What is live at `now_ms`.
    pub fn view(&self, now_ms: u64) -> View {
        let registrations = self
            .leases
            .iter()
            .filter(|(_, slot)| slot.reg.val.is_live(now_ms))
            .map(|(k, slot)| (k.clone(), slot.reg.val.live_registration(k)))
            .collect();
        let backends = self
            .backends
            .iter()
            .filter_map(|(n, r)| Some((n.clone(), r.val.value.clone()?)))
            .collect();
        let frontends = self
            .frontends
            .iter()
            .filter_map(|(n, r)| Some((n.clone(), r.val.value.clone()?)))
            .collect();
        View {
            registrations,
            backends,
            frontends,
        }
    }

    /// The earliest deadline after `now_ms` of a winning lease: when the view next changes on
    /// its own, with no write at all.
    pub fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        self.leases
            .values()
            .map(|s| s.reg.val.deadline_ms)
            .filter(|d| *d > now_ms)
            .min()
    }
}

/// A live registration as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRegistration {
    pub key: RegKey,
    /// When the latest renewal happened (deadline - ttl).
    pub registered_ms: u64,
    pub deadline_ms: u64,
    pub ttl_ms: u64,
    pub meta: BTreeMap<String, String>,
}

/// What a node serves: live registrations and current entities, in sorted order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub registrations: BTreeMap<RegKey, LiveRegistration>,
    pub backends: BTreeMap<String, Backend>,
    pub frontends: BTreeMap<String, Frontend>,
}

impl View {
    /// Live registrations of app@version, sorted by (host, port).
    pub fn servers_of<'a>(
        &'a self,
        app: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a LiveRegistration> + 'a {
        self.registrations
            .values()
            .filter(move |r| r.key.app == app && r.key.version == version)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Balance, Mode};
    use proptest::prelude::*;

    pub fn backend(name: &str, version: &str) -> Backend {
        Backend {
            name: name.into(),
            app: "app".into(),
            version: version.into(),
            balance: Balance::Roundrobin,
            mode: Mode::Http,
            health_check: None,
            server_options: None,
            extra: vec![],
        }
    }

    fn reg(host: &str, port: u16) -> RegKey {
        RegKey::new("app", "v1", host, port).unwrap()
    }

    fn lease(ms: u64, logical: u32, node: &str, deadline: u64) -> Lease {
        Lease {
            stamp: Stamp(ms, logical, node.into()),
            deadline_ms: deadline,
            ttl_ms: deadline.saturating_sub(ms),
            meta: BTreeMap::new(),
        }
    }

    fn from_records(records: &[Record]) -> Registry {
        let mut r = Registry::default();
        for rec in records {
            let (k, v) = encode(rec);
            r.insert_encoded(&k, &v).unwrap();
        }
        r
    }

    #[test]
    fn codec_round_trips() {
        let rec = Record::Lease(reg("10.0.0.1", 80), lease(1, 0, "a", 5));
        let (k, v) = encode(&rec);
        assert_eq!(k, "r:app/v1/10.0.0.1/80");
        assert_eq!(decode(&k, &v).unwrap(), rec);
        let rec = Record::Backend(
            "web".into(),
            Versioned {
                stamp: Stamp(1, 2, "n".into()),
                value: Some(backend("web", "v1")),
            },
        );
        let (k, v) = encode(&rec);
        assert_eq!(decode(&k, &v).unwrap(), rec);
        let v6 = Record::Lease(reg("::1", 8080), lease(1, 0, "a", 5));
        let (k, v) = encode(&v6);
        assert_eq!(decode(&k, &v).unwrap(), v6);
        assert!(decode("r:a/b", "{}").is_err());
        assert!(decode("x:y", "{}").is_err());
        assert!(decode("b:web", "not json").is_err());
    }

    #[test]
    fn the_latest_stamp_wins_even_with_a_shorter_ttl() {
        let r = from_records(&[
            Record::Lease(reg("h", 1), lease(100, 0, "a", 10_000)),
            Record::Lease(reg("h", 1), lease(200, 0, "b", 300)),
        ]);
        assert_eq!(r.view(250).registrations.len(), 1);
        assert!(r.view(300).registrations.is_empty());
        assert_eq!(r.leases[&reg("h", 1)].max_deadline_ms, 10_000);
    }

    #[test]
    fn a_delete_never_loses_to_an_older_write_and_never_removes_a_newer_one() {
        let older = Record::Backend(
            "web".into(),
            Versioned {
                stamp: Stamp(1, 0, "a".into()),
                value: Some(backend("web", "v1")),
            },
        );
        let delete = Record::Backend(
            "web".into(),
            Versioned {
                stamp: Stamp(2, 0, "b".into()),
                value: None,
            },
        );
        let newer = Record::Backend(
            "web".into(),
            Versioned {
                stamp: Stamp(3, 0, "a".into()),
                value: Some(backend("web", "v2")),
            },
        );
        let r = from_records(&[delete.clone(), older.clone()]);
        assert!(r.view(0).backends.is_empty());
        let r = from_records(&[newer, delete, older]);
        assert_eq!(r.view(0).backends["web"].version, "v2");
    }

    #[test]
    fn only_records_that_can_change_the_view_say_so() {
        let r = from_records(&[Record::Lease(reg("h", 1), lease(100, 0, "a", 1_000))]);
        // A renewal of a live registration (same TTL): only the deadline moves.
        assert!(!r.changes_view(&Record::Lease(reg("h", 1), lease(200, 0, "b", 1_100)), 150));
        // An older copy loses the join.
        assert!(!r.changes_view(&Record::Lease(reg("h", 1), lease(50, 0, "b", 9_000)), 150));
        // A deregistration, a comeback after expiry, a new key, a TTL change: all may.
        assert!(r.changes_view(&Record::Lease(reg("h", 1), lease(200, 0, "b", 200)), 250));
        assert!(r.changes_view(
            &Record::Lease(reg("h", 1), lease(1_500, 0, "b", 3_000)),
            1_500
        ));
        assert!(r.changes_view(&Record::Lease(reg("h", 2), lease(200, 0, "b", 2_000)), 150));
        assert!(r.changes_view(&Record::Lease(reg("h", 1), lease(200, 0, "b", 2_000)), 150));
    }

    #[test]
    fn next_deadline_is_the_earliest_future_one() {
        let r = from_records(&[
            Record::Lease(reg("h", 1), lease(0, 0, "a", 500)),
            Record::Lease(reg("h", 2), lease(0, 0, "a", 300)),
        ]);
        assert_eq!(r.next_deadline(0), Some(300));
        assert_eq!(r.next_deadline(300), Some(500));
        assert_eq!(r.next_deadline(500), None);
    }

    fn arb_stamp() -> impl Strategy<Value = Stamp> {
        (
            0u64..20,
            0u32..3,
            prop_oneof![Just("a"), Just("b"), Just("c")],
        )
            .prop_map(|(ms, l, n)| Stamp(ms, l, n.to_string()))
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let lease_rec = (arb_stamp(), 1u16..4, 0u64..40, any::<bool>()).prop_map(
            |(stamp, port, ttl, weighted)| {
                let mut meta = BTreeMap::new();
                if weighted {
                    meta.insert("weight".to_string(), "10".to_string());
                }
                Record::Lease(
                    reg("10.0.0.1", port),
                    Lease {
                        deadline_ms: stamp.0 + ttl,
                        ttl_ms: ttl,
                        stamp,
                        meta,
                    },
                )
            },
        );
        let backend_rec = (
            arb_stamp(),
            prop_oneof![Just("web"), Just("api")],
            prop::option::of(prop_oneof![Just("v1"), Just("v2")]),
        )
            .prop_map(|(stamp, name, version)| {
                Record::Backend(
                    name.to_string(),
                    Versioned {
                        stamp,
                        value: version.map(|v| backend(name, v)),
                    },
                )
            });
        let frontend_rec = (
            arb_stamp(),
            prop::option::of(prop_oneof![Just("web"), Just("api")]),
        )
            .prop_map(|(stamp, backend)| {
                Record::Frontend(
                    "main".to_string(),
                    Versioned {
                        stamp,
                        value: backend.map(|b| Frontend {
                            name: "main".into(),
                            backend: b.into(),
                            bind: "*:80".into(),
                            mode: Mode::Http,
                            rules: vec![],
                            extra: vec![],
                        }),
                    },
                )
            });
        prop_oneof![lease_rec, backend_rec, frontend_rec]
    }

    fn arb_registry() -> impl Strategy<Value = Registry> {
        prop::collection::vec(arb_record(), 0..12).prop_map(|recs| from_records(&recs))
    }

    fn joined(a: &Registry, b: &Registry) -> Registry {
        let mut x = a.clone();
        x.merge(b.clone());
        x
    }

    #[test]
    fn decoded_records_are_checked_like_client_input() {
        let stamp = r#"[1,0,"n"]"#;
        let ok = format!(r#"{{"s":{stamp},"v":{{"name":"web","app":"web","version":"1"}}}}"#);
        assert!(decode_checked("b:web", &ok).is_ok());
        for (key, value) in [
            ("b:other", ok.clone()),
            (
                "b:we b",
                format!(r#"{{"s":{stamp},"v":{{"name":"we b","app":"web","version":"1"}}}}"#),
            ),
            (
                "b:web",
                format!(
                    r#"{{"s":{stamp},"v":{{"name":"web","app":"web","version":"1","extra":["a\nbackend x"]}}}}"#
                ),
            ),
            (
                "f:www",
                format!(
                    r#"{{"s":{stamp},"v":{{"name":"www","backend":"web","bind":"*:80","extra":["log-forward x"]}}}}"#
                ),
            ),
            (
                "r:web/1/10.0.0.1/80",
                format!(r#"{{"s":{stamp},"d":5,"t":4,"m":{{"k":"%[x]"}}}}"#),
            ),
        ] {
            let err = decode_checked(key, &value).unwrap_err();
            assert!(matches!(err, CodecError::Invalid { .. }), "{key}: {err}");
        }
        // A deletion carries no value to check.
        assert!(decode_checked("b:web", &format!(r#"{{"s":{stamp},"v":null}}"#)).is_ok());
    }

    proptest! {
        /// Whatever a peer sends, decoding and checking it returns an answer and never panics.
        #[test]
        fn decoding_any_record_never_panics(
            key in prop_oneof![Just("b:web".to_string()), Just("r:a/b/c/1".to_string()), Just("f:x".to_string()), "\\PC{0,30}"],
            value in "\\PC{0,200}",
        ) {
            let _ = decode_checked(&key, &value);
        }

        #[test]
        fn merge_is_commutative(a in arb_registry(), b in arb_registry()) {
            prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_registry(), b in arb_registry(), c in arb_registry()) {
            prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_registry(), b in arb_registry()) {
            prop_assert_eq!(joined(&a, &a), a.clone());
            let ab = joined(&a, &b);
            prop_assert_eq!(joined(&ab, &b), ab);
        }

        /// Any delivery order of the same writes, split over any number of nodes, gives the same
        /// live set at every instant: expiry needs no coordination.
        #[test]
        fn expiry_is_deterministic(
            records in prop::collection::vec(arb_record(), 0..16),
            seed in any::<u64>(),
            nodes in 1usize..4,
        ) {
            let reference = from_records(&records);
            // Deal the records to `nodes` nodes in a shuffled order, then join the nodes.
            let mut shuffled = records.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut per_node = vec![Vec::new(); nodes];
            for (i, r) in shuffled.into_iter().enumerate() {
                per_node[i % nodes].push(r);
            }
            let mut all = Registry::default();
            for recs in per_node.iter().rev() {
                all.merge(from_records(recs));
            }
            for now in [0u64, 5, 10, 19, 25, 40, 60] {
                prop_assert_eq!(all.view(now), reference.view(now));
            }
        }
    }
}
