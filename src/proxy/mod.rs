//! The request path: route → pick → forward on a pooled connection → retry where safe → stream
//! the response back, recording the outcome for the balancer, breaker and passive health.
//!
//! [`handle`] is called by the listener for every request on every connection. It loads the
//! configuration snapshot once and uses that view to the end, so a reload never changes a request
//! half-way.

pub mod body;
pub mod headers;
pub mod pool;
pub mod router;
mod upgrade;

use crate::error::ProxyError;
use crate::state::Shared;
use crate::upstream::backend::{now_ms, BackendState};
use crate::upstream::balancer::{hash_bytes, PickCtx};
use crate::upstream::{HashKey, Upstream};
use body::{OnDone, ReqBody, RespBody};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the listener knows about the client connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub https: bool,
    /// Largest request body accepted; `u64::MAX` for no limit.
    pub max_body: u64,
}

pub const X_SWITCHYARD_ERROR: &str = "x-switchyard-error";

/// A response Switchyard makes itself: status, reason header, short text body.
pub fn error_response(e: ProxyError) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(format!(
        "{} {}\n",
        e.status().as_u16(),
        e.reason()
    )));
    *r.status_mut() = e.status();
    r.headers_mut()
        .insert(X_SWITCHYARD_ERROR, HeaderValue::from_static(e.reason()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Handles one request from a client.
pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let snap = shared.snapshot.load_full();
    let mut req = req;
    let upgrade = upgrade::requested(req.headers(), req.version());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();

    // Framing and syntax problems hyper does not already reject.
    if parts.version == Version::HTTP_11 && !parts.headers.contains_key(header::HOST) {
        return error_response(ProxyError::BadRequest);
    }
    let declared_len = match parts
        .headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()))
    {
        Some(None) => return error_response(ProxyError::BadRequest),
        Some(Some(n)) => Some(n),
        None => None,
    };
    if declared_len.is_some_and(|n| n > conn.max_body) {
        return error_response(ProxyError::BodyTooLarge);
    }
    let host_value = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let host = host_value
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let Some(up_idx) = snap.router.route(host, parts.uri.path()) else {
        return error_response(ProxyError::NoRoute);
    };
    let upstream = snap.upstreams[up_idx].clone();

    let hash = match upstream.algorithm {
        crate::config::Algorithm::ConsistentHash => hash_key(&upstream.hash_key, &parts, conn),
        _ => 0,
    };
    let ctx = PickCtx { hash };

    // The request as it goes upstream: origin-form URI, HTTP/1.1, proxy headers.
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = &upgrade {
        upgrade::restore_headers(&mut parts.headers, proto);
    }
    if !parts.headers.contains_key(header::HOST) {
        if let Some(h) = &host_value {
            parts.headers.insert(header::HOST, h.clone());
        }
    }
    headers::add_forwarded(
        &mut parts.headers,
        conn.client.ip(),
        conn.https,
        host_value.as_ref(),
    );
    let request_id = headers::ensure_request_id(&mut parts.headers);
    if let Some(pq) = parts.uri.path_and_query() {
        if let Ok(uri) = http::Uri::try_from(pq.as_str()) {
            parts.uri = uri;
        }
    }
    let client_version = parts.version;
    parts.version = Version::HTTP_11;

    let failed = Arc::new(AtomicU8::new(0));
    let body = if incoming.is_end_stream() && declared_len.unwrap_or(0) == 0 {
        ReqBody::Empty
    } else if upstream.retry.attempts > 1
        && is_idempotent(&parts.method)
        && declared_len.is_some_and(|n| n <= upstream.retry.max_replay_body)
    {
        // Small enough to keep: read it whole so another backend can get it again.
        match incoming.collect().await {
            Ok(c) => ReqBody::Replay(Some(c.to_bytes())),
            Err(_) => return error_response(ProxyError::BadRequestBody),
        }
    } else {
        ReqBody::Stream {
            inner: incoming,
            seen: 0,
            limit: conn.max_body,
            failed: failed.clone(),
        }
    };

    let mut resp = forward(&upstream, &ctx, parts, body, &failed).await;
    if let Some(client_up) = client_upgrade {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            upgrade::splice(client_up, &mut resp, upstream.idle_timeout);
        }
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        headers::strip_hop_by_hop(resp.headers_mut());
    }
    if client_version == Version::HTTP_2 {
        resp.headers_mut().remove(header::CONNECTION);
    }
    resp.headers_mut()
        .entry(headers::X_REQUEST_ID)
        .or_insert(request_id);
    resp
}

fn hash_key(key: &HashKey, parts: &http::request::Parts, conn: &ConnInfo) -> u64 {
    let bytes: Option<Vec<u8>> = match key {
        HashKey::ClientIp => Some(conn.client.ip().to_string().into_bytes()),
        HashKey::Path => Some(parts.uri.path().as_bytes().to_vec()),
        HashKey::Header(h) => parts.headers.get(h).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                kv.trim()
                    .split_once('=')
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.as_bytes().to_vec())
            }),
    };
    // Without a key the request is not tied to any backend; spread it at random (as Envoy).
    bytes.map_or_else(|| fastrand::u64(..), |b| hash_bytes(&b))
}

/// Tracks one request on one backend until its response body is done.
struct Inflight {
    state: Arc<BackendState>,
    address: String,
    tx: Option<SendRequest<ReqBody>>,
}

impl Inflight {
    fn start(state: &Arc<BackendState>, address: &str) -> Inflight {
        state.active.fetch_add(1, Relaxed);
        state.requests_total.fetch_add(1, Relaxed);
        Inflight {
            state: state.clone(),
            address: address.to_string(),
            tx: None,
        }
    }
}

impl OnDone for Inflight {
    fn done(mut self: Box<Self>, complete: bool) {
        if let (true, Some(tx)) = (complete, self.tx.take()) {
            pool::checkin(&self.address, tx);
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Relaxed);
    }
}

/// Records the outcome of one attempt for the breaker, passive health and counters.
fn record(up: &Upstream, i: usize, ok: bool, status_class: usize) {
    let s = &up.backends[i].state;
    s.responses[status_class].fetch_add(1, Relaxed);
    if !ok {
        s.failures_total.fetch_add(1, Relaxed);
    }
    if let Some(p) = &up.breaker {
        if let Some(change) = s.breaker.record(p, ok, now_ms()) {
            crate::events::breaker_changed(s, change);
        }
    }
    if let Some(p) = &up.passive {
        if p.record(s, ok, &up.backends) {
            crate::events::ejected(s, s.ejected_until_ms.load(Relaxed).saturating_sub(now_ms()));
        }
    }
}

/// Sends the request to a backend, retrying on another one where the policy allows.
async fn forward(
    up: &Arc<Upstream>,
    ctx: &PickCtx,
    parts: http::request::Parts,
    body: ReqBody,
    client_failed: &AtomicU8,
) -> Response<RespBody> {
    let policy = &up.retry;
    let replayable = !matches!(body, ReqBody::Stream { .. });
    let idempotent = is_idempotent(&parts.method);
    let deadline = Instant::now() + up.request_timeout;
    up.budget.on_request();

    let mut tried: Vec<usize> = Vec::new();
    let mut parts = Some(parts);
    let mut body = Some(body);
    let mut last_err = ProxyError::NoBackend;
    for attempt in 0..policy.attempts.max(1) {
        if attempt > 0 {
            if !up.budget.try_retry(policy.budget_ratio) {
                break;
            }
            // Exponential backoff with full jitter, bounded by the overall deadline.
            let ceiling = policy.backoff.saturating_mul(1 << (attempt - 1).min(6));
            let pause = ceiling.mul_f64(fastrand::f64());
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        let i = match up.pick(ctx, &tried) {
            Ok(i) => i,
            Err(_) if attempt == 0 => return error_response(ProxyError::NoBackend),
            Err(_) => break,
        };
        tried.push(i);
        let backend = &up.backends[i];
        if let Some(max) = up.max_connections {
            if backend.state.active.load(Relaxed) >= max {
                last_err = ProxyError::Overloaded;
                continue;
            }
        }
        let mut inflight = Inflight::start(&backend.state, &backend.address);
        let more_tries = attempt + 1 < policy.attempts;
        let keep_copy = more_tries && replayable && idempotent;
        let (p, b) = if keep_copy {
            let p = parts.as_ref().map(clone_parts);
            let b = body.as_ref().map(|b| match b {
                ReqBody::Replay(x) => ReqBody::Replay(x.clone()),
                _ => ReqBody::Empty,
            });
            (p, b)
        } else {
            (parts.take(), body.take())
        };
        let (Some(p), Some(b)) = (p, b) else { break };
        let mut req = Request::from_parts(p, b);

        let per_try = policy.per_try_timeout.unwrap_or(up.request_timeout);
        let try_deadline = deadline.min(Instant::now() + per_try);
        let started = Instant::now();
        let result = send(up, backend, &mut req, try_deadline).await;
        let err = match result {
            Ok((resp, tx)) => {
                let status = resp.status();
                backend
                    .state
                    .observe_latency(started.elapsed().as_micros() as f64);
                let bad = status.is_server_error();
                record(up, i, !bad, (status.as_u16() / 100) as usize);
                let retry_status =
                    policy.on_status.contains(&status.as_u16()) && idempotent && replayable;
                if retry_status && more_tries && up.backends.len() > 1 {
                    last_err = ProxyError::UpstreamReset;
                    drop(resp);
                    continue;
                }
                let (rparts, rbody) = resp.into_parts();
                inflight.tx = Some(tx);
                let body = if rbody.is_end_stream() && status != StatusCode::SWITCHING_PROTOCOLS {
                    Box::new(inflight).done(true);
                    RespBody::empty()
                } else {
                    RespBody::Stream {
                        inner: rbody,
                        guard: Some(Box::new(inflight)),
                    }
                };
                return Response::from_parts(rparts, body);
            }
            Err(e) => e,
        };
        drop(inflight);
        match client_failed.load(Relaxed) {
            body::CLIENT_BODY_BROKEN => return error_response(ProxyError::BadRequestBody),
            body::CLIENT_BODY_TOO_LARGE => return error_response(ProxyError::BodyTooLarge),
            _ => {}
        }
        if err.is_backend_failure() {
            record(up, i, false, 0);
        }
        last_err = err;
        let retryable = match err {
            ProxyError::ConnectFailed | ProxyError::ConnectTimeout => policy.on_connect_failure,
            ProxyError::UpstreamReset => policy.on_reset && idempotent,
            ProxyError::UpstreamTimeout => policy.on_timeout && idempotent,
            _ => false,
        };
        if !retryable || Instant::now() >= deadline {
            break;
        }
        // A request whose body was never sent can go again even if it was streaming.
        if parts.is_none() && err.never_sent() {
            let (p, b) = req.into_parts();
            parts = Some(p);
            body = Some(b);
        }
        if parts.is_none() {
            break;
        }
    }
    error_response(last_err)
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::builder()
        .method(p.method.clone())
        .uri(p.uri.clone())
        .version(p.version);
    if let Some(h) = r.headers_mut() {
        *h = p.headers.clone();
    }
    let (mut parts, _) = r.body(()).unwrap_or_default().into_parts();
    parts.extensions = p.extensions.clone();
    parts
}

/// One attempt on one backend: a pooled or new connection, and the response head within the
/// deadline. A pooled connection the backend closed meanwhile is replaced once, transparently:
/// hyper hands the request back when it was not sent.
async fn send(
    up: &Upstream,
    backend: &crate::upstream::backend::Backend,
    req: &mut Request<ReqBody>,
    deadline: Instant,
) -> Result<(Response<Incoming>, SendRequest<ReqBody>), ProxyError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let connect_timeout = up
        .connect_timeout
        .min(remaining.max(Duration::from_millis(1)));
    let mut conn = pool::checkout(
        &backend.address,
        backend.socket,
        connect_timeout,
        up.idle_timeout,
    )
    .await?;
    loop {
        let r = std::mem::replace(req, Request::new(ReqBody::Empty));
        let fut = conn.tx.try_send_request(r);
        match tokio::time::timeout_at(deadline.into(), fut).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Ok(resp)) => return Ok((resp, conn.tx)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if conn.reused => {
                    *req = back;
                    let tx =
                        pool::connect(&backend.address, backend.socket, connect_timeout).await?;
                    conn = pool::Conn { tx, reused: false };
                }
                Some(back) => {
                    *req = back;
                    return Err(ProxyError::ConnectFailed);
                }
                None => return Err(ProxyError::UpstreamReset),
            },
        }
    }
}

/// A body for a plain response made by the admin or demo servers.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(body));
    *r.status_mut() = status;
    r
}
