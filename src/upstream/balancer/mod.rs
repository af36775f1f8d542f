//! Load-balancing algorithms: one file each behind the [`Balancer`] trait.
//!
//! A balancer only ranks. Whether a backend may take traffic (healthy, circuit closed, not
//! draining, not ejected, not already tried by this request) is decided in one place outside,
//! by [`crate::upstream::Upstream::pick`], and passed in as the `ok` filter; each algorithm returns
//! the best index for which `ok` holds. Tables are built once per configuration snapshot, so picks
//! cost O(1) (or O(log n) for weighted random) whatever the number of backends.

mod consistent_hash;
mod least_connections;
mod p2c_ewma;
mod random;
mod round_robin;
mod weighted_round_robin;

use super::backend::Backend;
use crate::config::Algorithm;

pub use consistent_hash::{hash_bytes, ConsistentHash};

/// What a request brings to a pick.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickCtx {
    /// Hash of the request's key, used by `consistent_hash` only.
    pub hash: u64,
}

pub trait Balancer: Send + Sync {
    /// Chooses among `backends` an index for which `ok(index)` is true, or `None` if none is.
    fn pick(
        &self,
        backends: &[Backend],
        ctx: &PickCtx,
        ok: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize>;
}

/// Builds the balancer of an upstream for one snapshot of its backends.
pub fn build(alg: Algorithm, backends: &[Backend]) -> Box<dyn Balancer> {
    match alg {
        Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::default()),
        Algorithm::WeightedRoundRobin => {
            Box::new(weighted_round_robin::WeightedRoundRobin::new(backends))
        }
        Algorithm::LeastConnections => Box::new(least_connections::LeastConnections::default()),
        Algorithm::Random => Box::new(random::Random::new(backends)),
        Algorithm::P2cEwma => Box::new(p2c_ewma::P2cEwma),
        Algorithm::ConsistentHash => Box::new(ConsistentHash::new(backends)),
    }
}

/// Linear scan from `start`, wrapping: the fallback every algorithm shares once its fast path
/// found nothing available.
fn scan_from(n: usize, start: usize, ok: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
    (0..n).map(|i| (start + i) % n).find(|&i| ok(i))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::super::backend::{Backend, BackendState};

    pub fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let address = format!("10.0.{}.{}:80", i / 250, i % 250 + 1);
                Backend {
                    state: BackendState::new("t", &address),
                    socket: address.parse().ok(),
                    address,
                    weight: w,
                }
            })
            .collect()
    }
}
