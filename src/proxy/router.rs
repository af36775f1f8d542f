//! Routing: request host and path to an upstream.
//!
//! Routes are sorted once per snapshot by host specificity (exact, then wildcard by suffix length,
//! then any host) and path-prefix length, keeping file order among equals; the first match wins.
//! So within a host the longest prefix wins, and an exact host beats a wildcard.

use super::ratelimit::RateLimiter;
use super::rewrite::RouteActions;
use crate::config::RouteConfig;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum HostPat {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
    Any,
}

impl HostPat {
    fn rank(&self) -> usize {
        match self {
            HostPat::Exact(h) => 1_000_000 + h.len(),
            HostPat::Suffix(s) => 1_000 + s.len(),
            HostPat::Any => 0,
        }
    }
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPat::Exact(h) => h == host,
            HostPat::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPat::Any => true,
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    host: HostPat,
    prefix: String,
    upstream: usize,
    actions: Option<Arc<RouteActions>>,
}

/// The route a request matched.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    pub upstream: usize,
    /// Length of the matched path prefix, for `rewrite_prefix`.
    pub prefix_len: usize,
    /// What the route does besides choosing the upstream, if anything.
    pub actions: Option<&'a Arc<RouteActions>>,
}

#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<Rule>,
    /// With no routes, everything goes to the only upstream.
    default: Option<usize>,
}

impl Router {
    /// `index_of` maps an upstream name to its index in the snapshot.
    /// `limiter` gives a route's rate limiter (see [`crate::state::Registry`]).
    pub fn new(
        routes: &[RouteConfig],
        index_of: impl Fn(&str) -> Option<usize>,
        only: Option<usize>,
        mut limiter: impl FnMut(&RouteConfig) -> Option<Arc<RateLimiter>>,
    ) -> Router {
        let mut rules = Vec::new();
        for r in routes {
            let Some(upstream) = index_of(&r.upstream) else {
                continue;
            };
            let prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
            let actions = RouteActions::compile(r, limiter(r)).map(Arc::new);
            let hosts: Vec<HostPat> = if r.hosts.is_empty() {
                vec![HostPat::Any]
            } else {
                r.hosts
                    .iter()
                    .map(|h| {
                        let h = h.to_ascii_lowercase();
                        match h.strip_prefix('*') {
                            Some(suffix) => HostPat::Suffix(suffix.to_string()),
                            None => HostPat::Exact(h),
                        }
                    })
                    .collect()
            };
            rules.extend(hosts.into_iter().map(|host| Rule {
                host,
                prefix: prefix.clone(),
                upstream,
                actions: actions.clone(),
            }));
        }
        rules.sort_by_key(|r| std::cmp::Reverse((r.host.rank(), r.prefix.len())));
        Router {
            default: if routes.is_empty() { only } else { None },
            rules,
        }
    }

    /// `host` without port, any case; `path` as received.
    pub fn route(&self, host: &str, path: &str) -> Option<Matched<'_>> {
        if self.rules.is_empty() {
            return self.default.map(|upstream| Matched {
                upstream,
                prefix_len: 0,
                actions: None,
            });
        }
        let host = host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        self.rules
            .iter()
            .find(|r| r.host.matches(host) && path.starts_with(r.prefix.as_str()))
            .map(|r| Matched {
                upstream: r.upstream,
                prefix_len: r.prefix.len(),
                actions: r.actions.as_ref(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hosts: &[&str], prefix: &str, up: &str) -> RouteConfig {
        RouteConfig {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefix: Some(prefix.into()),
            upstream: up.into(),
            ..RouteConfig::default()
        }
    }

    #[test]
    fn exact_beats_wildcard_and_longest_prefix_wins() {
        let names = ["a", "b", "c", "d"];
        let routes = vec![
            route(&[], "/", "a"),
            route(&["*.example.com"], "/", "b"),
            route(&["api.example.com"], "/", "c"),
            route(&["api.example.com"], "/v2", "d"),
        ];
        let r = Router::new(
            &routes,
            |n| names.iter().position(|x| *x == n),
            None,
            |_| None,
        );
        let up = |host, path| r.route(host, path).map(|m| m.upstream);
        assert_eq!(up("api.example.com:8080", "/v2/x"), Some(3));
        assert_eq!(up("API.example.com", "/v1"), Some(2));
        assert_eq!(up("www.example.com", "/"), Some(1));
        assert_eq!(up("example.com", "/"), Some(0));
    }
}
