//! What goes over the wire: request bodies and their parsing, the response shapes of the 0.2.1
//! and v1 APIs, and the small helpers that build replies.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;
use crate::registry::LiveRegistration;

pub(super) type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A request as the handlers see it: routed, authorized, body read (if the op takes one).
pub(super) struct Request<'a> {
    pub query: &'a str,
    pub content_type: Option<&'a [u8]>,
    /// `Last-Event-ID`: where an event stream resumes.
    pub last_event_id: Option<&'a [u8]>,
    pub body: Bytes,
}

impl Request<'_> {
    /// Parses a JSON body into `T`, refusing fields `T` does not have.
    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T> {
        self.check_json()?;
        let mut de = serde_json::Deserializer::from_slice(&self.body);
        let value = strict(&mut de)?;
        de.end().map_err(|e| ApiError::invalid(json_error(&e)))?;
        Ok(value)
    }

    pub fn json_value(&self) -> Result<serde_json::Map<String, Value>> {
        self.check_json()?;
        match serde_json::from_slice(&self.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::invalid("Request body must be a JSON object")),
            Err(e) => Err(ApiError::invalid(json_error(&e))),
        }
    }

    fn check_json(&self) -> Result<()> {
        if self.body.is_empty() {
            return Err(ApiError::invalid("Request body must be a JSON object"));
        }
        // A body must say it is JSON: a browser can send a body with no Content-Type (or a
        // "simple" one such as text/plain) to any site without asking first; a body declared
        // application/json it cannot send cross-site without a CORS preflight, which the API
        // never answers.
        if !is_json(self.content_type) {
            return Err(ApiError::unsupported_media_type());
        }
        Ok(())
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_decode(v, true))
        })
    }
}

/// Whether a `Content-Type` header says `application/json` (parameters such as `charset` aside).
pub(super) fn is_json(content_type: Option<&[u8]>) -> bool {
    content_type
        .and_then(|ct| std::str::from_utf8(ct).ok())
        .and_then(|ct| ct.split(';').next())
        .map(str::trim)
        .is_some_and(|mime| mime.eq_ignore_ascii_case("application/json"))
}

/// Deserializes a client's value strictly: a field the type does not have is an error. (The
/// model types themselves ignore unknown fields, so that records a newer peer gossips with
/// fields added still decode; clients get told about a misspelt field instead.)
pub(super) fn strict<'de, T, D>(de: D) -> Result<T>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    let mut unknown: Option<String> = None;
    let value = serde_ignored::deserialize(de, |path| {
        unknown.get_or_insert_with(|| path.to_string());
    })
    .map_err(|e| ApiError::invalid(json_error(&e)))?;
    match unknown {
        Some(field) => Err(ApiError::invalid(format!(
            "Invalid request body: unknown field `{}`",
            field.chars().take(64).collect::<String>()
        ))),
        None => Ok(value),
    }
}

/// [`strict`] for an already parsed JSON value.
pub(super) fn strict_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    strict(value)
}

pub(super) fn json_error(e: &serde_json::Error) -> String {
    // serde's "missing field `name`" is what the old server's INVALID meant; keep it readable.
    format!("Invalid request body: {e}")
}

/// Decodes `%XX` escapes (and `+` as a space in query strings).
pub(super) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                // Exactly two hex digits: from_str_radix alone would take "+a" as 10.
                let hex = &bytes[i + 1..i + 3];
                let hex = hex
                    .iter()
                    .all(u8::is_ascii_hexdigit)
                    .then(|| std::str::from_utf8(hex).ok())
                    .flatten();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a request body up to `limit` bytes, whether or not it declared its length.
pub(super) async fn read_body(
    declared: Option<u64>,
    body: impl Stream<Item = std::result::Result<impl Buf, warp::Error>> + Unpin,
    limit: u64,
) -> Result<Bytes> {
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::invalid(format!("cannot read body: {e}")))?;
        if (out.len() + chunk.remaining()) as u64 > limit {
            return Err(ApiError::too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(out))
}

pub(super) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The 0.2.1 registration shape.
#[derive(Serialize)]
pub(super) struct CompatRegistration<'a> {
    id: String,
    app: &'a str,
    version: &'a str,
    host: &'a str,
    port: u16,
    registered: String,
    resource: &'static str,
}

impl<'a> From<&'a LiveRegistration> for CompatRegistration<'a> {
    fn from(r: &'a LiveRegistration) -> Self {
        CompatRegistration {
            id: r.key.id(),
            app: &r.key.app,
            version: &r.key.version,
            host: &r.key.host,
            port: r.key.port,
            registered: rfc3339(r.registered_ms),
            resource: "Registration",
        }
    }
}

/// The v1 registration shape: the 0.2.1 fields plus TTL, expiry and meta.
#[derive(Serialize)]
pub(super) struct V1Registration<'a> {
    #[serde(flatten)]
    compat: CompatRegistration<'a>,
    ttl_ms: u64,
    expires: String,
    meta: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a LiveRegistration> for V1Registration<'a> {
    fn from(r: &'a LiveRegistration) -> Self {
        V1Registration {
            compat: r.into(),
            ttl_ms: r.ttl_ms,
            expires: rfc3339(r.deadline_ms),
            meta: &r.meta,
        }
    }
}

/// Body of `POST /v1/registrations`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegisterBody {
    pub app: String,
    pub version: String,
    pub host: String,
    pub port: u16,
    /// A duration string ("500ms", "4s") or a number of milliseconds.
    #[serde(default)]
    pub ttl: Option<Value>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

pub(super) fn parse_ttl(v: &Option<Value>) -> Result<Option<Duration>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => humantime::parse_duration(s).map(Some).map_err(|_| {
            ApiError::invalid(format!(
                "invalid ttl: {:?} is not a duration like \"500ms\" or \"4s\"",
                s.chars().take(64).collect::<String>()
            ))
        }),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|ms| Some(Duration::from_millis(ms)))
            .ok_or_else(|| {
                ApiError::invalid(
                    "invalid ttl: a number of milliseconds must be a positive integer",
                )
            }),
        Some(_) => Err(ApiError::invalid(
            "invalid ttl: must be a duration string or milliseconds",
        )),
    }
}

pub(super) fn json_ok<T: Serialize>(v: &T) -> Result<Response> {
    Ok(warp::reply::json(v).into_response())
}

pub(super) fn with_resource<E: Serialize>(e: &E, resource: &str) -> Value {
    let mut v = serde_json::to_value(e).expect("entities serialize");
    if let Some(m) = v.as_object_mut() {
        m.insert("resource".into(), json!(resource));
    }
    v
}

pub(super) fn json_reply(status: StatusCode, v: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

pub(super) fn ok(v: Value) -> Result<Response> {
    Ok(json_reply(StatusCode::OK, &v))
}

pub(super) fn no_content() -> Result<Response> {
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_escapes_need_exactly_two_hex_digits() {
        assert_eq!(percent_decode("a%2Fb%41", false), "a/bA");
        assert_eq!(percent_decode("%+a", false), "%+a");
        assert_eq!(percent_decode("%-1", false), "%-1");
        assert_eq!(percent_decode("%4", false), "%4");
        assert_eq!(percent_decode("a+b%20c", true), "a b c");
    }
}
