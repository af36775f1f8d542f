//! The request path: route → pick → forward on a pooled connection → retry where safe → stream
//! the response back, recording the outcome for the balancer, breaker and passive health.
//!
//! [`handle`] is called by the listener for every request on every connection. It loads the
//! configuration snapshot once and uses that view to the end, so a reload never changes a request
//! half-way.

pub mod auth;
pub mod body;
pub mod compress;
pub mod connector;
pub mod cors;
mod forward;
pub mod grpc;
pub mod headers;
pub mod mirror;
pub mod normalize;
pub mod pool;
pub mod ratelimit;
pub mod real_ip;
pub mod relay;
pub mod respond;
pub mod rewrite;
pub mod router;
pub mod split;
pub mod tcp;
pub mod template;
pub mod tunnel;
pub mod upgrade;

use crate::error::ProxyError;
use crate::observe::request::Observer;
use crate::state::Shared;
use crate::upstream::balancer::{hash_bytes, PickCtx};
use crate::upstream::HashKey;
use body::{BodyIdle, BodyStats, ReqBody, RespBody};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// What the proxy learned while serving a request, for the access log.
#[derive(Default)]
pub struct Trace {
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
    /// Index of the last backend tried in `upstream.backends`.
    pub backend: Option<usize>,
    pub attempts: u32,
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub body: Option<Arc<BodyStats>>,
    pub bytes_in: u64,
    /// The server span and the exporter, when OTLP export is on.
    pub otel: Option<(
        crate::observe::otlp::TraceCtx,
        Option<Arc<crate::observe::otlp::Exporter>>,
    )>,
    /// A protocol upgrade the backend agreed to: its tunnel starts once the response is observed.
    pub upgrade: Option<upgrade::Agreed>,
    /// What the route's auth upstream said of the request, when it has one.
    pub auth: Option<auth::Outcome>,
}

/// What the listener knows about the client connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    /// `client`'s IP as a header value, for `X-Forwarded-For` (see [`headers::client_ip`]).
    pub client_ip: HeaderValue,
    pub https: bool,
    /// Largest request body accepted; `u64::MAX` for no limit.
    pub max_body: u64,
    /// How long a request body may go without a byte: the listener's `header_timeout`.
    pub body_timeout: Duration,
    /// Negotiated TLS version ("TLSv1.3"), when the connection is TLS.
    pub tls_version: Option<&'static str>,
    /// Verified client certificate subject (mTLS).
    pub tls_client: Option<String>,
    /// The listener's `trusted_proxies`, when it has any.
    pub trusted: Option<Arc<real_ip::CidrSet>>,
    /// `client` is one of them: its requests' `X-Forwarded-For` names the client.
    pub peer_trusted: bool,
    /// The listener refuses ambiguous path spellings ([`normalize`]).
    pub strict_paths: bool,
}

impl ConnInfo {
    /// What the listener knows of a connection from `peer` before any TLS.
    pub fn new(
        peer: SocketAddr,
        max_body: u64,
        trusted: Option<Arc<real_ip::CidrSet>>,
    ) -> ConnInfo {
        ConnInfo {
            client: peer,
            client_ip: headers::client_ip(peer),
            https: false,
            max_body,
            body_timeout: Duration::from_secs(30),
            tls_version: None,
            tls_client: None,
            peer_trusted: trusted.as_ref().is_some_and(|t| t.contains(peer.ip())),
            trusted,
            strict_paths: false,
        }
    }

    /// The peer is `peer` (a PROXY protocol header named it).
    pub fn set_peer(&mut self, peer: SocketAddr) {
        self.client = peer;
        self.client_ip = headers::client_ip(peer);
        self.peer_trusted = self.trusted.as_ref().is_some_and(|t| t.contains(peer.ip()));
    }

    /// A request's client: the peer, or from a trusted proxy the client its
    /// `X-Forwarded-For` lines (in order) name ([`real_ip`]).
    /// `xff` is called only then.
    pub fn client_of<'a, I>(&self, xff: impl FnOnce() -> I) -> IpAddr
    where
        I: DoubleEndedIterator<Item = &'a [u8]>,
    {
        match &self.trusted {
            Some(t) if self.peer_trusted => t.client(xff()).unwrap_or(self.client.ip()),
            _ => self.client.ip(),
        }
    }

    /// The access log's `client` and `peer` for a request from `client`: the peer's address
    /// alone when they are one, else the client's IP and the proxy's address.
    pub fn log_client(&self, client: IpAddr) -> (String, Option<String>) {
        if client == self.client.ip() {
            (self.client.to_string(), None)
        } else {
            (client.to_string(), Some(self.client.to_string()))
        }
    }
}

pub const X_SWITCHYARD_ERROR: &str = "x-switchyard-error";
/// Longest `Retry-After` (seconds) honoured from a backend: a day. Larger values are taken as a
/// day rather than overflowing the clock arithmetic.
pub const MAX_RETRY_AFTER_S: u64 = 86_400;

/// A response Switchyard makes itself: status, reason header, short text body.
pub fn error_response(e: ProxyError) -> Response<RespBody> {
    crate::observe::metrics::error_made(e);
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

/// A request refused before it is forwarded (malformed, no route, too large): the error
/// response, still tagged with the request's id (the client's, or a new one), so the client's
/// report of a 400 or 404 can be found in the access log.
fn refuse(e: ProxyError, h: &http::HeaderMap) -> Response<RespBody> {
    let mut r = error_response(e);
    let id = headers::client_request_id(h)
        .cloned()
        .unwrap_or_else(headers::fresh_request_id);
    r.headers_mut().insert(headers::X_REQUEST_ID, id);
    r
}

/// A request whose framing is refused (two Host lines, a bad Transfer-Encoding or
/// Content-Length, a bad target or Host): answered, and the connection closed after, since
/// where its body ends, and so where the next request begins, cannot be trusted.
fn refuse_framing(parts: &http::request::Parts) -> Response<RespBody> {
    let mut r = refuse(ProxyError::BadRequest, &parts.headers);
    // HTTP/2 frames each stream itself, and has no Connection header.
    if parts.version < Version::HTTP_2 {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Handles one request from a client, and logs it when the access log is on.
pub async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let mut trace = Trace::default();
    let otlp = shared.otlp.get().cloned();
    if shared.access_log.is_none() && otlp.is_none() {
        let mut resp = serve(shared, conn, req, &mut trace).await;
        crate::observe::metrics::downstream_response(resp.status().as_u16());
        if let Some(agreed) = trace.upgrade.take() {
            upgrade::splice(agreed, &mut resp);
        }
        return resp;
    }
    let observer = Observer::begin(shared.access_log.clone(), otlp, conn, &req);
    trace.otel = observer
        .trace_ctx()
        .map(|c| (c, shared.otlp.get().cloned()));
    let mut resp = serve(shared, conn, req, &mut trace).await;
    crate::observe::metrics::downstream_response(resp.status().as_u16());
    let agreed = trace.upgrade.take();
    observer.attach(&mut resp, trace);
    // After `attach`, so the tunnel holds the observer and its line is written when it closes,
    // with the bytes both ways and the tunnel's whole duration.
    if let Some(agreed) = agreed {
        upgrade::splice(agreed, &mut resp);
    }
    resp
}

/// Serves one request: checks, route, forward, response headers.
async fn serve(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Incoming>,
    trace: &mut Trace,
) -> Response<RespBody> {
    let snap = shared.snapshot.load_full();
    let mut req = req;
    let upgrade = upgrade::requested(&req);
    let client_upgrade = upgrade.clone().map(|u| u.on(&mut req));
    let (mut parts, incoming) = req.into_parts();

    // Framing and syntax problems hyper does not already reject. Two Host lines (RFC 9112
    // §3.2) would let the router and the origin each act on a different one.
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let (first_host, second_host) = (hosts.next(), hosts.next());
    if second_host.is_some()
        || (parts.version == Version::HTTP_11 && first_host.is_none())
        // A reverse proxy is no tunnel endpoint: CONNECT is refused here, as NGINX does (an
        // HTTP/2 extended CONNECT is a WebSocket upgrade, taken above).
        || (parts.method == Method::CONNECT && !(parts.version == Version::HTTP_2 && upgrade.is_some()))
    {
        return refuse_framing(&parts);
    }
    // One transfer coding, chunked, applied once (RFC 9112 §6.1): `chunked, chunked` or an
    // `identity` line before `chunked` is refused, as NGINX and HAProxy do, rather than read one
    // way here and maybe another by a proxy in front.
    if !one_chunked_coding(&parts.headers) {
        return refuse_framing(&parts);
    }
    let declared_len = match parts
        .headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()))
    {
        Some(None) => return refuse_framing(&parts),
        Some(Some(n)) => Some(n),
        None => None,
    };
    if declared_len.is_some_and(|n| n > conn.max_body) {
        return refuse(ProxyError::BodyTooLarge, &parts.headers);
    }
    // The request-target's authority (absolute-form, HTTP/2 `:authority`) wins over Host, which
    // is then replaced by it (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    // Userinfo in it is refused (RFC 9110 §4.2.4), and so is a Host that is no host name: the
    // router and the backend could otherwise each read a different host out of it.
    if parts
        .uri
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return refuse_framing(&parts);
    }
    let host_value = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    if host_value
        .as_ref()
        .is_some_and(|h| !headers::is_host(h.as_bytes()))
    {
        return refuse_framing(&parts);
    }
    let host = host_value
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    // Routed, and sent upstream, in the one form the backend will act on ([`normalize`]);
    // `${request_uri}` keeps the client's spelling.
    let mut client_uri = None;
    if normalize::needed(parts.uri.path().as_bytes(), conn.strict_paths) {
        let Some(uri) = normalized_uri(&parts.uri, conn.strict_paths) else {
            return refuse(ProxyError::BadRequest, &parts.headers);
        };
        client_uri = Some(std::mem::replace(&mut parts.uri, uri));
    }
    let Some(matched) = snap.router.route(host, parts.uri.path(), &parts) else {
        return refuse(ProxyError::NoRoute, &parts.headers);
    };
    // The route's CORS: a preflight is answered at once (before ACL, rate limit and auth, as
    // Envoy's CORS filter comes first); any other request's step goes to its response,
    // whichever answers it.
    let mut cors = None;
    if let Some(c) = matched.actions.and_then(|a| a.cors.as_ref()) {
        match c.step(&parts.method, &parts.headers) {
            Err(r) => {
                let mut r = *r;
                let id = headers::client_request_id(&parts.headers)
                    .cloned()
                    .unwrap_or_else(headers::fresh_request_id);
                r.headers_mut().insert(headers::X_REQUEST_ID, id);
                if let Some(a) = matched.actions {
                    a.response.apply(r.headers_mut(), None);
                }
                return r;
            }
            Ok(step) => cors = Some((c, step)),
        }
    }
    // What every answer to the request gets last: its CORS grant, then the route's edits.
    let finish = |r: &mut Response<RespBody>| {
        if let Some((c, step)) = &cors {
            c.decorate(r.headers_mut(), step);
        }
        if let Some(a) = matched.actions {
            a.response.apply(r.headers_mut(), None);
        }
    };
    let client = conn.client_of(|| forwarded_for(&parts.headers));
    if let Some(a) = matched.actions {
        if a.acl.as_ref().is_some_and(|acl| !acl.admits(client)) {
            let mut r = refuse(ProxyError::ClientDenied, &parts.headers);
            finish(&mut r);
            return r;
        }
    }
    if let Some(limiter) = matched.actions.and_then(|a| a.limiter.as_ref()) {
        if let Err(wait) = limiter.check(client, std::time::Instant::now()) {
            let mut r = refuse(ProxyError::RateLimited, &parts.headers);
            // Whole seconds, rounded up (RFC 9110 §10.2.3).
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            // The route's response edits apply to Switchyard's own answers too (as documented).
            finish(&mut r);
            return r;
        }
    }
    // What an allowing answer puts on the request: set after the hop-by-hop strip below, so a
    // client's `Connection` naming one of them cannot remove it again.
    let mut admitted = None;
    if let Some(a) = matched.actions.and_then(|a| a.auth.as_ref()) {
        let Some(up) = a.upstream.and_then(|i| snap.upstreams.get(i)) else {
            let mut r = refuse(ProxyError::NoBackend, &parts.headers);
            finish(&mut r);
            return r;
        };
        let request_id = headers::ensure_request_id(&mut parts.headers);
        let q = auth::Question {
            parts: &parts,
            host: host_value.as_ref(),
            client,
            https: conn.https,
            request_id: &request_id,
        };
        match a.ask(up, &pick_ctx(up, &parts, client), &q).await {
            auth::Verdict::Allow(allowed) => {
                trace.auth = Some(auth::Outcome::Allowed);
                admitted = Some((a, allowed));
            }
            auth::Verdict::Deny(mut r, outcome, asked) => {
                trace.auth = Some(outcome);
                // Logged as the auth upstream's answer: who refused, or who failed to answer.
                trace.upstream = asked.upstream;
                trace.backend = asked.backend;
                trace.attempts = asked.attempts;
                trace.connect = asked.connect;
                trace.first_byte = asked.first_byte;
                // The client's body is not forwarded: hyper's server reads past what is left
                // of it before the connection's next request, or closes the connection
                // (tests/it/auth.rs sends a pipelined request after one).
                let mut id = request_id;
                id.set_sensitive(true);
                r.headers_mut().insert(headers::X_REQUEST_ID, id);
                finish(&mut r);
                return r;
            }
        }
    }
    if let Some(own) = matched.respond() {
        let id = headers::client_request_id(&parts.headers)
            .cloned()
            .unwrap_or_else(headers::fresh_request_id);
        // The body, if any, is read and dropped first (NGINX's `return` discards it too), so the
        // connection can carry the next request; one too long or too slow closes it instead.
        let drained = incoming.is_end_stream() || {
            let body = ReqBody::Stream {
                inner: incoming,
                seen: 0,
                limit: respond::MAX_DISCARD,
                stats: Arc::default(),
                idle: BodyIdle::new(conn.body_timeout),
                scrub: None,
            };
            declared_len.is_none_or(|n| n <= respond::MAX_DISCARD) && body.collect().await.is_ok()
        };
        let vars = vars_of(
            conn,
            client,
            host_value.as_ref(),
            (&parts.method, client_uri.as_ref().unwrap_or(&parts.uri)),
            &id,
        );
        let mut r = own.response(&vars, parts.method == Method::HEAD);
        if !drained && parts.version < Version::HTTP_2 {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r.headers_mut().insert(headers::X_REQUEST_ID, id);
        finish(&mut r);
        return r;
    }
    let Some(up_index) = matched.upstream(|k| hash_key(k, &parts, client)) else {
        let mut r = refuse(ProxyError::NoRoute, &parts.headers);
        finish(&mut r);
        return r;
    };
    let upstream = snap.upstreams[up_index].clone();
    trace.upstream = Some(upstream.clone());
    // Upgrades are carried only to HTTP/1.1 backends. Sent to an h2/h2c one, an HTTP/1.1
    // Upgrade would go out as a plain GET, and an extended CONNECT as a GET with `:protocol`,
    // which the backend answers by closing the connection every other request shares.
    if upgrade.is_some() && upstream.protocol != crate::config::Protocol::Http1 {
        let mut r = refuse(ProxyError::UpgradeUnsupported, &parts.headers);
        finish(&mut r);
        return r;
    }

    let ctx = pick_ctx(&upstream, &parts, client);
    // A copy for the route's mirror, if this request is one of its share (never an upgrade,
    // whose tunnel has one other end).
    let mirror = matched
        .actions
        .and_then(|a| a.mirror.as_ref())
        .filter(|m| client_upgrade.is_none() && m.draw())
        .map(|m| {
            let shadow = snap.upstreams[m.upstream].clone();
            let ctx = pick_ctx(&shadow, &parts, client);
            (m, shadow, ctx)
        });

    // Whether the response may be compressed: decided by the request, applied to the response.
    let compress = matched.actions.and_then(|a| a.compress.as_ref()).map(|c| {
        let head = parts.method == Method::HEAD;
        (c, compress::accepts_gzip(&parts.headers), head)
    });

    // `TE: trailers` is hop-by-hop, but whether the client takes trailers decides the path.
    let wants_trailers = parts.headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    // The request as it goes upstream: origin-form URI, HTTP/1.1, proxy headers.
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some((a, allowed)) = admitted.as_mut() {
        a.admit(&mut parts.headers, allowed.take_request());
    }
    if wants_trailers {
        // Passed on (as Envoy does): many servers send trailers only to a client that says it
        // takes them, and this path hands them on to this one.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // HTTP/2 may split `cookie` into several fields (RFC 9113 §8.2.3), HTTP/1.1 clients send
    // one: towards the backend (and a mirror) it is one line, joined by "; ".
    headers::join_cookies(&mut parts.headers);
    if let Some(proto) = &upgrade {
        upgrade::restore_headers(&mut parts, proto);
    }
    // An HTTP/1.0 request may come without any host; HTTP/1.1 upstream needs one, and gets the
    // upstream's name, as NGINX sends its `$proxy_host`.
    let upstream_host = host_value
        .clone()
        .or_else(|| HeaderValue::from_str(&upstream.name).ok());
    if let Some(h) = upstream_host {
        parts.headers.insert(header::HOST, h);
    }
    headers::add_forwarded(
        &mut parts.headers,
        &conn.client_ip,
        conn.https,
        host_value.as_ref(),
    );
    let request_id = headers::ensure_request_id(&mut parts.headers);
    // Absolute-form (HTTP/2 `:authority`, proxies) becomes origin-form; most HTTP/1.1 requests
    // already are, and keep their parsed URI.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        if let Some(pq) = parts.uri.path_and_query() {
            if let Ok(uri) = http::Uri::try_from(pq.as_str()) {
                parts.uri = uri;
            }
        }
    }
    if let Some(a) = matched.actions {
        let req = (&parts.method, client_uri.as_ref().unwrap_or(&parts.uri));
        let vars = vars_of(conn, client, host_value.as_ref(), req, &request_id);
        a.request.apply(&mut parts.headers, Some(&vars));
        let rewritten = parts
            .uri
            .path_and_query()
            .and_then(|pq| a.rewrite(pq.as_str(), matched.prefix_len))
            .and_then(|t| http::Uri::try_from(t).ok());
        if let Some(uri) = rewritten {
            parts.uri = uri;
        }
    }
    let client_version = parts.version;
    parts.version = Version::HTTP_11;

    let keep = (mirror.is_some() || (upstream.retry.attempts > 1 && is_idempotent(&parts.method)))
        && declared_len.is_some_and(|n| n <= upstream.retry.max_replay_body);
    let body = if incoming.is_end_stream() && declared_len.unwrap_or(0) == 0 {
        ReqBody::Empty
    } else {
        let stats = Arc::new(BodyStats::default());
        let stream = ReqBody::Stream {
            inner: incoming,
            seen: 0,
            limit: conn.max_body,
            stats: stats.clone(),
            idle: BodyIdle::new(conn.body_timeout),
            scrub: matched
                .actions
                .and_then(|a| a.auth.as_ref())
                .filter(|a| !a.response_headers.is_empty())
                .map(|a| a.response_headers.clone()),
        };
        if keep {
            // Small enough to keep: read it whole so another backend (or the mirror) can get it.
            match stream.collect().await {
                Ok(c) => {
                    let b = c.to_bytes();
                    trace.bytes_in = b.len() as u64;
                    ReqBody::Replay(Some(b))
                }
                Err(_) => {
                    let e = match stats.failed.load(std::sync::atomic::Ordering::Relaxed) {
                        body::CLIENT_BODY_STALLED => ProxyError::ClientTimeout,
                        _ => ProxyError::BadRequestBody,
                    };
                    let mut r = refuse(e, &parts.headers);
                    finish(&mut r);
                    return r;
                }
            }
        } else {
            trace.body = Some(stats);
            stream
        }
    };

    // A body of unknown length goes on chunked. hyper's client sends one on its own for most
    // methods, but for GET and HEAD only if told: the body of a chunked GET would be dropped.
    if declared_len.is_none()
        && matches!(body, ReqBody::Stream { .. })
        && upstream.protocol == crate::config::Protocol::Http1
        && client_upgrade.is_none()
    {
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }

    if let Some((m, shadow, ctx)) = mirror {
        match &body {
            ReqBody::Empty => m.send(shadow, ctx, &parts, None, &upstream.name),
            ReqBody::Replay(b) => m.send(shadow, ctx, &parts, b.clone(), &upstream.name),
            ReqBody::Stream { .. } => {
                crate::observe::metrics::mirror(mirror::Outcome::Skipped);
            }
        }
    }

    // Requests that keep hyper's client: upgrades, a client asking for trailers (this path
    // drops them), OTLP spans per attempt.
    let direct = client_upgrade.is_none()
        && !wants_trailers
        && trace.otel.is_none()
        && relay::from_hyper::eligible(&upstream, &parts, &body);
    let timeout = rewrite::RouteActions::timeout_on(matched.actions.map(|a| &**a), &upstream);
    let mut resp = if direct {
        relay::from_hyper::forward(&upstream, &ctx, &parts, body, &request_id, timeout, trace)
            .await
            .unwrap_or_else(error_response)
    } else {
        forward::forward(&upstream, &ctx, parts, body, timeout, trace).await
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A switch only to what the client asked for: any other 101 (none asked for, or another
        // protocol) would open a tunnel that no route, ACL or limit sees into.
        match (client_upgrade, &upgrade) {
            (Some(client_up), Some(asked)) if asked.agreed_by(resp.headers()) => {
                trace.upgrade = Some(upgrade::agree(client_up, &mut resp, upstream.idle_timeout));
            }
            _ => {
                tracing::warn!(upstream = %upstream.name, "the backend switched protocols unasked; answered 502");
                resp = error_response(ProxyError::UpstreamReset);
            }
        }
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        headers::strip_hop_by_hop(resp.headers_mut());
    }
    if let Some((_, allowed)) = admitted {
        // Added to what the backend sent (a refreshed session cookie beside the app's own);
        // the route's own edits, next, have the last word.
        for (n, v) in allowed.client {
            resp.headers_mut().append(n, v);
        }
    }
    finish(&mut resp);
    if let Some((c, accepted, head)) = compress {
        // Not a tunnel's answer: an HTTP/2 WebSocket's 101 has become a 200 by now.
        if trace.upgrade.is_none() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp = c.apply(accepted, head, resp);
        }
    }
    if client_version == Version::HTTP_2 {
        resp.headers_mut().remove(header::CONNECTION);
    }
    let id = resp
        .headers_mut()
        .entry(headers::X_REQUEST_ID)
        .or_insert(request_id);
    // Unique per response, so HPACK indexing it only churns the client's dynamic table (and
    // the encoder's search of it was 2.5 % of an h2c request's CPU): send it never-indexed.
    // HTTP/1 ignores the flag.
    id.set_sensitive(true);
    resp
}

/// `uri` with its path normalized ([`normalize`]); None when the path is refused (it climbs
/// above the root, or is ambiguous).
fn normalized_uri(uri: &http::Uri, strict: bool) -> Option<http::Uri> {
    let path = normalize::normalize(uri.path(), strict)?;
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(pq).ok()?);
    http::Uri::from_parts(parts).ok()
}

/// What a request's variables stand for ([`template`]).
fn vars_of<'a>(
    conn: &'a ConnInfo,
    client: IpAddr,
    host: Option<&'a HeaderValue>,
    (method, uri): (&'a Method, &'a http::Uri),
    request_id: &'a HeaderValue,
) -> template::Vars<'a> {
    template::Vars {
        conn,
        client,
        host: host.map_or(&b""[..], HeaderValue::as_bytes),
        method: method.as_str().as_bytes(),
        request_uri: uri
            .path_and_query()
            .map_or(&b"/"[..], |pq| pq.as_str().as_bytes()),
        request_id: request_id.as_bytes(),
    }
}

/// Whether a request's `Transfer-Encoding` lines, if any, name exactly one coding: chunked.
fn one_chunked_coding(h: &http::HeaderMap) -> bool {
    let mut codings = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty());
    match codings.next() {
        None => true,
        Some(first) => first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// What a pick from `up` needs of the request: its key's hash for `consistent_hash`, the backend
/// its sticky cookie names.
fn pick_ctx(
    up: &crate::upstream::Upstream,
    parts: &http::request::Parts,
    client: IpAddr,
) -> PickCtx {
    let hash = match up.algorithm {
        crate::config::Algorithm::ConsistentHash => hash_key(&up.hash_key, parts, client),
        _ => 0,
    };
    let sticky = up.sticky.as_ref().and_then(|s| {
        s.backend_for(
            parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
        )
    });
    PickCtx { hash, sticky }
}

impl router::RequestView for http::request::Parts {
    fn method(&self) -> &[u8] {
        self.method.as_str().as_bytes()
    }
    fn has_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        let mut lines = self.headers.get_all(name).iter();
        match value {
            None => lines.next().is_some(),
            Some(v) => lines.any(|l| l.as_bytes() == v),
        }
    }
}

/// A request's `X-Forwarded-For` lines, in order.
pub(crate) fn forwarded_for(h: &http::HeaderMap) -> impl DoubleEndedIterator<Item = &[u8]> {
    h.get_all(headers::X_FORWARDED_FOR)
        .into_iter()
        .map(HeaderValue::as_bytes)
}

fn hash_key(key: &HashKey, parts: &http::request::Parts, client: IpAddr) -> u64 {
    let bytes: Option<Vec<u8>> = match key {
        HashKey::ClientIp => Some(client.to_string().into_bytes()),
        HashKey::Path => Some(parts.uri.path().as_bytes().to_vec()),
        HashKey::Header(h) => parts.headers.get(h).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => cookie_value(
            parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
            name,
        )
        .map(<[u8]>::to_vec),
    };
    // Without a key the request is not tied to any backend; spread it at random (as Envoy).
    bytes.map_or_else(|| fastrand::u64(..), |b| hash_bytes(&b))
}

/// The value of cookie `name` in a request's `Cookie` header lines.
pub fn cookie_value<'a>(lines: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<&'a [u8]> {
    lines.flat_map(|v| v.split(|b| *b == b';')).find_map(|kv| {
        let kv = kv.trim_ascii();
        let eq = kv.iter().position(|b| *b == b'=')?;
        (&kv[..eq] == name.as_bytes()).then(|| &kv[eq + 1..])
    })
}

/// A body for a plain response made by the admin or demo servers.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(body));
    *r.status_mut() = status;
    r
}
