//! Request parsing: arbitrary method, path, query, headers and body through everything the API
//! checks before it touches a node (`bender::api::check_request`). It must never panic.
#![no_main]

use std::sync::OnceLock;

use bender::auth::{AuthConfig, CompatConfig, Guard, RegistrationConfig};
use libfuzzer_sys::fuzz_target;

fn guard() -> &'static Guard {
    static GUARD: OnceLock<Guard> = OnceLock::new();
    GUARD.get_or_init(|| {
        Guard::load(
            &AuthConfig::default(),
            &RegistrationConfig::default(),
            &CompatConfig::default(),
            false,
        )
        .expect("an empty config loads")
    })
}

const METHODS: &[&[u8]] = &[b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD"];
const PATHS: &[&str] = &[
    "/registrations/",
    "/v1/registrations",
    "/v1/registrations/",
    "/backends",
    "/backends/",
    "/frontends",
    "/v1/frontends/",
    "/health",
];

fuzz_target!(|input: (u8, u8, &str, &str, Option<&[u8]>, Option<&[u8]>, &[u8])| {
    let (m, p, path_tail, query, content_type, authorization, body) = input;
    let method = METHODS[m as usize % METHODS.len()];
    // Mostly real routes with fuzzed tails, so the body parsers are reached.
    let path = format!("{}{path_tail}", PATHS[p as usize % PATHS.len()]);
    let _ = bender::api::check_request(
        guard(),
        method,
        &path,
        query,
        content_type,
        authorization,
        body,
    );
});
