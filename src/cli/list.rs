//! `bender list`: registrations (with HAProxy's view of each server where the node reads it),
//! backends, frontends.

use serde_json::Value;

use super::human;
use super::ops::{client, print, s, table};
use super::{ListWhat, OutputArgs};
use crate::client::ClientError;

/// HAProxy's status of each server address, from the templates' `servers` in `/v1/status`.
fn haproxy_view(status: &Value) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for v in status["templates"].as_array().into_iter().flatten() {
        for srv in v["servers"].as_array().into_iter().flatten() {
            let e = out.entry(s(&srv["address"])).or_default();
            let st = s(&srv["status"]);
            if !e.contains(&st) {
                e.push(st);
            }
        }
    }
    out
}

pub(super) fn list(
    what: ListWhat,
    out: &OutputArgs,
    app: Option<String>,
    version: Option<String>,
) -> Result<(), ClientError> {
    if !matches!(what, ListWhat::Registrations) && (app.is_some() || version.is_some()) {
        return Err(ClientError::Usage(
            "--app and --version filter registrations only".into(),
        ));
    }
    let client = client(&out.connect)?;
    match what {
        ListWhat::Registrations => {
            let mut query = Vec::new();
            if let Some(a) = &app {
                query.push(format!("app={a}"));
            }
            if let Some(v) = &version {
                query.push(format!("version={v}"));
            }
            let path = format!("/v1/registrations?{}", query.join("&"));
            let v = client.call("GET", &path, None)?;
            // HAProxy's own view of each server, where the node reads it (runtime API).
            let seen = client
                .call("GET", "/v1/status", None)
                .map(|st| haproxy_view(&st));
            print(out, &v, |v| {
                let seen = seen.unwrap_or_default();
                let now = std::time::SystemTime::now();
                let rows = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let address = format!("{}:{}", s(&r["host"]), s(&r["port"]));
                        let haproxy = seen.get(&address).map_or("-".into(), |v| v.join(","));
                        vec![
                            s(&r["app"]),
                            s(&r["version"]),
                            address,
                            r["ttl_ms"].as_u64().map_or("-".into(), human::millis),
                            human::relative(&s(&r["expires"]), now),
                            haproxy,
                        ]
                    })
                    .collect();
                table(
                    &["APP", "VERSION", "ADDRESS", "TTL", "EXPIRES", "HAPROXY"],
                    rows,
                );
            });
        }
        ListWhat::Backends => {
            let v = client.call("GET", "/v1/backends", None)?;
            print(out, &v, |v| {
                let rows = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        vec![
                            s(&b["name"]),
                            s(&b["app"]),
                            s(&b["version"]),
                            s(&b["balance"]),
                            s(&b["mode"]),
                        ]
                    })
                    .collect();
                table(&["NAME", "APP", "VERSION", "BALANCE", "MODE"], rows);
            });
        }
        ListWhat::Frontends => {
            let v = client.call("GET", "/v1/frontends", None)?;
            print(out, &v, |v| {
                let rows = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        vec![
                            s(&f["name"]),
                            s(&f["backend"]),
                            s(&f["bind"]),
                            s(&f["mode"]),
                        ]
                    })
                    .collect();
                table(&["NAME", "BACKEND", "BIND", "MODE"], rows);
            });
        }
    }
    Ok(())
}
