//! The registry's join, liveness and codec, tested as a CRDT.
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
fn a_deregistration_is_not_live_on_a_node_whose_clock_lags() {
    // Written at 10,000 by a node with the right time; read by a node 5 s behind.
    let mut dereg = lease(10_000, 0, "a", 10_000);
    dereg.ttl_ms = 0;
    let r = from_records(&[
        Record::Lease(reg("h", 1), lease(9_000, 0, "a", 13_000)),
        Record::Lease(reg("h", 1), dereg),
    ]);
    assert!(r.view(5_000).registrations.is_empty());
    assert_eq!(r.next_deadline(5_000), None);
}

#[test]
fn a_renewal_that_moves_the_deadline_earlier_changes_the_view() {
    let r = from_records(&[Record::Lease(reg("h", 1), lease(100, 0, "a", 5_000))]);
    // Same TTL and meta, newer stamp, but from a node whose clock lags: an earlier deadline.
    let mut earlier = lease(200, 0, "b", 4_000);
    earlier.ttl_ms = 4_900;
    assert!(r.changes_view(&Record::Lease(reg("h", 1), earlier), 150));
}

#[test]
fn an_entity_from_a_newer_version_with_fields_this_one_lacks_decodes() {
    let value = r#"{"s":[1,0,"n"],"v":{"name":"web","app":"web","version":"1","slots":42},"x":1}"#;
    let rec = decode_checked("b:web", value).unwrap();
    let Record::Backend(name, v) = &rec else {
        panic!("not a backend: {rec:?}")
    };
    assert_eq!(name, "web");
    assert_eq!(v.value.as_ref().unwrap().app, "web");
    let mut r = Registry::default();
    r.insert(rec, value);
    // The bytes are kept as written, with the field this version does not know.
    assert_eq!(&*r.backends["web"].encoded, value);
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
    let lease_rec =
        (arb_stamp(), 1u16..4, 0u64..40, any::<bool>()).prop_map(|(stamp, port, ttl, weighted)| {
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
        });
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

/// A registration without its deadlines: key, TTL, meta.
type Shape = (RegKey, u64, BTreeMap<String, String>);

/// A view without its deadlines.
fn shape(v: &View) -> (Vec<Shape>, View) {
    let regs = v
        .registrations
        .values()
        .map(|r| (r.key.clone(), r.ttl_ms, r.meta.clone()))
        .collect();
    let entities = View {
        registrations: Default::default(),
        ..v.clone()
    };
    (regs, entities)
}

#[derive(Debug, Clone)]
enum ViewOp {
    Join(Box<Record>),
    /// The clock moves by this much (backwards too: a wall clock can step back), then the view
    /// is brought up to date.
    Update(i64),
    /// A maintenance round forgets what it may.
    Collect,
}

fn arb_view_op() -> impl Strategy<Value = ViewOp> {
    prop_oneof![
        4 => arb_record().prop_map(|r| ViewOp::Join(Box::new(r))),
        3 => (-3i64..15).prop_map(ViewOp::Update),
        1 => Just(ViewOp::Collect),
    ]
}

proptest! {
    /// However records arrive and time moves, the view kept up to date from the change log and
    /// the deadline index is the view computed from scratch (but for deadlines: a renewal that
    /// only moves one later is not a change of the view), and its changes are the events
    /// between the two views.
    #[test]
    fn the_updated_view_is_the_view_computed_from_scratch(
        ops in prop::collection::vec(arb_view_op(), 0..60),
    ) {
        let mut r = Registry::default();
        let mut view = View::default();
        let mut now: u64 = 0;
        for op in ops {
            match op {
                ViewOp::Join(rec) => {
                    let (k, v) = encode(&rec);
                    r.insert_encoded(&k, &v).unwrap();
                }
                ViewOp::Update(dt) => {
                    now = now.saturating_add_signed(dt);
                    let before = view.clone();
                    let changes = r.update_view(&mut view, now);
                    prop_assert_eq!(shape(&view), shape(&r.view(now)));
                    // The digest kept change by change is the one computed from scratch.
                    prop_assert_eq!(view.digest, super::ViewDigest::of(&view));
                    prop_assert_eq!(
                        crate::events::of_changes(&changes, &before, &view),
                        crate::events::diff(&before, &view)
                    );
                    let updated = view.registrations.iter().any(|(k, n)| {
                        before.registrations.get(k).is_some_and(|o| o.ttl_ms != n.ttl_ms || o.meta != n.meta)
                    });
                    prop_assert_eq!(changes.updated, updated);
                    prop_assert_eq!(
                        r.next_deadline(now),
                        r.leases.values().filter(|s| s.reg.val.is_live(now)).map(|s| s.reg.val.deadline_ms).min()
                    );
                }
                ViewOp::Collect => {
                    let cfg = gc::GcConfig { lease_grace_ms: 5, tombstone_ttl_ms: 20 };
                    let mut own = BTreeMap::new();
                    gc::plan(&own, &r, now, cfg).apply(&mut r, &mut own);
                }
            }
        }
    }
}

#[test]
fn the_view_digest_ignores_deadlines_and_follows_what_is_served() {
    let one = from_records(&[Record::Lease(reg("h", 1), lease(100, 0, "a", 5_000))]);
    // The same server renewed (a later stamp and deadline) on another node.
    let renewed = from_records(&[Record::Lease(reg("h", 1), lease(900, 0, "b", 9_000))]);
    assert_eq!(one.view(1_000).digest, renewed.view(1_000).digest);
    let two = from_records(&[
        Record::Lease(reg("h", 1), lease(100, 0, "a", 5_000)),
        Record::Lease(reg("h", 2), lease(100, 0, "a", 5_000)),
    ]);
    assert_ne!(one.view(1_000).digest, two.view(1_000).digest);
    let mut meta = lease(900, 0, "b", 9_000);
    meta.meta.insert("weight".into(), "7".into());
    let weighted = from_records(&[Record::Lease(reg("h", 1), meta)]);
    assert_ne!(one.view(1_000).digest, weighted.view(1_000).digest);
    let with_backend = from_records(&[
        Record::Lease(reg("h", 1), lease(100, 0, "a", 5_000)),
        Record::Backend(
            "web".into(),
            Versioned {
                stamp: Stamp(1, 0, "n".into()),
                value: Some(backend("web", "v1")),
            },
        ),
    ]);
    let (a, b) = (one.view(1_000).digest, with_backend.view(1_000).digest);
    assert_eq!(a.registrations, b.registrations);
    assert_ne!(a.value(), b.value());
    // Expired: the empty view's digest.
    assert_eq!(one.view(6_000).digest, View::default().digest);
}
