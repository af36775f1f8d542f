//! A route's traffic split: requests shared across upstreams by weight (Envoy's
//! `weighted_clusters`, NGINX's `split_clients`), for canaries and blue/green moves.
//!
//! A request's side is chosen from a point in `[0, 1)`: drawn at random (`split_by = "request"`)
//! or taken from the hash of its key (`client_ip`, `header:NAME`, ...), the arms owning
//! consecutive ranges in file order. So a client keyed to a side stays on it while the weights
//! stay, and moving weight from the first arm to the last (a canary ramp, 90/10 to 80/20) moves
//! only clients of the first arm to the last, never back: a user who saw the canary keeps it.
//!
//! The split's own point is a remix of the key's hash, not the hash itself: the upstream behind
//! may balance by `consistent_hash` on the same key, and the keys one side receives would
//! otherwise all fall in one stretch of its ring.

use crate::upstream::HashKey;

/// What a route sends its requests to.
#[derive(Debug, Clone)]
pub enum Target {
    One(usize),
    Split(Box<Split>),
    /// The route answers itself ([`super::respond`]).
    Respond(std::sync::Arc<super::respond::Respond>),
}

#[derive(Debug, Clone)]
pub struct Split {
    /// Upstream index and the cumulative weight up to and including it; arms of weight 0 kept
    /// out.
    arms: Box<[(usize, u64)]>,
    total: u64,
    /// `None`: every request is drawn anew.
    by: Option<HashKey>,
}

impl Split {
    /// `arms` as (upstream index, weight), in file order. `None` if no weight is above 0.
    pub fn new(arms: impl IntoIterator<Item = (usize, u32)>, by: Option<HashKey>) -> Option<Split> {
        let mut total = 0u64;
        let arms: Box<[(usize, u64)]> = arms
            .into_iter()
            .filter(|&(_, w)| w > 0)
            .map(|(i, w)| {
                total += u64::from(w);
                (i, total)
            })
            .collect();
        (total > 0).then_some(Split { arms, total, by })
    }

    /// The upstream for a request; `key_hash` hashes the request's split key (or draws at random
    /// when the request has none, as `consistent_hash` does).
    pub fn pick(&self, key_hash: impl FnOnce(&HashKey) -> u64) -> usize {
        let h = match &self.by {
            Some(k) => remix(key_hash(k)),
            None => fastrand::u64(..),
        };
        // The point, scaled into [0, total) without the bias of `%`.
        let point = ((u128::from(h) * u128::from(self.total)) >> 64) as u64;
        let i = self.arms.partition_point(|&(_, upto)| upto <= point);
        self.arms[i].0
    }
}

/// A 64-bit finaliser (splitmix64's), salted: the split's point is independent of the hash the
/// upstream's own balancer sees.
fn remix(h: u64) -> u64 {
    let mut z = h ^ 0x5f0b_57a7_c0de_5eed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balancer::hash_bytes;

    fn keyed(arms: &[(usize, u32)]) -> Split {
        Split::new(arms.iter().copied(), Some(HashKey::ClientIp)).unwrap()
    }

    #[test]
    fn shares_follow_the_weights() {
        let s = Split::new([(0, 90), (1, 0), (2, 10)], None).unwrap();
        let mut n = [0u32; 3];
        for _ in 0..100_000 {
            n[s.pick(|_| unreachable!())] += 1;
        }
        assert_eq!(n[1], 0, "weight 0 takes nothing");
        // 10% of 100,000 has a standard deviation of ~95.
        assert!((9_500..10_500).contains(&n[2]), "{n:?}");
        assert!(Split::new([(0, 0)], None).is_none());
    }

    #[test]
    fn a_canary_ramp_moves_clients_only_towards_the_canary() {
        let before = keyed(&[(0, 90), (1, 10)]);
        let after = keyed(&[(0, 80), (1, 20)]);
        let (mut moved, mut canary) = (0, 0);
        for client in 0..20_000u32 {
            let h = hash_bytes(&client.to_le_bytes());
            let (a, b) = (before.pick(|_| h), after.pick(|_| h));
            assert_eq!(a, before.pick(|_| h), "the same key, the same side");
            assert!(!(a == 1 && b == 0), "client {client} left the canary");
            moved += usize::from(a != b);
            canary += usize::from(b == 1);
        }
        assert!((1_700..2_300).contains(&moved), "{moved} of 20,000 moved");
        assert!((3_600..4_400).contains(&canary), "{canary} in the canary");
    }
}
