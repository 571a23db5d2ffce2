//! The HTTP API: bender 0.2.1's routes, byte for byte where it matters, and the versioned `/v1`
//! API. Only this module knows HTTP, JSON bodies and warp; it talks to the node through
//! [`Node`]'s methods.
//!
//! Routing is one table (`route`) matched on method and path segments, so that every unknown
//! path is a 404, every known path with the wrong method a 405 with `Allow`, and every error the
//! same `{message, code}` shape from `error.rs`.

mod error;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

pub use error::ApiError;

use crate::metrics::{ApiLabels, Metrics};
use crate::model::{self, Backend, Frontend, RegKey};
use crate::node::{Entity, Node, WriteMode};
use crate::registry::LiveRegistration;
use crate::shutdown::Shutdown;

/// Extra status the node's other stages contribute to `/v1/status` (e.g. the last applies).
pub type StatusHook = std::sync::Arc<dyn Fn() -> Value + Send + Sync>;
/// A readiness condition another stage contributes to `/ready`: `Err(why)` when not ready.
pub type ReadyHook = std::sync::Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// What the rest of the node plugs into the API.
#[derive(Clone)]
pub struct Hooks {
    pub metrics: std::sync::Arc<Metrics>,
    pub status: Option<StatusHook>,
    pub ready: Option<ReadyHook>,
}

impl Hooks {
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        Hooks {
            metrics,
            status: None,
            ready: None,
        }
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Binds the API listener. Fails (with the address) when the port is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(node: Node, listener: TcpListener, hooks: Hooks, shutdown: Shutdown) {
    let max_body = node.config().max_body_bytes;
    let state = std::sync::Arc::new(Api {
        node,
        metrics: hooks.metrics.clone(),
        hooks,
        shutdown: shutdown.clone(),
    });
    let routes = warp::any()
        .map(move || state.clone())
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(
            move |api: std::sync::Arc<Api>,
                  method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  ctype,
                  clen,
                  body| async move {
                let method_name = method.clone();
                let resp = match read_body(clen, body, max_body).await {
                    Ok(body) => {
                        let req = Request {
                            method,
                            path: path.as_str(),
                            query: &query,
                            content_type: ctype,
                            body,
                        };
                        api.handle(req).await
                    }
                    Err(e) => ("body", Err(e)),
                };
                let (route, resp) = resp;
                let resp = resp.unwrap_or_else(Reply::into_response);
                api.metrics
                    .api_requests
                    .get_or_create(&ApiLabels {
                        route,
                        method: method_label(&method_name),
                        status: resp.status().as_u16(),
                    })
                    .inc();
                Ok::<Response, Infallible>(resp)
            },
        )
        .recover(error::recover);
    let mut stop = shutdown;
    warp::serve(routes)
        .incoming(listener)
        .graceful(async move { stop.wait().await })
        .run()
        .await;
}

/// Reads a request body up to `limit` bytes, whether or not it declared its length.
async fn read_body(
    declared: Option<u64>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    limit: u64,
) -> Result<Bytes, ApiError> {
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

struct Api {
    node: Node,
    hooks: Hooks,
    metrics: std::sync::Arc<Metrics>,
    shutdown: Shutdown,
}

struct Request<'a> {
    method: Method,
    path: &'a str,
    query: &'a str,
    content_type: Option<String>,
    body: Bytes,
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

impl Request<'_> {
    /// Parses a JSON body into `T` (unknown fields are rejected by `T`'s serde attributes).
    fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T> {
        self.check_json()?;
        serde_json::from_slice(&self.body).map_err(|e| ApiError::invalid(json_error(&e)))
    }

    fn json_value(&self) -> Result<serde_json::Map<String, Value>> {
        self.check_json()?;
        match serde_json::from_slice(&self.body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::invalid("Request body must be a JSON object")),
            Err(e) => Err(ApiError::invalid(json_error(&e))),
        }
    }

    fn check_json(&self) -> Result<()> {
        if let Some(ct) = &self.content_type {
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/json") {
                return Err(ApiError::unsupported_media_type());
            }
        }
        if self.body.is_empty() {
            return Err(ApiError::invalid("Request body must be a JSON object"));
        }
        Ok(())
    }

    fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_decode(v, true))
        })
    }
}

fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // serde's "missing field `name`" is what the old server's INVALID meant; keep it readable.
    format!("Invalid request body: {msg}")
}

/// Decodes `%XX` escapes (and `+` as a space in query strings).
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
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

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The 0.2.1 registration shape.
#[derive(Serialize)]
struct CompatRegistration<'a> {
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
struct V1Registration<'a> {
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

fn json_ok<T: Serialize>(v: &T) -> Result<Response> {
    Ok(warp::reply::json(v).into_response())
}

fn with_resource<E: Serialize>(e: &E, resource: &str) -> Value {
    let mut v = serde_json::to_value(e).expect("entities serialize");
    if let Some(m) = v.as_object_mut() {
        m.insert("resource".into(), json!(resource));
    }
    v
}

fn json_reply(status: StatusCode, v: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

fn ok(v: Value) -> Result<Response> {
    Ok(json_reply(StatusCode::OK, &v))
}

fn no_content() -> Result<Response> {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Body of `POST /v1/registrations`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    app: String,
    version: String,
    host: String,
    port: u16,
    /// A duration string ("500ms", "4s") or a number of milliseconds.
    #[serde(default)]
    ttl: Option<Value>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

fn parse_ttl(v: &Option<Value>) -> Result<Option<Duration>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => humantime::parse_duration(s).map(Some).map_err(|_| {
            ApiError::invalid(format!(
                "invalid ttl: {s:?} is not a duration like \"500ms\" or \"4s\""
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

impl Api {
    /// Routes a request; returns the route's label (for metrics) and the response.
    async fn handle(&self, req: Request<'_>) -> (&'static str, Result<Response>) {
        let decoded: Vec<String> = req
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_decode(s, false))
            .collect();
        let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let mut label = "unknown";
        let result = self.dispatch(&req, &segs, &mut label).await;
        (label, result)
    }

    /// The routing table: one arm per route, each naming its label.
    async fn dispatch(
        &self,
        req: &Request<'_>,
        segs: &[&str],
        label: &mut &'static str,
    ) -> Result<Response> {
        let m = &req.method;
        match segs {
            // ---- bender 0.2.1 ----
            ["registrations", app, version, host, port] => {
                *label = "/registrations/:app/:version/:host/:port";
                match *m {
                    Method::POST => self.compat_register(app, version, host, port).await,
                    _ => Err(ApiError::method_not_allowed("POST")),
                }
            }
            ["registrations"] | ["registrations", _] | ["registrations", _, _] => {
                *label = "/registrations[/:app[/:version]]";
                match *m {
                    Method::GET => {
                        let regs = self.node.registrations(
                            segs.get(1).copied(),
                            segs.get(2).copied(),
                            None,
                        );
                        json_ok(
                            &regs
                                .iter()
                                .map(CompatRegistration::from)
                                .collect::<Vec<_>>(),
                        )
                    }
                    _ => Err(ApiError::method_not_allowed("GET")),
                }
            }
            ["backends"] | ["v1", "backends"] => {
                *label = "/backends";
                self.collection::<Backend>(req).await
            }
            ["backends", name] | ["v1", "backends", name] => {
                *label = "/backends/:name";
                self.item::<Backend>(req, name).await
            }
            ["frontends"] | ["v1", "frontends"] => {
                *label = "/frontends";
                self.collection::<Frontend>(req).await
            }
            ["frontends", name] | ["v1", "frontends", name] => {
                *label = "/frontends/:name";
                self.item::<Frontend>(req, name).await
            }
            // ---- v1 ----
            ["v1", "registrations"] => {
                *label = "/v1/registrations";
                match *m {
                    Method::GET => {
                        let app = req.query_param("app");
                        let version = req.query_param("version");
                        let host = req.query_param("host");
                        let regs = self.node.registrations(
                            app.as_deref(),
                            version.as_deref(),
                            host.as_deref(),
                        );
                        json_ok(&regs.iter().map(V1Registration::from).collect::<Vec<_>>())
                    }
                    Method::POST => {
                        let body: RegisterBody = req.json()?;
                        let key = RegKey::new(&body.app, &body.version, &body.host, body.port)?;
                        let ttl = parse_ttl(&body.ttl)?;
                        let live = self.node.register(key, ttl, body.meta).await?;
                        json_ok(&V1Registration::from(&live))
                    }
                    _ => Err(ApiError::method_not_allowed("GET, POST")),
                }
            }
            ["v1", "registrations", app, version, host, port] => {
                *label = "/v1/registrations/:app/:version/:host/:port";
                let key = RegKey::new(app, version, host, model::parse_port("port", port)?)?;
                match *m {
                    Method::GET => {
                        let found = self
                            .node
                            .registrations(Some(app), Some(version), Some(host))
                            .into_iter()
                            .find(|r| r.key == key);
                        match found {
                            Some(r) => json_ok(&V1Registration::from(&r)),
                            None => Err(ApiError::not_found("Registration not found")),
                        }
                    }
                    Method::DELETE => {
                        self.node.deregister(key).await;
                        no_content()
                    }
                    _ => Err(ApiError::method_not_allowed("GET, DELETE")),
                }
            }
            ["v1", "members"] => {
                *label = "/v1/members";
                match *m {
                    Method::GET => ok(json!(self.node.members())),
                    _ => Err(ApiError::method_not_allowed("GET")),
                }
            }
            ["v1", "state"] => {
                *label = "/v1/state";
                match *m {
                    Method::GET => json_ok(&crate::cluster::StateDump::new(
                        self.node.node_id(),
                        &self.node.current_view(),
                        self.node.members(),
                    )),
                    _ => Err(ApiError::method_not_allowed("GET")),
                }
            }
            ["v1", "status"] => {
                *label = "/v1/status";
                match *m {
                    Method::GET => ok(self.status()),
                    _ => Err(ApiError::method_not_allowed("GET")),
                }
            }
            ["v1", "events"] => {
                *label = "/v1/events";
                match *m {
                    Method::GET => Ok(self.events()),
                    _ => Err(ApiError::method_not_allowed("GET")),
                }
            }
            ["health"] => {
                *label = "/health";
                match *m {
                    Method::GET => ok(json!({"status": "ok"})),
                    _ => Err(ApiError::method_not_allowed("GET")),
                }
            }
            ["metrics"] => {
                *label = "/metrics";
                match *m {
                    Method::GET => Ok(self.metrics_text()),
                    _ => Err(ApiError::method_not_allowed("GET")),
                }
            }
            ["ready"] => {
                *label = "/ready";
                match *m {
                    Method::GET => self.ready(),
                    _ => Err(ApiError::method_not_allowed("GET")),
                }
            }
            _ => Err(ApiError::not_found("Not found")),
        }
    }

    async fn compat_register(
        &self,
        app: &str,
        version: &str,
        host: &str,
        port: &str,
    ) -> Result<Response> {
        let port = model::parse_port("port", port)?;
        let key = RegKey::new(app, version, host, port)?;
        let live = self.node.register(key, None, BTreeMap::new()).await?;
        json_ok(&CompatRegistration::from(&live))
    }

    /// `GET` list / `POST` create on `/backends` or `/frontends`.
    async fn collection<E: Entity + for<'de> Deserialize<'de>>(
        &self,
        req: &Request<'_>,
    ) -> Result<Response> {
        match req.method {
            Method::GET => ok(Value::Array(
                self.node
                    .list::<E>()
                    .iter()
                    .map(|e| with_resource(e, E::KIND))
                    .collect(),
            )),
            Method::POST => {
                let entity: E = req.json()?;
                let name = entity.name().to_string();
                self.node.put(entity.clone(), WriteMode::Create).await?;
                let mut resp = json_reply(StatusCode::CREATED, &with_resource(&entity, E::KIND));
                let location = format!("/{}s/{}", E::KIND.to_ascii_lowercase(), name);
                resp.headers_mut().insert(
                    "location",
                    HeaderValue::from_str(&location).expect("validated names are header-safe"),
                );
                Ok(resp)
            }
            _ => Err(ApiError::method_not_allowed("GET, POST")),
        }
    }

    /// `GET` / `PUT` / `DELETE` on one backend or frontend.
    async fn item<E: Entity + for<'de> Deserialize<'de>>(
        &self,
        req: &Request<'_>,
        name: &str,
    ) -> Result<Response> {
        let not_found = || ApiError::not_found(format!("{} not found", E::KIND));
        match req.method {
            Method::GET => match self.node.get::<E>(name) {
                Some(e) => ok(with_resource(&e, E::KIND)),
                None => Err(not_found()),
            },
            Method::PUT => {
                // The fields given replace the current ones and the rest is kept, as the 0.2.1
                // client's `updateBackend(backend, update)` expects; what is stored (and
                // replicated) is always the whole resulting value.
                let body = req.json_value()?;
                if let Some(n) = body.get("name") {
                    if n.as_str() != Some(name) {
                        return Err(ApiError::invalid(format!(
                            "invalid name: the body's name must match the path ({name:?})"
                        )));
                    }
                }
                let current = self.node.get::<E>(name).ok_or_else(not_found)?;
                let mut merged = match serde_json::to_value(&current) {
                    Ok(Value::Object(m)) => m,
                    _ => return Err(ApiError::internal("cannot represent the current value")),
                };
                merged.extend(body);
                let entity: E = serde_json::from_value(Value::Object(merged))
                    .map_err(|e| ApiError::invalid(json_error(&e)))?;
                self.node.put(entity.clone(), WriteMode::Update).await?;
                ok(with_resource(&entity, E::KIND))
            }
            Method::DELETE => {
                self.node.delete::<E>(name).await?;
                no_content()
            }
            _ => Err(ApiError::method_not_allowed("GET, PUT, DELETE")),
        }
    }

    fn metrics_text(&self) -> Response {
        let mut resp = self.metrics.encode().into_response();
        resp.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        resp
    }

    /// 200 once the node has caught up with its peers and every other stage is ready (the last
    /// apply succeeded); 503 `NOT_READY` with the reason otherwise.
    fn ready(&self) -> Result<Response> {
        if !self.node.is_ready() {
            return Err(ApiError::not_ready("waiting to catch up with peers"));
        }
        if let Some(hook) = &self.hooks.ready {
            hook().map_err(ApiError::not_ready)?;
        }
        ok(json!({"status": "ready"}))
    }

    fn status(&self) -> Value {
        let (live, backends, frontends, leases) = self.node.counts();
        let members = self.node.members();
        let mut v = json!({
            "node_id": self.node.node_id(),
            "cluster_id": self.node.config().cluster_id,
            "ready": self.node.is_ready(),
            "members_live": members.iter().filter(|m| m.live).count(),
            "members": members,
            "registrations_live": live,
            "leases_held": leases,
            "backends": backends,
            "frontends": frontends,
        });
        if let Some(hook) = &self.hooks.status {
            if let (Some(m), Value::Object(extra)) = (v.as_object_mut(), hook()) {
                m.extend(extra);
            }
        }
        v
    }

    /// Server-Sent Events: one event per change this node observes, until the client leaves or
    /// the node stops. A client that falls too far behind is told to re-list (`resync`).
    fn events(&self) -> Response {
        let rx = self.node.subscribe_events();
        let mut stop = self.shutdown.clone();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let item = match rx.recv().await {
                Ok(event) => warp::sse::Event::default()
                    .event(event.kind())
                    .json_data(&event)
                    .unwrap_or_else(|_| warp::sse::Event::default().event("error")),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warp::sse::Event::default()
                        .event("resync")
                        .data(format!("{{\"missed\":{n}}}"))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok::<_, Infallible>(item), rx))
        })
        .take_until(Box::pin(async move { stop.wait().await }));
        warp::sse::reply(warp::sse::keep_alive().stream(stream)).into_response()
    }
}
