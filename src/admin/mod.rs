//! The admin server (axum): `/health`, `/update-config`, the `/api/v1` REST API, server-sent
//! events, Prometheus `/metrics` and the embedded web UI. Handlers are thin: parse, call the one
//! door ([`crate::state::Shared::apply`]) or read live state, map errors to responses.

pub mod api;
pub mod auth;
pub mod cluster_api;
mod config_api;
mod origin;
mod route_api;
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
    reload(
        shared,
        source,
        crate::config::load_file(path).map(|(c, _)| c),
    );
}

/// [`reload_from_file`] with the file's text already read.
fn reload_text(shared: &Shared, source: &str, text: &str) {
    let Some(path) = &shared.config_path else {
        return;
    };
    let name = path.display().to_string();
    let format = crate::config::Format::of_path(path);
    reload(
        shared,
        source,
        crate::config::parse_config(text, format, Some(&name)),
    );
}

fn reload(
    shared: &Shared,
    source: &str,
    loaded: Result<crate::config::Config, crate::config::ConfigError>,
) {
    match loaded {
        Ok(mut cfg) => {
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

/// How often the watcher looks at the file's stamp (modification time, size, inode).
const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a file written in place must stay unchanged, and read the same at both ends, before
/// it is applied. A writer that truncates and writes in pieces (`cat a b > f` over a slow pipe, a
/// tool writing piecewise) leaves a prefix that may itself be a valid configuration; applying it
/// would put a half-written configuration in service. 500 ms covers the pauses of such writers,
/// as the watch debounces of other tools do (webpack 300 ms, cargo-watch 500 ms), and delays an
/// edit by about half a second. A file replaced by a rename is complete and needs no wait.
const WATCH_QUIET: std::time::Duration = std::time::Duration::from_millis(500);

/// Reloads when the configuration file changes on disk (polled every [`WATCH_POLL`] by
/// modification time, size and inode: portable, and immune to editors that replace the file
/// rather than writing it). A file replaced by a rename (an atomic write) is applied at the next
/// poll; a file written in place only once it has been quiet for [`WATCH_QUIET`] and its content
/// read at both ends of that window is equal.
pub fn watch_config_file(shared: Arc<Shared>) {
    let Some(path) = shared.config_path.clone() else {
        return;
    };
    tokio::spawn(async move {
        use std::os::unix::fs::MetadataExt;
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len(), m.dev(), m.ino()))
        };
        let read = |p: &std::path::Path| std::fs::read_to_string(p).ok();
        let mut last = stamp(&path);
        // A change seen but not applied yet: when it may be, and the content read when it was seen.
        let mut pending: Option<(tokio::time::Instant, Option<String>)> = None;
        loop {
            tokio::time::sleep(WATCH_POLL).await;
            let now = stamp(&path);
            if now != last {
                // A new inode was renamed into place whole: one poll confirms it. In place, the
                // writer may not be done: a whole quiet window.
                let replaced =
                    matches!((&last, &now), (Some(a), Some(b)) if (a.2, a.3) != (b.2, b.3));
                let window = if replaced { WATCH_POLL } else { WATCH_QUIET };
                last = now;
                pending = Some((tokio::time::Instant::now() + window, read(&path)));
                continue;
            }
            let Some((due, text)) = &pending else {
                continue;
            };
            if tokio::time::Instant::now() < *due {
                continue;
            }
            let again = read(&path);
            if again != *text {
                // Changed without a visible stamp change (same size within the timestamp's
                // granularity): a whole window again.
                pending = Some((tokio::time::Instant::now() + WATCH_QUIET, again));
                continue;
            }
            pending = None;
            match again {
                // Exactly the text read twice, not a third read that a new write may have begun.
                Some(text) => reload_text(&shared, "file", &text),
                // Gone or unreadable: the reload says so and keeps the running configuration.
                None => reload_from_file(&shared, "file"),
            }
        }
    });
}
