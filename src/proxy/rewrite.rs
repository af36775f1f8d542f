//! What a route does to a request and its response besides choosing the upstream: the path
//! prefix rewrite (`rewrite_prefix`), header edits (`request_headers`, `response_headers`) and
//! its rate limit (`rate_limit`, [`super::ratelimit`]).
//! Compiled once per snapshot from the route's configuration, so a request only walks ready
//! header names and values. Requests on such a route take hyper's path, not the relay's (whose
//! head is forwarded nearly verbatim), so the relay's hot loop has no per-route branches.

use super::ratelimit::RateLimiter;
use crate::config::{HeaderRules, RouteConfig};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

/// Header edits ready to apply: removals, then replacements.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
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
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
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
}

impl RouteActions {
    /// `limiter`: the route's rate limiter (kept across changes by the registry), if it has one.
    pub fn compile(r: &RouteConfig, limiter: Option<Arc<RateLimiter>>) -> Option<RouteActions> {
        let a = RouteActions {
            rewrite_prefix: r.rewrite_prefix.clone(),
            request: HeaderEdits::compile(r.request_headers.as_ref()),
            response: HeaderEdits::compile(r.response_headers.as_ref()),
            limiter,
        };
        (a.rewrite_prefix.is_some()
            || !a.request.is_empty()
            || !a.response.is_empty()
            || a.limiter.is_some())
        .then_some(a)
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
        (RouteActions::compile(&r, None).unwrap(), prefix.len())
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
    fn a_route_without_edits_has_no_actions() {
        let r = RouteConfig {
            upstream: "u".into(),
            request_headers: Some(HeaderRules::default()),
            ..RouteConfig::default()
        };
        assert!(RouteActions::compile(&r, None).is_none());
    }
}
