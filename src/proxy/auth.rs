//! External authorization of a route's requests (`auth`): NGINX's `auth_request`, Traefik's
//! `forwardAuth`, Envoy's `ext_authz` over HTTP. Before a request goes to its upstream,
//! Switchyard asks the route's auth upstream about it with a `GET` of the configured path that
//! carries the client's headers (all, or those listed) and says what the request was:
//! `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host`, `X-Forwarded-Proto`,
//! `X-Forwarded-For` and the request's `X-Request-Id`, the names Authelia, oauth2-proxy and
//! authentik read.
//!
//! A 2xx answer allows the request: the answer's headers named in `response_headers` are put on
//! it, after removing any the client sent under those names, so identity headers reach the
//! backend only from the auth service. Any other answer goes to the client as it is (a 401 with
//! `WWW-Authenticate`, a 302 to a login page with its cookies), and the request goes no further.
//! An auth upstream that cannot answer (no backend, refused, timed out) gets the client
//! Switchyard's own 502/503/504: the request is never let through unasked (Envoy's
//! `failure_mode_allow = false`).
//!
//! The question is an ordinary request to an ordinary upstream: balancing, health checks,
//! breakers, retries, pooled connections and `timeouts.request` all apply to it.

use super::body::{ReqBody, RespBody};
use super::{headers, Trace, X_SWITCHYARD_ERROR};
use crate::upstream::balancer::PickCtx;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Largest body of an allowing answer read so its connection can be reused; past it the
/// connection is dropped instead. Allowing answers are usually empty.
const MAX_DRAIN: usize = 64 * 1024;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// Fields that tell an auth service what the request is or who sent it. They are Switchyard's
/// to say: the client's are dropped from the question (Authelia, for one, judges by
/// `X-Original-URL` first and by the leftmost `X-Forwarded-For`), and the request's own values
/// are set.
const STEERING: [HeaderName; 14] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-method"),
];

/// Questions by [`Outcome`]: allowed, denied, error.
pub static OUTCOMES: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// What the auth upstream said of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// It answered with something other than 2xx, which went to the client.
    Denied,
    /// It gave no answer: Switchyard's own error went to the client.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// A route's `auth`, compiled per snapshot.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The auth upstream's index in the snapshot; `None` only for a configuration validation
    /// would have refused, whose requests are then refused too (never let through unasked).
    pub upstream: Option<usize>,
    uri: http::Uri,
    /// `None`: every header the client sent.
    request_headers: Option<Vec<HeaderName>>,
    /// Also kept out of the request's trailers, which could otherwise carry them past.
    pub response_headers: Arc<[HeaderName]>,
    client_headers: Vec<HeaderName>,
}

/// The request being asked about, as the client sent it.
pub struct Question<'a> {
    pub parts: &'a http::request::Parts,
    pub host: Option<&'a HeaderValue>,
    /// The client as rate limits and the access log judge it (behind `trusted_proxies`, the
    /// address `X-Forwarded-For` names).
    pub client: std::net::IpAddr,
    pub https: bool,
    pub request_id: &'a HeaderValue,
}

/// The answer: headers to put on the request, or the response the client gets instead.
pub enum Verdict {
    Allow(Allowed),
    /// With the question's trace: which backend of the auth upstream answered, after how
    /// many tries, so the request's access-log line names who refused it.
    Deny(Response<RespBody>, Outcome, Box<Trace>),
}

/// What an allowing answer gives: header lines for the request, and for the client's response.
pub struct Allowed {
    request: Vec<(HeaderName, HeaderValue)>,
    pub client: Vec<(HeaderName, HeaderValue)>,
}

impl Auth {
    /// `upstream`: the auth upstream's index. Never fails: what validation would refuse (an
    /// unknown upstream, a bad path or name) compiles to an `Auth` that refuses every request
    /// or asks at `/`, so a route with `auth` is never served without it.
    pub fn compile(cfg: &crate::config::AuthConfig, upstream: Option<usize>) -> Auth {
        let names = |v: &[String]| -> Vec<HeaderName> {
            v.iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect()
        };
        Auth {
            upstream,
            uri: http::Uri::try_from(cfg.path.as_str())
                .unwrap_or_else(|_| http::Uri::from_static("/")),
            request_headers: cfg.request_headers.as_deref().map(names),
            response_headers: names(&cfg.response_headers).into(),
            client_headers: names(&cfg.client_headers),
        }
    }

    /// Asks `up` (the auth upstream) about `q`.
    pub async fn ask(&self, up: &Arc<Upstream>, ctx: &PickCtx, q: &Question<'_>) -> Verdict {
        let mut req = http::Request::new(());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.question_headers(up, q);
        let (parts, ()) = req.into_parts();
        let timeout = up.request_timeout;
        let mut trace = Trace::default();
        let resp =
            super::forward::forward(up, ctx, parts, ReqBody::Empty, timeout, &mut trace).await;
        let outcome = if resp.headers().contains_key(X_SWITCHYARD_ERROR)
            || resp.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            Outcome::Error
        } else if resp.status().is_success() {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        OUTCOMES[outcome as usize].fetch_add(1, Relaxed);
        if outcome != Outcome::Allowed {
            let r = denial(resp, q.parts.method == Method::HEAD).await;
            trace.upstream = Some(up.clone());
            return Verdict::Deny(r, outcome, Box::new(trace));
        }
        let allowed = Allowed {
            request: lines(resp.headers(), &self.response_headers),
            client: lines(resp.headers(), &self.client_headers),
        };
        drain(resp.into_body()).await;
        Verdict::Allow(allowed)
    }

    /// The question's headers: the client's (those listed), less what is not theirs to say,
    /// and what the request was.
    fn question_headers(&self, up: &Upstream, q: &Question<'_>) -> HeaderMap {
        let mut h = match &self.request_headers {
            None => q.parts.headers.clone(),
            Some(names) => {
                let mut h = HeaderMap::new();
                for (n, v) in lines(&q.parts.headers, names) {
                    h.append(n, v);
                }
                h
            }
        };
        // The question has no body, and the hop's own fields are not the client's to pass on.
        headers::strip_hop_by_hop(&mut h);
        for n in [header::CONTENT_LENGTH, header::EXPECT, header::TRAILER] {
            h.remove(n);
        }
        for n in &STEERING {
            h.remove(n);
        }
        headers::join_cookies(&mut h);
        // The client's host, as the routed request carries it (an HTTP/1.0 request without
        // one: the upstream's name, as there).
        let host = q
            .host
            .cloned()
            .or_else(|| HeaderValue::from_str(&up.name).ok());
        if let Some(host) = host {
            h.insert(header::HOST, host);
        }
        // The client alone (its X-Forwarded-For lines were dropped above), not a chain it could
        // have begun itself.
        let client = headers::client_ip(std::net::SocketAddr::new(q.client, 0));
        headers::add_forwarded(&mut h, &client, q.https, q.host);
        // An HTTP/2 WebSocket (extended CONNECT) reaches the backend as an HTTP/1.1 GET.
        let method = match q.parts.method {
            Method::CONNECT => Method::GET,
            ref m => m.clone(),
        };
        let method =
            HeaderValue::from_str(method.as_str()).unwrap_or(HeaderValue::from_static("GET"));
        h.insert(X_FORWARDED_METHOD, method.clone());
        h.insert(X_ORIGINAL_METHOD, method);
        let uri = q.parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        if let Ok(v) = HeaderValue::from_str(uri) {
            h.insert(X_FORWARDED_URI, v);
        }
        let scheme = if q.https { "https" } else { "http" };
        let host = q.host.and_then(|h| h.to_str().ok()).unwrap_or(&up.name);
        if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{uri}")) {
            h.insert(X_ORIGINAL_URL, v);
        }
        h.insert(headers::X_REQUEST_ID, q.request_id.clone());
        h
    }

    /// Puts an allowing answer's headers on the request, removing the client's lines of
    /// those names first.
    pub fn admit(&self, h: &mut HeaderMap, set: Vec<(HeaderName, HeaderValue)>) {
        for n in self.response_headers.iter() {
            h.remove(n);
        }
        for (n, v) in set {
            h.append(n, v);
        }
    }
}

impl Allowed {
    /// Splits off the lines for the request, leaving those for the client's response.
    pub fn take_request(&mut self) -> Vec<(HeaderName, HeaderValue)> {
        std::mem::take(&mut self.request)
    }
}

/// Every line of `h` under one of `names`.
fn lines(h: &HeaderMap, names: &[HeaderName]) -> Vec<(HeaderName, HeaderValue)> {
    names
        .iter()
        .flat_map(|n| h.get_all(n).iter().map(|v| (n.clone(), v.clone())))
        .collect()
}

/// Reads an answer's body to its end (at most [`MAX_DRAIN`]) so its connection goes back to
/// the pool.
async fn drain(mut body: RespBody) {
    let mut read = 0;
    while read <= MAX_DRAIN {
        match body.frame().await {
            Some(Ok(f)) => read += f.data_ref().map_or(0, Bytes::len),
            _ => break,
        }
    }
}

/// The auth upstream's refusal as the client gets it: its hop-by-hop fields dropped. A 101
/// (an auth service switching protocols on a plain GET) is no answer. To a HEAD the headers
/// go, not the body (the question was a GET), which is read here: hyper would drop it unread.
async fn denial(resp: Response<RespBody>, head: bool) -> Response<RespBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return super::error_response(crate::error::ProxyError::UpstreamReset);
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let body = if head {
        drain(body).await;
        RespBody::Full(None)
    } else {
        body
    };
    Response::from_parts(parts, body)
}

/// Removes from a request's trailers the fields an allowing answer sets: sent as trailers,
/// they would reach the backend past the check on its headers.
pub fn scrub_trailers(t: &mut HeaderMap, names: &[HeaderName]) {
    for n in names {
        t.remove(n);
    }
}
