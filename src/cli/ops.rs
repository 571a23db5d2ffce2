//! The operator's subcommands: each is one or a few API calls and a table (or `--json`).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::human;
use super::{Command, Connect, InstanceArgs, OutputArgs, RegisterArgs, RenderArgs};
use crate::client::{Client, ClientError};

pub(super) fn client(c: &Connect) -> Result<Client, ClientError> {
    let credentials = c.credentials().map_err(ClientError::Setup)?;
    Client::with_credentials(&c.addrs, &credentials).map_err(ClientError::Setup)
}

/// Runs an operator subcommand; errors are one line on stderr and exit code 1.
pub fn run_operator_command(command: Command) -> ExitCode {
    let result = match command {
        Command::Register(args) => register(args),
        Command::Deregister(args) => deregister(&args).map(|_| {
            println!(
                "deregistered {}@{} {}:{}",
                args.app, args.version, args.host, args.port
            )
        }),
        Command::List(args) => super::list::list(args.what, &args.output, args.app, args.version),
        Command::Members(out) => members(&out),
        Command::Status(args) if args.fleet => super::fleet::status(&args.output),
        Command::Status(args) => status(&args.output),
        Command::Backend(args) => {
            client(&args.connect).and_then(|c| super::entities::backend(&c, args.action, args.json))
        }
        Command::Frontend(args) => client(&args.connect)
            .and_then(|c| super::entities::frontend(&c, args.action, args.json)),
        Command::Render(args) => return render(args),
        Command::Agent(_) | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled by main")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ClientError::Usage(_)) => {
            eprintln!("bender: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("bender: {e}");
            ExitCode::FAILURE
        }
    }
}

fn instance_path(i: &InstanceArgs) -> String {
    format!(
        "/v1/registrations/{}/{}/{}/{}",
        i.app, i.version, i.host, i.port
    )
}

fn register_once(client: &Client, args: &RegisterArgs) -> Result<Value, ClientError> {
    let i = &args.instance;
    let mut body = json!({"app": i.app, "version": i.version, "host": i.host, "port": i.port});
    if let Some(ttl) = args.ttl {
        body["ttl"] = json!(ttl.as_millis() as u64);
    }
    if !args.meta.is_empty() {
        let meta: Map<String, Value> = args
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        body["meta"] = Value::Object(meta);
    }
    client.call("POST", "/v1/registrations", Some(&body))
}

fn register(args: RegisterArgs) -> Result<(), ClientError> {
    let client = client(&args.instance.connect)?;
    let first = register_once(&client, &args)?;
    let i = &args.instance;
    if !args.keep {
        println!(
            "registered {}@{} {}:{} until {}",
            i.app,
            i.version,
            i.host,
            i.port,
            first["expires"].as_str().unwrap_or("?")
        );
        return Ok(());
    }
    let ttl = Duration::from_millis(first["ttl_ms"].as_u64().unwrap_or(4000));
    let every = (ttl / 3).max(Duration::from_millis(50));
    eprintln!(
        "bender: keeping {}@{} {}:{} registered (renewing every {}); SIGTERM or Ctrl-C deregisters",
        i.app,
        i.version,
        i.host,
        i.port,
        human::duration(every)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Unreachable {
            addr: "local".into(),
            message: format!("cannot start the runtime: {e}"),
        })?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail");
        let mut int =
            signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail");
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // A failed renewal is retried at the next tick (and on the next address);
                    // the lease outlives two missed renewals.
                    if let Err(e) = register_once(&client, &args) {
                        eprintln!("bender: renewal failed: {e}");
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
    });
    match deregister(&args.instance) {
        Ok(_) => eprintln!("bender: deregistered"),
        // Expired already (the node did not hear from us for a TTL): nothing left to end.
        Err(ClientError::Api { status: 404, .. }) => {
            eprintln!("bender: the registration had already expired")
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

fn deregister(i: &InstanceArgs) -> Result<Value, ClientError> {
    client(&i.connect)?.call("DELETE", &instance_path(i), None)
}

/// Prints rows as an aligned table.
pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// A message as one table cell: its lines joined, at most `max` characters.
pub(super) fn one_line(text: &str, max: usize) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    if joined.chars().count() <= max {
        return joined;
    }
    let mut cut: String = joined.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub(super) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(super) fn print(out: &OutputArgs, value: &Value, as_table: impl FnOnce(&Value)) {
    if out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        as_table(value);
    }
}

fn members(out: &OutputArgs) -> Result<(), ClientError> {
    let v = client(&out.connect)?.call("GET", "/v1/members", None)?;
    print(out, &v, |v| {
        let rows = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                vec![
                    format!(
                        "{}{}",
                        s(&m["node_id"]),
                        if m["is_self"] == true { " (this)" } else { "" }
                    ),
                    if m["live"] == true { "live" } else { "dead" }.to_string(),
                    s(&m["gossip_addr"]),
                    s(&m["api_addr"]),
                    m["clock_offset_ms"]
                        .as_i64()
                        .map(|o| format!("{o}ms"))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(&["NODE", "STATE", "GOSSIP", "API", "CLOCK OFFSET"], rows);
    });
    Ok(())
}

fn status(out: &OutputArgs) -> Result<(), ClientError> {
    let c = client(&out.connect)?;
    let v = c.call("GET", "/v1/status", None)?;
    // What /ready answers (the node caught up *and* the last apply succeeded), not the node's
    // own flag alone.
    let ready = match c.call("GET", "/ready", None) {
        Ok(_) => "yes".to_string(),
        Err(ClientError::Api { message, .. }) => format!("no: {}", one_line(&message, 100)),
        Err(e) => return Err(e),
    };
    print(out, &v, |v| {
        println!("{:<20} {}", "node_id", s(&v["node_id"]));
        println!("{:<20} {}", "cluster_id", s(&v["cluster_id"]));
        println!("{:<20} {ready}", "ready");
        for key in [
            "members_live",
            "registrations_live",
            "backends",
            "frontends",
        ] {
            println!("{key:<20} {}", s(&v[key]));
        }
        if let Some(applies) = v["templates"].as_array() {
            let rows = applies
                .iter()
                .map(|t| {
                    // A template that does not load keeps its last version rendering: its
                    // error is the one to show.
                    let error = t["template_error"].as_str().or(t["error"].as_str());
                    let result = match (t["ok"].as_bool(), error) {
                        (Some(true), _) => "ok",
                        (_, Some(_)) => "error",
                        _ => "pending",
                    };
                    vec![
                        s(&t["name"]),
                        result.to_string(),
                        t["last_apply"].as_str().map_or("-".into(), |at| {
                            human::relative(at, std::time::SystemTime::now())
                        }),
                        s(&t["reloads"]),
                        error.map_or("-".to_string(), |e| one_line(e, 100)),
                    ]
                })
                .collect();
            println!();
            table(
                &["TEMPLATE", "RESULT", "LAST APPLY", "RELOADS", "ERROR"],
                rows,
            );
        }
    });
    Ok(())
}

/// `bender render`: the templates of a config file, rendered from a node's current view (or a
/// state file), printed or written to a directory, optionally checked. Exit 1 on any failure.
fn render(args: RenderArgs) -> ExitCode {
    match render_inner(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bender: {e}");
            ExitCode::FAILURE
        }
    }
}

fn render_inner(args: &RenderArgs) -> Result<bool, String> {
    use crate::cluster::StateDump;
    let config = crate::config::Config::load(Some(&args.config), Default::default())
        .map_err(|e| e.to_string())?;
    let templates: Vec<_> = config
        .templates
        .iter()
        .filter(|t| args.template.as_ref().is_none_or(|n| *n == t.name))
        .cloned()
        .collect();
    if templates.is_empty() {
        return Err(format!(
            "{} has no template{}",
            args.config.display(),
            args.template
                .as_ref()
                .map(|n| format!(" named {n:?}"))
                .unwrap_or_default()
        ));
    }
    let dump: StateDump = match &args.state {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => {
            let v = client(&args.connect)
                .map_err(|e| e.to_string())?
                .call("GET", "/v1/state", None)
                .map_err(|e| e.to_string())?;
            serde_json::from_value(v).map_err(|e| format!("unexpected state from the node: {e}"))?
        }
    };
    let node_id = dump.node_id.clone();
    let nv = dump.into_node_view();
    let snippets = if config.api.config_snippets {
        crate::model::Snippets::Raw
    } else {
        crate::model::Snippets::AllowListed
    };
    let (rendered, excluded) =
        crate::render::render_once_screened(&templates, &node_id, &nv, snippets)
            .map_err(|e| e.to_string())?;
    for e in &excluded {
        eprintln!("bender: left out {} {:?}: {}", e.kind, e.name, e.reason);
    }
    let mut all_ok = true;
    for ((name, text), t) in rendered.iter().zip(&templates) {
        let path = match &args.out {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let p = dir.join(name);
                std::fs::write(&p, text)
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
                eprintln!("bender: wrote {}", p.display());
                Some(p)
            }
            None => {
                if rendered.len() > 1 {
                    println!("# ---- template {name} ----");
                }
                print!("{text}");
                None
            }
        };
        if args.check {
            all_ok &= check_rendered(name, text, path.as_deref(), &t.check_command())?;
        }
    }
    Ok(all_ok)
}

/// Runs a template's check command on the rendered text; prints what it said.
fn check_rendered(
    name: &str,
    text: &str,
    written: Option<&std::path::Path>,
    argv: &[String],
) -> Result<bool, String> {
    if argv.is_empty() {
        eprintln!("bender: {name}: no check configured");
        return Ok(true);
    }
    let tmp;
    let path = match written {
        Some(p) => p.to_path_buf(),
        None => {
            tmp = std::env::temp_dir()
                .join(format!("bender-render-{}-{name}.cfg", std::process::id()));
            std::fs::write(&tmp, text)
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            tmp.clone()
        }
    };
    let args: Vec<String> = argv
        .iter()
        .map(|a| a.replace(crate::render::CHECK_PLACEHOLDER, &path.to_string_lossy()))
        .collect();
    let out = std::process::Command::new(&args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]));
    if written.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    let out = out?;
    let said = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("bender: {name}: check passed");
        Ok(true)
    } else {
        eprintln!("bender: {name}: check failed:\n{}", said.trim_end());
        Ok(false)
    }
}
