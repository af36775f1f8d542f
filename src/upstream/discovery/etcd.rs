//! etcd discovery: `etcd_prefix = "/switchyard/services/web/"` lists the backends registered
//! under that prefix, on the etcd endpoints of `[cluster] etcd`.
//!
//! A service registers itself with one key per instance, attached to a lease it keeps alive, and
//! the value `{"address": "10.0.0.5:8080", "weight": 1}`:
//!
//! ```text
//! etcdctl lease grant 10                     # -> lease ID
//! etcdctl put --lease=ID /switchyard/services/web/10.0.0.5:8080 '{"address":"10.0.0.5:8080"}'
//! etcdctl lease keep-alive ID
//! ```
//!
//! When the service dies its lease expires and etcd deletes the key, which removes (drains) the
//! backend here. The task reads the prefix, then watches from the revision it read, so no change
//! between the read and the watch is lost; a compacted or broken watch, or an unreachable etcd,
//! starts over from a fresh read after a backoff, keeping the last known set meanwhile. A value
//! that is not a valid entry is skipped with a warning: one bad registration does not hide the
//! others.

use super::{file::parse_entry, Backoff, Reporter};
use crate::cluster::etcd::{connect, timed};
use crate::config::BackendConfig;
use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use std::collections::BTreeMap;
use std::time::Duration;

pub async fn run(endpoints: Vec<String>, prefix: String, rep: Reporter) {
    let mut backoff = Backoff::new(Duration::from_secs(2));
    loop {
        let err = session(&endpoints, &prefix, &rep, &mut backoff).await;
        rep.failed(format!("etcd {prefix}: {err}"));
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One connection's worth of read-then-watch; returns why it ended.
async fn session(
    endpoints: &[String],
    prefix: &str,
    rep: &Reporter,
    backoff: &mut Backoff,
) -> String {
    let mut client = match connect(endpoints).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let got = match timed(client.get(prefix, Some(GetOptions::new().with_prefix()))).await {
        Ok(g) => g,
        Err(e) => return e,
    };
    let revision = got.header().map_or(0, |h| h.revision());
    let mut set: BTreeMap<Vec<u8>, BackendConfig> = BTreeMap::new();
    for kv in got.kvs() {
        insert(&mut set, kv);
    }
    rep.found(set.values().cloned().collect());
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = match timed(client.watch(prefix, Some(opts))).await {
        Ok(w) => w,
        Err(e) => return e,
    };
    backoff.reset();
    loop {
        let msg = match watch.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return "watch closed by etcd".into(),
            Err(e) => return e.to_string(),
        };
        if msg.compact_revision() > 0 || msg.canceled() {
            return format!(
                "watch cancelled ({}); reading again",
                if msg.compact_revision() > 0 {
                    "history compacted"
                } else {
                    msg.cancel_reason()
                }
            );
        }
        if msg.events().is_empty() {
            continue;
        }
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => insert(&mut set, kv),
                EventType::Delete => {
                    set.remove(kv.key());
                }
            }
        }
        rep.found(set.values().cloned().collect());
    }
}

fn insert(set: &mut BTreeMap<Vec<u8>, BackendConfig>, kv: &KeyValue) {
    match parse_entry(kv.value()) {
        Ok(b) => {
            set.insert(kv.key().to_vec(), b);
        }
        Err(e) => {
            tracing::warn!(
                "discovery: skipping etcd key {}: {e}",
                String::from_utf8_lossy(kv.key())
            );
            set.remove(kv.key());
        }
    }
}
