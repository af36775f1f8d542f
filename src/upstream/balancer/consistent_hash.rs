//! Consistent hashing (ketama-style ring) for affinity by client IP, header, cookie or path.
//!
//! Each backend owns virtual points on a 64-bit ring in proportion to its weight; a key goes to
//! the first point at or after its hash, so adding one backend to N moves about 1/(N+1) of keys.
//! The ring is then quantised into a table of at most 2^20 buckets, each holding the owner of the
//! first point at or after the bucket's start: a lookup is one read of a table that stays in
//! cache, so a pick does not grow with the fleet. Quantising keeps the ring's property (a new
//! backend takes only the buckets whose first point is now its own). If the owner is unavailable
//! the walk continues clockwise, which spreads that backend's keys over its neighbours instead of
//! piling them onto one.
//! Hashes are FNV-1a with a 64-bit finaliser: stable across processes, so every Switchyard
//! instance of a cluster maps a key to the same backend.

use super::{Backend, Balancer, PickCtx};

pub struct ConsistentHash {
    /// Virtual points sorted by hash; read only when a key's owner is unavailable.
    ring: Vec<(u64, u32)>,
    /// The ring quantised: one entry per bucket of the hash space (`hash >> shift`), holding the
    /// owner of the first point at or after the bucket's start. A lookup is one read of this
    /// table, which is small enough (2 MiB at 10,000 backends) to stay in cache and TLB reach,
    /// whatever the fleet size.
    owners: Owners,
    shift: u32,
}

/// Owner indexes, as narrow as the fleet allows: half the table, twice the cache reach.
enum Owners {
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl Owners {
    fn get(&self, bucket: usize) -> usize {
        match self {
            Owners::Narrow(t) => t[bucket] as usize,
            Owners::Wide(t) => t[bucket] as usize,
        }
    }
}

/// Buckets per ring point. Quantising moves a key only when its bucket holds a point, so a finer
/// table is closer to the exact ring; more to the point, the table doubles when the fleet grows
/// past a power of two, and at 32 buckets per point that re-cut moves under 1% of keys on top of
/// the new backend's own share.
const BUCKETS_PER_POINT: usize = 32;
/// Largest owner table: 2^20 buckets (2 MiB of u16), reached from about 100 backends. Above it
/// the resolution is fixed, so no re-cut happens at all, and a backend's share still moves by
/// well under its virtual-point noise.
const MAX_BUCKET_BITS: u32 = 20;

/// Stable 64-bit hash of bytes.
pub fn hash_bytes(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser: FNV alone clusters similar keys on the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl ConsistentHash {
    pub fn new(backends: &[Backend]) -> Self {
        let ring = ring(backends);
        let bits = (ring.len().max(1) * BUCKETS_PER_POINT)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(10, MAX_BUCKET_BITS);
        let shift = 64 - bits;
        // Owner of each bucket's start: walk the sorted ring once alongside the buckets.
        let mut pos = 0usize;
        let mut owner_at = |bucket: u64| {
            let start = bucket << shift;
            while pos < ring.len() && ring[pos].0 < start {
                pos += 1;
            }
            ring.get(pos).or(ring.first()).map_or(0, |p| p.1)
        };
        let owners = if backends.len() <= u16::MAX as usize + 1 {
            Owners::Narrow((0..1u64 << bits).map(|b| owner_at(b) as u16).collect())
        } else {
            Owners::Wide((0..1u64 << bits).map(owner_at).collect())
        };
        ConsistentHash {
            ring,
            owners,
            shift,
        }
    }

    fn bucket(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }
}

/// The ketama ring: `address#N` points per backend, in proportion to its weight.
fn ring(backends: &[Backend]) -> Vec<(u64, u32)> {
    let n = backends.len().max(1);
    // 160 points each for small fleets (ketama's figure); fewer for huge ones so a rebuild
    // stays within a few milliseconds.
    let base = (400_000 / n).clamp(16, 160) as u64;
    let mean = (backends.iter().map(|b| b.weight.max(1) as u64).sum::<u64>() / n as u64).max(1);
    let mut ring = Vec::new();
    let mut key = Vec::with_capacity(64);
    for (i, b) in backends.iter().enumerate() {
        let points = (base * b.weight.max(1) as u64 / mean).max(1);
        key.clear();
        key.extend_from_slice(b.address.as_bytes());
        key.push(b'#');
        let stem = key.len();
        for v in 0..points {
            // `address#N` with N in decimal, written without allocating (400,000 points at
            // 10,000 backends).
            key.truncate(stem);
            let mut digits = [0u8; 20];
            let mut n = v;
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            key.extend_from_slice(&digits[at..]);
            ring.push((hash_bytes(&key), i as u32));
        }
    }
    ring.sort_unstable_by_key(|p| p.0);
    ring
}

impl Balancer for ConsistentHash {
    fn pick(
        &self,
        _: &[Backend],
        ctx: &PickCtx,
        ok: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        let len = self.ring.len();
        if len == 0 {
            return None;
        }
        let bucket = self.bucket(ctx.hash);
        let owner = self.owners.get(bucket);
        if ok(owner) {
            return Some(owner);
        }
        // The owner is out: walk on clockwise from the bucket's start, which spreads its keys
        // over its neighbours instead of piling them onto one.
        let start = (bucket as u64) << self.shift;
        let i = self.ring.partition_point(|p| p.0 < start);
        let mut last = owner as u32;
        for k in 0..len {
            let b = self.ring[(i + k) % len].1;
            if b != last && ok(b as usize) {
                return Some(b as usize);
            }
            last = b;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::backends;
    use super::*;

    #[test]
    fn adding_a_backend_moves_about_one_in_n_plus_one() {
        let three = backends(&[1, 1, 1]);
        let four = backends(&[1, 1, 1, 1]);
        let (a, b) = (ConsistentHash::new(&three), ConsistentHash::new(&four));
        let keys = 10_000;
        let moved = (0..keys)
            .filter(|k| {
                let ctx = PickCtx {
                    hash: hash_bytes(format!("key-{k}").as_bytes()),
                };
                a.pick(&three, &ctx, &mut |_| true) != b.pick(&four, &ctx, &mut |_| true)
            })
            .count();
        assert!((1800..3200).contains(&moved), "moved {moved} of {keys}");
    }

    #[test]
    fn large_fleet_moves_only_the_new_backends_share() {
        // 2,000 backends: the owner table is at full resolution, so adding one moves only the
        // keys the newcomer takes, about 1 in 2,001.
        let before = backends(&[1; 2_000]);
        let after = backends(&[1; 2_001]);
        let (a, b) = (ConsistentHash::new(&before), ConsistentHash::new(&after));
        let keys = 200_000u64;
        let (mut moved, mut to_new) = (0, 0);
        for k in 0..keys {
            let ctx = PickCtx {
                hash: hash_bytes(&k.to_le_bytes()),
            };
            let (x, y) = (
                a.pick(&before, &ctx, &mut |_| true),
                b.pick(&after, &ctx, &mut |_| true),
            );
            if x != y {
                moved += 1;
                to_new += (y == Some(2_000)) as u32;
            }
        }
        assert_eq!(moved, to_new, "keys moved between old backends");
        assert!((20..300).contains(&moved), "moved {moved} of {keys}");
    }

    #[test]
    fn owner_table_agrees_with_the_quantised_ring() {
        let b = backends(&[1, 2, 3, 1, 1, 4, 2]);
        let ch = ConsistentHash::new(&b);
        let mut h: u64 = 7;
        for _ in 0..50_000 {
            h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
            // The key's bucket start, looked up on the ring itself.
            let at = h >> ch.shift << ch.shift;
            let ring_owner = ch.ring.iter().find(|p| p.0 >= at).unwrap_or(&ch.ring[0]).1 as usize;
            let ctx = PickCtx { hash: h };
            assert_eq!(ch.pick(&b, &ctx, &mut |_| true), Some(ring_owner));
            // And when that owner is out, the next distinct owner clockwise.
            let next = ch.pick(&b, &ctx, &mut |i| i != ring_owner).unwrap();
            let start = ch.ring.partition_point(|p| p.0 < at);
            let want = (0..ch.ring.len())
                .map(|k| ch.ring[(start + k) % ch.ring.len()].1 as usize)
                .find(|&o| o != ring_owner)
                .unwrap();
            assert_eq!(next, want);
        }
    }

    #[test]
    fn unavailable_owner_falls_to_a_neighbour() {
        let b = backends(&[1, 1, 1]);
        let ch = ConsistentHash::new(&b);
        let ctx = PickCtx { hash: 42 };
        let owner = ch.pick(&b, &ctx, &mut |_| true).unwrap();
        let other = ch.pick(&b, &ctx, &mut |i| i != owner).unwrap();
        assert_ne!(owner, other);
    }
}
