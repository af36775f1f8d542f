//! Admin API routes and handlers.

use crate::state::Shared;
use crate::upstream::backend::Health;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

type S = State<Arc<Shared>>;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/v1/upstreams", get(upstreams))
        .with_state(shared)
}

async fn health(State(shared): S) -> impl IntoResponse {
    let snap = shared.current();
    let mut ups = BTreeMap::new();
    for u in &snap.upstreams {
        let healthy = (0..u.backends.len())
            .filter(|&i| {
                u.backends[i].state.health() != Health::Unhealthy
                    && u.available(i, crate::upstream::backend::now_ms())
            })
            .count();
        ups.insert(
            u.name.clone(),
            json!({"healthy": healthy, "total": u.backends.len()}),
        );
    }
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": shared.started.elapsed().as_secs(),
        "config_version": snap.version,
        "upstreams": ups,
    }))
}

/// Every upstream and backend with live state.
pub fn upstreams_json(shared: &Shared) -> Value {
    let snap = shared.current();
    let ups: Vec<Value> = snap
        .upstreams
        .iter()
        .map(|u| {
            let backends: Vec<Value> = u
                .backends
                .iter()
                .map(|b| {
                    let s = &b.state;
                    json!({
                        "address": b.address,
                        "weight": b.weight,
                        "health": s.health().name(),
                        "circuit": s.breaker.state().name(),
                        "draining": s.draining.load(Relaxed) || b.weight == 0,
                        "ejected": s.is_ejected(crate::upstream::backend::now_ms()),
                        "active_requests": s.active.load(Relaxed),
                        "requests_total": s.requests_total.load(Relaxed),
                        "failures_total": s.failures_total.load(Relaxed),
                        "latency_ewma_ms": (s.ewma_us() / 1000.0 * 1000.0).round() / 1000.0,
                    })
                })
                .collect();
            json!({"name": u.name, "algorithm": u.algorithm.name(), "backends": backends})
        })
        .collect();
    json!({"config_version": snap.version, "upstreams": ups})
}

async fn upstreams(State(shared): S) -> impl IntoResponse {
    Json(upstreams_json(&shared))
}
