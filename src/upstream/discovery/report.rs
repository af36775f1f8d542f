//! How a source task hands in what it found: [`Reporter::found`] with the complete current set
//! (and [`Reporter::found_with`] when some of the source's entries were invalid), or
//! [`Reporter::failed`] when it could not answer at all. Either way the status shown in
//! `/health` and `/api/v1/discovery` is updated here, and an event and a log line are emitted
//! once per change rather than once per poll.

use super::Discovered;
use crate::config::BackendConfig;
use serde::Serialize;
use std::sync::Arc;

/// One entry of a source that is not a valid backend: an etcd key whose value does not parse,
/// an element of the file that is not a valid entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceProblem {
    /// The etcd key, or the entry's place in the file (`[2]`, `backends[2]`).
    pub key: String,
    /// What is wrong, and what was done instead (its last good entry kept, or not added).
    pub error: String,
}

#[derive(Clone)]
pub struct Reporter {
    upstream: String,
    discovered: Arc<Discovered>,
}

impl Reporter {
    pub(super) fn new(upstream: String, discovered: Arc<Discovered>) -> Self {
        Reporter {
            upstream,
            discovered,
        }
    }

    /// A successful answer: the complete current set.
    pub fn found(&self, list: Vec<BackendConfig>) {
        self.found_with(list, Vec::new());
    }

    /// An answer in which some entries were invalid: `list` is what is served (the source
    /// decides what a bad entry means for it), `problems` names each bad entry. The state is
    /// `degraded` rather than `ok` while any remain, so an operator's typo is visible.
    pub fn found_with(&self, mut list: Vec<BackendConfig>, problems: Vec<SourceProblem>) {
        list.sort_by(|a, b| a.address.cmp(&b.address));
        list.dedup_by(|a, b| a.address == b.address);
        let mut map = self.discovered.lock();
        let Some(e) = map.get_mut(&self.upstream) else {
            return;
        };
        let recovered = e.status.state == "failing";
        let changed = e.set.as_ref() != Some(&list);
        let new_problems: Vec<SourceProblem> = problems
            .iter()
            .filter(|p| !e.status.problems.contains(p))
            .cloned()
            .collect();
        let problems_cleared = problems.is_empty() && !e.status.problems.is_empty();
        e.status.state = if problems.is_empty() {
            "ok"
        } else {
            "degraded"
        };
        e.status.error = None;
        e.status.failing_since = None;
        e.status.backends = list.len();
        e.status.last_success = Some(crate::state::unix_now());
        e.status.problems = problems;
        let source = e.status.source.clone();
        let mut details = Vec::new();
        if changed {
            let names: Vec<&str> = list.iter().map(|b| b.address.as_str()).collect();
            details.push(format!(
                "{source}: {} backend(s): {}",
                list.len(),
                names.join(", ")
            ));
            e.set = Some(list);
        } else if recovered {
            details.push(format!("{source}: recovered"));
        }
        drop(map);
        for p in &new_problems {
            let detail = format!("{source}: {}: {}", p.key, p.error);
            tracing::warn!(upstream = %self.upstream, "discovery: {detail}");
            details.push(detail);
        }
        if problems_cleared {
            details.push(format!("{source}: every entry is valid again"));
        }
        for detail in details {
            crate::events::emit("discovery", Some(&self.upstream), None, detail);
        }
        if changed {
            self.discovered.changed.notify_one();
        }
    }

    /// A failed answer: the last known set stays; reported once per distinct error.
    pub fn failed(&self, error: impl Into<String>) {
        self.failed_with(error, Vec::new());
    }

    /// A failed answer because of invalid entries, each named in `problems`.
    pub fn failed_with(&self, error: impl Into<String>, problems: Vec<SourceProblem>) {
        let error = error.into();
        let mut map = self.discovered.lock();
        let Some(e) = map.get_mut(&self.upstream) else {
            return;
        };
        e.status.problems = problems;
        if e.status.error.as_deref() == Some(error.as_str()) {
            return;
        }
        if e.status.state != "failing" {
            e.status.failing_since = Some(crate::state::unix_now());
        }
        e.status.state = "failing";
        e.status.error = Some(error.clone());
        let detail = format!(
            "{} failed: {error}; keeping the last known {} backend(s)",
            e.status.source,
            e.set.as_ref().map_or(0, Vec::len)
        );
        drop(map);
        tracing::warn!(upstream = %self.upstream, "discovery: {detail}");
        crate::events::emit("discovery", Some(&self.upstream), None, detail);
    }
}
