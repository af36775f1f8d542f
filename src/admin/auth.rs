//! Admin authentication: with a token configured (`admin.token`, `admin.token_file` or
//! `SWITCHYARD_ADMIN_TOKEN`), every route but `/health` needs `Authorization: Bearer TOKEN`.
//! `/api/v1/events` also takes `?token=` because browsers' EventSource cannot send headers.
//! Comparison is constant-time so the token cannot be guessed byte by byte from timings.

use crate::state::Shared;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The token in force, if any: `Err` when a token file is configured but cannot be read or is
/// empty (say, mid-rotation), so the API fails closed instead of opening. Read per admin request
/// so a rotated token file takes effect.
pub fn configured_token(shared: &Shared) -> Option<Result<String, String>> {
    let cfg = shared.current().config.clone();
    if let Some(t) = &cfg.admin.token {
        return Some(Ok(t.clone()));
    }
    if let Some(f) = &cfg.admin.token_file {
        return Some(match std::fs::read_to_string(f) {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            Ok(_) => Err(format!("admin.token_file {f} is empty")),
            Err(e) => Err(format!("admin.token_file {f}: {e}")),
        });
    }
    std::env::var("SWITCHYARD_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(Ok)
}

/// Decodes `%XX` escapes and `+` (as browsers encode query strings).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_token(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    // The UI's page and assets hold no data; the login form must be reachable.
    let open = path == "/health" || path == "/" || path.starts_with("/ui/");
    // Read once per request, for both decisions: this one and the browser guard's.
    let token = match configured_token(&shared) {
        // No token (the loopback default): the browser guard is what stands before the API.
        None => return super::origin::tokenless(req, next).await,
        Some(_) if open => return next.run(req).await,
        Some(Ok(t)) => t,
        Some(Err(why)) => {
            // The file's path and the OS error are for the operator's log, not for callers.
            tracing::error!("admin API refused: {why}");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(
                    serde_json::json!({"error": "admin token unavailable; see the server log"}),
                ),
            )
                .into_response();
        }
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_string);
    let query = (path == "/api/v1/events")
        .then(|| {
            req.uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
                .map(percent_decode)
        })
        .flatten();
    match bearer.or(query) {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(
                serde_json::json!({"error": "unauthorized: send Authorization: Bearer TOKEN"}),
            ),
        )
            .into_response(),
    }
}

/// The token of an `Authorization: Bearer TOKEN` value. The scheme is matched without regard to
/// case (RFC 9110 §11.1: `bearer` and `BEARER` are the same scheme) and may be followed by more
/// than one space; the token itself is compared exactly.
fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(' ')?;
    let token = rest.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer   s3cret",
        ] {
            assert_eq!(super::bearer_token(v), Some("s3cret"), "{v}");
        }
        for v in [
            "Basic s3cret",
            "Bearer",
            "Bearer ",
            "Bearers3cret",
            "s3cret",
        ] {
            assert_eq!(super::bearer_token(v), None, "{v}");
        }
    }

    #[test]
    fn decodes_query_tokens() {
        assert_eq!(super::percent_decode("a%2Bb%26c+d%zz"), "a+b&c d%zz");
    }
}
