//! The balancing algorithms seen from outside: counts per backend over real requests.

use crate::support::*;
use std::collections::HashMap;
use std::time::Duration;

fn counts(lb: &Lb, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    let c = client();
    let mut m = HashMap::new();
    let mut seq = Vec::new();
    for _ in 0..n {
        let (status, b) = get_backend(&c, &lb.url("/"));
        assert_eq!(status, 200);
        *m.entry(b.clone()).or_default() += 1;
        seq.push(b);
    }
    (m, seq)
}

#[test]
fn round_robin_splits_300_requests_exactly() {
    let be = backends(3);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let (m, _) = counts(&lb, 300);
    assert_eq!(m.len(), 3);
    assert!(m.values().all(|&v| v == 100), "{m:?}");
}

#[test]
fn weighted_round_robin_follows_weights() {
    let be = backends(3);
    let list = format!(
        "{{ address = \"{}\", weight = 5 }}, {{ address = \"{}\", weight = 1 }}, {{ address = \"{}\", weight = 1 }}",
        be.addrs[0], be.addrs[1], be.addrs[2]
    );
    let lb = start(&config(&format!(
        "algorithm = \"weighted_round_robin\"\nbackends = [{list}]"
    )));
    let (m, seq) = counts(&lb, 700);
    assert_eq!((m["b0"], m["b1"], m["b2"]), (500, 100, 100), "{m:?}");
    for w in seq.windows(2) {
        assert!(
            !(w[0] == w[1] && w[0] != "b0"),
            "a light backend got two requests in a row: {w:?}"
        );
    }
}

#[test]
fn least_connections_avoids_the_busy_backend() {
    let be = backends(3);
    let lb = start(&config(&format!(
        "algorithm = \"least_connections\"\nbackends = [{}]",
        be.list()
    )));
    let url = lb.url("/delay/3000");
    let slow = std::thread::spawn(move || get_backend(&client(), &url));
    // Wait until the slow request is active on some backend.
    let c = client();
    let mut busy = String::new();
    assert!(eventually(Duration::from_secs(5), || {
        let v: serde_json::Value = c
            .get(lb.admin_url("/api/v1/upstreams"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let bs = v["upstreams"][0]["backends"].as_array().unwrap().clone();
        match bs.iter().position(|b| b["active_requests"] == 1) {
            Some(i) => {
                busy = format!(
                    "b{}",
                    be.addrs
                        .iter()
                        .position(|a| a.to_string() == bs[i]["address"].as_str().unwrap())
                        .unwrap()
                );
                true
            }
            None => false,
        }
    }));
    let (m, _) = counts(&lb, 30);
    assert!(
        !m.contains_key(&busy),
        "busy backend {busy} got requests: {m:?}"
    );
    assert_eq!(slow.join().unwrap().0, 200);
}

#[test]
fn consistent_hash_keeps_keys_and_moves_few_when_a_backend_joins() {
    let mut be = backends(3);
    let body = |list: String| {
        format!(
            "algorithm = \"consistent_hash\"\nhash_key = \"header:x-user\"\nbackends = [{list}]"
        )
    };
    let lb = start(&config(&body(be.list())));
    let c = client();
    let map = |c: &reqwest::blocking::Client| -> Vec<String> {
        (0..300)
            .map(|k| {
                let r = c
                    .get(lb.url("/"))
                    .header("x-user", format!("user-{k}"))
                    .send()
                    .unwrap();
                r.headers()["x-demo-backend"].to_str().unwrap().to_string()
            })
            .collect()
    };
    let first = map(&c);
    assert_eq!(first, map(&c), "same key, same backend");
    assert!(first.iter().any(|b| b == "b0") && first.iter().any(|b| b == "b2"));
    be.add("b3");
    std::fs::write(&lb.path, config(&body(be.list()))).unwrap();
    assert!(eventually(Duration::from_secs(5), || lb
        .running()
        .shared
        .current()
        .version
        > 1));
    let second = map(&c);
    let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    assert!(second.iter().any(|b| b == "b3"), "new backend takes keys");
    assert!(moved < 120, "moved {moved} of 300 keys");
    assert!(
        first.iter().zip(&second).all(|(a, b)| a == b || b == "b3"),
        "keys move only to the new backend"
    );
}
