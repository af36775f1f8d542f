//! Cluster mode: with `[cluster] etcd = [...]`, the shared configuration lives in etcd at
//! `{prefix}/config` (prefix default `/switchyard`) and every instance pointing at the same prefix
//! converges on it. One task per instance, in the control runtime, does it all over one
//! connection:
//!
//! 1. **Read** the key. Absent: this instance's configuration becomes the cluster's (written
//!    with a create-only compare-and-swap, so of several instances starting together exactly one
//!    wins and the others adopt it). Present: apply it ([`sync::apply`]: merged with the local
//!    sections, validated whole, swapped, written to the local file).
//! 2. **Register** under `{prefix}/instances/{id}` with a lease (id, admin address, versions,
//!    last seen), refreshed every [`REFRESH`]; a dead instance vanishes when its lease expires,
//!    and one that restarts takes its key over at once, since its id is stable (`[cluster] id`,
//!    by default host name and admin port: see `instance_id`).
//! 3. **Watch** the key from the revision read, so nothing between read and watch is missed.
//!    Every put is applied; an invalid document is refused by every instance (event, log,
//!    `rejected` in `/api/v1/cluster`) and the running configuration kept.
//! 4. **Publish** local changes: every [`PUBLISH_POLL`] the task looks at the versions accepted
//!    locally (API, UI, file edit, SIGHUP); if any came from such a source it writes the shared
//!    part with a compare-and-swap on the key's `mod_revision` as last seen. Losing the swap means
//!    another instance changed the cluster first: the local change is replayed onto its document
//!    ([`merge`]: three-way, from the document both last agreed on), applied, and published at the
//!    next poll, with an event saying so. Only a field both changed differently keeps the
//!    cluster's value (named in the event); if nothing of the local change survives, or the merge
//!    is refused, etcd's document is applied as it is — etcd stays the one source of truth.
//!
//! Any failure — etcd down, a compacted watch, an expired lease — ends the session; the instance
//! keeps serving its last good configuration, says `"etcd": "unreachable"` in `/health`, and
//! reconnects with backoff (100ms doubling to 1s), starting again at 1 — which is how it catches
//! up, and how a change made locally meanwhile is published if nobody else changed the cluster.
//! `[cluster]` itself is read at start; changing it needs a restart.

pub mod etcd;
pub mod merge;
pub mod status;
pub mod sync;

use crate::state::Shared;
use crate::upstream::discovery::{Backoff, Discovered};
use etcd::timed;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use status::{Control, Instance, Status};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use sync::SharedPart;
use tokio::sync::watch;

/// How often local changes are looked for: short, since it bounds cluster convergence.
pub const PUBLISH_POLL: Duration = Duration::from_millis(50);
/// Instance registration refresh; the lease lives [`INSTANCE_TTL_S`], three refreshes.
pub const REFRESH: Duration = Duration::from_secs(2);
pub const INSTANCE_TTL_S: i64 = 6;

/// Starts cluster mode if the configuration has `[cluster]`, and makes the control-plane status
/// (cluster and discovery) visible to the admin API either way.
pub fn spawn(
    shared: Arc<Shared>,
    discovered: Arc<Discovered>,
    admin: Option<SocketAddr>,
    stop: watch::Receiver<bool>,
) {
    let cluster = shared.current().config.cluster.clone();
    let status = cluster.filter(|c| !c.etcd.is_empty()).map(|c| {
        let prefix = c.prefix.as_deref().unwrap_or("/switchyard");
        Arc::new(Status::new(
            instance_id(c.id.as_deref(), admin),
            prefix.trim_end_matches('/').to_string(),
            c.etcd,
        ))
    });
    status::attach(
        &shared,
        Arc::new(Control {
            discovery: discovered.clone(),
            cluster: status.clone(),
        }),
    );
    let Some(status) = status else { return };
    let seen_version = shared.versions().last().map_or(0, |v| v.version);
    let node = Node {
        key: format!("{}/config", status.prefix),
        shared,
        discovered,
        status,
        admin: admin.map(|a| a.to_string()),
        started: crate::state::unix_now(),
        known_rev: 0,
        seen_version,
        dirty: false,
        last_shared: None,
    };
    tokio::spawn(node.run(stop));
}

/// Resolves when shutdown begins (without holding the receiver's borrow across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// This instance's id: `[cluster] id` if set, else `hostname-ADMINPORT` — readable in a list,
/// unique on one host (two instances cannot share an admin port), and the same on every start,
/// so a restarted instance replaces its own registration instead of being listed twice until
/// the old lease expires. Only without an admin listener is there no stable distinguishing
/// part: then a random suffix, as before.
fn instance_id(configured: Option<&str>, admin: Option<SocketAddr>) -> String {
    if let Some(id) = configured {
        return id.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchyard".into());
    default_id(&host, admin.map(|a| a.port()))
}

fn default_id(host: &str, admin_port: Option<u16>) -> String {
    // Made to pass the `[cluster] id` check whatever the host name holds.
    let host: String = host
        .chars()
        .map(|c| {
            if c == '/' || c.is_whitespace() || c.is_control() {
                '-'
            } else {
                c
            }
        })
        .take(crate::config::validate::MAX_INSTANCE_ID - 7)
        .collect();
    match admin_port {
        Some(port) => format!("{host}-{port}"),
        None => format!("{host}-{:06x}", fastrand::u32(..0x100_0000)),
    }
}

struct Node {
    key: String,
    shared: Arc<Shared>,
    discovered: Arc<Discovered>,
    status: Arc<Status>,
    admin: Option<String>,
    started: f64,
    /// `mod_revision` of the config key as last read, applied or written (0: absent).
    known_rev: i64,
    /// The newest local version already looked at for publishing.
    seen_version: u64,
    /// A local change waits to be published.
    dirty: bool,
    /// The shared part last agreed with etcd, so an unchanged one is not written again.
    last_shared: Option<SharedPart>,
}

impl Node {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_secs(1));
        loop {
            let err = match self.session(&mut backoff, &mut stop).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if self.status.set_etcd("unreachable", Some(err.clone())) {
                crate::events::emit(
                    "cluster",
                    None,
                    None,
                    format!("etcd unreachable ({err}); serving the last good configuration"),
                );
            } else {
                tracing::debug!("cluster: etcd still unreachable: {err}");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// One connection: read, register, watch, publish; returns why it ended (`Ok` on shutdown).
    async fn session(
        &mut self,
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut client = etcd::connect(&self.status.endpoints).await?;
        let got = timed(client.get(self.key.as_str(), None)).await?;
        let revision = got.header().map_or(0, |h| h.revision());
        self.note_local_changes();
        match got.kvs().first() {
            None => {
                // Nothing in etcd yet (or it was deleted): this instance's configuration seeds it.
                self.known_rev = 0;
                self.dirty = true;
                self.last_shared = None;
            }
            // Changed meanwhile: applied, with a local change pending replayed onto it.
            Some(kv) if kv.mod_revision() != self.known_rev => {
                self.on_remote(kv.value(), kv.mod_revision());
            }
            // etcd still holds what this instance last agreed with: a change made while it was
            // unreachable is published below.
            Some(_) => {}
        }
        self.publish(&mut client).await?;
        let lease = timed(client.lease_grant(INSTANCE_TTL_S, None)).await?.id();
        let (mut keeper, mut alive) = timed(client.lease_keep_alive(lease)).await?;
        self.register(&mut client, lease, true).await?;
        // Said once per session: the two would overwrite each other at every refresh.
        let mut told_shared_id = false;
        let opts = WatchOptions::new().with_start_revision(revision + 1);
        let mut watch = timed(client.watch(self.key.as_str(), Some(opts))).await?;
        if self.status.set_etcd("connected", None) {
            crate::events::emit("cluster", None, None, "etcd connected".into());
        }
        backoff.reset();
        let mut poll = tokio::time::interval(PUBLISH_POLL);
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                msg = watch.message() => {
                    let msg = msg.map_err(|e| e.to_string())?.ok_or("watch closed by etcd")?;
                    if msg.compact_revision() > 0 || msg.canceled() {
                        // The history we would resume from is gone: read the key again.
                        return Err("watch cancelled or compacted; resyncing".into());
                    }
                    for ev in msg.events() {
                        let Some(kv) = ev.kv() else { continue };
                        match ev.event_type() {
                            EventType::Put => self.on_remote(kv.value(), kv.mod_revision()),
                            EventType::Delete => {
                                tracing::warn!("cluster: {} was deleted; writing the running configuration back", self.key);
                                self.known_rev = 0;
                                self.dirty = true;
                                self.last_shared = None;
                            }
                        }
                    }
                }
                _ = poll.tick() => {
                    self.note_local_changes();
                    self.publish(&mut client).await?;
                }
                _ = refresh.tick() => {
                    timed(keeper.keep_alive()).await?;
                    let other = self.register(&mut client, lease, false).await?;
                    if let Some(other) = other.filter(|_| !told_shared_id) {
                        told_shared_id = true;
                        let detail = format!(
                            "another instance (admin {}) registers as {} too: give each its own [cluster] id",
                            other.admin.as_deref().unwrap_or("none"),
                            self.status.id
                        );
                        tracing::warn!("cluster: {detail}");
                        crate::events::emit("cluster", None, None, detail);
                    }
                }
                ka = alive.message() => match ka {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => return Err("instance lease expired".into()),
                    Ok(None) => return Err("lease keep-alive stream closed".into()),
                    Err(e) => return Err(e.to_string()),
                },
                _ = stopped(stop) => {
                    // Leave the instance list at once rather than after the lease runs out.
                    let _ = tokio::time::timeout(Duration::from_millis(500), client.lease_revoke(lease)).await;
                    return Ok(());
                }
            }
        }
    }

    /// Marks `dirty` if a version accepted since the last look came from a local source.
    fn note_local_changes(&mut self) {
        if self.shared.current().version == self.seen_version {
            return;
        }
        let versions = self.shared.versions();
        let Some(newest) = versions.last().map(|v| v.version) else {
            return;
        };
        let oldest = versions.first().map_or(0, |v| v.version);
        let local = self.seen_version + 1 < oldest
            || versions
                .iter()
                .any(|v| v.version > self.seen_version && sync::is_local_change(&v.source));
        self.seen_version = newest;
        if local {
            self.dirty = true;
        }
    }

    /// A document seen in etcd (read or watched) at `rev`.
    fn on_remote(&mut self, value: &[u8], rev: i64) {
        if rev <= self.known_rev {
            return; // this instance's own write coming back, or older news
        }
        self.known_rev = rev;
        if self.dirty {
            if self.replay_onto(value, rev) {
                return;
            }
            self.superseded(rev);
        }
        match sync::apply(&self.shared, &self.discovered, value) {
            Ok(a) => {
                tracing::info!(
                    version = a.version,
                    revision = rev,
                    "cluster: configuration from etcd applied"
                );
                self.last_shared = Some(SharedPart::of(&self.shared.current().config));
                self.status.update(|i| {
                    i.config_revision = rev;
                    i.rejected = None;
                });
            }
            Err(e) => {
                let running = self.shared.current().version;
                let detail = format!(
                    "configuration at etcd revision {rev} rejected, keeping version {running}: {e}"
                );
                tracing::error!("cluster: {detail}");
                crate::events::emit("cluster", None, None, detail);
                self.status.update(|i| {
                    i.rejected = Some(serde_json::json!({
                        "revision": rev,
                        "error": e,
                        "time": crate::state::unix_now(),
                    }));
                });
            }
        }
    }

    /// A local change is pending and etcd moved on to `value` at `rev` (another instance won the
    /// compare-and-swap): replays the local change onto it ([`merge::three_way`] from the
    /// document last agreed on) and applies the result, to be published at the next poll. False
    /// when nothing of the local change survives or the result is refused; then etcd's document
    /// is applied as it is.
    fn replay_onto(&mut self, value: &[u8], rev: i64) -> bool {
        let Some(base) = self.last_shared.as_ref() else {
            return false;
        };
        let Ok(theirs_cfg) = sync::parse(value) else {
            return false;
        };
        let theirs = SharedPart::of(&theirs_cfg);
        let ours = SharedPart::of(&self.shared.current().config);
        let json = |p: &SharedPart| serde_json::to_value(p).ok();
        let (Some(b), Some(o), Some(t)) = (json(base), json(&ours), json(&theirs)) else {
            return false;
        };
        let (merged, conflicts) = merge::three_way(&b, &o, &t);
        let kept = if conflicts.is_empty() {
            String::new()
        } else {
            format!(
                "; changed on both sides, the cluster's value kept: {}",
                conflicts.join(", ")
            )
        };
        if merged == t {
            if !kept.is_empty() {
                tracing::warn!("cluster: a local change lost to etcd revision {rev}{kept}");
            }
            return false;
        }
        let bytes = merged.to_string().into_bytes();
        match sync::apply_as(&self.shared, &self.discovered, &bytes, "etcd-merge") {
            Ok(a) => {
                // etcd's document is now the agreed base; the merged one is published next.
                self.last_shared = Some(theirs);
                self.dirty = true;
                let detail = format!(
                    "a local change was merged with a concurrent change at etcd revision {rev} \
                     (version {}){kept}",
                    a.version
                );
                tracing::info!("cluster: {detail}");
                crate::events::emit("cluster", None, None, detail);
                true
            }
            Err(e) => {
                tracing::warn!(
                    "cluster: the local change cannot be merged with etcd revision {rev}: {e}"
                );
                false
            }
        }
    }

    fn superseded(&mut self, rev: i64) {
        self.dirty = false;
        crate::events::emit(
            "cluster",
            None,
            None,
            format!("a local change was superseded by a concurrent change at etcd revision {rev}"),
        );
    }

    /// Writes the running shared part if a local change is pending (compare-and-swap).
    async fn publish(&mut self, client: &mut Client) -> Result<(), String> {
        if !self.dirty {
            return Ok(());
        }
        let snap = self.shared.current();
        let part = SharedPart::of(&snap.config);
        if self.last_shared.as_ref() == Some(&part) {
            self.dirty = false;
            return Ok(());
        }
        let key = self.key.as_str();
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, self.known_rev)])
            .and_then([TxnOp::put(key, part.render(), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = timed(client.txn(txn)).await?;
        self.dirty = false;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            self.known_rev = rev;
            self.last_shared = Some(part);
            self.status.update(|i| {
                i.config_revision = rev;
                i.rejected = None;
            });
            tracing::info!(
                version = snap.version,
                revision = rev,
                "cluster: configuration published to etcd"
            );
            return Ok(());
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (kv.value().to_vec(), kv.mod_revision())),
            _ => None,
        });
        match current {
            Some((value, rev)) => {
                // Another instance changed the cluster first: replay ours onto theirs.
                self.dirty = true;
                self.on_remote(&value, rev);
            }
            None => {
                // Deleted meanwhile: create it at the next poll.
                self.known_rev = 0;
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// Writes this instance's registration and reads everyone's.
    ///
    /// The key may exist already. Left by this instance's previous run (killed, so its lease is
    /// still running), it is taken over: the put moves the key to this session's lease, so the
    /// old lease running out later does not delete it. Found on another lease at a refresh,
    /// after this session wrote it, it means another live instance uses the same id: that one's
    /// registration is returned, so the caller can say so.
    async fn register(
        &self,
        client: &mut Client,
        lease: i64,
        first: bool,
    ) -> Result<Option<Instance>, String> {
        let me = Instance {
            id: self.status.id.clone(),
            admin: self.admin.clone(),
            config_version: self.shared.current().version,
            config_revision: self.status.get().config_revision,
            last_seen: crate::state::unix_now(),
            started: self.started,
            software: env!("CARGO_PKG_VERSION").into(),
        };
        let prefix = format!("{}/instances/", self.status.prefix);
        let value = serde_json::to_vec(&me).map_err(|e| e.to_string())?;
        let key = format!("{prefix}{}", me.id);
        let put = TxnOp::put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        );
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
            .and_then([put.clone()])
            .or_else([TxnOp::get(key.as_str(), None), put]);
        let resp = timed(client.txn(txn)).await?;
        let other = if resp.succeeded() || first {
            None
        } else {
            resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice::<Instance>(kv.value()).ok()),
                _ => None,
            })
        };
        let got = timed(client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let mut list: Vec<Instance> = got
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        self.status.update(|i| i.instances = list);
        Ok(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_id_is_host_and_admin_port_and_always_a_valid_id() {
        assert_eq!(default_id("edge-a", Some(5000)), "edge-a-5000");
        assert_eq!(
            default_id("edge-a", Some(5000)),
            default_id("edge-a", Some(5000))
        );
        let random = default_id("edge-a", None);
        assert!(random.starts_with("edge-a-") && random.len() == "edge-a-".len() + 6);
        for host in ["a/b c", &"h".repeat(300)] {
            let id = default_id(host, Some(65535));
            assert!(
                crate::config::validate::check_instance_id(&id).is_ok(),
                "{id}"
            );
        }
        let id = instance_id(Some("edge-1"), "127.0.0.1:5000".parse().ok());
        assert_eq!(id, "edge-1");
    }
}
