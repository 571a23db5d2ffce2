//! A write HAProxy would refuse is refused before it is stored: a real node with the default
//! template renders the view with the write and runs `haproxy -c` on it, and answers 400 with
//! HAProxy's own alert, naming the field. Nothing reaches the registry, so no other node (and no
//! later apply) ever sees it.

mod common;

use common::{Http, TestCluster, TEST_CONFIG};
use serde_json::json;

fn node_with_template(dir: &std::path::Path) -> TestCluster {
    let d = dir.display();
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/haproxy.cfg.tera");
    TestCluster::start_with(
        1,
        &format!(
            r#"{TEST_CONFIG}
[[template]]
name = "haproxy"
source = "{template}"
destination = "{d}/haproxy.cfg"
reload = {{ method = "none" }}
vars = {{ stats_socket = "{d}/admin.sock", server_state_file = "{d}/server-state", chroot = "", user = "", group = "", log = "" }}
"#
        ),
    )
}

#[test]
fn a_write_haproxy_would_refuse_is_a_400_with_haproxys_words_and_is_not_stored() {
    let dir = common::haproxy::TempDir::new("preflight");
    let c = node_with_template(&dir.0);
    let http = Http::new();
    let backends = c.url(0, "/backends");

    // Every word is on the allow-list, but the ACL was never defined.
    let bad = json!({"name": "web", "app": "web", "version": "1",
        "extra": ["timeout server 30s", "http-request deny if no_such_acl"]});
    let r = http.post_json(&backends, &bad.to_string());
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["code"], "INVALID");
    let msg = r.body["message"].as_str().unwrap();
    assert!(
        msg.starts_with("invalid extra[1]: HAProxy refuses backend web"),
        "{msg}"
    );
    assert!(
        msg.contains("[ALERT]") && msg.contains("no_such_acl"),
        "{msg}"
    );
    assert_eq!(
        http.get(&c.url(0, "/backends/web")).status,
        404,
        "not stored"
    );

    // A good backend is stored; a server of it registers.
    let good = json!({"name": "web", "app": "web", "version": "1"});
    assert_eq!(http.post_json(&backends, &good.to_string()).status, 201);
    let r = http.post_empty(&c.url(0, "/registrations/web/1/127.0.0.1/9000"));
    assert_eq!(r.status, 200);
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the server is rendered",
        || {
            std::fs::read_to_string(dir.0.join("haproxy.cfg"))
                .is_ok_and(|t| t.contains(" 127.0.0.1:9000 weight "))
        },
    );
    // TLS to the servers without `verify none`: HAProxy wants a CA file. The field is named.
    let r = http.put_json(&c.url(0, "/backends/web"), r#"{"server_options":"ssl"}"#);
    assert_eq!(r.status, 400, "{}", r.text);
    let msg = r.body["message"].as_str().unwrap();
    assert!(
        msg.starts_with("invalid server_options: HAProxy refuses backend web"),
        "{msg}"
    );
    assert!(msg.contains("verify"), "{msg}");
    assert_eq!(
        http.get(&c.url(0, "/backends/web"))
            .body
            .get("server_options"),
        None,
        "the refused update changed nothing"
    );
    let r = http.put_json(
        &c.url(0, "/backends/web"),
        r#"{"server_options":"check inter 2s"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);

    // Frontends too; and deleting is checked like the rest (nothing refuses this one).
    let r = http.post_json(
        &c.url(0, "/frontends"),
        r#"{"name":"www","backend":"web","bind":"127.0.0.1:18090","extra":["http-request redirect scheme https if nowhere"]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.text
            .contains("invalid extra[0]: HAProxy refuses frontend www"),
        "{}",
        r.text
    );
    assert_eq!(http.delete(&c.url(0, "/backends/web")).status, 204);
}
