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
//! starts over from a fresh read after a backoff, keeping the last known set meanwhile.
//!
//! A value that is not a valid entry never takes a backend away, since it is far more likely an
//! operator's typo than a deregistration (that is what deleting the key, or the lease expiring,
//! is for): a key that had a good entry keeps it, a new key is not added, and the key is named
//! with its problem in the source's status until it is fixed or deleted. One bad registration
//! does not hide the others.

use super::{file::parse_entry, Backoff, Reporter, SourceProblem};
use crate::cluster::etcd::{connect, timed};
use crate::config::BackendConfig;
use etcd_client::{EventType, GetOptions, WatchOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub async fn run(endpoints: Vec<String>, prefix: String, rep: Reporter) {
    let mut backoff = Backoff::new(Duration::from_secs(2));
    // Outside the session, so a key that turned bad while the watch was down still keeps the
    // entry it had before.
    let mut regs = Registrations::default();
    loop {
        let err = session(&endpoints, &prefix, &rep, &mut backoff, &mut regs).await;
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
    regs: &mut Registrations,
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
    regs.reread(got.kvs().iter().map(|kv| (kv.key(), kv.value())));
    regs.report(rep);
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
                EventType::Put => regs.put(kv.key(), kv.value()),
                EventType::Delete => regs.delete(kv.key()),
            }
        }
        regs.report(rep);
    }
}

/// What the prefix holds, by key.
#[derive(Default)]
struct Registrations {
    /// The entry in service for each key: its value, or its last good value if it is now bad.
    good: BTreeMap<Vec<u8>, BackendConfig>,
    /// Keys whose current value is not a valid entry, with why.
    bad: BTreeMap<Vec<u8>, String>,
}

impl Registrations {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        match parse_entry(value) {
            Ok(b) => {
                self.good.insert(key.to_vec(), b);
                self.bad.remove(key);
            }
            Err(e) => {
                self.bad.insert(key.to_vec(), e);
            }
        }
    }

    fn delete(&mut self, key: &[u8]) {
        self.good.remove(key);
        self.bad.remove(key);
    }

    /// A fresh read of the whole prefix: keys no longer there are gone (deleted, or their lease
    /// expired, while not watching); the others are put again.
    fn reread<'a>(&mut self, kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
        let kvs: Vec<_> = kvs.into_iter().collect();
        let present: BTreeSet<&[u8]> = kvs.iter().map(|(k, _)| *k).collect();
        self.good.retain(|k, _| present.contains(k.as_slice()));
        self.bad.clear();
        for (k, v) in kvs {
            self.put(k, v);
        }
    }

    fn report(&self, rep: &Reporter) {
        let problems = self
            .bad
            .iter()
            .map(|(key, e)| SourceProblem {
                key: String::from_utf8_lossy(key).into_owned(),
                error: match self.good.get(key) {
                    Some(b) => format!("{e}; keeping its last good entry {}", b.address),
                    None => format!("{e}; not added"),
                },
            })
            .collect();
        rep.found_with(self.good.values().cloned().collect(), problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(r: &Registrations) -> Vec<&str> {
        r.good.values().map(|b| b.address.as_str()).collect()
    }

    #[test]
    fn a_bad_value_keeps_the_last_good_entry_and_a_new_bad_key_is_not_added() {
        let mut r = Registrations::default();
        r.reread([(&b"/s/a"[..], &br#"{"address":"127.0.0.1:1"}"#[..])]);
        r.put(b"/s/a", b"{\"adress\": 1}");
        r.put(b"/s/b", b"nope");
        assert_eq!(addresses(&r), ["127.0.0.1:1"]);
        assert_eq!(r.bad.len(), 2);
        // Still kept over a fresh read that finds the same bad value.
        r.reread([(&b"/s/a"[..], &b"{}"[..])]);
        assert_eq!(addresses(&r), ["127.0.0.1:1"]);
        assert_eq!(r.bad.keys().collect::<Vec<_>>(), [b"/s/a"]);
        r.put(b"/s/a", br#"{"address":"127.0.0.1:2"}"#);
        assert_eq!(addresses(&r), ["127.0.0.1:2"]);
        assert!(r.bad.is_empty());
        r.put(b"/s/a", b"{}");
        r.delete(b"/s/a");
        assert!(r.good.is_empty() && r.bad.is_empty());
        r.put(b"/s/a", br#"{"address":"127.0.0.1:3"}"#);
        r.reread([]);
        assert!(r.good.is_empty(), "gone from etcd while not watching");
    }
}
