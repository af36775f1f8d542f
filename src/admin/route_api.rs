//! `GET /api/v1/routes/match?host=…&path=…&method=…&header=NAME:VALUE`: which route a request
//! would take in the running configuration, and where it would go (`path`: normalized as the
//! data plane does before routing). For "why does this request
//! land there?" without sending one, as Traefik's dashboard shows a router per rule.

use super::api::S;
use crate::proxy::router::RequestView;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The request described by the query.
struct Probe {
    method: String,
    /// Lower-case names.
    headers: Vec<(String, String)>,
}

impl RequestView for Probe {
    fn method(&self) -> &[u8] {
        self.method.as_bytes()
    }
    fn has_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n == name && value.is_none_or(|w| w == v.as_bytes()))
    }
}

pub async fn route_match(State(shared): S, Query(q): Query<Vec<(String, String)>>) -> Response {
    let one = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut headers = Vec::new();
    for (_, h) in q.iter().filter(|(n, _)| n == "header") {
        let Some((n, v)) = h.split_once(':') else {
            let e = json!({ "error": format!("header {h:?} is not NAME:VALUE") });
            return (StatusCode::BAD_REQUEST, Json(e)).into_response();
        };
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let probe = Probe {
        method: one("method").unwrap_or("GET").to_string(),
        headers,
    };
    let (host, asked) = (one("host").unwrap_or(""), one("path").unwrap_or("/"));
    // Routed as the data plane routes it: the path normalized first.
    let normalized;
    let path = if crate::proxy::normalize::needed(asked.as_bytes(), false) {
        let Some(p) = crate::proxy::normalize::normalize(asked, false) else {
            let e = json!({ "matched": false, "error": "the path climbs above the root or has a % that escapes nothing: the request gets 400 bad_request" });
            return (StatusCode::BAD_REQUEST, Json(e)).into_response();
        };
        normalized = p;
        normalized.as_str()
    } else {
        asked
    };
    let snap = shared.current();
    let Some(m) = snap.router.route(host, path, &probe) else {
        let e =
            json!({ "matched": false, "error": "no route matches: the request gets 404 no_route" });
        return (StatusCode::NOT_FOUND, Json(e)).into_response();
    };
    let route: Option<&crate::config::RouteConfig> =
        m.route.and_then(|i| snap.config.routes.get(i));
    let serves: Value = match (m.respond(), route) {
        (Some(_), Some(r)) => json!({ "respond": r.respond }),
        (None, Some(r)) if !r.split.is_empty() => {
            json!({ "split": r.split, "split_by": r.split_by.as_deref().unwrap_or("request") })
        }
        _ => {
            let name = m
                .upstream(|_| 0)
                .and_then(|i| snap.upstreams.get(i))
                .map(|u| u.name.clone());
            json!({ "upstream": name })
        }
    };
    Json(json!({
        "matched": true,
        "path": path,
        "config_version": snap.version,
        "route": m.route,
        "route_config": route,
        "serves": serves,
    }))
    .into_response()
}
