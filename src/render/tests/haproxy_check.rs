//! What the documentation and the allow-list promise, put through the real `haproxy -c`.

use super::*;

/// The worked example of docs/templates.md renders, and HAProxy accepts the result.
#[tokio::test]
async fn the_documented_example_template_works() {
    let doc = std::fs::read_to_string(manifest("docs/templates.md")).unwrap();
    let after_marker = doc
        .split("<!-- example-template")
        .nth(1)
        .expect("docs/templates.md has the example marker");
    let body = after_marker
        .split("```jinja\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a jinja block follows the marker");
    let dir = fresh_dir("doc");
    let source = dir.join("example.cfg.tera");
    std::fs::write(&source, body).unwrap();
    let mut t = default_template(test_vars(&dir));
    t.source = source;
    t.vars.insert("zone".into(), "b".into());
    t.vars
        .insert("health_bind".into(), "127.0.0.1:18404".into());
    let text = render_once(&[t], "lb-1", &fixture(1)).unwrap().remove(0).1;
    assert!(
        text.contains("server api-v1-10.0.1.1-80 10.0.1.1:80 backup weight 50"),
        "{text}"
    );
    assert!(
        text.contains("server web-v1-10.0.0.2-8080 10.0.0.2:8080\n"),
        "{text}"
    );
    assert!(text.contains("set-header X-Served-By \"lb-1\""), "{text}");
    assert_haproxy_accepts(&dir, &text, Duration::from_secs(30)).await;
}

/// Every alternative of every allow-listed form, and every server option, is something HAProxy
/// accepts: each goes into a frontend or backend of its own, and the config passes
/// `haproxy -c`.
#[tokio::test]
async fn every_allowed_form_and_server_option_passes_haproxy_check() {
    use crate::model::snippets::{expansions, Section};
    let (lines, options) = expansions();
    let mut text = String::from(
        "defaults\n    mode http\n    timeout client 1s\n    timeout server 1s\n    timeout connect 1s\n",
    );
    let dir = fresh_dir("expansions");
    for (n, (section, line)) in lines.iter().enumerate() {
        match section {
            Section::Frontend => text.push_str(&format!(
                "frontend f{n}\n    bind {}\n    acl a path /\n    {line}\n",
                dir.join(format!("f{n}.sock")).display()
            )),
            Section::Backend => text.push_str(&format!(
                "backend b{n}\n    acl a path /\n    {line}\n    server s 127.0.0.1:1\n"
            )),
        }
    }
    for (n, opts) in options.iter().enumerate() {
        // TLS to a server needs a CA or `verify none`, which is the template's to set.
        let with = match opts.as_str() {
            "ssl" | "check-ssl" => format!("{opts} verify none"),
            o => o.to_string(),
        };
        text.push_str(&format!("backend o{n}\n    server s 127.0.0.1:1 {with}\n"));
    }
    assert_haproxy_accepts(&dir, &text, Duration::from_secs(60)).await;
}

/// Every allow-listed form (model::snippets::EXAMPLES) is something HAProxy accepts: each example
/// goes into a backend or frontend of the default template, and the whole config passes
/// `haproxy -c`.
#[tokio::test]
async fn every_allow_listed_example_passes_haproxy_check() {
    use crate::model::snippets::{Section, EXAMPLES, SERVER_OPTIONS_EXAMPLES};
    let mut nv = fixture(1_000);
    let mut fe = nv.view.frontends.values().next().unwrap().clone();
    fe.extra = EXAMPLES
        .iter()
        .filter(|(s, _)| *s == Section::Frontend)
        .map(|(_, l)| l.to_string())
        .collect();
    nv.view.frontends.insert(fe.name.clone(), fe);
    for (i, opts) in SERVER_OPTIONS_EXAMPLES.iter().enumerate() {
        let mut b = backend(&format!("opts{i}"), "web", "v1");
        b.server_options = Some(opts.to_string());
        if i == 0 {
            b.extra = EXAMPLES
                .iter()
                .filter(|(s, _)| *s == Section::Backend)
                .map(|(_, l)| l.to_string())
                .collect();
        }
        b.validate(Snippets::AllowListed).unwrap();
        nv.view.backends.insert(b.name.clone(), b);
    }
    let dir = fresh_dir("allow-list");
    let (ctx, excluded) =
        context::build_screened("n", &nv, &test_vars(&dir), Snippets::AllowListed);
    assert_eq!(excluded, vec![], "every example passes the allow-list");
    let compiled = template::load(&manifest("templates/haproxy.cfg.tera")).unwrap();
    let text = compiled.render(&ctx).unwrap();
    for (_, line) in EXAMPLES {
        assert!(text.contains(line), "{line} is rendered");
    }
    assert_haproxy_accepts(&dir, &text, Duration::from_secs(30)).await;
}
