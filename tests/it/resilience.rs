//! Traffic only to backends that work: active health checks, circuit breakers, connection limits
//! and retries, under load, with backends dying and coming back.

use crate::support::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn backend_state(lb: &Lb, addr: &str) -> Value {
    upstreams(lb)["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn chaos_under_load_loses_no_get() {
    let mut bs: Vec<Killable> = (0..3).map(|i| Killable::start(&format!("b{i}"))).collect();
    let list = bs
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let lb = start(&config(&format!(
        "backends = [{list}]\n\
         timeouts = {{ connect = \"300ms\", request = \"5s\" }}\n\
         health_check = {{ kind = \"http\", path = \"/healthz\", interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 1, unhealthy_threshold = 2 }}\n\
         passive_health = {{ consecutive_failures = 3, base_ejection = \"1s\" }}\n\
         retry = {{ attempts = 3, on = [\"connect_failure\", \"reset\", \"timeout\", \"502\", \"503\"], backoff = \"5ms\", budget_ratio = 1.0 }}"
    )));
    let c = client();
    assert!(eventually(Duration::from_secs(5), || (0..3).all(
        |i| backend_state(&lb, &bs[i].addr.to_string())["health"] == "healthy"
    )));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), lb.url("/"));
            std::thread::spawn(move || {
                let c = client();
                while !stop.load(Relaxed) {
                    match c.get(&url).send() {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Relaxed),
                        Ok(r) => {
                            eprintln!(
                                "failed GET: {} {:?}",
                                r.status(),
                                r.headers().get("x-switchyard-error")
                            );
                            failed.fetch_add(1, Relaxed)
                        }
                        Err(e) => {
                            eprintln!("failed GET: {e}");
                            failed.fetch_add(1, Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    // b0 dies; its health check must notice within interval × threshold (plus one probe timeout).
    let killed_at = Instant::now();
    bs[0].kill();
    let b0 = bs[0].addr.to_string();
    assert!(eventually(Duration::from_secs(3), || backend_state(
        &lb, &b0
    )["health"]
        == "unhealthy"));
    let noticed = killed_at.elapsed();
    assert!(
        noticed < Duration::from_millis(200 * 2 + 150 + 300),
        "noticed after {noticed:?}"
    );
    // b1 starts failing its health check while still answering traffic.
    c.post(format!("http://{}/healthz/fail", bs[1].addr))
        .send()
        .unwrap();
    let b1 = bs[1].addr.to_string();
    assert!(eventually(Duration::from_secs(3), || backend_state(
        &lb, &b1
    )["health"]
        == "unhealthy"));
    std::thread::sleep(Duration::from_millis(500));
    let b2_only = backend_state(&lb, &bs[2].addr.to_string())["requests_total"]
        .as_u64()
        .unwrap();
    // Both come back.
    bs[0].restart();
    c.post(format!("http://{b1}/healthz/ok")).send().unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        backend_state(&lb, &b0)["health"] == "healthy"
            && backend_state(&lb, &b1)["health"] == "healthy"
    }));
    let (r0, r1) = (
        backend_state(&lb, &b0)["requests_total"].as_u64().unwrap(),
        backend_state(&lb, &b1)["requests_total"].as_u64().unwrap(),
    );
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(
        backend_state(&lb, &b0)["requests_total"].as_u64().unwrap() > r0,
        "b0 takes traffic again"
    );
    assert!(
        backend_state(&lb, &b1)["requests_total"].as_u64().unwrap() > r1,
        "b1 takes traffic again"
    );
    assert!(b2_only > 0);
    assert_eq!(
        failed.load(Relaxed),
        0,
        "failed GETs (ok: {})",
        ok.load(Relaxed)
    );
    assert!(
        ok.load(Relaxed) > 200,
        "load was real: {}",
        ok.load(Relaxed)
    );
    // The transitions are in the event history.
    let ev: Value = c
        .get(lb.admin_url("/api/v1/events/history"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let healths: Vec<&Value> = ev
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "health")
        .collect();
    assert!(healths
        .iter()
        .any(|e| e["backend"] == b0.as_str() && e["detail"] == "healthy -> unhealthy"));
}

#[test]
fn circuit_opens_on_failures_and_answers_503() {
    let be = backends(1);
    let lb = start(&config(&format!(
        "backends = [{}]\ncircuit_breaker = {{ consecutive_failures = 3, open_for = \"400ms\", half_open_probes = 1 }}\nretry = {{ attempts = 1 }}",
        be.list()
    )));
    let c = client();
    trip(&lb);
    let addr = be.addrs[0].to_string();
    assert_eq!(backend_state(&lb, &addr)["circuit"], "open");
    let r = c.get(lb.url("/")).send().unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-switchyard-error"], "no_available_backend");
    // After open_for one probe goes through; its success closes the circuit.
    assert!(eventually(Duration::from_secs(3), || c
        .get(lb.url("/"))
        .send()
        .unwrap()
        .status()
        == 200));
    assert_eq!(backend_state(&lb, &addr)["circuit"], "closed");
    // This backend's only: the history is process-wide, and tests running alongside open and
    // close circuits of their own.
    assert_eq!(
        event_details(&lb, "circuit", &addr),
        ["circuit open", "circuit half_open", "circuit closed"]
    );
}

/// Three 500s in a row: enough to open a `consecutive_failures = 3` circuit.
fn trip(lb: &Lb) {
    for _ in 0..3 {
        assert_eq!(
            client().get(lb.url("/status/500")).send().unwrap().status(),
            500
        );
    }
}

/// A request to the demo backend's `/delay/{ms}` on its own thread: its status and
/// `x-switchyard-error`.
fn delayed(lb: &Lb, ms: u64) -> std::thread::JoinHandle<(u16, Option<http::HeaderValue>)> {
    let url = lb.url(&format!("/delay/{ms}"));
    std::thread::spawn(move || {
        let r = client().get(url).send().unwrap();
        (
            r.status().as_u16(),
            r.headers().get("x-switchyard-error").cloned(),
        )
    })
}

/// Waits until `backend` has one request in flight.
fn busy(lb: &Lb, backend: &std::net::SocketAddr) {
    assert!(eventually(Duration::from_secs(3), || backend_state(
        lb,
        &backend.to_string()
    )["active_requests"]
        == 1));
}

#[test]
fn connection_limit_queues_then_refuses_with_reason() {
    let be = backends(1);
    let lb = start(&config(&format!(
        "backends = [{}]\nmax_connections = 1\nmax_pending = 1",
        be.list()
    )));
    let first = delayed(&lb, 800);
    busy(&lb, &be.addrs[0]);
    let queued = delayed(&lb, 10);
    std::thread::sleep(Duration::from_millis(150));
    let r = client().get(lb.url("/")).send().unwrap();
    assert_eq!(r.status(), 503, "queue full");
    assert_eq!(r.headers()["x-switchyard-error"], "upstream_overloaded");
    assert_eq!(first.join().unwrap().0, 200);
    assert_eq!(
        queued.join().unwrap().0,
        200,
        "the queued request ran once capacity freed"
    );
}

/// A request queued on a configuration applied after the one the busy request started on is
/// still woken when that request ends: the queue's wake-up is kept across changes.
#[test]
fn a_request_queued_after_a_config_change_runs_when_an_older_request_frees_its_slot() {
    let be = backends(1);
    let body = |pending: u32| {
        config(&format!(
            "backends = [{}]\nmax_connections = 1\nmax_pending = {pending}\ntimeouts = {{ request = \"5s\" }}",
            be.list()
        ))
    };
    let lb = start(&body(4));
    let first = delayed(&lb, 800);
    busy(&lb, &be.addrs[0]);
    put_config(&lb, &body(5));
    let queued = delayed(&lb, 10);
    assert_eq!(first.join().unwrap().0, 200);
    // Not woken, it would wait out its 5 s and get 503 upstream_overloaded.
    assert_eq!(queued.join().unwrap(), (200, None));
}

#[test]
fn unsafe_methods_are_not_retried_after_reaching_a_backend() {
    let be = backends(2);
    let lb = start(&config(&format!(
        "backends = [{}]\nretry = {{ attempts = 3, on = [\"500\"] }}",
        be.list()
    )));
    let c = client();
    let before: u64 = be
        .addrs
        .iter()
        .map(|a| {
            backend_state(&lb, &a.to_string())["requests_total"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        c.post(lb.url("/status/500"))
            .body("x")
            .send()
            .unwrap()
            .status(),
        500
    );
    let after: u64 = be
        .addrs
        .iter()
        .map(|a| {
            backend_state(&lb, &a.to_string())["requests_total"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(after - before, 1, "POST went to exactly one backend once");
}

#[test]
fn passive_health_ejects_a_failing_backend() {
    let be = backends(2);
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\npath_prefix = \"/status\"\nupstream = \"bad\"\n[[routes]]\nupstream = \"good\"\n\
         [upstreams.good]\nbackends = [{{ address = \"{}\" }}]\n\
         [upstreams.bad]\nbackends = [{{ address = \"{}\" }}]\npassive_health = {{ consecutive_failures = 3, base_ejection = \"300ms\", max_ejected_percent = 100 }}\nretry = {{ attempts = 1 }}\n",
        be.addrs[0], be.addrs[1]
    ));
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(lb.url("/status/502")).send().unwrap().status(), 502);
    }
    let r = c.get(lb.url("/status/200")).send().unwrap();
    assert_eq!(r.status(), 503, "ejected: nothing available");
    assert_eq!(r.headers()["x-switchyard-error"], "no_available_backend");
    let v: Value = c
        .get(lb.admin_url("/api/v1/upstreams"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let bad = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bad")
        .unwrap();
    assert_eq!(bad["backends"][0]["ejected"], true);
    assert!(
        eventually(Duration::from_secs(3), || c
            .get(lb.url("/status/200"))
            .send()
            .unwrap()
            .status()
            == 200),
        "back after the ejection"
    );
    let metrics = c
        .get(lb.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains(&format!(
        "switchyard_backend_ejections_total{{upstream=\"bad\",backend=\"{}\"}} 1",
        be.addrs[1]
    )));
}

/// A backend that refuses connections, with no health check to find it: each request that
/// picks it goes to another backend, whatever the method and however many need it (a third of
/// them here, more than the retry budget's 20 %), as HAProxy's `redispatch`.
#[test]
fn a_refused_connection_is_always_retried_elsewhere_whatever_the_budget() {
    let be = backends(2);
    let dead = format!("127.0.0.1:{}", free_port());
    let lb = start(&config(&format!(
        "backends = [{}, {{ address = \"{dead}\" }}]\npassive_health = {{ consecutive_failures = 1000 }}",
        be.list()
    )));
    let c = client();
    let mut failed = Vec::new();
    for i in 0..300 {
        let r = if i % 2 == 0 {
            c.get(lb.url("/")).send().unwrap()
        } else {
            c.post(lb.url("/")).body("x").send().unwrap()
        };
        if r.status() != 200 {
            failed.push((
                i,
                r.status(),
                r.headers().get("x-switchyard-error").cloned(),
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

fn event_details(lb: &Lb, kind: &str, backend: &str) -> Vec<String> {
    let ev: Value = client()
        .get(lb.admin_url("/api/v1/events/history"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    ev.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && e["backend"] == backend)
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect()
}

/// Without a `health_check` nothing decides active health, so it must not gate traffic: a live
/// change that removes the check puts the backends it had marked unhealthy back in service (as
/// HAProxy treats a server without `check`) and shows them `unknown` again.
#[test]
fn removing_the_health_check_puts_unhealthy_backends_back_in_service() {
    let be = backends(2);
    let addrs: Vec<String> = be.addrs.iter().map(|a| a.to_string()).collect();
    let check = "health_check = { kind = \"http\", path = \"/healthz\", interval = \"100ms\", \
                 timeout = \"100ms\", healthy_threshold = 1, unhealthy_threshold = 1 }";
    let body = |extra: &str| {
        config(&format!(
            "backends = [{}]\nretry = {{ attempts = 1 }}\n{extra}",
            be.list()
        ))
    };
    let lb = start(&body(check));
    let c = client();
    for a in &addrs {
        c.post(format!("http://{a}/healthz/fail")).send().unwrap();
    }
    let all = |lb: &Lb, h: &str| addrs.iter().all(|a| backend_state(lb, a)["health"] == h);
    assert!(eventually(Duration::from_secs(5), || all(&lb, "unhealthy")));
    assert_eq!(c.get(lb.url("/")).send().unwrap().status(), 503);

    // A change that keeps the check keeps what it learned.
    put_config(
        &lb,
        &body(&format!("{check}\ntimeouts = {{ connect = \"1s\" }}")),
    );
    assert_eq!(
        c.get(lb.url("/")).send().unwrap().status(),
        503,
        "health survives a change that keeps the check"
    );
    let served = backend_state(&lb, &addrs[0])["requests_total"]
        .as_u64()
        .unwrap();

    put_config(&lb, &body("timeouts = { connect = \"1s\" }"));
    for _ in 0..10 {
        assert_eq!(c.get(lb.url("/")).send().unwrap().status(), 200);
    }
    assert!(eventually(Duration::from_secs(3), || all(&lb, "unknown")));
    // A probe that was in flight at the change does not mark them again.
    std::thread::sleep(Duration::from_millis(500));
    assert!(all(&lb, "unknown"), "{:?}", upstreams(&lb));
    let h = get_json(&c, &lb.admin_url("/health"));
    assert_eq!(h["upstreams"]["web"]["healthy"], 2, "{h}");
    assert!(
        backend_state(&lb, &addrs[0])["requests_total"]
            .as_u64()
            .unwrap()
            > served,
        "counters survive the change"
    );
    for a in &addrs {
        let details = event_details(&lb, "health", a);
        assert_eq!(
            details.last().unwrap(),
            "unhealthy -> unknown",
            "{details:?}"
        );
    }
}

/// Without a `circuit_breaker` nothing can close an open circuit: a live change that removes the
/// breaker closes it, says so in `/api/v1/upstreams`, and emits the `circuit closed` event.
#[test]
fn removing_the_circuit_breaker_closes_an_open_circuit() {
    let be = backends(1);
    let addr = be.addrs[0].to_string();
    let body = |extra: &str| {
        config(&format!(
            "backends = [{}]\nretry = {{ attempts = 1 }}\n{extra}",
            be.list()
        ))
    };
    let lb = start(&body(
        "circuit_breaker = { consecutive_failures = 3, open_for = \"60s\" }",
    ));
    let c = client();
    trip(&lb);
    assert_eq!(backend_state(&lb, &addr)["circuit"], "open");
    assert_eq!(c.get(lb.url("/")).send().unwrap().status(), 503);
    let failures = backend_state(&lb, &addr)["failures_total"]
        .as_u64()
        .unwrap();

    put_config(&lb, &body(""));
    assert_eq!(c.get(lb.url("/")).send().unwrap().status(), 200);
    let state = backend_state(&lb, &addr);
    assert_eq!(state["circuit"], "closed", "{state}");
    assert_eq!(
        state["failures_total"].as_u64().unwrap(),
        failures,
        "counters survive the change"
    );
    assert_eq!(
        event_details(&lb, "circuit", &addr),
        ["circuit open", "circuit closed"]
    );
}

/// A raw HTTP/1.1 request to the demo backend's `/delay/{ms}`, left open: on the relay (a plain
/// GET) or on hyper's path (a chunked POST, which the relay hands over).
fn waiting(lb: &Lb, ms: u64, hyper: bool) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(lb.addr).unwrap();
    let req = if hyper {
        format!(
            "POST /delay/{ms} HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        )
    } else {
        format!("GET /delay/{ms} HTTP/1.1\r\nhost: t\r\n\r\n")
    };
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// A client that gives up while its request waits is noticed, as NGINX notices it: the request
/// is dropped and logged 499 `downstream_closed`, and what it held goes to others at once. Its
/// place in the `max_connections` queue takes the next request instead of refusing it as
/// overloaded; a backend working on it is left, its slot freed (the backend sees the connection
/// close). On the relay and on hyper's path.
#[test]
fn a_client_that_leaves_while_its_request_waits_frees_what_it_held() {
    let be = backends(1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&json_log(
        config(&format!(
            "backends = [{}]\nmax_connections = 1\nmax_pending = 1\ntimeouts = {{ request = \"10s\" }}",
            be.list()
        )),
        &log,
    ));
    let addr = be.addrs[0];
    let mut lines = 0;
    for hyper in [false, true] {
        // Queued, then gone: the next request takes its place.
        let first = delayed(&lb, 1500);
        busy(&lb, &addr);
        let before = backend_state(&lb, &addr.to_string())["requests_total"].as_u64();
        let leaver = waiting(&lb, 10, hyper);
        std::thread::sleep(Duration::from_millis(200));
        drop(leaver);
        std::thread::sleep(Duration::from_millis(200));
        let next = delayed(&lb, 10);
        assert_eq!(first.join().unwrap().0, 200);
        assert_eq!(next.join().unwrap(), (200, None), "hyper: {hyper}");
        let after = backend_state(&lb, &addr.to_string())["requests_total"].as_u64();
        assert_eq!(
            after,
            before.map(|n| n + 1),
            "the leaver never reached the backend"
        );
        lines += 3;
        // Waiting for the backend's answer, then gone: the backend's slot is freed long before
        // its 3 s answer.
        let leaver = waiting(&lb, 3000, hyper);
        busy(&lb, &addr);
        let left = Instant::now();
        drop(leaver);
        assert!(
            eventually(Duration::from_millis(2000), || backend_state(
                &lb,
                &addr.to_string()
            )["active_requests"]
                == 0),
            "hyper: {hyper}: still in flight after the client left"
        );
        assert!(left.elapsed() < Duration::from_millis(2500));
        lines += 1;
        let got = access_lines(&log, lines);
        let gone: Vec<_> = got.iter().filter(|l| l["status"] == 499).collect();
        assert_eq!(gone.len(), if hyper { 4 } else { 2 }, "{got:?}");
        for l in &gone {
            assert_eq!(l["error"], "downstream_closed", "{l}");
            assert!(l["duration_ms"].as_f64().unwrap() < 2500.0, "{l}");
        }
    }
}

/// A backend that comes back healthy takes a request queued for room at once, instead of the
/// request waiting until some busy backend finishes.
#[test]
fn a_backend_turning_healthy_takes_a_queued_request_at_once() {
    let be = backends(2);
    let lb = start(&config(&format!(
        "backends = [{}]\nmax_connections = 1\ntimeouts = {{ request = \"10s\" }}\n\
         health_check = {{ kind = \"http\", path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", healthy_threshold = 1, unhealthy_threshold = 1 }}",
        be.list()
    )));
    let c = client();
    let (b0, b1) = (be.addrs[0].to_string(), be.addrs[1].to_string());
    c.post(format!("http://{b1}/healthz/fail")).send().unwrap();
    assert!(eventually(Duration::from_secs(3), || {
        backend_state(&lb, &b1)["health"] == "unhealthy"
            && backend_state(&lb, &b0)["health"] == "healthy"
    }));
    let busy_one = delayed(&lb, 3000);
    busy(&lb, &be.addrs[0]);
    let url = lb.url("/");
    let queued = std::thread::spawn(move || {
        let t = Instant::now();
        let got = get_backend(&client(), &url);
        (got, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    c.post(format!("http://{b1}/healthz/ok")).send().unwrap();
    let ((status, name), took) = queued.join().unwrap();
    assert_eq!((status, name.as_str()), (200, "b1"));
    assert!(took < Duration::from_millis(2000), "waited {took:?}");
    assert_eq!(busy_one.join().unwrap().0, 200);
}

/// `max_pending` counts the waiters of every configuration together: a change does not open a
/// second queue beside the one requests already wait in.
#[test]
fn max_pending_holds_across_a_config_change() {
    let be = backends(1);
    let body = |request: &str| {
        config(&format!(
            "backends = [{}]\nmax_connections = 1\nmax_pending = 1\ntimeouts = {{ request = \"{request}\" }}",
            be.list()
        ))
    };
    let lb = start(&body("5s"));
    let first = delayed(&lb, 800);
    busy(&lb, &be.addrs[0]);
    let queued = delayed(&lb, 10);
    assert!(eventually(Duration::from_secs(3), || upstreams(&lb)
        ["upstreams"][0]["queued"]
        == 1));
    let metrics = client()
        .get(lb.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("switchyard_upstream_queued_requests{upstream=\"web\"} 1\n"),
        "{metrics}"
    );
    put_config(&lb, &body("6s"));
    let t = Instant::now();
    let r = client().get(lb.url("/")).send().unwrap();
    assert_eq!(
        r.status(),
        503,
        "the queue is full, whichever configuration"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refused at once, not after waiting"
    );
    assert_eq!(r.headers()["x-switchyard-error"], "upstream_overloaded");
    assert_eq!(first.join().unwrap().0, 200);
    assert_eq!(queued.join().unwrap(), (200, None));
}

/// A half-open circuit's probe whose client leaves gives its probe place back: the next request
/// probes again, instead of the backend staying shut out with no probe ever to end.
#[test]
fn an_abandoned_probe_does_not_shut_a_backend_out() {
    let be = backends(1);
    let lb = start(&config(&format!(
        "backends = [{}]\ncircuit_breaker = {{ consecutive_failures = 3, open_for = \"300ms\", half_open_probes = 1 }}\nretry = {{ attempts = 1 }}",
        be.list()
    )));
    let c = client();
    trip(&lb);
    let addr = be.addrs[0].to_string();
    assert_eq!(backend_state(&lb, &addr)["circuit"], "open");
    std::thread::sleep(Duration::from_millis(400));
    for hyper in [false, true] {
        // The probe: its client leaves while the backend works on it.
        let probe = waiting(&lb, 3000, hyper);
        busy(&lb, &be.addrs[0]);
        assert_eq!(backend_state(&lb, &addr)["circuit"], "half_open");
        drop(probe);
        assert!(eventually(Duration::from_secs(3), || backend_state(
            &lb, &addr
        )["active_requests"]
            == 0));
        // Still half-open, and admitting: this request is the next probe, and it closes the
        // circuit on the second round.
        let r = c.get(lb.url("/status/500")).send().unwrap();
        assert_eq!(r.status(), 500, "hyper: {hyper}: {:?}", r.headers());
        // The failed probe opened the circuit again, for twice as long.
        std::thread::sleep(Duration::from_millis(800));
    }
    assert!(eventually(Duration::from_secs(3), || c
        .get(lb.url("/"))
        .send()
        .unwrap()
        .status()
        == 200));
    assert_eq!(backend_state(&lb, &addr)["circuit"], "closed");
}

/// A request that arrives while the one before it waits for its backend is the client
/// pipelining, not leaving: both are answered, in order.
#[test]
fn a_request_pipelined_while_the_one_before_waits_is_not_taken_for_leaving() {
    use std::io::{Read, Write};
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let mut s = std::net::TcpStream::connect(lb.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut read_until = |s: &mut std::net::TcpStream, answers: usize| {
        let mut b = [0u8; 4096];
        while got.windows(12).filter(|w| w == b"HTTP/1.1 200").count() < answers {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    // One answered first, so the connection has waited for bytes and is watched from the start.
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
    read_until(&mut s, 1);
    s.write_all(b"GET /delay/600 HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    s.write_all(b"GET /status/200 HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    let text = read_until(&mut s, 3);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
}
