//! The dashboard (`/ui`): three files compiled into the binary. The page reads the API with the
//! credentials the person gives it (the files themselves hold nothing and are open to all), and
//! a strict content security policy keeps it to this origin: no inline script, no external
//! resource.

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;
use super::wire::Result;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard file at `/ui/<file>` (`""`: the page).
pub(super) fn asset(file: &str) -> Result<Response> {
    let (body, kind) = match file {
        "" | "index.html" => (INDEX, "text/html; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return Err(ApiError::not_found("Not found")),
    };
    let mut resp = warp::reply::with_status(body, StatusCode::OK).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(kind));
    h.insert("content-security-policy", HeaderValue::from_static(POLICY));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // A new binary may bring new files: the browser asks again each time.
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(resp)
}
