//! `bender backend ...` and `bender frontend ...`: create, get, update, switch, delete. For
//! people a sentence or `field: value` lines; `--json` prints the API's answer.

use serde_json::{json, Map, Value};

use super::ops::s;
use super::{BackendAction, BackendFields, FrontendAction, FrontendFields};
use crate::client::{Client, ClientError};

fn set_opt(body: &mut Map<String, Value>, key: &str, v: &Option<String>) {
    if let Some(v) = v {
        body.insert(key.into(), json!(v));
    }
}

fn backend_body(base: Map<String, Value>, f: &BackendFields) -> Value {
    let mut body = base;
    body.remove("resource");
    set_opt(&mut body, "app", &f.app);
    set_opt(&mut body, "version", &f.version);
    set_opt(&mut body, "balance", &f.balance);
    set_opt(&mut body, "mode", &f.mode);
    set_opt(&mut body, "server_options", &f.server_options);
    if f.health_path.is_some() || f.health_interval.is_some() {
        // The fields given change; the rest of the current check stays.
        let mut hc = body
            .get("health_check")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(p) = &f.health_path {
            hc.insert("path".into(), json!(p));
        }
        if let Some(i) = f.health_interval {
            hc.insert("interval_ms".into(), json!(i.as_millis() as u64));
        }
        body.insert("health_check".into(), Value::Object(hc));
    }
    set_lines(&mut body, "extra", &f.extra);
    Value::Object(body)
}

/// Repeated `--extra` lines replace the list; a single empty one clears it.
fn set_lines(body: &mut Map<String, Value>, key: &str, lines: &[String]) {
    if !lines.is_empty() {
        let kept: Vec<&String> = lines.iter().filter(|l| !l.is_empty()).collect();
        body.insert(key.into(), json!(kept));
    }
}

/// A usage error found before anything is sent (exit code 2, as clap's own).
fn usage(message: String) -> ClientError {
    ClientError::Usage(message)
}

/// Reads an entity, applies `change`, writes it back whole.
fn read_modify_write(
    client: &Client,
    path: &str,
    change: impl FnOnce(Map<String, Value>) -> Value,
) -> Result<Value, ClientError> {
    let current = client.call("GET", path, None)?;
    let mut map = current.as_object().cloned().unwrap_or_default();
    map.remove("resource");
    let body = change(map);
    client.call("PUT", path, Some(&body))
}

/// An entity for people: one `field: value` line each (lists joined), or the JSON.
fn show(v: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    for (k, field) in v.as_object().into_iter().flatten() {
        if k == "resource" {
            continue;
        }
        let text = match field {
            Value::Array(items) => items.iter().map(compact).collect::<Vec<_>>().join("; "),
            other => compact(other),
        };
        println!("{k}: {text}");
    }
}

/// A value on one line: strings bare, objects as `key=value ...`.
fn compact(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => s(other),
    }
}

/// The result of a write: the JSON, or `sentence`.
fn said(v: &Value, json: bool, sentence: String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{sentence}");
    }
}

pub(super) fn backend(
    client: &Client,
    action: BackendAction,
    json: bool,
) -> Result<(), ClientError> {
    match action {
        BackendAction::Get { name } => show(
            &client.call("GET", &format!("/v1/backends/{name}"), None)?,
            json,
        ),
        BackendAction::Create { name, fields } => {
            if fields.app.is_none() || fields.version.is_none() {
                return Err(usage(format!(
                    "backend create {name} needs --app and --version (the app@version it serves)"
                )));
            }
            let mut base = Map::new();
            base.insert("name".into(), json!(name));
            let v = client.call("POST", "/v1/backends", Some(&backend_body(base, &fields)))?;
            let sentence = format!(
                "backend {name} created: serves {}@{} ({}, {})",
                s(&v["app"]),
                s(&v["version"]),
                s(&v["balance"]),
                s(&v["mode"])
            );
            said(&v, json, sentence);
        }
        BackendAction::Update { name, fields } => {
            let path = format!("/v1/backends/{name}");
            let v = read_modify_write(client, &path, |m| backend_body(m, &fields))?;
            said(&v, json, format!("backend {name} updated"));
        }
        BackendAction::Switch {
            name,
            version,
            wait,
        } => super::fleet::switch(
            client,
            super::fleet::Switch {
                kind: "backends",
                name: &name,
                body: json!({ "version": version }),
                force: wait.force,
                wait: &wait,
                json,
            },
        )?,
        BackendAction::Delete { name } => {
            client.call("DELETE", &format!("/v1/backends/{name}"), None)?;
            println!("backend {name} deleted");
        }
    }
    Ok(())
}

fn frontend_body(base: Map<String, Value>, f: &FrontendFields) -> Value {
    let mut body = base;
    body.remove("resource");
    set_opt(&mut body, "backend", &f.backend);
    set_opt(&mut body, "bind", &f.bind);
    set_opt(&mut body, "mode", &f.mode);
    if !f.rule.is_empty() {
        let rules: Vec<&Value> = f.rule.iter().flatten().collect();
        body.insert("rules".into(), json!(rules));
    }
    set_lines(&mut body, "extra", &f.extra);
    Value::Object(body)
}

pub(super) fn frontend(
    client: &Client,
    action: FrontendAction,
    json: bool,
) -> Result<(), ClientError> {
    match action {
        FrontendAction::Get { name } => show(
            &client.call("GET", &format!("/v1/frontends/{name}"), None)?,
            json,
        ),
        FrontendAction::Create { name, fields } => {
            let mut base = Map::new();
            base.insert("name".into(), json!(name));
            let v = client.call("POST", "/v1/frontends", Some(&frontend_body(base, &fields)))?;
            let sentence = format!(
                "frontend {name} created: {} on {} -> {}",
                s(&v["mode"]),
                s(&v["bind"]),
                s(&v["backend"])
            );
            said(&v, json, sentence);
        }
        FrontendAction::Update { name, fields } => {
            let path = format!("/v1/frontends/{name}");
            let v = read_modify_write(client, &path, |m| frontend_body(m, &fields))?;
            said(&v, json, format!("frontend {name} updated"));
        }
        FrontendAction::Switch {
            name,
            backend,
            wait,
        } => super::fleet::switch(
            client,
            super::fleet::Switch {
                kind: "frontends",
                name: &name,
                body: json!({ "backend": backend }),
                force: wait.force,
                wait: &wait,
                json,
            },
        )?,
        FrontendAction::Delete { name } => {
            client.call("DELETE", &format!("/v1/frontends/{name}"), None)?;
            println!("frontend {name} deleted");
        }
    }
    Ok(())
}
