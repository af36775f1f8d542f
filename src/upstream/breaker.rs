//! Per-backend circuit breaker: closed → open on a failure rate over a sliding window (with a
//! minimum number of requests) or on consecutive failures; open for `open_for`, doubling on each
//! repeated trip (capped at 16×); then half-open, where a few probes decide whether it closes.
//!
//! All state is atomics so workers record outcomes without locks. The window is two fixed windows
//! blended by elapsed time (the "sliding window counter"), which needs no per-request storage.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl Circuit {
    pub fn name(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

/// Compiled breaker settings of an upstream. Defaults follow Envoy/Hystrix practice: trip at 50%
/// failures over 10s with at least 20 requests, or 5 consecutive failures; stay open 10s; 3 probes.
#[derive(Clone, Debug)]
pub struct BreakerPolicy {
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window_ms: u64,
    pub consecutive_failures: u32,
    pub open_for_ms: u64,
    pub half_open_probes: u32,
}

impl BreakerPolicy {
    pub fn from_config(c: &crate::config::CircuitBreakerConfig) -> Self {
        BreakerPolicy {
            failure_rate: c.failure_rate.unwrap_or(0.5),
            min_requests: c.min_requests.unwrap_or(20),
            window_ms: c
                .window
                .map_or(10_000, |d| d.get().as_millis() as u64)
                .max(1),
            consecutive_failures: c.consecutive_failures.unwrap_or(5),
            open_for_ms: c
                .open_for
                .map_or(Duration::from_secs(10), |d| d.get())
                .as_millis() as u64,
            half_open_probes: c.half_open_probes.unwrap_or(3),
        }
    }
}

/// `repr(C)`: `state`, the one field a pick reads, first (see `BackendState`).
#[derive(Default)]
#[repr(C)]
pub struct Breaker {
    state: AtomicU8,
    open_until_ms: AtomicU64,
    trips: AtomicU32,
    consecutive: AtomicU32,
    probes_inflight: AtomicU32,
    probes_ok: AtomicU32,
    win_start_ms: AtomicU64,
    cur: AtomicU64,  // total << 32 | failures
    prev: AtomicU64, // same, for the previous window
    /// The running configuration has no breaker for this backend: outcomes recorded under an
    /// older snapshot's policy (requests still in flight when it was removed) are ignored, or
    /// one of them could open a circuit nothing would ever close again.
    disabled: std::sync::atomic::AtomicBool,
}

fn unpack(v: u64) -> (f64, f64) {
    ((v >> 32) as f64, (v & 0xffff_ffff) as f64)
}

impl Breaker {
    pub fn state(&self) -> Circuit {
        match self.state.load(Relaxed) {
            1 => Circuit::Open,
            2 => Circuit::HalfOpen,
            _ => Circuit::Closed,
        }
    }

    /// Back to closed with nothing counted, as a new breaker: for a backend whose upstream no
    /// longer has a breaker policy, where nothing else would ever close it. Returns whether the
    /// circuit was not closed (a transition to report).
    pub fn reset(&self) -> bool {
        let was = self.state.swap(Circuit::Closed as u8, Relaxed);
        for counter in [
            &self.trips,
            &self.consecutive,
            &self.probes_inflight,
            &self.probes_ok,
        ] {
            counter.store(0, Relaxed);
        }
        for word in [
            &self.open_until_ms,
            &self.win_start_ms,
            &self.cur,
            &self.prev,
        ] {
            word.store(0, Relaxed);
        }
        was != Circuit::Closed as u8
    }

    /// Whether the running configuration has a breaker policy for this backend.
    pub fn set_policy(&self, present: bool) {
        self.disabled.store(!present, Relaxed);
    }

    /// Whether the balancer may pick this backend now. No side effects: picking calls
    /// [`Breaker::on_dispatch`] for the one backend chosen.
    pub fn admits(&self, p: &BreakerPolicy, now: u64) -> bool {
        match self.state() {
            Circuit::Closed => true,
            Circuit::Open => now >= self.open_until_ms.load(Relaxed),
            Circuit::HalfOpen => self.probes_inflight.load(Relaxed) < p.half_open_probes,
        }
    }

    /// A request is being sent; an expired open circuit turns half-open and this is a probe.
    /// Returns a transition to report, if any.
    pub fn on_dispatch(&self, now: u64) -> Option<Circuit> {
        let mut changed = None;
        if self.state() == Circuit::Open
            && now >= self.open_until_ms.load(Relaxed)
            && self.state.compare_exchange(1, 2, Relaxed, Relaxed).is_ok()
        {
            self.probes_ok.store(0, Relaxed);
            self.probes_inflight.store(0, Relaxed);
            changed = Some(Circuit::HalfOpen);
        }
        if self.state() == Circuit::HalfOpen {
            self.probes_inflight.fetch_add(1, Relaxed);
        }
        changed
    }

    /// A request dispatched while half-open has ended, however it ended: its probe place is
    /// free again. Released here, by the request's in-flight guard, and not when an outcome is
    /// recorded, because a request can end without one (its client left, it was cancelled at
    /// shutdown, the failure was not the backend's): each such end used to keep its place, and
    /// after `half_open_probes` of them the backend was never admitted again.
    pub fn probe_ended(&self) {
        let _ = self
            .probes_inflight
            .fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
    }

    /// Records an outcome; returns the new state when it changed.
    pub fn record(&self, p: &BreakerPolicy, ok: bool, now: u64) -> Option<Circuit> {
        if self.disabled.load(Relaxed) {
            return None;
        }
        match self.state() {
            Circuit::HalfOpen => {
                if !ok {
                    return self.trip(p, now, 2);
                }
                if self.probes_ok.fetch_add(1, Relaxed) + 1 >= p.half_open_probes
                    && self.state.compare_exchange(2, 0, Relaxed, Relaxed).is_ok()
                {
                    self.trips.store(0, Relaxed);
                    self.consecutive.store(0, Relaxed);
                    self.cur.store(0, Relaxed);
                    self.prev.store(0, Relaxed);
                    return Some(Circuit::Closed);
                }
                None
            }
            Circuit::Open => None,
            Circuit::Closed => {
                self.roll(p, now);
                self.cur.fetch_add((1 << 32) | (!ok as u64), Relaxed);
                let consecutive = if ok {
                    self.consecutive.store(0, Relaxed);
                    0
                } else {
                    self.consecutive.fetch_add(1, Relaxed) + 1
                };
                if p.consecutive_failures > 0 && consecutive >= p.consecutive_failures {
                    return self.trip(p, now, 0);
                }
                let (total, fails) = self.blended(p, now);
                if !ok
                    && total >= p.min_requests as f64
                    && total > 0.0
                    && fails / total >= p.failure_rate
                {
                    return self.trip(p, now, 0);
                }
                None
            }
        }
    }

    fn trip(&self, p: &BreakerPolicy, now: u64, from: u8) -> Option<Circuit> {
        if self
            .state
            .compare_exchange(from, 1, Relaxed, Relaxed)
            .is_err()
        {
            return None;
        }
        let trips = self.trips.fetch_add(1, Relaxed).min(4);
        self.open_until_ms
            .store(now + (p.open_for_ms << trips), Relaxed);
        self.consecutive.store(0, Relaxed);
        // Only a trip takes a backend out of service; the other transitions restore it.
        super::backend::availability_changed();
        Some(Circuit::Open)
    }

    fn roll(&self, p: &BreakerPolicy, now: u64) {
        let start = self.win_start_ms.load(Relaxed);
        if now >= start + p.window_ms
            && self
                .win_start_ms
                .compare_exchange(start, now, Relaxed, Relaxed)
                .is_ok()
        {
            // A gap of two windows or more means the previous window saw nothing.
            let cur = self.cur.swap(0, Relaxed);
            self.prev.store(
                if now >= start + 2 * p.window_ms {
                    0
                } else {
                    cur
                },
                Relaxed,
            );
        }
    }

    fn blended(&self, p: &BreakerPolicy, now: u64) -> (f64, f64) {
        let elapsed =
            now.saturating_sub(self.win_start_ms.load(Relaxed)) as f64 / p.window_ms as f64;
        let w = (1.0 - elapsed).clamp(0.0, 1.0);
        let (ct, cf) = unpack(self.cur.load(Relaxed));
        let (pt, pf) = unpack(self.prev.load(Relaxed));
        (ct + pt * w, cf + pf * w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_rate: 0.5,
            min_requests: 4,
            window_ms: 1000,
            consecutive_failures: 3,
            open_for_ms: 100,
            half_open_probes: 2,
        }
    }

    #[test]
    fn trips_on_consecutive_failures_then_recovers_through_half_open() {
        let (b, p) = (Breaker::default(), policy());
        assert_eq!(b.record(&p, false, 10), None);
        assert_eq!(b.record(&p, false, 11), None);
        assert_eq!(b.record(&p, false, 12), Some(Circuit::Open));
        assert!(!b.admits(&p, 50));
        assert!(b.admits(&p, 112));
        assert_eq!(b.on_dispatch(112), Some(Circuit::HalfOpen));
        assert_eq!(b.record(&p, true, 113), None);
        b.probe_ended();
        b.on_dispatch(114);
        assert_eq!(b.record(&p, true, 115), Some(Circuit::Closed));
    }

    #[test]
    fn probes_that_end_without_an_outcome_give_their_place_back() {
        let (b, p) = (Breaker::default(), policy());
        for t in 0..3 {
            b.record(&p, false, t);
        }
        // Two probes (the policy's limit) dispatched, and both abandoned without an outcome.
        b.on_dispatch(200);
        b.on_dispatch(200);
        assert!(!b.admits(&p, 201), "both probe places taken");
        b.probe_ended();
        b.probe_ended();
        assert!(
            b.admits(&p, 202),
            "an abandoned probe does not shut the backend out"
        );
        b.probe_ended();
        b.on_dispatch(203);
        b.on_dispatch(203);
        assert!(
            !b.admits(&p, 204),
            "an extra release never makes room past the limit"
        );
    }

    #[test]
    fn failed_probe_reopens_for_longer() {
        let (b, p) = (Breaker::default(), policy());
        for t in 0..3 {
            b.record(&p, false, t);
        }
        b.on_dispatch(200);
        assert_eq!(b.record(&p, false, 201), Some(Circuit::Open));
        assert!(!b.admits(&p, 350), "second trip stays open twice as long");
        assert!(b.admits(&p, 402));
    }

    #[test]
    fn reset_closes_and_forgets() {
        let (b, p) = (Breaker::default(), policy());
        assert!(!b.reset(), "closed already: nothing to report");
        for t in 0..3 {
            b.record(&p, false, t);
        }
        assert_eq!(b.state(), Circuit::Open);
        assert!(b.reset());
        assert_eq!(b.state(), Circuit::Closed);
        // Nothing counted survives: it takes a full run of failures to trip again.
        assert_eq!(b.record(&p, false, 10), None);
        assert_eq!(b.record(&p, false, 11), None);
        assert_eq!(b.record(&p, false, 12), Some(Circuit::Open));
    }

    #[test]
    fn trips_on_failure_rate_only_past_min_requests() {
        let (b, p) = (Breaker::default(), policy());
        assert_eq!(b.record(&p, true, 1), None);
        assert_eq!(b.record(&p, false, 2), None);
        assert_eq!(b.record(&p, true, 3), None);
        assert_eq!(b.record(&p, false, 4), Some(Circuit::Open));
    }
}
