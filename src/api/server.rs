//! The API's connection handling: accept, cap, TLS handshake, HTTP/1.1 with timeouts, and a
//! graceful drain on shutdown. warp 0.4's own server has no TLS, timeouts or connection caps, so
//! its filters run here as a service on hyper connections we own.
//!
//! Every connection counts against a total cap and a per-client-address cap; past either the
//! client gets a `{message, code}` answer (plain HTTP) or a closed connection (TLS) at once, so
//! a flood of idle connections cannot take the file descriptors the node needs. Headers must
//! arrive within `header_read_timeout` (also the longest a keep-alive connection waits idle),
//! bodies within `body_read_timeout`, and a connection on which nothing moves for
//! `idle_timeout` is closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::auth::ClientCert;
use crate::shutdown::Shutdown;

/// What the connection knows about its client, handed to every request on it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    pub cert: Option<ClientCert>,
}

/// Timeouts and caps (from `[api]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_per_client: usize,
}

/// Longest a request head may be (request line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Refusals answered at once, at most; past that a refused connection is just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a graceful shutdown waits for connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Open connections, in total and per client address, with the counts of those refused.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    refused_total_cap: AtomicU64,
    refused_client_cap: AtomicU64,
    closed: Notify,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerClient,
}

/// A slot taken by one open connection, given back on drop.
pub struct Slot {
    conns: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.conns.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
        drop(open);
        self.conns.closed.notify_waiters();
    }
}

/// What the per-client cap counts a connection from `ip` under: the IPv4 address (an IPv4
/// client on an IPv6 socket included), or the IPv6 /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Connections {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Connections {
            limits,
            open: Mutex::new((0, HashMap::new())),
            refused_total_cap: AtomicU64::new(0),
            refused_client_cap: AtomicU64::new(0),
            closed: Notify::new(),
        })
    }

    /// Takes a slot for a connection from `ip`, or says which cap is full. IPv6 clients are
    /// counted by their /64: one host usually holds a whole /64 and could otherwise open
    /// `max_connections_per_client` connections from each of its addresses.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let ip = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.limits.max_connections {
            self.refused_total_cap.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        let n = open.1.entry(ip).or_insert(0);
        if *n >= self.limits.max_per_client {
            self.refused_client_cap.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::PerClient);
        }
        *n += 1;
        open.0 += 1;
        Ok(Slot {
            conns: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Connections refused so far: (total cap, per-client cap).
    pub fn refused(&self) -> (u64, u64) {
        (
            self.refused_total_cap.load(Ordering::Relaxed),
            self.refused_client_cap.load(Ordering::Relaxed),
        )
    }

    async fn drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let closed = self.closed.notified();
            if self.open() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.open() == 0;
            }
        }
    }
}

/// The answer to a refused plain-HTTP connection: one JSON error, then close.
fn refusal_response(why: Refused, ip: IpAddr, limits: &Limits) -> Vec<u8> {
    let (status, code, message) = match why {
        Refused::Total => (
            "503 Service Unavailable",
            "TOO_MANY_CONNECTIONS",
            format!(
                "this node has {} connections open, its limit (api.max_connections); try again shortly",
                limits.max_connections
            ),
        ),
        Refused::PerClient => (
            "429 Too Many Requests",
            "TOO_MANY_CONNECTIONS",
            format!(
                "{ip} has {} connections open, the limit per client (api.max_connections_per_client); reuse connections or close some",
                limits.max_per_client
            ),
        ),
    };
    let body = serde_json::json!({ "message": message, "code": code }).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An I/O stream that notes when bytes last moved, for the idle timeout.
struct Tracked<T> {
    inner: T,
    started: Instant,
    last_ms: Arc<AtomicU64>,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A hyper service that hands every request the connection's [`ConnInfo`] and runs warp's
/// filters on it.
#[derive(Clone)]
struct WithConn<S> {
    inner: S,
    info: ConnInfo,
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for WithConn<S>
where
    S: tower_service::Service<hyper::Request<Incoming>, Error = Infallible> + Clone,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = S::Future;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.info.clone());
        // warp's service is always ready and cheap to clone (it holds the filter).
        self.inner.clone().call(req)
    }
}

/// Accepts connections on `listener` and serves `service` on each until `shutdown`, then
/// drains them (at most [`DRAIN_TIMEOUT`]). `tls` is read at every accept, so a SIGHUP that
/// loads a new certificate takes effect for the next connection.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    tls: Arc<RwLock<Option<Arc<rustls::ServerConfig>>>>,
    conns: Arc<Connections>,
    shutdown: Shutdown,
) where
    S: tower_service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = conns.limits;
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let mut stop = shutdown.clone();
    let mut accept_errors: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    if accept_errors % 1000 == 0 {
                        warn!(error = %e, errors = accept_errors + 1, "API: cannot accept a connection");
                    }
                    accept_errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait() => break,
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let tls_config = tls.read().unwrap_or_else(|p| p.into_inner()).clone();
        let slot = match conns.try_open(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                debug!(client = %peer, ?why, "API: connection refused by a cap");
                if tls_config.is_none() {
                    if let Ok(permit) = refusals.clone().try_acquire_owned() {
                        tokio::spawn(async move {
                            let _permit = permit;
                            let mut stream = stream;
                            let answer = refusal_response(why, peer.ip(), &limits);
                            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                                let _ = stream.write_all(&answer).await;
                                let _ = stream.shutdown().await;
                            })
                            .await;
                        });
                    }
                }
                continue;
            }
        };
        let service = service.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_one(stream, peer, tls_config, service, limits, shutdown).await;
        });
    }
    info!(
        open = conns.open(),
        "API: stopped accepting; draining connections"
    );
    if !conns.drained(DRAIN_TIMEOUT).await {
        warn!(
            open = conns.open(),
            "API: connections still open after the drain timeout; closing them"
        );
    }
}

async fn serve_one<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: S,
    limits: Limits,
    mut shutdown: Shutdown,
) where
    S: tower_service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let is_tls = tls.is_some();
    let (io, cert): (Box<dyn Io>, Option<ClientCert>) = match tls {
        None => (Box::new(stream), None),
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    let cert = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| ClientCert(Arc::new(c.clone().into_owned())));
                    (Box::new(tls_stream), cert)
                }
                Ok(Err(e)) => {
                    debug!(client = %peer, error = %e, "API: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(client = %peer, "API: TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let info = ConnInfo {
        peer,
        tls: is_tls,
        cert,
    };
    let started = Instant::now();
    let last_ms = Arc::new(AtomicU64::new(0));
    let io = Tracked {
        inner: io,
        started,
        last_ms: last_ms.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(
        TokioIo::new(io),
        WithConn {
            inner: service,
            info,
        },
    );
    tokio::pin!(conn);
    let mut stopping = false;
    let check_every = (limits.idle_timeout / 4).max(Duration::from_millis(250));
    let mut idle_check = tokio::time::interval(check_every);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // Clients hang up all the time; that is not the node's problem.
                    debug!(client = %peer, error = %e, "API: connection ended with an error");
                }
                return;
            }
            _ = shutdown.wait(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = idle_check.tick() => {
                let idle = started.elapsed().saturating_sub(Duration::from_millis(last_ms.load(Ordering::Relaxed)));
                if idle >= limits.idle_timeout {
                    debug!(client = %peer, idle_ms = idle.as_millis() as u64, "API: closing a connection on which nothing moved");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_client_cap_counts_an_ipv6_client_by_its_64_and_v4_mapped_as_v4() {
        let conns = Connections::new(Limits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_connections: 100,
            max_per_client: 2,
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = conns.try_open(ip("2001:db8:1:2::1")).unwrap();
        let _b = conns.try_open(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            conns.try_open(ip("2001:db8:1:2::77")).err(),
            Some(Refused::PerClient),
            "a third address of the same /64"
        );
        let _other = conns.try_open(ip("2001:db8:1:3::1")).unwrap();
        let _v4 = conns.try_open(ip("10.0.0.1")).unwrap();
        let _mapped = conns.try_open(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(
            conns.try_open(ip("10.0.0.1")).err(),
            Some(Refused::PerClient)
        );
        drop(a);
        assert!(
            conns.try_open(ip("2001:db8:1:2::77")).is_ok(),
            "a slot freed"
        );
        assert_eq!(conns.refused(), (0, 2));
    }
}
