//! Cluster mode against a real etcd: instances converge on changes made through any of them,
//! keep serving while etcd is down and catch up when it returns, and refuse an invalid
//! configuration written to etcd directly. Also: two instances share a port (SO_REUSEPORT).

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn cluster_config(etcd: &Etcd, prefix: &str, backend: std::net::SocketAddr) -> String {
    format!(
        "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\n\
         [cluster]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\n\n\
         [upstreams.web]\nbackends = [{{ address = \"{backend}\" }}]\n",
        etcd.endpoint()
    )
}

fn three(etcd: &Etcd, prefix: &str, backend: std::net::SocketAddr) -> Vec<Lb> {
    (0..3)
        .map(|_| start(&cluster_config(etcd, prefix, backend)))
        .collect()
}

fn cluster_of(c: &reqwest::blocking::Client, lb: &Lb) -> Value {
    get_json(c, &lb.admin_url("/api/v1/cluster"))
}

fn etcd_state(c: &reqwest::blocking::Client, lb: &Lb) -> Value {
    get_json(c, &lb.admin_url("/health"))["cluster"]["etcd"].clone()
}

/// Every instance connected to etcd and running the same revision of the shared configuration.
fn converged(c: &reqwest::blocking::Client, lbs: &[Lb]) -> bool {
    let states: Vec<Value> = lbs.iter().map(|lb| cluster_of(c, lb)).collect();
    states.iter().all(|s| s["etcd"] == "connected")
        && states[0]["config_revision"].as_i64().unwrap_or(0) > 0
        && states
            .iter()
            .all(|s| s["config_revision"] == states[0]["config_revision"])
}

fn backend_of(c: &reqwest::blocking::Client, lb: &Lb) -> String {
    get_backend(c, &lb.url("/")).1
}

fn swap_backend(
    c: &reqwest::blocking::Client,
    lb: &Lb,
    add: std::net::SocketAddr,
    remove: std::net::SocketAddr,
) {
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({"add": [{"address": add.to_string()}], "remove": [remove.to_string()]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
}

#[test]
fn three_instances_serve_a_change_made_on_one_within_a_second() {
    let etcd = Etcd::start();
    let b = backends(2);
    let lbs = three(&etcd, "/sy-three", b.addrs[0]);
    let c = client();
    assert!(eventually(Duration::from_secs(15), || converged(&c, &lbs)));
    // Every instance registered itself (with a lease) and is listed by each of them.
    assert!(eventually(Duration::from_secs(10), || {
        let list = cluster_of(&c, &lbs[2])["instances"].clone();
        list.as_array().is_some_and(|l| l.len() == 3)
    }));

    let t = Instant::now();
    swap_backend(&c, &lbs[1], b.addrs[1], b.addrs[0]);
    let deadline = t + Duration::from_secs(1);
    for lb in &lbs {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            eventually(left, || backend_of(&c, lb) == "b1"),
            "not converged after {:?}",
            t.elapsed()
        );
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    for lb in &lbs {
        assert!((0..4).all(|_| backend_of(&c, lb) == "b1"));
    }
    let stored = etcd.get("/sy-three/config").unwrap().unwrap();
    assert!(stored.contains(&b.addrs[1].to_string()), "{stored}");
    assert!(!stored.contains(&b.addrs[0].to_string()), "{stored}");
    assert!(eventually(Duration::from_secs(5), || converged(&c, &lbs)));
}

#[test]
fn instances_keep_serving_without_etcd_and_catch_up_when_it_returns() {
    let mut etcd = Etcd::start();
    let b = backends(3);
    let lbs = three(&etcd, "/sy-outage", b.addrs[0]);
    let c = client();
    assert!(eventually(Duration::from_secs(15), || converged(&c, &lbs)));

    etcd.stop();
    for lb in &lbs {
        assert!(eventually(Duration::from_secs(15), || {
            etcd_state(&c, lb) == "unreachable"
        }));
        assert!((0..5).all(|_| get_backend(&c, &lb.url("/")) == (200, "b0".into())));
    }
    // A change made meanwhile takes effect where it was made...
    swap_backend(&c, &lbs[0], b.addrs[1], b.addrs[0]);
    assert_eq!(backend_of(&c, &lbs[0]), "b1");
    assert_eq!(backend_of(&c, &lbs[1]), "b0");

    // ...and reaches the others once etcd is back.
    etcd.restart();
    for lb in &lbs {
        assert!(eventually(Duration::from_secs(15), || {
            backend_of(&c, lb) == "b1"
        }));
    }
    assert!(eventually(Duration::from_secs(10), || converged(&c, &lbs)));

    // Changes flow again, from any instance.
    swap_backend(&c, &lbs[2], b.addrs[2], b.addrs[1]);
    for lb in &lbs {
        assert!(eventually(Duration::from_secs(2), || {
            backend_of(&c, lb) == "b2"
        }));
    }
}

/// Two instances each change the cluster while etcd is unreachable, so both hold a pending
/// change written against the same revision; when etcd returns one wins the compare-and-swap and
/// the other's change is replayed onto it (a three-way merge), not dropped: every instance ends
/// with both new backends.
#[test]
fn concurrent_changes_on_two_instances_are_merged_not_lost() {
    let mut etcd = Etcd::start();
    let b = backends(3);
    let lbs: Vec<Lb> = (0..2)
        .map(|_| start(&cluster_config(&etcd, "/sy-merge", b.addrs[0])))
        .collect();
    let c = client();
    assert!(eventually(Duration::from_secs(15), || converged(&c, &lbs)));
    etcd.stop();
    for lb in &lbs {
        assert!(eventually(Duration::from_secs(15), || {
            etcd_state(&c, lb) == "unreachable"
        }));
    }
    for (lb, add) in lbs.iter().zip(&b.addrs[1..]) {
        let r = c
            .post(lb.admin_url("/update-config"))
            .json(&json!({"add": [{"address": add.to_string()}]}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    }
    etcd.restart();
    let addresses = |lb: &Lb| -> Vec<String> {
        let v = get_json(&c, &lb.admin_url("/api/v1/upstreams"));
        let mut a: Vec<String> = v["upstreams"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["address"].as_str().unwrap().to_string())
            .collect();
        a.sort();
        a
    };
    let mut all: Vec<String> = b.addrs.iter().map(|a| a.to_string()).collect();
    all.sort();
    for lb in &lbs {
        assert!(
            eventually(Duration::from_secs(15), || addresses(lb) == all),
            "{:?}, expected {all:?}",
            addresses(lb)
        );
    }
    assert!(eventually(Duration::from_secs(10), || converged(&c, &lbs)));
    let history = get_json(&c, &lbs[0].admin_url("/api/v1/events/history"));
    let merged = lbs.iter().any(|lb| {
        get_json(&c, &lb.admin_url("/api/v1/events/history"))
            .to_string()
            .contains("merged with a concurrent change")
    });
    assert!(merged, "no merge event: {history}");
}

#[test]
fn invalid_configuration_written_to_etcd_is_rejected_by_every_instance() {
    let etcd = Etcd::start();
    let b = backends(2);
    let lbs = three(&etcd, "/sy-invalid", b.addrs[0]);
    let c = client();
    assert!(eventually(Duration::from_secs(15), || converged(&c, &lbs)));
    let versions: Vec<Value> = lbs
        .iter()
        .map(|lb| get_json(&c, &lb.admin_url("/health"))["config_version"].clone())
        .collect();

    let bad = [
        // Well-formed, invalid: the address has no port.
        "[upstreams.web]\nbackends = [{ address = \"nowhere\" }]\n",
        // A typo'd key is refused too, not silently dropped.
        "[upstreams.web]\nbakends = []\n",
        // Not TOML at all.
        "[upstreams.web\n",
    ];
    let expect = [
        "upstreams.web.backends[0].address",
        "unknown key",
        "invalid TOML",
    ];
    for (doc, why) in bad.iter().zip(expect) {
        etcd.put("/sy-invalid/config", doc);
        for lb in &lbs {
            assert!(
                eventually(Duration::from_secs(5), || {
                    let r = &cluster_of(&c, lb)["rejected"];
                    r["error"].as_str().is_some_and(|e| e.contains(why))
                }),
                "{why}: {}",
                cluster_of(&c, lb)
            );
            assert_eq!(
                get_json(&c, &lb.admin_url("/health"))["cluster"]["rejected"],
                true
            );
            assert_eq!(get_backend(&c, &lb.url("/")), (200, "b0".into()));
        }
    }
    for (lb, v) in lbs.iter().zip(&versions) {
        assert_eq!(&get_json(&c, &lb.admin_url("/health"))["config_version"], v);
    }

    // A valid document written directly is applied everywhere and clears the report.
    etcd.put(
        "/sy-invalid/config",
        &format!(
            "[upstreams.web]\nbackends = [{{ address = \"{}\" }}]\n",
            b.addrs[1]
        ),
    );
    for lb in &lbs {
        assert!(eventually(Duration::from_secs(5), || {
            backend_of(&c, lb) == "b1"
        }));
        assert!(cluster_of(&c, lb)["rejected"].is_null());
    }
}

#[test]
fn two_instances_share_a_listening_port() {
    let b = backends(2);
    let port = free_port();
    let cfg = |backend: std::net::SocketAddr| {
        format!(
            "workers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n\n\
             [upstreams.web]\nbackends = [{{ address = \"{backend}\" }}]\n"
        )
    };
    let old = start(&cfg(b.addrs[0]));
    let new = start(&cfg(b.addrs[1]));
    assert_eq!(old.addr, new.addr);
    // A fresh connection per request, so the kernel spreads them over both instances.
    let c = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = new.url("/");
    let mut seen = std::collections::BTreeSet::new();
    assert!(eventually(Duration::from_secs(10), || {
        let (status, name) = get_backend(&c, &url);
        assert_eq!(status, 200);
        seen.insert(name);
        seen.len() == 2
    }));

    // The old instance leaves (a binary upgrade); the new one serves everything.
    drop(old);
    assert!(eventually(Duration::from_secs(10), || {
        (0..20).all(|_| {
            c.get(&url)
                .send()
                .ok()
                .and_then(|r| r.headers().get("x-demo-backend").cloned())
                .is_some_and(|v| v == "b1")
        })
    }));
}

/// The ids of the instances `lb` lists.
fn instance_ids(c: &reqwest::blocking::Client, lb: &Lb) -> Vec<String> {
    cluster_of(c, lb)["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect()
}

/// With a stable id (`[cluster] id`, or by default host and admin port) an instance that comes
/// back takes over its own registration at once, instead of being listed a second time, next
/// to its dead predecessor, until the old lease expires.
#[test]
fn a_restarted_instance_registers_again_under_the_same_id() {
    let etcd = Etcd::start();
    let b = backends(1);
    let prefix = "/sy-id";
    let key = format!("{prefix}/instances/edge-1");
    // What a crashed predecessor leaves behind: its registration, on a lease still alive.
    let stale = json!({"id": "edge-1", "admin": "127.0.0.1:1", "config_version": 1,
        "config_revision": 0, "last_seen": 0.0, "started": 0.0, "software": "old"});
    let lease = etcd.put_with_lease(&key, &stale.to_string(), 60);
    let text = cluster_config(&etcd, prefix, b.addrs[0]).replace(
        &format!("prefix = \"{prefix}\"\n"),
        &format!("prefix = \"{prefix}\"\nid = \"edge-1\"\n"),
    );
    let c = client();
    let lb = start(&text);
    assert_eq!(cluster_of(&c, &lb)["id"], "edge-1");
    let admin = lb.admin.unwrap().to_string();
    let mine = |lb: &Lb| {
        let list = cluster_of(&c, lb)["instances"].clone();
        list.as_array().is_some_and(|l| {
            l.len() == 1 && l[0]["id"] == "edge-1" && l[0]["admin"] == admin.as_str()
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || mine(&lb)),
        "{}",
        cluster_of(&c, &lb)
    );
    // The key is on this instance's lease now: the old one running out does not remove it.
    etcd.revoke(lease);
    std::thread::sleep(Duration::from_millis(300));
    assert!(etcd.get(&key).unwrap().is_some_and(|v| v.contains(&admin)));
    assert!(mine(&lb));
    drop(lb);

    // Without `id`: the host name and the admin port, the same on every start.
    let plain = start(&cluster_config(&etcd, prefix, b.addrs[0]));
    let port = plain.admin.unwrap().port();
    let id = cluster_of(&c, &plain)["id"].as_str().unwrap().to_string();
    assert!(id.ends_with(&format!("-{port}")), "{id}");
    assert!(eventually(Duration::from_secs(10), || {
        instance_ids(&c, &plain) == [id.clone()]
    }));
    drop(plain);

    // Two live instances given the same id would overwrite each other: that is said.
    let twin = cluster_config(&etcd, prefix, b.addrs[0]).replace(
        &format!("prefix = \"{prefix}\"\n"),
        &format!("prefix = \"{prefix}\"\nid = \"twin\"\n"),
    );
    let (t1, _t2) = (start(&twin), start(&twin));
    assert!(eventually(Duration::from_secs(15), || {
        get_json(&c, &t1.admin_url("/api/v1/events/history"))
            .as_array()
            .is_some_and(|l| {
                l.iter().any(|e| {
                    e["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("registers as twin too"))
                })
            })
    }));
}

/// `[cluster] id` becomes an etcd key segment: an empty one, one with `/`, or an overlong one
/// is refused with its path.
#[test]
fn a_bad_cluster_id_is_refused() {
    let base = "[[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.web]\nbackends = [{ address = \"127.0.0.1:9\" }]\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n";
    for id in ["", "a/b", &"x".repeat(200), "two words"] {
        let text = format!("{base}id = {id:?}\n");
        let e = switchyard::config::parse_config(&text, switchyard::config::Format::Toml, None)
            .unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.path == "cluster.id"),
            "{id:?}: {e}"
        );
    }
    let ok = format!("{base}id = \"edge-1.eu_west\"\n");
    assert!(switchyard::config::parse_config(&ok, switchyard::config::Format::Toml, None).is_ok());
}
