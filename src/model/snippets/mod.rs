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

mod examples;
mod forms;

#[cfg(test)]
pub(crate) use examples::expansions;
pub use examples::{EXAMPLES, SERVER_OPTIONS_EXAMPLES};
use forms::*;

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

#[cfg(test)]
mod tests;
