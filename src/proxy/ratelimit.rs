//! Per-route rate limits (`rate_limit = { requests_per_second, burst, by }`): a token bucket per
//! client IP (NGINX's `limit_req` keyed by `$binary_remote_addr`, Envoy's local rate limit) or one
//! for the whole route. A request finding its bucket empty is answered 429 with `Retry-After`,
//! before anything is sent upstream.
//!
//! Buckets live in 16 shards, each a small map behind its own lock, so workers contend only when
//! two requests hash to one shard at once; the lock is held for one lookup and a few float
//! operations. A shard that grows past [`SHARD_CAP`] clients forgets the buckets that have
//! refilled (their clients are indistinguishable from new ones), so a scan from many addresses
//! cannot grow memory without bound. A limiter outlives configuration changes that leave its
//! route's limit as it was, so a reload does not hand every client a fresh burst.

use crate::config::{RateKey, RateLimitConfig};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Clients tracked per shard before full buckets are dropped (16 × 4,096 = 65,536 in all, about
/// 3 MiB at most).
const SHARD_CAP: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    burst: f64,
    by: RateKey,
    shards: [Mutex<HashMap<IpAddr, Bucket>>; SHARDS],
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> RateLimiter {
        let rate = cfg.requests_per_second;
        RateLimiter {
            rate,
            burst: cfg.burst.map_or(rate.ceil().max(1.0), f64::from),
            by: cfg.by.unwrap_or_default(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// Takes a token for a request from `client`; `Err` is how long until one is there.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = match self.by {
            RateKey::ClientIp => client,
            // One bucket for the route, under a fixed key.
            RateKey::Route => IpAddr::from([0u8; 4]),
        };
        let shard = &self.shards[shard_of(&key)];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SHARD_CAP && !map.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| refilled(b, now, rate, burst) < burst);
        }
        let b = map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        b.tokens = refilled(b, now, self.rate, self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
    }
}

fn refilled(b: &Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let dt = now.saturating_duration_since(b.last).as_secs_f64();
    (b.tokens + dt * rate).min(burst)
}

fn shard_of(ip: &IpAddr) -> usize {
    let folded = match ip {
        IpAddr::V4(v) => u64::from(u32::from(*v)),
        IpAddr::V6(v) => {
            let n = u128::from(*v);
            (n as u64) ^ ((n >> 64) as u64)
        }
    };
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: Option<u32>, by: RateKey) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            requests_per_second: rps,
            burst,
            by: Some(by),
        })
    }

    #[test]
    fn a_burst_then_the_rate_per_client() {
        let l = limiter(10.0, Some(3), RateKey::ClientIp);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        assert!((0..3).all(|_| l.check(a, t).is_ok()));
        let wait = l.check(a, t).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(l.check(b, t).is_ok(), "another client has its own bucket");
        assert!(
            l.check(a, t + Duration::from_millis(100)).is_ok(),
            "one token back after 1/rate"
        );
        assert!(l.check(a, t + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn by_route_every_client_shares_one_bucket() {
        let l = limiter(1.0, None, RateKey::Route);
        let t = Instant::now();
        assert!(l.check("10.0.0.1".parse().unwrap(), t).is_ok());
        assert!(l.check("10.0.0.2".parse().unwrap(), t).is_err());
    }

    #[test]
    fn many_clients_do_not_grow_the_map_without_bound() {
        let l = limiter(1000.0, Some(1), RateKey::ClientIp);
        let t = Instant::now();
        for i in 0..200_000u32 {
            // Each client's bucket refills within 1 ms.
            let _ = l.check(
                IpAddr::from(i.to_be_bytes()),
                t + Duration::from_millis(u64::from(i)),
            );
        }
        let tracked: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(tracked <= SHARDS * SHARD_CAP, "{tracked}");
    }
}
