//! Admin routes of the distributed control plane: `GET /api/v1/cluster` (cluster mode: this
//! instance, its etcd connectivity, the shared configuration revision it runs, any document it
//! refused, and every registered instance with its versions) and `GET /api/v1/discovery` (each
//! discovery source: state, last known backend count, last error). Merged into the admin router
//! behind the same token check as the rest of `/api/v1`.

use crate::cluster::status;
use crate::state::Shared;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/discovery", get(discovery))
}

async fn cluster(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let version = shared.current().version;
    match status::of(&shared).and_then(|c| c.cluster.clone()) {
        Some(s) => {
            let mut body = s.to_json();
            body["config_version"] = json!(version);
            Json(body)
        }
        None => Json(json!({"enabled": false, "config_version": version, "instances": []})),
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let sources = status::of(&shared)
        .map(|c| c.discovery.statuses())
        .unwrap_or_default();
    Json(json!({ "upstreams": sources }))
}
