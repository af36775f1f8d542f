//! Least connections: the backend with the fewest active requests per unit of weight.
//!
//! Up to [`EXACT_UP_TO`] backends every candidate is compared (exact, as HAProxy's leastconn);
//! beyond that the best of [`SAMPLES`] random candidates is taken, as Envoy's least_request does,
//! which keeps a pick O(1) with thousands of backends and still avoids loaded ones with high
//! probability. Ties go round-robin so an idle fleet is still evenly spread.

use super::{scan_from, Backend, Balancer, PickCtx};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const EXACT_UP_TO: usize = 16;
const SAMPLES: usize = 2;

#[derive(Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

fn load(b: &Backend) -> f64 {
    b.state.active.load(Relaxed) as f64 / b.weight.max(1) as f64
}

impl Balancer for LeastConnections {
    fn pick(
        &self,
        backends: &[Backend],
        _: &PickCtx,
        ok: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let mut best: Option<(usize, f64)> = None;
        let mut consider = |i: usize, ok: &mut dyn FnMut(usize) -> bool| {
            if best.is_some_and(|(b, _)| b == i) || !ok(i) {
                return;
            }
            let l = load(&backends[i]);
            if best.is_none_or(|(_, bl)| l < bl) {
                best = Some((i, l));
            }
        };
        if n <= EXACT_UP_TO {
            (0..n).for_each(|k| consider((start + k) % n, ok));
        } else {
            (0..SAMPLES).for_each(|_| consider(fastrand::usize(..n), ok));
            if best.is_none() {
                return scan_from(n, start % n, ok);
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::backends;
    use super::*;

    #[test]
    fn avoids_the_busy_backend_and_honours_weight() {
        let b = backends(&[1, 1, 2]);
        b[0].state.active.store(1, Relaxed);
        b[2].state.active.store(1, Relaxed);
        let lc = LeastConnections::default();
        for _ in 0..6 {
            assert_eq!(lc.pick(&b, &PickCtx::default(), &mut |_| true), Some(1));
        }
        b[1].state.active.store(1, Relaxed);
        assert_eq!(
            lc.pick(&b, &PickCtx::default(), &mut |_| true),
            Some(2),
            "1/2 beats 1/1"
        );
    }
}
