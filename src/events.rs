//! Control-plane events (health changes, breaker changes, ejections, reloads, configuration
//! changes): broadcast to `/api/v1/events` subscribers, kept in a short history for the UI, and
//! logged through `tracing` as structured events.

use crate::upstream::backend::{BackendState, Health};
use crate::upstream::breaker::Circuit;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use tokio::sync::broadcast;

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Seconds since the Unix epoch, with milliseconds.
    pub time: f64,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub detail: String,
}

const HISTORY: usize = 200;

struct Bus {
    tx: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
}

fn bus() -> &'static Bus {
    static BUS: OnceLock<Bus> = OnceLock::new();
    BUS.get_or_init(|| Bus {
        tx: broadcast::channel(1024).0,
        history: Mutex::new(VecDeque::new()),
    })
}

pub fn subscribe() -> broadcast::Receiver<Event> {
    bus().tx.subscribe()
}

pub fn history() -> Vec<Event> {
    bus()
        .history
        .lock()
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default()
}

pub fn emit(kind: &'static str, upstream: Option<&str>, backend: Option<&str>, detail: String) {
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    tracing::info!(target: "switchyard::events", kind, upstream, backend, "{detail}");
    let ev = Event {
        time,
        kind,
        upstream: upstream.map(str::to_string),
        backend: backend.map(str::to_string),
        detail,
    };
    if let Ok(mut h) = bus().history.lock() {
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(ev.clone());
    }
    let _ = bus().tx.send(ev);
}

pub fn health_changed(s: &BackendState, from: Health, to: Health) {
    s.health_changes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    emit(
        "health",
        Some(&s.upstream),
        Some(&s.address),
        format!("{} -> {}", from.name(), to.name()),
    );
}

pub fn breaker_changed(s: &BackendState, to: Circuit) {
    if to == Circuit::Open {
        s.circuit_opens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    emit(
        "circuit",
        Some(&s.upstream),
        Some(&s.address),
        format!("circuit {}", to.name()),
    );
}

pub fn ejected(s: &BackendState, for_ms: u64) {
    emit(
        "ejection",
        Some(&s.upstream),
        Some(&s.address),
        format!("ejected for {for_ms}ms after consecutive failures"),
    );
}
