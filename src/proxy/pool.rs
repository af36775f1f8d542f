//! Per-worker, per-backend pool of connections to backends: keep-alive HTTP/1.1 connections, one
//! exchange at a time, and multiplexed HTTP/2 connections shared by every concurrent request.
//!
//! Each worker thread owns its pool (a thread-local), so checkout and checkin never contend with
//! another worker — no lock shared between requests on the hot path. Connections are grouped by
//! backend address and the upstream's [`Connector::pool_key`], so two upstreams pointing at one
//! address with different TLS settings never share a connection.
//!
//! HTTP/1.1: a connection goes back to the pool when its response body has been read to the end;
//! one idle longer than the upstream's idle timeout, or closed by the backend, is closed by the
//! worker's sweep (every 2 s) or skipped at checkout, whichever comes first. HTTP/2: each worker keeps one connection per backend and hands every request a
//! clone of its sender; concurrent first requests wait for a single dial instead of each opening
//! a connection. Requests beyond the backend's `SETTINGS_MAX_CONCURRENT_STREAMS` queue in hyper.

use super::body::ReqBody;
use super::connector::Connector;
use crate::error::ProxyError;
use crate::listener::MAX_HEADER_BYTES;
use futures_util::future::Either;
use http::{header, uri, Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Idle connections kept per backend per worker; beyond this a finished connection is closed.
const MAX_IDLE_PER_BACKEND: usize = 1024;

/// HTTP/2 flow-control windows towards backends: 1 MiB per stream and 4 MiB per connection let
/// one stream fill a 10 Gbit/s LAN link at 1 ms RTT while bounding what a slow client can make
/// Switchyard buffer per backend connection.
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONN_WINDOW: u32 = 4 << 20;
/// PING interval and timeout that detect a backend connection that died silently.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A sender for one request on a backend connection.
pub struct SendRequest<B> {
    inner: Inner<B>,
    pool_key: u64,
}

enum Inner<B> {
    /// The sender and the connection's driver (hyper's dispatcher). The driver is polled by the
    /// request that holds the connection, inside that request's task, instead of running as a
    /// task of its own: no cross-task hand-off (channel send, wake-up, a second task polled)
    /// per request. `None` once it finished, or when handed to a task of its own (upgrades).
    H1(http1::SendRequest<B>, Option<Driver>),
    H2(http2::SendRequest<B>, uri::Scheme),
}

type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) {
    if let Some(d) = driver {
        if d.as_mut().poll(cx).is_ready() {
            *driver = None;
        }
    }
}

impl SendRequest<ReqBody> {
    /// Whether the connection can take a request now.
    pub fn is_ready(&mut self) -> bool {
        match &mut self.inner {
            Inner::H1(tx, driver) => {
                // Let the dispatcher take in what happened while nobody polled it: the end of
                // the previous exchange, or the backend closing the idle connection.
                drive(driver, &mut Context::from_waker(Waker::noop()));
                tx.is_ready()
            }
            Inner::H2(tx, _) => !tx.is_closed(),
        }
    }

    /// Advances the connection (request body out, response in) from the task holding it.
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) {
        if let Inner::H1(_, driver) = &mut self.inner {
            drive(driver, cx);
        }
    }

    /// Hands the connection's driver to a task of its own: for an upgrade, where hyper gives the
    /// connection up only when its driver finishes, whoever holds this sender or not.
    pub fn detach(&mut self) {
        if let Inner::H1(_, driver) = &mut self.inner {
            if let Some(d) = driver.take() {
                tokio::spawn(async move {
                    let _ = d.await;
                });
            }
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.inner, Inner::H2(..))
    }

    /// Sends `req`; when the connection turns out to be closed before the request was written,
    /// the request comes back in the error so it can go on a new connection.
    pub fn try_send_request(
        &mut self,
        req: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<ReqBody>>>> + Send + '_
    {
        match &mut self.inner {
            Inner::H1(tx, driver) => {
                let fut = tx.try_send_request(req);
                Either::Left(async move {
                    let mut fut = std::pin::pin!(fut);
                    std::future::poll_fn(|cx| {
                        drive(driver, cx);
                        // The response comes from the driver, whose socket wakes this task;
                        // registering this task's waker with the response channel too would
                        // only add a wake-up of this same task. Once the driver is gone the
                        // channel is all there is.
                        let waker = if driver.is_some() {
                            Waker::noop()
                        } else {
                            cx.waker()
                        };
                        fut.as_mut().poll(&mut Context::from_waker(waker))
                    })
                    .await
                })
            }
            Inner::H2(tx, scheme) => Either::Right(tx.try_send_request(for_h2(req, scheme))),
        }
    }
}

/// HTTP/2 carries the host in `:authority` and the scheme in `:scheme`: build the absolute URI
/// from the `Host` header the proxy set. gRPC needs `te: trailers`, which the hop-by-hop rules
/// removed; it is the one TE value HTTP/2 allows.
fn for_h2(req: Request<ReqBody>, scheme: &uri::Scheme) -> Request<ReqBody> {
    let (mut parts, body) = req.into_parts();
    if let Some(host) = parts.headers.remove(header::HOST) {
        let authority = host.to_str().ok().and_then(|h| h.parse().ok());
        let pq = parts.uri.path_and_query().cloned();
        let mut b = uri::Builder::new().scheme(scheme.clone());
        if let Some(a) = authority {
            b = b.authority::<uri::Authority>(a);
        }
        match b
            .path_and_query(pq.unwrap_or_else(|| uri::PathAndQuery::from_static("/")))
            .build()
        {
            Ok(u) => parts.uri = u,
            // An unparsable Host: send it as a header and let the backend judge it.
            Err(_) => {
                parts.headers.insert(header::HOST, host);
            }
        }
    }
    if super::grpc::is_grpc(&parts.headers) {
        parts
            .headers
            .insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    parts.version = Version::HTTP_2;
    Request::from_parts(parts, body)
}

struct Idle {
    tx: SendRequest<ReqBody>,
    /// The upstream's idle timeout from now: closed by the sweep or skipped at checkout after.
    expires: Instant,
}

/// The worker's shared HTTP/2 connection to one backend, or a dial in progress.
enum Slot {
    Ready(http2::SendRequest<ReqBody>),
    Dialing(Arc<Notify>),
}

thread_local! {
    static H1: RefCell<HashMap<u64, HashMap<String, Vec<Idle>>>> = RefCell::new(HashMap::new());
    static H2: RefCell<HashMap<u64, HashMap<String, Slot>>> = RefCell::new(HashMap::new());
}

/// A connection ready to carry one request.
pub struct Conn {
    pub tx: SendRequest<ReqBody>,
    /// Came from the pool (the backend may have closed it meanwhile).
    pub reused: bool,
}

/// Takes a pooled connection to `address` or opens a new one within `connect_timeout`.
pub async fn checkout(
    c: &Connector,
    address: &str,
    socket: Option<SocketAddr>,
    connect_timeout: Duration,
) -> Result<Conn, ProxyError> {
    // The dialling futures (TCP, TLS, h2 handshakes) are boxed: inline they would widen every
    // request's future by kilobytes, copied on each request, to serve the rare pool miss.
    if c.is_h2() {
        return Box::pin(checkout_h2(c, address, socket, connect_timeout)).await;
    }
    if let Some(tx) = take_idle(c.pool_key, address) {
        return Ok(Conn { tx, reused: true });
    }
    Box::pin(connect(c, address, socket, connect_timeout))
        .await
        .map(|tx| Conn { tx, reused: false })
}

fn take_idle(key: u64, address: &str) -> Option<SendRequest<ReqBody>> {
    H1.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(&key)?.get_mut(address)?;
        while let Some(mut idle) = list.pop() {
            if Instant::now() < idle.expires && idle.tx.is_ready() {
                return Some(idle.tx);
            }
        }
        None
    })
}

/// How often a worker looks over its idle connections for ones the backend closed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Closes idle connections the backend has closed meanwhile, and those idle past their
/// upstream's idle timeout. Idle connections are not polled by any task (their driver runs inside
/// the requests that use them), so without this a connection the backend closed would sit in
/// CLOSE_WAIT, and an expired one stay open, until the next request to that backend took it from
/// the pool. Runs on each worker every [`SWEEP_EVERY`].
pub fn sweep() {
    super::relay::idle::sweep();
    let now = Instant::now();
    H1.with(|p| {
        for by_addr in p.borrow_mut().values_mut() {
            for list in by_addr.values_mut() {
                list.retain_mut(|idle| now < idle.expires && idle.tx.is_ready());
            }
            by_addr.retain(|_, list| !list.is_empty());
        }
    });
}

/// Returns a connection whose exchange finished cleanly. HTTP/2 senders are not pooled per
/// request: the worker's shared connection stays in its slot.
pub fn checkin(address: &str, mut tx: SendRequest<ReqBody>, idle_timeout: Duration) {
    if matches!(tx.inner, Inner::H2(..)) || !tx.is_ready() {
        return;
    }
    H1.with(|p| {
        let mut p = p.borrow_mut();
        let by_addr = p.entry(tx.pool_key).or_default();
        let list = match by_addr.get_mut(address) {
            Some(l) => l,
            None => by_addr.entry(address.to_string()).or_default(),
        };
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                tx,
                expires: Instant::now() + idle_timeout,
            });
        }
    });
}

/// Opens a fresh connection (not from the pool). For HTTP/2 it becomes the worker's shared
/// connection to that backend, replacing one that failed.
pub async fn connect(
    c: &Connector,
    address: &str,
    socket: Option<SocketAddr>,
    connect_timeout: Duration,
) -> Result<SendRequest<ReqBody>, ProxyError> {
    if c.is_h2() {
        return dial_h2(c, address, socket, connect_timeout).await;
    }
    let io = c.dial(address, socket, connect_timeout).await?;
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| ProxyError::ConnectFailed)?;
    // Errors from the driver are the backend closing; the request side sees them too.
    let driver: Driver = Box::pin(conn.with_upgrades());
    Ok(SendRequest {
        inner: Inner::H1(tx, Some(driver)),
        pool_key: c.pool_key,
    })
}

fn wrap_h2(c: &Connector, tx: http2::SendRequest<ReqBody>) -> SendRequest<ReqBody> {
    let scheme = if c.is_tls() {
        uri::Scheme::HTTPS
    } else {
        uri::Scheme::HTTP
    };
    SendRequest {
        inner: Inner::H2(tx, scheme),
        pool_key: c.pool_key,
    }
}

async fn checkout_h2(
    c: &Connector,
    address: &str,
    socket: Option<SocketAddr>,
    connect_timeout: Duration,
) -> Result<Conn, ProxyError> {
    enum Next {
        Use(http2::SendRequest<ReqBody>),
        Wait(Arc<Notify>),
        Dial,
        Failed,
    }
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let mut waited = false;
    loop {
        let next = H2.with(
            |m| match m.borrow().get(&c.pool_key).and_then(|a| a.get(address)) {
                Some(Slot::Ready(tx)) if !tx.is_closed() => Next::Use(tx.clone()),
                Some(Slot::Dialing(n)) => Next::Wait(n.clone()),
                // The dial waited for just failed: share its failure rather than dial again at once.
                None if waited => Next::Failed,
                _ => Next::Dial,
            },
        );
        match next {
            Next::Use(tx) => {
                return Ok(Conn {
                    tx: wrap_h2(c, tx),
                    reused: true,
                })
            }
            Next::Dial => {
                let tx = dial_h2(c, address, socket, connect_timeout).await?;
                return Ok(Conn { tx, reused: false });
            }
            Next::Failed => return Err(ProxyError::ConnectFailed),
            Next::Wait(n) => {
                // Created before this task can yield, so the dialer's notify_waiters reaches it.
                let notified = n.notified();
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Err(ProxyError::ConnectTimeout);
                }
                waited = true;
            }
        }
    }
}

/// Marks the slot as dialing until dropped; then wakes the waiters and, if the dial did not
/// install a connection (failed or cancelled), clears the slot.
struct Dialing<'a> {
    key: u64,
    address: &'a str,
    notify: Arc<Notify>,
}

impl Drop for Dialing<'_> {
    fn drop(&mut self) {
        H2.with(|m| {
            let mut m = m.borrow_mut();
            if let Some(by_addr) = m.get_mut(&self.key) {
                if matches!(by_addr.get(self.address), Some(Slot::Dialing(n)) if Arc::ptr_eq(n, &self.notify))
                {
                    by_addr.remove(self.address);
                }
            }
        });
        self.notify.notify_waiters();
    }
}

async fn dial_h2(
    c: &Connector,
    address: &str,
    socket: Option<SocketAddr>,
    connect_timeout: Duration,
) -> Result<SendRequest<ReqBody>, ProxyError> {
    let guard = Dialing {
        key: c.pool_key,
        address,
        notify: Arc::new(Notify::new()),
    };
    H2.with(|m| {
        m.borrow_mut()
            .entry(c.pool_key)
            .or_default()
            .insert(address.to_string(), Slot::Dialing(guard.notify.clone()));
    });
    let io = c.dial(address, socket, connect_timeout).await?;
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| ProxyError::ConnectFailed)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    H2.with(|m| {
        m.borrow_mut()
            .entry(c.pool_key)
            .or_default()
            .insert(address.to_string(), Slot::Ready(tx.clone()));
    });
    drop(guard);
    Ok(wrap_h2(c, tx))
}
