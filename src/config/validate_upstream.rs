//! Validation of one `[upstreams.NAME]` section: backends, algorithm and hash key, protocol and
//! TLS, discovery, timeouts, health checks, passive health, circuit breaker and retries. Called by
//! [`super::validate::validate`] for every upstream; each problem carries its field path.

use super::schema::*;
use super::size::parse_size;
use super::validate::{check_address, parse_status_range, Problem, MAX_WEIGHT};
use std::collections::HashSet;

const RETRY_ON: &[&str] = &[
    "connect_failure",
    "reset",
    "timeout",
    "429",
    "502",
    "503",
    "504",
];

pub(super) fn check_upstream(path: &str, name: &str, u: &UpstreamConfig, p: &mut Vec<Problem>) {
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
    // 0 would refuse every request (HAProxy reads `maxconn 0` as "no limit"): say which.
    if u.max_connections == Some(0) {
        p.push(Problem::new(
            format!("{path}.max_connections"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    if let Some(s) = &u.sticky {
        check_sticky(&format!("{path}.sticky"), s, p);
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
        (Algorithm::ConsistentHash, Some(k)) if crate::upstream::HashKey::parse(k).is_none() => p
            .push(Problem::new(
                format!("{path}.hash_key"),
                "must be \"client_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\"",
            )),
        (Algorithm::ConsistentHash, _) => {}
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
    // The connector turns TLS on for any enabled `tls` table, so h2c with one would quietly be
    // h2 over TLS: the operator asked for one thing and gets the other.
    if u.protocol == Protocol::H2c && u.tls.as_ref().is_some_and(|t| t.enabled != Some(false)) {
        p.push(Problem::new(
            format!("{path}.protocol"),
            "\"h2c\" is cleartext HTTP/2 but tls is enabled; use \"h2\" for HTTP/2 over TLS, or tls.enabled = false",
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

/// A sticky-session cookie a browser will store and send back.
fn check_sticky(path: &str, s: &StickyConfig, p: &mut Vec<Problem>) {
    if let Some(c) = &s.cookie {
        // A cookie name is an RFC 9110 token.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if c.is_empty() || !c.bytes().all(token) {
            p.push(Problem::new(
                format!("{path}.cookie"),
                "a cookie name uses letters, digits and !#$%&'*+-.^_`|~ only",
            ));
        }
    }
    if s.max_age.is_some_and(|d| d.get().as_secs() == 0) {
        p.push(Problem::new(
            format!("{path}.max_age"),
            "must be at least 1s (0 deletes the cookie; leave it out for a session cookie)",
        ));
    }
    match s.same_site.as_deref() {
        None | Some("Strict" | "Lax") => {}
        Some("None") if s.secure != Some(true) => p.push(Problem::new(
            format!("{path}.same_site"),
            "\"None\" needs secure = true: browsers drop such a cookie otherwise",
        )),
        Some("None") => {}
        Some(_) => p.push(Problem::new(
            format!("{path}.same_site"),
            "must be \"Strict\", \"Lax\" or \"None\"",
        )),
    }
}
