//! Consistent hashing (ketama-style ring) for affinity by client IP, header, cookie or path.
//!
//! Each backend owns virtual points on a 64-bit ring in proportion to its weight. The ring is
//! quantised into a fixed table of 2^20 buckets (`hash >> 44`), each holding the owner of
//! the first point at or after the bucket's start, and a key goes to its bucket's owner: a lookup
//! is one read of a table small enough to stay in cache (2 MiB at 10,000 backends), so a pick
//! does not grow with the fleet. Quantising keeps the ring's property: a new backend takes only
//! the buckets whose first point is now its own, about 1/(N+1) of keys. The table is built
//! without sorting the ring (the first point of each bucket is a minimum, found in one pass):
//! about 20 ms at 10,000 backends (BENCHMARKS.md, `cargo bench --bench apply`).
//! If the owner is unavailable the walk continues clockwise through the table, which spreads
//! that backend's keys over its neighbours instead of piling them onto one.
//! Hashes are FNV-1a with a 64-bit finaliser: stable across processes, so every Switchyard
//! instance of a cluster maps a key to the same backend.

use super::{scan_from, Backend, Balancer, PickCtx};

pub struct ConsistentHash {
    /// One entry per bucket: the owner of the first ring point at or after the bucket's start.
    owners: Owners,
    backends: usize,
}

/// Owner indexes, as narrow as the fleet allows: a smaller table, more of it in cache.
enum Owners {
    U8(Box<[u8]>),
    U16(Box<[u16]>),
    U32(Box<[u32]>),
}

impl Owners {
    fn get(&self, bucket: usize) -> usize {
        match self {
            Owners::U8(t) => t[bucket] as usize,
            Owners::U16(t) => t[bucket] as usize,
            Owners::U32(t) => t[bucket] as usize,
        }
    }

    fn len(&self) -> usize {
        match self {
            Owners::U8(t) => t.len(),
            Owners::U16(t) => t.len(),
            Owners::U32(t) => t.len(),
        }
    }

    /// The first bucket in `at..end` whose owner is not `last`. Small fleets have long runs of
    /// one owner (about 2,200 buckets per point at 3 backends: 2^20 over 480 points); this is a vectorisable scan.
    fn change_in(&self, at: usize, end: usize, last: usize) -> Option<usize> {
        fn find<T: Copy + PartialEq>(t: &[T], at: usize, end: usize, last: T) -> Option<usize> {
            t[at..end].iter().position(|&o| o != last).map(|i| at + i)
        }
        match self {
            Owners::U8(t) => find(t, at, end, last as u8),
            Owners::U16(t) => find(t, at, end, last as u16),
            Owners::U32(t) => find(t, at, end, last as u32),
        }
    }
}

/// Owner table size: 2^20 buckets, whatever the fleet. A fixed resolution is what keeps the
/// ring's promise exactly (a change of the fleet never re-cuts the buckets, so keys move only to
/// a new backend or away from a removed one), and 2^20 is fine enough that quantising moves a
/// backend's share by well under its virtual-point noise even at 10,000 backends (400,000
/// points). It costs 1 MiB per consistent_hash upstream up to 256 backends, 2 MiB up to 65,536.
const BUCKET_BITS: u32 = 20;
/// A hash's bucket is its top BUCKET_BITS bits.
const SHIFT: u32 = 64 - BUCKET_BITS;
/// How far the walk past an unavailable owner goes (distinct owners, buckets) before it falls
/// back to scanning the backend list: bounds a pick's cost when most of a fleet is down.
const WALK_OWNERS: usize = 8;
const WALK_BUCKETS: usize = 1 << 16;

/// Stable 64-bit hash of bytes.
pub fn hash_bytes(data: &[u8]) -> u64 {
    finish(fnv(FNV_OFFSET, data))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `data`, continuing from `h` (so a shared prefix is hashed once).
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64 finaliser: FNV alone clusters similar keys on the ring.
fn finish(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl ConsistentHash {
    pub fn new(backends: &[Backend]) -> Self {
        let count = points_per_backend(backends);
        let total: u64 = count.iter().sum();
        // Points packed as `hash with its low bits replaced by the owner`: one u64 each, ordered
        // by hash and, on a tie, by owner index (so every instance with the same list agrees).
        // The bucket bits are untouched.
        let owner_bits = usize::BITS - backends.len().saturating_sub(1).leading_zeros();
        let low = (1u64 << owner_bits) - 1;
        let mut points = Vec::with_capacity(total as usize);
        each_point(backends, &count, |hash, i| {
            points.push(hash & !low | i as u64)
        });
        let owners = match backends.len() {
            0..=256 => Owners::U8(owner_table(&points, low, |o| o as u8)),
            257..=65_536 => Owners::U16(owner_table(&points, low, |o| o as u16)),
            _ => Owners::U32(owner_table(&points, low, |o| o as u32)),
        };
        ConsistentHash {
            owners,
            backends: backends.len(),
        }
    }

    fn bucket(&self, hash: u64) -> usize {
        (hash >> SHIFT) as usize
    }
}

/// Each bucket's owner: that of the first point at or after the bucket's start, wrapping past
/// the end to the first point. Needs only each bucket's smallest point, not a sorted ring: the
/// points are spread by their top bits into runs whose buckets fit in L1, each run's minima are
/// found there, and the table is filled from the end backwards, carrying the next non-empty
/// bucket's owner. O(points + buckets), no sort and no random access into the whole table.
fn owner_table<T: Copy + Default>(points: &[u64], low: u64, owner: impl Fn(u64) -> T) -> Box<[T]> {
    // Runs of 2^10 buckets: their minima (16 KiB) stay in L1 while a run is scanned.
    const RUN_BITS: u32 = 10;
    let mut table = vec![T::default(); 1 << BUCKET_BITS].into_boxed_slice();
    let Some(&global_min) = points.iter().min() else {
        return table;
    };
    let top = 64 - RUN_BITS;
    let per_run = 1usize << (BUCKET_BITS - RUN_BITS);
    // Counting sort by run.
    let mut starts = vec![0usize; (1 << RUN_BITS) + 1];
    for p in points {
        starts[(p >> top) as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut spread = vec![0u64; points.len()];
    let mut next = starts.clone();
    for &p in points {
        let r = (p >> top) as usize;
        spread[next[r]] = p;
        next[r] += 1;
    }
    let mut mins = vec![(false, 0u64); per_run];
    let mut carry = owner(global_min & low);
    for run in (0..1usize << RUN_BITS).rev() {
        mins.fill((false, 0));
        for &p in &spread[starts[run]..starts[run + 1]] {
            let m = &mut mins[(p >> SHIFT) as usize & (per_run - 1)];
            if !m.0 || p < m.1 {
                *m = (true, p);
            }
        }
        let base = run * per_run;
        for (j, &(seen, p)) in mins.iter().enumerate().rev() {
            if seen {
                carry = owner(p & low);
            }
            table[base + j] = carry;
        }
    }
    table
}

/// Virtual points per backend: 160 each for small fleets (ketama's figure), fewer above 2,500
/// backends (400,000 points in all) so a rebuild stays around 20 ms; in proportion to weight.
fn points_per_backend(backends: &[Backend]) -> Vec<u64> {
    let n = backends.len().max(1);
    let base = (400_000 / n).clamp(16, 160) as u64;
    let mean = (backends.iter().map(|b| b.weight.max(1) as u64).sum::<u64>() / n as u64).max(1);
    backends
        .iter()
        .map(|b| (base * b.weight.max(1) as u64 / mean).max(1))
        .collect()
}

/// Calls `f(hash, backend index)` for every virtual point `address#N`, N in decimal. The hash
/// of `address#` is computed once per backend and continued with each N's digits.
fn each_point(backends: &[Backend], count: &[u64], mut f: impl FnMut(u64, u32)) {
    for (i, (b, &points)) in backends.iter().zip(count).enumerate() {
        let stem = fnv(fnv(FNV_OFFSET, b.address.as_bytes()), b"#");
        for v in 0..points {
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
            f(finish(fnv(stem, &digits[at..])), i as u32);
        }
    }
}

impl Balancer for ConsistentHash {
    fn pick(
        &self,
        _: &[Backend],
        ctx: &PickCtx,
        ok: &mut dyn FnMut(usize) -> bool,
    ) -> Option<usize> {
        if self.backends == 0 {
            return None;
        }
        let bucket = self.bucket(ctx.hash);
        let owner = self.owners.get(bucket);
        if ok(owner) {
            return Some(owner);
        }
        // The owner is out: walk on clockwise, which spreads its keys over its neighbours
        // instead of piling them onto one. The walk covers the next WALK_BUCKETS buckets
        // (wrapping) and at most WALK_OWNERS other owners.
        let len = self.owners.len();
        let reach = bucket + 1 + WALK_BUCKETS.min(len - 1);
        let segments = [(bucket + 1, reach.min(len)), (0, reach.saturating_sub(len))];
        let (mut last, mut seen) = (owner, 0);
        for (mut at, end) in segments {
            while let Some(i) = self.owners.change_in(at, end, last) {
                let o = self.owners.get(i);
                if ok(o) {
                    return Some(o);
                }
                seen += 1;
                if seen == WALK_OWNERS {
                    return scan_from(self.backends, (owner + 1) % self.backends, ok);
                }
                (last, at) = (o, i + 1);
            }
        }
        scan_from(self.backends, (owner + 1) % self.backends, ok)
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
                let ctx = PickCtx::hashed(hash_bytes(format!("key-{k}").as_bytes()));
                let (x, y) = (
                    a.pick(&three, &ctx, &mut |_| true),
                    b.pick(&four, &ctx, &mut |_| true),
                );
                // Keys move only to the newcomer, never between the others.
                assert!(x == y || y == Some(3), "key {k} moved from {x:?} to {y:?}");
                x != y
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
            let ctx = PickCtx::hashed(hash_bytes(&k.to_le_bytes()));
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
        // The exact ring, sorted, to check the table against.
        let mut ring = Vec::new();
        each_point(&b, &points_per_backend(&b), |h, i| {
            ring.push((h, i as usize))
        });
        ring.sort_unstable();
        let ring_owner = |at: u64| ring[ring.partition_point(|p| p.0 < at) % ring.len()].1;
        let mut h: u64 = 7;
        for _ in 0..3_000 {
            h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
            // The owner of the key's bucket start, looked up on the ring itself.
            let bucket = h >> SHIFT;
            let owner = ring_owner(bucket << SHIFT);
            let ctx = PickCtx::hashed(h);
            assert_eq!(ch.pick(&b, &ctx, &mut |_| true), Some(owner));
            // And when that owner is out, the next distinct owner clockwise.
            let next = ch.pick(&b, &ctx, &mut |i| i != owner).unwrap();
            let want = (1..)
                .map(|k| ring_owner(bucket.wrapping_add(k) << SHIFT))
                .find(|&o| o != owner)
                .unwrap();
            assert_eq!(next, want);
        }
    }

    #[test]
    fn most_of_a_fleet_down_still_finds_the_survivor() {
        let b = backends(&[1; 50]);
        let ch = ConsistentHash::new(&b);
        for k in 0..1_000u64 {
            let ctx = PickCtx::hashed(hash_bytes(&k.to_le_bytes()));
            assert_eq!(ch.pick(&b, &ctx, &mut |i| i == 17), Some(17));
            assert_eq!(ch.pick(&b, &ctx, &mut |_| false), None);
        }
    }

    #[test]
    fn unavailable_owner_falls_to_a_neighbour() {
        let b = backends(&[1, 1, 1]);
        let ch = ConsistentHash::new(&b);
        let ctx = PickCtx::hashed(42);
        let owner = ch.pick(&b, &ctx, &mut |_| true).unwrap();
        let other = ch.pick(&b, &ctx, &mut |i| i != owner).unwrap();
        assert_ne!(owner, other);
    }
}
