//! The fleet status's decisions: decoding a peer's record, and each member's state.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const STALE: Duration = Duration::from_secs(10);

fn digest(n: u64) -> String {
    format!("{n:016x}")
}

fn record(view: u64, from: Option<u64>) -> Record {
    Record {
        scheme: ViewDigest::SCHEME,
        ready: true,
        view: digest(view),
        at_ms: 1,
        templates: vec![TemplateRecord {
            name: "haproxy".into(),
            config: Some("00000000000000aa".into()),
            from: from.map(digest),
            error: None,
            excluded: 0,
        }],
        degraded: vec![],
    }
}

fn member(id: &str, live: bool, r: Option<Record>) -> Member {
    Member {
        node_id: id.into(),
        live,
        is_self: false,
        record: r.map(Ok),
    }
}

#[test]
fn a_record_round_trips_and_fields_a_newer_version_adds_are_ignored() {
    let r = record(1, Some(1));
    assert_eq!(decode(&r.encode()).unwrap(), r);
    let newer = r.encode().replacen('{', r#"{"future":[1,2,3],"#, 1);
    assert_eq!(decode(&newer).unwrap(), r);
}

#[test]
fn a_peer_s_record_is_refused_when_too_big_or_not_digests_and_names() {
    let mut r = record(1, Some(1));
    r.view = "not hex".into();
    assert!(decode(&r.encode()).is_err());
    let mut r = record(1, Some(1));
    r.templates[0].from = Some("zz".into());
    assert!(decode(&r.encode()).is_err());
    let mut r = record(1, Some(1));
    r.templates[0].name = "a b\n[frontend]".into();
    assert!(decode(&r.encode()).is_err());
    let mut r = record(1, Some(1));
    r.templates = vec![r.templates[0].clone(); MAX_TEMPLATES + 1];
    assert!(decode(&r.encode()).is_err());
    let big = format!(r#"{{"view":"01","x":"{}"}}"#, "a".repeat(MAX_RECORD_BYTES));
    assert!(decode(&big).unwrap_err().contains("bytes"));
    assert!(decode("[1,2]").is_err());
}

#[test]
fn a_peer_s_error_text_is_cut_to_one_printable_line() {
    let mut r = record(1, Some(1));
    r.templates[0].error = Some(format!("bad\n\u{1b}[31mred{}", "x".repeat(1000)));
    r.degraded = vec!["isolated\r\n".into(); 20];
    let d = decode(&r.encode()).unwrap();
    let e = d.templates[0].error.as_deref().unwrap();
    assert!(!e.chars().any(char::is_control), "{e:?}");
    assert_eq!(e.chars().count(), MAX_ERROR_CHARS + 1);
    assert_eq!(d.degraded.len(), MAX_DEGRADED);
    assert!(d.degraded.iter().all(|s| !s.chars().any(char::is_control)));
}

#[test]
fn a_node_with_no_template_runs_its_view_and_templates_that_disagree_run_nothing_yet() {
    let mut r = record(5, Some(5));
    r.templates.clear();
    assert_eq!(r.applied(), Some(digest(5).as_str()));
    let mut r = record(5, Some(5));
    let mut t = r.templates[0].clone();
    t.name = "other".into();
    t.from = Some(digest(4));
    r.templates.push(t);
    assert_eq!(r.applied(), None);
    assert_eq!(record(5, None).applied(), None);
}

#[test]
fn each_state_is_decided_as_documented() {
    let t0 = Instant::now();
    let mut tr = Tracker::default();
    tr.see_own(&digest(1), t0);
    let mut err = record(1, Some(1));
    err.templates[0].error = Some("HAProxy: connection refused".into());
    let members = [
        member("a-synced", true, Some(record(1, Some(1)))),
        member("b-cut-off", false, Some(record(1, Some(1)))),
        member("c-error", true, Some(err)),
        member("d-applying", true, Some(record(2, Some(1)))),
        member("e-silent", true, None),
        Member {
            node_id: "f-refused".into(),
            live: true,
            is_self: false,
            record: Some(Err("not json".into())),
        },
    ];
    let states = |entries: Vec<Entry>| -> Vec<(String, State)> {
        entries.into_iter().map(|e| (e.node_id, e.state)).collect()
    };
    // Our view moves on to 2: d ran 1 and now has 2 in its registry too, but not applied.
    let t1 = t0 + Duration::from_secs(1);
    tr.see_own(&digest(2), t1);
    let mut members = members.to_vec();
    members[0].record = Some(Ok(record(2, Some(2))));
    let at = |secs: u64| t1 + Duration::from_secs(secs);
    let e = tr.evaluate(&members, at(0), STALE);
    assert_eq!(
        states(e),
        [
            ("a-synced".into(), State::Synced),
            ("b-cut-off".into(), State::Stale),
            ("c-error".into(), State::Error),
            ("d-applying".into(), State::Pending),
            ("e-silent".into(), State::Pending),
            ("f-refused".into(), State::Error),
        ]
    );
    let e = tr.evaluate(&members, at(10), STALE);
    let d = e.iter().find(|e| e.node_id == "d-applying").unwrap();
    assert_eq!((d.state, d.behind_ms), (State::Stale, 10_000));
    assert!(d.message.as_deref().unwrap().contains("applying"), "{d:?}");
    let silent = e.iter().find(|e| e.node_id == "e-silent").unwrap();
    assert_eq!(silent.state, State::Stale);
    let c = e.iter().find(|e| e.node_id == "c-error").unwrap();
    assert!(c.message.as_deref().unwrap().contains("connection refused"));
}

#[test]
fn a_member_running_a_view_we_left_is_behind_since_we_left_it() {
    let t0 = Instant::now();
    let mut tr = Tracker::default();
    tr.see_own(&digest(1), t0);
    let m = [member("a", true, Some(record(1, Some(1))))];
    assert_eq!(tr.evaluate(&m, t0, STALE)[0].state, State::Synced);
    tr.see_own(&digest(2), t0 + Duration::from_secs(3));
    let e = &tr.evaluate(&m, t0 + Duration::from_secs(5), STALE)[0];
    assert_eq!((e.state, e.behind_ms), (State::Pending, 2_000));
    let e = &tr.evaluate(&m, t0 + Duration::from_secs(13), STALE)[0];
    assert_eq!((e.state, e.behind_ms), (State::Stale, 10_000));
    // It catches up.
    let m = [member("a", true, Some(record(2, Some(2))))];
    let e = &tr.evaluate(&m, t0 + Duration::from_secs(14), STALE)[0];
    assert_eq!((e.state, e.behind_ms), (State::Synced, 0));
}

#[test]
fn a_member_of_another_digest_scheme_is_judged_by_its_own_view() {
    let t0 = Instant::now();
    let mut tr = Tracker::default();
    tr.see_own(&digest(1), t0);
    let mut other = record(9, Some(9));
    other.scheme = ViewDigest::SCHEME + 1;
    let m = [member("a", true, Some(other))];
    assert_eq!(tr.evaluate(&m, t0, STALE)[0].state, State::Synced);
}

#[test]
fn members_that_left_are_forgotten_and_the_history_is_bounded() {
    let t0 = Instant::now();
    let mut tr = Tracker::default();
    for i in 0..(HISTORY as u64 * 3) {
        tr.see_own(&digest(i), t0);
    }
    assert_eq!(tr.past.len(), HISTORY);
    let m: Vec<Member> = (0..50)
        .map(|i| member(&format!("n{i}"), true, None))
        .collect();
    tr.evaluate(&m, t0, STALE);
    assert_eq!(tr.last_in_sync.len(), 50);
    tr.evaluate(&m[..3], t0, STALE);
    assert_eq!(tr.last_in_sync.len(), 3);
}

proptest! {
    /// Over any sequence of our views and a member's applies, with time moving on: the member
    /// is SYNCED exactly when it runs our current view; otherwise its lag never exceeds the
    /// time since it last ran a view we had (nor since it was first seen), and it is STALE
    /// exactly when that lag reached the threshold.
    #[test]
    fn a_member_is_synced_exactly_when_it_runs_our_view_and_stale_only_after_the_threshold(
        steps in proptest::collection::vec((0u64..6, 0u64..6, 0u64..4_000), 1..60)
    ) {
        let t0 = Instant::now();
        let mut tr = Tracker::default();
        let mut now = t0;
        // When the member was last seen running our view then (or first seen).
        let mut truth: Option<Instant> = None;
        for (own, applied, dt) in steps {
            now += Duration::from_millis(dt);
            tr.see_own(&digest(own), now);
            let m = [member("a", true, Some(record(applied, Some(applied))))];
            let e = tr.evaluate(&m, now, STALE).remove(0);
            let last_synced = *truth.get_or_insert(now);
            if applied == own {
                prop_assert_eq!(e.state, State::Synced);
                truth = Some(now);
            } else {
                prop_assert_ne!(e.state, State::Synced);
                let behind = Duration::from_millis(e.behind_ms);
                prop_assert!(now.duration_since(last_synced) >= behind);
                prop_assert_eq!(e.state == State::Stale, behind >= STALE);
            }
        }
    }
}
