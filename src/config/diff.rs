//! What changed between two configurations, in words an operator reads in the UI, the API's
//! answers and the event log: `upstreams.web: added backend 127.0.0.1:9004 (weight 1)`.

use super::schema::{
    AdminConfig, BackendConfig, Config, ListenerConfig, ListenerMode, UpstreamConfig,
};
use std::collections::{HashMap, HashSet};

pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.workers != new.workers {
        let n = |w: Option<usize>| w.map_or("one per CPU".to_string(), |w| w.to_string());
        out.push(format!(
            "workers: {} -> {} (takes effect at restart)",
            n(old.workers),
            n(new.workers)
        ));
    }
    admin_diff(&old.admin, &new.admin, &mut out);
    listeners_diff(&old.listeners, &new.listeners, &mut out);
    if old.routes != new.routes {
        out.push(format!(
            "routes: {} -> {} route(s)",
            old.routes.len(),
            new.routes.len()
        ));
    }
    for (name, u) in &new.upstreams {
        match old.upstreams.get(name) {
            None => out.push(format!(
                "upstreams.{name}: added with {} backend(s)",
                u.backends.len()
            )),
            Some(o) => upstream_diff(name, o, u, &mut out),
        }
    }
    for name in old
        .upstreams
        .keys()
        .filter(|n| !new.upstreams.contains_key(*n))
    {
        out.push(format!("upstreams.{name}: removed"));
    }
    if old.cluster != new.cluster {
        out.push("cluster: changed".into());
    }
    if old.log != new.log {
        out.push("log: changed".into());
    }
    out
}

fn upstream_diff(name: &str, o: &UpstreamConfig, n: &UpstreamConfig, out: &mut Vec<String>) {
    // Indexed once, so a change to an upstream of 10,000 backends costs O(n), not O(n²).
    let old: HashMap<&str, &BackendConfig> =
        o.backends.iter().map(|b| (b.address.as_str(), b)).collect();
    let new: HashSet<&str> = n.backends.iter().map(|b| b.address.as_str()).collect();
    for b in &n.backends {
        match old.get(b.address.as_str()) {
            None => out.push(format!(
                "upstreams.{name}: added backend {} (weight {})",
                b.address, b.weight
            )),
            Some(prev) => {
                if prev.weight != b.weight {
                    out.push(format!(
                        "upstreams.{name}: backend {} weight {} -> {}",
                        b.address, prev.weight, b.weight
                    ));
                }
                if prev.drain != b.drain {
                    let what = if b.drain { "draining" } else { "undrained" };
                    out.push(format!("upstreams.{name}: backend {} {what}", b.address));
                }
                if prev.backup != b.backup {
                    let what = if b.backup {
                        "now a backup"
                    } else {
                        "no longer a backup"
                    };
                    out.push(format!("upstreams.{name}: backend {} {what}", b.address));
                }
                // Whatever else a backend may carry one day: a change is never lost for want
                // of a line describing it (an empty diff applies nothing).
                if **prev != *b
                    && (prev.weight, prev.drain, prev.backup) == (b.weight, b.drain, b.backup)
                {
                    out.push(format!("upstreams.{name}: backend {} changed", b.address));
                }
            }
        }
    }
    for b in o
        .backends
        .iter()
        .filter(|b| !new.contains(b.address.as_str()))
    {
        out.push(format!(
            "upstreams.{name}: removed backend {} (drains)",
            b.address
        ));
    }
    // Other settings: name each top-level key that changed (`health_check`, `retry`, ...).
    let fields = |u: &UpstreamConfig| match serde_json::to_value(UpstreamConfig {
        backends: Vec::new(),
        ..u.clone()
    }) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (fields(o), fields(n));
    let mut keys: Vec<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        out.push(format!("upstreams.{name}.{k}: changed"));
    }
}

/// Each admin setting on its own line, saying when it takes effect: the listen address at
/// restart, the token at once (it is read per request). The token itself is never shown.
fn admin_diff(old: &AdminConfig, new: &AdminConfig, out: &mut Vec<String>) {
    if old.listen != new.listen {
        let n = |l: &Option<String>| l.clone().unwrap_or_else(|| "127.0.0.1:5000".into());
        out.push(format!(
            "admin.listen: {} -> {} (takes effect at restart)",
            n(&old.listen),
            n(&new.listen)
        ));
    }
    if old.token != new.token {
        let what = match (&old.token, &new.token) {
            (None, _) => "set",
            (_, None) => "removed",
            _ => "changed",
        };
        out.push(format!("admin.token: {what} (takes effect now)"));
    }
    if old.token_file != new.token_file {
        let n = |f: &Option<String>| f.clone().unwrap_or_else(|| "none".into());
        out.push(format!(
            "admin.token_file: {} -> {} (takes effect now)",
            n(&old.token_file),
            n(&new.token_file)
        ));
    }
}

/// A `tcp` listener's `upstream` and `sni_routes` apply to its next connections; everything
/// else about listeners (addresses, sockets, modes) waits for a restart.
fn listeners_diff(old: &[ListenerConfig], new: &[ListenerConfig], out: &mut Vec<String>) {
    let socket_side = |ls: &[ListenerConfig]| -> Vec<ListenerConfig> {
        ls.iter()
            .map(|l| ListenerConfig {
                upstream: None,
                sni_routes: Vec::new(),
                send_proxy_protocol: None,
                ip_allow: Vec::new(),
                ip_deny: Vec::new(),
                idle_timeout: None,
                ..l.clone()
            })
            .collect()
    };
    if socket_side(old) != socket_side(new) {
        out.push(
            "listeners: changed (bind addresses and socket options take effect at restart)".into(),
        );
    }
    for (i, (o, n)) in old.iter().zip(new).enumerate() {
        // The running socket takes the new routing only if it is the same tcp listener still
        // (the data plane finds its section by place, `bind` and `mode`).
        let same_socket = o.bind == n.bind && o.mode == n.mode && n.mode == ListenerMode::Tcp;
        if same_socket && o.upstream != n.upstream
            || o.sni_routes != n.sni_routes
            || o.send_proxy_protocol != n.send_proxy_protocol
            || o.ip_allow != n.ip_allow
            || o.ip_deny != n.ip_deny
            || o.idle_timeout != n.idle_timeout
        {
            let to = n.upstream.as_deref().unwrap_or("-");
            out.push(format!(
                "listeners[{i}]: tcp connections now go to {to} ({} sni route(s), {} allowed and {} denied block(s))",
                n.sni_routes.len(),
                n.ip_allow.len(),
                n.ip_deny.len()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Dur, HealthCheckConfig};

    #[test]
    fn names_backends_and_changed_settings() {
        let mut old = Config::default();
        let up = UpstreamConfig {
            backends: vec![BackendConfig {
                address: "10.0.0.1:80".into(),
                weight: 1,
                drain: false,
                backup: false,
            }],
            ..UpstreamConfig::default()
        };
        old.upstreams.insert("web".into(), up);
        let mut new = old.clone();
        let web = new.upstreams.get_mut("web").unwrap();
        web.backends[0].weight = 3;
        web.backends.push(BackendConfig {
            address: "10.0.0.2:80".into(),
            weight: 1,
            drain: false,
            backup: false,
        });
        web.health_check = Some(HealthCheckConfig {
            interval: Some(Dur::secs(1)),
            ..HealthCheckConfig::default()
        });
        assert_eq!(
            diff(&old, &new),
            [
                "upstreams.web: backend 10.0.0.1:80 weight 1 -> 3",
                "upstreams.web: added backend 10.0.0.2:80 (weight 1)",
                "upstreams.web.health_check: changed",
            ]
        );
    }

    #[test]
    fn a_tcp_listener_routing_change_is_live_and_a_mode_change_waits() {
        let mut old = Config::default();
        old.listeners.push(ListenerConfig {
            bind: "127.0.0.1:5432".into(),
            mode: crate::config::ListenerMode::Tcp,
            upstream: Some("a".into()),
            ..ListenerConfig::default()
        });
        let mut new = old.clone();
        new.listeners[0].upstream = Some("b".into());
        assert_eq!(
            diff(&old, &new),
            ["listeners[0]: tcp connections now go to b (0 sni route(s), 0 allowed and 0 denied block(s))"]
        );
        // A listener that stops being tcp takes nothing live; another listener's restart-only
        // change does not hide a live one.
        let mut moved = new.clone();
        moved.listeners[0].mode = crate::config::ListenerMode::Http;
        assert_eq!(
            diff(&old, &moved),
            ["listeners: changed (bind addresses and socket options take effect at restart)"]
        );
        new.listeners.push(ListenerConfig {
            bind: "127.0.0.1:8080".into(),
            ..ListenerConfig::default()
        });
        old.listeners.push(ListenerConfig {
            bind: "127.0.0.1:8081".into(),
            ..ListenerConfig::default()
        });
        assert_eq!(
            diff(&old, &new),
            [
                "listeners: changed (bind addresses and socket options take effect at restart)",
                "listeners[0]: tcp connections now go to b (0 sni route(s), 0 allowed and 0 denied block(s))"
            ]
        );
    }

    #[test]
    fn an_admin_change_says_which_setting_and_when_it_takes_effect() {
        let old = Config::default();
        let mut new = old.clone();
        new.admin.token = Some("s3cret".into());
        assert_eq!(diff(&old, &new), ["admin.token: set (takes effect now)"]);
        let mut newer = new.clone();
        newer.admin.token = Some("other-secret".into());
        newer.admin.listen = Some("127.0.0.1:6000".into());
        let d = diff(&new, &newer);
        assert_eq!(
            d,
            [
                "admin.listen: 127.0.0.1:5000 -> 127.0.0.1:6000 (takes effect at restart)",
                "admin.token: changed (takes effect now)",
            ]
        );
        assert!(!d.concat().contains("secret"), "the token is never shown");
    }
}
