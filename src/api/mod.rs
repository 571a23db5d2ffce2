//! The HTTP API: bender 0.2.1's routes, byte for byte where it matters, and the versioned `/v1`
//! API. Only this module knows HTTP, JSON bodies and warp; it talks to the node through
//! [`Node`]'s methods.
//!
//! A request goes: connection (`server`: caps, TLS, timeouts) → route (`routes`: method and
//! path to an op and the scope it needs) → authorization ([`crate::auth`], before any body is
//! read) → body (bounded in size and time) → handler (`handlers`) → reply (`wire`). Every error
//! is the same `{message, code}` shape from `error.rs`; every refusal is counted, and refused
//! writes are logged with the client's address.

mod check;
mod error;
mod handlers;
mod routes;
mod server;
mod settings;
mod switch;
mod tls;
mod ui;
mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::{debug, warn};
use warp::http::{HeaderMap, Method};
use warp::reply::Response;
use warp::{Filter, Reply};

pub use check::check_request;
pub use error::ApiError;
pub use routes::{route, Kind, Op, PathKey};
pub use server::{ConnInfo, Connections, Limits};
pub use settings::{ApiConfig, TlsConfig};
pub use tls::{provider as tls_provider, server_config as tls_server_config};

use crate::auth::{Denied, Guard, Presented};
use crate::config::Config;
use crate::metrics::{ApiLabels, Metrics, RefusedLabels};
use crate::node::Node;
use crate::shutdown::Shutdown;

/// Extra status the node's other stages contribute to `/v1/status` (e.g. the last applies).
pub type StatusHook = Arc<dyn Fn() -> Value + Send + Sync>;
/// A readiness condition another stage contributes to `/ready`: `Err(why)` when not ready.
/// Also the shape of the liveness condition of `/health`: `Err(failure)` once a task died.
pub type ReadyHook = Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// Checks an entity write against the render stage's templates before it is made (see
/// `render::Preflight`): `Err` refuses it with HAProxy's words.
pub type PreflightHook = Arc<
    dyn Fn(
            crate::render::Change,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), crate::render::Refusal>> + Send>,
        > + Send
        + Sync,
>;

/// What the rest of the node plugs into the API.
#[derive(Clone)]
pub struct Hooks {
    pub metrics: Arc<Metrics>,
    pub status: Option<StatusHook>,
    pub ready: Option<ReadyHook>,
    /// `/health` fails (503 `FAILED`) while this says `Err`.
    pub health: Option<ReadyHook>,
    pub preflight: Option<PreflightHook>,
    /// `GET /v1/fleet`.
    pub fleet: Option<crate::fleet::publish::Fleet>,
}

impl Hooks {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hooks {
            metrics,
            status: None,
            ready: None,
            health: None,
            preflight: None,
            fleet: None,
        }
    }
}

/// The credentials, the TLS config and the snippet switch: loaded at start, replaced whole by
/// [`Security::reload`] on SIGHUP (a bad file keeps the old ones).
pub struct Security {
    guard: RwLock<Arc<Guard>>,
    tls: Arc<RwLock<Option<Arc<rustls::ServerConfig>>>>,
    config_snippets: AtomicBool,
}

impl Security {
    /// Reads the token files and the TLS files the config names.
    pub fn load(config: &Config) -> Result<Security, String> {
        let (guard, tls) = Self::read(config)?;
        Ok(Security {
            guard: RwLock::new(Arc::new(guard)),
            tls: Arc::new(RwLock::new(tls)),
            config_snippets: AtomicBool::new(config.api.config_snippets),
        })
    }

    fn read(config: &Config) -> Result<(Guard, Option<Arc<rustls::ServerConfig>>), String> {
        let client_ca = config
            .api
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some());
        let guard = Guard::load(
            &config.auth,
            &config.registration,
            &config.compat,
            client_ca,
        )?;
        let tls = config
            .api
            .tls
            .as_ref()
            .map(tls::server_config)
            .transpose()?;
        Ok((guard, tls))
    }

    /// Re-reads everything; on an error nothing changes.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let (guard, tls) = Self::read(config)?;
        *self.guard.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(guard);
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        self.config_snippets
            .store(config.api.config_snippets, Ordering::Relaxed);
        Ok(())
    }

    pub fn guard(&self) -> Arc<Guard> {
        self.guard.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    pub fn config_snippets(&self) -> bool {
        self.config_snippets.load(Ordering::Relaxed)
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

/// At most this many refusals are logged per second; the rest are summed up in the next line.
const REFUSAL_LOG_PER_SECOND: u32 = 20;

/// Logs refusals, but never more than [`REFUSAL_LOG_PER_SECOND`] lines a second: a flood of
/// bad requests must not flood the log too.
#[derive(Default)]
struct RefusalLog {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

pub(crate) struct Api {
    node: Node,
    hooks: Hooks,
    metrics: Arc<Metrics>,
    security: Arc<Security>,
    connections: Arc<Connections>,
    body_read_timeout: Duration,
    refusal_log: Mutex<RefusalLog>,
    /// Requests handled at once (`limits.max_requests_in_flight`), and event streams open.
    in_flight: Arc<tokio::sync::Semaphore>,
    event_streams: Arc<tokio::sync::Semaphore>,
    shutdown: Shutdown,
}

/// Serves the API on `listener` until `shutdown`, then drains open connections.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    hooks: Hooks,
    security: Arc<Security>,
    shutdown: Shutdown,
) {
    let api_config = node.config().api.clone();
    let limits = Limits {
        header_read_timeout: api_config.header_read_timeout,
        idle_timeout: api_config.idle_timeout,
        max_connections: api_config.max_connections,
        max_per_client: api_config.max_connections_per_client,
    };
    let connections = Connections::new(limits);
    register_connection_metrics(&hooks.metrics, connections.clone());
    let max_body = node.config().max_body_bytes;
    let tls = security.tls.clone();
    let limits = node.config().limits.clone();
    let state = Arc::new(Api {
        node,
        metrics: hooks.metrics.clone(),
        hooks,
        security,
        connections: connections.clone(),
        body_read_timeout: api_config.body_read_timeout,
        refusal_log: Mutex::new(RefusalLog::default()),
        in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_requests_in_flight)),
        event_streams: Arc::new(tokio::sync::Semaphore::new(limits.max_event_streams)),
        shutdown: shutdown.clone(),
    });
    let routes = warp::any()
        .map(move || state.clone())
        .and(warp::ext::get::<ConnInfo>())
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(
            move |api: Arc<Api>,
                  conn: ConnInfo,
                  method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  body| async move {
                // Past the cap, answer at once: a flood must not queue up work.
                let (route, resp) = match api.in_flight.clone().try_acquire_owned() {
                    Ok(_permit) => {
                        api.handle(&conn, &method, path.as_str(), &query, &headers, body, max_body)
                            .await
                    }
                    Err(_) => {
                        api.metrics
                            .api_refused
                            .get_or_create(&RefusedLabels {
                                reason: "too_many_requests",
                            })
                            .inc();
                        (
                            "busy",
                            Err(ApiError::too_many(
                                "TOO_MANY_REQUESTS",
                                "this node is handling as many requests as it takes at once (limits.max_requests_in_flight); try again shortly",
                                1,
                            )),
                        )
                    }
                };
                let mut resp = resp.unwrap_or_else(Reply::into_response);
                // A body left unread (refused before it was read, or sent to a route that
                // takes none) would be drained by the connection before its next request, at
                // whatever pace the client trickles it, with no timeout: close instead.
                let declares_body = headers.contains_key("transfer-encoding")
                    || headers
                        .get("content-length")
                        .is_some_and(|v| v.as_bytes() != b"0");
                let unread = resp.status().as_u16() >= 400
                    || !matches!(method, Method::POST | Method::PUT);
                if declares_body && unread {
                    resp.headers_mut().insert(
                        warp::http::header::CONNECTION,
                        warp::http::HeaderValue::from_static("close"),
                    );
                }
                api.metrics
                    .api_requests
                    .get_or_create(&ApiLabels {
                        route,
                        method: method_label(&method),
                        status: resp.status().as_u16(),
                    })
                    .inc();
                Ok::<Response, Infallible>(resp)
            },
        )
        .recover(error::recover);
    server::serve(listener, warp::service(routes), tls, connections, shutdown).await;
}

/// `bender_api_connections` (open now) and `bender_api_connections_refused_total{cap}`.
fn register_connection_metrics(metrics: &Metrics, conns: Arc<Connections>) {
    use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct CapLabels {
        cap: &'static str,
    }
    metrics.register_collector(Box::new(crate::metrics::FnCollector(
        move |enc: &mut prometheus_client::encoding::DescriptorEncoder| {
            let open = ConstGauge::new(conns.open() as i64);
            open.encode(enc.encode_descriptor(
                "api_connections",
                "API connections open now",
                None,
                open.metric_type(),
            )?)?;
            let (total, per_client) = conns.refused();
            let mut m = enc.encode_descriptor(
                "api_connections_refused",
                "API connections refused because a cap was full (api.max_connections, api.max_connections_per_client)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (cap, n) in [("total", total), ("per_client", per_client)] {
                ConstCounter::new(n).encode(m.encode_family(&CapLabels { cap })?)?;
            }
            Ok(())
        },
    )));
}

impl Api {
    /// Routes, authorizes, reads the body and runs a request; returns the route's label (for
    /// metrics) and the response.
    #[allow(clippy::too_many_arguments)]
    async fn handle(
        &self,
        conn: &ConnInfo,
        method: &Method,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Unpin,
        max_body: u64,
    ) -> (&'static str, Result<Response, ApiError>) {
        let decoded: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| wire::percent_decode(s, false))
            .collect();
        let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let (label, op) = routes::route(method, &segs);
        let op = match op {
            Ok(op) => op,
            Err(e) => return (label, Err(e)),
        };
        let guard = self.security.guard();
        let presented = Presented {
            addr: conn.peer.ip(),
            authorization: headers.get("authorization").map(|v| v.as_bytes()),
            cert: conn.cert.as_ref(),
        };
        let caller =
            match guard.authorize(&presented, op.need(), matches!(op, Op::CompatRegister(_))) {
                Ok(c) => c,
                Err(denied) => {
                    let (reason, err) = match denied {
                        Denied::Unauthenticated(m) => {
                            ("unauthenticated", ApiError::unauthorized(m))
                        }
                        Denied::Forbidden(m) => ("forbidden", ApiError::forbidden(m)),
                    };
                    let what = format!("{} {}", method_label(method), label);
                    if op.is_write() {
                        self.refused_from(reason, conn.peer, what, &err.message);
                    } else {
                        self.metrics
                            .api_refused
                            .get_or_create(&RefusedLabels { reason })
                            .inc();
                        debug!(client = %conn.peer, request = %what, reason, "API read refused");
                    }
                    return (label, Err(err));
                }
            };
        if caller.via != crate::auth::Via::Open {
            let browser = crate::auth::browser::BrowserHeaders {
                host: headers.get("host").map(|v| v.as_bytes()),
                origin: headers.get("origin").map(|v| v.as_bytes()),
                sec_fetch_site: headers.get("sec-fetch-site").map(|v| v.as_bytes()),
            };
            if let Err(m) = crate::auth::browser::check(&browser, caller.via) {
                let err = ApiError::forbidden(m);
                let what = format!("{} {}", method_label(method), label);
                self.refused_from("cross_site", conn.peer, what, &err.message);
                return (label, Err(err));
            }
        }
        if op.takes_body() && !wire::is_json(headers.get("content-type").map(|v| v.as_bytes())) {
            // Before reading it: a body that is not declared JSON is refused whatever it holds.
            return (label, Err(ApiError::unsupported_media_type()));
        }
        let body = if op.takes_body() {
            let declared = match headers.get("content-length") {
                None => None,
                Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                    Some(n) => Some(n),
                    None => {
                        return (
                            label,
                            Err(ApiError::invalid(
                                "Content-Length must be a number of bytes",
                            )),
                        )
                    }
                },
            };
            match tokio::time::timeout(
                self.body_read_timeout,
                wire::read_body(declared, body, max_body),
            )
            .await
            {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return (label, Err(e)),
                Err(_) => {
                    return (
                        label,
                        Err(ApiError::request_timeout(self.body_read_timeout)),
                    )
                }
            }
        } else {
            bytes::Bytes::new()
        };
        let req = wire::Request {
            query,
            content_type: headers.get("content-type").map(|v| v.as_bytes()),
            last_event_id: headers.get("last-event-id").map(|v| v.as_bytes()),
            body,
        };
        (label, self.execute(op, &req, &caller).await)
    }

    fn refused(&self, reason: &'static str, caller: &crate::auth::Caller, what: String, why: &str) {
        self.refused_from(reason, SocketAddr::new(caller.addr, 0), what, why);
    }

    /// Counts a refused write and logs it with the client's address (rate-limited).
    fn refused_from(&self, reason: &'static str, client: SocketAddr, what: String, why: &str) {
        self.metrics
            .api_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
        let mut log = self.refusal_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if log
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            if log.suppressed > 0 {
                warn!(
                    suppressed = log.suppressed,
                    "API: more refused writes in the last second were not logged one by one"
                );
            }
            *log = RefusalLog {
                window: Some(now),
                logged: 0,
                suppressed: 0,
            };
        }
        if log.logged < REFUSAL_LOG_PER_SECOND {
            log.logged += 1;
            drop(log);
            warn!(client = %client.ip(), request = %what, reason, error = %why, "API write refused");
        } else {
            log.suppressed += 1;
        }
    }
}
