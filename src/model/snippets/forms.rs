//! The allow-list itself: every form a free-form line may take, token by token, and the server
//! options with what each takes.

/// One token of a form.
#[derive(Debug, Clone, Copy)]
pub(super) enum T {
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

pub(super) const BE: u8 = 1;
pub(super) const FE: u8 = 2;
pub(super) const BOTH: u8 = BE | FE;

/// A form: where it may appear, its tokens, and whether it may end with `if`/`unless` ACLs.
pub(super) struct Form {
    pub(super) sections: u8,
    pub(super) tokens: &'static [T],
    pub(super) condition: bool,
}

pub(super) const fn form(sections: u8, tokens: &'static [T], condition: bool) -> Form {
    Form {
        sections,
        tokens,
        condition,
    }
}

pub(super) const FRONTEND_TIMEOUTS: &[&str] = &[
    "client",
    "http-request",
    "http-keep-alive",
    "client-fin",
    "tarpit",
];
pub(super) const BACKEND_TIMEOUTS: &[&str] = &[
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
pub(super) const FRONTEND_OPTIONS: &[&str] = &[
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
pub(super) const BACKEND_OPTIONS: &[&str] = &[
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
pub(super) const FRONTEND_NEGATABLE: &[&str] = &[
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
pub(super) const BACKEND_NEGATABLE: &[&str] = &[
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
pub(super) const HEADER_ACTIONS: &[&str] = &["set-header", "add-header"];
pub(super) const REQ_RESP: &[&str] = &["http-request", "http-response"];
pub(super) const REDIRECT_CODES: &[&str] = &["301", "302", "303", "307", "308"];
pub(super) const SCHEMES: &[&str] = &["http", "https"];
pub(super) const COMPRESSION: &[&str] = &["gzip", "deflate", "raw-deflate", "identity"];
pub(super) const COOKIE_MODES: &[&str] = &["insert", "rewrite", "prefix"];
pub(super) const COOKIE_FLAGS: &[&str] = &[
    "indirect", "nocache", "httponly", "secure", "preserve", "postonly",
];

pub(super) use T::*;

pub(super) static FORMS: &[Form] = &[
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
pub(super) const ACL_FETCHES: &[&str] = &[
    "path", "path_beg", "path_end", "path_dir", "path_sub", "url", "url_beg", "query", "src",
    "dst_port", "method", "ssl_fc",
];
/// Fetches that take one header (or parameter) name in parentheses.
pub(super) const ACL_FETCHES_WITH_NAME: &[&str] = &[
    "hdr",
    "hdr_beg",
    "hdr_end",
    "hdr_dom",
    "hdr_sub",
    "req.hdr",
    "url_param",
];
pub(super) const ACL_MATCH_METHODS: &[&str] = &[
    "str", "beg", "end", "sub", "dom", "dir", "found", "ip", "int",
];

/// Server options that take no argument.
pub(super) const SERVER_FLAGS: &[&str] = &[
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
pub(super) const SERVER_ARGS: &[(&str, T)] = &[
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
