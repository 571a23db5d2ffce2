//! Everything the API checks of a request before it touches a node, as one pure function: the
//! fuzz target of request parsing runs it on arbitrary input (`fuzz/`), and it must never panic.

use warp::http::Method;

use super::error::ApiError;
use super::routes::{self, Kind, Op};
use super::wire::{self, parse_ttl, RegisterBody};
use crate::auth::{Guard, Presented};
use crate::model::{Backend, Frontend, RegKey, Snippets};

/// Routes `method path?query`, authorizes the `Authorization` header against `guard` (as a
/// client on 127.0.0.1), and parses and validates the body and path values the op takes, as
/// the server does. `Ok` means a node would act on the request.
pub fn check_request(
    guard: &Guard,
    method: &[u8],
    path: &str,
    query: &str,
    content_type: Option<&[u8]>,
    authorization: Option<&[u8]>,
    body: &[u8],
) -> Result<(), ApiError> {
    let method = Method::from_bytes(method).map_err(|_| ApiError::invalid("bad method"))?;
    let decoded: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| wire::percent_decode(s, false))
        .collect();
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let op = routes::route(&method, &segs).1?;
    let presented = Presented {
        addr: std::net::Ipv4Addr::LOCALHOST.into(),
        authorization,
        cert: None,
    };
    guard
        .authorize(&presented, op.need(), matches!(op, Op::CompatRegister(_)))
        .map_err(|d| match d {
            crate::auth::Denied::Unauthenticated(m) => ApiError::unauthorized(m),
            crate::auth::Denied::Forbidden(m) => ApiError::forbidden(m),
        })?;
    let req = wire::Request {
        query,
        content_type,
        last_event_id: None,
        body: bytes::Bytes::copy_from_slice(body),
    };
    match op {
        Op::CompatRegister(k) | Op::GetRegistration(k) | Op::Deregister(k) => {
            super::handlers::path_key(&k).map(drop)
        }
        Op::Register => {
            let b: RegisterBody = req.json()?;
            RegKey::new(&b.app, &b.version, &b.host, b.port)?;
            parse_ttl(&b.ttl)?;
            crate::model::validate_meta(&b.meta)?;
            Ok(())
        }
        Op::ListRegistrations => {
            for name in ["app", "version", "host"] {
                let _ = req.query_param(name);
            }
            Ok(())
        }
        Op::CreateEntity(Kind::Backend) => {
            Ok(req.json::<Backend>()?.validate(Snippets::AllowListed)?)
        }
        Op::CreateEntity(Kind::Frontend) => {
            Ok(req.json::<Frontend>()?.validate(Snippets::AllowListed)?)
        }
        Op::UpdateEntity(kind, name) => {
            // Merged onto a minimal current value, as a PUT is.
            let mut merged = match kind {
                Kind::Backend => serde_json::json!({"name": name, "app": "app", "version": "1"}),
                Kind::Frontend => serde_json::json!({"name": name, "backend": "web"}),
            };
            if let Some(m) = merged.as_object_mut() {
                m.extend(req.json_value()?);
            }
            match kind {
                Kind::Backend => {
                    wire::strict_value::<Backend>(merged)?.validate(Snippets::AllowListed)?
                }
                Kind::Frontend => {
                    wire::strict_value::<Frontend>(merged)?.validate(Snippets::AllowListed)?
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, CompatConfig, RegistrationConfig};
    use proptest::prelude::*;

    fn open_guard() -> Guard {
        Guard::load(
            &AuthConfig::default(),
            &RegistrationConfig::default(),
            &CompatConfig::default(),
            false,
        )
        .unwrap()
    }

    #[test]
    fn a_valid_request_passes_and_an_injection_does_not() {
        let g = open_guard();
        let ok = check_request(
            &g,
            b"POST",
            "/backends",
            "",
            Some(b"application/json"),
            None,
            br#"{"name":"web","app":"web","version":"1","extra":["timeout server 5s"]}"#,
        );
        assert_eq!(ok, Ok(()));
        let bad = check_request(
            &g,
            b"PUT",
            "/backends/web",
            "",
            Some(b"application/json"),
            None,
            br#"{"extra":["http-response set-header X %[env(HOME)]"]}"#,
        )
        .unwrap_err();
        assert_eq!(bad.status.as_u16(), 400);
        // A body that does not say it is JSON is what a browser sends cross-site unasked.
        for ct in [None, Some(&b"text/plain"[..])] {
            let e = check_request(
                &g,
                b"POST",
                "/backends",
                "",
                ct,
                None,
                br#"{"name":"web","app":"web","version":"1"}"#,
            )
            .unwrap_err();
            assert_eq!(e.status.as_u16(), 415, "{ct:?}");
        }
        let path = check_request(
            &g,
            b"POST",
            "/registrations/web/1/0x7f.1/80",
            "",
            None,
            None,
            b"",
        )
        .unwrap_err();
        assert!(path.message.contains("host"), "{}", path.message);
    }

    proptest! {
        /// Whatever arrives, checking a request returns an answer and never panics.
        #[test]
        fn checking_any_request_never_panics(
            method in prop_oneof![Just(b"GET".to_vec()), Just(b"POST".to_vec()), Just(b"PUT".to_vec()), Just(b"DELETE".to_vec()), proptest::collection::vec(any::<u8>(), 0..8)],
            path in prop_oneof![
                Just("/backends".to_string()), Just("/frontends/www".to_string()),
                Just("/v1/registrations".to_string()), Just("/registrations/a/b/c/d".to_string()),
                "\\PC{0,40}",
            ],
            body in proptest::collection::vec(any::<u8>(), 0..200),
            auth in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        ) {
            let g = open_guard();
            let _ = check_request(&g, &method, &path, "", None, auth.as_deref(), &body);
        }
    }
}
