//! Consistent hashing (ketama-style ring) for affinity by client IP, header, cookie or path.
//!
//! Each backend owns virtual points on a 64-bit ring in proportion to its weight; a key goes to
//! the first point at or after its hash, so adding one backend to N moves about 1/(N+1) of keys.
//! A bucket table over the hash space, built with the ring, gives most keys their owner in one
//! read and the rest a ring position to start from, so a lookup is O(1) and does not grow with
//! the fleet. If the owner is unavailable the walk continues clockwise, which
//! spreads that backend's keys over its neighbours instead of piling them onto one.
//! Hashes are FNV-1a with a 64-bit finaliser: stable across processes, so every Switchyard
//! instance of a cluster maps a key to the same backend.

use super::{Backend, Balancer, PickCtx};

pub struct ConsistentHash {
    ring: Vec<(u64, u32)>,
    /// One entry per bucket of the hash space (`hash >> shift`), four buckets per ring point.
    /// Most buckets hold no ring point, so every key in them has the same owner: the entry is
    /// that owner (`DIRECT` set), and a lookup touches this table and nothing else. A bucket
    /// holding points stores the ring position of its first point, where a short walk starts.
    buckets: Vec<u32>,
    shift: u32,
}

const DIRECT: u32 = 1 << 31;

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
        // Four buckets per point (a power of two): about 78% of buckets hold no point.
        let bits = (ring.len().max(1) * 4)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, 31);
        let shift = 64 - bits;
        let mut buckets = Vec::with_capacity(1 << bits);
        let mut pos = 0usize;
        for bucket in 0..(1u64 << bits) {
            let first = pos;
            while pos < ring.len() && (ring[pos].0 >> shift) == bucket {
                pos += 1;
            }
            buckets.push(if pos > first || ring.is_empty() {
                first as u32
            } else {
                // No point in this bucket: its keys all go to the next point (wrapping).
                ring[pos % ring.len()].1 | DIRECT
            });
        }
        ConsistentHash {
            ring,
            buckets,
            shift,
        }
    }

    /// Ring position of the first point at or after `hash` (wrapping to 0).
    fn position(&self, hash: u64) -> usize {
        let e = self.buckets[(hash >> self.shift) as usize];
        let mut i = if e & DIRECT != 0 {
            // Only reached when the owner was unavailable: find the point itself.
            self.ring.partition_point(|p| p.0 < hash)
        } else {
            e as usize
        };
        while i < self.ring.len() && self.ring[i].0 < hash {
            i += 1;
        }
        i % self.ring.len()
    }
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
        let e = self.buckets[(ctx.hash >> self.shift) as usize];
        if e & DIRECT != 0 && ok((e & !DIRECT) as usize) {
            return Some((e & !DIRECT) as usize);
        }
        let i = self.position(ctx.hash);
        let mut last = u32::MAX;
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
    fn bucket_table_agrees_with_the_ring() {
        let b = backends(&[1, 2, 3, 1, 1, 4, 2]);
        let ch = ConsistentHash::new(&b);
        let mut h: u64 = 7;
        for _ in 0..50_000 {
            h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
            let ring_owner = ch.ring.iter().find(|p| p.0 >= h).unwrap_or(&ch.ring[0]).1 as usize;
            let ctx = PickCtx { hash: h };
            assert_eq!(ch.pick(&b, &ctx, &mut |_| true), Some(ring_owner));
            // And when that owner is out, the next distinct owner clockwise.
            let next = ch.pick(&b, &ctx, &mut |i| i != ring_owner).unwrap();
            let start = ch.ring.partition_point(|p| p.0 < h);
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
