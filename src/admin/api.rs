//! Admin API routes and handlers: parse, call the one door ([`Shared::apply_checked`]) or read
//! live state, map errors to responses. Every change validates the whole resulting configuration
//! first; an invalid one gets 422 with the field path and changes nothing anywhere.

use super::{auth, config_api};
use crate::config::{self, BackendConfig, ConfigError};
use crate::state::{ApplyError, Shared};
use crate::upstream::backend::{now_ms, BackendState};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

pub(super) type S = State<Arc<Shared>>;

/// Admin request bodies above this are refused (413): a configuration of 10,000 backends is
/// about 400 KiB of JSON.
const MAX_BODY: usize = 4 << 20;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/update-config", post(config_api::update_config))
        .route(
            "/api/v1/config",
            get(config_api::get_config).put(config_api::put_config),
        )
        .route("/api/v1/config/validate", post(config_api::validate_config))
        .route("/api/v1/config/versions", get(config_api::versions))
        .route("/api/v1/config/rollback", post(config_api::rollback))
        .route("/api/v1/upstreams", get(upstreams))
        .route("/api/v1/routes/match", get(super::route_api::route_match))
        .route("/api/v1/upstreams/{name}/backends", post(add_backend))
        .route(
            "/api/v1/upstreams/{name}/backends/{address}",
            axum::routing::patch(patch_backend).delete(delete_backend),
        )
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/history", get(history))
        .route("/metrics", get(metrics))
        .merge(super::cluster_api::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .merge(super::ui::routes())
        .with_state(shared)
}

/// An API failure and its response.
pub enum ApiError {
    BadRequest(String),
    Invalid(ConfigError),
    NotFound(String),
    Conflict(u64),
    /// The change is not the API's to make (409): a discovery source owns that list.
    Owned(String),
    Internal(String),
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Invalid(c) => ApiError::Invalid(c),
            ApplyError::Conflict(v) => ApiError::Conflict(v),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"error": m})),
            ApiError::Invalid(c) => {
                let first = c
                    .problems
                    .first()
                    .cloned()
                    .unwrap_or_else(|| config::Problem::new("", "invalid"));
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"valid": false, "error": first.message, "path": first.path, "problems": c.problems}),
                )
            }
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"error": m})),
            ApiError::Conflict(v) => (
                StatusCode::PRECONDITION_FAILED,
                json!({"error": format!("configuration changed meanwhile; current version is {v}"), "config_version": v}),
            ),
            ApiError::Owned(m) => (StatusCode::CONFLICT, json!({"error": m})),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": m})),
        };
        (status, Json(body)).into_response()
    }
}

pub(super) fn applied(a: crate::state::Applied) -> Json<Value> {
    let mut v = json!({"config_version": a.version, "changes": a.changes});
    if let Some(w) = a.not_written {
        v["written"] = json!(false);
        v["warning"] = json!(w);
    }
    Json(v)
}

async fn health(State(shared): S) -> impl IntoResponse {
    let snap = shared.current();
    let now = now_ms();
    let mut ups = BTreeMap::new();
    for u in &snap.upstreams {
        let available: Vec<usize> = (0..u.backends.len())
            .filter(|&i| u.available(i, now))
            .collect();
        // Of those, the ones no health check has vouched for (none configured, or not yet
        // checked): "healthy" means "takes traffic", and this says how much of it is unverified.
        let unchecked = available
            .iter()
            .filter(|&&i| u.backends[i].state.health() == crate::upstream::backend::Health::Unknown)
            .count();
        ups.insert(
            u.name.clone(),
            json!({"healthy": available.len(), "unchecked": unchecked, "total": u.backends.len()}),
        );
    }
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": shared.started.elapsed().as_secs(),
        "config_version": snap.version,
        "upstreams": ups,
    });
    // Cluster mode and discovery sources: etcd reachability, failing sources.
    crate::cluster::status::extend_health(&shared, &mut body);
    Json(body)
}

/// Parses a JSON body: malformed JSON is 400; well-formed JSON with values of the wrong type
/// or form is 422 with every such value's path (`add[0].weight`), as the contract asks of an
/// invalid change.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match read_json(body)? {
        Body::Clean(v) => Ok(v),
        Body::Invalid { problems, .. } => Err(ApiError::Invalid(ConfigError { problems })),
    }
}

/// A JSON body read as far as it goes.
pub(super) enum Body<T> {
    Clean(T),
    /// Every problem, with its path in the body; `rest` is what is left once the wrong values
    /// are cut out (paths in it translate back through `cuts`), for a caller that validates it
    /// too so that one answer lists everything.
    Invalid {
        rest: Option<T>,
        problems: Vec<config::Problem>,
        cuts: config::load::Cuts,
    },
}

/// [`parse_json`], keeping what is left of a body with problems.
pub(super) fn read_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Body<T>, ApiError> {
    // Straight from the bytes first, not through a `Value`, whose maps would keep only the last
    // of two equal keys (`"weight": 0, "weight": 10000`) where the parser refuses them.
    // Unknown keys are errors here as in a configuration file: `"wieght": 0` must not add a
    // backend at full weight.
    let mut unknown = Vec::new();
    let mut note = |p: serde_ignored::Path<'_>| unknown.push(config::load::path_of(&p));
    let mut de = serde_json::Deserializer::from_slice(body);
    let direct =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(&mut de, &mut note));
    let first = match direct {
        Ok(v) => {
            de.end()
                .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
            if unknown.is_empty() {
                return Ok(Body::Clean(v));
            }
            let problems = unknown
                .into_iter()
                .map(|p| config::Problem::new(p, "unknown key"))
                .collect();
            return Ok(Body::Invalid {
                rest: Some(v),
                problems,
                cuts: Default::default(),
            });
        }
        Err(e) if e.inner().classify() == serde_json::error::Category::Data => {
            config::Problem::new(config::load::path_text(e.path()), e.inner().to_string())
        }
        Err(e) => {
            return Err(ApiError::BadRequest(format!(
                "malformed JSON: {}",
                e.inner()
            )))
        }
    };
    // The parser stops at the first wrong value: find the others as the whole-configuration
    // form does, by cutting each out of a tree of values and reading the rest again.
    let tree: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    let every = config::load::deserialize_every::<T>(tree);
    if every.problems.is_empty() {
        // Only the direct parse sees it (a duplicate key, which a tree of values cannot hold),
        // and the tree's rest settled that key by the last value: no rest to go on with.
        return Ok(Body::Invalid {
            rest: None,
            problems: vec![first],
            cuts: every.cuts,
        });
    }
    let mut problems: Vec<config::Problem> = every
        .unknown
        .into_iter()
        .map(|p| config::Problem::new(p, "unknown key"))
        .collect();
    problems.extend(every.problems);
    Ok(Body::Invalid {
        rest: every.rest,
        problems,
        cuts: every.cuts,
    })
}

/// Every upstream and backend with live state, and for an upstream fed by discovery its
/// source's status (as in `/api/v1/discovery`), so the UI shows it beside the backends it
/// produced, refreshed with every `stats` event.
pub fn upstreams_json(shared: &Shared) -> Value {
    let snap = shared.current();
    let now = now_ms();
    let discovery = crate::cluster::status::of(shared)
        .map(|c| c.discovery.statuses())
        .unwrap_or_default();
    let ups: Vec<Value> = snap
        .upstreams
        .iter()
        .map(|u| {
            let row =
                |address: &str, weight: u32, backup: bool, s: &BackendState, removed: bool| {
                    json!({
                        "address": address,
                        "weight": weight,
                        "backup": backup,
                        "health": s.health().name(),
                        "circuit": s.breaker.state().name(),
                        "draining": s.is_draining() || weight == 0,
                        "removed": removed,
                        "ejected": s.is_ejected(now),
                        "active_requests": s.active.load(Relaxed),
                        "requests_total": s.requests_total.load(Relaxed),
                        "failures_total": s.failures_total.load(Relaxed),
                        "latency_ewma_ms": (s.ewma_us_at(now)).round() / 1000.0,
                    })
                };
            let mut backends: Vec<Value> = u
                .backends
                .iter()
                .map(|b| row(&b.address, b.weight, b.backup, &b.state, false))
                .collect();
            // Removed, still finishing requests: listed until the last one ends.
            for s in shared.registry.leaving(&u.name) {
                backends.push(row(&s.address, 0, false, &s, true));
            }
            let mut up =
                json!({"name": u.name, "algorithm": u.algorithm.name(), "backends": backends});
            if u.max_connections.is_some() {
                up["queued"] = json!(u.queue.waiting());
            }
            if let Some(s) = &u.sticky {
                up["sticky_cookie"] = json!(s.cookie);
            }
            if let Some(d) = discovery.get(&u.name) {
                up["discovery"] = json!(d);
            }
            up
        })
        .collect();
    let listeners: Vec<Value> = snap
        .config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            // The concrete address when bound (port 0 shows its real port).
            let bound = shared
                .bound
                .get()
                .and_then(|b| b.get(i))
                .map(|a| a.to_string());
            json!({
                "name": l.name,
                "bind": l.bind,
                "address": bound.unwrap_or_else(|| l.bind.clone()),
                "tls": l.tls.is_some(),
                "mode": l.mode,
                "upstream": l.upstream,
                "sni_routes": l.sni_routes,
            })
        })
        .collect();
    json!({"config_version": snap.version, "upstreams": ups, "listeners": listeners, "routes": snap.config.routes})
}

async fn upstreams(State(shared): S) -> Json<Value> {
    Json(upstreams_json(&shared))
}

/// Runs `edit` on a copy of the named upstream's configuration and applies the result.
fn change_upstream(
    shared: &Shared,
    name: &str,
    source: &str,
    edit: impl FnOnce(&mut Vec<BackendConfig>) -> Result<(), ApiError>,
) -> Result<crate::state::Applied, ApiError> {
    let mut cfg = (*shared.current().config).clone();
    let up = cfg
        .upstreams
        .get_mut(name)
        .ok_or_else(|| ApiError::NotFound(format!("no upstream named {name:?}")))?;
    let before = up.backends.clone();
    edit(&mut up.backends)?;
    owned_by_discovery(name, up, &before)?;
    Ok(shared.apply_checked(cfg, source, true, None)?)
}

/// Refuses (409) a change to the backends of an upstream whose discovery source owns them, but
/// for `drain`, which stays the operator's: otherwise the API would answer 200 and the source
/// would undo the change a moment later (Traefik's dashboard shows such objects read-only).
pub(super) fn owned_by_discovery(
    name: &str,
    up: &crate::config::UpstreamConfig,
    before: &[BackendConfig],
) -> Result<(), ApiError> {
    let Some(d) = &up.discovery else {
        return Ok(());
    };
    let undrained = |l: &[BackendConfig]| -> Vec<BackendConfig> {
        l.iter()
            .map(|b| BackendConfig {
                drain: false,
                ..b.clone()
            })
            .collect()
    };
    if undrained(&up.backends) == undrained(before) {
        return Ok(());
    }
    let source = if let Some(f) = &d.file {
        format!("the file {f}")
    } else if let Some(p) = &d.etcd_prefix {
        format!("etcd under {p}")
    } else {
        "DNS".to_string()
    };
    Err(ApiError::Owned(format!(
        "the backends of {name} come from its discovery source ({source}): change them there; only drain applies here"
    )))
}

async fn add_backend(
    State(shared): S,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: BackendConfig = parse_json(&body)?;
    let a = change_upstream(&shared, &name, "api add backend", |list| {
        list.push(b);
        Ok(())
    })?;
    Ok((StatusCode::CREATED, applied(a)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendPatch {
    weight: Option<u32>,
    drain: Option<bool>,
    backup: Option<bool>,
}

fn find<'a>(
    list: &'a mut [BackendConfig],
    address: &str,
) -> Result<&'a mut BackendConfig, ApiError> {
    list.iter_mut()
        .find(|b| b.address == address)
        .ok_or_else(|| ApiError::NotFound(format!("no backend {address}")))
}

async fn patch_backend(
    State(shared): S,
    Path((name, address)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let p: BackendPatch = parse_json(&body)?;
    let a = change_upstream(&shared, &name, "api patch backend", |list| {
        let b = find(list, &address)?;
        if let Some(w) = p.weight {
            b.weight = w;
        }
        if let Some(d) = p.drain {
            b.drain = d;
        }
        if let Some(k) = p.backup {
            b.backup = k;
        }
        Ok(())
    })?;
    Ok(applied(a))
}

async fn delete_backend(
    State(shared): S,
    Path((name, address)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let a = change_upstream(&shared, &name, "api delete backend", |list| {
        find(list, &address)?;
        list.retain(|b| b.address != address);
        Ok(())
    })?;
    Ok(applied(a))
}

/// Server-sent events: control-plane events as they happen, and a `stats` event every second
/// with the live state of every backend (the UI derives rates from consecutive ones).
async fn events(
    State(shared): S,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    use tokio_stream::wrappers::{BroadcastStream, IntervalStream};
    use tokio_stream::StreamExt;
    let live = BroadcastStream::new(crate::events::subscribe())
        .filter_map(|e| e.ok())
        .map(|e| {
            Ok(Event::default()
                .event(e.kind)
                .data(serde_json::to_string(&e).unwrap_or_default()))
        });
    let tick = IntervalStream::new(tokio::time::interval(Duration::from_secs(1))).map(move |_| {
        Ok(Event::default()
            .event("stats")
            .data(upstreams_json(&shared).to_string()))
    });
    Sse::new(live.merge(tick)).keep_alive(KeepAlive::default())
}

async fn history() -> Json<Value> {
    Json(json!(crate::events::history()))
}

async fn metrics(State(shared): S) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::observe::metrics::render(&shared),
    )
}
