//! Smooth weighted round robin, as NGINX: weights 5,1,1 give `a a b a c a a`, so a light backend
//! never gets two requests in a row while heavier ones wait.
//!
//! NGINX runs the algorithm per request under its per-worker state. Here the sequence of one full
//! cycle is computed once per snapshot and requests walk it with one atomic counter, so the order
//! is exact across workers and a pick is O(1). Weights are divided by their GCD first; cycles that
//! would be too long to precompute cheaply use earliest-deadline-first order instead (also smooth).

use super::{rotation_pick, Backend, Balancer, PickCtx};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::AtomicUsize;

/// Longest cycle kept; longer ones are scaled down proportionally.
const MAX_CYCLE: u64 = 1 << 20;
/// Above this many (cycle × backends) steps the O(n) per-step NGINX loop is replaced by EDF.
const MAX_NGINX_WORK: u64 = 1 << 22;

pub struct WeightedRoundRobin {
    cycle: Vec<u32>,
    next: AtomicUsize,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl WeightedRoundRobin {
    pub fn new(backends: &[Backend]) -> Self {
        let mut w: Vec<u64> = backends.iter().map(|b| b.weight as u64).collect();
        let g = w.iter().copied().filter(|&x| x > 0).fold(0, gcd).max(1);
        w.iter_mut().for_each(|x| *x /= g);
        let mut total: u64 = w.iter().sum();
        if total > MAX_CYCLE {
            let scale = total as f64 / MAX_CYCLE as f64;
            w.iter_mut()
                .filter(|x| **x > 0)
                .for_each(|x| *x = ((*x as f64 / scale).round() as u64).max(1));
            total = w.iter().sum();
        }
        let cycle = if total * w.len() as u64 <= MAX_NGINX_WORK {
            nginx_cycle(&w, total)
        } else {
            edf_cycle(&w, total)
        };
        WeightedRoundRobin {
            cycle,
            next: AtomicUsize::new(0),
        }
    }
}

/// NGINX's smooth WRR: every step each peer gains its weight, the richest is chosen and pays the
/// total.
fn nginx_cycle(w: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for i in 0..w.len() {
            if w[i] == 0 {
                continue;
            }
            current[i] += w[i] as i64;
            if best == usize::MAX || current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

/// Earliest deadline first: backend i is due every total/w[i] steps, first at half a period.
fn edf_cycle(w: &[u64], total: u64) -> Vec<u32> {
    let mut heap: BinaryHeap<Reverse<(u128, u32)>> = w
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > 0)
        .map(|(i, &x)| Reverse(((total as u128 * 1_000_000) / (2 * x as u128), i as u32)))
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while (out.len() as u64) < total {
        let Some(Reverse((due, i))) = heap.pop() else {
            break;
        };
        out.push(i);
        heap.push(Reverse((
            due + (total as u128 * 1_000_000) / w[i as usize] as u128,
            i,
        )));
    }
    out
}

impl Balancer for WeightedRoundRobin {
    fn pick(&self, _: &[Backend], _: &PickCtx, ok: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        // An unavailable entry's turn goes to the next turn drawn, so the others keep their
        // relative weights (5,1,1 with the 5 out: 1:1).
        rotation_pick(
            &self.next,
            self.cycle.len(),
            |turn| self.cycle[turn] as usize,
            ok,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::backends;
    use super::*;

    #[test]
    fn weights_5_1_1_give_nginx_sequence() {
        let b = backends(&[5, 1, 1]);
        let wrr = WeightedRoundRobin::new(&b);
        let seq: Vec<usize> = (0..7)
            .map(|_| wrr.pick(&b, &PickCtx::default(), &mut |_| true).unwrap())
            .collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn an_unavailable_backends_turns_are_shared_by_weight() {
        let share = |weights: &[u32], out: usize, picks: usize| {
            let b = backends(weights);
            let wrr = WeightedRoundRobin::new(&b);
            let mut counts = vec![0; weights.len()];
            for _ in 0..picks {
                counts[wrr
                    .pick(&b, &PickCtx::default(), &mut |i| i != out)
                    .unwrap()] += 1;
            }
            counts
        };
        assert_eq!(share(&[5, 1, 1], 0, 200), [0, 100, 100]);
        assert_eq!(share(&[5, 1, 2], 0, 300), [0, 100, 200]);
        assert_eq!(share(&[1, 5, 1], 2, 600), [100, 500, 0]);
    }

    #[test]
    fn zero_weight_gets_nothing_and_large_fleets_build() {
        let b = backends(&[2, 0, 1]);
        let wrr = WeightedRoundRobin::new(&b);
        assert!((0..30).all(|_| wrr.pick(&b, &PickCtx::default(), &mut |_| true) != Some(1)));
        let big = backends(&vec![3; 10_000]);
        let wrr = WeightedRoundRobin::new(&big);
        let mut counts = vec![0u32; big.len()];
        for _ in 0..20_000 {
            counts[wrr.pick(&big, &PickCtx::default(), &mut |_| true).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c == 2));
    }
}
