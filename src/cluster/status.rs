//! What the distributed parts of the control plane — the cluster sync and service discovery —
//! report, found from the [`Shared`] they serve so the admin API can show it.
//!
//! The admin handlers only hold an `Arc<Shared>`; rather than widen `Shared` (owned by the core
//! state model) this module keeps a small side table from each running `Shared` to its
//! [`Control`]. Entries hold a `Weak`, so a stopped server's entry is dropped at the next attach,
//! and several servers in one process (tests, zero-downtime upgrades) never see each other's.

use crate::state::Shared;
use crate::upstream::discovery::Discovered;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, Weak};

/// The control-plane extras of one running server.
pub struct Control {
    pub discovery: Arc<Discovered>,
    /// Set in cluster mode.
    pub cluster: Option<Arc<Status>>,
}

static TABLE: Mutex<Vec<(Weak<Shared>, Arc<Control>)>> = Mutex::new(Vec::new());

pub fn attach(shared: &Arc<Shared>, control: Arc<Control>) {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    t.retain(|(w, _)| w.strong_count() > 0);
    t.push((Arc::downgrade(shared), control));
}

pub fn of(shared: &Shared) -> Option<Arc<Control>> {
    let t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    t.iter()
        .find(|(w, _)| std::ptr::eq(w.as_ptr(), shared))
        .map(|(_, c)| c.clone())
}

/// One registered instance, as stored under `{prefix}/instances/{id}`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Instance {
    pub id: String,
    /// The admin API address (`null` without an admin server).
    pub admin: Option<String>,
    /// This instance's local configuration version (numbers are per instance).
    pub config_version: u64,
    /// etcd mod revision of the shared configuration it runs: equal everywhere once converged.
    pub config_revision: i64,
    pub last_seen: f64,
    pub started: f64,
    pub software: String,
}

#[derive(Default, Clone, Serialize)]
pub struct Inner {
    /// `"connecting"`, `"connected"` or `"unreachable"`.
    pub etcd: &'static str,
    /// Since when `etcd` has had its current value (Unix seconds).
    pub since: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// etcd mod revision of the configuration key this instance last applied or wrote.
    pub config_revision: i64,
    /// The last configuration read from etcd that was refused, with why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Value>,
    /// Registered instances, refreshed every few seconds while connected.
    pub instances: Vec<Instance>,
}

/// Cluster-mode state of one instance.
pub struct Status {
    pub id: String,
    pub prefix: String,
    pub endpoints: Vec<String>,
    inner: Mutex<Inner>,
}

impl Status {
    pub fn new(id: String, prefix: String, endpoints: Vec<String>) -> Self {
        Status {
            id,
            prefix,
            endpoints,
            inner: Mutex::new(Inner {
                etcd: "connecting",
                since: crate::state::unix_now(),
                ..Inner::default()
            }),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn get(&self) -> Inner {
        self.inner.lock().map(|i| i.clone()).unwrap_or_default()
    }

    /// Records a change of connectivity; returns whether it was a change.
    pub fn set_etcd(&self, state: &'static str, error: Option<String>) -> bool {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let changed = i.etcd != state;
        if changed {
            i.etcd = state;
            i.since = crate::state::unix_now();
        }
        i.error = error;
        changed
    }

    pub fn to_json(&self) -> Value {
        let i = self.get();
        json!({
            "enabled": true,
            "id": self.id,
            "prefix": self.prefix,
            "endpoints": self.endpoints,
            "etcd": i.etcd,
            "since": i.since,
            "error": i.error,
            "config_revision": i.config_revision,
            "rejected": i.rejected,
            "instances": i.instances,
        })
    }
}

/// Adds `cluster` (in cluster mode) and `discovery` (when any source runs) to `/health`.
pub fn extend_health(shared: &Shared, body: &mut Value) {
    let Some(c) = of(shared) else { return };
    if let Some(s) = &c.cluster {
        let i = s.get();
        body["cluster"] = json!({
            "etcd": i.etcd,
            "since": i.since,
            "id": s.id,
            "config_revision": i.config_revision,
            "rejected": i.rejected.is_some(),
        });
    }
    let d = c.discovery.statuses();
    if !d.is_empty() {
        body["discovery"] = json!(d);
    }
}
