//! Validation: a separate pass over a parsed [`Config`] that returns every problem at once, each
//! with its field path (`upstreams.web.backends[1].address`), so `check` and the admin API can
//! report all mistakes in one go and nothing is applied while any remains.

use super::schema::*;
use super::size::parse_size;
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
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
            location: None,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{loc}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

const RETRY_ON: &[&str] = &[
    "connect_failure",
    "reset",
    "timeout",
    "429",
    "502",
    "503",
    "504",
];
pub const MAX_WEIGHT: u32 = 10_000;

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
        if let Some(s) = &l.max_request_body {
            if let Err(e) = parse_size(s) {
                p.push(Problem::new(format!("{path}.max_request_body"), e));
            }
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
        if !cfg.upstreams.contains_key(&r.upstream) {
            p.push(Problem::new(
                format!("{path}.upstream"),
                format!("no upstream named {:?}", r.upstream),
            ));
        }
        for (j, h) in r.hosts.iter().enumerate() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(' ') {
                p.push(Problem::new(
                    format!("{path}.hosts[{j}]"),
                    format!("{h:?} is not a host name or a wildcard like \"*.example.com\""),
                ));
            }
        }
        if let Some(pp) = &r.path_prefix {
            if !pp.starts_with('/') {
                p.push(Problem::new(
                    format!("{path}.path_prefix"),
                    "must start with \"/\"",
                ));
            }
        }
    }
    if cfg.routes.is_empty() && cfg.upstreams.len() > 1 {
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
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
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

fn check_upstream(path: &str, name: &str, u: &UpstreamConfig, p: &mut Vec<Problem>) {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        p.push(Problem::new(
            path,
            "upstream names use letters, digits, '-' and '_'",
        ));
    }
    let mut seen = HashSet::new();
    for (i, b) in u.backends.iter().enumerate() {
        let bp = format!("{path}.backends[{i}]");
        if let Err(e) = check_address(&b.address) {
            p.push(Problem::new(format!("{bp}.address"), e));
        }
        if !seen.insert(b.address.as_str()) {
            p.push(Problem::new(
                format!("{bp}.address"),
                format!("{} is listed twice", b.address),
            ));
        }
        if b.weight > MAX_WEIGHT {
            p.push(Problem::new(
                format!("{bp}.weight"),
                format!("must be between 0 and {MAX_WEIGHT}"),
            ));
        }
    }
    match (&u.algorithm, &u.hash_key) {
        (Algorithm::ConsistentHash, None) => {}
        (Algorithm::ConsistentHash, Some(k)) => {
            let ok = k == "client_ip"
                || k == "path"
                || k.strip_prefix("header:")
                    .is_some_and(|h| http::HeaderName::try_from(h).is_ok())
                || k.strip_prefix("cookie:").is_some_and(|c| !c.is_empty());
            if !ok {
                p.push(Problem::new(
                    format!("{path}.hash_key"),
                    "must be \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\"",
                ));
            }
        }
        (_, Some(_)) => p.push(Problem::new(
            format!("{path}.hash_key"),
            "only used with algorithm = \"consistent_hash\"",
        )),
        _ => {}
    }
    if u.protocol == Protocol::H2 && u.tls.as_ref().and_then(|t| t.enabled) == Some(false) {
        p.push(Problem::new(
            format!("{path}.protocol"),
            "\"h2\" is HTTP/2 over TLS; use \"h2c\" for cleartext",
        ));
    }
    if let Some(t) = &u.tls {
        if t.client_cert.is_some() != t.client_key.is_some() {
            p.push(Problem::new(
                format!("{path}.tls"),
                "client_cert and client_key go together",
            ));
        }
        for (field, message) in crate::proxy::connector::check(t) {
            p.push(Problem::new(format!("{path}.tls.{field}"), message));
        }
    }
    if let Some(d) = &u.discovery {
        let n = [&d.dns, &d.srv, &d.file, &d.etcd_prefix]
            .iter()
            .filter(|x| x.is_some())
            .count();
        if n != 1 {
            p.push(Problem::new(
                format!("{path}.discovery"),
                "set exactly one of dns, srv, file, etcd_prefix",
            ));
        }
        if let Some(dns) = &d.dns {
            if let Err(e) = check_address(dns) {
                p.push(Problem::new(format!("{path}.discovery.dns"), e));
            }
        }
        // An SRV name is a DNS name; its service and protocol labels start with '_'.
        if let Some(srv) = &d.srv {
            let ok = srv.trim_end_matches('.').split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
            if !ok {
                p.push(Problem::new(
                    format!("{path}.discovery.srv"),
                    format!("{srv:?} is not a DNS name like \"_http._tcp.web.example.com\""),
                ));
            }
        }
        for (key, v) in [("file", &d.file), ("etcd_prefix", &d.etcd_prefix)] {
            if v.as_deref().is_some_and(str::is_empty) {
                p.push(Problem::new(
                    format!("{path}.discovery.{key}"),
                    "must not be empty",
                ));
            }
        }
        if d.interval.is_some_and(|i| i.get().is_zero()) {
            p.push(Problem::new(
                format!("{path}.discovery.interval"),
                "must be greater than zero",
            ));
        }
    }
    for (key, v) in [
        ("connect", &u.timeouts.connect),
        ("request", &u.timeouts.request),
        ("idle", &u.timeouts.idle),
    ] {
        if v.is_some_and(|d| d.get().is_zero()) {
            p.push(Problem::new(
                format!("{path}.timeouts.{key}"),
                "must be greater than zero",
            ));
        }
    }
    if let Some(h) = &u.health_check {
        let hp = format!("{path}.health_check");
        if let Some(s) = &h.expect_status {
            if parse_status_range(s).is_none() {
                p.push(Problem::new(
                    format!("{hp}.expect_status"),
                    "must be a status or a range like \"200-399\"",
                ));
            }
        }
        if let Some(pa) = &h.path {
            if !pa.starts_with('/') {
                p.push(Problem::new(format!("{hp}.path"), "must start with \"/\""));
            }
        }
        if h.interval.is_some_and(|d| d.get().is_zero()) {
            p.push(Problem::new(
                format!("{hp}.interval"),
                "must be greater than zero",
            ));
        }
        for (k, v) in [
            ("healthy_threshold", h.healthy_threshold),
            ("unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if v == Some(0) {
                p.push(Problem::new(format!("{hp}.{k}"), "must be at least 1"));
            }
        }
    }
    if let Some(ph) = &u.passive_health {
        if ph.max_ejected_percent.is_some_and(|x| x > 100) {
            p.push(Problem::new(
                format!("{path}.passive_health.max_ejected_percent"),
                "must be 0-100",
            ));
        }
        if ph.consecutive_failures == Some(0) {
            p.push(Problem::new(
                format!("{path}.passive_health.consecutive_failures"),
                "must be at least 1",
            ));
        }
    }
    if let Some(cb) = &u.circuit_breaker {
        if cb.failure_rate.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
            p.push(Problem::new(
                format!("{path}.circuit_breaker.failure_rate"),
                "must be in (0, 1]",
            ));
        }
        if cb.half_open_probes == Some(0) {
            p.push(Problem::new(
                format!("{path}.circuit_breaker.half_open_probes"),
                "must be at least 1",
            ));
        }
    }
    if let Some(r) = &u.retry {
        let rp = format!("{path}.retry");
        if r.attempts.is_some_and(|a| a == 0 || a > 10) {
            p.push(Problem::new(
                format!("{rp}.attempts"),
                "must be between 1 and 10 (attempts include the first try)",
            ));
        }
        for (i, on) in r.on.iter().flatten().enumerate() {
            let status_ok = on
                .parse::<u16>()
                .is_ok_and(|s| s == 429 || (500..=599).contains(&s));
            if !RETRY_ON.contains(&on.as_str()) && !status_ok {
                p.push(Problem::new(
                    format!("{rp}.on[{i}]"),
                    format!(
                        "{on:?} is not one of {} (or another 5xx status)",
                        RETRY_ON.join(", ")
                    ),
                ));
            }
        }
        if r.budget_ratio.is_some_and(|b| !(0.0..=1.0).contains(&b)) {
            p.push(Problem::new(
                format!("{rp}.budget_ratio"),
                "must be between 0 and 1",
            ));
        }
        if let Some(s) = &r.max_replay_body {
            if let Err(e) = parse_size(s) {
                p.push(Problem::new(format!("{rp}.max_replay_body"), e));
            }
        }
    }
}

/// `"200-399"` or `"200"` into an inclusive range.
pub fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}
