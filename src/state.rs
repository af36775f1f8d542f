//! The state model: an immutable [`Snapshot`] of the compiled configuration published through one
//! `ArcSwap`, and the [`Registry`] of live backend state that outlives snapshots.
//!
//! A request loads the snapshot once and uses that view to its end; a change builds a new snapshot
//! off the hot path and swaps it in one store. Every source of change goes through
//! [`Shared::apply`]: validate whole → compile → swap → persist → emit an event.

use crate::config::{self, Config, ConfigError};
use crate::proxy::ratelimit::RateLimiter;
use crate::proxy::router::Router;
use crate::upstream::backend::{Backend, BackendState};
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One compiled, validated configuration.
pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Snapshot {
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// Live backend state by upstream, then address. Only the control plane touches the map.
/// Two levels so a compile looks addresses up by `&str` and moves the kept keys across: no
/// string is cloned or hashed twice for a backend that stays (10,000 per change at scale).
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<String, HashMap<String, Arc<BackendState>>>>,
    /// Backends removed from the configuration while requests were still in flight on them:
    /// shown as leaving (`removed`, `draining`) until their last request ends, instead of
    /// vanishing from the view while they still serve.
    leaving: Mutex<Vec<Arc<BackendState>>>,
    /// Routes' rate limiters, by what identifies a route's limit (hosts, prefix, limit): a change
    /// elsewhere keeps each client's bucket where it was.
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
    /// Each upstream's `max_connections` queue, kept across compiles (see
    /// [`crate::upstream::queue`]).
    queues: Mutex<HashMap<String, Arc<crate::upstream::queue::Queue>>>,
}

impl Registry {
    /// `upstream`'s removed backends that still have requests in flight.
    pub fn leaving(&self, upstream: &str) -> Vec<Arc<BackendState>> {
        let mut leaving = self.leaving.lock().unwrap_or_else(|e| e.into_inner());
        leaving.retain(|s| s.active.load(Relaxed) > 0);
        leaving
            .iter()
            .filter(|s| s.upstream == upstream)
            .cloned()
            .collect()
    }

    /// Compiles `cfg` against the registry: kept backends keep their state, new ones start fresh,
    /// removed ones are dropped from the map (in-flight requests still hold theirs).
    pub fn compile(&self, cfg: &Config, version: u64) -> Snapshot {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::with_capacity(map.len());
        let upstreams: Vec<Arc<Upstream>> = cfg
            .upstreams
            .iter()
            .map(|(name, u)| {
                let mut old = map.remove(name.as_str()).unwrap_or_default();
                let mut kept = HashMap::with_capacity(u.backends.len());
                let backends = u
                    .backends
                    .iter()
                    .map(|b| {
                        let (key, state) =
                            old.remove_entry(b.address.as_str()).unwrap_or_else(|| {
                                (b.address.clone(), BackendState::new(name, &b.address))
                            });
                        state.set_draining(b.drain);
                        let backend = Backend {
                            address: b.address.clone(),
                            socket: b.address.parse().ok(),
                            weight: b.weight,
                            backup: b.backup,
                            state: state.clone(),
                        };
                        kept.insert(key, state);
                        backend
                    })
                    .collect();
                // What is left of `old` was removed from this upstream.
                map.insert(name.clone(), old);
                next.insert(name.clone(), kept);
                let mut up = Upstream::compile(name, u, backends);
                up.queue = queues
                    .entry(name.clone())
                    .or_insert_with(|| up.queue.clone())
                    .clone();
                // The change may have made room that no finishing request would announce (a
                // backend undrained, a circuit closed with its breaker removed): every waiter
                // picks again. Each picks on the snapshot it started on, so a backend only the
                // new configuration has, or its higher `max_connections`, serves newer requests.
                up.queue.wake_all();
                for b in &up.backends {
                    let _ = b.state.queue.set(up.queue.clone());
                }
                Arc::new(up)
            })
            .collect();
        queues.retain(|name, _| cfg.upstreams.contains_key(name));
        drop(queues);
        // Backends that left the configuration drain: their in-flight requests finish on the old
        // snapshot, and nothing new can pick them.
        let mut leaving = self.leaving.lock().unwrap_or_else(|e| e.into_inner());
        for gone in map.drain().flat_map(|(_, u)| u.into_values()) {
            gone.set_draining(true);
            leaving.push(gone);
        }
        // Gone for good once idle, or superseded when the address came back (with fresh state).
        leaving.retain(|s| {
            s.active.load(Relaxed) > 0
                && !next
                    .get(&s.upstream)
                    .is_some_and(|u| u.contains_key(&s.address))
        });
        drop(leaving);
        *map = next;
        let index_of = |n: &str| upstreams.iter().position(|u| u.name == n);
        let only = (upstreams.len() == 1).then_some(0);
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::new();
        let router = Router::new(&cfg.routes, index_of, only, |r| {
            let rl = r.rate_limit.as_ref()?;
            let key = format!("{:?} {:?} {rl:?}", r.hosts, r.path_prefix);
            let l = limiters
                .remove(&key)
                .or_else(|| kept.get(&key).cloned())
                .unwrap_or_else(|| Arc::new(RateLimiter::new(rl)));
            kept.insert(key, l.clone());
            Some(l)
        });
        *limiters = kept;
        drop(limiters);
        Snapshot {
            version,
            config: Arc::new(cfg.clone()),
            router,
            upstreams,
        }
    }
}

/// Where an accepted change came from, for events and the version history.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Version {
    pub version: u64,
    pub source: String,
    pub time: f64,
    #[serde(skip)]
    pub config: Arc<Config>,
}

/// Versions kept for rollback.
pub const KEPT_VERSIONS: usize = 50;

/// Everything the workers and the control plane share.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub registry: Registry,
    /// The file changes are written back to, when serving from a file.
    pub config_path: Option<PathBuf>,
    pub started: Instant,
    versions: Mutex<VecDeque<Version>>,
    /// Serialises changes: two API calls never interleave validate and swap.
    apply_lock: Mutex<()>,
    /// The access log, when `log.access` is not "off" (set at start; changes need a restart).
    pub access_log: Option<Arc<crate::observe::access_log::AccessLog>>,
    /// OTLP span exporter, when `log.otlp_endpoint` is set (set once at start).
    pub otlp: std::sync::OnceLock<Arc<crate::observe::otlp::Exporter>>,
    /// The concrete addresses the listeners are bound to (a configured port 0 shows its port).
    pub bound: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
    /// The discovered backend sets, once discovery runs: a reload from the file keeps them.
    pub discovered: std::sync::OnceLock<Arc<crate::upstream::discovery::Discovered>>,
}

/// An accepted change.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: u64,
    pub changes: Vec<String>,
    /// Why the change is in service but not in the file (a read-only mount, say).
    pub not_written: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(ConfigError),
    #[error("configuration changed meanwhile; current version is {0}")]
    Conflict(u64),
}

impl Shared {
    pub fn new(cfg: Config, config_path: Option<PathBuf>) -> Arc<Shared> {
        Arc::new(Self::build(cfg, config_path, None))
    }

    /// As [`Shared::new`], with an access log.
    pub fn with_access_log(
        cfg: Config,
        config_path: Option<PathBuf>,
        log: Option<crate::observe::access_log::AccessLog>,
    ) -> Arc<Shared> {
        Arc::new(Self::build(cfg, config_path, log.map(Arc::new)))
    }

    fn build(
        cfg: Config,
        config_path: Option<PathBuf>,
        access_log: Option<Arc<crate::observe::access_log::AccessLog>>,
    ) -> Shared {
        let registry = Registry::default();
        let snap = registry.compile(&cfg, 1);
        // Slow start ramps a backend that joins a running upstream or recovers, not the fleet a
        // process starts with (HAProxy's `slowstart` neither): ramping every backend alike
        // changes no share and would only delay full service.
        for b in snap.upstreams.iter().flat_map(|u| &u.backends) {
            b.state.set_available_since(0);
        }
        let first = Version {
            version: 1,
            source: "start".into(),
            time: unix_now(),
            config: snap.config.clone(),
        };
        Shared {
            snapshot: ArcSwap::from_pointee(snap),
            registry,
            config_path,
            started: Instant::now(),
            versions: Mutex::new(VecDeque::from([first])),
            apply_lock: Mutex::new(()),
            access_log,
            otlp: std::sync::OnceLock::new(),
            bound: std::sync::OnceLock::new(),
            discovered: std::sync::OnceLock::new(),
        }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The one door for every change. Returns the new version, or every problem with nothing
    /// changed. `persist` writes the result back to the config file (API changes do; a reload of
    /// the file itself does not need to).
    pub fn apply(&self, cfg: Config, source: &str, persist: bool) -> Result<u64, ConfigError> {
        match self.apply_checked(cfg, source, persist, None) {
            Ok(a) => Ok(a.version),
            Err(ApplyError::Invalid(e)) => Err(e),
            Err(e) => Err(ConfigError::one("", e.to_string())),
        }
    }

    /// [`Shared::apply`] with an optimistic-concurrency check: with `expect`, the change is
    /// refused unless the running version is still `expect` (HTTP `If-Match`).
    pub fn apply_checked(
        &self,
        cfg: Config,
        source: &str,
        persist: bool,
        expect: Option<u64>,
    ) -> Result<Applied, ApplyError> {
        let problems = config::validate(&cfg);
        if !problems.is_empty() {
            crate::observe::metrics::reload(false);
            crate::events::emit(
                "reload_failed",
                None,
                None,
                format!("{source}: {} problem(s): {}", problems.len(), problems[0]),
            );
            return Err(ApplyError::Invalid(ConfigError { problems }));
        }
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot.load_full();
        if let Some(v) = expect {
            if v != current.version {
                return Err(ApplyError::Conflict(current.version));
            }
        }
        let changes = config::diff::diff(&current.config, &cfg);
        if changes.is_empty() {
            return Ok(Applied {
                version: current.version,
                changes,
                not_written: None,
            });
        }
        let mut not_written = None;
        if persist {
            if let Some(path) = &self.config_path {
                let text = match config::Format::of_path(path) {
                    config::Format::Json => serde_json::to_string_pretty(&cfg).unwrap_or_default(),
                    // Merged into what the file holds now, so the operator's comments stay.
                    config::Format::Toml => match std::fs::read_to_string(path) {
                        Ok(old) => config::write_back::merged_toml(&old, &cfg),
                        Err(_) => config::to_toml(&cfg),
                    },
                };
                // A file that cannot be written (a read-only ConfigMap or `:ro` mount) does not
                // stop the change: an operator draining a backend mid-incident must be able to,
                // as HAProxy's runtime API and Envoy's never write a file. The answer, the log
                // and the event say the file no longer matches.
                if let Err(e) = write_atomically(path, &text) {
                    let why = format!(
                        "in service but not written to {}: {e}; a restart would undo it",
                        path.display()
                    );
                    tracing::warn!("{why}");
                    not_written = Some(why);
                }
            }
        }
        let version = current.version + 1;
        let snap = self.registry.compile(&cfg, version);
        let config = snap.config.clone();
        let snap = Arc::new(snap);
        self.snapshot.store(snap.clone());
        // Only once the old snapshot is out of service: before, its policies (a check that
        // refuses unknown backends, a breaker) still acted on the state being reset.
        for u in &snap.upstreams {
            u.settle_live_state();
        }
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        if versions.len() == KEPT_VERSIONS {
            versions.pop_front();
        }
        versions.push_back(Version {
            version,
            source: source.to_string(),
            time: unix_now(),
            config,
        });
        crate::observe::metrics::reload(true);
        let note = not_written
            .as_ref()
            .map_or(String::new(), |w| format!(" ({w})"));
        crate::events::emit(
            "config",
            None,
            None,
            format!(
                "version {version} from {source}: {}{note}",
                changes.join("; ")
            ),
        );
        Ok(Applied {
            version,
            changes,
            not_written,
        })
    }

    pub fn versions(&self) -> Vec<Version> {
        self.versions
            .lock()
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Temp file in the same directory, fsync, rename: a crash leaves the old file or the new one.
/// A symlinked path is written through (the link stays, its target changes, as config
/// management layouts expect), and the new file keeps the old one's mode and, where allowed,
/// owner: a 0600 file holding `admin.token` must not come back world-readable.
pub fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let real = std::fs::canonicalize(path).ok();
    let path = real.as_deref().unwrap_or(path);
    let old = std::fs::metadata(path).ok();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config"),
        std::process::id()
    ));
    // Private until the old file's mode is copied over.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    if let Some(m) = &old {
        f.set_permissions(m.permissions())?;
        // Only root may give a file away; anyone else keeps it as their own, as before.
        let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
    } else {
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_rewrite_goes_through_a_symlink_and_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let target = real.join("lb.toml");
        std::fs::write(&target, "old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("lb.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        super::write_atomically(&link, "new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing left behind.
        assert_eq!(std::fs::read_dir(&real).unwrap().count(), 1);
    }
}
