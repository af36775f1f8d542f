//! The web UI: plain HTML, CSS and JavaScript modules under `src/admin/ui/`, embedded in the
//! binary so `switchyard demo` serves it with nothing else installed and no build step.
//!
//! `GET /` is the page, `GET /ui/{file}` its assets. Everything the page shows it reads from the
//! admin API (`/api/v1/...`, the `/api/v1/events` stream), so these routes are public: the page
//! asks for the admin token itself when the API answers 401. [`super::api`] merges [`routes`].

use crate::state::Shared;
use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// One embedded file: name under `/ui/`, content type, bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

macro_rules! asset {
    ($name:literal, $ty:expr) => {
        Asset {
            name: $name,
            content_type: $ty,
            body: include_bytes!(concat!("ui/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("style.css", CSS),
    asset!("favicon.svg", SVG),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("live.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("format.js", JS),
    asset!("overview.js", JS),
    asset!("backends.js", JS),
    asset!("discovery.js", JS),
    asset!("config.js", JS),
    asset!("diff.js", JS),
    asset!("events.js", JS),
];

/// Same-origin only: the page never loads anything from elsewhere, so a script injected through
/// a backend address or event text could not call out either.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /` and `GET /ui/{file}`, to be merged into the admin router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(file))
}

async fn index() -> Response {
    serve("index.html")
}

async fn file(Path(name): Path<String>) -> Response {
    serve(&name)
}

fn serve(name: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let headers: [(HeaderName, HeaderValue); 5] = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        // The files change with the binary, not the URL: revalidate on every load so an upgrade
        // never runs a new page against old modules.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    (headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(a: &Asset) -> &str {
        std::str::from_utf8(a.body).expect("UI files are UTF-8")
    }

    /// Every `./x.js` a module imports and every `/ui/x` the page links is embedded: a missing one
    /// would only show up as a blank page in a browser.
    #[test]
    fn every_referenced_file_is_embedded() {
        let embedded = |name: &str| ASSETS.iter().any(|a| a.name == name);
        for a in ASSETS {
            let t = text(a);
            for marker in ["from './", "import('./", "\"/ui/"] {
                for (i, _) in t.match_indices(marker) {
                    let rest = &t[i + marker.len()..];
                    let end = rest.find(['\'', '"']).unwrap_or(rest.len());
                    let name = &rest[..end];
                    assert!(embedded(name), "{} refers to {name}, not embedded", a.name);
                }
            }
        }
    }

    #[test]
    fn unknown_file_is_404_and_known_has_type() {
        assert_eq!(serve("nope.js").status(), StatusCode::NOT_FOUND);
        let r = serve("app.js");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], JS);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
    }
}
