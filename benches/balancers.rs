//! Cost of one `Upstream::pick` for every algorithm at 3, 100 and 10,000 backends.
//!
//! Run: `cargo bench --bench balancers` (add `-- --quick` for a faster, rougher run).
//! The target (issue 4): the 10,000-backend figure within 2x the 3-backend figure, because a
//! pick must not grow with the fleet. `bench/run.sh -s p` runs this and prints the ratios.
//!
//! Every pick goes through `Upstream::pick`, i.e. the balancer plus the availability filter
//! (health, drain, ejection, breaker) exactly as the request path calls it. `consistent_hash`
//! gets a different, well-spread key hash on every pick so the ring lookup is not a cache replay.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use switchyard::config::{Algorithm, UpstreamConfig};
use switchyard::upstream::backend::{Backend, BackendState};
use switchyard::upstream::balancer::PickCtx;
use switchyard::upstream::Upstream;

const ALGORITHMS: [Algorithm; 6] = Algorithm::ALL;
const SIZES: [usize; 3] = [3, 100, 10_000];

/// `n` backends with distinct addresses and mixed weights (1..=4), as a real fleet would have.
fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let address = format!("10.{}.{}.{}:8080", i / 62_500, (i / 250) % 250, i % 250 + 1);
            Backend {
                socket: address.parse().ok(),
                weight: 1 + (i % 4) as u32,
                backup: false,
                state: BackendState::new("bench", &address),
                address,
            }
        })
        .collect()
}

fn upstream(alg: Algorithm, n: usize) -> Upstream {
    let cfg = UpstreamConfig {
        algorithm: alg,
        hash_key: (alg == Algorithm::ConsistentHash).then(|| "header:x-user".to_string()),
        ..UpstreamConfig::default()
    };
    let up = Upstream::compile("bench", &cfg, backends(n));
    // Give p2c_ewma and least_connections something to compare.
    for (i, b) in up.backends.iter().enumerate() {
        b.state.observe_latency(
            500.0 + (i % 7) as f64 * 100.0,
            switchyard::upstream::backend::now_ms(),
        );
    }
    up
}

fn picks(c: &mut Criterion) {
    for alg in ALGORITHMS {
        let mut g = c.benchmark_group(format!("pick/{}", alg.name()));
        g.throughput(Throughput::Elements(1));
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(2));
        for n in SIZES {
            let up = upstream(alg, n);
            let mut k: u64 = 0;
            g.bench_with_input(BenchmarkId::from_parameter(n), &up, |b, up| {
                b.iter(|| {
                    // splitmix-style spread of a counter: a new, uniformly spread key every pick.
                    k = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let ctx = PickCtx::hashed((k ^ (k >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9));
                    black_box(up.pick(black_box(&ctx), &[]))
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, picks);
criterion_main!(benches);
