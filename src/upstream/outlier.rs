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

/// Counts requests and retries per second-long window.
#[derive(Default)]
pub struct RetryBudget {
    window_s: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Retries always allowed per second, so a quiet upstream can still retry (Finagle uses 10/s).
const RETRY_FLOOR_PER_S: u64 = 10;

impl RetryBudget {
    pub fn on_request(&self) {
        self.roll();
        self.requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_retry(&self, ratio: f64) -> bool {
        self.roll();
        let allowed = RETRY_FLOOR_PER_S + (self.requests.load(Relaxed) as f64 * ratio) as u64;
        self.retries
            .fetch_update(Relaxed, Relaxed, |r| (r < allowed).then_some(r + 1))
            .is_ok()
    }

    fn roll(&self) {
        let s = now_ms() / 1000;
        let w = self.window_s.load(Relaxed);
        if s != w
            && self
                .window_s
                .compare_exchange(w, s, Relaxed, Relaxed)
                .is_ok()
        {
            self.requests.store(0, Relaxed);
            self.retries.store(0, Relaxed);
        }
    }
}
