//! Forwarding one request to an upstream: pick a backend, send on a pooled connection within
//! the deadlines, and retry on another backend where the policy and the request allow it.
//!
//! A retry happens only when it is safe: the request never reached a backend (connect failure),
//! or the method is idempotent and the body can be replayed. The retry budget, backoff with
//! jitter and the overall deadline keep retries from turning a failing fleet into a hammered one.

use super::body::{
    BackendBody, OnDone, ReqBody, RespBody, Until, CLIENT_BODY_BROKEN, CLIENT_BODY_STALLED,
    CLIENT_BODY_TOO_LARGE,
};
use super::pool::SendRequest;
use super::{error_response, is_idempotent, pool, Trace};
use crate::error::ProxyError;
use crate::upstream::backend::{now_ms, BackendState};
use crate::upstream::balancer::PickCtx;
use crate::upstream::{NoBackend, Upstream};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tracks one request on one backend until its response body is done.
pub(super) struct Inflight {
    state: Arc<BackendState>,
    tx: Option<SendRequest<ReqBody>>,
    /// How long the connection may then wait in the pool.
    idle_timeout: Duration,
    /// The upstream and the backend's index in it, for a failure mid-body.
    up: Arc<Upstream>,
    backend: usize,
    /// Dispatched to a half-open circuit: a probe, whose place is given back when this ends.
    probe: bool,
}

impl Inflight {
    /// Right after the pick that chose `backend` (which took a probe place if half-open).
    pub(super) fn start(up: &Arc<Upstream>, backend: usize) -> Inflight {
        let state = &up.backends[backend].state;
        state.active.fetch_add(1, Relaxed);
        state.requests_total.fetch_add(1, Relaxed);
        Inflight {
            state: state.clone(),
            tx: None,
            idle_timeout: up.idle_timeout,
            up: up.clone(),
            backend,
            probe: state.breaker.state() == crate::upstream::breaker::Circuit::HalfOpen,
        }
    }
}

impl OnDone for Inflight {
    fn poll_drive(&mut self, cx: &mut std::task::Context<'_>) {
        if let Some(tx) = &mut self.tx {
            tx.poll_drive(cx);
        }
    }

    /// Counted against the backend (breaker, passive health), as a reset before the head is.
    fn failed(&mut self) {
        let now = crate::upstream::backend::now_ms();
        record(&self.up, self.backend, false, 0, now);
        tracing::warn!(
            upstream = %self.up.name,
            backend = %self.state.address,
            "the backend's response broke off mid-body"
        );
    }

    fn done(mut self: Box<Self>, complete: bool) {
        if let (true, Some(tx)) = (complete, self.tx.take()) {
            pool::checkin(&self.state.address, tx, self.idle_timeout);
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Relaxed);
        if self.probe {
            self.state.breaker.probe_ended();
        }
        if self.up.max_connections.is_some() {
            self.up.queue.freed();
        }
    }
}

/// Picks a backend; when every otherwise-available backend is at `max_connections`, waits in
/// the upstream's queue (at most `max_pending` waiters, until the deadline), as HAProxy's
/// server `maxconn` and `maxqueue`. A full queue answers 503 at once instead of growing.
///
/// `queued`, when given, is set as the request joins the queue: the relay then starts watching
/// its client, so that one who leaves gives its place up (hyper's path is cancelled by hyper).
pub(super) async fn pick_or_queue(
    up: &Upstream,
    ctx: &PickCtx,
    tried: &[usize],
    deadline: Instant,
    queued: Option<&AtomicBool>,
) -> Result<usize, ProxyError> {
    // Taken once and kept through every wake-up: leaving and re-joining on each turn let a
    // newcomer take the place of a request that had waited longer.
    let mut place = None;
    let pick = || match up.pick(ctx, tried) {
        Ok(i) => Some(Ok(i)),
        Err(NoBackend::Full) => None,
        Err(_) => Some(Err(ProxyError::NoBackend)),
    };
    loop {
        // The plain path: one pick, no wake-up made.
        if let Some(r) = pick() {
            return r;
        }
        // Full: the wake-up is enabled, then the pick tried again, so that a slot freed in
        // between reaches this waiter (`notify_one` passes over a `Notified` not yet polled
        // or enabled, and two slots freed then would wake one waiter between them).
        let mut waiter = std::pin::pin!(up.queue.notified());
        waiter.as_mut().enable();
        if let Some(r) = pick() {
            return r;
        }
        if place.is_none() {
            place = Some(
                up.queue
                    .join(up.max_pending.unwrap_or(1024))
                    .ok_or(ProxyError::Overloaded)?,
            );
            if let Some(q) = queued {
                q.store(true, Relaxed);
            }
        }
        if tokio::time::timeout_at(deadline.into(), waiter)
            .await
            .is_err()
        {
            return Err(ProxyError::Overloaded);
        }
    }
}

/// Records the outcome of one attempt for the breaker, passive health and counters, at
/// `now_ms` ([`now_ms`], or [`crate::upstream::backend::ms_at`] of a time already read).
pub(super) fn record(up: &Upstream, i: usize, ok: bool, status_class: usize, now_ms: u64) {
    let s = &up.backends[i].state;
    s.responses[status_class].fetch_add(1, Relaxed);
    if !ok {
        s.failures_total.fetch_add(1, Relaxed);
    }
    record_health(up, i, ok, now_ms);
}

/// The breaker's and passive health's part of [`record`]: all a `tcp` listener's successful
/// connect tells (it has no response to count).
pub(super) fn record_health(up: &Upstream, i: usize, ok: bool, now_ms: u64) {
    let s = &up.backends[i].state;
    if let Some(p) = &up.breaker {
        if let Some(change) = s.breaker.record(p, ok, now_ms) {
            crate::events::breaker_changed(s, change);
        }
    }
    if let Some(p) = &up.passive {
        if p.record(s, ok, &up.backends) {
            crate::events::ejected(s, s.ejected_until_ms().saturating_sub(now_ms));
        }
    }
}

/// Sends the request to a backend, retrying on another one where the policy allows.
pub(super) async fn forward(
    up: &Arc<Upstream>,
    ctx: &PickCtx,
    parts: http::request::Parts,
    body: ReqBody,
    timeout: Duration,
    trace: &mut Trace,
) -> Response<RespBody> {
    let policy = &up.retry;
    let replayable = !matches!(body, ReqBody::Stream { .. });
    let idempotent = is_idempotent(&parts.method);
    let deadline = Instant::now() + timeout;
    up.budget.on_request();

    // Attempts are at most 10 (validated), so the tried set lives on the stack.
    let mut tried_buf = [usize::MAX; 10];
    let mut tried_len = 0;
    let mut parts = Some(parts);
    let mut body = Some(body);
    let mut last_err = ProxyError::NoBackend;
    // A retry already paid for from the budget, and the pause a Retry-After asked for.
    let (mut prepaid, mut min_pause) = (false, Duration::ZERO);
    for attempt in 0..policy.attempts.max(1) {
        if attempt > 0 {
            if !may_retry(up, &mut prepaid, last_err) {
                break;
            }
            let pause = backoff(policy, attempt, std::mem::take(&mut min_pause));
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        let i = match pick_or_queue(up, ctx, &tried_buf[..tried_len], deadline, None).await {
            Ok(i) => i,
            Err(e) if attempt == 0 => return error_response(e),
            Err(_) => break,
        };
        tried_buf[tried_len.min(9)] = i;
        tried_len = (tried_len + 1).min(10);
        let backend = &up.backends[i];
        trace.attempts = attempt + 1;
        trace.backend = Some(i);
        if attempt > 0 {
            crate::observe::metrics::retry();
        }
        let mut inflight = Inflight::start(up, i);
        let more_tries = attempt + 1 < policy.attempts;
        // A copy is kept only if a retry could follow a request the backend saw: an unsent
        // request comes back from hyper (`take_message`), so connect-failure retries need none.
        let retry_after_send = policy.on_reset || policy.on_timeout || !policy.on_status.is_empty();
        let keep_copy = more_tries && replayable && idempotent && retry_after_send;
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
        // With tracing on, this attempt is a child span and the backend continues from it.
        let attempt_span = trace.otel.as_ref().map(|(ctx, _)| {
            let id = crate::observe::otlp::random_span_id();
            if let Ok(v) = http::HeaderValue::try_from(ctx.header_for(id)) {
                req.headers_mut().insert("traceparent", v);
            }
            (id, std::time::SystemTime::now())
        });

        let per_try = policy.per_try_timeout.unwrap_or(timeout);
        let try_deadline = deadline.min(Instant::now() + per_try);
        let started = Instant::now();
        let result = send(up, backend, &mut req, try_deadline, trace).await;
        if let (Some((id, start)), Some((ctx, Some(exporter)))) = (attempt_span, &trace.otel) {
            exporter.record(attempt_span_of(
                *ctx,
                id,
                start,
                &backend.address,
                attempt,
                &result,
            ));
        }
        let err = match result {
            Ok((resp, tx)) => {
                let status = resp.status();
                let at = Instant::now();
                let latency = at.saturating_duration_since(started);
                trace.first_byte = Some(latency);
                let us = latency.as_secs_f64() * 1e6;
                let at_ms = crate::upstream::backend::ms_at(at);
                backend.state.observe_latency(us, at_ms);
                let bad = status.is_server_error();
                let class = (status.as_u16() / 100) as usize;
                record(up, i, !bad, class, at_ms);
                let retry_status =
                    policy.on_status.contains(&status.as_u16()) && idempotent && replayable;
                // Retry-After (seconds) on 503/429 is honoured: the next try waits at least that
                // long, or there is no retry when that would pass the deadline.
                let after = retry_after(&resp).filter(|_| matches!(status.as_u16(), 503 | 429));
                let fits = after.is_none_or(|a| Instant::now() + a < deadline);
                if retry_status && more_tries && fits && up.budget.try_retry(policy.budget_ratio) {
                    prepaid = true;
                    min_pause = after.unwrap_or_default();
                    last_err = ProxyError::UpstreamReset;
                    drop(resp);
                    continue;
                }
                let (mut rparts, rbody) = resp.into_parts();
                if let Some(s) = up.sticky.as_ref().filter(|_| ctx.sticky != Some(i)) {
                    rparts
                        .headers
                        .append(http::header::SET_COOKIE, s.set_cookie(i).clone());
                }
                inflight.tx = Some(tx);
                let body = if rbody.is_end_stream() && status != StatusCode::SWITCHING_PROTOCOLS {
                    Box::new(inflight).done(true);
                    RespBody::empty()
                } else {
                    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
                    RespBody::Stream {
                        inner: BackendBody::Hyper(rbody),
                        guard: Some(Box::new(inflight)),
                        until: (!upgrade).then(|| Until::new(deadline)),
                        broke: false,
                    }
                };
                return Response::from_parts(rparts, body);
            }
            Err(e) => e,
        };
        drop(inflight);
        match trace.body.as_ref().map(|s| s.failed.load(Relaxed)) {
            Some(CLIENT_BODY_BROKEN) => return error_response(ProxyError::BadRequestBody),
            Some(CLIENT_BODY_TOO_LARGE) => return error_response(ProxyError::BodyTooLarge),
            Some(CLIENT_BODY_STALLED) => return error_response(ProxyError::ClientTimeout),
            // The deadline passed while the body waited on the client (the header timeout
            // between its reads not yet run out): the client's slowness, not the backend's.
            _ if err == ProxyError::UpstreamTimeout
                && trace.body.as_ref().is_some_and(|s| s.waiting.load(Relaxed)) =>
            {
                return error_response(ProxyError::ClientTimeout)
            }
            _ => {}
        }
        if err.is_backend_failure() {
            record(up, i, false, 0, now_ms());
        }
        last_err = err;
        if !retryable(policy, err, idempotent) || Instant::now() >= deadline {
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

/// The pause before retry `attempt` (≥ 1): exponential backoff with full jitter, at least
/// `min_pause` (a Retry-After).
pub(super) fn backoff(
    policy: &crate::upstream::RetryPolicy,
    attempt: u32,
    min_pause: Duration,
) -> Duration {
    let ceiling = policy.backoff.saturating_mul(1 << (attempt - 1).min(6));
    ceiling.mul_f64(fastrand::f64()).max(min_pause)
}

/// Whether the next attempt may go, as far as the retry budget goes: paid for already (a
/// retried status), free when the last try never reached a backend (as HAProxy's `redispatch`:
/// it cost no backend any work, `attempts` still bounds it, and with one backend of three down
/// a third of requests need it, more than the budget's 20 %), or paid for now.
pub(super) fn may_retry(up: &Upstream, prepaid: &mut bool, last: ProxyError) -> bool {
    std::mem::take(prepaid) || last.never_sent() || up.budget.try_retry(up.retry.budget_ratio)
}

/// Whether a failed attempt may go to another backend (the body being replayable is the
/// caller's to check).
pub(super) fn retryable(
    policy: &crate::upstream::RetryPolicy,
    err: ProxyError,
    idempotent: bool,
) -> bool {
    match err {
        ProxyError::ConnectFailed | ProxyError::ConnectTimeout => policy.on_connect_failure,
        ProxyError::UpstreamReset => policy.on_reset && idempotent,
        ProxyError::UpstreamTimeout => policy.on_timeout && idempotent,
        _ => false,
    }
}

fn attempt_span_of<T>(
    ctx: crate::observe::otlp::TraceCtx,
    id: [u8; 8],
    start: std::time::SystemTime,
    backend: &str,
    attempt: u32,
    result: &Result<(Response<Incoming>, T), ProxyError>,
) -> crate::observe::otlp::Span {
    use serde_json::json;
    let mut attrs = vec![
        ("server.address", json!(backend)),
        ("switchyard.attempt", json!(attempt + 1)),
    ];
    let error = match result {
        Ok((r, _)) => {
            attrs.push(("http.response.status_code", json!(r.status().as_u16())));
            r.status().is_server_error()
        }
        Err(e) => {
            attrs.push(("error.type", json!(e.reason())));
            true
        }
    };
    crate::observe::otlp::Span {
        ctx,
        span_id: id,
        parent: Some(ctx.span_id),
        name: "switchyard.upstream_attempt",
        kind: 3,
        start,
        end: std::time::SystemTime::now(),
        attrs,
        error,
    }
}

fn retry_after(resp: &Response<Incoming>) -> Option<Duration> {
    let v = resp
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(super::MAX_RETRY_AFTER_S)))
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
    trace: &mut Trace,
) -> Result<(Response<Incoming>, SendRequest<ReqBody>), ProxyError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let connect_timeout = up
        .connect_timeout
        .min(remaining.max(Duration::from_millis(1)));
    let t = Instant::now();
    let mut conn = pool::checkout(
        &up.connector,
        &backend.address,
        backend.socket,
        connect_timeout,
    )
    .await?;
    if !conn.reused {
        trace.connect = Some(t.elapsed());
    }
    // An HTTP/2 backend rotates its connections with GOAWAY; a stream it refused, or opened
    // above the GOAWAY's last stream id, was never processed (RFC 9113 §8.7, §6.8) and goes
    // once more on a new connection, whatever its method, as HAProxy and Envoy do. That needs a
    // copy of the request, which an in-memory or empty body allows.
    let mut refused_retry = conn.tx.is_h2();
    let fresh = || async {
        let tx = Box::pin(pool::connect(
            &up.connector,
            &backend.address,
            backend.socket,
            connect_timeout,
        ))
        .await?;
        Ok::<_, ProxyError>(pool::Conn { tx, reused: false })
    };
    loop {
        let r = std::mem::replace(req, Request::new(ReqBody::Empty));
        let (r, spare) = if refused_retry {
            with_copy(r)
        } else {
            (r, None)
        };
        let fut = conn.tx.try_send_request(r);
        match tokio::time::timeout_at(deadline.into(), fut).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Ok(resp)) => {
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    conn.tx.detach();
                }
                return Ok((resp, conn.tx));
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if conn.reused => {
                    *req = back;
                    conn = fresh().await?;
                }
                Some(back) => {
                    *req = back;
                    return Err(ProxyError::ConnectFailed);
                }
                None => match (spare, unprocessed(e.error())) {
                    (Some(again), Some(Refused::Stream)) => {
                        // The connection goes on: only this stream was turned away.
                        refused_retry = false;
                        *req = again;
                    }
                    (Some(again), Some(Refused::GoingAway)) => {
                        refused_retry = false;
                        *req = again;
                        conn = fresh().await?;
                    }
                    _ => return Err(ProxyError::UpstreamReset),
                },
            },
        }
    }
}

/// The request, and a copy of it when its body is in memory (or absent).
fn with_copy(r: Request<ReqBody>) -> (Request<ReqBody>, Option<Request<ReqBody>>) {
    let (parts, body) = r.into_parts();
    let copy = match &body {
        ReqBody::Empty => Some(ReqBody::Empty),
        ReqBody::Replay(b) => Some(ReqBody::Replay(b.clone())),
        ReqBody::Stream { .. } => None,
    }
    .map(|b| Request::from_parts(clone_parts(&parts), b));
    (Request::from_parts(parts, body), copy)
}

/// How an HTTP/2 backend turned a stream away unprocessed.
enum Refused {
    /// `REFUSED_STREAM`: this stream only.
    Stream,
    /// Above the last stream id of the backend's GOAWAY: the connection is closing.
    GoingAway,
}

/// Whether (and how) an HTTP/2 stream failed without the backend having processed it.
fn unprocessed(e: &hyper::Error) -> Option<Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            if h2e.is_go_away() && h2e.is_remote() {
                return Some(Refused::GoingAway);
            }
            return (h2e.reason() == Some(h2::Reason::REFUSED_STREAM)).then_some(Refused::Stream);
        }
        source = s.source();
    }
    None
}
