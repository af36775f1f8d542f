//! Service discovery: per upstream with a `discovery` section, a task in the control runtime asks
//! a source — DNS A/AAAA or SRV ([`dns`]), a JSON file ([`file`]) or an etcd prefix ([`etcd`]) —
//! which backends exist, and the result goes in through the one door,
//! [`Shared::apply_checked`], with source `"discovery"` and `persist = false`.
//!
//! The rule: **a discovery source owns its upstream's backend list.** The `backends` written in
//! the file (or in etcd, in cluster mode) for such an upstream are seeds, served until the source
//! has answered once; from then on the list is what the source last said. Any later change —
//! API, file edit, etcd — that brings a different list for that upstream is corrected back (the
//! manager compares after every version change), and the cluster sync overlays the discovered
//! set before it applies, so no change wipes discovered backends. An operator's `drain` flag on
//! a discovered address is kept. Because the list is owned by the source, it does not matter
//! that an API change writes the current (discovered) list back to the file: after a restart it
//! is only the seed, i.e. the last known set.
//!
//! A failing source (lookup error, unreadable file, etcd unreachable) keeps the last known set,
//! never empties the upstream, and reports: an event, a log line, and its status in `/health`
//! and `/api/v1/discovery`. So does a source that answers with invalid entries (an etcd key
//! with a bad value, a bad entry in the file): each is listed by key in the status's `problems`
//! until it is fixed or removed, and the state is not `ok` meanwhile. Backends that leave the set drain like any removed backend; new ones
//! are health-checked before they take traffic (see `Upstream::require_checked`).

pub mod dns;
pub mod etcd;
pub mod file;
mod report;

pub use report::{Reporter, SourceProblem};

use crate::config::{BackendConfig, Config, DiscoveryConfig};
use crate::state::{ApplyError, Shared};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// What one source last reported, for `/health` and `/api/v1/discovery`.
#[derive(Clone, Debug, Serialize)]
pub struct SourceStatus {
    /// `"dns web.internal:80"`, `"srv _http._tcp.web"`, `"file backends.json"`, `"etcd /prefix/"`.
    pub source: String,
    /// `"ok"`, `"degraded"` (answered, but some entries are invalid: see `problems`),
    /// `"failing"` (last known set kept) or `"waiting"` (no answer yet: seeds in use).
    pub state: &'static str,
    /// Backends in the last known set.
    pub backends: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<f64>,
    /// Entries of the source that are not valid backends, each by its key; empty when all are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<SourceProblem>,
}

struct Entry {
    status: SourceStatus,
    /// The last known set, sorted by address; `None` until the source first answers.
    set: Option<Vec<BackendConfig>>,
}

/// Discovered backend sets and source health of one running Switchyard.
#[derive(Default)]
pub struct Discovered {
    by_upstream: Mutex<HashMap<String, Entry>>,
    /// Woken when a set changes, so the manager applies it at once.
    changed: Notify,
}

impl Discovered {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.by_upstream.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the backends of every upstream that has a discovered set with that set; returns
    /// whether `cfg` changed. Order is left alone when only the order differs.
    pub fn overlay(&self, cfg: &mut Config) -> bool {
        let map = self.lock();
        let mut changed = false;
        for (name, up) in cfg.upstreams.iter_mut() {
            let Some(set) = map.get(name).and_then(|e| e.set.as_ref()) else {
                continue;
            };
            if up.discovery.is_none() || same_set(&up.backends, set) {
                continue;
            }
            let drained: Vec<&str> = up
                .backends
                .iter()
                .filter(|b| b.drain)
                .map(|b| b.address.as_str())
                .collect();
            up.backends = set
                .iter()
                .map(|b| BackendConfig {
                    drain: drained.contains(&b.address.as_str()),
                    ..b.clone()
                })
                .collect();
            changed = true;
        }
        changed
    }

    /// Every source's status, by upstream.
    pub fn statuses(&self) -> BTreeMap<String, SourceStatus> {
        self.lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.status.clone()))
            .collect()
    }

    fn start(&self, upstream: &str, source: String) {
        self.lock().insert(
            upstream.to_string(),
            Entry {
                status: SourceStatus {
                    source,
                    state: "waiting",
                    backends: 0,
                    error: None,
                    last_success: None,
                    failing_since: None,
                    problems: Vec::new(),
                },
                set: None,
            },
        );
    }

    fn forget(&self, upstream: &str) {
        self.lock().remove(upstream);
    }
}

/// Whether two backend lists hold the same (address, weight) pairs, in any order.
fn same_set(a: &[BackendConfig], b: &[BackendConfig]) -> bool {
    let key = |l: &[BackendConfig]| {
        let mut v: Vec<(String, u32)> = l.iter().map(|x| (x.address.clone(), x.weight)).collect();
        v.sort();
        v
    };
    a.len() == b.len() && key(a) == key(b)
}

/// Identity of a source task: a change of any part restarts it.
#[derive(Clone, PartialEq)]
struct Wanted {
    discovery: DiscoveryConfig,
    etcd: Vec<String>,
}

/// Starts the manager: it keeps one source task per upstream with `discovery` (reconciled on
/// every configuration version) and applies discovered sets as they change.
pub fn spawn(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Arc<Discovered> {
    let discovered = Arc::new(Discovered::default());
    let d = discovered.clone();
    tokio::spawn(async move {
        let mut tasks: HashMap<String, (Wanted, JoinHandle<()>)> = HashMap::new();
        let mut seen = 0;
        loop {
            let snap = shared.current();
            if snap.version != seen {
                seen = snap.version;
                reconcile(&snap.config, &d, &mut tasks);
            }
            apply(&shared, &d);
            tokio::select! {
                _ = d.changed.notified() => {}
                // Version changes are polled, as the health checker does: cheap, and no hook in
                // the one door is needed to notice API, file or etcd changes.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, (_, t)) in tasks {
            t.abort();
        }
    });
    discovered
}

fn reconcile(
    cfg: &Config,
    d: &Arc<Discovered>,
    tasks: &mut HashMap<String, (Wanted, JoinHandle<()>)>,
) {
    let etcd = cfg
        .cluster
        .as_ref()
        .map(|c| c.etcd.clone())
        .unwrap_or_default();
    let wanted: HashMap<&String, Wanted> = cfg
        .upstreams
        .iter()
        .filter_map(|(name, u)| {
            let discovery = u.discovery.clone()?;
            let etcd = if discovery.etcd_prefix.is_some() {
                etcd.clone()
            } else {
                Vec::new()
            };
            Some((name, Wanted { discovery, etcd }))
        })
        .collect();
    tasks.retain(|name, (w, task)| {
        let keep = wanted.get(name) == Some(w);
        if !keep {
            task.abort();
            // A new source starts from the seeds, not from what an old source said.
            d.forget(name);
        }
        keep
    });
    for (name, w) in wanted {
        if tasks.contains_key(name) {
            continue;
        }
        let rep = Reporter::new(name.clone(), d.clone());
        let dc = &w.discovery;
        let interval = dc.interval.map(|i| i.get());
        let (label, task) = if let Some(host) = &dc.dns {
            let fut = dns::run_a(host.clone(), interval, rep);
            (format!("dns {host}"), tokio::spawn(fut))
        } else if let Some(name) = &dc.srv {
            let fut = dns::run_srv(name.clone(), interval, rep);
            (format!("srv {name}"), tokio::spawn(fut))
        } else if let Some(path) = &dc.file {
            let fut = file::run(path.into(), interval, rep);
            (format!("file {path}"), tokio::spawn(fut))
        } else if let Some(prefix) = &dc.etcd_prefix {
            let fut = etcd::run(w.etcd.clone(), prefix.clone(), rep);
            (format!("etcd {prefix}"), tokio::spawn(fut))
        } else {
            continue;
        };
        d.start(name, label);
        tasks.insert(name.clone(), (w, task));
    }
}

/// Brings every discovered set into the running configuration, if it is not there already.
/// Read-modify-write with the version check, so a concurrent API change is never overwritten.
fn apply(shared: &Shared, d: &Discovered) {
    for _ in 0..5 {
        let cur = shared.current();
        let mut cfg = (*cur.config).clone();
        if !d.overlay(&mut cfg) {
            return;
        }
        match shared.apply_checked(cfg, "discovery", false, Some(cur.version)) {
            Ok(_) => return,
            Err(ApplyError::Conflict(_)) => continue,
            Err(e) => {
                // Sources only hand in checked addresses, so this is unexpected; the manager
                // retries at the next change or tick rather than spin.
                tracing::error!("discovery: could not apply discovered backends: {e}");
                return;
            }
        }
    }
}

/// Exponential backoff for reconnecting sources: 100ms doubling to `max`.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
    /// The wait before the next attempt, with ±20% jitter so a fleet does not retry in step.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d.mul_f64(0.8 + fastrand::f64() * 0.4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(a: &str, w: u32) -> BackendConfig {
        BackendConfig {
            address: a.into(),
            weight: w,
            drain: false,
            backup: false,
        }
    }

    #[test]
    fn overlay_replaces_the_list_and_keeps_drain_flags() {
        let mut cfg = Config::default();
        let mut up = crate::config::UpstreamConfig {
            discovery: Some(DiscoveryConfig::default()),
            ..Default::default()
        };
        up.backends = vec![b("10.0.0.1:80", 1), b("10.0.0.2:80", 1)];
        up.backends[1].drain = true;
        cfg.upstreams.insert("web".into(), up);
        let d = Arc::new(Discovered::default());
        d.start("web", "test".into());
        assert!(!d.overlay(&mut cfg), "no answer yet: the seeds stay");
        let rep = Reporter::new("web".into(), d.clone());
        rep.found(vec![b("10.0.0.3:80", 2), b("10.0.0.2:80", 1)]);
        assert!(d.overlay(&mut cfg));
        let got = &cfg.upstreams["web"].backends;
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].address.as_str(), got[0].drain),
            ("10.0.0.2:80", true)
        );
        assert_eq!((got[1].address.as_str(), got[1].weight), ("10.0.0.3:80", 2));
        assert!(!d.overlay(&mut cfg), "already in place");
        rep.failed("boom");
        assert!(!d.overlay(&mut cfg), "a failure keeps the last set");
        assert_eq!(d.statuses()["web"].state, "failing");
    }
}
