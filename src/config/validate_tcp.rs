//! Validation of a listener's `mode`: a `tcp` listener names where its connections go
//! (`upstream`, `sni_routes`) and none of the keys that only mean something for HTTP; an `http`
//! listener names none of the `tcp` keys. Each problem carries its field path.

use super::schema::*;
use super::validate::{check_blocks, Problem};
use std::collections::HashSet;

pub(super) fn check_mode(cfg: &Config, l: &ListenerConfig, path: &str, p: &mut Vec<Problem>) {
    if l.mode != ListenerMode::Tcp {
        for (key, given) in [
            ("upstream", l.upstream.is_some()),
            ("sni_routes", !l.sni_routes.is_empty()),
            ("send_proxy_protocol", l.send_proxy_protocol.is_some()),
            ("ip_allow", !l.ip_allow.is_empty()),
            ("ip_deny", !l.ip_deny.is_empty()),
            ("idle_timeout", l.idle_timeout.is_some()),
        ] {
            if given {
                p.push(Problem::new(
                    format!("{path}.{key}"),
                    "only for `mode = \"tcp\"`: an HTTP listener's requests go where `[[routes]]` send them, with their own `ip_allow`/`ip_deny`",
                ));
            }
        }
        return;
    }
    // Keys that a relay of unread bytes would silently ignore.
    let tls = l.tls.as_ref();
    for (key, given) in [
        ("max_request_body", l.max_request_body.is_some()),
        ("header_timeout", l.header_timeout.is_some()),
        ("trusted_proxies", !l.trusted_proxies.is_empty()),
        ("ambiguous_paths", l.ambiguous_paths != AmbiguousPaths::Keep),
        (
            "tls.redirect_https",
            tls.is_some_and(|t| t.redirect_https.is_some()),
        ),
        ("tls.hsts", tls.is_some_and(|t| t.hsts.is_some())),
    ] {
        if given {
            p.push(Problem::new(
                format!("{path}.{key}"),
                "has no effect on a `tcp` listener, which reads no HTTP",
            ));
        }
    }
    if l.idle_timeout.is_some_and(|d| d.get().is_zero()) {
        p.push(Problem::new(
            format!("{path}.idle_timeout"),
            "must be above 0, or every connection would be closed at once",
        ));
    }
    check_blocks(&format!("{path}.ip_allow"), &l.ip_allow, p);
    check_blocks(&format!("{path}.ip_deny"), &l.ip_deny, p);
    if let Some(v) = &l.send_proxy_protocol {
        if v != "v1" && v != "v2" {
            p.push(Problem::new(
                format!("{path}.send_proxy_protocol"),
                format!("{v:?}: must be \"v1\" or \"v2\""),
            ));
        }
    }
    if l.upstream.is_none() && l.sni_routes.is_empty() {
        p.push(Problem::new(
            format!("{path}.upstream"),
            "required for `mode = \"tcp\"`: the upstream that takes the connections (or `sni_routes`)",
        ));
    }
    if let Some(u) = &l.upstream {
        known_upstream(cfg, u, format!("{path}.upstream"), p);
    }
    // Passed through unopened, the client's TLS must reach the backend as it is: an upstream
    // that speaks TLS itself would wrap it in a second session no backend can read.
    if !l.sni_routes.is_empty() && tls.is_none_or(|t| t.certificates.is_empty()) {
        let names = l
            .upstream
            .iter()
            .chain(l.sni_routes.iter().map(|r| &r.upstream));
        for name in names {
            if cfg
                .upstreams
                .get(name)
                .is_some_and(|u| u.tls.as_ref().is_some_and(|t| t.enabled != Some(false)))
            {
                p.push(Problem::new(
                    format!("upstreams.{name}.tls"),
                    format!(
                        "{path} passes its clients' TLS through to {name:?} unopened; TLS from Switchyard to the backend would wrap it in a second session"
                    ),
                ));
            }
        }
    }
    let mut seen = HashSet::new();
    for (i, r) in l.sni_routes.iter().enumerate() {
        let at = format!("{path}.sni_routes[{i}]");
        known_upstream(cfg, &r.upstream, format!("{at}.upstream"), p);
        if r.hosts.is_empty() {
            p.push(Problem::new(
                format!("{at}.hosts"),
                "at least one server name (`\"db.example.com\"` or `\"*.example.com\"`)",
            ));
        }
        for (j, h) in r.hosts.iter().enumerate() {
            let at = format!("{at}.hosts[{j}]");
            let bare = h.strip_prefix("*.").unwrap_or(h);
            let label_ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 63
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if !bare.split('.').all(label_ok) {
                p.push(Problem::new(
                    at,
                    format!("{h:?} is not a server name or a wildcard like \"*.example.com\""),
                ));
            } else if h.bytes().any(|b| b.is_ascii_uppercase()) {
                // Server names are compared lowercased; an uppercase entry would never match.
                p.push(Problem::new(
                    at,
                    format!(
                        "server names are matched in lowercase: write {:?}",
                        h.to_ascii_lowercase()
                    ),
                ));
            } else if !seen.insert(h.as_str()) {
                p.push(Problem::new(
                    at,
                    format!("{h:?} is routed by an earlier entry"),
                ));
            }
        }
    }
}

/// `name` is an upstream that can carry a TCP connection's bytes.
fn known_upstream(cfg: &Config, name: &str, field: String, p: &mut Vec<Problem>) {
    match cfg.upstreams.get(name) {
        None => p.push(Problem::new(field, format!("no upstream named {name:?}"))),
        Some(u) if u.protocol != Protocol::Http1 => p.push(Problem::new(
            field,
            format!(
                "upstream {name:?} speaks HTTP/2 (`protocol`); a TCP connection's bytes go to a \
                 backend as they are, so it needs `protocol = \"http1\"` (the default)"
            ),
        )),
        Some(_) => {}
    }
}

/// Upstreams that only `tcp` listeners use: settings that need an HTTP request, which such an
/// upstream never sees, are refused rather than silently ignored.
pub(super) fn check_tcp_upstreams(cfg: &Config, p: &mut Vec<Problem>) {
    let tcp = cfg.listeners.iter().filter(|l| l.mode == ListenerMode::Tcp);
    let mut names: Vec<&String> = tcp
        .flat_map(|l| {
            l.upstream
                .iter()
                .chain(l.sni_routes.iter().map(|r| &r.upstream))
        })
        .collect();
    names.sort();
    names.dedup();
    let by_route = |name: &str| {
        cfg.routes.iter().any(|r| {
            r.upstream == name
                || r.split.iter().any(|s| s.upstream == name)
                || r.mirror.as_ref().is_some_and(|m| m.upstream == name)
                || r.auth.as_ref().is_some_and(|a| a.upstream == name)
        })
    };
    let http_listener = cfg.listeners.iter().any(|l| l.mode == ListenerMode::Http);
    for name in names {
        let Some(u) = cfg.upstreams.get(name) else {
            continue;
        };
        // With no routes, a lone upstream also takes the HTTP listeners' requests.
        if by_route(name) || (http_listener && cfg.routes.is_empty()) {
            continue;
        }
        let at = format!("upstreams.{name}");
        if u.sticky.is_some() {
            p.push(Problem::new(
                format!("{at}.sticky"),
                "a cookie needs HTTP: this upstream only takes tcp listeners' connections",
            ));
        }
        if u.hash_key.as_deref().is_some_and(|k| k != "client_ip") {
            p.push(Problem::new(
                format!("{at}.hash_key"),
                "a tcp connection has no path, header or cookie to hash: use \"client_ip\"",
            ));
        }
        if let Some(h) = &u.health_check {
            if h.kind == CheckKind::Http && h.path.is_none() {
                p.push(Problem::new(
                    format!("{at}.health_check.kind"),
                    "checks default to HTTP, which a tcp listener's backends may not speak: set kind = \"tcp\" (or give the HTTP `path` they answer)",
                ));
            }
        }
    }
}
