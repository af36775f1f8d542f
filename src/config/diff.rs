//! What changed between two configurations, in words an operator reads in the UI, the API's
//! answers and the event log: `upstreams.web: added backend 127.0.0.1:9004 (weight 1)`.

use super::schema::{BackendConfig, Config, UpstreamConfig};
use std::collections::{HashMap, HashSet};

pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.workers != new.workers {
        out.push(format!(
            "workers: {:?} -> {:?} (takes effect at restart)",
            old.workers, new.workers
        ));
    }
    if old.admin != new.admin {
        out.push("admin: changed (listen address takes effect at restart)".into());
    }
    if old.listeners != new.listeners {
        out.push("listeners: changed (bind addresses take effect at restart)".into());
    }
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
    let strip = |u: &UpstreamConfig| UpstreamConfig {
        backends: Vec::new(),
        ..u.clone()
    };
    if strip(o) != strip(n) {
        out.push(format!("upstreams.{name}: settings changed"));
    }
}
