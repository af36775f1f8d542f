//! Routing: request host and path to an upstream.
//!
//! Routes are sorted once per snapshot by host specificity (exact, then wildcard by suffix length,
//! then any host), an exact `path` before prefixes, and path-prefix length, keeping file order
//! among equals; the first match wins. So within a host an exact path wins, then the longest
//! prefix, and an exact host beats a wildcard. A route names
//! one upstream or a weighted [`split`](super::split) across several.

use super::ratelimit::RateLimiter;
use super::rewrite::RouteActions;
use super::split::{Split, Target};
use crate::config::RouteConfig;
use crate::upstream::HashKey;
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
    /// The path prefix, or with `exact` the whole path.
    prefix: String,
    exact: bool,
    /// Methods and headers the request must have, if the route names any.
    cond: Option<Arc<Cond>>,
    /// The route's index in the configuration's `routes`.
    index: usize,
    target: Target,
    actions: Option<Arc<RouteActions>>,
}

/// What a route asks of a request besides its host and path.
#[derive(Debug, Clone, Default)]
pub struct Cond {
    /// Any of these methods (empty: any method).
    methods: Vec<Box<[u8]>>,
    /// Every one of these headers (lower-case names), with this value (`None`: any value).
    headers: Vec<(String, Option<Box<[u8]>>)>,
    /// The route has `cors`: a preflight for a request the route would take matches it too.
    cors: bool,
}

impl Cond {
    fn compile(r: &RouteConfig) -> Option<Cond> {
        let c = Cond {
            methods: r.methods.iter().map(|m| m.as_bytes().into()).collect(),
            headers: r
                .match_headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_ascii_lowercase(),
                        (v != "*").then(|| v.as_bytes().into()),
                    )
                })
                .collect(),
            cors: r.cors.is_some(),
        };
        (!c.methods.is_empty() || !c.headers.is_empty()).then_some(c)
    }

    /// How many things it asks: more is more specific, and sorts first.
    fn weight(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len()
    }

    fn matches(&self, req: &impl RequestView) -> bool {
        // A CORS preflight is an OPTIONS that carries none of the request's headers, only their
        // names: it is judged by the method it asks about, and by no header's value.
        if self.cors
            && req.method() == b"OPTIONS"
            && req.has_header("origin", None)
            && req.has_header("access-control-request-method", None)
        {
            return self.methods.is_empty()
                || self
                    .methods
                    .iter()
                    .any(|m| req.has_header("access-control-request-method", Some(m)));
        }
        (self.methods.is_empty() || self.methods.iter().any(|m| **m == *req.method()))
            && self
                .headers
                .iter()
                .all(|(n, want)| req.has_header(n, want.as_deref()))
    }
}

/// The request as routing sees it beyond host and path: its method, and its header lines by
/// (lower-case) name. Only looked at for routes with conditions.
pub trait RequestView {
    fn method(&self) -> &[u8];
    /// Whether a header line named `name` (lower-case) has the value `value`, or any value.
    fn has_header(&self, name: &str, value: Option<&[u8]>) -> bool;
}

/// The route a request matched.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    target: &'a Target,
    /// Length of the matched path prefix, for `rewrite_prefix`.
    pub prefix_len: usize,
    /// What the route does besides choosing the upstream, if anything.
    pub actions: Option<&'a Arc<RouteActions>>,
    /// The route's index in the configuration's `routes`; `None` when there are no routes and
    /// the only upstream takes everything.
    pub route: Option<usize>,
}

impl Matched<'_> {
    /// The upstream's index in the snapshot; `None` for a route that answers itself. For a
    /// split keyed by something of the request, `key_hash` hashes it; it is not called otherwise.
    pub fn upstream(&self, key_hash: impl FnOnce(&HashKey) -> u64) -> Option<usize> {
        match self.target {
            Target::One(i) => Some(*i),
            Target::Split(s) => Some(s.pick(key_hash)),
            Target::Respond(_) => None,
        }
    }

    /// The route's own response, when it answers itself.
    pub fn respond(&self) -> Option<&super::respond::Respond> {
        match self.target {
            Target::Respond(r) => Some(r),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<Rule>,
    /// With no routes, everything goes to the only upstream.
    default: Option<Target>,
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
        for (index, r) in routes.iter().enumerate() {
            let target = if let Some(resp) = &r.respond {
                super::respond::Respond::compile(resp).map(|x| Target::Respond(Arc::new(x)))
            } else if r.split.is_empty() {
                index_of(&r.upstream).map(Target::One)
            } else {
                // Validation made sure every arm exists and the split by-key parses.
                let by = r.split_by.as_deref().and_then(HashKey::parse);
                let arms = r
                    .split
                    .iter()
                    .filter_map(|a| Some((index_of(&a.upstream)?, a.weight)));
                Split::new(arms, by).map(|s| Target::Split(Box::new(s)))
            };
            let Some(target) = target else {
                continue;
            };
            let exact = r.path.is_some();
            let prefix = r
                .path
                .clone()
                .or_else(|| r.path_prefix.clone())
                .unwrap_or_else(|| "/".into());
            let mirror = r.mirror.as_ref().and_then(|m| {
                Some(super::mirror::Mirror::new(
                    index_of(&m.upstream)?,
                    m.percent,
                ))
            });
            let auth = r
                .auth
                .as_ref()
                .map(|a| super::auth::Auth::compile(a, index_of(&a.upstream)));
            let actions = RouteActions::compile(r, limiter(r), mirror, auth).map(Arc::new);
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
            let cond = Cond::compile(r).map(Arc::new);
            rules.extend(hosts.into_iter().map(|host| Rule {
                host,
                prefix: prefix.clone(),
                exact,
                cond: cond.clone(),
                index,
                target: target.clone(),
                actions: actions.clone(),
            }));
        }
        // Within a host an exact path comes first (as NGINX's `location =`), then the longest
        // prefix. Among routes of one host and path, the one asking more of the request comes
        // first: `match_headers = { x-canary = "1" }` wins over the same route without it.
        rules.sort_by_key(|r| {
            let cond = r.cond.as_ref().map_or(0, |c| c.weight());
            std::cmp::Reverse((r.host.rank(), r.exact, r.prefix.len(), cond))
        });
        Router {
            default: only.filter(|_| routes.is_empty()).map(Target::One),
            rules,
        }
    }

    /// `host` without port, any case; `path` as received; `req` for routes with conditions.
    pub fn route(&self, host: &str, path: &str, req: &impl RequestView) -> Option<Matched<'_>> {
        if self.rules.is_empty() {
            return self.default.as_ref().map(|target| Matched {
                target,
                prefix_len: 0,
                actions: None,
                route: None,
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
            .find(|r| {
                r.host.matches(host)
                    && if r.exact {
                        path == r.prefix
                    } else {
                        path.starts_with(r.prefix.as_str())
                    }
                    && r.cond.as_ref().is_none_or(|c| c.matches(req))
            })
            .map(|r| Matched {
                target: &r.target,
                prefix_len: r.prefix.len(),
                actions: r.actions.as_ref(),
                route: Some(r.index),
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

    /// A router over `routes`, upstream `names[i]` at index i.
    fn router_of(routes: &[RouteConfig], names: &[&str]) -> Router {
        Router::new(
            routes,
            |n| names.iter().position(|x| *x == n),
            None,
            |_| None,
        )
    }

    struct NoView;
    impl RequestView for NoView {
        fn method(&self) -> &[u8] {
            b"GET"
        }
        fn has_header(&self, _: &str, _: Option<&[u8]>) -> bool {
            false
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
        let r = router_of(&routes, &names);
        let up = |host, path| r.route(host, path, &NoView).and_then(|m| m.upstream(|_| 0));
        assert_eq!(up("api.example.com:8080", "/v2/x"), Some(3));
        assert_eq!(up("API.example.com", "/v1"), Some(2));
        assert_eq!(up("www.example.com", "/"), Some(1));
        assert_eq!(up("example.com", "/"), Some(0));
    }

    #[test]
    fn an_exact_path_comes_before_any_prefix_of_its_host() {
        let names = ["prefix", "exact", "other-host"];
        let mut exact = route(&[], "/", "exact");
        (exact.path, exact.path_prefix) = (Some("/api/health".into()), None);
        let routes = vec![
            route(&[], "/api/", "prefix"),
            exact,
            route(&["other.example"], "/", "other-host"),
        ];
        let r = router_of(&routes, &names);
        let up = |host, path| r.route(host, path, &NoView).and_then(|m| m.upstream(|_| 0));
        assert_eq!(up("a", "/api/health"), Some(1));
        assert_eq!(up("a", "/api/health/"), Some(0));
        assert_eq!(up("a", "/api/healthz"), Some(0));
        // A host's own routes come first: the exact path is not one of other.example's.
        assert_eq!(up("other.example", "/api/health"), Some(2));
        let m = r.route("a", "/api/health", &NoView).unwrap();
        assert_eq!(m.prefix_len, "/api/health".len());
    }
}
