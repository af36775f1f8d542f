//! Active health checks: one task per (upstream, backend) in the control runtime — once per
//! process, not per worker — probing on an interval with ±10% jitter (so a fleet of checkers does
//! not pulse in step). HTTP (path, expected status range, Host), TCP connect, and gRPC health v1.
//!
//! A backend starts `unknown` and is checked at once. `healthy_threshold` successes in a row make
//! it healthy and `unhealthy_threshold` failures unhealthy; a backend never yet seen healthy goes
//! unhealthy at its first failure, since it has no track record to give it credit.

use super::backend::{BackendState, Health};
use crate::config::{validate::parse_status_range, CheckKind, HealthCheckConfig};
use crate::state::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
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
                    let policy = CheckPolicy::from_config(hc);
                    for b in &up.backends {
                        wanted.insert(
                            (up.name.clone(), b.address.clone()),
                            (policy.clone(), b.state.clone()),
                        );
                    }
                }
                running.retain(|key, (policy, task)| {
                    let keep = wanted.get(key).is_some_and(|(p, _)| p == policy);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for (key, (policy, state)) in wanted {
                    running
                        .entry(key)
                        .or_insert_with(|| (policy.clone(), tokio::spawn(check_loop(policy, state))));
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

async fn check_loop(policy: CheckPolicy, state: Arc<BackendState>) {
    let (mut ok_run, mut fail_run) = (0u32, 0u32);
    loop {
        let ok = check_once(&policy, &state.address).await;
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
            }
        }
        let jitter = policy.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::time::sleep(jitter).await;
    }
}

/// One probe; true when the backend passed.
pub async fn check_once(policy: &CheckPolicy, address: &str) -> bool {
    tokio::time::timeout(policy.timeout, probe(policy, address))
        .await
        .unwrap_or(false)
}

async fn probe(policy: &CheckPolicy, address: &str) -> bool {
    let Ok(stream) = TcpStream::connect(address).await else {
        return false;
    };
    match policy.kind {
        CheckKind::Tcp => true,
        CheckKind::Http => http_probe(policy, address, stream).await,
        CheckKind::Grpc => grpc_probe(policy, address, stream).await,
    }
}

async fn http_probe(policy: &CheckPolicy, address: &str, stream: TcpStream) -> bool {
    let Ok((mut tx, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let host = policy.host.as_deref().unwrap_or(address);
    let req = http::Request::get(policy.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "switchyard-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new());
    let Ok(req) = req else { return false };
    match tx.send_request(req).await {
        Ok(resp) => {
            let s = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            (policy.expect.0..=policy.expect.1).contains(&s)
        }
        Err(_) => false,
    }
}

/// gRPC health v1 `Check` with an empty service name over h2c: SERVING (1) in the reply passes.
async fn grpc_probe(policy: &CheckPolicy, address: &str, stream: TcpStream) -> bool {
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
