//! DNS discovery: `dns = "name:port"` (A and AAAA records, every address on that port) and
//! `srv = "_service._proto.name"` (SRV records: each target's addresses on the record's port,
//! with the record's weight).
//!
//! Re-resolution honours TTLs: the next lookup happens after the shorter of `interval` (default
//! 30s) and the answer's TTL, but not sooner than 1s (or `interval`, if shorter), so an answer
//! is never used past its TTL and a zero TTL cannot make us hammer the server. The resolver's own cache is cleared before each
//! lookup because this loop is the cache.
//!
//! An error or an empty answer (NXDOMAIN, no records) counts as a failure: the last known set
//! stays, as HAProxy's resolvers `hold` servers, since a DNS hiccup must not empty an upstream.
//! SRV: only the lowest priority present is used (RFC 2782: higher ones are fallbacks), and a
//! weight of 0 — "rarely, when nothing else" in RFC 2782 — becomes 1, since 0 means drain here.
//!
//! Name servers come from the system (`/etc/resolv.conf`), or from `SWITCHYARD_DNS_SERVERS`
//! (`"10.0.0.2:53,10.0.0.3:53"`, e.g. a Consul agent), or from [`set_nameservers`] (embedding,
//! tests).

use super::Reporter;
use crate::config::BackendConfig;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const MIN_INTERVAL: Duration = Duration::from_secs(1);

static NAMESERVERS: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

/// Uses these name servers (UDP, then TCP) for DNS discovery sources started from now on,
/// instead of the system's. Process-wide: for embedding and tests.
pub fn set_nameservers(servers: Vec<SocketAddr>) {
    *NAMESERVERS.lock().unwrap_or_else(|e| e.into_inner()) = servers;
}

fn nameservers() -> Vec<SocketAddr> {
    let set = NAMESERVERS.lock().map(|v| v.clone()).unwrap_or_default();
    if !set.is_empty() {
        return set;
    }
    std::env::var("SWITCHYARD_DNS_SERVERS")
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn resolver() -> Result<TokioResolver, String> {
    let servers = nameservers();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("no system resolver: {e}"))?
    } else {
        let mut cfg = ResolverConfig::new();
        for s in servers {
            cfg.add_name_server(NameServerConfig::new(s, Protocol::Udp));
            cfg.add_name_server(NameServerConfig::new(s, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(cfg, TokioConnectionProvider::default())
            .with_options(ResolverOpts::default())
    };
    // Names are written fully qualified or as the operator meant them; search domains would
    // turn one failing lookup into several slow ones.
    builder.options_mut().ndots = 0;
    builder.options_mut().timeout = Duration::from_secs(2);
    builder.options_mut().attempts = 2;
    Ok(builder.build())
}

fn next_wait(interval: Option<Duration>, valid_until: Option<Instant>) -> Duration {
    let mut wait = interval.unwrap_or(DEFAULT_INTERVAL);
    if let Some(until) = valid_until {
        wait = wait.min(until.saturating_duration_since(Instant::now()));
    }
    wait.max(MIN_INTERVAL.min(interval.unwrap_or(MIN_INTERVAL)))
}

fn socket(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// A and AAAA records of `host` in `"host:port"`.
pub async fn run_a(host_port: String, interval: Option<Duration>, rep: Reporter) {
    let Some((host, port)) = host_port
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
    else {
        rep.failed(format!("{host_port:?} is not name:port"));
        return;
    };
    let resolver = match resolver() {
        Ok(r) => r,
        Err(e) => return rep.failed(e),
    };
    loop {
        resolver.clear_cache();
        let mut until = None;
        match resolver.lookup_ip(host.as_str()).await {
            Ok(found) => {
                until = Some(found.valid_until());
                let list: Vec<BackendConfig> = found
                    .iter()
                    .map(|ip| backend(socket(ip, port), 1))
                    .collect();
                if list.is_empty() {
                    rep.failed(format!("{host}: no A/AAAA records"));
                } else {
                    rep.found(list);
                }
            }
            Err(e) => rep.failed(format!("{host}: {e}")),
        }
        tokio::time::sleep(next_wait(interval, until)).await;
    }
}

/// SRV records of `name`, each target resolved to its addresses.
pub async fn run_srv(name: String, interval: Option<Duration>, rep: Reporter) {
    let resolver = match resolver() {
        Ok(r) => r,
        Err(e) => return rep.failed(e),
    };
    loop {
        resolver.clear_cache();
        let (result, until) = lookup_srv(&resolver, &name).await;
        match result {
            Ok(list) if !list.is_empty() => rep.found(list),
            Ok(_) => rep.failed(format!("{name}: no usable SRV records")),
            Err(e) => rep.failed(e),
        }
        tokio::time::sleep(next_wait(interval, until)).await;
    }
}

async fn lookup_srv(
    resolver: &TokioResolver,
    name: &str,
) -> (Result<Vec<BackendConfig>, String>, Option<Instant>) {
    let srv = match resolver.srv_lookup(name).await {
        Ok(s) => s,
        Err(e) => return (Err(format!("{name}: {e}")), None),
    };
    let mut until = srv.as_lookup().valid_until();
    let Some(best) = srv.iter().map(|r| r.priority()).min() else {
        return (Ok(Vec::new()), Some(until));
    };
    let mut list = Vec::new();
    for r in srv.iter().filter(|r| r.priority() == best) {
        let target = r.target().to_utf8();
        // A target that does not resolve right now is skipped; the others still serve.
        match resolver.lookup_ip(target.as_str()).await {
            Ok(ips) => {
                until = until.min(ips.valid_until());
                list.extend(
                    ips.iter()
                        .map(|ip| backend(socket(ip, r.port()), u32::from(r.weight()).max(1))),
                );
            }
            Err(e) => tracing::warn!("discovery: SRV target {target} of {name}: {e}"),
        }
    }
    (Ok(list), Some(until))
}

fn backend(address: String, weight: u32) -> BackendConfig {
    BackendConfig {
        address,
        weight: weight.min(crate::config::validate::MAX_WEIGHT),
        drain: false,
        backup: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_follow_ttl_and_interval_with_a_floor() {
        let soon = Some(Instant::now() + Duration::from_millis(100));
        let later = Some(Instant::now() + Duration::from_secs(300));
        assert_eq!(next_wait(None, soon), MIN_INTERVAL);
        assert!(next_wait(None, later) <= DEFAULT_INTERVAL);
        let short = Some(Duration::from_millis(200));
        assert_eq!(next_wait(short, later), Duration::from_millis(200));
        assert!(next_wait(Some(Duration::from_secs(60)), later) <= Duration::from_secs(60));
    }
}
