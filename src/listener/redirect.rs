//! HTTP → HTTPS redirects (`redirect_https`): every request gets `308 Permanent Redirect` to the
//! same host and path on https. 308 rather than 301 so clients keep the method and body, as
//! Caddy does.
//!
//! Used for a plain listener whose `tls` section has `redirect_https = true` and no certificates,
//! and for plain HTTP that arrives on a TLS listener's port with `redirect_https` set (NGINX's
//! "plain HTTP request was sent to HTTPS port" case, answered usefully).

use crate::proxy::body::RespBody;
use http::{header, HeaderValue, Request, Response, StatusCode};

/// The redirect for `req`; `https_port` is left out of the URL when it is 443.
pub fn respond<B>(req: &Request<B>, https_port: u16) -> Response<RespBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(strip_port);
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return crate::proxy::text(StatusCode::BAD_REQUEST, "400 missing Host header\n");
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match https_port {
        443 => format!("https://{host}{path}"),
        p => format!("https://{host}:{p}{path}"),
    };
    let Ok(location) = HeaderValue::try_from(location) else {
        return crate::proxy::text(StatusCode::BAD_REQUEST, "400 bad Host header\n");
    };
    let mut r = crate::proxy::text(StatusCode::PERMANENT_REDIRECT, "308 use https\n");
    r.headers_mut().insert(header::LOCATION, location);
    r
}

/// `example.com:80` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_host_and_path_and_names_the_port() {
        let req = Request::get("/a?b=1")
            .header("host", "example.com:8080")
            .body(())
            .unwrap_or_default();
        let r = respond(&req, 8443);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()["location"], "https://example.com:8443/a?b=1");
        let r = respond(&req, 443);
        assert_eq!(r.headers()["location"], "https://example.com/a?b=1");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
