//! `tcp` listeners: each connection's bytes relayed unread to a backend of an upstream, as
//! HAProxy's `mode tcp`, NGINX's `stream`, Envoy's `tcp_proxy` and Traefik's TCP routers do
//! (databases, message brokers, TLS passed through to services that terminate it themselves).
//!
//! The upstream works as it does for HTTP routes: its algorithm picks the backend
//! (`consistent_hash` by the client's IP), health checks, the circuit breaker and passive
//! health keep failing backends out, `max_connections` queues, and a connect that fails is
//! tried on another backend (`retry`, on by default for connect failures): nothing was sent, so
//! that is always safe. Once connected, bytes are copied both ways and a half-close is passed
//! on, until both sides are done, either breaks, or nothing moves for the upstream's
//! `timeouts.idle`. The connection counts as active on its backend while it is open, so
//! `least_connections` balances connections.
//!
//! Where a connection goes is read from the configuration in force when it arrives: `upstream`
//! and `sni_routes` change live; the socket, `mode` and `tls` wait for a restart.

use super::connector::{DialError, Io};
use super::forward::{self, Inflight};
use super::ConnInfo;
use crate::config::{Config, ListenerConfig, ListenerMode, SniRoute};
use crate::error::ProxyError;
use crate::listener::{client_hello, tls::TlsListener, HANDSHAKE_TIMEOUT};
use crate::observe::access_log::{ms, rfc3339, TcpEntry};
use crate::state::Shared;
use crate::upstream::balancer::PickCtx;
use crate::upstream::{HashKey, Upstream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Connections of `tcp` listeners by outcome, in the order of [`OUTCOME_NAMES`].
pub static OUTCOMES: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
pub const OUTCOME_NAMES: [&str; 7] = [
    "relayed",
    "no_route",
    "no_backend",
    "connect_failed",
    "overloaded",
    "handshake_failed",
    "denied",
];
/// A `tcp` listener's `idle_timeout` when none is set: NGINX's `proxy_timeout`.
const IDLE_DEFAULT: Duration = Duration::from_secs(600);

/// TCP keepalive on both sides of a relayed connection: a peer that vanished (a host down, a
/// NAT entry expired) is found after a minute of silence and six unanswered probes ten seconds
/// apart, instead of holding its backend slot until `idle_timeout`. Set on a `tcp` listener's
/// sockets, whose accepted connections inherit it (no system call per connection), and on each
/// backend connection.
pub(crate) fn keepalive<S: std::os::fd::AsFd>(s: &S) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
}

/// Bytes relayed by `tcp` listeners: from clients, and to them; added when a connection ends.
pub static BYTES: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// What a `tcp` listener keeps from its configuration at start.
pub struct TcpSite {
    /// Its place in `[[listeners]]` and its `bind`, to find its section in later configurations.
    index: usize,
    bind: String,
    /// Its `name`, else its `bind`, for the access log.
    label: String,
    /// TLS is terminated here first when the listener has certificates.
    tls: Option<Arc<TlsListener>>,
    /// Where connections went at start: used while a later configuration no longer has this
    /// listener as `tcp` (a change that waits for a restart).
    start: ListenerConfig,
}

impl TcpSite {
    pub fn new(index: usize, c: &ListenerConfig, tls: Option<Arc<TlsListener>>) -> TcpSite {
        TcpSite {
            index,
            bind: c.bind.clone(),
            label: c.name.clone().unwrap_or_else(|| c.bind.clone()),
            tls,
            start: c.clone(),
        }
    }

    /// This listener's section in `cfg`, else the one it started with.
    fn section<'a>(&'a self, cfg: &'a Config) -> &'a ListenerConfig {
        cfg.listeners
            .get(self.index)
            .filter(|l| l.bind == self.bind && l.mode == ListenerMode::Tcp)
            .unwrap_or(&self.start)
    }
}

/// The upstream for a connection asking for server name `sni`: an exact entry of `routes`, else
/// the wildcard with the longest suffix that covers it, else `default`.
fn choose<'a>(
    default: Option<&'a str>,
    routes: &'a [SniRoute],
    sni: Option<&str>,
) -> Option<&'a str> {
    let Some(name) = sni else { return default };
    if let Some(r) = routes.iter().find(|r| r.hosts.iter().any(|h| h == name)) {
        return Some(&r.upstream);
    }
    routes
        .iter()
        .flat_map(|r| {
            r.hosts
                .iter()
                .filter_map(|h| h.strip_prefix('*'))
                .filter(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
                .map(move |suffix| (suffix.len(), r.upstream.as_str()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, up)| up)
        .or(default)
}

/// Serves one accepted connection of a `tcp` listener until it closes.
/// `reached` is the address the client connected to when a PROXY header in front named one.
pub async fn serve(
    stream: TcpStream,
    (mut info, reached): (ConnInfo, Option<std::net::SocketAddr>),
    site: &TcpSite,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let accepted = Instant::now();
    let mut entry = TcpEntry {
        time: rfc3339(SystemTime::now()),
        kind: "tcp",
        listener: site.label.clone(),
        client: info.client.to_string(),
        ..TcpEntry::default()
    };
    let (wants_sni, wants_local, admitted) = {
        let snap = shared.current();
        let section = site.section(&snap.config);
        // Parsed per connection (only when there are lists): they change live, and a few
        // blocks parse in far less time than the connect that follows.
        let acl = super::real_ip::Acl::new(&section.ip_allow, &section.ip_deny);
        (
            !section.sni_routes.is_empty(),
            section.send_proxy_protocol.is_some(),
            acl.is_none_or(|a| a.admits(info.client.ip())),
        )
    };
    if !admitted {
        return finish(
            shared,
            entry,
            accepted,
            6,
            ProxyError::ClientDenied.reason(),
        );
    }
    // The address the client reached, for a PROXY header to the backend: the one a PROXY
    // header in front named (as HAProxy's `send-proxy` passes on what `accept-proxy` read),
    // else this socket's (a system call, so only when a header is sent).
    let local = match wants_local.then(|| reached.map_or_else(|| stream.local_addr(), Ok)) {
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => return,
        None => None,
    };
    let (client, hello, sni): (Box<dyn Io>, bytes::BytesMut, Option<String>) = match &site.tls {
        Some(t) => {
            let state = t.current();
            let Some(tls) = crate::listener::handshake(stream, &state, &mut info, &mut stop).await
            else {
                return finish(shared, entry, accepted, 5, "tls_handshake_failed");
            };
            let sni = tls
                .get_ref()
                .1
                .server_name()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            entry.tls_version = info.tls_version;
            entry.tls_client = info.tls_client.take();
            (Box::new(tls), bytes::BytesMut::new(), sni)
        }
        None if wants_sni => {
            let mut stream = stream;
            match client_hello::read_sni(&mut stream, HANDSHAKE_TIMEOUT).await {
                Ok((hello, sni)) => (Box::new(stream), hello, sni),
                Err(e) => {
                    let why = match e {
                        client_hello::NotTls::Garbled => "not_tls",
                        client_hello::NotTls::Cut => "client_closed",
                        client_hello::NotTls::TooSlowOrLarge => "client_hello_timeout",
                    };
                    return finish(shared, entry, accepted, 5, why);
                }
            }
        }
        None => (Box::new(stream), bytes::BytesMut::new(), None),
    };
    entry.sni = sni.clone();
    // Read again: a handshake may have taken a while, and routing follows the latest change.
    let snap = shared.current();
    let section = site.section(&snap.config);
    let Some(name) = choose(
        section.upstream.as_deref(),
        &section.sni_routes,
        sni.as_deref(),
    ) else {
        return finish(shared, entry, accepted, 1, ProxyError::NoRoute.reason());
    };
    entry.upstream = Some(name.to_string());
    let Some(up) = snap.upstream(name).cloned() else {
        return finish(shared, entry, accepted, 2, ProxyError::NoBackend.reason());
    };
    // `local` is missing only if the option was set by a change since the connection came.
    let proxy_header = section
        .send_proxy_protocol
        .as_deref()
        .zip(local)
        .map(|(v, local)| crate::listener::proxy_protocol::encode(v == "v2", info.client, local));
    let idle = section.idle_timeout.map_or(IDLE_DEFAULT, |d| d.get());
    drop(snap);
    let hash = match up.hash_key {
        HashKey::ClientIp => {
            crate::upstream::balancer::hash_bytes(info.client.ip().to_string().as_bytes())
        }
        // Nothing else of a connection is known before its bytes, which are not read.
        _ => fastrand::u64(..),
    };
    let proxy_header = proxy_header.unwrap_or_default();
    let ctx = PickCtx::hashed(hash);
    let (mut backend, inflight) = match connect(&up, &ctx, &proxy_header, &mut entry).await {
        Ok(x) => x,
        Err(e) => {
            let outcome = match e {
                ProxyError::NoBackend => 2,
                ProxyError::Overloaded => 4,
                _ => 3,
            };
            return finish(shared, entry, accepted, outcome, e.reason());
        }
    };
    OUTCOMES[0].fetch_add(1, Relaxed);
    // A passed-through ClientHello goes first, byte for byte.
    let broken = !hello.is_empty() && backend.write_all(&hello).await.is_err();
    let (end, up_bytes, down_bytes) = if broken {
        (super::tunnel::TunnelEnd::Broken, 0, 0)
    } else {
        super::tunnel::pump(client, backend, idle).await
    };
    drop(inflight);
    entry.bytes_in = up_bytes + hello.len() as u64;
    entry.bytes_out = down_bytes;
    entry.end = Some(match end {
        super::tunnel::TunnelEnd::Closed => "closed",
        super::tunnel::TunnelEnd::Broken => "broken",
        super::tunnel::TunnelEnd::Idle => "idle_timeout",
    });
    BYTES[0].fetch_add(entry.bytes_in, Relaxed);
    BYTES[1].fetch_add(entry.bytes_out, Relaxed);
    log(shared, entry, accepted);
}

/// Ends a connection that was never relayed: counted under `outcome`, logged with `error`.
fn finish(
    shared: &Shared,
    mut entry: TcpEntry,
    accepted: Instant,
    outcome: usize,
    error: &'static str,
) {
    OUTCOMES[outcome].fetch_add(1, Relaxed);
    entry.error = Some(error);
    tracing::debug!(client = %entry.client, listener = %entry.listener, "tcp connection not relayed: {error}");
    log(shared, entry, accepted);
}

fn log(shared: &Shared, mut entry: TcpEntry, accepted: Instant) {
    if let Some(l) = &shared.access_log {
        entry.duration_ms = ms(accepted.elapsed());
        l.log_tcp(&entry);
    }
}

/// Picks a backend and connects to it, trying others on a failed connect as the upstream's
/// `retry` allows (never sent, so always safe; the retry budget does not apply, as for HTTP).
async fn connect(
    up: &Arc<Upstream>,
    ctx: &PickCtx,
    proxy_header: &[u8],
    entry: &mut TcpEntry,
) -> Result<(Box<dyn Io>, Inflight), ProxyError> {
    let policy = &up.retry;
    // A connection waits for a free backend (`max_connections`) as long as a request would.
    let deadline = Instant::now() + up.request_timeout;
    let mut tried = Vec::with_capacity(2);
    let mut last = ProxyError::NoBackend;
    for attempt in 0..policy.attempts.max(1) {
        if attempt > 0 {
            if !policy.on_connect_failure {
                break;
            }
            let pause = forward::backoff(policy, attempt, Duration::ZERO);
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            crate::observe::metrics::retry();
        }
        let i = match forward::pick_or_queue(up, ctx, &tried, deadline, None).await {
            Ok(i) => i,
            Err(e) if attempt == 0 => return Err(e),
            Err(_) => break,
        };
        tried.push(i);
        let b = &up.backends[i];
        entry.attempts = attempt + 1;
        entry.backend = Some(b.address.clone());
        let inflight = Inflight::start(up, i);
        let started = Instant::now();
        match up
            .connector
            .dial_raw(&b.address, b.socket, up.connect_timeout, proxy_header)
            .await
        {
            Ok(io) => {
                let took = started.elapsed();
                let now = crate::upstream::backend::now_ms();
                // The only latency a byte relay can see: what p2c_ewma weighs backends by.
                b.state.observe_latency(took.as_secs_f64() * 1e6, now);
                forward::record_health(up, i, true, now);
                entry.upstream_connect_ms = Some(ms(took));
                return Ok((io, inflight));
            }
            // This process is short of sockets: nothing to hold against the backend, and no
            // other backend would fare better.
            Err(DialError::Local(e)) => {
                tracing::warn!(backend = %b.address, "tcp: cannot open a socket: {e}");
                return Err(ProxyError::ConnectFailed);
            }
            Err(DialError::Backend(e)) => {
                forward::record(up, i, false, 0, crate::upstream::backend::now_ms());
                last = e;
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_beat_wildcards_and_the_longest_wildcard_wins() {
        let r = |hosts: &[&str], up: &str| SniRoute {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            upstream: up.into(),
        };
        let routes = [
            r(&["*.example.com"], "wide"),
            r(&["*.db.example.com"], "narrow"),
            r(&["a.db.example.com"], "exact"),
        ];
        let pick = |sni| choose(Some("default"), &routes, sni);
        assert_eq!(pick(Some("a.db.example.com")), Some("exact"));
        assert_eq!(pick(Some("b.db.example.com")), Some("narrow"));
        assert_eq!(pick(Some("x.example.com")), Some("wide"));
        assert_eq!(
            pick(Some("example.com")),
            Some("default"),
            "a wildcard needs a label"
        );
        assert_eq!(pick(Some("other.org")), Some("default"));
        assert_eq!(pick(None), Some("default"));
        assert_eq!(choose(None, &routes, Some("other.org")), None);
    }
}
