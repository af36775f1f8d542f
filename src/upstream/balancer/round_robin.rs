//! Round robin: each request goes to the next backend in order, ignoring weights (as the contract
//! says; `weighted_round_robin` honours them). One shared atomic counter keeps the split exact
//! across workers.

use super::{scan_from, Backend, Balancer, PickCtx};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick(
        &self,
        backends: &[Backend],
        _: &PickCtx,
        ok: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed) % backends.len();
        scan_from(backends.len(), start, ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::backends;
    use super::*;

    #[test]
    fn round_robin_splits_evenly_and_skips_unavailable() {
        let b = backends(&[1, 5, 1]);
        let rr = RoundRobin::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[rr.pick(&b, &PickCtx::default(), &mut |_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        for _ in 0..10 {
            assert_ne!(rr.pick(&b, &PickCtx::default(), &mut |i| i != 1), Some(1));
        }
    }
}
