//! Concrete lines of the allow-list: documentation, and what the render tests run through
//! `haproxy -c`.

#[cfg(test)]
use super::forms::*;
use super::Section;

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
