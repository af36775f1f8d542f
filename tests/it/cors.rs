//! A route's `cors`: preflights answered by Switchyard, grants on the responses of allowed
//! origins only, and nothing a backend says about CORS left to contradict the route.

use crate::relay::{last_seen, scripted};
use crate::support::*;
use reqwest::blocking::Response;

/// A backend that grants every origin itself (the kind of default a route's `cors` overrides).
fn app(req: &str) -> (Vec<u8>, bool) {
    let r = if req.starts_with("GET /api/vary ") {
        "HTTP/1.1 200 OK\r\nVary: Origin, Accept\r\nAccess-Control-Expose-Headers: x-secret\r\nContent-Length: 2\r\n\r\nok"
    } else {
        "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\nok"
    };
    (r.as_bytes().to_vec(), false)
}

fn config_for(backend: std::net::SocketAddr) -> String {
    let dead = free_port();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [upstreams.app]\nbackends = [{{ address = \"{backend}\" }}]\n\
         [upstreams.gone]\nbackends = [{{ address = \"127.0.0.1:{dead}\" }}]\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\
         cors = {{ allow_origins = [\"https://app.example\", \"https://*.corp.example\"], allow_methods = [\"GET\", \"PUT\"], expose_headers = [\"x-request-id\"], allow_credentials = true, max_age = \"10m\" }}\n\
         [[routes]]\npath_prefix = \"/writes/\"\nmethods = [\"PUT\"]\nmatch_headers = {{ x-tenant = \"*\" }}\nupstream = \"app\"\n\
         cors = {{ allow_origins = [\"https://app.example\"] }}\n\
         [[routes]]\npath_prefix = \"/down/\"\nupstream = \"gone\"\ncors = {{ allow_origins = [\"https://app.example\"] }}\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\ncors = {{ allow_origins = [\"*\"] }}\n"
    )
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn preflights_are_answered_and_only_allowed_origins_get_a_grant() {
    let (backend, served) = scripted(app);
    let lb = start(&config_for(backend));
    let c = client();
    let preflight = |path: &str, origin: &str| {
        c.request(reqwest::Method::OPTIONS, lb.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type, x-token")
            .send()
            .unwrap()
    };

    // An allowed origin's preflight: answered here, with what it may do.
    for origin in ["https://app.example", "https://eu.corp.example"] {
        let r = preflight("/api/items", origin);
        assert_eq!(r.status(), 204, "{origin}");
        assert_eq!(header(&r, "access-control-allow-origin"), origin);
        assert_eq!(header(&r, "access-control-allow-credentials"), "true");
        assert_eq!(header(&r, "access-control-allow-methods"), "GET, PUT");
        assert_eq!(
            header(&r, "access-control-allow-headers"),
            "content-type, x-token"
        );
        assert_eq!(header(&r, "access-control-max-age"), "600");
        assert!(
            header(&r, "vary").contains("Origin"),
            "{}",
            header(&r, "vary")
        );
        assert!(r.headers().contains_key("x-request-id"));
    }
    // Another origin's: refused, with no grant.
    let r = preflight("/api/items", "https://evil.example");
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "x-switchyard-error"), "cors_origin_denied");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(
        served.lock().unwrap().is_empty(),
        "a preflight was forwarded"
    );

    // Requests themselves are forwarded; the route's grant replaces the backend's `*`.
    let get = |path: &str, origin: Option<&str>| {
        let mut r = c.get(lb.url(path));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send().unwrap()
    };
    let r = get("/api/items", Some("https://app.example"));
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), "true");
    assert_eq!(header(&r, "access-control-expose-headers"), "x-request-id");
    assert_eq!(header(&r, "vary"), "Origin");
    assert!(last_seen(&served).contains("\r\norigin: https://app.example\r\n"));
    // Not allowed (or no origin at all): the answer comes, with no grant for the browser to
    // show it to the page, the backend's own removed.
    for origin in [Some("https://evil.example"), None] {
        let r = get("/api/items", origin);
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{origin:?}"
        );
        assert_eq!(header(&r, "vary"), "Origin", "{origin:?}");
    }
    // A backend's own `Vary: Origin` is not repeated, and its exposed headers are the route's.
    let r = get("/api/vary", Some("https://app.example"));
    assert_eq!(header(&r, "vary"), "Origin, Accept");
    assert_eq!(header(&r, "access-control-expose-headers"), "x-request-id");
    let r = get("/api/vary", Some("https://evil.example"));
    assert!(r.headers().get("access-control-expose-headers").is_none());

    // A route that takes only PUTs with a header: its preflight (an OPTIONS, with the header's
    // name only) is judged by the method it asks about.
    let r = c
        .request(reqwest::Method::OPTIONS, lb.url("/writes/x"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "x-tenant")
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );
    // Asking for a method the route does not take: another route's answer (the catch-all's).
    let r = c
        .request(reqwest::Method::OPTIONS, lb.url("/writes/x"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "DELETE")
        .send()
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), "*");

    // Switchyard's own errors carry the grant, so a page can tell a 502 from a CORS failure.
    let r = get("/down/x", Some("https://app.example"));
    assert_eq!(r.status(), 502);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );

    // Any origin, no credentials: `*`, the same for all, so nothing varies.
    let r = get("/public", Some("https://anyone.example"));
    assert_eq!(header(&r, "access-control-allow-origin"), "*");
    assert!(r
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    assert_eq!(header(&r, "vary"), "");
    let r = preflight("/public", "https://anyone.example");
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-methods"), "PUT");
}

#[test]
fn a_bad_cors_is_refused_by_field_path_and_nothing_is_applied() {
    let (backend, _) = scripted(app);
    let good = config_for(backend);
    let lb = start(&good);
    let bad = good
        .replace(
            "allow_origins = [\"https://app.example\", \"https://*.corp.example\"], allow_methods = [\"GET\", \"PUT\"]",
            "allow_origins = [\"*\", \"https://app.example/\", \"app.example\"], allow_methods = [\"G ET\"], allow_headers = [\"*\"]",
        )
        .replace("cors = { allow_origins = [\"https://app.example\"] }", "cors = { allow_origins = [] }");
    assert_ne!(bad, good);
    assert_eq!(
        refused_paths(&lb, &bad),
        [
            "routes[0].cors.allow_origins[0]",
            "routes[0].cors.allow_origins[1]",
            "routes[0].cors.allow_origins[2]",
            "routes[0].cors.allow_methods[0]",
            "routes[0].cors.allow_headers[0]",
            "routes[1].cors.allow_origins",
            "routes[2].cors.allow_origins",
        ]
    );
    let r = client()
        .request(reqwest::Method::OPTIONS, lb.url("/api/x"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "the old rules still hold");
}
