//! Requests hyper's server parsed — every HTTP/2 request, and HTTP/1 requests the byte relay
//! does not take itself (TLS client connections, HTTP/1.0, `Expect`, ...) — sent to plain
//! HTTP/1.1 backends over the relay's backend connections, without hyper's client. hyper still
//! serves the client's connection; what goes away per request is the client side: its request
//! encoder, dispatcher, channels and response parser. That dispatcher was 40 % of an h2c
//! request's CPU (17 points in user space, the rest the backend socket's syscalls); without it an
//! h2c request took 0.53–0.78× the CPU (BENCHMARKS.md, "HTTP/2 without hyper's client").
//!
//! Taken by requests with no body or a body already in memory (the replayable ones), to upstreams
//! the relay serves (plain HTTP/1.1), with no upgrade, not gRPC, and OTLP tracing off; anything
//! else keeps hyper's client. Trailers of a chunked response are read and dropped. The request head is written from the header map [`crate::proxy::serve`]
//! prepared; the exchange itself — backend choice, retries, breakers, the response head's checks
//! and rewrite — is the relay's ([`super::forward`]). The response body is decoded from its
//! HTTP/1 framing (chunked coding removed; hyper's server frames it anew for its client) as it
//! streams, and the connection goes back to the relay's idle list when the body ends cleanly.

use super::framing::Progress;
use super::head::{self, Framing};
use super::scan::{self, Scan};
use super::{idle, Exchange};
use crate::error::ProxyError;
use crate::proxy::body::{BackendBody, BoxError, OnDone, ReqBody, RespBody, Until};
use crate::proxy::Trace;
use crate::upstream::Upstream;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// Whether this request can take the relay's backend connections. gRPC stays with hyper's
/// client, which passes an HTTP/1.1 response's trailers on (this path drops them), and so does
/// CONNECT, whose target is an authority, not a path.
pub fn eligible(up: &Upstream, parts: &http::request::Parts, body: &ReqBody) -> bool {
    !up.connector.is_h2()
        && !up.connector.is_tls()
        && parts.method != Method::CONNECT
        && matches!(body, ReqBody::Empty | ReqBody::Replay(Some(_)))
        && !crate::proxy::grpc::is_grpc(&parts.headers)
}

/// Forwards the request (head already rewritten for the backend) and answers with the backend's
/// response, or with Switchyard's error response.
pub async fn forward(
    up: &Arc<Upstream>,
    ctx: &crate::upstream::balancer::PickCtx,
    parts: &http::request::Parts,
    body: ReqBody,
    request_id: &HeaderValue,
    timeout: std::time::Duration,
    trace: &mut Trace,
) -> Result<Response<RespBody>, ProxyError> {
    let started = Instant::now();
    let body = match body {
        ReqBody::Replay(Some(b)) => b,
        _ => Bytes::new(),
    };
    trace.bytes_in = body.len() as u64;
    let method = &parts.method;
    let req = head::Request {
        head_len: 0,
        upstream_head: request_head(parts, &body),
        upstream: up.clone(),
        hash: ctx.hash,
        sticky: ctx.sticky.map(|i| i as u32),
        body_len: body.len() as u64,
        idempotent: crate::proxy::is_idempotent(method),
        is_head: method == Method::HEAD,
        close: false,
        // The id goes to `super::forward` directly; this field is the HTTP/1 path's.
        request_id: head::RequestId::Client(0, 0),
        // hyper's path has applied the route's edits to the request and does the response's.
        actions: None,
    };
    // The relay's connections keep one timer for all their waits; a request from hyper has
    // this one (armed only if the backend makes it wait).
    // (hyper watches its client itself: the cue is raised, and read, by no one.)
    let cue = std::sync::atomic::AtomicBool::new(false);
    let timer = tokio::time::sleep_until((started + timeout).into());
    tokio::pin!(timer);
    let mut timer = super::Deadline::new(timer, &cue);
    let on = (started, timeout, &mut timer);
    let x = super::forward(up, &req, request_id.as_bytes(), false, on, trace, &cue).await?;
    response(up, x, started + timeout)
}

/// The HTTP/1.1 request head (and body) for the backend.
fn request_head(parts: &http::request::Parts, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + body.len());
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Cookie lines arrive joined into one already (`headers::join_cookies`, in `proxy::serve`).
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH {
            head::push_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    // HTTP/2 frames a body by its DATA frames and may repeat the field, so the length is the
    // body's, written once, whatever the client declared. As hyper's client does, an empty body
    // is declared for the methods that normally carry one.
    let carries = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || carries {
        head::push_header(
            &mut out,
            b"content-length",
            body.len().to_string().as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The backend's response, its head rewritten by the relay (`client_head`), as an
/// `http::Response` whose body streams from the backend connection.
fn response(
    up: &Arc<Upstream>,
    mut x: Exchange,
    deadline: std::time::Instant,
) -> Result<Response<RespBody>, ProxyError> {
    let head = Bytes::from(std::mem::take(&mut x.client_head));
    let status = StatusCode::from_u16(x.resp.status).map_err(|_| ProxyError::UpstreamReset)?;
    // The relay wrote this head, almost always in the scan's shape; httparse reads any other
    // (its line count may exceed the scan's limit by the three fields the relay adds).
    let mut slots = scan::slots();
    let scanned = scan::status_line(&head).map(|(_, end)| scan::fields(&head, end, &mut slots));
    let headers = if let Ok(Scan::Complete(_, n)) = scanned {
        let fields = scan::written(&slots, n);
        header_map(
            &head,
            fields.iter().map(|f| (f.name(&head), f.value(&head))),
            n,
        )?
    } else {
        let mut lines = [httparse::EMPTY_HEADER; head::MAX_HEADERS + 3];
        let mut parsed = httparse::Response::new(&mut lines);
        // This should not fail (the relay wrote the head from one it parsed); a 502 if it does.
        let Ok(httparse::Status::Complete(_)) = parsed.parse(&head) else {
            return Err(ProxyError::UpstreamReset);
        };
        let n = parsed.headers.len();
        header_map(
            &head,
            parsed.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
            n,
        )?
    };
    x.buf.advance(x.resp.head_len);
    let mut body = Relayed {
        conn: Some((x.stream, std::mem::take(&mut x.buf))),
        progress: Progress::new(x.resp.framing),
        backend_close: x.resp.backend_close || x.resp.framing == Framing::UntilClose,
        up: up.clone(),
        backend: x.backend,
        first: None,
        idle: None,
        failed: false,
    };
    let inflight = x.inflight.take();
    // The whole body is usually in the first read: answer with it and free the connection now.
    let first = body.take().map_err(|()| ProxyError::UpstreamReset)?;
    let mut resp = Response::new(if body.progress.done() {
        body.finish();
        drop(inflight);
        RespBody::Full(first)
    } else {
        body.first = first;
        RespBody::Stream {
            inner: BackendBody::Relay(Box::new(body)),
            guard: inflight.map(|i| Box::new(i) as Box<dyn OnDone>),
            until: Some(Until::new(deadline)),
            broke: false,
        }
    });
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The header fields of a response head the relay wrote (slices of `head`) for hyper.
fn header_map<'a>(
    head: &Bytes,
    lines: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    n: usize,
) -> Result<HeaderMap, ProxyError> {
    let mut headers = HeaderMap::with_capacity(n);
    for (name, value) in lines {
        // Connection-specific fields do not exist in HTTP/2 (RFC 9113 §8.2.2); the relay keeps
        // Transfer-Encoding (its client is HTTP/1), but the body is decoded here. This path
        // drops trailers, so it does not announce them either.
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"connection")
            || name.eq_ignore_ascii_case(b"trailer")
        {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| ProxyError::UpstreamReset)?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(value))
            .map_err(|_| ProxyError::UpstreamReset)?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A response body read from a relay backend connection, its HTTP/1 framing removed.
pub struct Relayed {
    /// The backend connection and its read buffer (bytes read, not yet taken); `None` once the
    /// body ended or failed.
    conn: Option<(TcpStream, BytesMut)>,
    progress: Progress,
    /// The connection cannot carry another request afterwards.
    backend_close: bool,
    up: Arc<Upstream>,
    backend: usize,
    /// Data taken from the first read, not yet returned.
    first: Option<Bytes>,
    /// Fires when the backend sends nothing for the upstream's idle timeout mid-body (as on the
    /// relay's own path); made on the first read that has to wait.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The body failed: it stays failed (never a clean end after an error).
    failed: bool,
}

impl Relayed {
    /// The body data buffered so far (chunk framing consumed). Err: malformed chunked coding.
    fn take(&mut self) -> Result<Option<Bytes>, ()> {
        let Some((_, buf)) = self.conn.as_mut() else {
            return Ok(None);
        };
        // Usually one piece (a Content-Length body, or one chunk): returned as it is.
        let (mut first, mut joined) = (None::<Bytes>, None::<BytesMut>);
        while let Some(d) = self.progress.take_data(buf)? {
            match (&first, &mut joined) {
                (None, _) => first = Some(d),
                (Some(f), None) => {
                    let mut j = BytesMut::from(&f[..]);
                    j.extend_from_slice(&d);
                    joined = Some(j);
                }
                (Some(_), Some(j)) => j.extend_from_slice(&d),
            }
        }
        Ok(joined.map(BytesMut::freeze).or(first))
    }

    /// The body ended: the connection goes back to the idle list if it is clean.
    fn finish(&mut self) {
        let Some((stream, buf)) = self.conn.take() else {
            return;
        };
        // Bytes past the body's end mean the connection is in no known state.
        if self.backend_close || !buf.is_empty() {
            idle::recycle(buf);
            return;
        }
        let id = self.up.backends[self.backend].state.id;
        let expires = std::time::Instant::now() + self.up.idle_timeout;
        idle::put(self.up.connector.pool_key, id, stream, buf, expires);
    }

    pub fn size_hint(&self) -> http_body::SizeHint {
        match (&self.first, &self.progress) {
            (None, Progress::Done) => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }

    pub fn is_end_stream(&self) -> bool {
        !self.failed && self.first.is_none() && self.progress.done()
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed {
            return self.fail("the backend's body failed");
        }
        if let Some(d) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        loop {
            match self.take() {
                Err(()) => return self.fail("malformed chunked body from the backend"),
                Ok(Some(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Ok(None) if self.progress.done() => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
            }
            let Some((stream, buf)) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            buf.clear();
            buf.reserve(idle::BUFFER);
            let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
            match Pin::new(stream).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    let limit = self.up.idle_timeout;
                    let idle = self
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if idle.as_mut().poll(cx).is_ready() {
                        return self.fail("the backend sent nothing for its idle timeout");
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => return self.fail("reading the backend's body failed"),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        if matches!(self.progress, Progress::UntilClose) {
                            self.progress = Progress::Done;
                            self.finish();
                            return Poll::Ready(None);
                        }
                        return self.fail("the backend closed mid-body");
                    }
                    // SAFETY: `poll_read` initialised the first `n` spare bytes.
                    unsafe { buf.set_len(n) };
                    if let Some(idle) = self.idle.as_mut() {
                        let at = tokio::time::Instant::now() + self.up.idle_timeout;
                        idle.as_mut().reset(at);
                    }
                }
            }
        }
    }

    /// Ends the body with an error for good; the connection is closed, not reused.
    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.failed = true;
        Poll::Ready(Some(Err(why.into())))
    }
}

impl Drop for Relayed {
    /// hyper may drop a body it knows has ended without polling it once more: the connection
    /// still goes back to the idle list.
    fn drop(&mut self) {
        if self.is_end_stream() {
            self.finish();
        }
    }
}
