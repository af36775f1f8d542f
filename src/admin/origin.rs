//! Guards the admin API against web pages, which an operator's browser would otherwise let act
//! on it: a cross-site page can send a "simple" POST (`text/plain`, no preflight) to
//! `127.0.0.1:5000`, and a DNS-rebinding page can even read the answers under its own name.
//!
//! Both apply only with no token configured (the loopback default): with one, a page cannot
//! send it, and a reverse proxy in front of the UI may rewrite `Host` freely.
//!
//! - A request that changes something (any method but GET/HEAD/OPTIONS) carrying an `Origin`
//!   other than the address it was sent to, or `Sec-Fetch-Site: cross-site`, is refused (403).
//!   The UI is served from the API's own origin, and curl and scripts send neither header.
//! - The `Host` must be an IP address or `localhost`: a page's own domain re-pointed at
//!   127.0.0.1 is refused (403), as Jupyter's server does.

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Called by [`super::auth::require_token`] when no token is configured.
pub async fn tokenless(req: Request, next: Next) -> Response {
    let h = req.headers();
    let refuse = |why: String| {
        (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"error": why})),
        )
            .into_response()
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && cross_site(h) {
        return refuse(
            "cross-origin request refused: the admin API acts only on requests from its own origin"
                .into(),
        );
    }
    if let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) {
        if !local_name(host) {
            return refuse(format!(
                "Host {host:?} is not an address of this machine: use 127.0.0.1 or localhost, or configure admin.token"
            ));
        }
    }
    next.run(req).await
}

/// Whether a browser says the request comes from another site.
fn cross_site(h: &HeaderMap) -> bool {
    if h.get("sec-fetch-site").is_some_and(|v| v == "cross-site") {
        return true;
    }
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // `Origin: null` (sandboxed frames, file: pages) is never this API.
    let from = origin.split_once("://").map_or("", |(_, a)| a);
    let to = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    !from.eq_ignore_ascii_case(to)
}

/// An IP literal (with or without a port) or `localhost`.
fn local_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_this_machine_and_origins_of_others() {
        for ok in [
            "127.0.0.1:5000",
            "localhost:5000",
            "LOCALHOST",
            "[::1]:5000",
            "10.0.0.7",
        ] {
            assert!(local_name(ok), "{ok}");
        }
        for bad in [
            "evil.example:5000",
            "127.0.0.1.evil.example",
            "[nope]:1",
            "localhost.evil",
        ] {
            assert!(!local_name(bad), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:5000".parse().unwrap());
        assert!(!cross_site(&h), "no Origin: curl, scripts");
        h.insert(header::ORIGIN, "http://127.0.0.1:5000".parse().unwrap());
        assert!(!cross_site(&h), "the UI itself");
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(cross_site(&h));
    }
}
