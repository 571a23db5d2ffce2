//! The man pages: `bender(1)` and one page per subcommand (`bender-agent(1)`, ...), each from
//! the CLI's own definition plus FILES, ENVIRONMENT, EXIT STATUS and EXAMPLES.

use std::io::Write;

use clap::CommandFactory;

use super::Cli;

const FILES: &[(&str, &str)] = &[
    ("/etc/bender/bender.toml", "The node's config (bender agent --config); every key is documented in the file, with its default."),
    ("/etc/bender/templates/haproxy.cfg.tera", "The default HAProxy template; edits are re-rendered, checked and applied at once."),
    ("/etc/bender/tokens/", "API token files (admin, register, read), mode 0640, owned by root:bender; as root on a load balancer the CLI reads the admin token from here."),
    ("/var/lib/bender/", "The node's snapshot (data_dir), so a restart keeps its registrations and entities."),
    ("/etc/haproxy/haproxy.cfg", "What the packaged config renders into; the last good copy is kept beside it."),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    ("BENDER_ADDR", "Node API address(es) for the operator commands, comma-separated, tried in turn (host:port or URL; https:// for TLS)."),
    ("BENDER_TOKEN, BENDER_TOKEN_FILE", "The bearer token, or a file holding it."),
    ("BENDER_CA_FILE", "PEM CA certificate(s) to verify a TLS node with."),
    ("BENDER_CERT, BENDER_KEY", "A PEM client certificate and key, for nodes that map certificates to scopes."),
    ("BENDER_CONFIG", "The agent's config file (as --config)."),
    ("BENDER_LOG", "The agent's log filter, e.g. info, debug, bender=debug."),
    ("BENDER_LOG_FORMAT", "text or json (one object per line)."),
];

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    ("1", "The node refused the request or could not be reached, a --wait timed out, a render or check failed, or the agent stopped after a failure."),
    ("2", "A usage or config error: a bad flag, a bad config key (named, with the valid values), or a request the CLI can tell is wrong before sending it."),
];

/// Examples per page (`""`: the main page).
fn examples(page: &str) -> &'static [&'static str] {
    match page {
        "" => &[
            "bender agent --config /etc/bender/bender.toml",
            "bender backend switch web --version 2.0.0 --wait",
            "bender status --fleet",
        ],
        "agent" => &[
            "bender agent --config /etc/bender/bender.toml",
            "bender agent --node-id lb1 --cluster-id prod --gossip-listen 10.0.0.1:1730 --seed 10.0.0.2:1730 --seed 10.0.0.3:1730",
            "BENDER_LOG=debug bender agent --log-format json",
        ],
        "register" => &[
            "bender register web 1.0.0 10.0.1.10 8080 --ttl 10s --keep",
            "bender register web 1.0.0 10.0.1.10 8080 --meta weight=10",
        ],
        "deregister" => &["bender deregister web 1.0.0 10.0.1.10 8080"],
        "list" => &[
            "bender list",
            "bender list registrations --app web --version 2.0.0",
            "bender list backends --json",
        ],
        "members" => &["bender members", "BENDER_ADDR=lb2:1729 bender members --json"],
        "backend" => &[
            "bender backend create web --app web --version 1.0.0 --health-path /health",
            "bender backend update web --balance leastconn --extra 'timeout server 10s'",
            "bender backend switch web --version 2.0.0 --wait",
            "bender backend get web --json",
        ],
        "frontend" => &[
            "bender frontend create www --backend web --bind '*:80'",
            "bender frontend update www --rule 'host=api.example.com,backend=api'",
            "bender frontend switch www --backend web-green --wait --timeout 2m",
        ],
        "status" => &["bender status", "bender status --fleet", "bender status --json"],
        "render" => &[
            "bender render --config /etc/bender/bender.toml",
            "bender render --config bender.toml --state state.json --check",
        ],
        "completions" => &["bender completions bash > /etc/bash_completion.d/bender"],
        "man" => &["bender man --dir /usr/local/share/man/man1"],
        _ => &[],
    }
}

fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\\\").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

fn list_section(out: &mut Vec<u8>, title: &str, items: &[(&str, &str)]) {
    let _ = writeln!(out, ".SH {title}");
    for (term, text) in items {
        let _ = writeln!(out, ".TP\n\\fB{}\\fR\n{}", escape(term), escape(text));
    }
}

fn extra_sections(out: &mut Vec<u8>, page: &str) {
    list_section(out, "EXIT STATUS", EXIT_STATUS);
    list_section(out, "ENVIRONMENT", ENVIRONMENT);
    list_section(out, "FILES", FILES);
    let _ = writeln!(out, ".SH EXAMPLES");
    for e in examples(page) {
        let _ = writeln!(out, ".PP\n.nf\n{}\n.fi", escape(e));
    }
    let _ = writeln!(
        out,
        ".SH SEE ALSO\nbender(1), bender\\-agent(1), haproxy(1); /usr/share/doc/bender/README.md"
    );
}

fn render(man: &clap_mangen::Man, page: &str, parent: bool) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if page.is_empty() || parent {
        man.render_subcommands_section(&mut out)?;
    }
    extra_sections(&mut out, page);
    if page.is_empty() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// Every page: (file name, roff), `bender.1` first.
pub fn pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut out = vec![(
        "bender.1".to_string(),
        render(&clap_mangen::Man::new(root.clone()), "", true)?,
    )];
    // Every subcommand, nested ones too (bender-backend-switch.1): each page lists its
    // children by their page names.
    fn add(
        out: &mut Vec<(String, Vec<u8>)>,
        cmd: &clap::Command,
        top: &str,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands() {
            let top = if top.is_empty() { sub.get_name() } else { top };
            let man = clap_mangen::Man::new(sub.clone());
            let page = if sub.has_subcommands() || top != sub.get_name() {
                top.to_string()
            } else {
                sub.get_name().to_string()
            };
            out.push((
                man.get_filename(),
                render(&man, &page, sub.has_subcommands())?,
            ));
            add(out, sub, top)?;
        }
        Ok(())
    }
    add(&mut out, &root, "")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_a_page_with_the_operator_sections() {
        let pages = pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for expected in [
            "bender.1",
            "bender-agent.1",
            "bender-backend.1",
            "bender-backend-switch.1",
            "bender-status.1",
        ] {
            assert!(names.contains(&expected), "{names:?}");
        }
        for (name, roff) in &pages {
            let text = String::from_utf8_lossy(roff);
            for section in [
                ".SH NAME",
                ".SH SYNOPSIS",
                ".SH OPTIONS",
                ".SH EXIT STATUS",
                ".SH ENVIRONMENT",
                ".SH FILES",
                ".SH EXAMPLES",
            ] {
                assert!(text.contains(section), "{name} lacks {section}");
            }
            assert!(text.contains(".SH EXAMPLES\n.PP"), "{name} has no examples");
        }
    }
}
