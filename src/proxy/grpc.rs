//! gRPC terms for the errors Switchyard makes itself. A gRPC client reads `grpc-status`, not the
//! HTTP status, so as Envoy does, a local error on a gRPC request is answered `200` with a
//! trailers-only response: `grpc-status` (UNAVAILABLE for 502/503, DEADLINE_EXCEEDED for 504, ...)
//! and `grpc-message`. The `x-switchyard-error` header stays, so logs and curl still see why.
//!
//! Called by the listener on every response to a request whose content-type is gRPC; responses
//! that came from a backend (no `x-switchyard-error`) pass untouched, trailers and all.

use super::body::RespBody;
use super::X_SWITCHYARD_ERROR;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

/// gRPC status codes used here (grpc/doc/statuscodes.md).
pub const UNKNOWN: u32 = 2;
pub const DEADLINE_EXCEEDED: u32 = 4;
pub const PERMISSION_DENIED: u32 = 7;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;
pub const UNAVAILABLE: u32 = 14;

/// Whether a request is a gRPC call (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an HTTP status Switchyard chose, following gRPC's own HTTP-to-gRPC table
/// (doc/http-grpc-status-mapping.md) except 504, which is a deadline here, as in Envoy.
pub fn code(status: StatusCode) -> u32 {
    match status.as_u16() {
        504 => DEADLINE_EXCEEDED,
        429 | 502 | 503 => UNAVAILABLE,
        404 => UNIMPLEMENTED,
        403 => PERMISSION_DENIED,
        413 => RESOURCE_EXHAUSTED,
        400 | 414 | 431 => INTERNAL,
        _ => UNKNOWN,
    }
}

/// Rewrites a response Switchyard made (it carries `x-switchyard-error`) into gRPC terms.
pub fn local_reply(resp: Response<RespBody>) -> Response<RespBody> {
    let Some(reason) = resp.headers().get(X_SWITCHYARD_ERROR).cloned() else {
        return resp;
    };
    let status = resp.status();
    let mut r = Response::new(RespBody::empty());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code(status)));
    // The reason is a token like `upstream_timeout`: nothing to percent-encode.
    h.insert("grpc-message", reason.clone());
    h.insert(X_SWITCHYARD_ERROR, reason);
    if let Some(id) = resp.headers().get(super::headers::X_REQUEST_ID) {
        h.insert(super::headers::X_REQUEST_ID, id.clone());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_become_trailers_only_grpc_replies() {
        let e = super::super::error_response(crate::error::ProxyError::UpstreamTimeout);
        let r = local_reply(e);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(r.headers()["grpc-message"], "upstream_timeout");
        let e = super::super::error_response(crate::error::ProxyError::NoBackend);
        assert_eq!(local_reply(e).headers()["grpc-status"], "14");
    }

    #[test]
    fn every_error_switchyard_makes_has_the_grpc_status_of_its_kind() {
        use crate::error::ProxyError as E;
        let want = [
            (E::ClientDenied, PERMISSION_DENIED),
            (E::RateLimited, UNAVAILABLE),
            (E::BodyTooLarge, RESOURCE_EXHAUSTED),
            (E::HeadTooLarge, INTERNAL),
            (E::UriTooLong, INTERNAL),
            (E::NoRoute, UNIMPLEMENTED),
            (E::UpstreamTimeout, DEADLINE_EXCEEDED),
        ];
        for (e, code) in want {
            assert_eq!(super::code(e.status()), code, "{e:?}");
        }
    }
}
