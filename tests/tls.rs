//! The API over TLS, with certificates made in the test (rcgen): tokens over TLS, client
//! certificates mapped to scopes (mTLS), a new server certificate taken up on SIGHUP, and the
//! operator's CLI against a TLS node.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::auth::Tokens;
use common::haproxy::TempDir;
use common::pki::{Ca, Leaf};
use common::{free_port, sighup, wait_until, Proc};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

const WAIT: Duration = Duration::from_secs(20);

struct Pki {
    dir: TempDir,
    ca: PathBuf,
    server: Leaf,
    /// Valid for `deployer.ops.internal`: mapped to admin.
    deployer: Leaf,
    /// Valid for 10.0.1.7: any certificate of the client CA gets `register`.
    app: Leaf,
    clients: Ca,
    client_ca: PathBuf,
    tokens: Tokens,
}

fn pki() -> Pki {
    let dir = TempDir::new("tls");
    let ca = Ca::new("bender test server CA");
    let clients = Ca::new("bender test client CA");
    let server = ca.leaf(&dir.0, "server", &["localhost", "127.0.0.1"], false);
    let deployer = clients.leaf(&dir.0, "deployer", &["deployer.ops.internal"], true);
    let app = clients.leaf(&dir.0, "app", &["10.0.1.7"], true);
    let ca_path = ca.write(&dir.0.join("ca.crt"));
    let client_ca = clients.write(&dir.0.join("clients-ca.crt"));
    let tokens = Tokens::write(&dir.0.join("tokens"));
    Pki {
        ca: ca_path,
        server,
        deployer,
        app,
        clients,
        client_ca,
        tokens,
        dir,
    }
}

fn config(p: &Pki, require_client_cert: bool) -> PathBuf {
    let text = format!(
        r#"
[api.tls]
cert = "{}"
key = "{}"
client_ca = "{}"
require_client_cert = {require_client_cert}

[[auth.client_cert]]
name = "deployer"
san = "deployer.ops.internal"
scope = "admin"

[[auth.client_cert]]
name = "app-servers"
san = "*"
scope = "register"

{}"#,
        p.server.cert.display(),
        p.server.key.display(),
        p.client_ca.display(),
        p.tokens.config()
    );
    let path = p.dir.0.join("bender.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn certs(path: &Path) -> Vec<Certificate<'static>> {
    let pem = std::fs::read(path).unwrap();
    ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// A client that trusts `ca` and presents `client` (if any).
fn agent(ca: &Path, client: Option<&Leaf>) -> ureq::Agent {
    let mut tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(certs(ca))));
    if let Some(c) = client {
        let key = PrivateKey::from_pem(&std::fs::read(&c.key).unwrap()).unwrap();
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&certs(&c.cert), key)));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(tls.build())
        .build()
        .into()
}

/// (status, body) of a request, or the transport error (a refused handshake, say).
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, serde_json::Value), String> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let mut resp = agent
        .run(req.body(body.to_string()).unwrap())
        .map_err(|e| e.to_string())?;
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Ok((
        resp.status().as_u16(),
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

fn start(p: &Pki, require_client_cert: bool) -> (Proc, String) {
    let (api, gossip) = (free_port(), free_port());
    let base = format!("https://127.0.0.1:{api}");
    let node = Proc::spawn(
        "tls",
        base.clone(),
        ([127, 0, 0, 1], gossip).into(),
        vec![
            "--config".into(),
            config(p, require_client_cert).display().to_string(),
            "--api-listen".into(),
            format!("127.0.0.1:{api}"),
            "--gossip-listen".into(),
            format!("127.0.0.1:{gossip}"),
        ],
    );
    let probe = agent(&p.ca, Some(&p.app));
    wait_until(WAIT, "the TLS node answers /health", || {
        call(&probe, "GET", &format!("{base}/health"), None, "").is_ok_and(|(s, _)| s == 200)
    });
    (node, base)
}

#[test]
fn the_api_speaks_tls_with_tokens_and_plain_http_gets_nothing() {
    let p = pki();
    let (_node, base) = start(&p, false);
    let a = agent(&p.ca, None);
    assert_eq!(
        call(&a, "GET", &format!("{base}/health"), None, "")
            .unwrap()
            .0,
        200
    );
    let url = format!("{base}/v1/members");
    assert_eq!(call(&a, "GET", &url, None, "").unwrap().0, 401);
    assert_eq!(
        call(&a, "GET", &url, Some(&p.tokens.read), "").unwrap().0,
        200
    );
    let (status, body) = call(
        &a,
        "POST",
        &format!("{base}/backends"),
        Some(&p.tokens.admin),
        r#"{"name":"web","app":"web","version":"1"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    // Plain HTTP to the TLS port is not served.
    let plain = base.replace("https://", "http://");
    let r = ureq::get(&format!("{plain}/health")).call();
    assert!(r.as_ref().is_err() || r.is_ok_and(|resp| resp.status() != 200));
    // A client that does not trust the node's CA does not connect.
    let other = Ca::new("someone else");
    let stranger = agent(&other.write(&p.dir.0.join("other.crt")), None);
    assert!(call(&stranger, "GET", &format!("{base}/health"), None, "").is_err());
}

#[test]
fn client_certificates_map_to_scopes_and_vouch_for_the_names_they_hold() {
    let p = pki();
    let (_node, base) = start(&p, false);
    let deployer = agent(&p.ca, Some(&p.deployer));
    let app = agent(&p.ca, Some(&p.app));
    let backend = r#"{"name":"web","app":"web","version":"1"}"#;
    // The deployer's certificate is admin.
    let (status, body) = call(
        &deployer,
        "POST",
        &format!("{base}/backends"),
        None,
        backend,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    // The app server's certificate is register: not enough for a backend...
    let (status, body) = call(
        &app,
        "PUT",
        &format!("{base}/backends/web"),
        None,
        r#"{"version":"2"}"#,
    )
    .unwrap();
    assert_eq!(status, 403, "{body}");
    // ...but it may register the address its certificate holds, though it connects from
    // 127.0.0.1, and nothing else.
    let reg = |host: &str| {
        call(
            &app,
            "POST",
            &format!("{base}/v1/registrations"),
            None,
            &format!(r#"{{"app":"web","version":"1","host":"{host}","port":8080}}"#),
        )
        .unwrap()
    };
    assert_eq!(reg("10.0.1.7").0, 200);
    // Its source address is loopback, which is nobody's own: every LB would send the app's
    // traffic to itself.
    assert_eq!(reg("127.0.0.1").0, 403);
    let (status, body) = reg("10.0.1.8");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("certificate"),
        "{body}"
    );
    // A wildcard certificate of the client CA names no particular host: it is not the
    // deployer, and gets only what any certificate of the CA gets.
    let wildcard = p
        .clients
        .leaf(&p.dir.0, "wildcard", &["*.ops.internal"], true);
    let (status, body) = call(
        &agent(&p.ca, Some(&wildcard)),
        "PUT",
        &format!("{base}/backends/web"),
        None,
        r#"{"version":"2"}"#,
    )
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("app-servers"),
        "{body}"
    );
    // A certificate from a CA the node does not trust ends the handshake.
    let rogue_ca = Ca::new("rogue");
    let rogue = rogue_ca.leaf(&p.dir.0, "rogue", &["deployer.ops.internal"], true);
    let r = call(
        &agent(&p.ca, Some(&rogue)),
        "GET",
        &format!("{base}/health"),
        None,
        "",
    );
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn a_node_that_requires_client_certificates_refuses_clients_without_one() {
    let p = pki();
    let (_node, base) = start(&p, true);
    let url = format!("{base}/health");
    assert!(call(&agent(&p.ca, None), "GET", &url, None, "").is_err());
    assert_eq!(
        call(&agent(&p.ca, Some(&p.app)), "GET", &url, None, "")
            .unwrap()
            .0,
        200
    );
}

#[test]
fn a_client_certificate_revoked_by_the_crl_loaded_on_sighup_is_refused() {
    let p = pki();
    let (node, base) = start(&p, false);
    let url = format!("{base}/v1/members");
    let deployer = agent(&p.ca, Some(&p.deployer));
    assert_eq!(call(&deployer, "GET", &url, None, "").unwrap().0, 200);
    let crl = p.clients.write_crl(&p.dir.0.join("clients.crl"), &[&p.app]);
    let path = config(&p, false);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "require_client_cert = false",
        &format!(
            "require_client_cert = false\nclient_crl = \"{}\"",
            crl.display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    sighup(&node);
    // A new agent (so a new handshake) each time: a connection made before the SIGHUP took
    // effect would stay open and keep working, as established connections do.
    wait_until(WAIT, "the revoked certificate is refused", || {
        let app = agent(&p.ca, Some(&p.app));
        call(&app, "GET", &format!("{base}/health"), None, "").is_err()
    });
    assert_eq!(
        call(
            &deployer,
            "POST",
            &format!("{base}/backends"),
            None,
            r#"{"name":"web","app":"web","version":"1"}"#
        )
        .unwrap()
        .0,
        201,
        "a certificate the CRL does not list still works"
    );
}

#[test]
fn a_sighup_serves_a_new_server_certificate_to_new_connections() {
    let p = pki();
    let (node, base) = start(&p, false);
    let url = format!("{base}/health");
    // The certificate is replaced by one from another CA, as when a CA is rotated.
    let next_ca = Ca::new("next CA");
    let next_ca_path = next_ca.write(&p.dir.0.join("next-ca.crt"));
    let fresh = next_ca.leaf(&p.dir.0.join(""), "server-next", &["127.0.0.1"], false);
    let trusts_next = agent(&next_ca_path, None);
    assert!(call(&trusts_next, "GET", &url, None, "").is_err());
    std::fs::copy(&fresh.cert, &p.server.cert).unwrap();
    std::fs::copy(&fresh.key, &p.server.key).unwrap();
    sighup(&node);
    wait_until(WAIT, "the new certificate is served", || {
        call(&trusts_next, "GET", &url, None, "").is_ok_and(|(s, _)| s == 200)
    });
    assert!(call(&agent(&p.ca, None), "GET", &url, None, "").is_err());
}

#[test]
fn the_cli_talks_to_a_tls_node_with_a_token_or_a_client_certificate() {
    let p = pki();
    let (_node, base) = start(&p, false);
    let bender = |args: &[&str], env: &[(&str, &Path)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bender"));
        cmd.args(args)
            .env("BENDER_ADDR", &base)
            .env("BENDER_CA_FILE", &p.ca)
            .env_remove("BENDER_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let token = p.tokens.file("admin");
    let (code, out, err) = bender(
        &["backend", "create", "web", "--app", "web", "--version", "1"],
        &[("BENDER_TOKEN_FILE", &token)],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = bender(&["status", "--json"], &[("BENDER_TOKEN_FILE", &token)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("\"tls\": true") || out.contains("\"tls\":true"),
        "{out}"
    );
    // With the deployer's certificate instead of a token.
    let (code, out, err) = bender(
        &[
            "backend",
            "switch",
            "web",
            "--version",
            "2",
            // No web@2 server is registered: the test is about credentials.
            "--force",
            "--cert",
            p.deployer.cert.to_str().unwrap(),
            "--key",
            p.deployer.key.to_str().unwrap(),
        ],
        &[("BENDER_TOKEN_FILE", &p.dir.0.join("no-such-file"))],
    );
    // A token file that does not exist is an error before anything is sent.
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("no-such-file"), "{err}");
    let (code, out, err) = bender(
        &[
            "backend",
            "switch",
            "web",
            "--version",
            "2",
            // No web@2 server is registered: the test is about credentials.
            "--force",
            "--cert",
            p.deployer.cert.to_str().unwrap(),
            "--key",
            p.deployer.key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = bender(
        &["list", "backends", "--json"],
        &[("BENDER_TOKEN_FILE", &token)],
    );
    assert_eq!(code, Some(0));
    assert!(
        out.contains("\"version\": \"2\"") || out.contains("\"version\":\"2\""),
        "{out}"
    );
}
