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

fn listed(be: &Backends, entries: &[(usize, &str)]) -> String {
    let list = entries
        .iter()
        .map(|(i, extra)| format!("{{ address = \"{}\"{extra} }}", be.addrs[*i]))
        .collect::<Vec<_>>()
        .join(", ");
    format!("backends = [{list}]")
}

fn assert_near(m: &HashMap<String, usize>, want: &[(&str, usize)], tolerance: usize) {
    for (b, n) in want {
        let got = m.get(*b).copied().unwrap_or(0);
        assert!(
            got.abs_diff(*n) <= tolerance,
            "{b}: {got}, want {n}±{tolerance}: {m:?}"
        );
    }
}

/// An unavailable backend's turns are shared by all the others, not handed to its neighbour in
/// the list (as NGINX and HAProxy do).
#[test]
fn round_robin_shares_an_unhealthy_backends_turns_evenly() {
    let be = backends(4);
    let check = "health_check = { kind = \"http\", path = \"/healthz\", interval = \"100ms\", \
                 timeout = \"100ms\", healthy_threshold = 1, unhealthy_threshold = 1 }";
    let lb = start(&config(&format!(
        "{}\n{check}",
        listed(&be, &[(0, ""), (1, ""), (2, ""), (3, "")])
    )));
    let c = client();
    c.post(format!("http://{}/healthz/fail", be.addrs[1]))
        .send()
        .unwrap();
    let health = |i: usize| -> String {
        upstreams(&lb)["upstreams"][0]["backends"][i]["health"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(eventually(Duration::from_secs(5), || health(1)
        == "unhealthy"
        && [0, 2, 3].iter().all(|&i| health(i) == "healthy")));
    let (m, _) = counts(&lb, 600);
    assert_near(&m, &[("b0", 200), ("b1", 0), ("b2", 200), ("b3", 200)], 10);

    // Weight 0 takes no turns either: with b0 at weight 0 and b1 still unhealthy, b2 and b3
    // share the rest.
    put_config(
        &lb,
        &config(&format!(
            "{}\n{check}",
            listed(&be, &[(0, ", weight = 0"), (1, ""), (2, ""), (3, "")])
        )),
    );
    let (m, _) = counts(&lb, 400);
    assert_near(&m, &[("b0", 0), ("b1", 0), ("b2", 200), ("b3", 200)], 10);
}

#[test]
fn weighted_round_robin_shares_a_drained_backends_turns_by_weight() {
    let be = backends(3);
    let lb = start(&config(&format!(
        "algorithm = \"weighted_round_robin\"\n{}",
        listed(
            &be,
            &[
                (0, ", weight = 5, drain = true"),
                (1, ", weight = 1"),
                (2, ", weight = 1")
            ]
        )
    )));
    let (m, _) = counts(&lb, 400);
    assert_near(&m, &[("b0", 0), ("b1", 200), ("b2", 200)], 10);
    // With weights 5/1/2 and the heaviest out, 1:2.
    put_config(
        &lb,
        &config(&format!(
            "algorithm = \"weighted_round_robin\"\n{}",
            listed(
                &be,
                &[
                    (0, ", weight = 5, drain = true"),
                    (1, ", weight = 1"),
                    (2, ", weight = 2")
                ]
            )
        )),
    );
    let (m, _) = counts(&lb, 300);
    assert_near(&m, &[("b0", 0), ("b1", 100), ("b2", 200)], 10);
}

/// Slow start ramps a backend's share, it never refuses traffic: backends present at start take
/// their full share at once (as HAProxy), a backend that joins later takes a small share that
/// grows, one that is alone takes everything, and `/health` counts ramping backends as healthy.
#[test]
fn slow_start_ramps_a_joining_backends_share_and_never_refuses() {
    let be = backends(3);
    let body = |entries: &[(usize, &str)]| {
        config(&format!("slow_start = \"30s\"\n{}", listed(&be, entries)))
    };
    let lb = start(&body(&[(0, ""), (1, "")]));
    let c = client();
    let (m, _) = counts(&lb, 100);
    assert_near(&m, &[("b0", 50), ("b1", 50)], 5);
    let healthy = || get_json(&c, &lb.admin_url("/health"))["upstreams"]["web"]["healthy"].clone();
    assert_eq!(healthy(), 2);
    // No health check: both take traffic, and /health says neither was checked.
    let up = get_json(&c, &lb.admin_url("/health"))["upstreams"]["web"].clone();
    assert_eq!(up["unchecked"], 2, "{up}");

    // b2 joins: in the first seconds of a 30s ramp it is picked about a tenth as often.
    put_config(&lb, &body(&[(0, ""), (1, ""), (2, "")]));
    assert_eq!(healthy(), 3, "a ramping backend is healthy");
    let (m, _) = counts(&lb, 600);
    let fresh = m.get("b2").copied().unwrap_or(0);
    assert!(
        (1..=90).contains(&fresh),
        "joining backend took {fresh} of 600: {m:?}"
    );
    assert!(m["b0"].abs_diff(m["b1"]) <= 30, "{m:?}");

    // Alone and ramping, it still takes every request.
    put_config(&lb, &body(&[(2, "")]));
    let (m, _) = counts(&lb, 50);
    assert_eq!(m["b2"], 50);
    assert_eq!(healthy(), 1);
}

fn split_config(be: &Backends, split: &str, by: &str) -> String {
    format!(
        "workers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\nsplit = [{split}]\n{by}\n\
         [upstreams.stable]\nbackends = [{{ address = \"{}\" }}]\n\
         [upstreams.canary]\nbackends = [{{ address = \"{}\" }}]\n",
        be.addrs[0], be.addrs[1]
    )
}

/// A route's `split` shares requests across upstreams by weight, on the HTTP/1 relay and on
/// HTTP/2 alike; keyed by a header, each user stays on one side; a live change of the weights
/// applies at once; and a split that names what does not exist is refused with each field.
#[test]
fn a_route_split_shares_traffic_by_weight_and_keeps_a_keyed_user_on_one_side() {
    let be = backends(2);
    let lb = start(&split_config(
        &be,
        "{ upstream = \"stable\", weight = 75 }, { upstream = \"canary\", weight = 25 }",
        "",
    ));
    let canary_share = |c: &reqwest::blocking::Client, n: usize| {
        (0..n)
            .filter(|_| {
                let (status, b) = get_backend(c, &lb.url("/"));
                assert_eq!(status, 200);
                b == "b1"
            })
            .count()
    };
    // 25% of 2,000 is 500 with a standard deviation of 19; of 400, 100 and 8.7.
    let n = canary_share(&client(), 2_000);
    assert!((400..600).contains(&n), "{n} of 2,000 to the canary");
    let n = canary_share(&h2c_client(), 400);
    assert!(
        (60..140).contains(&n),
        "{n} of 400 h2c requests to the canary"
    );
    let v = upstreams(&lb);
    let served: Vec<u64> = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["backends"][0]["requests_total"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(served.iter().sum::<u64>(), 2_400, "{v}");

    // Keyed by a header, half and half: every user sees one side only, and both sides get users.
    put_config(
        &lb,
        &split_config(
            &be,
            "{ upstream = \"stable\", weight = 1 }, { upstream = \"canary\", weight = 1 }",
            "split_by = \"header:x-user\"",
        ),
    );
    let c = client();
    let mut sides = HashMap::new();
    for user in 0..40 {
        for _ in 0..5 {
            let r = c
                .get(lb.url("/"))
                .header("x-user", format!("user-{user}"))
                .send()
                .unwrap();
            let b = r.headers()["x-demo-backend"].to_str().unwrap().to_string();
            let first = sides.entry(user).or_insert_with(|| b.clone());
            assert_eq!(*first, b, "user {user} moved between sides");
        }
    }
    let on_canary = sides.values().filter(|b| *b == "b1").count();
    assert!((5..35).contains(&on_canary), "{on_canary} of 40 users");

    // Nothing is applied from a split that does not hold together.
    let bad = split_config(
        &be,
        "{ upstream = \"stable\", weight = 0 }, { upstream = \"nope\", weight = 20000 }",
        "split_by = \"header:\"\nupstream = \"stable\"",
    );
    let paths = refused_paths(&lb, &bad);
    for path in [
        "routes[0].split",
        "routes[0].split[1].upstream",
        "routes[0].split[1].weight",
        "routes[0].split_by",
    ] {
        assert!(
            paths.iter().any(|p| p == path),
            "{path} not named: {paths:?}"
        );
    }
    // The keyed split still holds.
    let r = c
        .get(lb.url("/"))
        .header("x-user", "user-0")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-demo-backend"], sides[&0].as_str());
}

/// Sticky sessions (`sticky`): the first response sets a cookie naming its backend, and
/// requests bringing it stay there over HTTP/1.1 (the relay), h2c (the relay from hyper) and
/// h2c asking for trailers (hyper's client); when that backend drains, the next request moves
/// and the cookie is rewritten, and the client sticks to its new backend. A forged value is
/// balanced as if absent. A bad `sticky` is refused with its field paths.
#[test]
fn a_sticky_cookie_keeps_a_client_on_its_backend_until_that_backend_cannot_serve() {
    let be = backends(3);
    let lb = start(&config(&format!(
        "backends = [{}]\nsticky = {{ cookie = \"sid\", max_age = \"1h\" }}",
        be.list()
    )));
    let (h1, h2) = (client(), h2c_client());
    // (backend, Set-Cookie) of one request bringing `cookie`.
    let get = |c: &reqwest::blocking::Client, cookie: &str, trailers: bool| {
        let mut r = c.get(lb.url("/"));
        if !cookie.is_empty() {
            r = r.header("cookie", format!("theme=dark; {cookie}"));
        }
        if trailers {
            r = r.header("te", "trailers");
        }
        let r = r.send().unwrap();
        assert_eq!(r.status(), 200);
        let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
        (h("x-demo-backend").unwrap(), h("set-cookie"))
    };
    assert_eq!(upstreams(&lb)["upstreams"][0]["sticky_cookie"], "sid");
    let (first, set) = get(&h1, "", false);
    let set = set.expect("the first response names its backend");
    assert!(set.starts_with("sid="), "{set}");
    assert!(
        set.contains("; Max-Age=3600") && set.contains("; HttpOnly"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    for trailers in [false, true] {
        let (_, set) = get(&h2, "", trailers);
        assert!(
            set.is_some_and(|s| s.starts_with("sid=")),
            "h2c, trailers: {trailers}"
        );
    }
    for (c, trailers) in [(&h1, false), (&h2, false), (&h2, true)] {
        for _ in 0..6 {
            assert_eq!(
                get(c, &cookie, trailers),
                (first.clone(), None),
                "round robin over 3 would have moved it (trailers: {trailers})"
            );
        }
    }
    // Its backend drains: the client moves once and sticks to the new one.
    let i: usize = first[1..].parse().unwrap();
    let r = h1
        .patch(lb.admin_url(&format!("/api/v1/upstreams/web/backends/{}", be.addrs[i])))
        .json(&serde_json::json!({"drain": true}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (moved, set) = get(&h1, &cookie, false);
    assert_ne!(moved, first);
    let cookie = set
        .expect("the new backend is named")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for _ in 0..6 {
        assert_eq!(get(&h1, &cookie, false), (moved.clone(), None));
        assert_eq!(get(&h2, &cookie, true), (moved.clone(), None));
    }
    // A value naming no backend is ignored, and replaced.
    let seen: std::collections::BTreeSet<String> = (0..6)
        .map(|_| {
            let (b, set) = get(&h1, "sid=0000000000000000", false);
            assert!(set.is_some());
            b
        })
        .collect();
    assert_eq!(seen.len(), 2, "balanced over the two serving: {seen:?}");

    let bad = config(&format!(
        "backends = [{}]\nsticky = {{ cookie = \"a b\", max_age = \"0s\", same_site = \"None\" }}",
        be.list()
    ));
    let paths = refused_paths(&lb, &bad);
    assert_eq!(
        paths,
        [
            "upstreams.web.sticky.cookie",
            "upstreams.web.sticky.max_age",
            "upstreams.web.sticky.same_site"
        ]
    );
}
