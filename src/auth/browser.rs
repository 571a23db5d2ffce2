//! Requests a web browser makes on someone else's behalf.
//!
//! A page on any site can make the browser of someone on an LB host send a POST to
//! `http://127.0.0.1:1729` (a "simple" request needs no CORS preflight), and a browser that holds
//! an admin client certificate presents it to any site that asks. DNS rebinding goes further: a
//! name the attacker controls starts resolving to 127.0.0.1, so the page becomes "same-origin"
//! with the API and can read what it answers. bender has no browser clients that need any of
//! this, so it refuses:
//! - a request whose `Sec-Fetch-Site` says it comes from another site;
//! - a request whose `Origin` is not the origin the request was sent to (its `Host`);
//! - on a node that lets loopback clients in as admin for want of credentials, a request whose
//!   `Host` is not a loopback address or `localhost`: that is what a rebound name looks like.
//!
//! Clients that are not browsers (the CLI, curl, the 0.2.1 client, app servers) send none of
//! `Origin` and `Sec-Fetch-Site`, and a loopback `Host` or none.

use std::net::IpAddr;

use super::Via;

/// The headers that tell what a browser is doing (raw bytes: anything may arrive).
#[derive(Debug, Default, Clone, Copy)]
pub struct BrowserHeaders<'a> {
    pub host: Option<&'a [u8]>,
    pub origin: Option<&'a [u8]>,
    pub sec_fetch_site: Option<&'a [u8]>,
}

/// Why a request was refused as a browser's cross-site or rebound request.
pub fn check(h: &BrowserHeaders<'_>, via: Via) -> Result<(), String> {
    if let Some(site) = h.sec_fetch_site {
        let site = String::from_utf8_lossy(site);
        let site = site.trim();
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return Err(format!(
                "a browser sent this request from another site (Sec-Fetch-Site: {site}); the API does not take cross-site requests"
            ));
        }
    }
    let host = h
        .host
        .map(|v| String::from_utf8_lossy(v).trim().to_string());
    if let Some(origin) = h.origin {
        let origin = String::from_utf8_lossy(origin);
        let origin = origin.trim();
        let same = host.as_deref().is_some_and(|host| {
            origin_authority(origin).is_some_and(|a| a.eq_ignore_ascii_case(host))
        });
        if !same {
            return Err(format!(
                "a browser sent this request from {origin:?}, which is not this API's origin; the API does not take cross-site requests"
            ));
        }
    }
    if via == Via::Loopback {
        if let Some(host) = host.as_deref() {
            if !loopback_host(host) {
                return Err(format!(
                    "Host {host:?} is not this machine's: without credentials the API serves only clients on its own host that address it as localhost or a loopback address"
                ));
            }
        }
    }
    Ok(())
}

/// `host[:port]` of an origin such as `https://host:port` (`None` for `null` and the like).
fn origin_authority(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// Whether a `Host` header names this machine: `localhost`, a loopback address, with or
/// without a port.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, port))
                if port.is_empty() || port.strip_prefix(':').is_some_and(is_port) =>
            {
                inside
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(
        host: Option<&'a str>,
        origin: Option<&'a str>,
        site: Option<&'a str>,
    ) -> BrowserHeaders<'a> {
        BrowserHeaders {
            host: host.map(str::as_bytes),
            origin: origin.map(str::as_bytes),
            sec_fetch_site: site.map(str::as_bytes),
        }
    }

    #[test]
    fn clients_that_are_not_browsers_pass() {
        for via in [Via::Loopback, Via::Token, Via::Compat] {
            assert!(check(&h(Some("127.0.0.1:1729"), None, None), via).is_ok());
            assert!(check(&h(Some("localhost:1729"), None, None), via).is_ok());
            assert!(check(&h(Some("[::1]:1729"), None, None), via).is_ok());
            assert!(check(&h(None, None, None), via).is_ok());
        }
        // With a credential any Host is fine: a token is not something a page can borrow.
        assert!(check(&h(Some("lb1.example.com:1729"), None, None), Via::Token).is_ok());
    }

    #[test]
    fn cross_site_requests_are_refused_whatever_the_credential() {
        for via in [Via::Loopback, Via::Token, Via::Certificate, Via::OpenRead] {
            let e = check(&h(Some("127.0.0.1:1729"), None, Some("cross-site")), via).unwrap_err();
            assert!(e.contains("Sec-Fetch-Site"), "{e}");
            assert!(check(&h(Some("127.0.0.1:1729"), None, Some("same-site")), via).is_err());
            let e = check(
                &h(Some("127.0.0.1:1729"), Some("https://evil.example"), None),
                via,
            )
            .unwrap_err();
            assert!(e.contains("evil.example"), "{e}");
            assert!(check(&h(Some("127.0.0.1:1729"), Some("null"), None), via).is_err());
            assert!(check(&h(None, Some("http://127.0.0.1:1729"), None), via).is_err());
        }
    }

    #[test]
    fn a_same_origin_page_passes() {
        let ok = h(
            Some("127.0.0.1:1729"),
            Some("http://127.0.0.1:1729"),
            Some("same-origin"),
        );
        assert!(check(&ok, Via::Loopback).is_ok());
        let ok = h(Some("lb1:1729"), Some("https://LB1:1729"), None);
        assert!(check(&ok, Via::Token).is_ok());
    }

    #[test]
    fn a_rebound_name_is_refused_where_loopback_is_admin() {
        // Same-origin as far as the browser knows: the attacker's name resolves to 127.0.0.1.
        let rebound = h(
            Some("rebind.evil.example:1729"),
            Some("http://rebind.evil.example:1729"),
            Some("same-origin"),
        );
        let e = check(&rebound, Via::Loopback).unwrap_err();
        assert!(e.contains("rebind.evil.example"), "{e}");
        for bad in [
            "127.0.0.1.evil.example",
            "localhost.evil",
            "127.0.0.1:x",
            "[::1]x",
            "[::1",
        ] {
            assert!(
                check(&h(Some(bad), None, None), Via::Loopback).is_err(),
                "{bad}"
            );
        }
    }
}
