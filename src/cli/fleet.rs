//! `bender status --fleet` and the blue/green switches, which can wait until every load
//! balancer runs them (`--wait`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::ops::{client, one_line, print, s, table};
use super::{OutputArgs, SwitchWait};
use crate::client::{Client, ClientError};
use crate::fleet::publish::Report;
use crate::fleet::State;

/// How often `--wait` asks.
const POLL: Duration = Duration::from_millis(100);

fn report(c: &Client) -> Result<Report, ClientError> {
    let v = c.call("GET", "/v1/fleet", None)?;
    serde_json::from_value(v).map_err(|e| ClientError::Decode {
        addr: "/v1/fleet".into(),
        message: e.to_string(),
    })
}

/// `bender status --fleet`: every load balancer as the node asked sees it.
pub(super) fn status(out: &OutputArgs) -> Result<(), ClientError> {
    let c = client(&out.connect)?;
    let v = c.call("GET", "/v1/fleet", None)?;
    print(out, &v, |v| {
        let r: Report = match serde_json::from_value(v.clone()) {
            Ok(r) => r,
            Err(e) => {
                println!("unexpected /v1/fleet answer: {e}");
                return;
            }
        };
        let rows = r
            .nodes
            .iter()
            .map(|e| {
                let rec = e.record.as_ref();
                let configs = rec
                    .map(|r| {
                        r.templates
                            .iter()
                            .map(|t| t.config.clone().unwrap_or_else(|| "-".into()))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| "-".into());
                let degraded = rec
                    .map(|r| r.degraded.join(","))
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "-".into());
                vec![
                    format!("{}{}", e.node_id, if e.is_self { " (this)" } else { "" }),
                    e.state.to_string(),
                    rec.and_then(|r| r.applied().map(str::to_string))
                        .unwrap_or_else(|| "-".into()),
                    configs,
                    degraded,
                    e.message
                        .as_deref()
                        .map_or("-".into(), |m| one_line(m, 200)),
                ]
            })
            .collect();
        table(
            &[
                "NODE",
                "STATE",
                "APPLIED VIEW",
                "CONFIG",
                "DEGRADED",
                "MESSAGE",
            ],
            rows,
        );
        let c = |state: &str| r.counts.get(state).copied().unwrap_or(0);
        println!(
            "\nview {} on {}: {} synced, {} pending, {} stale, {} error",
            r.view,
            r.observer,
            c("synced"),
            c("pending"),
            c("stale"),
            c("error")
        );
    });
    Ok(())
}

/// What to switch, and to what.
pub(super) struct Switch<'a> {
    /// `backends` or `frontends`.
    pub kind: &'static str,
    pub name: &'a str,
    /// `{"version": ...}` or `{"backend": ...}`.
    pub body: Value,
    pub force: bool,
    pub wait: &'a SwitchWait,
    /// Print the API's answer as JSON (progress goes to stderr either way).
    pub json: bool,
}

/// Switches (refused by the node if the target has no live server, unless forced), then
/// with `--wait` blocks until every reachable load balancer is SYNCED with a view that
/// includes the switch, printing progress; exit 1 on timeout, naming the laggards.
pub(super) fn switch(c: &Client, sw: Switch<'_>) -> Result<(), ClientError> {
    let mut body = sw.body;
    if sw.force {
        body["force"] = json!(true);
    }
    let path = format!("/v1/{}/{}/switch", sw.kind, sw.name);
    let v = c.call("POST", &path, Some(&body))?;
    let what = if sw.kind == "backends" {
        "backend"
    } else {
        "frontend"
    };
    let live = v["live_servers"].as_u64().unwrap_or(0);
    if sw.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{what} {} switched from {} to {} ({live} live server{})",
            sw.name,
            s(&v["from"]),
            s(&v["to"]),
            if live == 1 { "" } else { "s" }
        );
    }
    if v["forced"].as_bool() == Some(true) {
        eprintln!("bender: warning: forced: the target has no live server");
    }
    if !sw.wait.wait {
        return Ok(());
    }
    let before = s(&v["entities_before"]);
    let changed = before != s(&v["entities_after"]);
    let started = Instant::now();
    let mut shown = String::new();
    loop {
        let r = report(c)?;
        // The answering node's view must include the switch (its entities moved on), and every
        // load balancer it can reach must run that view.
        let seen = !changed || r.entities != before;
        let live: Vec<_> = r.nodes.iter().filter(|e| e.live).collect();
        let synced = live.iter().filter(|e| e.state == State::Synced).count();
        let waiting: Vec<String> = live
            .iter()
            .filter(|e| e.state != State::Synced)
            .map(|e| format!("{} ({})", e.node_id, e.state))
            .collect();
        let line = format!(
            "{synced}/{} load balancers synced{}",
            live.len(),
            if waiting.is_empty() {
                String::new()
            } else {
                format!("; waiting for {}", waiting.join(", "))
            }
        );
        if seen && synced == live.len() {
            let unreachable: Vec<&str> = r
                .nodes
                .iter()
                .filter(|e| !e.live)
                .map(|e| e.node_id.as_str())
                .collect();
            let done = format!(
                "every load balancer runs it ({synced}/{}) after {}",
                live.len(),
                super::human::duration(started.elapsed())
            );
            if sw.json {
                eprintln!("bender: {done}");
            } else {
                println!("{done}");
            }
            if !unreachable.is_empty() {
                eprintln!(
                    "bender: warning: unreachable, not waited for: {}",
                    unreachable.join(", ")
                );
            }
            return Ok(());
        }
        if line != shown {
            eprintln!("bender: {line}");
            shown = line;
        }
        if started.elapsed() >= sw.wait.timeout {
            let lagging: Vec<String> = live
                .iter()
                .filter(|e| e.state != State::Synced)
                .map(|e| match &e.message {
                    Some(m) => format!("{} {}: {}", e.node_id, e.state, one_line(m, 80)),
                    None => format!("{} {}", e.node_id, e.state),
                })
                .collect();
            return Err(ClientError::TimedOut(format!(
                "timed out after {} waiting for every load balancer to run the switch; not synced: {}",
                humantime::format_duration(sw.wait.timeout),
                if lagging.is_empty() {
                    format!("{} (its view does not show the switch yet)", r.observer)
                } else {
                    lagging.join("; ")
                }
            )));
        }
        std::thread::sleep(POLL);
    }
}
