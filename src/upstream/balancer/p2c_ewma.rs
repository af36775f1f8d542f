//! Power of two choices on peak-EWMA latency (as linkerd and Finagle): draw two backends at
//! random and send to the one with the lower cost, `ewma latency × (active + 1) / weight`. It
//! reacts to a slow backend within a few requests, needs no shared counter, and is O(1).

use super::{scan_from, Backend, Balancer, PickCtx};
use std::sync::atomic::Ordering::Relaxed;

pub struct P2cEwma;

fn cost(b: &Backend, now_ms: u64) -> f64 {
    // A backend never measured costs like a fast one, so it gets tried.
    let lat = b.state.ewma_us_at(now_ms).max(1.0);
    lat * (b.state.active.load(Relaxed) as f64 + 1.0) / b.weight.max(1) as f64
}

impl Balancer for P2cEwma {
    fn pick(
        &self,
        backends: &[Backend],
        _: &PickCtx,
        ok: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        match n {
            0 => return None,
            1 => return ok(0).then_some(0),
            _ => {}
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        match (ok(a), ok(b)) {
            (true, true) => Some({
                let now = crate::upstream::backend::now_ms();
                if cost(&backends[b], now) < cost(&backends[a], now) {
                    b
                } else {
                    a
                }
            }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => scan_from(n, a, ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::backends;
    use super::*;

    #[test]
    fn prefers_the_faster_backend() {
        let b = backends(&[1, 1]);
        let now = crate::upstream::backend::now_ms();
        b[0].state.observe_latency(50_000.0, now);
        b[1].state.observe_latency(1_000.0, now);
        assert!((0..50).all(|_| P2cEwma.pick(&b, &PickCtx::default(), &mut |_| true) == Some(1)));
    }

    /// One stall's sample (990 ms) no longer bars a backend for good: unpicked, its estimate
    /// decays, and within a minute it costs less than a busy 1 ms backend and is tried again.
    #[test]
    fn a_backend_slow_once_is_tried_again_as_its_estimate_decays() {
        let b = backends(&[1, 1]);
        let t = crate::upstream::backend::now_ms();
        b[0].state.observe_latency(990_000.0, t);
        // The other keeps being picked, and measured, for a minute.
        let later = t + 60_000;
        b[1].state.observe_latency(1_000.0, later);
        assert!(cost(&b[0], later) < cost(&b[1], later));
        assert!(
            cost(&b[0], t + 1_000) > cost(&b[1], later),
            "a second later: still avoided"
        );
    }

    /// Back from unhealthy, a backend's latency from its failing time is forgotten.
    #[test]
    fn recovery_from_unhealthy_forgets_the_latency_measured_while_failing() {
        use crate::upstream::backend::Health;
        let b = backends(&[1, 1]);
        let now = crate::upstream::backend::now_ms();
        b[0].state.observe_latency(990_000.0, now);
        b[1].state.observe_latency(1_000.0, now);
        b[0].state.set_health(Health::Unhealthy);
        b[0].state.set_health(Health::Healthy);
        assert_eq!(b[0].state.ewma_us(), 0.0);
        assert!((0..50).any(|_| P2cEwma.pick(&b, &PickCtx::default(), &mut |_| true) == Some(0)));
    }
}
