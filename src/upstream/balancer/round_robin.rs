//! Round robin: each request goes to the next backend in order, ignoring weights (as the contract
//! says; `weighted_round_robin` honours them). One shared atomic counter keeps the split exact
//! across workers, also when some backends are unavailable (see [`super::rotation_pick`]).

use super::{rotation_pick, Backend, Balancer, PickCtx};
use std::sync::atomic::AtomicUsize;

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
        rotation_pick(&self.next, backends.len(), |turn| turn, ok)
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

    fn counts(n: usize, picks: usize, ok: impl Fn(usize) -> bool) -> Vec<usize> {
        let b = backends(&vec![1; n]);
        let rr = RoundRobin::default();
        let mut counts = vec![0; n];
        for _ in 0..picks {
            counts[rr.pick(&b, &PickCtx::default(), &mut |i| ok(i)).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn an_unavailable_backends_turns_are_shared_evenly() {
        assert_eq!(counts(4, 300, |i| i != 1), [100, 0, 100, 100]);
        assert_eq!(counts(5, 300, |i| i != 1 && i != 2), [100, 0, 0, 100, 100]);
    }

    #[test]
    fn a_run_longer_than_the_redraws_is_crossed_once_per_cycle() {
        // 30 unavailable in a row, more than REDRAWS: the scan takes the turns it walks over.
        let c = counts(40, 1_000, |i| i >= 30);
        assert!(c[..30].iter().all(|&n| n == 0), "{c:?}");
        assert!(c[30..].iter().all(|&n| n == 100), "{c:?}");
        assert_eq!(counts(3, 10, |i| i == 2), [0, 0, 10]);
    }
}
