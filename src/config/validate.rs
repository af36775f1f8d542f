//! Validation: a separate pass over a parsed [`Config`] that returns every problem at once, each
//! with its field path (`upstreams.web.backends[1].address`), so `check` and the admin API can
//! report all mistakes in one go and nothing is applied while any remains.

use super::schema::*;
use super::size::parse_size;
use super::validate_tcp::{check_mode, check_tcp_upstreams};
use super::validate_upstream::check_upstream;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    /// Field path, e.g. `upstreams.web.backends[0].address`.
    pub path: String,
    pub message: String,
    /// `FILE:LINE:COL` when the configuration came from a file and the field could be located.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Line and column (from 1) in the text the configuration was read from, when located: an
    /// editor (the web UI's) can mark the line without parsing `location`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
            location: None,
            line: None,
            column: None,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A problem of the whole text (a syntax error, an unreadable file) has no field path:
        // say none rather than an empty one between two colons.
        match (&self.location, self.path.is_empty()) {
            (Some(loc), false) => write!(f, "{loc}: {}: {}", self.path, self.message),
            (Some(loc), true) => write!(f, "{loc}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

pub const MAX_WEIGHT: u32 = 10_000;

/// Longest `[cluster] id`: it is shown in lists and is part of an etcd key.
pub const MAX_INSTANCE_ID: usize = 64;

/// An instance id is one segment of the etcd key `{prefix}/instances/{id}`: a `/` would put it
/// under another path, and blanks or control characters make it unreadable in lists and logs.
pub fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_INSTANCE_ID {
        return Err(format!("at most {MAX_INSTANCE_ID} characters"));
    }
    if id.contains('/') || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{id:?}: no '/', blanks or control characters (it is part of an etcd key)"
        ));
    }
    Ok(())
}

/// Checks a whole configuration; an empty vector means it may be compiled and served.
pub fn validate(cfg: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    if let Some(w) = cfg.workers {
        if w == 0 || w > 1024 {
            p.push(Problem::new("workers", "must be between 1 and 1024"));
        }
    }
    check_admin(cfg, &mut p);
    if cfg.listeners.is_empty() {
        p.push(Problem::new(
            "listeners",
            "at least one [[listeners]] entry is required",
        ));
    }
    let mut binds = HashSet::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        match l.bind.parse::<SocketAddr>() {
            Ok(a) => {
                // Port 0 picks a fresh port for each listener, so it can repeat.
                if a.port() != 0 && !binds.insert(a) {
                    p.push(Problem::new(
                        format!("{path}.bind"),
                        format!("{a} is bound by another listener"),
                    ));
                }
            }
            Err(_) => p.push(Problem::new(
                format!("{path}.bind"),
                format!(
                    "{:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                    l.bind
                ),
            )),
        }
        check_mode(cfg, l, &path, &mut p);
        if let Some(s) = &l.max_request_body {
            if let Err(e) = parse_size(s) {
                p.push(Problem::new(format!("{path}.max_request_body"), e));
            }
        }
        check_blocks(
            &format!("{path}.trusted_proxies"),
            &l.trusted_proxies,
            &mut p,
        );
        if l.header_timeout.is_some_and(|d| d.get().is_zero()) {
            p.push(Problem::new(
                format!("{path}.header_timeout"),
                "must be above 0, or no request could ever arrive",
            ));
        }
        if let Some(tls) = &l.tls {
            // Without certificates, `redirect_https = true` makes a plain listener that redirects.
            if tls.certificates.is_empty() && tls.redirect_https != Some(true) {
                p.push(Problem::new(
                    format!("{path}.tls.certificates"),
                    "at least one {cert, key} pair is required",
                ));
            }
            for (field, message) in crate::listener::tls::check(tls) {
                p.push(Problem::new(format!("{path}.tls.{field}"), message));
            }
            if let Some(v) = &tls.min_version {
                if v != "1.2" && v != "1.3" {
                    p.push(Problem::new(
                        format!("{path}.tls.min_version"),
                        "must be \"1.2\" or \"1.3\"",
                    ));
                }
            }
        }
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        route_target(cfg, r, &path, &mut p);
        if r.timeout.is_some_and(|d| d.get().is_zero()) {
            p.push(Problem::new(
                format!("{path}.timeout"),
                "must be greater than zero",
            ));
        }
        for (j, m) in r.methods.iter().enumerate() {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                p.push(Problem::new(
                    format!("{path}.methods[{j}]"),
                    format!("{m:?} is not a method (a token such as \"GET\")"),
                ));
            } else if m == "*" {
                p.push(Problem::new(
                    format!("{path}.methods[{j}]"),
                    "leave `methods` out for any method",
                ));
            } else if m.bytes().any(|b| b.is_ascii_lowercase()) {
                // Methods are case-sensitive: "get" would never match a GET.
                p.push(Problem::new(
                    format!("{path}.methods[{j}]"),
                    format!(
                        "methods are case-sensitive: write {:?}",
                        m.to_ascii_uppercase()
                    ),
                ));
            }
        }
        for (name, value) in &r.match_headers {
            let at = format!("{path}.match_headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(Problem::new(at.clone(), "not a header name"));
            }
            if name.eq_ignore_ascii_case("host") {
                // The routed host may come from an HTTP/2 `:authority` or an absolute-form
                // target, in any case; `hosts` matches that one.
                p.push(Problem::new(at.clone(), "match the host with `hosts`"));
            }
            if value.trim() != value {
                p.push(Problem::new(
                    at.clone(),
                    "a value with spaces around never matches: they are not part of a header's value",
                ));
            }
            if same_name_earlier(r.match_headers.keys(), name) {
                p.push(Problem::new(
                    at.clone(),
                    "named twice (header names have no case)",
                ));
            }
            if http::HeaderValue::from_str(value).is_err() || value.is_empty() {
                p.push(Problem::new(
                    at,
                    "the value to equal (not empty, no control characters), or \"*\" for any value",
                ));
            }
        }
        if let Some(m) = &r.mirror {
            let own = m.upstream == r.upstream || r.split.iter().any(|a| a.upstream == m.upstream);
            if own {
                p.push(Problem::new(
                    format!("{path}.mirror.upstream"),
                    "the route's own upstream: each request would reach it twice",
                ));
            }
            if !cfg.upstreams.contains_key(&m.upstream) {
                p.push(Problem::new(
                    format!("{path}.mirror.upstream"),
                    format!("no upstream named {:?}", m.upstream),
                ));
            }
            // NaN fails both comparisons and is refused too.
            if !(m.percent > 0.0 && m.percent <= 100.0) {
                p.push(Problem::new(
                    format!("{path}.mirror.percent"),
                    "must be above 0 and at most 100",
                ));
            }
        }
        if let Some(c) = &r.compress {
            compress(c, &format!("{path}.compress"), &mut p);
        }
        if let Some(a) = &r.auth {
            auth(cfg, a, &format!("{path}.auth"), &mut p);
        }
        if let Some(c) = &r.cors {
            cors(c, &format!("{path}.cors"), &mut p);
        }
        check_blocks(&format!("{path}.ip_allow"), &r.ip_allow, &mut p);
        check_blocks(&format!("{path}.ip_deny"), &r.ip_deny, &mut p);
        for (j, h) in r.hosts.iter().enumerate() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(' ') {
                p.push(Problem::new(
                    format!("{path}.hosts[{j}]"),
                    format!("{h:?} is not a host name or a wildcard like \"*.example.com\""),
                ));
            }
        }
        for (key, given) in [("path_prefix", &r.path_prefix), ("path", &r.path)] {
            if given.as_ref().is_some_and(|pp| !pp.starts_with('/')) {
                p.push(Problem::new(
                    format!("{path}.{key}"),
                    "must start with \"/\"",
                ));
            }
        }
        if r.path.as_ref().is_some_and(|x| x.contains(['?', '#'])) {
            // The route matches the path alone; a query here could never match.
            p.push(Problem::new(
                format!("{path}.path"),
                "a path without query or fragment",
            ));
        }
        if r.path.is_some() && r.path_prefix.is_some() {
            p.push(Problem::new(
                format!("{path}.path"),
                "either `path` (exact) or `path_prefix`, not both",
            ));
        }
        if let Some(rw) = &r.rewrite_prefix {
            if !rw.starts_with('/')
                || http::uri::PathAndQuery::try_from(rw.as_str()).is_err()
                || rw.contains(['?', '#'])
            {
                p.push(Problem::new(
                    format!("{path}.rewrite_prefix"),
                    "must be a path starting with \"/\", without query or fragment",
                ));
            }
        }
        if let Some(rl) = &r.rate_limit {
            let rps = rl.requests_per_second;
            if !(rps.is_finite() && rps > 0.0 && rps <= 1e7) {
                p.push(Problem::new(
                    format!("{path}.rate_limit.requests_per_second"),
                    "must be above 0 (fractions allowed: 0.5 is one request every 2s) and at most 10,000,000",
                ));
            }
            if rl.burst == Some(0) {
                p.push(Problem::new(
                    format!("{path}.rate_limit.burst"),
                    "must be at least 1, or no request is ever admitted",
                ));
            }
        }
        for (key, rules) in [
            ("request_headers", &r.request_headers),
            ("response_headers", &r.response_headers),
        ] {
            let Some(rules) = rules else { continue };
            for (name, value) in &rules.set {
                let at = format!("{path}.{key}.set.{name}");
                if let Some(why) = header_name_problem(name) {
                    p.push(Problem::new(at.clone(), why));
                }
                if http::HeaderValue::from_str(value).is_err() {
                    p.push(Problem::new(
                        at,
                        "not a valid header value (control characters?)",
                    ));
                } else if key == "response_headers" && value.contains("${") {
                    p.push(Problem::new(
                        at,
                        "variables (`${...}`) are expanded in request_headers only",
                    ));
                } else if let Err(why) = crate::proxy::template::Template::parse(value) {
                    p.push(Problem::new(at, why));
                }
            }
            for name in rules.set.keys() {
                if same_name_earlier(rules.set.keys(), name) {
                    p.push(Problem::new(
                        format!("{path}.{key}.set.{name}"),
                        "named twice (header names have no case)",
                    ));
                }
            }
            for (j, name) in rules.remove.iter().enumerate() {
                if let Some(why) = header_name_problem(name) {
                    p.push(Problem::new(format!("{path}.{key}.remove[{j}]"), why));
                }
            }
        }
    }
    check_tcp_upstreams(cfg, &mut p);
    // Only HTTP listeners read routes; `tcp` ones name their upstreams themselves.
    let http = cfg.listeners.iter().any(|l| l.mode == ListenerMode::Http);
    if http && cfg.routes.is_empty() && cfg.upstreams.len() > 1 {
        p.push(Problem::new(
            "routes",
            "several upstreams are defined but no [[routes]] say which one serves what",
        ));
    }
    if cfg.upstreams.is_empty() {
        p.push(Problem::new(
            "upstreams",
            "at least one upstream is required",
        ));
    }
    for (name, u) in &cfg.upstreams {
        check_upstream(&format!("upstreams.{name}"), name, u, &mut p);
    }
    if let Some(c) = &cfg.cluster {
        if c.etcd.is_empty() {
            p.push(Problem::new(
                "cluster.etcd",
                "at least one etcd endpoint is required",
            ));
        }
        for (i, e) in c.etcd.iter().enumerate() {
            if e.trim().is_empty() || e.contains(char::is_whitespace) {
                p.push(Problem::new(
                    format!("cluster.etcd[{i}]"),
                    format!("{e:?} is not an endpoint like \"http://127.0.0.1:2379\""),
                ));
            }
        }
        if let Some(id) = &c.id {
            if let Err(m) = check_instance_id(id) {
                p.push(Problem::new("cluster.id", m));
            }
        }
    }
    // etcd discovery reads the etcd of [cluster]: one set of endpoints to configure and secure.
    for (name, u) in &cfg.upstreams {
        let etcd_discovery = u
            .discovery
            .as_ref()
            .is_some_and(|d| d.etcd_prefix.is_some());
        if etcd_discovery && cfg.cluster.as_ref().is_none_or(|c| c.etcd.is_empty()) {
            p.push(Problem::new(
                format!("upstreams.{name}.discovery.etcd_prefix"),
                "needs etcd endpoints: set [cluster] etcd = [\"http://HOST:2379\"]",
            ));
        }
    }
    if let Some(ep) = &cfg.log.otlp_endpoint {
        let ok = ep
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
        if !ok {
            p.push(Problem::new(
                "log.otlp_endpoint",
                format!("{ep:?} is not an http:// URL of an OTLP/HTTP collector"),
            ));
        }
    }
    if let Some(level) = &cfg.log.level {
        if tracing_subscriber::EnvFilter::try_new(level).is_err() {
            p.push(Problem::new(
                "log.level",
                format!("{level:?} is not a log level or filter"),
            ));
        }
    }
    p
}

fn check_admin(cfg: &Config, p: &mut Vec<Problem>) {
    // An empty token would be matched by an empty `Bearer `; an unreadable token file would
    // leave nothing to match (the API then refuses every request: see admin::auth).
    if cfg
        .admin
        .token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        p.push(Problem::new(
            "admin.token",
            "is empty; leave it out for no token".to_string(),
        ));
    }
    if let Some(f) = &cfg.admin.token_file {
        match std::fs::read_to_string(f) {
            Ok(t) if !t.trim().is_empty() => {}
            Ok(_) => p.push(Problem::new("admin.token_file", format!("{f} is empty"))),
            Err(e) => p.push(Problem::new(
                "admin.token_file",
                format!("cannot read {f}: {e}"),
            )),
        }
    }
    let Some(listen) = &cfg.admin.listen else {
        return;
    };
    match listen.parse::<SocketAddr>() {
        Ok(a) => {
            let token = cfg.admin.token.is_some() || cfg.admin.token_file.is_some();
            if !a.ip().is_loopback()
                && !token
                && std::env::var_os("SWITCHYARD_ADMIN_TOKEN").is_none()
            {
                p.push(Problem::new(
                    "admin.listen",
                    format!("{a} is not loopback; set admin.token, admin.token_file or SWITCHYARD_ADMIN_TOKEN"),
                ));
            }
        }
        Err(_) => p.push(Problem::new(
            "admin.listen",
            format!("{listen:?} is not an IP:port address"),
        )),
    }
}

/// Whether `address` is `host:port` with a valid port and a plausible host name or IP.
pub fn check_address(address: &str) -> Result<(), String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        // Port 0 can be bound but not connected to.
        return match a.port() {
            0 => Err(format!("{address:?} has an invalid port")),
            _ => Ok(()),
        };
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("{address:?} must be host:port"));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{address:?} has an invalid port"));
    }
    let host_ok = !host.is_empty()
        && host.parse::<IpAddr>().is_err()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !host_ok {
        return Err(format!("{address:?} has an invalid host"));
    }
    Ok(())
}

/// `"200-399"` or `"200"` into an inclusive range.
pub fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}

/// Why a route may not edit the header `name`: not a header name, or one that frames the
/// message or belongs to one connection, which Switchyard manages itself.
fn header_name_problem(name: &str) -> Option<String> {
    const MANAGED: [&str; 8] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
    ];
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Some(format!("{name:?} is not a header name"));
    }
    MANAGED
        .iter()
        .any(|m| m.eq_ignore_ascii_case(name))
        .then(|| {
            format!("{name} frames the message or belongs to one connection; Switchyard sets it")
        })
}

/// Largest weight of one side of a route's `split`, as for backends.
const MAX_SPLIT_WEIGHT: u32 = 10_000;

/// A route names one `upstream`, or a `split` across several, each an upstream that exists.
fn route_target(cfg: &Config, r: &RouteConfig, path: &str, p: &mut Vec<Problem>) {
    let known = |name: &str, field: String, p: &mut Vec<Problem>| {
        if !cfg.upstreams.contains_key(name) {
            p.push(Problem::new(field, format!("no upstream named {name:?}")));
        }
    };
    if let Some(resp) = &r.respond {
        if !r.upstream.is_empty() || !r.split.is_empty() || r.mirror.is_some() {
            p.push(Problem::new(
                format!("{path}.respond"),
                "a route that responds itself names no `upstream`, `split` or `mirror`",
            ));
        }
        // Keys about forwarding would be silently inert on a route that forwards nothing.
        for (key, given) in [
            ("rewrite_prefix", r.rewrite_prefix.is_some()),
            ("request_headers", r.request_headers.is_some()),
            ("timeout", r.timeout.is_some()),
            ("split_by", r.split_by.is_some()),
            ("compress", r.compress.is_some()),
        ] {
            if given {
                p.push(Problem::new(
                    format!("{path}.{key}"),
                    "has no effect on a route that responds itself (`respond`)",
                ));
            }
        }
        respond(resp, &format!("{path}.respond"), p);
        return;
    }
    match (r.upstream.is_empty(), r.split.is_empty()) {
        (true, true) => p.push(Problem::new(
            format!("{path}.upstream"),
            "required: the upstream that serves the route (or `split` across several, or `respond`)",
        )),
        (false, true) => known(&r.upstream, format!("{path}.upstream"), p),
        (no_upstream, false) => {
            if !no_upstream {
                p.push(Problem::new(
                    format!("{path}.split"),
                    "give either `upstream` or `split`, not both",
                ));
            }
            for (j, arm) in r.split.iter().enumerate() {
                let ap = format!("{path}.split[{j}]");
                known(&arm.upstream, format!("{ap}.upstream"), p);
                if r.split[..j].iter().any(|a| a.upstream == arm.upstream) {
                    p.push(Problem::new(
                        format!("{ap}.upstream"),
                        format!("{:?} is listed twice", arm.upstream),
                    ));
                }
                if arm.weight > MAX_SPLIT_WEIGHT {
                    p.push(Problem::new(
                        format!("{ap}.weight"),
                        format!("must be between 0 and {MAX_SPLIT_WEIGHT}"),
                    ));
                }
            }
            if r.split.iter().all(|a| a.weight == 0) {
                p.push(Problem::new(
                    format!("{path}.split"),
                    "the weights sum to 0: give some upstream a weight above 0",
                ));
            }
        }
    }
    match &r.split_by {
        Some(_) if r.split.is_empty() => p.push(Problem::new(
            format!("{path}.split_by"),
            "only used with `split`",
        )),
        Some(k) if k != "request" && crate::upstream::HashKey::parse(k).is_none() => {
            p.push(Problem::new(
                format!("{path}.split_by"),
                "must be \"request\", \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\"",
            ))
        }
        _ => {}
    }
}

/// Whether a key before `name` in `keys` (in order) names the same header in another case.
fn same_name_earlier<'a>(keys: impl Iterator<Item = &'a String>, name: &str) -> bool {
    keys.take_while(|k| k.as_str() != name)
        .any(|k| k.eq_ignore_ascii_case(name))
}

fn compress(c: &crate::config::CompressConfig, path: &str, p: &mut Vec<Problem>) {
    if !(1..=9).contains(&c.level) {
        p.push(Problem::new(
            format!("{path}.level"),
            "1 (fastest) to 9 (smallest)",
        ));
    }
    if c.content_types.is_empty() {
        p.push(Problem::new(
            format!("{path}.content_types"),
            "names no media type: nothing would be compressed",
        ));
    }
    for (j, t) in c.content_types.iter().enumerate() {
        // `type/subtype` or `type/*`, tokens only (RFC 9110 §8.3.1); no parameters.
        let ok = t.split_once('/').is_some_and(|(ty, sub)| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'-^_`.+|~".contains(&b))
            };
            token(ty) && (sub == "*" || token(sub))
        });
        if !ok {
            p.push(Problem::new(
                format!("{path}.content_types[{j}]"),
                format!("{t:?} is not a media type such as \"text/html\" or \"text/*\""),
            ));
        }
    }
}

/// A route's `auth`: an upstream that exists, a path to ask, header names.
fn auth(cfg: &Config, a: &crate::config::AuthConfig, path: &str, p: &mut Vec<Problem>) {
    if !cfg.upstreams.contains_key(&a.upstream) {
        p.push(Problem::new(
            format!("{path}.upstream"),
            format!("no upstream named {:?}", a.upstream),
        ));
    }
    let uri_ok = a.path.starts_with('/')
        && !a.path.contains('#')
        && http::uri::PathAndQuery::try_from(a.path.as_str()).is_ok();
    if !uri_ok {
        p.push(Problem::new(
            format!("{path}.path"),
            format!("{:?} is not a path (and query) such as \"/verify\"", a.path),
        ));
    }
    for (j, n) in a.request_headers.iter().flatten().enumerate() {
        if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
            p.push(Problem::new(
                format!("{path}.request_headers[{j}]"),
                format!("{n:?} is not a header name"),
            ));
        }
    }
    for (key, list) in [
        ("response_headers", &a.response_headers),
        ("client_headers", &a.client_headers),
    ] {
        for (j, n) in list.iter().enumerate() {
            if let Some(why) = header_name_problem(n) {
                p.push(Problem::new(format!("{path}.{key}[{j}]"), why));
            }
        }
    }
}

/// A route's `cors`: origins a browser sends (`scheme://host[:port]`, a `*.` wildcard host, or
/// `*`), methods and header names.
fn cors(c: &crate::config::CorsConfig, path: &str, p: &mut Vec<Problem>) {
    if c.allow_origins.is_empty() {
        p.push(Problem::new(
            format!("{path}.allow_origins"),
            "names no origin: every cross-origin request would be refused",
        ));
    }
    for (j, o) in c.allow_origins.iter().enumerate() {
        let at = format!("{path}.allow_origins[{j}]");
        if o == "*" {
            if c.allow_credentials {
                p.push(Problem::new(
                    at,
                    "`*` with allow_credentials would let any site read answers made with its visitors' cookies: list the origins",
                ));
            }
            continue;
        }
        let ok = o.split_once("://").is_some_and(|(scheme, host)| {
            let host = host.strip_prefix("*.").unwrap_or(host);
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
        if !ok {
            p.push(Problem::new(
                at,
                format!("{o:?} is not an origin such as \"https://app.example.com\", \"https://*.example.com\" or \"*\" (no path, no trailing slash)"),
            ));
        }
    }
    for (j, m) in c.allow_methods.iter().enumerate() {
        if m != "*" && http::Method::from_bytes(m.as_bytes()).is_err() {
            p.push(Problem::new(
                format!("{path}.allow_methods[{j}]"),
                format!("{m:?} is not a method"),
            ));
        }
    }
    for (key, list) in [
        ("allow_methods", &c.allow_methods),
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        for (j, n) in list.iter().enumerate() {
            if n == "*" && c.allow_credentials {
                // The Fetch standard takes `*` literally on a request with credentials.
                p.push(Problem::new(
                    format!("{path}.{key}[{j}]"),
                    "`*` means \"any\" only without credentials; with allow_credentials, list the names (or leave the list out to grant what is asked)",
                ));
            }
            if key == "allow_methods" {
                continue;
            }
            if n != "*" && http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                p.push(Problem::new(
                    format!("{path}.{key}[{j}]"),
                    format!("{n:?} is not a header name"),
                ));
            }
        }
    }
}

/// Largest body a route's `respond` may give: a page, not a file server.
const MAX_RESPOND_BODY: usize = 64 * 1024;

/// A route's own response: a status that is a final answer, a `Location` for redirects.
fn respond(r: &crate::config::RespondConfig, path: &str, p: &mut Vec<Problem>) {
    if !(200..=599).contains(&r.status) {
        p.push(Problem::new(
            format!("{path}.status"),
            "must be a final status, 200 to 599",
        ));
    }
    let redirect = matches!(r.status, 301 | 302 | 303 | 307 | 308);
    match &r.location {
        None if redirect => p.push(Problem::new(
            format!("{path}.location"),
            format!("required: where status {} redirects to", r.status),
        )),
        Some(l) => {
            if http::HeaderValue::from_str(l).is_err() || l.is_empty() {
                p.push(Problem::new(
                    format!("{path}.location"),
                    "not a valid header value",
                ));
            } else if let Err(why) = crate::proxy::template::Template::parse(l) {
                p.push(Problem::new(format!("{path}.location"), why));
            }
        }
        None => {}
    }
    if r.body.as_ref().is_some_and(|b| !b.is_empty()) && matches!(r.status, 204 | 304) {
        p.push(Problem::new(
            format!("{path}.body"),
            format!("a {} response has no body", r.status),
        ));
    }
    if r.body.as_ref().is_some_and(|b| b.contains("${")) {
        p.push(Problem::new(
            format!("{path}.body"),
            "variables (`${...}`) are expanded in `location` and request_headers only",
        ));
    }
    if r.body.as_ref().is_some_and(|b| b.len() > MAX_RESPOND_BODY) {
        p.push(Problem::new(
            format!("{path}.body"),
            format!("at most {MAX_RESPOND_BODY} bytes"),
        ));
    }
    if let Some(t) = &r.content_type {
        if http::HeaderValue::from_str(t).is_err() {
            p.push(Problem::new(
                format!("{path}.content_type"),
                "not a valid header value",
            ));
        }
    }
}

/// Every entry of a list of address blocks parses (`10.0.0.0/8`, an address).
pub(super) fn check_blocks(path: &str, list: &[String], p: &mut Vec<Problem>) {
    for (j, e) in list.iter().enumerate() {
        if let Err(e) = crate::proxy::real_ip::Cidr::parse(e) {
            p.push(Problem::new(format!("{path}[{j}]"), e));
        }
    }
}
