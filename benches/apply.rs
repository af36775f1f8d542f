//! Time to apply a change to an upstream of 10,000 backends through the one door every change
//! takes, `Shared::apply` (validate whole → diff → compile → swap), for every algorithm.
//!
//! Run: `cargo bench --bench apply [-- ROUNDS]` (default 15 changes per algorithm).
//! The target (issue 4): under 50 ms. `bench/run.sh -s g` runs this and, separately, changes the
//! same kind of upstream on a running server while wrk loads it, to check no request fails.
//!
//! Each round alternates the two changes an operator makes most: remove one backend, then add it
//! back with another weight. Columns: `validate` = `config::validate` alone; `apply` = the whole
//! `Shared::apply` call (including dropping the previous snapshot), median and worst.

use std::time::{Duration, Instant};
use switchyard::config::{self, Algorithm, BackendConfig, Config, ListenerConfig, UpstreamConfig};
use switchyard::state::Shared;

const BACKENDS: usize = 10_000;

fn config(alg: Algorithm, n: usize) -> Config {
    let backends = (0..n)
        .map(|i| BackendConfig {
            address: format!("127.0.{}.{}:9004", i / 250, i % 250 + 1),
            weight: 1,
            drain: false,
            backup: false,
        })
        .collect();
    let mut cfg = Config {
        workers: Some(1),
        listeners: vec![ListenerConfig {
            bind: "127.0.0.1:8085".into(),
            ..ListenerConfig::default()
        }],
        ..Config::default()
    };
    cfg.upstreams.insert(
        "big".into(),
        UpstreamConfig {
            algorithm: alg,
            hash_key: (alg == Algorithm::ConsistentHash).then(|| "path".to_string()),
            backends,
            ..UpstreamConfig::default()
        },
    );
    cfg
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    println!("apply a change to an upstream of {BACKENDS} backends ({rounds} changes each)");
    println!(
        "{:<22} {:>12} {:>14} {:>12} {:>12}",
        "algorithm", "validate_ms", "apply_p50_ms", "apply_max_ms", "initial_ms"
    );
    for alg in Algorithm::ALL {
        let base = config(alg, BACKENDS);
        let t = Instant::now();
        let shared = Shared::new(base.clone(), None);
        let initial = t.elapsed();
        let mut validate = Vec::new();
        let mut apply = Vec::new();
        for r in 0..rounds {
            let mut next = base.clone();
            let list = &mut next.upstreams.get_mut("big").expect("upstream").backends;
            if r % 2 == 0 {
                list.remove(r % BACKENDS);
            } else {
                list[r % BACKENDS].weight = 2 + (r % 5) as u32;
            }
            let t = Instant::now();
            let problems = config::validate(&next);
            validate.push(t.elapsed());
            assert!(problems.is_empty(), "{problems:?}");
            let t = Instant::now();
            let v = shared.apply(next, "bench", false);
            apply.push(t.elapsed());
            assert!(v.is_ok(), "{v:?}");
        }
        validate.sort();
        apply.sort();
        println!(
            "{:<22} {:>12.2} {:>14.2} {:>12.2} {:>12.2}",
            alg.name(),
            ms(validate[validate.len() / 2]),
            ms(apply[apply.len() / 2]),
            ms(*apply.last().expect("rounds > 0")),
            ms(initial)
        );
    }
}
