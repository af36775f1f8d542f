//! Random: each request to a backend drawn at random in proportion to its weight, by Vose's alias
//! method: one uniform slot, one coin against that slot's threshold, so a draw is O(1) and touches
//! one 8-byte table entry whatever the number of backends (a binary search over cumulative
//! weights touched ~14 scattered entries at 10,000). No shared counter, so nothing is contended.

use super::{scan_from, Backend, Balancer, PickCtx};

pub struct Random {
    /// Slot `i` yields `i` when a uniform u32 is below `threshold`, else `alias`.
    slots: Vec<Slot>,
}

#[derive(Clone, Copy)]
struct Slot {
    threshold: u32,
    alias: u32,
}

impl Random {
    pub fn new(backends: &[Backend]) -> Self {
        let n = backends.len();
        let total: u64 = backends.iter().map(|b| b.weight as u64).sum();
        if n == 0 || total == 0 {
            return Random { slots: Vec::new() };
        }
        // Scaled weights: each slot holds `total` units; a backend needs `weight * n` of them.
        let mut scaled: Vec<u64> = backends
            .iter()
            .map(|b| b.weight as u64 * n as u64)
            .collect();
        let mut slots = vec![
            Slot {
                threshold: u32::MAX,
                alias: 0
            };
            n
        ];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < total);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            // Slot `s` keeps its own share and gives the rest of the slot to `l`.
            slots[s] = Slot {
                threshold: ((scaled[s] as u128 * (1u128 << 32)) / total as u128) as u32,
                alias: l as u32,
            };
            scaled[l] -= total - scaled[s];
            if scaled[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is full (rounding leftovers included): always itself.
        for i in small.into_iter().chain(large) {
            slots[i] = Slot {
                threshold: u32::MAX,
                alias: i as u32,
            };
        }
        Random { slots }
    }

    fn draw(&self) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let i = fastrand::usize(..self.slots.len());
        let s = self.slots[i];
        Some(if fastrand::u32(..) < s.threshold {
            i
        } else {
            s.alias as usize
        })
    }
}

impl Balancer for Random {
    fn pick(
        &self,
        backends: &[Backend],
        _: &PickCtx,
        ok: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        for _ in 0..3 {
            if let Some(i) = self.draw().filter(|&i| ok(i)) {
                return Some(i);
            }
        }
        (!backends.is_empty())
            .then(|| scan_from(backends.len(), fastrand::usize(..backends.len()), ok))?
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::backends;
    use super::*;

    fn shares(weights: &[u32], draws: usize) -> Vec<f64> {
        let b = backends(weights);
        let r = Random::new(&b);
        let mut count = vec![0usize; weights.len()];
        for _ in 0..draws {
            count[r.pick(&b, &PickCtx::default(), &mut |_| true).unwrap()] += 1;
        }
        count.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn follows_weights() {
        let s = shares(&[1, 3], 40_000);
        assert!((0.72..0.78).contains(&s[1]), "{s:?}");
        let s = shares(&[5, 1, 0, 2, 2], 100_000);
        let want = [0.5, 0.1, 0.0, 0.2, 0.2];
        for (got, want) in s.iter().zip(want) {
            assert!((got - want).abs() < 0.01, "{s:?}");
        }
    }

    #[test]
    fn zero_weight_is_never_drawn_and_all_zero_is_none() {
        assert_eq!(shares(&[0, 7, 0], 2_000)[1], 1.0);
        let b = backends(&[0, 0]);
        assert!(Random::new(&b).draw().is_none());
    }
}
