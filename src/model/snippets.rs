//! The allow-list of HAProxy directives a client may put in a backend's or a frontend's `extra`
//! lines and in a backend's `server_options`, with the arguments each one takes.
//!
//! A free-form line is config injection unless it is constrained: many directives evaluate
//! `%[...]` sample fetches or log-format variables (`%H` is the host name), some read files
//! (`errorfile`, `http-request return ... file`, `lua-load`, `crt`), and a section keyword opens
//! a new listener. So by default every line must match one of the forms below token by token,
//! and no accepted token can hold `%`, `$`, a quote, a brace, a backslash or a file argument.
//!
//! A node whose operator sets `api.config_snippets = true` also accepts raw lines from admin
//! credentials ([`Snippets::Raw`]): one printable line that does not open a section.

use super::Invalid;

/// Which section a line goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Backend,
    Frontend,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Backend => "backend",
            Section::Frontend => "frontend",
        }
    }
}

/// How free-form lines are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Snippets {
    /// Only the allow-listed directives (the default everywhere).
    #[default]
    AllowListed,
    /// Any single printable line that does not open a section: only when the node's config
    /// enables config snippets, and only from admin credentials.
    Raw,
}

/// Keywords that open a section in a HAProxy 2.6 config: no line may start with one.
pub const SECTION_KEYWORDS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "resolvers",
    "userlist",
    "program",
    "ring",
    "log-forward",
    "fcgi-app",
    "mailers",
    "cache",
    "http-errors",
    "crt-store",
    "traces",
];

/// Longest line accepted.
pub const MAX_LINE_LEN: usize = 256;

/// One token of a form.
#[derive(Debug, Clone, Copy)]
enum T {
    /// This exact word.
    Kw(&'static str),
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A HAProxy time: digits with an optional unit (us, ms, s, m, h, d).
    Time,
    /// An integer in the range.
    Int(u64, u64),
    /// An HTTP header name.
    Header,
    /// A static value of safe characters (no `%`, `$`, quotes, braces, spaces).
    Value,
    /// An HTTP status code, 100 to 599.
    Status,
    /// Status codes and ranges, comma-separated: `200`, `200-399`, `200,301-302`.
    StatusList,
    /// One or more of these words (last token only).
    Many(&'static [&'static str]),
    /// Zero or more of these words (last token only).
    Flags(&'static [&'static str]),
    /// One or more MIME types (last token only).
    Mimes,
    /// Server options, checked by [`check_server_options`] (last token only).
    ServerOptions,
}

const BE: u8 = 1;
const FE: u8 = 2;
const BOTH: u8 = BE | FE;

/// A form: where it may appear, its tokens, and whether it may end with `if`/`unless` ACLs.
struct Form {
    sections: u8,
    tokens: &'static [T],
    condition: bool,
}

const fn form(sections: u8, tokens: &'static [T], condition: bool) -> Form {
    Form {
        sections,
        tokens,
        condition,
    }
}

const FRONTEND_TIMEOUTS: &[&str] = &[
    "client",
    "http-request",
    "http-keep-alive",
    "client-fin",
    "tarpit",
];
const BACKEND_TIMEOUTS: &[&str] = &[
    "connect",
    "server",
    "queue",
    "tunnel",
    "check",
    "server-fin",
    "http-request",
    "http-keep-alive",
    "tarpit",
];
const FRONTEND_OPTIONS: &[&str] = &[
    "httplog",
    "tcplog",
    "dontlognull",
    "forwardfor",
    "http-server-close",
    "http-keep-alive",
    "httpclose",
    "http-buffer-request",
    "http-ignore-probes",
    "contstats",
    "socket-stats",
    "logasap",
    "clitcpka",
    "splice-auto",
    "idle-close-on-response",
];
const BACKEND_OPTIONS: &[&str] = &[
    "redispatch",
    "abortonclose",
    "allbackups",
    "forwardfor",
    "http-server-close",
    "http-keep-alive",
    "httpclose",
    "http-buffer-request",
    "log-health-checks",
    "prefer-last-server",
    "persist",
    "srvtcpka",
    "tcpka",
    "nolinger",
    "splice-auto",
];
/// The options HAProxy 2.6 accepts as `no option ...` (measured with `haproxy -c`: it refuses
/// negating `forwardfor`, `httplog`, `tcplog` and `tcpka`).
const FRONTEND_NEGATABLE: &[&str] = &[
    "dontlognull",
    "http-server-close",
    "http-keep-alive",
    "httpclose",
    "http-buffer-request",
    "http-ignore-probes",
    "contstats",
    "socket-stats",
    "logasap",
    "clitcpka",
    "splice-auto",
    "idle-close-on-response",
];
const BACKEND_NEGATABLE: &[&str] = &[
    "redispatch",
    "abortonclose",
    "allbackups",
    "http-server-close",
    "http-keep-alive",
    "httpclose",
    "http-buffer-request",
    "log-health-checks",
    "prefer-last-server",
    "persist",
    "srvtcpka",
    "nolinger",
    "splice-auto",
];
const HEADER_ACTIONS: &[&str] = &["set-header", "add-header"];
const REQ_RESP: &[&str] = &["http-request", "http-response"];
const REDIRECT_CODES: &[&str] = &["301", "302", "303", "307", "308"];
const SCHEMES: &[&str] = &["http", "https"];
const COMPRESSION: &[&str] = &["gzip", "deflate", "raw-deflate", "identity"];
const COOKIE_MODES: &[&str] = &["insert", "rewrite", "prefix"];
const COOKIE_FLAGS: &[&str] = &[
    "indirect", "nocache", "httponly", "secure", "preserve", "postonly",
];

use T::*;

static FORMS: &[Form] = &[
    form(FE, &[Kw("timeout"), OneOf(FRONTEND_TIMEOUTS), Time], false),
    form(BE, &[Kw("timeout"), OneOf(BACKEND_TIMEOUTS), Time], false),
    form(FE, &[Kw("option"), OneOf(FRONTEND_OPTIONS)], false),
    form(
        FE,
        &[Kw("no"), Kw("option"), OneOf(FRONTEND_NEGATABLE)],
        false,
    ),
    form(BE, &[Kw("option"), OneOf(BACKEND_OPTIONS)], false),
    form(
        BE,
        &[Kw("no"), Kw("option"), OneOf(BACKEND_NEGATABLE)],
        false,
    ),
    form(
        BOTH,
        &[OneOf(REQ_RESP), OneOf(HEADER_ACTIONS), Header, Value],
        true,
    ),
    form(BOTH, &[OneOf(REQ_RESP), Kw("del-header"), Header], true),
    form(
        BOTH,
        &[Kw("http-request"), OneOf(&["allow", "deny", "tarpit"])],
        true,
    ),
    form(
        BOTH,
        &[Kw("http-request"), Kw("deny"), Kw("deny_status"), Status],
        true,
    ),
    form(
        BOTH,
        &[
            Kw("http-request"),
            Kw("redirect"),
            Kw("scheme"),
            OneOf(SCHEMES),
        ],
        true,
    ),
    form(
        BOTH,
        &[
            Kw("http-request"),
            Kw("redirect"),
            Kw("scheme"),
            OneOf(SCHEMES),
            Kw("code"),
            OneOf(REDIRECT_CODES),
        ],
        true,
    ),
    form(
        BOTH,
        &[
            Kw("http-request"),
            Kw("redirect"),
            OneOf(&["prefix", "location"]),
            Value,
        ],
        true,
    ),
    form(
        BOTH,
        &[
            Kw("http-request"),
            Kw("redirect"),
            OneOf(&["prefix", "location"]),
            Value,
            Kw("code"),
            OneOf(REDIRECT_CODES),
        ],
        true,
    ),
    form(
        BOTH,
        &[Kw("compression"), Kw("algo"), Many(COMPRESSION)],
        false,
    ),
    form(BOTH, &[Kw("compression"), Kw("type"), Mimes], false),
    form(FE, &[Kw("maxconn"), Int(1, 10_000_000)], false),
    form(
        FE,
        &[Kw("rate-limit"), Kw("sessions"), Int(1, 10_000_000)],
        false,
    ),
    form(
        FE,
        &[
            Kw("capture"),
            OneOf(&["request", "response"]),
            Kw("header"),
            Header,
            Kw("len"),
            Int(1, 1024),
        ],
        false,
    ),
    form(FE, &[Kw("monitor-uri"), Value], false),
    form(BE, &[Kw("retries"), Int(0, 100)], false),
    form(BE, &[Kw("fullconn"), Int(1, 10_000_000)], false),
    form(
        BE,
        &[
            Kw("http-reuse"),
            OneOf(&["never", "safe", "aggressive", "always"]),
        ],
        false,
    ),
    form(
        BE,
        &[Kw("hash-type"), OneOf(&["map-based", "consistent"])],
        false,
    ),
    form(
        BE,
        &[
            Kw("hash-type"),
            OneOf(&["map-based", "consistent"]),
            OneOf(&["sdbm", "djb2", "wt6", "crc32"]),
        ],
        false,
    ),
    form(
        BE,
        &[
            Kw("cookie"),
            Header,
            OneOf(COOKIE_MODES),
            Flags(COOKIE_FLAGS),
        ],
        false,
    ),
    form(
        BE,
        &[Kw("http-check"), Kw("expect"), Kw("status"), StatusList],
        false,
    ),
    form(
        BE,
        &[
            Kw("http-check"),
            Kw("expect"),
            Kw("!"),
            Kw("status"),
            StatusList,
        ],
        false,
    ),
    form(
        BE,
        &[Kw("http-check"), Kw("expect"), Kw("string"), Value],
        false,
    ),
    form(BE, &[Kw("http-check"), Kw("send-state")], false),
    form(BE, &[Kw("default-server"), ServerOptions], false),
];

/// Sample fetches an `acl` line may test. None reads the environment, a file or a variable;
/// each only looks at the request or the connection.
const ACL_FETCHES: &[&str] = &[
    "path", "path_beg", "path_end", "path_dir", "path_sub", "url", "url_beg", "query", "src",
    "dst_port", "method", "ssl_fc",
];
/// Fetches that take one header (or parameter) name in parentheses.
const ACL_FETCHES_WITH_NAME: &[&str] = &[
    "hdr",
    "hdr_beg",
    "hdr_end",
    "hdr_dom",
    "hdr_sub",
    "req.hdr",
    "url_param",
];
const ACL_MATCH_METHODS: &[&str] = &[
    "str", "beg", "end", "sub", "dom", "dir", "found", "ip", "int",
];

/// Server options that take no argument.
const SERVER_FLAGS: &[&str] = &[
    "backup",
    "check",
    "no-check",
    "send-proxy",
    "send-proxy-v2",
    "no-send-proxy",
    "ssl",
    "no-ssl",
    "check-ssl",
    "no-check-ssl",
    "check-send-proxy",
    "non-stick",
    "tfo",
    "no-tfo",
];

/// Server options that take one argument, and what it must be.
const SERVER_ARGS: &[(&str, T)] = &[
    ("maxconn", Int(0, 10_000_000)),
    ("maxqueue", Int(0, 10_000_000)),
    ("minconn", Int(0, 10_000_000)),
    ("weight", Int(0, 256)),
    ("inter", Time),
    ("fastinter", Time),
    ("downinter", Time),
    ("rise", Int(1, 1000)),
    ("fall", Int(1, 1000)),
    ("slowstart", Time),
    ("port", Int(1, 65535)),
    (
        "on-error",
        OneOf(&["fastinter", "fail-check", "sudden-death", "mark-down"]),
    ),
    ("on-marked-down", OneOf(&["shutdown-sessions"])),
    ("on-marked-up", OneOf(&["shutdown-backup-sessions"])),
    // No `verify`: `verify required` needs a CA file (a file argument), and `verify none` would
    // let an API client turn off the check of a server's certificate. TLS to servers works when
    // the template sets the CA (`default-server ca-file ...`) or, on a trusted LAN, `verify none`.
    ("resolve-prefer", OneOf(&["ipv4", "ipv6"])),
    ("pool-max-conn", Int(0, 100_000)),
    ("pool-purge-delay", Time),
    ("observe", OneOf(&["layer4", "layer7"])),
    ("error-limit", Int(1, 1000)),
    ("cookie", Value),
    ("alpn", Value),
    ("check-alpn", Value),
];

/// Characters of a static value: no `%` (sample fetches and log-format variables), no `$`
/// (environment variables), no quotes, braces, brackets, `#`, `\` or spaces.
fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?&=+,;@!*()".contains(c)
}

pub(crate) fn is_value(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_LINE_LEN && t.chars().all(is_value_char)
}

/// A HAProxy time of at least one unit: `0` means "no timeout" to HAProxy, which an API client
/// must not be able to set (`timeout client 0` invites slow clients to hold connections).
fn is_time(t: &str) -> bool {
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &t[digits.len()..];
    !digits.is_empty()
        && digits.len() <= 9
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
        && matches!(unit, "" | "us" | "ms" | "s" | "m" | "h" | "d")
}

fn int_in(t: &str, min: u64, max: u64) -> bool {
    t.len() <= 12
        && t.bytes().all(|b| b.is_ascii_digit())
        && t.parse::<u64>().is_ok_and(|n| (min..=max).contains(&n))
}

fn is_header_name(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.starts_with(|c: char| c.is_ascii_alphanumeric())
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn is_status(t: &str) -> bool {
    t.len() == 3 && int_in(t, 100, 599)
}

fn is_status_list(t: &str) -> bool {
    t.len() <= 64
        && t.split(',').all(|part| match part.split_once('-') {
            Some((a, b)) => is_status(a) && is_status(b),
            None => is_status(part),
        })
}

fn is_mime(t: &str) -> bool {
    t.split_once('/').is_some_and(|(a, b)| {
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        };
        ok(a) && ok(b)
    })
}

fn is_acl_name(t: &str) -> bool {
    (1..=32).contains(&t.len())
        && t.starts_with(|c: char| c.is_ascii_alphabetic())
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Whether `words` (the whole rest of the line) is `if|unless` and one or more named ACLs,
/// each optionally negated with `!` and optionally joined by `or` / `||`.
fn is_condition(words: &[&str]) -> bool {
    let Some((first, rest)) = words.split_first() else {
        return false;
    };
    if !matches!(*first, "if" | "unless") || rest.is_empty() {
        return false;
    }
    let mut want_term = true;
    for w in rest {
        if matches!(*w, "or" | "||") {
            if want_term {
                return false;
            }
            want_term = true;
            continue;
        }
        if !is_acl_name(w.strip_prefix('!').unwrap_or(w)) {
            return false;
        }
        want_term = false;
    }
    !want_term
}

/// Whether one token matches a single-token class.
fn token_ok(class: T, t: &str) -> bool {
    match class {
        Kw(k) => t == k,
        OneOf(words) => words.contains(&t),
        Time => is_time(t),
        Int(min, max) => int_in(t, min, max),
        Header => is_header_name(t),
        Value => is_value(t),
        Status => is_status(t),
        StatusList => is_status_list(t),
        Many(_) | Flags(_) | Mimes | ServerOptions => false,
    }
}

/// Whether `words` match `form` (its tokens, then an optional condition).
fn matches(form: &Form, words: &[&str]) -> bool {
    let mut i = 0;
    for (n, class) in form.tokens.iter().enumerate() {
        let last = n + 1 == form.tokens.len();
        match *class {
            Many(allowed) | Flags(allowed) => {
                debug_assert!(last, "variadic tokens end a form");
                let rest = &words[i.min(words.len())..];
                let min = if matches!(class, Many(_)) { 1 } else { 0 };
                return rest.len() >= min && rest.iter().all(|w| allowed.contains(w));
            }
            Mimes => {
                let rest = &words[i.min(words.len())..];
                return !rest.is_empty() && rest.iter().all(|w| is_mime(w));
            }
            ServerOptions => {
                let rest = &words[i.min(words.len())..];
                return !rest.is_empty() && server_options_ok(rest).is_ok();
            }
            single => match words.get(i) {
                Some(w) if token_ok(single, w) => i += 1,
                _ => return false,
            },
        }
    }
    let rest = &words[i..];
    rest.is_empty() || (form.condition && is_condition(rest))
}

/// `acl <name> <fetch> [-i] [-m method] <value>...`
fn acl_ok(words: &[&str]) -> Result<(), String> {
    let name = words.get(1).copied().unwrap_or("");
    if !is_acl_name(name) {
        return Err(format!(
            "acl name {name:?} must be 1 to 32 letters, digits, '_', '.' or '-', starting with a letter"
        ));
    }
    let fetch = words.get(2).copied().unwrap_or("");
    let fetch_ok = ACL_FETCHES.contains(&fetch)
        || fetch
            .strip_suffix(')')
            .and_then(|f| f.split_once('('))
            .is_some_and(|(f, arg)| ACL_FETCHES_WITH_NAME.contains(&f) && is_header_name(arg));
    if !fetch_ok {
        return Err(format!(
            "acl fetch {fetch:?} is not allowed; allowed: {}, and {} with a header name, e.g. hdr(host)",
            ACL_FETCHES.join(", "),
            ACL_FETCHES_WITH_NAME.join("(), ")
        ));
    }
    let mut values = 0;
    let mut found = false;
    let mut rest = words[3..].iter();
    while let Some(w) = rest.next() {
        match *w {
            "-i" => {}
            "-m" => match rest.next() {
                Some(m) if ACL_MATCH_METHODS.contains(m) => found |= *m == "found",
                other => {
                    return Err(format!(
                        "acl -m {:?} is not allowed; allowed: {}",
                        other.copied().unwrap_or(""),
                        ACL_MATCH_METHODS.join(", ")
                    ))
                }
            },
            v if v.starts_with('-') => return Err(format!("acl flag {v:?} is not allowed")),
            v if is_value(v) => values += 1,
            v => return Err(format!("acl value {v:?} may only hold {}", VALUE_CHARS)),
        }
    }
    if values == 0 && !found {
        return Err("an acl needs at least one value to match (or -m found)".into());
    }
    Ok(())
}

const VALUE_CHARS: &str = "letters, digits and -._~:/?&=+,;@!*()";

/// Checks the words of a `server_options` value (or a `default-server` line).
fn server_options_ok(words: &[&str]) -> Result<(), String> {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if SERVER_FLAGS.contains(w) {
            continue;
        }
        match SERVER_ARGS.iter().find(|(k, _)| k == w) {
            Some((k, class)) => match it.next() {
                Some(arg) if token_ok(*class, arg) => {}
                Some(arg) => return Err(format!("{arg:?} is not a valid argument of {k}")),
                None => return Err(format!("{k} needs an argument")),
            },
            None => {
                return Err(format!(
                    "server option {w:?} is not allowed; allowed: {}, {}",
                    SERVER_FLAGS.join(", "),
                    SERVER_ARGS
                        .iter()
                        .map(|(k, _)| format!("{k} <arg>"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
    }
    Ok(())
}

/// The baseline every line meets, raw or not: one printable ASCII line, no `#`, quote or
/// backslash, not blank, not too long, and not a section keyword.
pub fn validate_raw_line(field: &str, line: &str) -> Result<(), Invalid> {
    if line.trim().is_empty() {
        return Err(Invalid::new(field, "must not be blank"));
    }
    if line.len() > MAX_LINE_LEN {
        return Err(Invalid::new(
            field,
            format!("must be at most {MAX_LINE_LEN} characters"),
        ));
    }
    let ok = line
        .chars()
        .all(|c| (c.is_ascii_graphic() || c == ' ') && !matches!(c, '"' | '\'' | '#' | '\\'));
    if !ok {
        return Err(Invalid::new(
            field,
            format!(
                "{:?} must be one line of printable ASCII characters without quotes, '#' or '\\'",
                truncate(line)
            ),
        ));
    }
    let first = line.split_whitespace().next().unwrap_or("");
    if SECTION_KEYWORDS.contains(&first) {
        return Err(Invalid::new(
            field,
            format!("{line:?} must not open a new section ({first})"),
        ));
    }
    // `.if`/`.else`/`.endif` would let lines of several entities hide the ones between them,
    // and `.diag`/`.alert` and the like are the config's own directives, not an entity's.
    if first.starts_with('.') {
        return Err(Invalid::new(
            field,
            format!("{line:?} must not be a config-file directive ({first})"),
        ));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks one `extra` line for `section`.
pub fn validate_line(
    field: &str,
    section: Section,
    line: &str,
    snippets: Snippets,
) -> Result<(), Invalid> {
    validate_raw_line(field, line)?;
    if snippets == Snippets::Raw {
        return Ok(());
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let refuse = |why: String| {
        Invalid::new(
            field,
            format!(
                "{line:?} {why} (raw lines need config_snippets = true in the node's [api] config and an admin credential)"
            ),
        )
    };
    if words[0] == "acl" {
        return acl_ok(&words).map_err(refuse);
    }
    let bit = match section {
        Section::Backend => BE,
        Section::Frontend => FE,
    };
    let candidates: Vec<&Form> = FORMS
        .iter()
        .filter(|f| f.sections & bit != 0)
        .filter(|f| token_ok(f.tokens[0], words[0]))
        .collect();
    if candidates.iter().any(|f| matches(f, &words)) {
        return Ok(());
    }
    if candidates.is_empty() {
        let mut allowed: Vec<&str> = FORMS
            .iter()
            .filter(|f| f.sections & bit != 0)
            .flat_map(|f| match f.tokens[0] {
                Kw(k) => vec![k],
                OneOf(ks) => ks.to_vec(),
                _ => vec![],
            })
            .chain(std::iter::once("acl"))
            .collect();
        allowed.sort_unstable();
        allowed.dedup();
        return Err(refuse(format!(
            "uses {:?}, which is not allowed in a {}; allowed: {}",
            words[0],
            section.name(),
            allowed.join(", ")
        )));
    }
    Err(refuse(format!(
        "is not an allowed form of {:?} in a {}: see docs/security.md for the allowed directives and arguments; values may only hold {VALUE_CHARS}",
        words[0],
        section.name()
    )))
}

/// Checks a list of `extra` lines.
pub fn validate_lines(
    field: &str,
    section: Section,
    lines: &[String],
    snippets: Snippets,
    max_lines: usize,
) -> Result<(), Invalid> {
    if lines.len() > max_lines {
        return Err(Invalid::new(field, format!("at most {max_lines} lines")));
    }
    for (i, line) in lines.iter().enumerate() {
        validate_line(&format!("{field}[{i}]"), section, line, snippets)?;
    }
    Ok(())
}

/// Checks a backend's `server_options` (appended to every `server` line).
pub fn validate_server_options(
    field: &str,
    value: &str,
    snippets: Snippets,
) -> Result<(), Invalid> {
    validate_raw_line(field, value)?;
    if snippets == Snippets::Raw {
        return Ok(());
    }
    let words: Vec<&str> = value.split_whitespace().collect();
    server_options_ok(&words).map_err(|why| {
        Invalid::new(
            field,
            format!("{why} (raw options need config_snippets = true in the node's [api] config and an admin credential)"),
        )
    })
}

/// One example of every allow-listed form, for documentation and for the test that runs each
/// through `haproxy -c`.
pub const EXAMPLES: &[(Section, &str)] = &[
    (Section::Frontend, "timeout client 30s"),
    (Section::Frontend, "timeout http-request 5s"),
    (Section::Frontend, "option httplog"),
    (Section::Frontend, "no option http-buffer-request"),
    (Section::Frontend, "maxconn 5000"),
    (Section::Frontend, "rate-limit sessions 100"),
    (Section::Frontend, "capture request header Host len 64"),
    (Section::Frontend, "monitor-uri /haproxy-alive"),
    (Section::Frontend, "acl admin path_beg -i /admin"),
    (
        Section::Frontend,
        "acl internal src 10.0.0.0/8 192.168.0.0/16",
    ),
    (Section::Frontend, "acl api hdr(host) -i api.example.com"),
    (Section::Frontend, "acl has_token url_param(token) -m found"),
    (
        Section::Frontend,
        "http-request deny deny_status 403 if admin !internal",
    ),
    (
        Section::Frontend,
        "http-request redirect scheme https code 301 unless internal",
    ),
    (Section::Frontend, "http-request redirect prefix /v2 if api"),
    (
        Section::Frontend,
        "http-request set-header X-Forwarded-Proto https",
    ),
    (Section::Frontend, "http-request del-header X-Debug"),
    (
        Section::Frontend,
        "http-response add-header Strict-Transport-Security max-age=31536000",
    ),
    (Section::Frontend, "compression algo gzip deflate"),
    (
        Section::Frontend,
        "compression type text/html application/json",
    ),
    (Section::Backend, "timeout server 60s"),
    (Section::Backend, "timeout check 2s"),
    (Section::Backend, "option redispatch"),
    (Section::Backend, "no option allbackups"),
    (Section::Backend, "retries 2"),
    (Section::Backend, "fullconn 1000"),
    (Section::Backend, "http-reuse safe"),
    (Section::Backend, "hash-type consistent djb2"),
    (
        Section::Backend,
        "cookie SRV insert indirect nocache httponly",
    ),
    (Section::Backend, "http-check expect status 200-399"),
    (Section::Backend, "http-check expect string ok"),
    (Section::Backend, "http-check send-state"),
    (Section::Backend, "default-server inter 2s fall 3 rise 2"),
    (Section::Backend, "acl slow path_beg /reports"),
    (
        Section::Backend,
        "http-request set-header X-App web if slow",
    ),
    (Section::Backend, "http-response del-header Server"),
];

/// Example `server_options` values that use most allowed options.
pub const SERVER_OPTIONS_EXAMPLES: &[&str] = &[
    "maxconn 100 maxqueue 10 minconn 5 weight 10 inter 2s fastinter 500ms downinter 5s rise 2 fall 3 slowstart 10s",
    "on-error mark-down on-marked-down shutdown-sessions on-marked-up shutdown-backup-sessions observe layer7 error-limit 10",
    "pool-max-conn 10 pool-purge-delay 5s resolve-prefer ipv4 non-stick tfo send-proxy-v2",
];

/// A concrete line for every allowed alternative of every form, and every server option: what
/// the render tests run through `haproxy -c`. Conditions name the ACL `a`, which the lines
/// define first.
#[cfg(test)]
pub(crate) fn expansions() -> (Vec<(Section, String)>, Vec<String>) {
    fn sample(class: T) -> String {
        match class {
            Kw(k) => k.into(),
            OneOf(w) | Many(w) => w[0].into(),
            Flags(_) => String::new(),
            Time => "2s".into(),
            Int(min, max) => min.max(1).min(max).to_string(),
            Header => "X-Test".into(),
            Value => "/ok".into(),
            Status => "403".into(),
            StatusList => "200-399".into(),
            Mimes => "text/html".into(),
            ServerOptions => "inter 2s".into(),
        }
    }
    let mut lines = vec![
        (Section::Frontend, "acl a path /".to_string()),
        (Section::Backend, "acl a path /".to_string()),
    ];
    for f in FORMS {
        for (pos, class) in f.tokens.iter().enumerate() {
            let alternatives: Vec<String> = match class {
                OneOf(w) | Many(w) => w.iter().map(|s| s.to_string()).collect(),
                Flags(w) => std::iter::once(String::new())
                    .chain(w.iter().map(|s| s.to_string()))
                    .collect(),
                _ if pos == 0 => vec![sample(*class)],
                _ => continue,
            };
            for alt in alternatives {
                let mut words: Vec<String> = f.tokens.iter().map(|t| sample(*t)).collect();
                words[pos] = alt;
                let mut line = words
                    .iter()
                    .filter(|w| !w.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ");
                if f.condition {
                    line.push_str(" if a");
                }
                for (bit, section) in [(BE, Section::Backend), (FE, Section::Frontend)] {
                    if f.sections & bit != 0 {
                        lines.push((section, line.clone()));
                    }
                }
            }
        }
    }
    for fetch in ACL_FETCHES {
        lines.push((Section::Frontend, format!("acl f_{fetch} {fetch} -m str x")));
    }
    for fetch in ACL_FETCHES_WITH_NAME {
        lines.push((
            Section::Frontend,
            format!("acl f_{} {fetch}(x-test) -i x", fetch.replace('.', "_")),
        ));
    }
    for m in ACL_MATCH_METHODS {
        lines.push((Section::Frontend, format!("acl m_{m} hdr(host) -m {m} 1")));
    }
    let mut options: Vec<String> = SERVER_FLAGS.iter().map(|f| f.to_string()).collect();
    options.extend(SERVER_ARGS.iter().map(|(k, class)| {
        let arg = match class {
            Value => "h2".to_string(),
            c => sample(*c),
        };
        format!("{k} {arg}")
    }));
    (lines, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_expansion_is_allowed() {
        let (lines, options) = expansions();
        for (section, line) in &lines {
            let r = validate_line("extra", *section, line, Snippets::AllowListed);
            assert!(r.is_ok(), "{section:?} {line}: {r:?}");
        }
        for o in &options {
            validate_server_options("server_options", o, Snippets::AllowListed).unwrap();
        }
    }

    fn allowed(section: Section, line: &str) -> bool {
        validate_line("extra", section, line, Snippets::AllowListed).is_ok()
    }

    #[test]
    fn every_example_is_allowed_in_its_section() {
        for (section, line) in EXAMPLES {
            let r = validate_line("extra", *section, line, Snippets::AllowListed);
            assert!(r.is_ok(), "{line}: {r:?}");
        }
        for opts in SERVER_OPTIONS_EXAMPLES {
            validate_server_options("server_options", opts, Snippets::AllowListed).unwrap();
        }
    }

    #[test]
    fn what_the_issue_found_is_refused() {
        for line in [
            "http-response set-header X-Leak %[env(HOME)]_%[hostname]",
            "http-response set-header X-Host %H",
            "http-request return status 200 file /etc/bender/tokens/admin",
            "http-request return status 200 lf-file /etc/passwd",
            "errorfile 503 /etc/shadow",
            "lua-load /tmp/x.lua",
            "log-forward syslog",
            "fcgi-app php",
            "frobnicate yes",
            "acl leak env(HOME) -m found",
            "acl x hdr(host) %[env(HOME)]",
            "http-request set-header X ${HOME}",
            "http-request deny if { path_beg /x }",
            "use_backend evil",
            "server evil 6.6.6.6:80",
        ] {
            assert!(!allowed(Section::Frontend, line), "{line}");
            assert!(!allowed(Section::Backend, line), "{line}");
        }
        for opts in [
            "crt /etc/ssl/key.pem",
            "ca-file /x",
            "sni req.hdr(host)",
            "verify required",
            "ssl verify none",
            "weight 300",
            "maxconn",
        ] {
            assert!(
                validate_server_options("server_options", opts, Snippets::AllowListed).is_err(),
                "{opts}"
            );
        }
    }

    #[test]
    fn sections_have_their_own_directives() {
        assert!(allowed(Section::Frontend, "timeout client 5s"));
        assert!(!allowed(Section::Backend, "timeout client 5s"));
        // Zero means "no timeout" to HAProxy.
        assert!(!allowed(Section::Frontend, "timeout client 0"));
        assert!(!allowed(Section::Frontend, "timeout http-request 0s"));
        assert!(!allowed(Section::Backend, "timeout server 000ms"));
        assert!(allowed(Section::Backend, "timeout server 10s"));
        assert!(allowed(Section::Backend, "retries 3"));
        assert!(!allowed(Section::Frontend, "retries 3"));
    }

    #[test]
    fn raw_lines_are_single_lines_that_open_no_section() {
        for line in [
            "http-response set-header X-Leak %[hostname]",
            "frobnicate yes",
            "use_backend other if { path_beg /x }",
        ] {
            validate_line("extra", Section::Frontend, line, Snippets::Raw).unwrap();
        }
        for line in [
            "a\nb",
            "backend evil",
            "log-forward x",
            "fcgi-app y",
            "x # y",
            "x \"y\"",
            " ",
            "a\u{2028}b",
            "a\0b",
            ".if 0",
            ".endif",
            ".diag x",
        ] {
            assert!(
                validate_line("extra", Section::Frontend, line, Snippets::Raw).is_err(),
                "{line:?}"
            );
        }
    }

    #[test]
    fn conditions_name_acls_only() {
        assert!(is_condition(&["if", "a", "!b", "or", "c"]));
        assert!(!is_condition(&["if"]));
        assert!(!is_condition(&["if", "a", "or"]));
        assert!(!is_condition(&["if", "{", "path", "}"]));
        assert!(!is_condition(&["when", "a"]));
    }

    proptest! {
        /// Whatever a client sends, an allow-listed line holds nothing that evaluates, reads a
        /// file, or escapes its section.
        #[test]
        fn allow_listed_lines_hold_no_fetch_file_or_escape(
            words in proptest::collection::vec(
                prop_oneof![
                    "[a-z-]{1,12}",
                    "\\PC{0,12}",
                    Just("%[env(HOME)]".to_string()),
                    Just("file".to_string()),
                    Just("/etc/passwd".to_string()),
                    Just("if".to_string()),
                    Just("http-request".to_string()),
                    Just("set-header".to_string()),
                    Just("acl".to_string()),
                ],
                1..8,
            ),
            backend in any::<bool>(),
        ) {
            let line = words.join(" ");
            let section = if backend { Section::Backend } else { Section::Frontend };
            if validate_line("x", section, &line, Snippets::AllowListed).is_ok() {
                for bad in ['%', '$', '"', '\'', '{', '}', '[', ']', '\\', '#', '\n', '\r', '`'] {
                    prop_assert!(!line.contains(bad), "{line:?}");
                }
                let words: Vec<&str> = line.split_whitespace().collect();
                prop_assert!(!SECTION_KEYWORDS.contains(&words[0]));
                // The directives that read files or run code are never the one a line starts.
                prop_assert!(!matches!(words[0], "errorfile" | "errorfiles" | "errorloc" | "lua-load" | "lua-prepend-path" | "server"));
                prop_assert!(words.get(1) != Some(&"return"));
            }
        }
    }
}
