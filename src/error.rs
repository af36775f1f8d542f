//! Errors the proxy makes itself, each with its status, its `x-switchyard-error` reason, and
//! whether the failed attempt may be retried on another backend.

use http::StatusCode;

/// Why Switchyard answered instead of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No route matched the request's host and path.
    NoRoute,
    /// The upstream has no backend that may take traffic.
    NoBackend,
    /// `max_connections` / `max_pending` reached.
    Overloaded,
    /// TCP connect refused, unreachable or timed out: the request never reached a backend.
    ConnectFailed,
    ConnectTimeout,
    /// The backend closed or reset the connection during the exchange.
    UpstreamReset,
    /// No response head within the request (or per-try) timeout.
    UpstreamTimeout,
    /// The client's own request body was malformed or cut short.
    BadRequestBody,
    /// The request body exceeded the listener's `max_request_body`.
    BodyTooLarge,
    /// Malformed request (framing, headers) rejected before forwarding.
    BadRequest,
    /// A protocol upgrade (WebSocket) to an `h2`/`h2c` upstream: those backends are reached over
    /// HTTP/2, where an HTTP/1.1 Upgrade does not exist and an extended CONNECT is not bridged,
    /// so the request is refused before it can reach (and break) the shared connection.
    UpgradeUnsupported,
    /// Plain HTTP on a TLS listener's port (without `redirect_https`), answered in plain HTTP
    /// as NGINX does, instead of a TLS alert the client cannot show.
    PlainHttpOnTls,
    /// The route's `rate_limit` is used up for this client (or the route).
    RateLimited,
    /// A client that began a request sent neither its whole head nor its body in time.
    ClientTimeout,
    /// The route's `ip_allow`/`ip_deny` refuses this client.
    ClientDenied,
    /// The request head is over the 64 KiB limit.
    HeadTooLarge,
    /// The request line alone is over the head limit (NGINX's and HAProxy's 414).
    UriTooLong,
    /// A CORS preflight from an origin the route's `cors` does not allow.
    CorsDenied,
}

impl ProxyError {
    /// Every variant, for metrics and lookups.
    pub const ALL: [ProxyError; 18] = [
        ProxyError::NoRoute,
        ProxyError::NoBackend,
        ProxyError::Overloaded,
        ProxyError::ConnectFailed,
        ProxyError::ConnectTimeout,
        ProxyError::UpstreamReset,
        ProxyError::UpstreamTimeout,
        ProxyError::BadRequestBody,
        ProxyError::BodyTooLarge,
        ProxyError::BadRequest,
        ProxyError::UpgradeUnsupported,
        ProxyError::PlainHttpOnTls,
        ProxyError::RateLimited,
        ProxyError::ClientTimeout,
        ProxyError::ClientDenied,
        ProxyError::HeadTooLarge,
        ProxyError::UriTooLong,
        ProxyError::CorsDenied,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed | ProxyError::ConnectTimeout | ProxyError::UpstreamReset => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequestBody | ProxyError::BadRequest | ProxyError::PlainHttpOnTls => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpgradeUnsupported => StatusCode::NOT_IMPLEMENTED,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientDenied | ProxyError::CorsDenied => StatusCode::FORBIDDEN,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }

    /// The `x-switchyard-error` header value.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoBackend => "no_available_backend",
            ProxyError::Overloaded => "upstream_overloaded",
            ProxyError::ConnectFailed => "connect_failed",
            ProxyError::ConnectTimeout => "connect_timeout",
            ProxyError::UpstreamReset => "upstream_reset",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::BadRequestBody => "bad_request_body",
            ProxyError::BodyTooLarge => "request_body_too_large",
            ProxyError::BadRequest => "bad_request",
            ProxyError::UpgradeUnsupported => "upgrade_unsupported",
            ProxyError::PlainHttpOnTls => "plain_http_to_https_port",
            ProxyError::RateLimited => "rate_limited",
            ProxyError::ClientTimeout => "client_timeout",
            ProxyError::ClientDenied => "client_denied",
            ProxyError::HeadTooLarge => "request_header_too_large",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::CorsDenied => "cors_origin_denied",
        }
    }

    /// The request certainly never reached a backend, so any method may be retried.
    pub fn never_sent(self) -> bool {
        matches!(self, ProxyError::ConnectFailed | ProxyError::ConnectTimeout)
    }

    /// A failure of the backend (counts against its breaker and passive health).
    pub fn is_backend_failure(self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed
                | ProxyError::ConnectTimeout
                | ProxyError::UpstreamReset
                | ProxyError::UpstreamTimeout
        )
    }
}

/// The `&'static` reason for an `x-switchyard-error` value, for the access log.
pub fn reason_from_header(v: &[u8]) -> Option<&'static str> {
    ProxyError::ALL
        .iter()
        .map(|e| e.reason())
        .find(|r| r.as_bytes() == v)
}
