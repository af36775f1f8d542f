//! The shared configuration document in etcd and how it meets the local one.
//!
//! `{prefix}/config` holds the part of the configuration every instance shares: `routes` and
//! `upstreams`. It is written as TOML (JSON is accepted too: a document starting with `{`). The
//! other sections — `workers`, `admin`, `listeners`, `cluster`, `log` — describe one process (its
//! sockets, threads, etcd endpoints, log files) and always come from the instance's own file; if
//! a document in etcd has them they are ignored. A document is merged with the local sections,
//! has discovered backends overlaid, and goes through the one door with source `"etcd"` and
//! `persist = true`: the local file then holds the last cluster configuration, so an instance
//! restarted while etcd is down serves what the cluster last agreed on.

use crate::config::{Config, RouteConfig, UpstreamConfig};
use crate::state::{Applied, ApplyError, Shared};
use crate::upstream::discovery::Discovered;
use serde::Serialize;
use std::collections::BTreeMap;

/// Sources whose changes are not published to etcd: what came from etcd, what each instance
/// discovers for itself, and the start-up load.
pub fn is_local_change(source: &str) -> bool {
    !matches!(source, "etcd" | "discovery" | "start")
}

#[derive(Serialize, PartialEq, Clone, Debug)]
pub struct SharedPart {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
}

impl SharedPart {
    pub fn of(cfg: &Config) -> SharedPart {
        SharedPart {
            routes: cfg.routes.clone(),
            upstreams: cfg.upstreams.clone(),
        }
    }

    /// The text written to etcd.
    pub fn render(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Parses a document from etcd. Unknown keys are refused like in a file, so a typo in etcd is
/// reported rather than silently dropped; validation happens on the merged whole.
pub fn parse(bytes: &[u8]) -> Result<Config, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the value is not UTF-8".to_string())?;
    let mut unknown = Vec::new();
    let cfg: Config = if text.trim_start().starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_ignored::deserialize(&mut de, |p| unknown.push(p.to_string()))
            .map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        let de = toml::de::Deserializer::parse(text).map_err(|e| format!("invalid TOML: {e}"))?;
        serde_ignored::deserialize(de, |p| unknown.push(p.to_string()))
            .map_err(|e: toml::de::Error| format!("invalid TOML: {e}"))?
    };
    if !unknown.is_empty() {
        return Err(format!("unknown key(s): {}", unknown.join(", ")));
    }
    Ok(cfg)
}

/// The running configuration with its shared part replaced by `remote`'s.
pub fn merge(local: &Config, remote: &Config) -> Config {
    Config {
        routes: remote.routes.clone(),
        upstreams: remote.upstreams.clone(),
        ..local.clone()
    }
}

/// Applies a document read from etcd; `Err` carries every reason it was refused, and then
/// nothing changed.
pub fn apply(shared: &Shared, discovered: &Discovered, bytes: &[u8]) -> Result<Applied, String> {
    apply_as(shared, discovered, bytes, "etcd")
}

/// [`apply`] under another source name: `etcd-merge` for a local change replayed onto etcd's
/// document, which is then published like any local change.
pub fn apply_as(
    shared: &Shared,
    discovered: &Discovered,
    bytes: &[u8],
    source: &str,
) -> Result<Applied, String> {
    let remote = parse(bytes)?;
    for _ in 0..5 {
        let cur = shared.current();
        let mut cfg = merge(&cur.config, &remote);
        discovered.overlay(&mut cfg);
        match shared.apply_checked(cfg, source, true, Some(cur.version)) {
            Ok(a) => return Ok(a),
            Err(ApplyError::Conflict(_)) => continue,
            Err(ApplyError::Invalid(e)) => return Err(e.to_string()),
        }
    }
    Err("the local configuration kept changing; will retry on the next change".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_part_round_trips_and_local_sections_stay_local() {
        let local = crate::config::parse_config(
            "workers = 3\n[[listeners]]\nbind = \"127.0.0.1:8080\"\n[upstreams.a]\nbackends = [{ address = \"127.0.0.1:1\" }]\n",
            crate::config::Format::Toml,
            None,
        )
        .unwrap();
        let doc = "[upstreams.b]\nbackends = [{ address = \"127.0.0.1:2\", weight = 3 }]\n\
                   [[listeners]]\nbind = \"10.9.9.9:1\"\n";
        let remote = parse(doc.as_bytes()).unwrap();
        let merged = merge(&local, &remote);
        assert_eq!(merged.workers, Some(3));
        assert_eq!(merged.listeners[0].bind, "127.0.0.1:8080");
        assert!(merged.upstreams.contains_key("b") && !merged.upstreams.contains_key("a"));
        let text = SharedPart::of(&merged).render();
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!(SharedPart::of(&back), SharedPart::of(&merged));
        assert!(parse(b"[upstreams.b]\nbakends = []\n").is_err());
        assert!(parse(b"{\"upstreams\": {\"b\": {\"backends\": []}}}").is_ok());
        assert!(parse(b"[[[").is_err());
    }

    /// The merge replays documents in their JSON form; every kind of setting must come back
    /// from it unchanged.
    #[test]
    fn the_json_form_of_a_rich_shared_part_round_trips() {
        let cfg = crate::config::parse_config(
            "[[listeners]]\nbind = \"127.0.0.1:8080\"\n\
             [[routes]]\nhosts = [\"api.test\"]\npath_prefix = \"/v1\"\nupstream = \"api\"\n\
             [[routes]]\nupstream = \"web\"\n\
             [upstreams.web]\nalgorithm = \"weighted_round_robin\"\nslow_start = \"30s\"\n\
             backends = [{ address = \"127.0.0.1:1\", weight = 3 }, { address = \"127.0.0.1:2\", drain = true }]\n\
             health_check = { kind = \"http\", path = \"/healthz\", interval = \"2s\", expect_status = \"200-299\" }\n\
             passive_health = { consecutive_failures = 3, base_ejection = \"10s\" }\n\
             circuit_breaker = { failure_rate = 0.25, window = \"5s\", open_for = \"3s\" }\n\
             retry = { attempts = 3, on = [\"connect_failure\", \"503\"], backoff = \"10ms\", max_replay_body = \"8KiB\" }\n\
             timeouts = { connect = \"500ms\", request = \"4s\", idle = \"30s\" }\n\
             [upstreams.api]\nalgorithm = \"consistent_hash\"\nhash_key = \"header:x-user\"\n\
             backends = [{ address = \"127.0.0.1:3\" }]\n",
            crate::config::Format::Toml,
            None,
        )
        .unwrap();
        let part = SharedPart::of(&cfg);
        let json = serde_json::to_string(&part).unwrap();
        let back = parse(json.as_bytes()).unwrap();
        assert_eq!(SharedPart::of(&back), part, "{json}");
    }
}
