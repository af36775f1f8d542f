//! The admin server (axum): `/health`, `/update-config`, the `/api/v1` REST API, server-sent
//! events, Prometheus `/metrics` and the embedded web UI. Handlers are thin: parse, call the one
//! door ([`crate::state::Shared::apply`]) or read live state, map errors to responses.

pub mod api;
pub mod auth;
pub mod cluster_api;
mod config_api;
mod origin;
pub mod ui;

use crate::state::Shared;
use std::sync::Arc;
use tokio::sync::watch;

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let app = api::router(shared);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!("admin server: {e}");
    }
}

/// Re-reads the configuration file and applies it through the one door; failures keep the
/// running configuration and are logged with every problem.
pub fn reload_from_file(shared: &Shared, source: &str) {
    let Some(path) = &shared.config_path else {
        return;
    };
    match crate::config::load_file(path) {
        Ok((mut cfg, _)) => {
            // The file names a discovered upstream's seed backends; the source owns the live
            // list, which a reload keeps (as HAProxy and Envoy leave provider-owned endpoints
            // alone): otherwise each reload would swap the seeds in until the next discovery
            // round, sending traffic to hosts the source no longer lists.
            if let Some(d) = shared.discovered.get() {
                d.overlay(&mut cfg);
            }
            // The file is compared with the running configuration, not with what this process
            // last wrote: the write-back of an API change parses to what is running and applies
            // nothing, while a file put back to an earlier write-back after some other change
            // (an edit, SIGHUP) differs from what is running and is applied.
            match shared.apply_checked(cfg, source, false, None) {
                // The watcher sees every write-back of its own: not worth a line. A signal is
                // an operator asking, who is told.
                Ok(a) if a.changes.is_empty() && source == "file" => {
                    tracing::debug!(
                        version = a.version,
                        "the file matches the running configuration"
                    )
                }
                Ok(a) if a.changes.is_empty() => tracing::info!(
                    version = a.version,
                    source,
                    "configuration unchanged: the file matches the running configuration"
                ),
                Ok(a) => tracing::info!(version = a.version, source, "configuration reloaded"),
                Err(e) => tracing::error!(
                    source,
                    "reload refused, keeping the running configuration: {}",
                    one_line(&e)
                ),
            }
        }
        Err(e) => {
            crate::observe::metrics::reload(false);
            crate::events::emit("reload_failed", None, None, format!("{source}: {e}"));
            tracing::error!(
                source,
                "reload refused, keeping the running configuration: {}",
                one_line(&e)
            )
        }
    }
}

/// Every problem of a refused configuration on one line, joined with "; ": log shippers read a
/// line as one event, and a list on lines of its own would arrive as unrelated events.
fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reloads when the configuration file changes on disk (polled by mtime and size every 500ms:
/// portable, and immune to editors that replace the file rather than writing it).
pub fn watch_config_file(shared: Arc<Shared>) {
    let Some(path) = shared.config_path.clone() else {
        return;
    };
    tokio::spawn(async move {
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut last = stamp(&path);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let now = stamp(&path);
            if now != last {
                last = now;
                reload_from_file(&shared, "file");
            }
        }
    });
}
