//! Service discovery: DNS A and SRV answers from an in-test DNS server, a watched JSON file, and
//! etcd registrations with leases. Discovered backends are health-checked before they take
//! traffic, a failing source keeps the last known set, and API changes do not wipe them.

use crate::support::*;
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A tiny authoritative DNS server: answers from a table the tests edit, SERVFAIL for names
/// marked failing. One per process, because the resolver override is process-wide.
struct Dns {
    zone: Mutex<HashMap<(String, RecordType), Vec<RData>>>,
    failing: Mutex<HashSet<String>>,
}

fn fqdn(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') {
        n
    } else {
        format!("{n}.")
    }
}

impl Dns {
    fn set(&self, name: &str, t: RecordType, data: Vec<RData>) {
        self.zone.lock().unwrap().insert((fqdn(name), t), data);
    }
    fn set_a(&self, name: &str, ips: &[&str]) {
        let data = ips
            .iter()
            .map(|ip| RData::A(ip.parse::<Ipv4Addr>().unwrap().into()))
            .collect();
        self.set(name, RecordType::A, data);
    }
    /// (priority, weight, port, target) records.
    fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        let data = records
            .iter()
            .map(|&(p, w, port, t)| {
                RData::SRV(SRV::new(p, w, port, Name::from_ascii(fqdn(t)).unwrap()))
            })
            .collect();
        self.set(name, RecordType::SRV, data);
    }
    fn fail(&self, name: &str, on: bool) {
        let mut f = self.failing.lock().unwrap();
        if on {
            f.insert(fqdn(name));
        } else {
            f.remove(&fqdn(name));
        }
    }

    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let req = Message::from_vec(query).ok()?;
        let q = req.queries().first()?.clone();
        let name = fqdn(&q.name().to_ascii());
        let mut resp = Message::new();
        resp.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_op_code(req.op_code())
            .set_authoritative(true)
            .set_recursion_desired(req.recursion_desired())
            .set_recursion_available(true)
            .add_query(q.clone());
        if self.failing.lock().unwrap().contains(&name) {
            resp.set_response_code(ResponseCode::ServFail);
            return resp.to_vec().ok();
        }
        let zone = self.zone.lock().unwrap();
        for data in zone.get(&(name, q.query_type())).into_iter().flatten() {
            // TTL 1s: the discovery loop must re-resolve at least that often.
            resp.add_answer(Record::from_rdata(q.name().clone(), 1, data.clone()));
        }
        resp.set_response_code(ResponseCode::NoError);
        resp.to_vec().ok()
    }
}

fn dns() -> &'static Arc<Dns> {
    static DNS: OnceLock<Arc<Dns>> = OnceLock::new();
    DNS.get_or_init(|| {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = sock.local_addr().unwrap();
        let dns = Arc::new(Dns {
            zone: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashSet::new()),
        });
        let d = dns.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if let Some(out) = d.answer(&buf[..n]) {
                    let _ = sock.send_to(&out, from);
                }
            }
        });
        switchyard::upstream::discovery::dns::set_nameservers(vec![addr]);
        dns
    })
}

/// Backend names seen over `n` requests.
fn seen(c: &reqwest::blocking::Client, lb: &Lb, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| get_backend(c, &lb.url("/")).1)
        .collect::<BTreeSet<_>>()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Waits until `n` requests in a row are served by exactly the backends `want`.
fn serves_exactly(c: &reqwest::blocking::Client, lb: &Lb, want: &[&str]) -> bool {
    eventually(Duration::from_secs(10), || seen(c, lb, 12) == names(want))
}

/// Addresses (with weights) of upstream `web` in the running configuration.
fn running_backends(lb: &Lb) -> Vec<(String, u32)> {
    let snap = lb.running().shared.current();
    let mut v: Vec<(String, u32)> = snap.config.upstreams["web"]
        .backends
        .iter()
        .map(|b| (b.address.clone(), b.weight))
        .collect();
    v.sort();
    v
}

fn discovery_state(c: &reqwest::blocking::Client, lb: &Lb) -> Value {
    get_json(c, &lb.admin_url("/health"))["discovery"]["web"].clone()
}

const CHECK: &str =
    "health_check = { kind = \"http\", path = \"/healthz\", interval = \"100ms\", healthy_threshold = 1 }";

/// Demo backends on the same port of several loopback addresses, named by their address.
fn same_port_backends(b: &Backends, ips: &[&str]) -> u16 {
    'again: for _ in 0..50 {
        let port = free_port();
        for ip in ips {
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            if b.rt
                .block_on(switchyard::demo::spawn_backend(addr, ip))
                .is_err()
            {
                continue 'again;
            }
        }
        return port;
    }
    panic!("no port free on every address");
}

#[test]
fn dns_discovery_follows_a_record_changes_and_survives_failures() {
    let d = dns();
    let b = backends(0);
    let port = same_port_backends(&b, &["127.0.0.1", "127.0.0.2"]);
    d.set_a("web-a.sy.test", &["127.0.0.1"]);
    let lb = start(&config(&format!(
        "discovery = {{ dns = \"web-a.sy.test:{port}\", interval = \"200ms\" }}\n{CHECK}"
    )));
    let c = client();
    assert!(serves_exactly(&c, &lb, &["127.0.0.1"]));

    d.set_a("web-a.sy.test", &["127.0.0.1", "127.0.0.2"]);
    assert!(serves_exactly(&c, &lb, &["127.0.0.1", "127.0.0.2"]));

    d.set_a("web-a.sy.test", &["127.0.0.2"]);
    assert!(serves_exactly(&c, &lb, &["127.0.0.2"]));
    assert_eq!(
        running_backends(&lb),
        vec![(format!("127.0.0.2:{port}"), 1)]
    );

    // A failing DNS keeps the last known set and says so.
    d.fail("web-a.sy.test", true);
    assert!(eventually(Duration::from_secs(10), || {
        discovery_state(&c, &lb)["state"] == "failing"
    }));
    let st = discovery_state(&c, &lb);
    assert_eq!(st["backends"], 1, "{st}");
    assert!(st["error"].as_str().is_some_and(|e| !e.is_empty()), "{st}");
    assert_eq!(seen(&c, &lb, 8), names(&["127.0.0.2"]));
    d.fail("web-a.sy.test", false);
    assert!(eventually(Duration::from_secs(10), || {
        discovery_state(&c, &lb)["state"] == "ok"
    }));
}

#[test]
fn dns_srv_discovery_uses_ports_weights_and_the_best_priority() {
    let d = dns();
    let b = backends(3);
    let p: Vec<u16> = b.addrs.iter().map(|a| a.port()).collect();
    d.set_a("host.srv.sy.test", &["127.0.0.1"]);
    d.set_srv(
        "_http._tcp.srv.sy.test",
        &[
            (10, 1, p[0], "host.srv.sy.test"),
            (10, 3, p[1], "host.srv.sy.test"),
            // A higher priority value is a fallback: not used while the others exist.
            (20, 1, p[2], "host.srv.sy.test"),
        ],
    );
    let lb = start(&config(&format!(
        "algorithm = \"weighted_round_robin\"\n\
         discovery = {{ srv = \"_http._tcp.srv.sy.test\", interval = \"200ms\" }}\n{CHECK}"
    )));
    let c = client();
    assert!(serves_exactly(&c, &lb, &["b0", "b1"]));
    let mut want = vec![
        (format!("127.0.0.1:{}", p[0]), 1),
        (format!("127.0.0.1:{}", p[1]), 3),
    ];
    want.sort();
    assert_eq!(running_backends(&lb), want);
    let counts = (0..40).fold(HashMap::<String, u32>::new(), |mut m, _| {
        *m.entry(get_backend(&c, &lb.url("/")).1).or_default() += 1;
        m
    });
    // Smooth weighted round robin: 1 in 4 to b0 (exactly, unless a health check blinked).
    assert!((8..=12).contains(&counts["b0"]), "{counts:?}");

    d.set_srv(
        "_http._tcp.srv.sy.test",
        &[(10, 2, p[2], "host.srv.sy.test")],
    );
    assert!(serves_exactly(&c, &lb, &["b2"]));
    assert_eq!(
        running_backends(&lb),
        vec![(format!("127.0.0.1:{}", p[2]), 2)]
    );
}

fn write_file(path: &std::path::Path, text: &str) {
    // Atomically, as the module documentation asks of writers.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn file_discovery_follows_the_file_and_health_checks_new_backends() {
    let b = backends(3);
    let c = client();
    let (a0, a1, a2) = (b.addrs[0], b.addrs[1], b.addrs[2]);
    // b2 fails its health checks: discovered, it must not take traffic.
    c.post(format!("http://{a2}/healthz/fail")).send().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    write_file(&file, &format!(r#"[{{"address": "{a0}"}}]"#));
    let lb = start(&config(&format!(
        "discovery = {{ file = \"{}\", interval = \"100ms\" }}\n{CHECK}",
        file.display()
    )));
    assert!(serves_exactly(&c, &lb, &["b0"]));

    write_file(
        &file,
        &format!(
            r#"{{"backends": [{{"address": "{a0}"}}, {{"address": "{a1}", "weight": 2}}, {{"address": "{a2}"}}]}}"#
        ),
    );
    assert!(serves_exactly(&c, &lb, &["b0", "b1"]));
    assert_eq!(running_backends(&lb).len(), 3);
    assert_eq!(seen(&c, &lb, 20), names(&["b0", "b1"]), "b2 is unhealthy");
    c.post(format!("http://{a2}/healthz/ok")).send().unwrap();
    assert!(serves_exactly(&c, &lb, &["b0", "b1", "b2"]));

    // A broken file keeps the last known set, and is reported.
    write_file(&file, "[{\"address\": ");
    assert!(eventually(Duration::from_secs(10), || {
        discovery_state(&c, &lb)["state"] == "failing"
    }));
    assert_eq!(running_backends(&lb).len(), 3);

    // The source owns the list: an API change to it is refused, saying where to make it, and
    // drain, the operator's own, applies.
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&serde_json::json!({"remove": [a0.to_string()]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().unwrap().contains("discovery source"));
    let r = c
        .patch(lb.admin_url(&format!("/api/v1/upstreams/web/backends/{a0}")))
        .json(&serde_json::json!({"weight": 5}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = c
        .patch(lb.admin_url(&format!("/api/v1/upstreams/web/backends/{a0}")))
        .json(&serde_json::json!({"drain": true}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert!(serves_exactly(&c, &lb, &["b1", "b2"]));
    assert!(running_backends(&lb).contains(&(a0.to_string(), 1)));

    write_file(&file, &format!(r#"[{{"address": "{a1}"}}]"#));
    assert!(serves_exactly(&c, &lb, &["b1"]));
    assert_eq!(running_backends(&lb), vec![(a1.to_string(), 1)]);
    assert_eq!(discovery_state(&c, &lb)["state"], "ok");
}

#[test]
fn etcd_registered_backend_takes_traffic_and_leaves_when_its_lease_expires() {
    let etcd = Etcd::start();
    let b = backends(2);
    let (a0, a1) = (b.addrs[0], b.addrs[1]);
    let prefix = "/sy-disc";
    let lb = start(&format!(
        "{}\ndiscovery = {{ etcd_prefix = \"{prefix}/services/web/\" }}\n{CHECK}\n\n\
         [cluster]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\n",
        config("").trim_end(),
        etcd.endpoint()
    ));
    let c = client();
    let entry = |a: SocketAddr| format!(r#"{{"address": "{a}", "weight": 1}}"#);
    let l0 = etcd.put_with_lease(&format!("{prefix}/services/web/b0"), &entry(a0), 10);
    let _k0 = etcd.keep_alive(l0);
    // The shortest lease etcd grants is about 2s; b1's is kept alive, then let go.
    let l1 = etcd.put_with_lease(&format!("{prefix}/services/web/b1"), &entry(a1), 2);
    let k1 = etcd.keep_alive(l1);
    assert!(serves_exactly(&c, &lb, &["b0", "b1"]));

    k1.abort();
    let only_b0 = vec![(a0.to_string(), 1)];
    assert!(eventually(Duration::from_secs(10), || {
        running_backends(&lb) == only_b0
    }));
    assert_eq!(seen(&c, &lb, 10), names(&["b0"]));
    let st = get_json(&c, &lb.admin_url("/api/v1/discovery"));
    assert_eq!(st["upstreams"]["web"]["state"], "ok", "{st}");
    assert_eq!(st["upstreams"]["web"]["backends"], 1, "{st}");
}

/// A reload of the file (SIGHUP, or an edit elsewhere in it) keeps a discovered upstream's
/// live set: the file's seed backends are not swapped in until the next discovery round.
#[test]
fn a_reload_of_the_file_keeps_the_discovered_backends() {
    let b = backends(2);
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    write_file(&file, &format!(r#"[{{"address": "{}"}}]"#, b.addrs[0]));
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{}\" }}]\ndiscovery = {{ file = \"{}\", interval = \"100ms\" }}",
        b.addrs[1],
        file.display()
    )));
    assert!(serves_exactly(&c, &lb, &["b0"]));
    let shared = &lb.running().shared;
    let before = shared.current().version;
    for _ in 0..3 {
        switchyard::admin::reload_from_file(shared, "sighup");
        assert_eq!(running_backends(&lb), vec![(b.addrs[0].to_string(), 1)]);
    }
    assert_eq!(
        shared.current().version,
        before,
        "nothing changed, so no new version"
    );
}

/// The problems a discovery status lists, as `(key, error)`.
fn problems(st: &Value) -> Vec<(String, String)> {
    st["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let s = |f: &str| p[f].as_str().unwrap_or_default().to_string();
            (s("key"), s("error"))
        })
        .collect()
}

/// An operator's typo over a live registration must not drain the backend: the key keeps its
/// last good entry, a new key with a bad value is not added, and both are named in the status
/// (not a clean "ok") until fixed or deleted. Deleting a key still removes its backend.
#[test]
fn a_bad_etcd_value_keeps_the_last_good_entry_and_is_reported_by_key() {
    let etcd = Etcd::start();
    let b = backends(2);
    let (a0, a1) = (b.addrs[0], b.addrs[1]);
    let prefix = "/sy-disc-bad";
    let lb = start(&format!(
        "{}\ndiscovery = {{ etcd_prefix = \"{prefix}/services/web/\" }}\n{CHECK}\n\n\
         [cluster]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\n",
        config("").trim_end(),
        etcd.endpoint()
    ));
    let c = client();
    let entry = |a: SocketAddr| format!(r#"{{"address": "{a}", "weight": 1}}"#);
    let (k0, k1, k2) = (
        format!("{prefix}/services/web/b0"),
        format!("{prefix}/services/web/b1"),
        format!("{prefix}/services/web/new"),
    );
    etcd.put(&k0, &entry(a0));
    etcd.put(&k1, &entry(a1));
    assert!(serves_exactly(&c, &lb, &["b0", "b1"]));
    assert_eq!(discovery_state(&c, &lb)["state"], "ok");

    etcd.put(&k0, r#"{"adress": "oops"}"#);
    assert!(eventually(Duration::from_secs(10), || {
        problems(&discovery_state(&c, &lb))
            .iter()
            .any(|(k, _)| *k == k0)
    }));
    let st = get_json(&c, &lb.admin_url("/api/v1/discovery"))["upstreams"]["web"].clone();
    assert_ne!(st["state"], "ok", "{st}");
    let (_, why) = &problems(&st)[0];
    assert!(
        why.contains("adress") && why.contains(&a0.to_string()),
        "{st}"
    );
    assert_eq!(
        running_backends(&lb).len(),
        2,
        "b0 kept its last good entry"
    );
    assert_eq!(seen(&c, &lb, 12), names(&["b0", "b1"]));

    etcd.put(&k2, "not json");
    assert!(eventually(Duration::from_secs(10), || {
        problems(&discovery_state(&c, &lb)).len() == 2
    }));
    let st = discovery_state(&c, &lb);
    let new = problems(&st).into_iter().find(|(k, _)| *k == k2);
    assert!(new.is_some_and(|(_, e)| e.contains("not added")), "{st}");
    assert_eq!(running_backends(&lb).len(), 2);

    // Fixed and deleted: reported no more, and the state is clean again.
    etcd.put(&k0, &entry(a0));
    etcd.delete(&k2);
    assert!(eventually(Duration::from_secs(10), || {
        let st = discovery_state(&c, &lb);
        st["state"] == "ok" && problems(&st).is_empty()
    }));
    // A bad value, then the key deleted: the backend goes, as any deregistration.
    etcd.put(&k0, "{}");
    assert!(eventually(Duration::from_secs(10), || {
        !problems(&discovery_state(&c, &lb)).is_empty()
    }));
    etcd.delete(&k0);
    let only_b1 = vec![(a1.to_string(), 1)];
    assert!(eventually(Duration::from_secs(10), || {
        running_backends(&lb) == only_b1
    }));
    assert!(serves_exactly(&c, &lb, &["b1"]));
    assert!(problems(&discovery_state(&c, &lb)).is_empty());
}

/// A file with one bad entry among good ones is refused whole (the last known set stays), and
/// the status names every bad entry by its place in the file, type errors included.
#[test]
fn a_file_with_bad_entries_is_refused_naming_each_entry() {
    let b = backends(3);
    let c = client();
    let (a0, a1, a2) = (b.addrs[0], b.addrs[1], b.addrs[2]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    write_file(
        &file,
        &format!(r#"[{{"address": "{a0}"}}, {{"address": "{a1}"}}]"#),
    );
    let lb = start(&config(&format!(
        "discovery = {{ file = \"{}\", interval = \"100ms\" }}",
        file.display()
    )));
    assert!(serves_exactly(&c, &lb, &["b0", "b1"]));

    write_file(
        &file,
        &format!(
            r#"[{{"address": "{a0}"}}, {{"address": "{a1}", "weight": "heavy"}}, {{"address": "{a2}"}}, {{"address": "nope"}}]"#
        ),
    );
    assert!(eventually(Duration::from_secs(10), || {
        discovery_state(&c, &lb)["state"] == "failing"
    }));
    let st = discovery_state(&c, &lb);
    let got = problems(&st);
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["[1]", "[3]"], "{st}");
    assert!(got[0].1.contains("weight"), "{st}");
    assert!(got[1].1.contains("nope"), "{st}");
    assert_eq!(running_backends(&lb).len(), 2, "the last known set stays");
    // The same status rides along with the upstream's live state, for the UI's stats stream.
    let ups = get_json(&c, &lb.admin_url("/api/v1/upstreams"));
    assert_eq!(
        ups["upstreams"][0]["discovery"]["state"], "failing",
        "{ups}"
    );
    assert_eq!(
        ups["upstreams"][0]["discovery"]["problems"][0]["key"],
        "[1]"
    );

    write_file(&file, &format!(r#"[{{"address": "{a2}"}}]"#));
    assert!(serves_exactly(&c, &lb, &["b2"]));
    let st = discovery_state(&c, &lb);
    assert_eq!(st["state"], "ok", "{st}");
    assert!(problems(&st).is_empty(), "{st}");
}
