//! Prometheus metrics, rendered in the text exposition format at scrape time.
//!
//! The hot path only bumps atomics that already live in [`BackendState`] and a few process-wide
//! counters here; nothing is registered or looked up per request (a label-keyed family would
//! take a lock and hash the labels on every request). At scrape time the current snapshot's
//! upstreams and backends are walked and written out. Names and units follow Prometheus
//! conventions: `_total` counters, `_seconds` histograms, base units.

use crate::error::ProxyError;
use crate::proxy::mirror::Outcome;
use crate::state::Shared;
use crate::upstream::backend::{BackendState, Health, LATENCY_BUCKETS_S};
use crate::upstream::breaker::Circuit;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS_TOTAL: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS_OPEN: AtomicU64 = AtomicU64::new(0);
static TLS_HANDSHAKES: AtomicU64 = AtomicU64::new(0);
static TLS_HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);
static TLS_RELOADS_OK: AtomicU64 = AtomicU64::new(0);
static TLS_RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);
static RETRIES: AtomicU64 = AtomicU64::new(0);
static RETRIES_DENIED: AtomicU64 = AtomicU64::new(0);
static ACCESS_LOG_DROPPED: AtomicU64 = AtomicU64::new(0);
static HEALTH_INCONCLUSIVE: AtomicU64 = AtomicU64::new(0);
/// Mirrored copies by [`Outcome`]: sent, failed, skipped.
static MIRRORED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

static MADE: [AtomicU64; ProxyError::ALL.len()] =
    [const { AtomicU64::new(0) }; ProxyError::ALL.len()];

/// Responses sent to clients, by status class (1xx–5xx), one set per thread that answers them:
/// the workers never write to a cache line another worker writes, and a scrape sums the sets.
#[repr(align(64))]
struct Classes([AtomicU64; 5]);

static THREAD_CLASSES: std::sync::Mutex<Vec<&'static Classes>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    // Leaked: one 64-byte set per thread that ever answered a client (the workers, for ever).
    static MINE: &'static Classes = {
        let c: &'static Classes = Box::leak(Box::new(Classes([const { AtomicU64::new(0) }; 5])));
        THREAD_CLASSES.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        c
    };
}

/// A response went to a client (proxied or made here; a retried request counts once).
#[inline]
pub fn downstream_response(status: u16) {
    let class = usize::from(status / 100).clamp(1, 5) - 1;
    MINE.with(|m| m.0[class].fetch_add(1, Relaxed));
}

/// Adds one to the counter of an outcome: `yes` when it went well, `no` when not.
fn outcome(ok: bool, yes: &AtomicU64, no: &AtomicU64) {
    if ok { yes } else { no }.fetch_add(1, Relaxed);
}

pub fn reload(ok: bool) {
    outcome(ok, &RELOADS_OK, &RELOADS_FAILED);
}
pub fn connection_opened() {
    CONNECTIONS_TOTAL.fetch_add(1, Relaxed);
    CONNECTIONS_OPEN.fetch_add(1, Relaxed);
}
pub fn connection_closed() {
    CONNECTIONS_OPEN.fetch_sub(1, Relaxed);
}
pub fn tls_handshake(ok: bool) {
    outcome(ok, &TLS_HANDSHAKES, &TLS_HANDSHAKE_FAILURES);
}
/// A listener's certificates rebuilt from changed files (or refused, the old ones kept): a
/// broken certificate on disk is then on the dashboard, not only in the log.
pub fn tls_reload(ok: bool) {
    outcome(ok, &TLS_RELOADS_OK, &TLS_RELOADS_FAILED);
}
pub fn retry() {
    RETRIES.fetch_add(1, Relaxed);
}
/// A retry the policy allowed but the retry budget refused.
pub fn retry_denied() {
    RETRIES_DENIED.fetch_add(1, Relaxed);
}
pub fn access_log_dropped() {
    ACCESS_LOG_DROPPED.fetch_add(1, Relaxed);
}
/// An active health check that could not be made for a reason of this process's own.
pub fn health_check_inconclusive() {
    HEALTH_INCONCLUSIVE.fetch_add(1, Relaxed);
}
/// What became of a mirrored copy of a request.
pub fn mirror(o: Outcome) {
    MIRRORED[o as usize].fetch_add(1, Relaxed);
}
/// An error response Switchyard made itself; not counted for a mirrored copy, whose errors no
/// client sees (they are the mirror metric's `failed`).
pub fn error_made(e: ProxyError) {
    if crate::proxy::mirror::in_mirror() {
        return;
    }
    if let Some(i) = ProxyError::ALL.iter().position(|x| *x == e) {
        MADE[i].fetch_add(1, Relaxed);
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family: HELP, TYPE, then `name{labels} value` per sample.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn one(v: &AtomicU64) -> [(String, u64); 1] {
    [(String::new(), v.load(Relaxed))]
}

fn result(ok: &AtomicU64, failed: &AtomicU64) -> [(String, u64); 2] {
    [
        ("result=\"ok\"".into(), ok.load(Relaxed)),
        ("result=\"failed\"".into(), failed.load(Relaxed)),
    ]
}

/// The whole exposition.
pub fn render(shared: &Shared) -> String {
    let snap = shared.current();
    let mut o = String::with_capacity(16 * 1024);
    let version = [(format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1)];
    family(
        &mut o,
        "switchyard_build_info",
        "gauge",
        "Build information.",
        version,
    );
    family(
        &mut o,
        "switchyard_config_version",
        "gauge",
        "Version of the running configuration.",
        [(String::new(), snap.version)],
    );
    family(
        &mut o,
        "switchyard_config_reloads_total",
        "counter",
        "Configuration changes attempted, by result.",
        result(&RELOADS_OK, &RELOADS_FAILED),
    );
    family(
        &mut o,
        "switchyard_downstream_connections_total",
        "counter",
        "Client connections accepted.",
        one(&CONNECTIONS_TOTAL),
    );
    family(
        &mut o,
        "switchyard_downstream_connections_open",
        "gauge",
        "Client connections open now.",
        one(&CONNECTIONS_OPEN),
    );
    family(
        &mut o,
        "switchyard_tls_handshakes_total",
        "counter",
        "TLS handshakes with clients, by result.",
        result(&TLS_HANDSHAKES, &TLS_HANDSHAKE_FAILURES),
    );
    family(
        &mut o,
        "switchyard_tls_reloads_total",
        "counter",
        "Certificate reloads of TLS listeners, by result (failed: the previous certificates stay).",
        result(&TLS_RELOADS_OK, &TLS_RELOADS_FAILED),
    );
    family(
        &mut o,
        "switchyard_retries_total",
        "counter",
        "Retries of a request on another try.",
        one(&RETRIES),
    );
    family(
        &mut o,
        "switchyard_retries_denied_total",
        "counter",
        "Retries the policy allowed but the retry budget refused (the client got the failure).",
        one(&RETRIES_DENIED),
    );
    family(
        &mut o,
        "switchyard_compressed_responses_total",
        "counter",
        "Responses gzip-compressed for routes with `compress`.",
        one(&crate::proxy::compress::COMPRESSED),
    );
    family(
        &mut o,
        "switchyard_compression_bytes_total",
        "counter",
        "Bytes of compressed responses: `in` as the backends sent them, `out` as compressed for clients.",
        [
            (
                "stage=\"in\"".to_string(),
                crate::proxy::compress::BYTES_IN.load(Relaxed),
            ),
            (
                "stage=\"out\"".to_string(),
                crate::proxy::compress::BYTES_OUT.load(Relaxed),
            ),
        ],
    );
    family(
        &mut o,
        "switchyard_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer fell behind.",
        one(&ACCESS_LOG_DROPPED),
    );
    family(
        &mut o,
        "switchyard_health_checks_inconclusive_total",
        "counter",
        "Active health checks that could not be made for a local reason (no file descriptor, buffer or memory for the socket), counted neither as a failure nor a success.",
        one(&HEALTH_INCONCLUSIVE),
    );
    let mut by_class = [0u64; 5];
    for c in THREAD_CLASSES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        for (sum, n) in by_class.iter_mut().zip(&c.0) {
            *sum += n.load(Relaxed);
        }
    }
    family(
        &mut o,
        "switchyard_downstream_responses_total",
        "counter",
        "Responses sent to clients by status class, Switchyard's own included; a retried request counts once.",
        by_class
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("class=\"{}xx\"", i + 1), *n)),
    );
    family(
        &mut o,
        "switchyard_mirrored_requests_total",
        "counter",
        "Copies of requests for routes' mirror upstreams, by result (failed: the shadow gave no answer; skipped: the body was streamed, not kept, or too many copies were in flight).",
        ["sent", "failed", "skipped"]
            .iter()
            .zip(&MIRRORED)
            .map(|(r, n)| (format!("result=\"{r}\""), n.load(Relaxed))),
    );
    family(
        &mut o,
        "switchyard_auth_requests_total",
        "counter",
        "Questions to routes' auth upstreams, by result (denied: a non-2xx answer went to the client; error: no answer, Switchyard's own error did).",
        ["allowed", "denied", "error"]
            .iter()
            .zip(&crate::proxy::auth::OUTCOMES)
            .map(|(r, n)| (format!("result=\"{r}\""), n.load(Relaxed))),
    );
    family(
        &mut o,
        "switchyard_tcp_connections_total",
        "counter",
        "Connections of tcp listeners, by result (relayed: connected to a backend; the others were closed unrelayed).",
        crate::proxy::tcp::OUTCOME_NAMES
            .iter()
            .zip(&crate::proxy::tcp::OUTCOMES)
            .map(|(r, n)| (format!("result=\"{r}\""), n.load(Relaxed))),
    );
    family(
        &mut o,
        "switchyard_tcp_bytes_total",
        "counter",
        "Bytes relayed by tcp listeners, from clients (received) and to them (sent), counted as each connection ends.",
        ["received", "sent"]
            .iter()
            .zip(&crate::proxy::tcp::BYTES)
            .map(|(d, n)| (format!("direction=\"{d}\""), n.load(Relaxed))),
    );
    let made = ProxyError::ALL.iter().zip(MADE.iter()).map(|(e, n)| {
        (
            format!("reason=\"{}\",code=\"{}\"", e.reason(), e.status().as_u16()),
            n.load(Relaxed),
        )
    });
    family(
        &mut o,
        "switchyard_errors_total",
        "counter",
        "Responses Switchyard made itself, by reason.",
        made,
    );

    // Only upstreams with `max_connections` have a queue to show.
    let queued = snap
        .upstreams
        .iter()
        .filter(|u| u.max_connections.is_some())
        .map(|u| {
            (
                format!("upstream=\"{}\"", esc(&u.name)),
                u64::from(u.queue.waiting()),
            )
        });
    family(
        &mut o,
        "switchyard_upstream_queued_requests",
        "gauge",
        "Requests and tcp connections waiting for a backend with room under max_connections (HAProxy's qcur).",
        queued,
    );

    let rows: Vec<(String, &BackendState)> = snap
        .upstreams
        .iter()
        .flat_map(|u| {
            u.backends.iter().map(move |b| {
                (
                    format!(
                        "upstream=\"{}\",backend=\"{}\"",
                        esc(&u.name),
                        esc(&b.address)
                    ),
                    &*b.state,
                )
            })
        })
        .collect();
    let per = |o: &mut String, name: &str, kind: &str, help: &str, f: fn(&BackendState) -> u64| {
        family(
            o,
            name,
            kind,
            help,
            rows.iter().map(|(l, s)| (l.clone(), f(s))),
        );
    };
    let classes = rows.iter().flat_map(|(l, s)| {
        ["error", "1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .enumerate()
            .map(move |(i, c)| (format!("{l},class=\"{c}\""), s.responses[i].load(Relaxed)))
    });
    family(
        &mut o,
        "switchyard_upstream_responses_total",
        "counter",
        "Backend responses by status class; class=\"error\" counts exchanges that got no response.",
        classes,
    );
    per(
        &mut o,
        "switchyard_upstream_requests_total",
        "counter",
        "Requests sent to a backend (each try counts).",
        |s| s.requests_total.load(Relaxed),
    );
    per(
        &mut o,
        "switchyard_upstream_active_requests",
        "gauge",
        "Requests in flight on a backend.",
        |s| s.active.load(Relaxed) as u64,
    );

    let _ = writeln!(o, "# HELP switchyard_upstream_response_seconds Time from sending a request to a backend to its response head.\n# TYPE switchyard_upstream_response_seconds histogram");
    for (l, s) in &rows {
        let mut cum = 0;
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            cum += s.latency_buckets[i].load(Relaxed);
            let _ = writeln!(
                o,
                "switchyard_upstream_response_seconds_bucket{{{l},le=\"{le}\"}} {cum}"
            );
        }
        cum += s.latency_buckets[LATENCY_BUCKETS_S.len()].load(Relaxed);
        let _ = writeln!(
            o,
            "switchyard_upstream_response_seconds_bucket{{{l},le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            o,
            "switchyard_upstream_response_seconds_sum{{{l}}} {}",
            s.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "switchyard_upstream_response_seconds_count{{{l}}} {cum}");
    }
    let health = rows.iter().flat_map(|(l, s)| {
        let h = s.health();
        [Health::Unknown, Health::Healthy, Health::Unhealthy]
            .map(|x| (format!("{l},state=\"{}\"", x.name()), (h == x) as u64))
    });
    family(
        &mut o,
        "switchyard_backend_health",
        "gauge",
        "Active health state (1 for the current state).",
        health,
    );
    let circuit = rows.iter().flat_map(|(l, s)| {
        let c = s.breaker.state();
        [Circuit::Closed, Circuit::Open, Circuit::HalfOpen]
            .map(|x| (format!("{l},state=\"{}\"", x.name()), (c == x) as u64))
    });
    family(
        &mut o,
        "switchyard_backend_circuit_state",
        "gauge",
        "Circuit breaker state (1 for the current state).",
        circuit,
    );
    per(
        &mut o,
        "switchyard_backend_health_changes_total",
        "counter",
        "Active health transitions.",
        |s| s.health_changes.load(Relaxed),
    );
    per(
        &mut o,
        "switchyard_backend_circuit_opens_total",
        "counter",
        "Times the circuit breaker opened.",
        |s| s.circuit_opens.load(Relaxed),
    );
    per(
        &mut o,
        "switchyard_backend_ejections_total",
        "counter",
        "Passive-health ejections.",
        |s| s.ejections.load(Relaxed) as u64,
    );
    o
}
