//! Which entity a failure of `haproxy -c` is about: the sections of a rendered config, and the
//! places HAProxy's `[ALERT]` lines point at (`[file:line]`, `proxy 'name'`, `server be/name`).
//!
//! This is what lets a config that fails the check be applied without the entity that broke it,
//! and a write that would break it be refused with HAProxy's own words, naming the entity and
//! the field.

use std::collections::BTreeSet;

use crate::model::snippets::SECTION_KEYWORDS;
use crate::model::{Backend, Frontend};

/// An entity of the view, by kind and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityRef {
    Backend(String),
    Frontend(String),
}

impl EntityRef {
    pub fn kind(&self) -> &'static str {
        match self {
            EntityRef::Backend(_) => "backend",
            EntityRef::Frontend(_) => "frontend",
        }
    }
    pub fn name(&self) -> &str {
        match self {
            EntityRef::Backend(n) | EntityRef::Frontend(n) => n,
        }
    }
}

impl std::fmt::Display for EntityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

/// A proxy section of a rendered config: `frontend`, `backend` or `listen`, its name, and its
/// lines (1-based, inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub keyword: String,
    pub name: String,
    pub first: usize,
    pub last: usize,
}

/// The proxy sections of `text`, in order.
pub fn sections(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    let mut total = 0;
    for (i, line) in text.lines().enumerate() {
        total = i + 1;
        // Section keywords start their line; everything inside a section is indented.
        if line.starts_with(|c: char| c.is_whitespace()) {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        if !SECTION_KEYWORDS.contains(&keyword) {
            continue;
        }
        if let Some(prev) = out.last_mut() {
            prev.last = i;
        }
        out.push(Section {
            keyword: keyword.to_string(),
            name: words.next().unwrap_or("").to_string(),
            first: i + 1,
            last: usize::MAX,
        });
    }
    if let Some(prev) = out.last_mut() {
        prev.last = total;
    }
    out
}

/// The line numbers an `[ALERT]` line points at in `file` (`[file:123]`).
fn lines_in(alert: &str, file: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let needle = format!("[{file}:");
    let mut rest = alert;
    while let Some(i) = rest.find(&needle) {
        rest = &rest[i + needle.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

/// The proxy names an `[ALERT]` line names: `proxy 'www'`, `backend 'web'`, `server web/x`.
fn proxies_in(alert: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = alert.to_ascii_lowercase();
    for key in ["proxy '", "backend '", "frontend '", "listen '"] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(key) {
            let start = from + i + key.len();
            if let Some(end) = alert[start..].find('\'') {
                out.push(alert[start..start + end].to_string());
            }
            from = start;
        }
    }
    for key in ["'server ", "server '"] {
        let mut from = 0;
        while let Some(i) = alert[from..].find(key) {
            let start = from + i + key.len();
            if let Some(slash) = alert[start..].find('/') {
                out.push(alert[start..start + slash].to_string());
            }
            from = start;
        }
    }
    out
}

/// What a check failure is about: for each alert line, the entities of the view it points at
/// (through the line's section, or a proxy it names). An alert that points at no entity (the
/// global section, a template's own lines) maps to none.
pub fn blame(
    alerts: &str,
    file: &str,
    text: &str,
    backends: &BTreeSet<String>,
    frontends: &BTreeSet<String>,
) -> Vec<(String, BTreeSet<EntityRef>)> {
    let secs = sections(text);
    let entity_of = |keyword: &str, name: &str| -> Option<EntityRef> {
        match keyword {
            "backend" if backends.contains(name) => Some(EntityRef::Backend(name.to_string())),
            "frontend" if frontends.contains(name) => Some(EntityRef::Frontend(name.to_string())),
            "listen" | "proxy" => {
                if backends.contains(name) {
                    Some(EntityRef::Backend(name.to_string()))
                } else if frontends.contains(name) {
                    Some(EntityRef::Frontend(name.to_string()))
                } else {
                    None
                }
            }
            _ => None,
        }
    };
    alerts
        .lines()
        .filter(|l| l.contains("[ALERT]"))
        .map(|alert| {
            let mut found = BTreeSet::new();
            for n in lines_in(alert, file) {
                if let Some(s) = secs.iter().find(|s| s.first <= n && n <= s.last) {
                    found.extend(entity_of(&s.keyword, &s.name));
                }
            }
            for p in proxies_in(alert) {
                found.extend(entity_of("proxy", &p));
            }
            (alert.to_string(), found)
        })
        .collect()
}

/// Which field of an entity the rendered line `n` of `text` comes from, if it can tell: one of
/// the `extra` lines, or the `server_options` of a server line.
pub fn field_of_line(
    text: &str,
    n: usize,
    backend: Option<&Backend>,
    frontend: Option<&Frontend>,
) -> Option<String> {
    let line = text.lines().nth(n.checked_sub(1)?)?.trim();
    let extra = backend.map(|b| &b.extra).or(frontend.map(|f| &f.extra))?;
    if let Some(i) = extra.iter().position(|l| l.trim() == line) {
        return Some(format!("extra[{i}]"));
    }
    let opts = backend.and_then(|b| b.server_options.as_deref())?;
    (line.starts_with("server ") && line.ends_with(opts.trim())).then(|| "server_options".into())
}

/// The line numbers of `file` an alert text points at (every alert line).
pub fn alert_line_numbers(alerts: &str, file: &str) -> Vec<usize> {
    alerts.lines().flat_map(|a| lines_in(a, file)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "global\n    master-worker\n\ndefaults\n    mode http\n\nfrontend www\n    bind *:80\n    default_backend web\n\nbackend web\n    balance roundrobin\n    http-request deny if nope\n    server a 10.0.0.1:80\n\nbackend api\n    server b 10.0.0.2:80\n";

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sections_cover_their_lines() {
        let s = sections(TEXT);
        let got: Vec<(&str, &str, usize, usize)> = s
            .iter()
            .map(|s| (s.keyword.as_str(), s.name.as_str(), s.first, s.last))
            .collect();
        assert_eq!(
            got,
            vec![
                ("global", "", 1, 3),
                ("defaults", "", 4, 6),
                ("frontend", "www", 7, 10),
                ("backend", "web", 11, 15),
                ("backend", "api", 16, 17)
            ]
        );
    }

    #[test]
    fn alerts_are_blamed_on_the_entity_whose_lines_or_name_they_cite() {
        let alerts = "[ALERT]    (1) : config : parsing [/etc/haproxy/haproxy.cfg:13] : error detected while parsing an 'http-request deny' condition : no such ACL : 'nope'.\n\
[ALERT]    (1) : config : Proxy 'www': unable to find required default_backend: 'gone'.\n\
[ALERT]    (1) : config : [/etc/haproxy/haproxy.cfg:17] : 'server api/b' : verify is enabled by default but no CA file specified.\n\
[ALERT]    (1) : config : parsing [/etc/haproxy/haproxy.cfg:2] : unknown keyword 'frob' in 'global' section\n\
[ALERT]    (1) : config : Fatal errors found in configuration.";
        let b = blame(
            alerts,
            "/etc/haproxy/haproxy.cfg",
            TEXT,
            &names(&["web", "api"]),
            &names(&["www"]),
        );
        let got: Vec<Vec<String>> = b
            .iter()
            .map(|(_, e)| e.iter().map(|e| e.to_string()).collect())
            .collect();
        assert_eq!(
            got,
            vec![
                vec!["backend web".to_string()],
                vec!["frontend www".to_string()],
                vec!["backend api".to_string()],
                vec![],
                vec![]
            ]
        );
    }

    #[test]
    fn a_rendered_line_maps_back_to_its_field() {
        let mut web: Backend = serde_json::from_value(serde_json::json!({
            "name": "web", "app": "web", "version": "1",
            "extra": ["balance roundrobin", "http-request deny if nope"]
        }))
        .unwrap();
        assert_eq!(
            field_of_line(TEXT, 13, Some(&web), None).as_deref(),
            Some("extra[1]")
        );
        web.server_options = Some("10.0.0.1:80".into());
        assert_eq!(
            field_of_line(TEXT, 14, Some(&web), None).as_deref(),
            Some("server_options")
        );
        assert_eq!(field_of_line(TEXT, 99, Some(&web), None), None);
    }
}
