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
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub use consistent_hash::{hash_bytes, ConsistentHash};

/// What a request brings to a pick.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickCtx {
    /// Hash of the request's key, used by `consistent_hash` only.
    pub hash: u64,
    /// The backend the request's sticky-session cookie names (see [`crate::upstream::sticky`]):
    /// taken before any balancing while it is available.
    pub sticky: Option<usize>,
}

impl PickCtx {
    /// A request with key hash `hash` and no sticky session.
    pub fn hashed(hash: u64) -> PickCtx {
        PickCtx { hash, sticky: None }
    }
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

/// Further turns a rotation pick draws when its turn's backend is unavailable, before it scans.
const REDRAWS: usize = 8;

/// A pick from a rotation of `len` turns shared through the counter `next`; `owner(turn)` is the
/// backend whose turn it is (round robin: the turn itself; weighted: the cycle's entry).
///
/// When the owner is unavailable the pick draws the *next turn from the counter*, not the next
/// entry after the unavailable one: every turn then serves exactly one request, so each
/// available backend keeps one request per turn it owns and the unavailable backend's turns are
/// spread over all the others alike (by weight for WRR), as NGINX and HAProxy do. Walking on
/// from the unavailable entry instead handed its whole share to its neighbour in the list.
/// Draws are bounded so a mostly unavailable fleet costs a few atomics; then a scan finds the
/// next available turn and takes the turns it walked over too, so the rotation resumes after
/// that backend and a long run of unavailable ones is crossed once per cycle, not per request.
fn rotation_pick(
    next: &AtomicUsize,
    len: usize,
    owner: impl Fn(usize) -> usize,
    ok: &mut dyn FnMut(usize) -> bool,
) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let mut turn = 0;
    for _ in 0..=REDRAWS {
        turn = next.fetch_add(1, Relaxed) % len;
        if ok(owner(turn)) {
            return Some(owner(turn));
        }
    }
    let (k, i) = (1..len)
        .map(|k| (k, owner((turn + k) % len)))
        .find(|&(_, i)| ok(i))?;
    next.fetch_add(k, Relaxed);
    Some(i)
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
                    backup: false,
                }
            })
            .collect()
    }
}
