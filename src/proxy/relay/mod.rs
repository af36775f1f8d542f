//! The HTTP/1 relay: plain HTTP/1.1 from a client to a plain HTTP/1.1 upstream, forwarded as
//! bytes. The request head is parsed in place and rewritten once into the head sent upstream;
//! the response head likewise; bodies are passed through with only their framing tracked. No
//! `http::Request`, header map, hyper dispatcher or channel is made per request, which is where
//! most of the user-space CPU of a proxied request went (BENCHMARKS.md, "Profile").
//!
//! It covers the common exchange: origin-form requests with no body or a `Content-Length` body
//! up to [`MAX_BODY`], to upstreams without TLS or HTTP/2. Everything else — chunked or larger
//! request bodies, `Expect`, upgrades (WebSocket), malformed or oversized heads, no route, gRPC,
//! TLS or HTTP/2 upstreams, OTLP tracing — is handed to hyper with the bytes read so far, and
//! the connection continues there ([`End::Handoff`]); so errors and edge cases keep one
//! implementation. Routing, balancing, `max_connections` queueing, retries (with budget, backoff
//! and per-try timeouts), breakers, passive health, counters and the access log are the same
//! code as the hyper path's.

mod deadline;
mod framing;
pub mod from_hyper;
mod head;
pub mod idle;
mod scan;
pub(crate) mod sock;

use super::forward::{backoff, may_retry, pick_or_queue, record, retryable, Inflight};
use super::{ConnInfo, Trace};
use crate::error::ProxyError;
use crate::listener::ClientStream;
use crate::observe::access_log::{self, Entry};
use crate::state::Shared;
use crate::upstream::backend::Backend;
use crate::upstream::balancer::PickCtx;
use crate::upstream::Upstream;
use bytes::{Buf, BytesMut};
use deadline::Deadline;
use framing::Progress;
use head::{Parsed, ParsedResponse};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Largest request body the relay takes (read whole, so it can be replayed on a retry); larger
/// bodies stream through hyper.
pub const MAX_BODY: u64 = 64 * 1024;
/// Largest request head, as on hyper's path.
const MAX_HEAD: usize = crate::listener::MAX_HEADER_BYTES;
/// Bodies up to this size are copied behind their head and written with it in one call.
const COALESCE: usize = 16 * 1024;

/// Why the relay stopped serving a connection.
pub enum End {
    /// The connection is done (closed by either side, timed out, or shutting down).
    Close,
    /// The next request is for hyper: serve the connection there, starting with the bytes
    /// left in the buffer.
    Handoff,
}

/// Serves requests on a client connection until it ends or a request needs hyper. `buf` holds
/// bytes already read (the protocol sniff's); on [`End::Handoff`] it holds the unconsumed ones.
pub async fn serve(
    io: &mut ClientStream,
    buf: &mut BytesMut,
    shared: &Shared,
    conn: &ConnInfo,
    stop: &watch::Receiver<bool>,
    header_timeout: Duration,
) -> End {
    if shared.otlp.get().is_some() {
        return End::Handoff;
    }
    // TCP_NODELAY is set before the connection's second write, as NGINX does: a single write
    // has nothing in flight for Nagle's algorithm to wait on, so a connection that answers one
    // request and closes never needs the syscall.
    let mut nodelay = false;
    // One timer serves every deadline of the connection (the next head, the body, the
    // backend's response head, a slow response body), where a timeout per wait inserted an
    // entry in the timer wheel and removed it again, twice per request (callgrind: ~10 % of a
    // keep-alive request's instructions with the shutdown wait below); and it is moved lazily
    // (`deadline`).
    let cue = AtomicBool::new(false);
    let timer = tokio::time::sleep(header_timeout);
    tokio::pin!(timer);
    let mut timer = Deadline::new(timer, &cue);
    // Shutdown is waited for once per connection, not once per wait (each wait joined and left
    // the watch's waiter list under its lock).
    let mut stop_rx = stop.clone();
    let stopped = stop_rx.wait_for(|s| *s);
    tokio::pin!(stopped);
    // When the previous exchange ended (the clock read it already made), for the next head's
    // deadline.
    let mut ended: Option<Instant> = None;
    loop {
        let idle_from = ended.take().unwrap_or_else(Instant::now);
        let mut due = idle_from + header_timeout;
        timer.set(due.into());
        let mut req = loop {
            if !buf.is_empty() {
                // The configuration as of this request's arrival, not the connection's last one.
                let snap = shared.snapshot.load();
                // Over the head limit: answered here, as the limit is in bytes of the head,
                // not of what one read brought (a reused buffer may hold more than the limit).
                if buf.len() > MAX_HEAD && !head::ends_within(buf, MAX_HEAD) {
                    refuse_and_close(io, shared, conn, head::too_large(buf, MAX_HEAD)).await;
                    return End::Close;
                }
                match head::parse_request(buf, &snap, conn) {
                    Parsed::Ready(r) if r.head_len > MAX_HEAD => {
                        refuse_and_close(io, shared, conn, ProxyError::HeadTooLarge).await;
                        return End::Close;
                    }
                    Parsed::Ready(r) if r.body_len <= MAX_BODY => break r,
                    Parsed::Partial if buf.len() < MAX_HEAD => {}
                    Parsed::Partial => {
                        refuse_and_close(io, shared, conn, head::too_large(buf, MAX_HEAD)).await;
                        return End::Close;
                    }
                    _ => return End::Handoff,
                }
            }
            if !read_more(io, buf, stopped.as_mut(), &mut timer).await {
                // A request begun and not finished in time gets a 408 (an idle keep-alive
                // connection is closed without one, as NGINX and HAProxy do).
                if !buf.is_empty() && Instant::now() >= due {
                    refuse_and_close(io, shared, conn, ProxyError::ClientTimeout).await;
                }
                return End::Close;
            }
        };
        let (head_len, body_len) = (req.head_len, req.body_len as usize);
        // The body has its own time from the end of the head (the head's ran from idle).
        if buf.len() < head_len + body_len {
            due = Instant::now() + header_timeout;
            timer.set(due.into());
        }
        while buf.len() < head_len + body_len {
            buf.reserve(head_len + body_len - buf.len());
            if !read_more(io, buf, stopped.as_mut(), &mut timer).await {
                if Instant::now() >= due {
                    refuse_and_close(io, shared, conn, ProxyError::ClientTimeout).await;
                }
                return End::Close;
            }
        }
        req.close |= *stop.borrow();
        let close = req.close;
        let pipelined = buf.len() > head_len + body_len;
        let (head, body) = buf[..head_len + body_len].split_at(head_len);
        let on = (&mut nodelay, &mut timer, stop, pipelined);
        let kept = boxed_in_place(|| exchange(io, head, body, req, shared, conn, on)).await;
        let Some(at) = kept.filter(|_| !close) else {
            return End::Close;
        };
        ended = Some(at);
        set_nodelay(io, &mut nodelay);
        buf.advance(head_len + body_len);
        if buf.is_empty() {
            // Nothing pipelined: hold no buffer while the connection waits.
            idle::recycle(std::mem::take(buf));
        }
    }
}

/// Boxes the future `make` returns, allocating first so that the compiler can build the future
/// in the allocation: `Box::pin(f)` built it on the stack and copied all of its bytes (2.4 KiB
/// for an exchange, though only its ~180 bytes of arguments are set before the first poll) twice.
#[inline(always)]
pub(crate) fn boxed_in_place<F, M: FnOnce() -> F>(make: M) -> Pin<Box<F>> {
    let mut b = Box::<F>::new_uninit();
    b.write(make());
    // SAFETY: written on the line above. (`Box::write` says the same without `unsafe`, but is
    // newer than this crate's rust-version.)
    Box::into_pin(unsafe { b.assume_init() })
}

fn set_nodelay(io: &ClientStream, done: &mut bool) {
    if !std::mem::replace(done, true) {
        let _ = io.set_nodelay(true);
    }
}

/// Reads more client bytes, waiting without a buffer. False on close, error, the timer
/// firing, or shutdown.
async fn read_more<S: std::future::Future>(
    io: &mut ClientStream,
    buf: &mut BytesMut,
    mut stopped: Pin<&mut S>,
    timer: &mut Deadline<'_>,
) -> bool {
    loop {
        // A socket not yet in the event loop is read at once: its bytes are usually there, and
        // a read that would block registers it, so the next turn waits below.
        if io.is_evented() {
            tokio::select! {
                biased;
                r = io.readable() => if r.is_err() {
                    return false;
                },
                _ = timer.passed() => return false,
                _ = stopped.as_mut() => return false,
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            if buf.is_empty() {
                *buf = idle::buffer();
            } else {
                buf.reserve(4096);
            }
        }
        // A short read clears the readiness (`sock::try_read`): the next wait goes straight
        // to epoll instead of trying a read that would block.
        let read = io.try_read_buf(buf);
        match read {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The first read of a socket not yet in the event loop took a buffer for bytes
                // that were not there: give it back before waiting, or every idle keep-alive
                // connection would hold one (10,000 of them: +42 MiB, measured).
                if buf.is_empty() {
                    idle::recycle(std::mem::take(buf));
                }
            }
            Err(_) => return false,
        }
    }
}

/// A backend's response head, read on the connection that carries the body.
struct Exchange {
    stream: TcpStream,
    /// Response bytes read past the head (the body's start).
    buf: BytesMut,
    resp: head::Response,
    /// The head for the client.
    client_head: Vec<u8>,
    backend: usize,
    inflight: Option<Inflight>,
    /// When the backend's last bytes so far arrived.
    last_read: Instant,
}

/// One request: forward it (with retries), relay the response. Returns when the exchange ended
/// if the client connection can take another request.
async fn exchange(
    io: &mut ClientStream,
    head: &[u8],
    body: &[u8],
    mut req: head::Request,
    shared: &Shared,
    conn: &ConnInfo,
    (nodelay, timer, stop, pipelined): (&mut bool, &mut Deadline<'_>, &watch::Receiver<bool>, bool),
) -> Option<Instant> {
    // The client's `Connection: close`, or shutdown (set by `serve`).
    let close = req.close;
    let started = Instant::now();
    // Boxed: the exchange moves it twice on the way to `finish`, and an `Option<Entry>` is
    // ~300 bytes copied each time even when the log is off (callgrind: 128 instructions per
    // request).
    let entry = shared
        .access_log
        .as_ref()
        .map(|_| Box::new(log_entry(head, conn)));
    let mut trace = Trace {
        upstream: Some(req.upstream.clone()),
        bytes_in: body.len() as u64,
        ..Trace::default()
    };
    req.upstream_head.extend_from_slice(body);
    let request_id = req.request_id.bytes(head);
    let up = req.upstream.clone();
    let timeout = crate::proxy::rewrite::RouteActions::timeout_on(req.actions.as_deref(), &up);
    // A client that leaves while its request waits (queued, or for the backend's answer) is
    // noticed, as NGINX and hyper's path notice it, and what its request held is let go. A
    // connection already in the event loop is watched at once (one readiness poll); one that
    // is not joins it only if the request queues or is still waiting after `HANGUP_CHECK`.
    // Pipelined bytes already read leave nothing to watch.
    let cue = timer.cue();
    if !pipelined && !io.is_evented() {
        timer.cue_at((started + HANGUP_CHECK).into());
    }
    let on = (started, timeout, &mut *timer);
    // Polled in place: `select!` moved the whole forward future (~2 KiB) into its tuple first
    // (callgrind: +235 instructions per request in memcpy).
    let result = {
        let mut work = std::pin::pin!(forward(&up, &req, request_id, close, on, &mut trace, cue));
        let mut watching = !pipelined;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if watching {
                match io.poll_hangup(cx, cue.load(Relaxed)) {
                    Poll::Ready(true) => return Poll::Ready(None),
                    // Pipelined bytes came: the client is there, and only reading them could tell
                    // more.
                    Poll::Ready(false) => watching = false,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    };
    timer.no_cue();
    let outcome = match result {
        None => (499, Some("downstream_closed"), 0, false, None),
        Some(Err(e)) => local_error(io, e, &req, request_id, close).await,
        Some(Ok(mut x)) => {
            // Shutdown began while the backend answered: the client is told this connection
            // ends here, as HAProxy and Envoy do, instead of finding it closed under its next
            // request. (`has_changed`: one atomic load; shutdown is the only change sent.)
            let draining = !close && stop.has_changed().unwrap_or(true);
            // A body delimited by close already said so.
            if draining && x.resp.framing != head::Framing::UntilClose {
                head::announce_close(&mut x.client_head);
            }
            let limits = (up.idle_timeout, started + timeout);
            let Some((sent, end)) = respond(io, &mut x, limits, nodelay, timer).await else {
                // The body's first bytes were malformed and nothing went out yet.
                let e = ProxyError::UpstreamReset;
                let outcome = local_error(io, e, &req, request_id, close).await;
                return finish(shared, entry, &trace, &up, request_id, started, outcome);
            };
            if end == Err("upstream_reset") {
                // Counted against the backend, as on hyper's path (`Inflight::failed`).
                record(&up, x.backend, false, 0, crate::upstream::backend::now_ms());
                let backend = &up.backends[x.backend].address;
                tracing::warn!(upstream = %up.name, %backend, "the backend's response broke off mid-body");
            }
            let complete = end.is_ok();
            if complete && !x.resp.backend_close {
                let id = up.backends[x.backend].state.id;
                let expires = x.last_read + up.idle_timeout;
                idle::put(up.connector.pool_key, id, x.stream, x.buf, expires);
            } else {
                idle::recycle(x.buf);
            }
            // A body delimited by the backend's close ends the client connection too.
            let until_close = x.resp.framing == head::Framing::UntilClose;
            let keep = complete && !until_close && !draining;
            (
                x.resp.status,
                end.err(),
                sent,
                complete,
                keep.then_some(x.last_read),
            )
        }
    };
    finish(shared, entry, &trace, &up, request_id, started, outcome)
}

/// What an exchange came to: status, Switchyard's error reason, body bytes sent, whether the
/// response went out whole, and when it ended if the client connection can go on.
type Outcome = (u16, Option<&'static str>, u64, bool, Option<Instant>);

/// How long a request may wait on a connection outside the event loop before its client is
/// watched for leaving (at once if it queues). Most answers come well within it, and a client
/// that gives up on a slow one is noticed within it.
const HANGUP_CHECK: Duration = Duration::from_secs(1);

/// Answers a request that cannot be read and closes: one too slow to send its head or body
/// (408), or whose head is over the limit (431, or 414 for the request line). Access-logged and
/// counted like every response Switchyard makes. The write gets a second, not the client's pace.
async fn refuse_and_close(io: &mut ClientStream, shared: &Shared, conn: &ConnInfo, e: ProxyError) {
    let id = crate::proxy::headers::new_request_id();
    let (out, body_len) = head::error_response(e, &id, false, true);
    let wrote = tokio::time::timeout(Duration::from_secs(1), io.write_all(&out)).await;
    crate::observe::metrics::downstream_response(e.status().as_u16());
    if let Some(log) = &shared.access_log {
        let mut entry = Entry {
            time: access_log::rfc3339(SystemTime::now()),
            request_id: String::from_utf8_lossy(&id).into_owned(),
            client: conn.client.to_string(),
            protocol: "HTTP/1.1",
            status: e.status().as_u16(),
            error: Some(e.reason()),
            ..Entry::default()
        };
        if matches!(wrote, Ok(Ok(()))) {
            entry.bytes_out = body_len;
        }
        log.log(&entry);
    }
}

/// Answers with a response Switchyard makes itself.
async fn local_error(
    io: &mut ClientStream,
    e: ProxyError,
    req: &head::Request,
    request_id: &[u8],
    close: bool,
) -> Outcome {
    let (mut out, body_len) = head::error_response(e, request_id, req.is_head, close);
    if let Some(a) = &req.actions {
        a.response.edit_head(&mut out);
    }
    let ok = io.write_all(&out).await.is_ok();
    let at = ok.then(Instant::now);
    (e.status().as_u16(), Some(e.reason()), body_len, ok, at)
}

/// Logs the exchange (when the access log is on); returns when it ended if the connection goes
/// on.
fn finish(
    shared: &Shared,
    entry: Option<Box<Entry>>,
    trace: &Trace,
    up: &Upstream,
    request_id: &[u8],
    started: Instant,
    (status, error, sent, complete, keep): Outcome,
) -> Option<Instant> {
    crate::observe::metrics::downstream_response(status);
    if let (Some(log), Some(mut e)) = (&shared.access_log, entry) {
        e.status = status;
        e.error = error.or((!complete).then_some("downstream_closed"));
        e.request_id = String::from_utf8_lossy(request_id).into_owned();
        e.bytes_in = trace.bytes_in;
        e.bytes_out = sent;
        e.duration_ms = access_log::ms(started.elapsed());
        e.attempts = trace.attempts;
        e.upstream_connect_ms = trace.connect.map(access_log::ms);
        e.upstream_first_byte_ms = trace.first_byte.map(access_log::ms);
        e.upstream = Some(up.name.clone());
        e.backend = trace
            .backend
            .and_then(|i| up.backends.get(i))
            .map(|b| b.address.clone());
        log.log(&e);
    }
    keep
}

/// Sends the request to a backend, retrying on another one where the policy allows (the body
/// is in memory, so every attempt can carry it).
async fn forward(
    up: &Arc<Upstream>,
    req: &head::Request,
    request_id: &[u8],
    close: bool,
    (now, timeout, timer): (Instant, Duration, &mut Deadline<'_>),
    trace: &mut Trace,
    queued: &AtomicBool,
) -> Result<Exchange, ProxyError> {
    let policy = &up.retry;
    // One clock read serves the first attempt's deadlines and timings (they cost ~20 ns each).
    let deadline = now + timeout;
    up.budget.on_request();
    let ctx = PickCtx {
        hash: req.hash,
        sticky: req.sticky.map(|i| i as usize),
    };
    // As the hyper path: a request that reached a backend goes again only when idempotent and
    // its body is within `max_replay_body`.
    let resend = req.resendable(policy.max_replay_body);
    let mut tried = [usize::MAX; 10];
    let mut tried_len = 0;
    let mut last_err = ProxyError::NoBackend;
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
            crate::observe::metrics::retry();
        }
        let i = match pick_or_queue(up, &ctx, &tried[..tried_len], deadline, Some(queued)).await {
            Ok(i) => i,
            Err(e) if attempt == 0 => return Err(e),
            Err(_) => break,
        };
        tried[tried_len.min(9)] = i;
        tried_len = (tried_len + 1).min(10);
        trace.attempts = attempt + 1;
        trace.backend = Some(i);
        let backend = &up.backends[i];
        let inflight = Inflight::start(up, i);
        let per_try = policy.per_try_timeout.unwrap_or(timeout);
        let started = if attempt == 0 { now } else { Instant::now() };
        let try_deadline = deadline.min(started + per_try);
        let on = (started, try_deadline, &mut *timer);
        let err = match attempt_on(up, backend, req, request_id, close, on, trace).await {
            Ok(mut x) => {
                let status = x.resp.status;
                let latency = x.last_read.saturating_duration_since(started);
                trace.first_byte = Some(latency);
                let at_ms = crate::upstream::backend::ms_at(x.last_read);
                backend
                    .state
                    .observe_latency(latency.as_secs_f64() * 1e6, at_ms);
                record(up, i, status < 500, (status / 100) as usize, at_ms);
                let after = x
                    .resp
                    .retry_after
                    .filter(|_| matches!(status, 503 | 429))
                    .map(Duration::from_secs);
                let fits = after.is_none_or(|a| Instant::now() + a < deadline);
                if policy.on_status.contains(&status)
                    && resend
                    && attempt + 1 < policy.attempts
                    && fits
                    && up.budget.try_retry(policy.budget_ratio)
                {
                    prepaid = true;
                    min_pause = after.unwrap_or_default();
                    last_err = ProxyError::UpstreamReset;
                    continue;
                }
                if let Some(s) = up.sticky.as_ref().filter(|_| ctx.sticky != Some(i)) {
                    set_cookie(&mut x.client_head, s.set_cookie(i).as_bytes());
                }
                x.backend = i;
                x.inflight = Some(inflight);
                return Ok(x);
            }
            Err(e) => e,
        };
        drop(inflight);
        if err.is_backend_failure() {
            record(up, i, false, 0, crate::upstream::backend::now_ms());
        }
        last_err = err;
        if !retryable(policy, err, resend) || Instant::now() >= deadline {
            break;
        }
    }
    Err(last_err)
}

/// Adds a `Set-Cookie` line to a rewritten response head (which ends in an empty line).
fn set_cookie(head: &mut Vec<u8>, value: &[u8]) {
    if head.ends_with(b"\r\n\r\n") {
        head.truncate(head.len() - 2);
        head::push_header(head, b"set-cookie", value);
        head.extend_from_slice(b"\r\n");
    }
}

/// How an exchange on one connection failed.
enum Failed {
    /// The request could not be written: the backend had closed the connection.
    Unsent,
    /// The backend closed without a byte of response. On a reused connection this is usually
    /// the backend having closed it while idle, just before the request arrived.
    Empty,
    Error(ProxyError),
}

/// One attempt on one backend: a pooled or new connection, the request written, and the
/// response head read within the deadline.
async fn attempt_on(
    up: &Upstream,
    backend: &Backend,
    req: &head::Request,
    request_id: &[u8],
    close: bool,
    (now, deadline, timer): (Instant, Instant, &mut Deadline<'_>),
    trace: &mut Trace,
) -> Result<Exchange, ProxyError> {
    let remaining = deadline.saturating_duration_since(now);
    let connect_timeout = up
        .connect_timeout
        .min(remaining.max(Duration::from_millis(1)));
    let pooled = idle::take(up.connector.pool_key, backend.state.id, now);
    let reused = pooled.is_some();
    let (mut stream, buf) = match pooled {
        Some(s) => s,
        None => (dial(backend, connect_timeout, trace).await?, idle::buffer()),
    };
    let on = (deadline, &mut *timer);
    let mut result = exchange_head(&mut stream, buf, req, request_id, close, on).await;
    // A pooled connection the backend closed meanwhile is replaced once, transparently: always
    // when the request did not go out, and for idempotent requests when it went out but
    // nothing came back (hyper's path hands back only the unsent request).
    let stale = match &result {
        Err(Failed::Unsent) => true,
        Err(Failed::Empty) => req.resendable(up.retry.max_replay_body),
        _ => false,
    };
    if reused && stale {
        stream = dial(backend, connect_timeout, trace).await?;
        let on = (deadline, &mut *timer);
        result = exchange_head(&mut stream, idle::buffer(), req, request_id, close, on).await;
    }
    match result {
        Ok((buf, resp, client_head)) => Ok(Exchange {
            stream,
            buf,
            resp,
            client_head,
            backend: 0,
            inflight: None,
            last_read: Instant::now(),
        }),
        // A request that could not even be written was never sent (any method may retry).
        Err(Failed::Unsent) => Err(ProxyError::ConnectFailed),
        Err(Failed::Empty) => Err(ProxyError::UpstreamReset),
        Err(Failed::Error(e)) => Err(e),
    }
}

async fn dial(
    backend: &Backend,
    timeout: Duration,
    trace: &mut Trace,
) -> Result<TcpStream, ProxyError> {
    let t = Instant::now();
    let s = Box::pin(super::connector::dial_tcp(
        &backend.address,
        backend.socket,
        timeout,
    ))
    .await?;
    trace.connect = Some(t.elapsed());
    Ok(s)
}

/// Writes the request and reads the response head (skipping interim 1xx responses).
async fn exchange_head(
    stream: &mut TcpStream,
    mut buf: BytesMut,
    req: &head::Request,
    request_id: &[u8],
    close: bool,
    (deadline, timer): (Instant, &mut Deadline<'_>),
) -> Result<(BytesMut, head::Response, Vec<u8>), Failed> {
    let work = async {
        // Only a request of which no byte went out counts as unsent: once part of it did, the
        // backend may be acting on it.
        let mut written = 0;
        while written < req.upstream_head.len() {
            match sock::write(stream, &req.upstream_head[written..]).await {
                Ok(n) if n > 0 => written += n,
                _ if written == 0 => return Err(Failed::Unsent),
                _ => return Err(Failed::Error(ProxyError::UpstreamReset)),
            }
        }
        // Sized once for a typical rewritten response head: growing from empty took several
        // reallocations per response.
        let mut client_head = Vec::with_capacity(1024);
        loop {
            match sock::read(stream, &mut buf).await {
                Ok(0) | Err(_) if buf.is_empty() => return Err(Failed::Empty),
                Ok(0) | Err(_) => return Err(Failed::Error(ProxyError::UpstreamReset)),
                Ok(_) => {}
            }
            loop {
                client_head.clear();
                let parsed =
                    head::parse_response(&buf, req.is_head, close, request_id, &mut client_head);
                match parsed {
                    Err(()) => return Err(Failed::Error(ProxyError::UpstreamReset)),
                    Ok(ParsedResponse::Interim(n)) => buf.advance(n),
                    Ok(ParsedResponse::Ready(r)) => {
                        if let Some(a) = &req.actions {
                            a.response.edit_head(&mut client_head);
                        }
                        return Ok((buf, r, client_head));
                    }
                    Ok(ParsedResponse::Partial) => break,
                }
            }
            if buf.len() >= crate::listener::MAX_HEADER_BYTES {
                return Err(Failed::Error(ProxyError::UpstreamReset));
            }
            if buf.capacity() == buf.len() {
                buf.reserve(idle::BUFFER);
            }
        }
    };
    timer.set(deadline.into());
    tokio::select! {
        biased;
        r = work => r,
        _ = timer.passed() => Err(Failed::Error(ProxyError::UpstreamTimeout)),
    }
}

/// Writes the response head and relays the body, all by `deadline` (`timeouts.request` covers
/// the whole exchange, as Envoy's route timeout does) and with no gap longer than `idle` in
/// either direction (a backend that stops sending, or a client that stops reading, as NGINX's
/// `proxy_read_timeout` and `send_timeout`). Returns the body bytes written to the client (as
/// the access log counts them) and, when the response did not go out whole, why (the backend
/// connection is clean after a whole one unless it said otherwise).
async fn respond(
    io: &mut ClientStream,
    x: &mut Exchange,
    (idle, deadline): (Duration, Instant),
    nodelay: &mut bool,
    timer: &mut Deadline<'_>,
) -> Option<(u64, Result<(), &'static str>)> {
    let mut out = std::mem::take(&mut x.client_head);
    x.buf.advance(x.resp.head_len);
    let mut progress = Progress::new(x.resp.framing);
    let n = progress.feed(&x.buf).ok()?;
    if n < x.buf.len() {
        // Bytes beyond the response: the connection is not in a known state.
        x.resp.backend_close = true;
    }
    let mut sent = 0u64;
    if n <= COALESCE {
        out.extend_from_slice(&x.buf[..n]);
    }
    // The head went out within the attempt's deadline; from here the exchange's own one and
    // the idle gap bound every wait (a later time only notes it: no timer moves).
    let gap = |timer: &mut Deadline<'_>| timer.set(deadline.min(Instant::now() + idle).into());
    let cut = |sent| Some((sent, Err(cut_reason(deadline))));
    // The head was read at `last_read`: no clock read for the first write.
    timer.set(deadline.min(x.last_read + idle).into());
    match write_by(io, &out, timer).await {
        Some(true) => {}
        Some(false) => return Some((sent, Err("downstream_closed"))),
        None => return cut(sent),
    }
    if n > COALESCE || !progress.done() {
        set_nodelay(io, nodelay);
    }
    if n > COALESCE {
        match write_by(io, &x.buf[..n], timer).await {
            Some(true) => {}
            Some(false) => return Some((sent, Err("downstream_closed"))),
            None => return cut(sent),
        }
    }
    sent += n as u64;
    while !progress.done() {
        x.buf.clear();
        x.buf.reserve(idle::BUFFER);
        gap(timer);
        let read = tokio::select! {
            biased;
            r = sock::read(&x.stream, &mut x.buf) => r,
            _ = timer.passed() => return cut(sent),
        };
        let got = match read {
            Ok(0) if matches!(progress, Progress::UntilClose) => return Some((sent, Ok(()))),
            Ok(0) | Err(_) => return Some((sent, Err("upstream_reset"))),
            Ok(n) => n,
        };
        let Ok(n) = progress.feed(&x.buf[..got]) else {
            return Some((sent, Err("upstream_reset")));
        };
        if n < got {
            x.resp.backend_close = true;
        }
        gap(timer);
        match write_by(io, &x.buf[..n], timer).await {
            Some(true) => {}
            Some(false) => return Some((sent, Err("downstream_closed"))),
            None => return cut(sent),
        }
        sent += n as u64;
        x.last_read = Instant::now();
    }
    Some((sent, Ok(())))
}

/// Writes to the client unless the timer passes first: `Some(false)` when the client is gone,
/// `None` when it stopped reading for too long. What the socket takes at once (the usual case:
/// a response fits its send buffer) is written without a future or a look at the timer
/// (callgrind: the select cost ~100 instructions per request); only the rest waits.
async fn write_by(io: &mut ClientStream, bytes: &[u8], timer: &mut Deadline<'_>) -> Option<bool> {
    let Some(done) = write_now(io, bytes) else {
        return Some(false);
    };
    let rest = &bytes[done..];
    if rest.is_empty() {
        return Some(true);
    }
    tokio::select! {
        biased;
        r = io.write_all(rest) => Some(r.is_ok()),
        _ = timer.passed() => None,
    }
}

/// Writes what the socket takes now: how many bytes, or `None` when the client is gone.
/// Polled as the plain `write_all` was, but with no waker: a write that would block is polled
/// again by the caller, with the task's.
fn write_now(io: &mut ClientStream, bytes: &[u8]) -> Option<usize> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut done = 0;
    while done < bytes.len() {
        match tokio::io::AsyncWrite::poll_write(
            std::pin::Pin::new(&mut *io),
            &mut cx,
            &bytes[done..],
        ) {
            std::task::Poll::Ready(Ok(0) | Err(_)) => return None,
            std::task::Poll::Ready(Ok(n)) => done += n,
            std::task::Poll::Pending => break,
        }
    }
    Some(done)
}

/// Why a response was cut when the timer passed: the exchange's deadline, or an idle gap.
fn cut_reason(deadline: Instant) -> &'static str {
    if Instant::now() >= deadline {
        "request_timeout"
    } else {
        "idle_timeout"
    }
}

/// The access-log fields known from the request head.
fn log_entry(head: &[u8], conn: &ConnInfo) -> Entry {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut slots);
    let _ = req.parse(head);
    let h = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let xff = || {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|h| h.value)
    };
    let (client, peer) = conn.log_client(conn.client_of(xff));
    Entry {
        time: crate::observe::access_log::rfc3339(SystemTime::now()),
        client,
        peer,
        method: req.method.unwrap_or("").to_string(),
        host: h("host").unwrap_or_default(),
        path: req.path.unwrap_or("").to_string(),
        protocol: "HTTP/1.1",
        user_agent: h("user-agent"),
        referer: h("referer"),
        tls_version: conn.tls_version,
        tls_client: conn.tls_client.clone(),
        ..Entry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_waiting_for_its_next_request_holds_no_buffer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        // Bare, as a connection is after answering its first request without waiting.
        let mut io = ClientStream::new(s);
        let mut buf = BytesMut::new();
        let (_tx, rx) = watch::channel(false);
        let mut rx2 = rx.clone();
        let stopped = rx2.wait_for(|s| *s);
        tokio::pin!(stopped);
        let timer = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(timer);
        let cue = AtomicBool::new(false);
        let mut timer = Deadline::new(timer, &cue);
        let waiting = read_more(&mut io, &mut buf, stopped.as_mut(), &mut timer);
        let waited = tokio::time::timeout(Duration::from_millis(100), waiting).await;
        assert!(waited.is_err(), "no bytes were sent, so the read waits");
        assert!(io.is_evented(), "the read would block, so it registered");
        assert_eq!(buf.capacity(), 0, "the buffer went back before the wait");
    }
}
