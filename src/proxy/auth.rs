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

pub const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

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
    /// The auth upstream's index in the snapshot.
    pub upstream: usize,
    uri: http::Uri,
    /// `None`: every header the client sent.
    request_headers: Option<Vec<HeaderName>>,
    response_headers: Vec<HeaderName>,
}

/// The request being asked about, as the client sent it.
pub struct Question<'a> {
    pub parts: &'a http::request::Parts,
    pub host: Option<&'a HeaderValue>,
    pub client_ip: &'a HeaderValue,
    pub https: bool,
    pub request_id: &'a HeaderValue,
}

/// The answer: headers to put on the request, or the response the client gets instead.
pub enum Verdict {
    Allow(Vec<(HeaderName, HeaderValue)>),
    Deny(Response<RespBody>, Outcome),
}

impl Auth {
    /// `upstream`: the auth upstream's index. None if `cfg` does not compile (validation
    /// refuses such a configuration before it gets here).
    pub fn compile(cfg: &crate::config::AuthConfig, upstream: usize) -> Option<Auth> {
        let names = |v: &[String]| -> Option<Vec<HeaderName>> {
            v.iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect()
        };
        Some(Auth {
            upstream,
            uri: http::Uri::try_from(cfg.path.as_str()).ok()?,
            request_headers: match &cfg.request_headers {
                Some(v) => Some(names(v)?),
                None => None,
            },
            response_headers: names(&cfg.response_headers)?,
        })
    }

    /// Asks `up` (the auth upstream) about `q`.
    pub async fn ask(&self, up: &Arc<Upstream>, ctx: &PickCtx, q: &Question<'_>) -> Verdict {
        let mut req = http::Request::new(());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        match &self.request_headers {
            None => *h = q.parts.headers.clone(),
            Some(names) => {
                for n in names {
                    for v in q.parts.headers.get_all(n) {
                        h.append(n.clone(), v.clone());
                    }
                }
            }
        }
        // The question has no body, and the hop's own fields are not the client's to pass on.
        headers::strip_hop_by_hop(h);
        for n in [header::CONTENT_LENGTH, header::EXPECT, header::TRAILER] {
            h.remove(n);
        }
        headers::join_cookies(h);
        // The client's host, as the routed request carries it (an HTTP/1.0 request without
        // one: the upstream's name, as there).
        let host = q
            .host
            .cloned()
            .or_else(|| HeaderValue::from_str(&up.name).ok());
        if let Some(host) = host {
            h.insert(header::HOST, host);
        }
        headers::add_forwarded(h, q.client_ip, q.https, q.host);
        h.insert(X_FORWARDED_METHOD, method_value(&q.parts.method));
        let uri = q.parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        if let Ok(v) = HeaderValue::from_str(uri) {
            h.insert(X_FORWARDED_URI, v);
        }
        h.insert(headers::X_REQUEST_ID, q.request_id.clone());
        let (parts, ()) = req.into_parts();
        let timeout = up.request_timeout;
        let resp = super::forward::forward(
            up,
            ctx,
            parts,
            ReqBody::Empty,
            timeout,
            &mut Trace::default(),
        )
        .await;
        let outcome = if resp.headers().contains_key(X_SWITCHYARD_ERROR) {
            Outcome::Error
        } else if resp.status().is_success() {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        OUTCOMES[outcome as usize].fetch_add(1, Relaxed);
        if outcome != Outcome::Allowed {
            return Verdict::Deny(denial(resp), outcome);
        }
        let mut set = Vec::new();
        for n in &self.response_headers {
            for v in resp.headers().get_all(n) {
                set.push((n.clone(), v.clone()));
            }
        }
        // Read to its end so the connection goes back to the pool.
        let mut body = resp.into_body();
        let mut read = 0;
        while read <= MAX_DRAIN {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
        Verdict::Allow(set)
    }

    /// Puts an allowing answer's headers on the request, removing the client's lines of
    /// those names first.
    pub fn admit(&self, h: &mut HeaderMap, set: Vec<(HeaderName, HeaderValue)>) {
        for n in &self.response_headers {
            h.remove(n);
        }
        for (n, v) in set {
            h.append(n, v);
        }
    }
}

/// The auth upstream's refusal as the client gets it: its hop-by-hop fields dropped. A 101
/// (an auth service switching protocols on a plain GET) is no answer.
fn denial(mut resp: Response<RespBody>) -> Response<RespBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return super::error_response(crate::error::ProxyError::UpstreamReset);
    }
    headers::strip_hop_by_hop(resp.headers_mut());
    resp
}

fn method_value(m: &Method) -> HeaderValue {
    HeaderValue::from_str(m.as_str()).unwrap_or(HeaderValue::from_static("GET"))
}
