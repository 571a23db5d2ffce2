//! Peer input the render stage screens: members, and entities this node does not allow.

use super::*;

/// Members come from peers as they are: an id that is not a node id is left out, and an API
/// address that is not a plain `host:port` is rendered as none.
#[test]
fn hostile_member_ids_and_api_addresses_never_reach_a_template() {
    let mut nv = fixture(1_000);
    let peer = |id: &str, api: &str| Member {
        node_id: id.into(),
        gossip_addr: "10.0.9.3:1730".parse().unwrap(),
        api_addr: Some(api.into()),
        live: true,
        is_self: false,
        clock_offset_ms: None,
    };
    nv.members
        .push(peer("x\nlua-load /tmp/p.lua", "10.0.9.3:1729"));
    for (i, api) in [
        "a]:80",
        "[[::1]]]:80",
        "[::1]:80",
        "lb-9.example:1729",
        "h:1:2",
    ]
    .iter()
    .enumerate()
    {
        nv.members.push(peer(&format!("lb-{}", 10 + i), api));
    }
    let ctx = context::build("lb-1", &nv, &BTreeMap::new());
    let members: Vec<(&str, Option<&str>)> = ctx
        .members
        .iter()
        .map(|m| (m.node_id.as_str(), m.api_addr.as_deref()))
        .collect();
    assert_eq!(
        members,
        vec![
            ("lb-1", Some("10.0.9.1:1729")),
            ("lb-2", None),
            ("lb-10", None),
            ("lb-11", None),
            ("lb-12", Some("[::1]:80")),
            ("lb-13", Some("lb-9.example:1729")),
            ("lb-14", None),
        ]
    );
}

/// A backend a peer sent with lines this node does not allow is left out of the render and
/// reported; everything else still renders.
#[test]
fn entities_failing_this_nodes_validation_are_left_out_and_reported() {
    let mut nv = fixture(1_000);
    let mut evil = backend("evil", "web", "v1");
    evil.extra = vec!["http-response set-header X-Leak %[env(HOME)]".into()];
    nv.view.backends.insert("evil".into(), evil.clone());
    let mut liar = backend("liar", "web", "v1");
    liar.name = "other".into();
    nv.view.backends.insert("liar".into(), liar);
    let (ctx, excluded) =
        context::build_screened("n", &nv, &BTreeMap::new(), Snippets::AllowListed);
    let names: Vec<&str> = ctx.backends.iter().map(|b| b.name.as_str()).collect();
    assert!(
        !names.contains(&"evil") && !names.contains(&"other"),
        "{names:?}"
    );
    assert!(names.contains(&"web"), "the rest renders: {names:?}");
    assert_eq!(
        excluded
            .iter()
            .map(|e| (e.kind, e.name.as_str()))
            .collect::<Vec<_>>(),
        vec![("backend", "evil"), ("backend", "liar")]
    );
    assert!(
        excluded[0].reason.contains("extra[0]"),
        "{}",
        excluded[0].reason
    );
    // A node that enables raw snippets renders it.
    let (ctx, _) = context::build_screened("n", &nv, &BTreeMap::new(), Snippets::Raw);
    assert!(ctx.backends.iter().any(|b| b.name == "evil"));
}
