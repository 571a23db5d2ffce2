use super::*;
use std::os::unix::fs::PermissionsExt;

struct Files(PathBuf);
impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn token_file(dir: &std::path::Path, name: &str, tokens: &[&str]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, tokens.join("\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

const ADMIN: &str = "admin-token-0123456789";
const REGISTER: &str = "register-token-0123456789";
const READ: &str = "read-token-0123456789";

fn guard(extra: impl FnOnce(&mut AuthConfig, &mut CompatConfig)) -> (Guard, Files) {
    let dir = std::env::temp_dir().join(format!(
        "bender-auth-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut auth = AuthConfig::default();
    for (name, scope, tok) in [
        ("ops", Scope::Admin, ADMIN),
        ("apps", Scope::Register, REGISTER),
        ("prometheus", Scope::Read, READ),
    ] {
        auth.tokens.push(TokenConfig {
            name: name.into(),
            scope,
            file: token_file(&dir, name, &[tok]),
        });
    }
    let mut compat = CompatConfig::default();
    extra(&mut auth, &mut compat);
    let g = Guard::load(&auth, &RegistrationConfig::default(), &compat, false).unwrap();
    (g, Files(dir))
}

fn ask(g: &Guard, addr: &str, header: Option<String>, need: Need) -> Result<Caller, Denied> {
    let h = header.map(String::into_bytes);
    g.authorize(
        &Presented {
            addr: addr.parse().unwrap(),
            authorization: h.as_deref(),
            cert: None,
        },
        need,
        false,
    )
}

fn bearer_of(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

#[test]
fn each_scope_grants_what_it_names_and_admin_everything() {
    let (g, _f) = guard(|_, _| {});
    let s = |n| Need::Scope(n);
    for (token, need, ok) in [
        (ADMIN, s(Scope::Admin), true),
        (ADMIN, s(Scope::Register), true),
        (ADMIN, s(Scope::Read), true),
        (REGISTER, s(Scope::Register), true),
        (REGISTER, s(Scope::Read), false),
        (REGISTER, s(Scope::Admin), false),
        (READ, s(Scope::Read), true),
        (READ, s(Scope::Register), false),
        (READ, s(Scope::Admin), false),
    ] {
        let r = ask(&g, "10.0.0.1", bearer_of(token), need);
        match (ok, r) {
            (true, Ok(c)) => assert_eq!(c.via, Via::Token),
            (false, Err(Denied::Forbidden(m))) => assert!(m.contains("scope"), "{m}"),
            (ok, r) => panic!("{token} for {need:?}: expected ok={ok}, got {r:?}"),
        }
    }
}

#[test]
fn no_token_or_a_wrong_one_is_401_and_open_routes_need_nothing() {
    let (g, _f) = guard(|_, _| {});
    let need = Need::Scope(Scope::Read);
    assert!(matches!(
        ask(&g, "10.0.0.1", None, need),
        Err(Denied::Unauthenticated(_))
    ));
    assert!(matches!(
        ask(&g, "10.0.0.1", bearer_of("not-a-known-token-123"), need),
        Err(Denied::Unauthenticated(_))
    ));
    assert!(matches!(
        ask(&g, "10.0.0.1", Some(format!("Basic {ADMIN}")), need),
        Err(Denied::Unauthenticated(_))
    ));
    // Loopback is not special once credentials exist.
    assert!(ask(&g, "127.0.0.1", None, need).is_err());
    assert_eq!(
        ask(&g, "10.0.0.1", None, Need::Open).unwrap().via,
        Via::Open
    );
    assert!(ask(&g, "10.0.0.1", Some(format!("bearer  {ADMIN} ")), need).is_ok());
}

#[test]
fn config_can_open_reads_and_the_old_registration_route_to_networks() {
    let (g, _f) = guard(|a, c| {
        a.open_read_from = vec!["10.1.0.0/16".parse().unwrap()];
        c.unauthenticated_register_from = vec!["10.2.0.0/16".parse().unwrap()];
    });
    let p = |addr: &str| Presented {
        addr: addr.parse().unwrap(),
        authorization: None,
        cert: None,
    };
    let read = Need::Scope(Scope::Read);
    let register = Need::Scope(Scope::Register);
    assert_eq!(
        g.authorize(&p("10.1.2.3"), read, false).unwrap().via,
        Via::OpenRead
    );
    assert!(g.authorize(&p("10.1.2.3"), register, true).is_err());
    assert!(g.authorize(&p("10.3.0.1"), read, false).is_err());
    assert_eq!(
        g.authorize(&p("10.2.0.9"), register, true).unwrap().via,
        Via::Compat
    );
    assert!(
        g.authorize(&p("10.2.0.9"), register, false).is_err(),
        "v1 routes stay closed"
    );
    assert!(g
        .authorize(&p("10.2.0.9"), Need::Scope(Scope::Admin), true)
        .is_err());
    // A certificate that maps to no credential does not speak for a compat caller: it
    // may register its own address, not the names in the certificate.
    let params = rcgen::CertificateParams::new(vec!["10.0.0.9".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = ClientCert(Arc::new(params.self_signed(&key).unwrap().der().clone()));
    let with_cert = Presented {
        cert: Some(&cert),
        ..p("10.2.0.9")
    };
    let caller = g.authorize(&with_cert, register, true).unwrap();
    assert_eq!((caller.via, caller.cert.is_none()), (Via::Compat, true));
    assert!(g.check_registration(&caller, "web", "10.0.0.9").is_err());
    assert!(g.check_registration(&caller, "web", "10.2.0.9").is_ok());
}

#[test]
fn a_node_without_credentials_lets_only_its_own_host_in() {
    let g = Guard::load(
        &AuthConfig::default(),
        &RegistrationConfig::default(),
        &CompatConfig::default(),
        false,
    )
    .unwrap();
    assert!(g.loopback_only());
    let admin = Need::Scope(Scope::Admin);
    let c = ask(&g, "127.0.0.1", None, admin).unwrap();
    assert_eq!((c.via, c.scope), (Via::Loopback, Some(Scope::Admin)));
    assert!(
        !c.is_credentialed_admin(),
        "raw snippets need a real credential"
    );
    assert!(ask(&g, "::1", None, admin).is_ok());
    assert!(ask(&g, "::ffff:127.0.0.1", None, admin).is_ok());
    match ask(&g, "10.0.0.1", None, admin) {
        Err(Denied::Unauthenticated(m)) => assert!(m.contains("own host"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_credentials_config_names_the_key() {
    let load = |auth: AuthConfig| {
        Guard::load(
            &auth,
            &RegistrationConfig::default(),
            &CompatConfig::default(),
            false,
        )
        .unwrap_err()
    };
    let e = load(AuthConfig {
        tokens: vec![TokenConfig {
            name: "ops".into(),
            scope: Scope::Admin,
            file: "/nonexistent/token".into(),
        }],
        ..Default::default()
    });
    assert!(
        e.starts_with("auth.token \"ops\"") && e.contains("/nonexistent/token"),
        "{e}"
    );
    let e = load(AuthConfig {
        client_certs: vec![ClientCertConfig {
            name: "deploy".into(),
            scope: Scope::Admin,
            san: "deploy.example.com".into(),
        }],
        ..Default::default()
    });
    assert!(e.contains("client_ca"), "{e}");
    // One token in two credentials' files: which scope it has would depend on file order.
    let dir = std::env::temp_dir().join(format!("bender-auth-dup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _files = Files(dir.clone());
    let e = load(AuthConfig {
        tokens: vec![
            TokenConfig {
                name: "ops".into(),
                scope: Scope::Admin,
                file: token_file(&dir, "ops", &[ADMIN]),
            },
            TokenConfig {
                name: "apps".into(),
                scope: Scope::Register,
                file: token_file(&dir, "apps", &[REGISTER, ADMIN]),
            },
        ],
        ..Default::default()
    });
    assert!(
        e.starts_with("auth.token \"apps\"") && e.contains("\"ops\""),
        "{e}"
    );
}
