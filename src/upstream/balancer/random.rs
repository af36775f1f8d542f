//! Random: each request to a backend drawn at random in proportion to its weight (binary search
//! over cumulative weights, O(log n)); no shared counter at all, so nothing is contended.

use super::{scan_from, Backend, Balancer, PickCtx};

pub struct Random {
    cumulative: Vec<u64>,
}

impl Random {
    pub fn new(backends: &[Backend]) -> Self {
        let mut acc = 0;
        let cumulative = backends
            .iter()
            .map(|b| {
                acc += b.weight as u64;
                acc
            })
            .collect();
        Random { cumulative }
    }

    fn draw(&self) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let r = fastrand::u64(..total);
        Some(self.cumulative.partition_point(|&c| c <= r))
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

    #[test]
    fn follows_weights_roughly() {
        let b = backends(&[1, 3]);
        let r = Random::new(&b);
        let heavy = (0..4000)
            .filter(|_| r.pick(&b, &PickCtx::default(), &mut |_| true) == Some(1))
            .count();
        assert!((2700..3300).contains(&heavy), "{heavy}");
    }
}
