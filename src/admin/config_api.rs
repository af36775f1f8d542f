//! Admin API: the configuration as a whole — `POST /update-config` (the brief's endpoint, both
//! forms), `GET|PUT /api/v1/config` with ETag and If-Match, the dry-run `validate`, versions and
//! rollback. Every change goes through [`Shared::apply_checked`].

use super::api::{applied, parse_json, read_json, ApiError, Body, S};
use crate::config::{self, BackendConfig, Config, ConfigError, Format, Problem};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// A whole configuration from a body: JSON by content type (or a leading `{`), TOML otherwise.
/// Syntax errors are 400; unknown keys and invalid values are 422 with their paths.
fn parse_config_body(headers: &HeaderMap, body: &[u8]) -> Result<Config, ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format =
        if ct.contains("json") || (!ct.contains("toml") && text.trim_start().starts_with('{')) {
            Format::Json
        } else {
            Format::Toml
        };
    config::parse_config(text, format, None).map_err(|e| {
        // A problem without a path is a syntax error: the body could not be read at all.
        if e.problems.len() == 1 && e.problems[0].path.is_empty() {
            let p = &e.problems[0];
            ApiError::BadRequest(match (p.line, p.column) {
                (Some(l), Some(c)) => format!("{} (line {l}, column {c})", p.message),
                _ => p.message.clone(),
            })
        } else {
            ApiError::Invalid(e)
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Patch {
    upstream: Option<String>,
    /// Options, so that a field sent at all (even empty) can be told apart from one left out.
    add: Option<Vec<BackendConfig>>,
    remove: Option<Vec<String>>,
    /// Kept as the client wrote it, so the whole configuration is parsed from its own text
    /// (a `Value` would have settled two equal keys by the last one).
    config: Option<Box<serde_json::value::RawValue>>,
}

/// The brief's endpoint: add/remove servers of an upstream, or replace the whole configuration.
pub(super) async fn update_config(
    State(shared): S,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // Every problem of a patch is reported at once: wrong values in the body, and what the
    // rest of the patch would break.
    let (patch, mut problems, cuts) = match read_json::<Patch>(&body)? {
        Body::Clean(p) => (p, Vec::new(), Default::default()),
        Body::Invalid {
            rest: Some(p),
            problems,
            cuts,
        } if p.config.is_none() => (p, problems, cuts),
        Body::Invalid { problems, .. } => return Err(ApiError::Invalid(ConfigError { problems })),
    };
    if let Some(whole) = patch.config {
        // The two forms are exclusive: applying the whole configuration and dropping the patch
        // sent with it would report success for a change that was never made.
        let mixed: Vec<Problem> = [
            ("upstream", patch.upstream.is_some()),
            ("add", patch.add.is_some()),
            ("remove", patch.remove.is_some()),
        ]
        .into_iter()
        .filter(|(_, sent)| *sent)
        .map(|(field, _)| {
            Problem::new(
                field,
                "cannot be combined with config (the whole configuration); send one form",
            )
        })
        .collect();
        if !mixed.is_empty() {
            return Err(ApiError::Invalid(ConfigError { problems: mixed }));
        }
        let text = whole.get();
        let mut cfg = parse_config_body(&json_headers(&headers), text.as_bytes())?;
        unredact(&shared, &mut cfg);
        return Ok(applied(shared.apply_checked(
            cfg,
            "api /update-config",
            true,
            None,
        )?));
    }
    let mut cfg = (*shared.current().config).clone();
    let name = match patch.upstream {
        Some(n) => n,
        None if cfg.upstreams.len() == 1 => {
            cfg.upstreams.keys().next().cloned().unwrap_or_default()
        }
        None => {
            return Err(ApiError::Invalid(ConfigError::one(
                "upstream",
                "several upstreams exist; name one",
            )))
        }
    };
    let up = cfg
        .upstreams
        .get_mut(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no upstream named {name:?}")))?;
    let before = up.backends.clone();
    for (i, addr) in patch.remove.unwrap_or_default().iter().enumerate() {
        let n = up.backends.len();
        up.backends.retain(|b| &b.address != addr);
        if up.backends.len() == n {
            problems.push(Problem::new(
                format!("remove[{}]", cuts.original_index("remove", i)),
                format!("{addr} is not a backend of {name}"),
            ));
        }
    }
    let added_from = up.backends.len();
    up.backends.extend(patch.add.unwrap_or_default());
    if !problems.is_empty() {
        // What is left is validated too, so one answer lists everything. An added backend is
        // named by the place it would have had with nothing cut from `add`, as it is when the
        // patch has no wrong-typed values.
        let prefix = format!("upstreams.{name}.backends[");
        problems.extend(config::validate(&cfg).into_iter().map(|mut p| {
            let index = p.path.strip_prefix(&prefix).and_then(|r| r.split_once(']'));
            if let Some((Ok(k), tail)) = index.map(|(k, t)| (k.parse::<usize>(), t)) {
                if k >= added_from {
                    let k = added_from + cuts.original_index("add", k - added_from);
                    p.path = format!("{prefix}{k}]{tail}");
                }
            }
            p
        }));
        return Err(ApiError::Invalid(ConfigError { problems }));
    }
    super::api::owned_by_discovery(&name, up, &before)?;
    Ok(applied(shared.apply_checked(
        cfg,
        "api /update-config",
        true,
        None,
    )?))
}

fn json_headers(_: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h
}

#[derive(Deserialize)]
pub(super) struct FormatQuery {
    format: Option<String>,
}

/// What `GET /api/v1/config` shows for an inline `admin.token`, as Envoy's config dump shows
/// secrets: anyone who may read the configuration need not learn the credential with it. A
/// configuration sent back with this value keeps the token in service ([`unredact`]), so
/// GET-edit-PUT round trips work.
pub const REDACTED: &str = "[redacted]";

fn redacted(cfg: &Config) -> std::borrow::Cow<'_, Config> {
    if cfg.admin.token.is_none() {
        return std::borrow::Cow::Borrowed(cfg);
    }
    let mut shown = cfg.clone();
    shown.admin.token = Some(REDACTED.into());
    std::borrow::Cow::Owned(shown)
}

/// A configuration sent with the redacted token means "the token in service".
fn unredact(shared: &crate::state::Shared, cfg: &mut Config) {
    if cfg.admin.token.as_deref() == Some(REDACTED) {
        cfg.admin
            .token
            .clone_from(&shared.current().config.admin.token);
    }
}

pub(super) async fn get_config(State(shared): S, Query(q): Query<FormatQuery>) -> Response {
    let snap = shared.current();
    let etag = format!("\"{}\"", snap.version);
    let shown = redacted(&snap.config);
    if q.format.as_deref() == Some("toml") {
        return (
            [
                (header::ETAG, etag),
                (header::CONTENT_TYPE, "application/toml".into()),
            ],
            config::to_toml(&shown),
        )
            .into_response();
    }
    ([(header::ETAG, etag)], Json(&*shown)).into_response()
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        None | Some("*") => Ok(None),
        Some(v) => v
            .trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse()
            .map(Some)
            .map_err(|_| {
                ApiError::BadRequest(format!("If-Match {v:?} is not an ETag of this API"))
            }),
    }
}

pub(super) async fn put_config(
    State(shared): S,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let expect = if_match(&headers)?;
    let mut cfg = parse_config_body(&headers, &body)?;
    unredact(&shared, &mut cfg);
    let a = shared.apply_checked(cfg, "api PUT /api/v1/config", true, expect)?;
    Ok(([(header::ETAG, format!("\"{}\"", a.version))], applied(a)).into_response())
}

pub(super) async fn validate_config(
    State(shared): S,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let mut cfg = parse_config_body(&headers, &body)?;
    unredact(&shared, &mut cfg);
    let changes = config::diff::diff(&shared.current().config, &cfg);
    Ok(Json(json!({"valid": true, "changes": changes})))
}

pub(super) async fn versions(State(shared): S) -> Json<Value> {
    let v = shared.versions();
    Json(json!({"current": shared.current().version, "versions": v}))
}

#[derive(Deserialize)]
pub(super) struct Rollback {
    version: u64,
}

pub(super) async fn rollback(
    State(shared): S,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let r: Rollback = parse_json(&body)?;
    let target = shared
        .versions()
        .into_iter()
        .find(|v| v.version == r.version)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "version {} is not among the kept versions",
                r.version
            ))
        })?;
    let cfg = (*target.config).clone();
    Ok(applied(shared.apply_checked(
        cfg,
        &format!("rollback to version {}", r.version),
        true,
        None,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(body: &str) -> Vec<String> {
        match read_json::<Patch>(body.as_bytes()) {
            Ok(Body::Invalid { problems, .. }) => problems.into_iter().map(|p| p.path).collect(),
            Ok(Body::Clean(_)) => Vec::new(),
            Err(_) => vec!["(400)".into()],
        }
    }

    /// Every wrong value of a patch is found, and the whole configuration it may carry (kept as
    /// raw text) is not mistaken for one when the tree of values is read.
    #[test]
    fn a_patch_body_reports_every_wrong_value() {
        assert_eq!(
            paths(r#"{"add": [{"address": 5}, {"address": "a:1", "weight": "x"}], "remove": [1]}"#),
            ["add[0].address", "add[1].weight", "remove[0]"]
        );
        assert_eq!(
            paths(r#"{"config": {"upstreams": {}}, "upstream": 5}"#),
            ["upstream"]
        );
        assert_eq!(paths(r#"{"add": [], "wat": 1}"#), ["wat"]);
        assert_eq!(paths(r#"{"add": [{"address": 5}"#), ["(400)"]);
        assert_eq!(paths(r#"{"add": []}"#), Vec::<String>::new());
    }
}
