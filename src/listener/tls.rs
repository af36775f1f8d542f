//! TLS termination for `[listeners.tls]`: a rustls `ServerConfig` per listener with certificates
//! chosen by SNI, TLS 1.2/1.3 (`min_version`), ALPN `h2` and `http/1.1`, session resumption, and
//! optional client-certificate verification (mTLS) against `client_ca`.
//!
//! The whole per-listener TLS state sits behind one `ArcSwap`: every handshake loads it once, and
//! [`spawn_reloader`] rebuilds it off the hot path when a certificate, key or CA file changes on
//! disk, or when the listener's `tls` section changes in a reloaded configuration (SIGHUP, API).
//! A broken new file is refused with a logged error and the previous state is kept, so a bad
//! deploy of a certificate never takes HTTPS down. Open connections keep the state they started
//! with; only new handshakes see the new certificate.

use super::certs::{self, Loaded};
use crate::config::ListenerTls;
use crate::state::Shared;
use arc_swap::ArcSwap;
use http::HeaderValue;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often certificate files are looked at. Half a second makes a `cp` of a renewed certificate
/// take effect before an operator can check it, for the cost of a few `stat` calls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What a handshake needs, swapped whole on reload.
pub struct TlsState {
    pub server: Arc<ServerConfig>,
    /// `Strict-Transport-Security` value added to every response on this listener.
    pub hsts: Option<HeaderValue>,
    /// Plain HTTP arriving on this TLS port is answered with a redirect to https.
    pub redirect_plain: bool,
}

/// One TLS listener: its current state and what the reloader last saw on disk.
pub struct TlsListener {
    /// The listener's `bind`, to find its section in later configurations.
    bind: String,
    state: ArcSwap<TlsState>,
    // Kept across rebuilds so session tickets and cached sessions survive a certificate swap.
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    seen: Mutex<Seen>,
    /// Offers HTTP's ALPN protocols (`h2`, `http/1.1`); a `tcp` listener offers none, since
    /// what it carries is not for it to name.
    http: bool,
}

/// The configuration and file fingerprints the current state was built from (or last refused).
struct Seen {
    cfg: ListenerTls,
    files: Vec<Option<(SystemTime, u64)>>,
}

impl TlsListener {
    /// Builds the listener's TLS state; the error names the file and what is wrong with it.
    pub fn new(bind: &str, cfg: &ListenerTls, http: bool) -> Result<Arc<TlsListener>, String> {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| format!("cannot create TLS session ticket keys: {e}"))?;
        // 4096 sessions is NGINX's `ssl_session_cache shared:SSL:1m` order of magnitude.
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(4096);
        let files = fingerprint(cfg);
        let state = build(cfg, &ticketer, &sessions, http)?;
        Ok(Arc::new(TlsListener {
            bind: bind.to_string(),
            state: ArcSwap::from_pointee(state),
            ticketer,
            sessions,
            seen: Mutex::new(Seen {
                cfg: cfg.clone(),
                files,
            }),
            http,
        }))
    }

    /// The state for a new handshake.
    pub fn current(&self) -> Arc<TlsState> {
        self.state.load_full()
    }

    /// Rebuilds when `cfg` or any of its files changed since last time; keeps the old state when
    /// the new material is broken.
    fn refresh(&self, cfg: &ListenerTls) {
        let files = fingerprint(cfg);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.cfg == *cfg && seen.files == files {
            return;
        }
        match build(cfg, &self.ticketer, &self.sessions, self.http) {
            Ok(state) => {
                self.state.store(Arc::new(state));
                crate::observe::metrics::tls_reload(true);
                tracing::info!(listener = %self.bind, "TLS certificates reloaded");
            }
            Err(e) => {
                crate::observe::metrics::tls_reload(false);
                let why = format!("listener {}: {e}", self.bind);
                crate::events::emit("reload_failed", None, None, format!("TLS {why}"));
                tracing::error!("TLS reload refused, keeping the previous certificates: {why}");
            }
        }
        *seen = Seen {
            cfg: cfg.clone(),
            files,
        };
    }
}

/// Every file a `tls` section reads, in a fixed order.
fn paths(cfg: &ListenerTls) -> impl Iterator<Item = &str> {
    cfg.certificates
        .iter()
        .flat_map(|p| [p.cert.as_str(), p.key.as_str()])
        .chain(cfg.client_ca.as_deref())
}

/// Modification time and size of each file; `None` for one that cannot be read.
fn fingerprint(cfg: &ListenerTls) -> Vec<Option<(SystemTime, u64)>> {
    paths(cfg)
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Checks a `tls` section's material without serving it: `(field, message)` for each problem,
/// the field relative to the section (`certificates[1]`, `client_ca`, `hsts`).
pub fn check(cfg: &ListenerTls) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, p) in cfg.certificates.iter().enumerate() {
        if let Err(e) = certs::load_pair(&p.cert, &p.key) {
            out.push((format!("certificates[{i}]"), e));
        }
    }
    if let Some(ca) = &cfg.client_ca {
        if let Err(e) = certs::read_roots(ca) {
            out.push(("client_ca".into(), e));
        }
    }
    if let Some(h) = &cfg.hsts {
        if let Err(e) = hsts_value(h) {
            out.push(("hsts".into(), e));
        }
    }
    out
}

/// `hsts` is either a duration (`"365d"` → `max-age=31536000`) or the header value itself
/// (`"max-age=63072000; includeSubDomains; preload"`).
pub fn hsts_value(s: &str) -> Result<HeaderValue, String> {
    let value = match crate::config::duration::parse_duration(s) {
        Ok(d) => format!("max-age={}", d.as_secs()),
        Err(_) if s.trim_start().starts_with("max-age=") => s.trim().to_string(),
        Err(_) => {
            return Err(format!(
                "{s:?} is neither a duration (\"365d\") nor a header value starting with max-age="
            ))
        }
    };
    HeaderValue::try_from(value).map_err(|_| format!("{s:?} is not a valid header value"))
}

fn build(
    cfg: &ListenerTls,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
    http: bool,
) -> Result<TlsState, String> {
    let mut loaded = Vec::with_capacity(cfg.certificates.len());
    for p in &cfg.certificates {
        loaded.push(certs::load_pair(&p.cert, &p.key)?);
    }
    let resolver = SniResolver::new(loaded).ok_or("no certificates configured")?;
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version.as_deref() {
        Some("1.3") => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let provider = certs::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let roots = certs::read_roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{ca}: cannot verify clients with it: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(Arc::new(resolver));
    if http {
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    server.ticketer = ticketer.clone();
    server.session_storage = sessions.clone();
    Ok(TlsState {
        server: Arc::new(server),
        hsts: cfg.hsts.as_deref().map(hsts_value).transpose()?,
        redirect_plain: cfg.redirect_https == Some(true),
    })
}

/// Chooses a certificate by the client's SNI: an exact name, else a wildcard covering it, else
/// the first configured certificate (also for clients that send no SNI, e.g. by IP address).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by what follows `*.`, so a lookup is one hash of the name minus its first label.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(loaded: Vec<Loaded>) -> Option<SniResolver> {
        let default = loaded.first()?.key.clone();
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for l in loaded {
            for n in l.names {
                // The first certificate that names a host wins, as in NGINX's server order.
                match n.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => exact.entry(n),
                }
                .or_insert_with(|| l.key.clone());
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        name.split_once('.')
            .and_then(|(_, rest)| self.wildcard.get(rest))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Watches every TLS listener's files and configuration section until `stop`.
pub fn spawn_reloader(
    listeners: Vec<Arc<TlsListener>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    if listeners.is_empty() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let snap = shared.current();
            for l in &listeners {
                let section = snap
                    .config
                    .listeners
                    .iter()
                    .find(|c| c.bind == l.bind)
                    .and_then(|c| c.tls.as_ref())
                    .filter(|t| !t.certificates.is_empty());
                // A section removed by a reload cannot turn HTTPS off on a bound socket; the
                // listener keeps its last certificates until restart.
                if let Some(cfg) = section {
                    l.refresh(cfg);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsts_accepts_durations_and_header_values() {
        assert_eq!(
            hsts_value("365d").ok(),
            Some(HeaderValue::from_static("max-age=31536000"))
        );
        assert!(hsts_value("max-age=60; includeSubDomains").is_ok());
        assert!(hsts_value("forever").is_err());
    }
}
