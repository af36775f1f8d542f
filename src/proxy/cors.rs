//! Cross-origin resource sharing for a route (`cors`), as the Fetch standard's CORS protocol
//! has it and as Envoy's CORS filter and Traefik's `accessControlAllow*` headers do.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//! never forwarded: 204 with the `Access-Control-Allow-*` headers for an allowed origin, 403
//! (`cors_origin_denied`) for another. Any other request from an allowed origin gets
//! `Access-Control-Allow-Origin` (and `-Credentials`, `-Expose-Headers`) on its response,
//! Switchyard's own errors and an auth service's refusals included, so a page's script can read
//! why it failed. Responses whose CORS headers depend on the origin say `Vary: Origin`, so a
//! cache does not hand one origin's answer to another.

use super::body::RespBody;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

/// A route's `cors`, compiled per snapshot.
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    /// Exact origins, lowercased (`https://app.example.com`).
    exact: Vec<String>,
    /// `(scheme://, .example.com)` from `scheme://*.example.com`.
    suffixes: Vec<(String, String)>,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// What the CORS protocol makes of one request that is not a preflight.
pub enum Step {
    /// No `Origin`: not a cross-origin request.
    None,
    /// An allowed cross-origin request: its response gets the headers, for this origin.
    Decorate(HeaderValue),
    /// A cross-origin request from an origin not allowed: forwarded, its response carries no
    /// grant (the browser withholds it from the page), only `Vary: Origin`.
    Refused,
}

impl Cors {
    pub fn compile(c: &crate::config::CorsConfig) -> Cors {
        let list = |v: &[String]| {
            (!v.is_empty())
                .then(|| HeaderValue::from_str(&v.join(", ")).ok())
                .flatten()
        };
        let mut cors = Cors {
            any_origin: false,
            exact: Vec::new(),
            suffixes: Vec::new(),
            methods: list(&c.allow_methods),
            headers: list(&c.allow_headers),
            expose: list(&c.expose_headers),
            credentials: c.allow_credentials,
            max_age: c.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
        };
        for o in &c.allow_origins {
            let o = o.to_ascii_lowercase();
            if o == "*" {
                cors.any_origin = true;
            } else if let Some((scheme, rest)) = o.split_once("://*") {
                cors.suffixes
                    .push((format!("{scheme}://"), rest.to_string()));
            } else {
                cors.exact.push(o);
            }
        }
        cors
    }

    fn allows(&self, origin: &str) -> bool {
        if self.any_origin {
            return true;
        }
        let origin = origin.to_ascii_lowercase();
        self.exact.contains(&origin)
            || self.suffixes.iter().any(|(scheme, suffix)| {
                origin.strip_prefix(scheme.as_str()).is_some_and(|host| {
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                })
            })
    }

    /// Reads the request's side of the protocol. Err: a preflight, and the answer it gets.
    pub fn step(&self, method: &Method, h: &HeaderMap) -> Result<Step, Box<Response<RespBody>>> {
        let Some(origin) = h.get(header::ORIGIN) else {
            return Ok(Step::None);
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        let preflight =
            *method == Method::OPTIONS && h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (preflight, allowed) {
            (true, true) => Err(Box::new(self.preflight(origin, h))),
            (true, false) => {
                let mut r = super::error_response(crate::error::ProxyError::CorsDenied);
                self.vary(r.headers_mut());
                Err(Box::new(r))
            }
            (false, true) => Ok(Step::Decorate(origin.clone())),
            (false, false) => Ok(Step::Refused),
        }
    }

    fn preflight(&self, origin: &HeaderValue, req: &HeaderMap) -> Response<RespBody> {
        let mut r = Response::new(RespBody::Full(None));
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        self.grant(h, origin);
        let asked = |name| req.get(name).cloned();
        if let Some(m) = self
            .methods
            .clone()
            .or_else(|| asked(header::ACCESS_CONTROL_REQUEST_METHOD))
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
        }
        if let Some(v) = self
            .headers
            .clone()
            .or_else(|| asked(header::ACCESS_CONTROL_REQUEST_HEADERS))
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(a) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, a.clone());
        }
        // The answer depends on what was asked, not only on the origin.
        h.append(
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        r
    }

    /// `Access-Control-Allow-Origin` and `-Credentials` for `origin`, and `Vary: Origin`.
    fn grant(&self, h: &mut HeaderMap, origin: &HeaderValue) {
        // `*` alone only when any origin is allowed and no credentials go with it (validation
        // refuses `*` with credentials); otherwise the origin itself, which varies.
        if self.star() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            self.vary(h);
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// Whether every origin gets the same grant, `*`: then nothing varies by origin.
    fn star(&self) -> bool {
        self.any_origin && !self.credentials
    }

    fn vary(&self, h: &mut HeaderMap) {
        if !self.star() {
            super::headers::add_vary(h, "Origin");
        }
    }

    /// Puts the response's side of the protocol on `h` (a backend's or Switchyard's answer).
    pub fn decorate(&self, h: &mut HeaderMap, step: &Step) {
        // The route's policy is the only one: whatever a backend said of CORS goes, also from
        // an answer to a request without `Origin`, which a cache could later give to one.
        for n in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            h.remove(n);
        }
        match step {
            Step::Decorate(origin) => {
                self.grant(h, origin);
                if let Some(e) = &self.expose {
                    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
                }
            }
            Step::None | Step::Refused => self.vary(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors::compile(&crate::config::CorsConfig {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn origins_match_exactly_or_as_subdomains_of_a_wildcard() {
        let c = cors(&["https://app.example.com", "https://*.corp.example"]);
        assert!(c.allows("https://app.example.com"));
        assert!(c.allows("HTTPS://APP.example.com"));
        assert!(c.allows("https://a.b.corp.example"));
        assert!(!c.allows("http://app.example.com"));
        assert!(!c.allows("https://app.example.com.evil.test"));
        assert!(!c.allows("https://corp.example"));
        assert!(!c.allows("https://evilcorp.example"));
        assert!(!c.allows("null"));
        assert!(cors(&["*"]).allows("null"));
    }
}
