//! What a route does to a request and its response besides choosing the upstream: the path
//! prefix rewrite (`rewrite_prefix`), header edits (`request_headers`, `response_headers`) and
//! its rate limit (`rate_limit`, [`super::ratelimit`]).
//! Compiled once per snapshot from the route's configuration, so a request only walks ready
//! header names and values. Both request paths carry them out: hyper's on its header maps, the
//! relay while it copies the heads (a route without edits costs it one `is_none` check).

use super::ratelimit::RateLimiter;
use super::template::{Template, Vars};
use crate::config::{HeaderRules, RouteConfig};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

/// Header edits ready to apply: removals, then replacements.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, SetValue)>,
}

/// A value to set: fixed, or with variables expanded per request ([`super::template`]).
#[derive(Debug, Clone)]
enum SetValue {
    Fixed(HeaderValue),
    Template(Template),
}

impl HeaderEdits {
    fn compile(rules: Option<&HeaderRules>) -> HeaderEdits {
        let Some(r) = rules else {
            return HeaderEdits::default();
        };
        HeaderEdits {
            // Validation refused anything that does not parse; nothing is dropped here.
            remove: r
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: r
                .set
                .iter()
                .filter_map(|(n, v)| {
                    let value = match Template::parse(v).ok()? {
                        Some(t) => SetValue::Template(t),
                        None => SetValue::Fixed(HeaderValue::from_str(v).ok()?),
                    };
                    Some((HeaderName::from_bytes(n.as_bytes()).ok()?, value))
                })
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Whether a header line named `name` is replaced or removed by these edits.
    pub fn touches(&self, name: &[u8]) -> bool {
        let is = |n: &HeaderName| n.as_str().as_bytes().eq_ignore_ascii_case(name);
        self.remove.iter().any(is) || self.set.iter().any(|(n, _)| is(n))
    }

    /// Writes the `set` headers as HTTP/1 lines (the relay's heads). `vars` expands values with
    /// variables; without it (responses, where validation allows none) they are left out.
    pub fn push_set(&self, out: &mut Vec<u8>, vars: Option<&Vars<'_>>) {
        for (n, v) in &self.set {
            let start = out.len();
            out.extend_from_slice(n.as_str().as_bytes());
            out.extend_from_slice(b": ");
            let written = match v {
                SetValue::Fixed(v) => {
                    out.extend_from_slice(v.as_bytes());
                    true
                }
                SetValue::Template(t) => vars.is_some_and(|vars| t.expand(vars, out)),
            };
            if written {
                out.extend_from_slice(b"\r\n");
            } else {
                out.truncate(start);
            }
        }
    }

    /// Edits an HTTP/1 response head written by the relay (and whatever body follows it in
    /// `msg`): lines these edits touch are dropped, the `set` ones added before the blank line.
    pub fn edit_head(&self, msg: &mut Vec<u8>) {
        let Some(end) = msg.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        let mut out = Vec::with_capacity(msg.len() + 64);
        let mut lines = msg[..end + 2].split_inclusive(|b| *b == b'\n');
        if let Some(start) = lines.next() {
            out.extend_from_slice(start);
        }
        for line in lines {
            let name = line.split(|b| *b == b':').next().unwrap_or(line);
            if !self.touches(name) {
                out.extend_from_slice(line);
            }
        }
        self.push_set(&mut out, None);
        out.extend_from_slice(&msg[end + 2..]);
        *msg = out;
    }

    /// Applies the edits to a header map; `vars` as for [`HeaderEdits::push_set`]. A value that
    /// expands to nothing removes the header, so a client cannot supply it instead.
    pub fn apply(&self, h: &mut HeaderMap, vars: Option<&Vars<'_>>) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            let value = match v {
                SetValue::Fixed(v) => Some(v.clone()),
                SetValue::Template(t) => vars.and_then(|vars| {
                    let mut b = Vec::new();
                    t.expand(vars, &mut b)
                        .then(|| HeaderValue::from_bytes(&b).ok())
                        .flatten()
                }),
            };
            match value {
                Some(v) => h.insert(n.clone(), v),
                None => h.remove(n),
            };
        }
    }
}

/// A route's edits; `None` from [`RouteActions::compile`] when it has none.
#[derive(Debug, Clone)]
pub struct RouteActions {
    rewrite_prefix: Option<String>,
    pub request: HeaderEdits,
    pub response: HeaderEdits,
    pub limiter: Option<Arc<RateLimiter>>,
    /// Which clients may use the route.
    pub acl: Option<super::real_ip::Acl>,
    /// Where copies of the route's requests go.
    pub mirror: Option<super::mirror::Mirror>,
    /// The route's `timeout`, in place of the upstream's `timeouts.request`.
    pub timeout: Option<std::time::Duration>,
    /// How its responses are compressed.
    pub compress: Option<super::compress::Compress>,
    /// Who is asked about each request first.
    pub auth: Option<super::auth::Auth>,
    /// Which browser origins may use the route.
    pub cors: Option<super::cors::Cors>,
}

impl RouteActions {
    /// `limiter`: the route's rate limiter (kept across changes by the registry), if it has one;
    /// `mirror`: its mirror, with the shadow upstream resolved; `auth` likewise.
    pub fn compile(
        r: &RouteConfig,
        limiter: Option<Arc<RateLimiter>>,
        mirror: Option<super::mirror::Mirror>,
        auth: Option<super::auth::Auth>,
    ) -> Option<RouteActions> {
        let a = RouteActions {
            rewrite_prefix: r.rewrite_prefix.clone(),
            request: HeaderEdits::compile(r.request_headers.as_ref()),
            response: HeaderEdits::compile(r.response_headers.as_ref()),
            limiter,
            acl: super::real_ip::Acl::new(&r.ip_allow, &r.ip_deny),
            mirror,
            timeout: r.timeout.map(|d| d.get()),
            compress: r.compress.as_ref().map(super::compress::Compress::compile),
            auth,
            cors: r.cors.as_ref().map(super::cors::Cors::compile),
        };
        (a.rewrite_prefix.is_some()
            || !a.request.is_empty()
            || !a.response.is_empty()
            || a.limiter.is_some()
            || a.acl.is_some()
            || a.mirror.is_some()
            || a.timeout.is_some()
            || a.compress.is_some()
            || a.auth.is_some()
            || a.cors.is_some())
        .then_some(a)
    }

    /// Whether the relay can carry out these edits: not when they touch the headers it adds
    /// itself after copying the client's (`X-Forwarded-*`, `X-Request-Id`), whose order with
    /// the edits only hyper's path keeps; nor a mirror, whose copy only hyper's path makes;
    /// nor compression, which needs the body in frames, not passed through as bytes; nor an
    /// `auth` question, which is a request of its own before this one; nor CORS, whose
    /// response headers depend on the request's origin.
    pub fn relayable(&self) -> bool {
        if self.mirror.is_some()
            || self.compress.is_some()
            || self.auth.is_some()
            || self.cors.is_some()
        {
            return false;
        }
        const ADDED: [&[u8]; 4] = [
            b"x-forwarded-for",
            b"x-forwarded-proto",
            b"x-forwarded-host",
            b"x-request-id",
        ];
        !ADDED
            .iter()
            .any(|n| self.request.touches(n) || self.response.touches(n))
    }

    /// The whole exchange's time limit on `up` for this route's requests.
    pub fn timeout_on(
        actions: Option<&Self>,
        up: &crate::upstream::Upstream,
    ) -> std::time::Duration {
        actions
            .and_then(|a| a.timeout)
            .unwrap_or(up.request_timeout)
    }

    /// The origin-form target sent upstream for `target` (path and query) whose first
    /// `matched` bytes were the route's prefix; `None` when the route does not rewrite.
    pub fn rewrite(&self, target: &str, matched: usize) -> Option<String> {
        let to = self.rewrite_prefix.as_deref()?;
        let rest = target.get(matched..).unwrap_or("");
        // One slash where the two meet: "/" + "/users" is "/users", not "//users".
        let rest = if to.ends_with('/') {
            rest.strip_prefix('/').unwrap_or(rest)
        } else {
            rest
        };
        let mut out = String::with_capacity(to.len() + rest.len() + 1);
        out.push_str(to);
        if !to.ends_with('/') && !rest.is_empty() && !rest.starts_with(['/', '?']) {
            out.push('/');
        }
        out.push_str(rest);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(prefix: &str, to: &str) -> (RouteActions, usize) {
        let r = RouteConfig {
            path_prefix: Some(prefix.into()),
            rewrite_prefix: Some(to.into()),
            upstream: "u".into(),
            ..RouteConfig::default()
        };
        (
            RouteActions::compile(&r, None, None, None).unwrap(),
            prefix.len(),
        )
    }

    #[test]
    fn prefixes_are_replaced_with_one_slash_where_they_meet() {
        let cases = [
            ("/api/", "/", "/api/users?x=1", "/users?x=1"),
            ("/api", "/", "/api/users", "/users"),
            ("/api", "/", "/api", "/"),
            ("/api", "/", "/api?q", "/?q"),
            ("/api/", "/v2/", "/api/users", "/v2/users"),
            ("/api", "/v2", "/api/users", "/v2/users"),
            ("/api", "/v2", "/api", "/v2"),
            ("/", "/base/", "/x/y", "/base/x/y"),
        ];
        for (prefix, to, target, want) in cases {
            let (a, n) = actions(prefix, to);
            assert_eq!(
                a.rewrite(target, n).as_deref(),
                Some(want),
                "{prefix} -> {to}: {target}"
            );
        }
    }

    #[test]
    fn relay_heads_are_edited_line_by_line_and_keep_their_body() {
        let rules = HeaderRules {
            set: [("x-route".to_string(), "api".to_string())].into(),
            remove: vec!["server".into()],
        };
        let e = HeaderEdits::compile(Some(&rules));
        let mut msg =
            b"HTTP/1.1 200 OK\r\nServer: x\r\nX-Route: old\r\ncontent-length: 2\r\n\r\nhi".to_vec();
        e.edit_head(&mut msg);
        assert_eq!(
            String::from_utf8(msg).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-route: api\r\n\r\nhi"
        );
    }

    #[test]
    fn a_route_without_edits_has_no_actions() {
        let r = RouteConfig {
            upstream: "u".into(),
            request_headers: Some(HeaderRules::default()),
            ..RouteConfig::default()
        };
        assert!(RouteActions::compile(&r, None, None, None).is_none());
    }
}
