//! Prometheus metrics, rendered in the text exposition format at scrape time.
//!
//! The hot path only bumps atomics that already live in [`BackendState`] and a few process-wide
//! counters here; nothing is registered or looked up per request (a label-keyed family would
//! take a lock and hash the labels on every request). At scrape time the current snapshot's
//! upstreams and backends are walked and written out. Names and units follow Prometheus
//! conventions: `_total` counters, `_seconds` histograms, base units.

use crate::error::ProxyError;
use crate::state::Shared;
use crate::upstream::backend::{Health, LATENCY_BUCKETS_S};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS_TOTAL: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS_OPEN: AtomicU64 = AtomicU64::new(0);
static TLS_HANDSHAKES: AtomicU64 = AtomicU64::new(0);
static TLS_HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);
static RETRIES: AtomicU64 = AtomicU64::new(0);
static ACCESS_LOG_DROPPED: AtomicU64 = AtomicU64::new(0);

const ERRORS: [ProxyError; 10] = [
    ProxyError::NoRoute,
    ProxyError::NoBackend,
    ProxyError::Overloaded,
    ProxyError::ConnectFailed,
    ProxyError::ConnectTimeout,
    ProxyError::UpstreamReset,
    ProxyError::UpstreamTimeout,
    ProxyError::BadRequestBody,
    ProxyError::BodyTooLarge,
    ProxyError::BadRequest,
];
static MADE: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];

pub fn reload(ok: bool) {
    if ok { &RELOADS_OK } else { &RELOADS_FAILED }.fetch_add(1, Relaxed);
}
pub fn connection_opened() {
    CONNECTIONS_TOTAL.fetch_add(1, Relaxed);
    CONNECTIONS_OPEN.fetch_add(1, Relaxed);
}
pub fn connection_closed() {
    CONNECTIONS_OPEN.fetch_sub(1, Relaxed);
}
pub fn tls_handshake(ok: bool) {
    if ok {
        &TLS_HANDSHAKES
    } else {
        &TLS_HANDSHAKE_FAILURES
    }
    .fetch_add(1, Relaxed);
}
pub fn retry() {
    RETRIES.fetch_add(1, Relaxed);
}
pub fn access_log_dropped() {
    ACCESS_LOG_DROPPED.fetch_add(1, Relaxed);
}
/// An error response Switchyard made itself.
pub fn error_made(e: ProxyError) {
    if let Some(i) = ERRORS.iter().position(|x| *x == e) {
        MADE[i].fetch_add(1, Relaxed);
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(shared: &Shared) -> String {
    let snap = shared.current();
    let mut o = String::with_capacity(16 * 1024);
    head(
        &mut o,
        "switchyard_build_info",
        "gauge",
        "Build information.",
    );
    let _ = writeln!(
        o,
        "switchyard_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    head(
        &mut o,
        "switchyard_config_version",
        "gauge",
        "Version of the running configuration.",
    );
    let _ = writeln!(o, "switchyard_config_version {}", snap.version);
    head(
        &mut o,
        "switchyard_config_reloads_total",
        "counter",
        "Configuration changes attempted, by result.",
    );
    let _ = writeln!(
        o,
        "switchyard_config_reloads_total{{result=\"ok\"}} {}",
        RELOADS_OK.load(Relaxed)
    );
    let _ = writeln!(
        o,
        "switchyard_config_reloads_total{{result=\"failed\"}} {}",
        RELOADS_FAILED.load(Relaxed)
    );
    head(
        &mut o,
        "switchyard_downstream_connections_total",
        "counter",
        "Client connections accepted.",
    );
    let _ = writeln!(
        o,
        "switchyard_downstream_connections_total {}",
        CONNECTIONS_TOTAL.load(Relaxed)
    );
    head(
        &mut o,
        "switchyard_downstream_connections_open",
        "gauge",
        "Client connections open now.",
    );
    let _ = writeln!(
        o,
        "switchyard_downstream_connections_open {}",
        CONNECTIONS_OPEN.load(Relaxed)
    );
    head(
        &mut o,
        "switchyard_tls_handshakes_total",
        "counter",
        "TLS handshakes with clients, by result.",
    );
    let _ = writeln!(
        o,
        "switchyard_tls_handshakes_total{{result=\"ok\"}} {}",
        TLS_HANDSHAKES.load(Relaxed)
    );
    let _ = writeln!(
        o,
        "switchyard_tls_handshakes_total{{result=\"failed\"}} {}",
        TLS_HANDSHAKE_FAILURES.load(Relaxed)
    );
    head(
        &mut o,
        "switchyard_retries_total",
        "counter",
        "Retries of a request on another try.",
    );
    let _ = writeln!(o, "switchyard_retries_total {}", RETRIES.load(Relaxed));
    head(
        &mut o,
        "switchyard_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer fell behind.",
    );
    let _ = writeln!(
        o,
        "switchyard_access_log_dropped_total {}",
        ACCESS_LOG_DROPPED.load(Relaxed)
    );
    head(
        &mut o,
        "switchyard_errors_total",
        "counter",
        "Responses Switchyard made itself, by reason.",
    );
    for (e, n) in ERRORS.iter().zip(MADE.iter()) {
        let _ = writeln!(
            o,
            "switchyard_errors_total{{reason=\"{}\",code=\"{}\"}} {}",
            e.reason(),
            e.status().as_u16(),
            n.load(Relaxed)
        );
    }

    type Row<'a> = (&'a str, &'a crate::upstream::backend::Backend);
    let rows: Vec<Row<'_>> = snap
        .upstreams
        .iter()
        .flat_map(|u| u.backends.iter().map(move |b| (u.name.as_str(), b)))
        .collect();
    let lbl = |u: &str, b: &str| format!("upstream=\"{}\",backend=\"{}\"", esc(u), esc(b));

    head(
        &mut o,
        "switchyard_upstream_responses_total",
        "counter",
        "Backend responses by status class; class=\"error\" counts exchanges that got no response.",
    );
    for (u, b) in &rows {
        for (i, class) in ["error", "1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                o,
                "switchyard_upstream_responses_total{{{},class=\"{class}\"}} {}",
                lbl(u, &b.address),
                b.state.responses[i].load(Relaxed)
            );
        }
    }
    head(
        &mut o,
        "switchyard_upstream_requests_total",
        "counter",
        "Requests sent to a backend (each try counts).",
    );
    for (u, b) in &rows {
        let _ = writeln!(
            o,
            "switchyard_upstream_requests_total{{{}}} {}",
            lbl(u, &b.address),
            b.state.requests_total.load(Relaxed)
        );
    }
    head(
        &mut o,
        "switchyard_upstream_active_requests",
        "gauge",
        "Requests in flight on a backend.",
    );
    for (u, b) in &rows {
        let _ = writeln!(
            o,
            "switchyard_upstream_active_requests{{{}}} {}",
            lbl(u, &b.address),
            b.state.active.load(Relaxed)
        );
    }
    head(
        &mut o,
        "switchyard_upstream_response_seconds",
        "histogram",
        "Time from sending a request to a backend to its response head.",
    );
    for (u, b) in &rows {
        let l = lbl(u, &b.address);
        let mut cum = 0;
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            cum += b.state.latency_buckets[i].load(Relaxed);
            let _ = writeln!(
                o,
                "switchyard_upstream_response_seconds_bucket{{{l},le=\"{le}\"}} {cum}"
            );
        }
        cum += b.state.latency_buckets[LATENCY_BUCKETS_S.len()].load(Relaxed);
        let _ = writeln!(
            o,
            "switchyard_upstream_response_seconds_bucket{{{l},le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            o,
            "switchyard_upstream_response_seconds_sum{{{l}}} {}",
            b.state.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "switchyard_upstream_response_seconds_count{{{l}}} {cum}");
    }
    head(
        &mut o,
        "switchyard_backend_health",
        "gauge",
        "Active health state (1 for the current state).",
    );
    for (u, b) in &rows {
        let h = b.state.health();
        for s in [Health::Unknown, Health::Healthy, Health::Unhealthy] {
            let _ = writeln!(
                o,
                "switchyard_backend_health{{{},state=\"{}\"}} {}",
                lbl(u, &b.address),
                s.name(),
                (h == s) as u8
            );
        }
    }
    head(
        &mut o,
        "switchyard_backend_circuit_state",
        "gauge",
        "Circuit breaker state (1 for the current state).",
    );
    for (u, b) in &rows {
        let c = b.state.breaker.state();
        for s in ["closed", "open", "half_open"] {
            let _ = writeln!(
                o,
                "switchyard_backend_circuit_state{{{},state=\"{s}\"}} {}",
                lbl(u, &b.address),
                (c.name() == s) as u8
            );
        }
    }
    head(
        &mut o,
        "switchyard_backend_health_changes_total",
        "counter",
        "Active health transitions.",
    );
    for (u, b) in &rows {
        let _ = writeln!(
            o,
            "switchyard_backend_health_changes_total{{{}}} {}",
            lbl(u, &b.address),
            b.state.health_changes.load(Relaxed)
        );
    }
    head(
        &mut o,
        "switchyard_backend_circuit_opens_total",
        "counter",
        "Times the circuit breaker opened.",
    );
    for (u, b) in &rows {
        let _ = writeln!(
            o,
            "switchyard_backend_circuit_opens_total{{{}}} {}",
            lbl(u, &b.address),
            b.state.circuit_opens.load(Relaxed)
        );
    }
    head(
        &mut o,
        "switchyard_backend_ejections_total",
        "counter",
        "Passive-health ejections.",
    );
    for (u, b) in &rows {
        let _ = writeln!(
            o,
            "switchyard_backend_ejections_total{{{}}} {}",
            lbl(u, &b.address),
            b.state.ejections.load(Relaxed)
        );
    }
    o
}
