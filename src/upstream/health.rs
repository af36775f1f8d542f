//! Active health checks: one task per (upstream, backend) in the control runtime — once per
//! process, not per worker — probing on an interval with ±10% jitter (so a fleet of checkers does
//! not pulse in step). HTTP (path, expected status range, Host), TCP connect, and gRPC health v1.
//!
//! A backend starts `unknown` and is checked at once. `healthy_threshold` successes in a row make
//! it healthy and `unhealthy_threshold` failures unhealthy; a backend never yet seen healthy goes
//! unhealthy at its first failure, since it has no track record to give it credit. When an
//! upstream's check is removed its backends go back to `unknown` ([`forget`]): a verdict nothing
//! will revise must not linger in the API (it no longer gates traffic either).
//!
//! A probe whose socket this process cannot make (out of file descriptors, buffers or memory:
//! [`crate::proxy::connector::is_local_shortage`]) is inconclusive: the backend was never asked,
//! so it counts neither way; it is counted in `switchyard_health_checks_inconclusive_total` and
//! logged at most once a second across all checkers. Otherwise a process at its fd limit would
//! mark every backend unhealthy at once.

use super::backend::{BackendState, Health};
use crate::config::{
    validate::parse_status_range, CheckKind, HealthCheckConfig, Protocol, UpstreamTls,
};
use crate::observe::throttle::Throttle;
use crate::proxy::connector::{Connector, DialError, Io};
use crate::state::{Shared, Snapshot};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Compiled check settings. Defaults: every 5s with a 2s timeout, 2 successes to become healthy
/// and 3 failures to become unhealthy (HAProxy's `inter 2s rise 2 fall 3` scaled to a gentler
/// probe rate); HTTP GET `/` expecting 200-399.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckPolicy {
    pub kind: CheckKind,
    pub path: String,
    pub host: Option<String>,
    pub expect: (u16, u16),
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// The upstream's protocol and TLS settings: a change restarts the checker.
    pub transport: (Protocol, Option<UpstreamTls>),
}

impl CheckPolicy {
    pub fn from_config(c: &HealthCheckConfig) -> Self {
        CheckPolicy {
            kind: c.kind,
            path: c.path.clone().unwrap_or_else(|| "/".into()),
            host: c.host.clone(),
            expect: c
                .expect_status
                .as_deref()
                .and_then(parse_status_range)
                .unwrap_or((200, 399)),
            interval: c.interval.map_or(Duration::from_secs(5), |d| d.get()),
            timeout: c.timeout.map_or(Duration::from_secs(2), |d| d.get()),
            healthy_threshold: c.healthy_threshold.unwrap_or(2),
            unhealthy_threshold: c.unhealthy_threshold.unwrap_or(3),
            transport: (Protocol::Http1, None),
        }
    }
}

/// Watches the configuration and keeps exactly one checker per checked backend.
pub fn spawn_checker(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut running: HashMap<(String, String), (CheckPolicy, JoinHandle<()>)> = HashMap::new();
        let mut seen_version = 0;
        loop {
            let snap = shared.current();
            if snap.version != seen_version {
                seen_version = snap.version;
                let mut wanted = HashMap::new();
                for up in &snap.upstreams {
                    let Some(hc) = &up.config.health_check else {
                        continue;
                    };
                    let mut policy = CheckPolicy::from_config(hc);
                    policy.transport = (up.config.protocol, up.config.tls.clone());
                    for b in &up.backends {
                        let task = (
                            policy.clone(),
                            b.state.clone(),
                            up.connector.clone(),
                            b.socket,
                        );
                        wanted.insert((up.name.clone(), b.address.clone()), task);
                    }
                }
                let stale: Vec<(String, String)> = running
                    .iter()
                    .filter(|(key, (policy, _))| wanted.get(*key).is_none_or(|(p, ..)| p != policy))
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in stale {
                    if let Some((_, task)) = running.remove(&key) {
                        stop_checking(&snap, &key, task).await;
                    }
                }
                for (key, (policy, state, connector, socket)) in wanted {
                    running.entry(key).or_insert_with(|| {
                        let task =
                            tokio::spawn(check_loop(policy.clone(), state, connector, socket));
                        (policy, task)
                    });
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, (_, t)) in running {
            t.abort();
        }
    });
}

/// Stops one checker. When its upstream no longer has a check, the backend's health is
/// forgotten only once the task has really ended: a probe that was in flight when the
/// configuration changed can no longer store its verdict after the reset.
async fn stop_checking(
    snap: &Snapshot,
    (upstream, address): &(String, String),
    task: JoinHandle<()>,
) {
    task.abort();
    let _ = task.await;
    let Some(up) = snap
        .upstream(upstream)
        .filter(|u| u.config.health_check.is_none())
    else {
        return;
    };
    if let Some(b) = up.backends.iter().find(|b| &b.address == address) {
        forget(&b.state);
    }
}

/// Back to `unknown`, with its event: for a backend no check decides any more.
pub fn forget(state: &BackendState) {
    let prev = state.set_health(Health::Unknown);
    if prev != Health::Unknown {
        crate::events::health_changed(state, prev, Health::Unknown);
    }
}

async fn check_loop(
    policy: CheckPolicy,
    state: Arc<BackendState>,
    connector: Connector,
    socket: Option<SocketAddr>,
) {
    let (mut ok_run, mut fail_run) = (0u32, 0u32);
    loop {
        let jitter = policy.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        let ok = match check_once(&policy, &connector, &state.address, socket).await {
            Verdict::Pass => true,
            Verdict::Fail => false,
            Verdict::Inconclusive(e) => {
                inconclusive(&state, &e);
                tokio::time::sleep(jitter).await;
                continue;
            }
        };
        if ok {
            ok_run += 1;
            fail_run = 0;
        } else {
            fail_run += 1;
            ok_run = 0;
        }
        let current = state.health();
        let next = match current {
            Health::Unknown if ok => Some(Health::Healthy),
            Health::Unknown => Some(Health::Unhealthy),
            Health::Healthy if fail_run >= policy.unhealthy_threshold => Some(Health::Unhealthy),
            Health::Unhealthy if ok_run >= policy.healthy_threshold => Some(Health::Healthy),
            _ => None,
        };
        if let Some(h) = next {
            let prev = state.set_health(h);
            if prev != h {
                crate::events::health_changed(&state, prev, h);
                // Requests queued for room may now find it here.
                if let (Health::Healthy, Some(q)) = (h, state.queue.get()) {
                    q.wake_all();
                }
            }
        }
        tokio::time::sleep(jitter).await;
    }
}

/// One line a second at most for all checkers: at the fd limit every checker fails at once,
/// every interval, and the log is the operator's only view while the admin API cannot accept.
static INCONCLUSIVE_LOG: Throttle = Throttle::new(Duration::from_secs(1));

fn inconclusive(state: &BackendState, e: &std::io::Error) {
    crate::observe::metrics::health_check_inconclusive();
    if let Some(n) = INCONCLUSIVE_LOG.hit() {
        tracing::warn!(
            backend = %state.address,
            "health check not made, counted neither way: {e} (local, not the backend's; {n} since the last such line)"
        );
    }
}

/// What a probe says about a backend.
#[derive(Debug)]
pub enum Verdict {
    Pass,
    Fail,
    /// The probe could not be made for a reason of this process's own: nothing learnt.
    Inconclusive(std::io::Error),
}

/// One probe. The connection is made like the proxy's own (TLS, SNI, client certificate, ALPN),
/// so a check tests the path real traffic takes.
pub async fn check_once(
    policy: &CheckPolicy,
    connector: &Connector,
    address: &str,
    socket: Option<SocketAddr>,
) -> Verdict {
    let probe = async {
        let io = match connector
            .dial_checked(address, socket, policy.timeout)
            .await
        {
            Ok(io) => io,
            Err(DialError::Local(e)) => return Verdict::Inconclusive(e),
            Err(DialError::Backend(_)) => return Verdict::Fail,
        };
        let pass = match policy.kind {
            CheckKind::Tcp => true,
            CheckKind::Http if connector.is_h2() => http2_probe(policy, address, io).await,
            CheckKind::Http => http_probe(policy, address, io).await,
            CheckKind::Grpc => grpc_probe(policy, address, io).await,
        };
        if pass {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    };
    tokio::time::timeout(policy.timeout, probe)
        .await
        .unwrap_or(Verdict::Fail)
}

fn check_request<B>(policy: &CheckPolicy, address: &str, body: B) -> Option<http::Request<B>> {
    let host = policy.host.as_deref().unwrap_or(address);
    http::Request::get(policy.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "switchyard-health-check")
        .body(body)
        .ok()
}

fn status_ok(policy: &CheckPolicy, s: http::StatusCode) -> bool {
    (policy.expect.0..=policy.expect.1).contains(&s.as_u16())
}

async fn http_probe(policy: &CheckPolicy, address: &str, io: Box<dyn Io>) -> bool {
    let Ok((mut tx, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let Some(mut req) = check_request(policy, address, Empty::new()) else {
        return false;
    };
    req.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    match tx.send_request(req).await {
        Ok(resp) => {
            let ok = status_ok(policy, resp.status());
            let _ = resp.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}

async fn http2_probe(policy: &CheckPolicy, address: &str, io: Box<dyn Io>) -> bool {
    let Ok((mut tx, conn)) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await
    else {
        return false;
    };
    tokio::spawn(conn);
    let Some(req) = check_request(policy, address, Empty::new()) else {
        return false;
    };
    match tx.send_request(req).await {
        Ok(resp) => status_ok(policy, resp.status()),
        Err(_) => false,
    }
}

/// gRPC health v1 `Check` with an empty service name over h2c: SERVING (1) in the reply passes.
async fn grpc_probe(policy: &CheckPolicy, address: &str, stream: Box<dyn Io>) -> bool {
    let Ok((mut tx, conn)) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    else {
        return false;
    };
    tokio::spawn(conn);
    // Length-prefixed message: not compressed, length 0 (HealthCheckRequest with service "").
    let req = http::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        policy.host.as_deref().unwrap_or(address)
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header("te", "trailers")
    .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])));
    let Ok(req) = req else { return false };
    let Ok(resp) = tx.send_request(req).await else {
        return false;
    };
    if resp.status() != http::StatusCode::OK {
        return false;
    }
    let Ok(collected) = resp.into_body().collect().await else {
        return false;
    };
    let grpc_ok = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .is_none_or(|v| v == "0");
    let body = collected.to_bytes();
    // HealthCheckResponse { status = 1 (SERVING) } encodes as field 1 varint: 0x08 0x01.
    grpc_ok && body.len() >= 7 && body[5..].windows(2).any(|w| w == [0x08, 0x01])
}
