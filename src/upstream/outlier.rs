//! Passive health (outlier ejection) and the retry budget.
//!
//! Passive health watches real traffic: `consecutive_failures` in a row eject a backend for
//! `base_ejection × number of ejections so far` (capped at 10×, as Envoy), never ejecting more than
//! `max_ejected_percent` of the upstream. The retry budget caps retries at `budget_ratio` of
//! requests plus a small floor, so a failing fleet is not hammered by retry storms.

use super::backend::{now_ms, BackendState};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Compiled passive-health settings. Defaults as Envoy's outlier detection: 5 consecutive
/// failures, 30s base ejection, at most 10% ejected (but always at least one backend may be).
#[derive(Clone, Debug)]
pub struct PassivePolicy {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejected_percent: u32,
    pub fail_open: bool,
}

impl PassivePolicy {
    pub fn from_config(c: &crate::config::PassiveHealthConfig) -> Self {
        PassivePolicy {
            consecutive_failures: c.consecutive_failures.unwrap_or(5),
            base_ejection: c.base_ejection.map_or(Duration::from_secs(30), |d| d.get()),
            max_ejected_percent: c.max_ejected_percent.unwrap_or(10),
            fail_open: c.fail_open.unwrap_or(false),
        }
    }

    /// Records an outcome; returns true when this failure ejected the backend.
    pub fn record(&self, s: &BackendState, ok: bool, peers: &[super::Backend]) -> bool {
        if ok {
            s.consecutive_failures.store(0, Relaxed);
            return false;
        }
        let n = s.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if n < self.consecutive_failures {
            return false;
        }
        let now = now_ms();
        let ejected = peers.iter().filter(|b| b.state.is_ejected(now)).count();
        let allowed = ((peers.len() * self.max_ejected_percent as usize) / 100).max(1);
        if ejected >= allowed || s.is_ejected(now) {
            return false;
        }
        let times = (s.ejections.fetch_add(1, Relaxed) + 1).min(10);
        s.eject_until(now + self.base_ejection.as_millis() as u64 * times as u64);
        s.consecutive_failures.store(0, Relaxed);
        true
    }
}

/// Counts requests and retries over a sliding second: the current second's counts plus the
/// previous second's, weighted by how much of it is still within the last 1,000 ms (the
/// breaker's window does the same). A tumbling window reset every second made the budget tiny
/// just after each reset, when a stalled backend's requests all time out at once: a burst of
/// 40 timeouts got 30 retries and 10 clients a 504.
#[derive(Default)]
pub struct RetryBudget {
    window_s: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    prev_requests: AtomicU64,
    prev_retries: AtomicU64,
}

/// Retries always allowed per second, so a quiet upstream can still retry (Finagle uses 10/s).
const RETRY_FLOOR_PER_S: u64 = 10;

impl RetryBudget {
    pub fn on_request(&self) {
        self.roll(now_ms());
        self.requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget if there is one left; counts a refusal.
    pub fn try_retry(&self, ratio: f64) -> bool {
        let ok = self.try_retry_at(ratio, now_ms());
        if !ok {
            crate::observe::metrics::retry_denied();
        }
        ok
    }

    fn try_retry_at(&self, ratio: f64, now: u64) -> bool {
        self.roll(now);
        // The share of the previous second still inside the last 1,000 ms.
        let left = 1.0 - (now % 1000) as f64 / 1000.0;
        let requests =
            self.requests.load(Relaxed) as f64 + self.prev_requests.load(Relaxed) as f64 * left;
        let before = self.prev_retries.load(Relaxed) as f64 * left;
        let allowed = RETRY_FLOOR_PER_S as f64 + requests * ratio - before;
        self.retries
            .fetch_update(Relaxed, Relaxed, |r| {
                ((r as f64) < allowed).then_some(r + 1)
            })
            .is_ok()
    }

    fn roll(&self, now: u64) {
        let s = now / 1000;
        let w = self.window_s.load(Relaxed);
        if s != w
            && self
                .window_s
                .compare_exchange(w, s, Relaxed, Relaxed)
                .is_ok()
        {
            // The second just ended becomes the previous one; after a gap, nothing is recent.
            let (req, ret) = (
                self.requests.swap(0, Relaxed),
                self.retries.swap(0, Relaxed),
            );
            let recent = s == w + 1;
            self.prev_requests
                .store(if recent { req } else { 0 }, Relaxed);
            self.prev_retries
                .store(if recent { ret } else { 0 }, Relaxed);
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    /// A burst of retries just after the second turns is judged against the last 1,000 ms of
    /// requests, not the few of the new second.
    #[test]
    fn the_budget_slides_across_the_second_boundary() {
        let b = RetryBudget::default();
        let t0 = 10_000;
        // 2,000 requests in the second before.
        b.roll(t0 - 500);
        for _ in 0..2000 {
            b.requests.fetch_add(1, Relaxed);
        }
        // 50 ms into the new second: 100 more, then 40 timeouts want a retry at 0.2.
        b.roll(t0 + 50);
        b.requests.fetch_add(100, Relaxed);
        let granted = (0..40).filter(|_| b.try_retry_at(0.2, t0 + 50)).count();
        assert_eq!(granted, 40);
        // The budget still binds: 10 + 0.2 × (100 + 1900) = 410 in all.
        let more = (0..1000).filter(|_| b.try_retry_at(0.2, t0 + 50)).count();
        assert_eq!(granted + more, 410);
        // After a quiet gap, only the floor.
        let c = RetryBudget::default();
        c.roll(t0 - 5000);
        c.requests.fetch_add(5000, Relaxed);
        assert_eq!((0..100).filter(|_| c.try_retry_at(0.2, t0)).count(), 10);
    }
}
