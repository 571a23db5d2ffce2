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
