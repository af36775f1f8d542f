//! Proxy behaviour over real sockets: headers, errors Switchyard makes, malformed requests, h2c.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn forwards_with_proxy_headers_and_keeps_host() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let c = client();
    let r = c
        .get(lb.url("/echo?q=1"))
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-request-id", "abc-123")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let v: serde_json::Value = r.json().unwrap();
    let h = &v["headers"];
    assert_eq!(v["path"], "/echo");
    assert_eq!(v["query"], "q=1");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], lb.addr.to_string());
    assert_eq!(h["host"], lb.addr.to_string());
    assert_eq!(h["x-request-id"], "abc-123");
    assert_eq!(
        h["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert!(
        h.get("x-hop").is_none(),
        "header named in Connection must not be forwarded"
    );
    let v: serde_json::Value = c.get(lb.url("/")).send().unwrap().json().unwrap();
    assert_eq!(
        v["headers"]["x-request-id"].as_str().unwrap().len(),
        32,
        "request id created"
    );
}

#[test]
fn unreachable_backend_gives_502_within_connect_timeout() {
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{dead}\" }}]\ntimeouts = {{ connect = \"500ms\" }}"
    )));
    let t = Instant::now();
    let r = client().get(lb.url("/")).send().unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-switchyard-error"], "connect_failed");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn slow_backend_gives_504_with_reason() {
    let be = backends(1);
    let lb = start(&config(&format!(
        "backends = [{}]\ntimeouts = {{ request = \"300ms\" }}",
        be.list()
    )));
    let r = client().get(lb.url("/delay/2000")).send().unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-switchyard-error"], "upstream_timeout");
}

/// A route's `timeout` replaces the upstream's `timeouts.request` for its requests, longer or
/// shorter, on the HTTP/1 relay, the relay from HTTP/2, and hyper's client (a client asking for
/// trailers).
#[test]
fn a_route_timeout_replaces_the_upstreams_for_its_requests() {
    let be = backends(1);
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"web\"\n\
         [[routes]]\npath_prefix = \"/delay/9\"\nupstream = \"web\"\ntimeout = \"3s\"\n\
         [[routes]]\npath_prefix = \"/delay/2\"\nupstream = \"web\"\ntimeout = \"100ms\"\n\
         [upstreams.web]\nbackends = [{}]\ntimeouts = {{ request = \"500ms\" }}\n",
        be.list()
    ));
    for (c, te) in [
        (client(), ""),
        (h2c_client(), ""),
        (h2c_client(), "trailers"),
    ] {
        let get = |path: &str| {
            let mut r = c.get(lb.url(path));
            if !te.is_empty() {
                r = r.header("te", te);
            }
            r.send().unwrap().status().as_u16()
        };
        assert_eq!(get("/delay/900"), 200, "the route's 3 s (te: {te:?})");
        assert_eq!(get("/delay/800"), 504, "the upstream's 500 ms (te: {te:?})");
        assert_eq!(get("/delay/250"), 504, "the route's 100 ms (te: {te:?})");
        assert_eq!(get("/delay/20"), 200);
    }
    let bad =
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"web\"\ntimeout = \"0s\"\n\
               [upstreams.web]\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    assert!(refused_paths(&lb, bad)
        .iter()
        .any(|p| p == "routes[0].timeout"));
}

#[test]
fn no_route_is_404_and_h2c_is_served() {
    let be = backends(1);
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[[routes]]\nhosts = [\"api.test\"]\nupstream = \"web\"\n[upstreams.web]\nbackends = [{}]\n",
        be.list()
    ));
    let c = client();
    let r = c
        .get(lb.url("/"))
        .header("host", "other.test")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-switchyard-error"], "no_route");
    // Refused before forwarding, yet tagged like every response: a new id, or the client's.
    assert_eq!(r.headers()["x-request-id"].len(), 32, "{:?}", r.headers());
    let r = c
        .get(lb.url("/"))
        .header("host", "other.test")
        .header("x-request-id", "client-chosen-1")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-1");
    // HTTP/2 routes by `:authority` (a differing Host header does not count: RFC 9113 §8.3.1).
    let h2 = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .resolve("api.test", lb.addr)
        .build()
        .unwrap();
    let r = h2
        .get(lb.url("/x"))
        .header("host", "api.test")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "routed by :authority, not by Host");
    let r = h2
        .get(format!("http://api.test:{}/x", lb.addr.port()))
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-demo-backend"], "b0");
}

#[test]
fn malformed_requests_get_4xx_and_are_never_forwarded() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), "400"),
        ("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (
            "differing duplicate Content-Length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            "400",
        ),
        ("invalid Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\na".to_vec(), "400"),
        ("obs-fold header", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec(), "400"),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "Transfer-Encoding not chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "oversized headers",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024)).into_bytes(),
            "431",
        ),
        (
            "request line over the head limit",
            format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70 * 1024)).into_bytes(),
            "414",
        ),
        (
            "a chunk size over 2^63 - 1",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8000000000000000\r\nhello".to_vec(),
            "400",
        ),
        (
            "chunked applied twice",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "chunked on two lines",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "identity before chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX".to_vec(),
            "400",
        ),
        (
            "userinfo in an absolute-form target",
            b"GET http://user@other.example/ HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            "400",
        ),
        ("Host with a space and @", b"GET / HTTP/1.1\r\nHost: a b@evil\r\n\r\n".to_vec(), "400"),
        ("Host with a path", b"GET / HTTP/1.1\r\nHost: local/host\r\n\r\n".to_vec(), "400"),
    ];
    for (name, bytes, want) in &cases {
        let out = raw(lb.addr, bytes);
        let status = out.split(' ').nth(1).unwrap_or("");
        assert_eq!(status, *want, "{name}: got {out:?}");
        assert!(!out.contains("x-demo-backend"), "{name}: was forwarded");
    }
    // The same against a backend that records what reaches it: the demo backend's server
    // refuses some of these itself, and its refusal carries no x-demo-backend.
    let (rec, seen) = crate::relay::scripted(|_| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            false,
        )
    });
    let recorded = start(&config(&format!("backends = [{{ address = \"{rec}\" }}]")));
    for (name, bytes, want) in &cases {
        let out = raw(recorded.addr, bytes);
        assert_eq!(out.split(' ').nth(1), Some(*want), "{name}: got {out:.200}");
        let got = seen.lock().unwrap();
        assert!(got.is_empty(), "{name}: was forwarded: {:.200}", got[0]);
    }
    // Content-Length with Transfer-Encoding: never framed by the length (no smuggling), the
    // smuggled second request never reaches a backend as a request of its own.
    let out = raw(
        lb.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert!(
        !out.contains("/smuggled"),
        "smuggled request was forwarded: {out}"
    );
    // A refused Transfer-Encoding closes the connection: what follows its body is not read as a
    // request.
    let out = raw_all(
        lb.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "a second answer: {out}");
    let (status, _) = get_backend(&client(), &lb.url("/"));
    assert_eq!(status, 200, "still serving");

    // Heads over the limit: see a_head_over_the_limit_is_refused_whatever_buffer_it_lands_in.
    use std::io::{Read, Write};
    // A head that arrives in two parts either side of the limit: 63.5 KiB, then the rest of
    // 100 KiB 100 ms later.
    let mut s = std::net::TcpStream::connect(lb.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let head = format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let (first, rest) = head.as_bytes().split_at(63 * 1024 + 512);
    s.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let _ = s.write_all(rest);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 414"), "{out:.80}");
    assert!(
        out.contains("x-switchyard-error: uri_too_long"),
        "{out:.300}"
    );

    // A GET with a chunked body gets its body through, as NGINX passes it.
    let out = raw(
        lb.addr,
        b"GET /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(out.contains("\"body_bytes\":5"), "{out}");
}

/// The head limit is in bytes of the head, whatever buffer a connection reuses: a large head
/// and a second request on one connection leave the pooled buffer grown, and a head over
/// 64 KiB that then arrives whole in one read is refused all the same. One worker, so every
/// connection draws from the same pool.
#[test]
fn a_head_over_the_limit_is_refused_whatever_buffer_it_lands_in() {
    use std::io::{Read, Write};
    let be = backends(1);
    let lb = start(
        &config(&format!("backends = [{}]", be.list())).replace("workers = 2", "workers = 1"),
    );
    let one = |c: &mut std::net::TcpStream, req: &[u8]| {
        c.write_all(req).unwrap();
        let mut b = [0u8; 65536];
        let n = c.read(&mut b).unwrap();
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    // Whether the read that crosses the limit also brings the head's end depends on how the
    // bytes arrive: several sizes, several times, each after a connection that grew a buffer.
    for kib in [66, 80, 100, 125].repeat(3) {
        let mut a = std::net::TcpStream::connect(lb.addr).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        // (Answered in a few bytes, so one read takes the whole answer.)
        let big = format!(
            "GET /healthz?{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(10 * 1024)
        );
        assert!(one(&mut a, big.as_bytes()).starts_with("HTTP/1.1 200"));
        assert!(
            one(&mut a, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").starts_with("HTTP/1.1 200")
        );
        drop(a);
        let out = raw(
            lb.addr,
            format!(
                "GET /healthz?{} HTTP/1.1\r\nHost: a\r\n\r\n",
                "a".repeat(kib * 1024)
            )
            .as_bytes(),
        );
        // Switchyard's own 414, not the backend's (the demo backend refuses such a head too).
        assert!(out.starts_with("HTTP/1.1 414"), "{kib} KiB: {out:.80}");
        assert!(
            out.contains("x-switchyard-error: uri_too_long"),
            "{kib} KiB: {out:.300}"
        );
    }
}

/// A route's `path` is the whole path, exactly (NGINX's `location =`): it comes before every
/// prefix of its host, even one equal to it and earlier in the file, on the HTTP/1 relay and on
/// HTTP/2, and the route match API agrees.
#[test]
fn an_exact_path_route_comes_before_the_prefixes() {
    let be = backends(2);
    let cfg = |extra: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
             [[routes]]\npath_prefix = \"/api/status\"\nupstream = \"prefix\"\n\
             [[routes]]\npath_prefix = \"/api/\"\nupstream = \"prefix\"\n\
             [[routes]]\npath = \"/api/status\"\nupstream = \"exact\"\n{extra}\n\
             [upstreams.prefix]\nbackends = [{{ address = \"{}\" }}]\n\
             [upstreams.exact]\nbackends = [{{ address = \"{}\" }}]\n",
            be.addrs[0], be.addrs[1]
        )
    };
    let lb = start(&cfg(""));
    for c in [client(), h2c_client()] {
        for (path, want) in [
            ("/api/status", "b1"),
            ("/api/status?verbose=1", "b1"),
            ("/api/status/", "b0"),
            ("/api/statuses", "b0"),
            ("/api/other", "b0"),
        ] {
            assert_eq!(
                get_backend(&c, &lb.url(path)),
                (200, want.to_string()),
                "{path}"
            );
        }
    }
    let m = get_json(
        &client(),
        &lb.admin_url("/api/v1/routes/match?host=a&path=/api/status"),
    );
    assert_eq!(m["serves"]["upstream"], "exact", "{m}");
    let paths = refused_paths(&lb, &cfg("path_prefix = \"/api/\""));
    assert_eq!(paths, ["routes[2].path"]);
    let paths = refused_paths(
        &lb,
        &cfg("[[routes]]\npath = \"status?x=1\"\nupstream = \"exact\""),
    );
    assert_eq!(paths, ["routes[3].path", "routes[3].path"]);
}

/// Routes may also match on the method and on headers (Envoy's header matchers, Traefik's
/// `Method`/`Header` rules): among routes of one host and prefix the one asking more wins,
/// wherever it is in the file, on the HTTP/1 relay and on HTTP/2 alike. A header matches on any
/// of its lines; `"*"` asks only that it is there. Bad conditions are refused by field path.
#[test]
fn routes_match_on_method_and_headers() {
    let be = backends(3);
    let routes = |extra: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
             [[routes]]\nupstream = \"stable\"\n\
             [[routes]]\nupstream = \"canary\"\nmatch_headers = {{ x-canary = \"yes\" }}\n\
             [[routes]]\npath_prefix = \"/api/\"\nupstream = \"writer\"\nmethods = [\"POST\", \"PUT\"]\n\
             match_headers = {{ authorization = \"*\" }}\n{extra}\n\
             [upstreams.stable]\nbackends = [{{ address = \"{}\" }}]\n\
             [upstreams.canary]\nbackends = [{{ address = \"{}\" }}]\n\
             [upstreams.writer]\nbackends = [{{ address = \"{}\" }}]\n",
            be.addrs[0], be.addrs[1], be.addrs[2]
        )
    };
    let lb = start(&routes(""));
    for c in [client(), h2c_client()] {
        let served = |m: reqwest::Method, path: &str, h: &[(&str, &str)]| {
            let mut r = c.request(m, lb.url(path));
            for (n, v) in h {
                r = r.header(*n, *v);
            }
            let r = r.body("x").send().unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-demo-backend"].to_str().unwrap().to_string()
        };
        use reqwest::Method as M;
        assert_eq!(served(M::GET, "/", &[]), "b0");
        assert_eq!(served(M::GET, "/", &[("x-canary", "yes")]), "b1");
        assert_eq!(
            served(M::GET, "/", &[("x-canary", "YES")]),
            "b0",
            "values are exact"
        );
        assert_eq!(
            served(M::POST, "/api/x", &[("authorization", "Bearer t")]),
            "b2"
        );
        assert_eq!(
            served(M::PUT, "/api/x", &[("authorization", "")]),
            "b2",
            "present"
        );
        assert_eq!(
            served(M::GET, "/api/x", &[("authorization", "t")]),
            "b0",
            "method"
        );
        assert_eq!(served(M::POST, "/api/x", &[]), "b0", "no header");
        assert_eq!(
            served(M::POST, "/other", &[("authorization", "t")]),
            "b0",
            "prefix"
        );
    }
    // The admin API tells which route a request would take, without sending one.
    let which = |q: &str| -> (u16, Value) {
        let r = client()
            .get(lb.admin_url(&format!("/api/v1/routes/match?{q}")))
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap())
    };
    let (s, v) = which("path=/api/x&method=POST&header=Authorization:Bearer%20t");
    assert_eq!(
        (s, &v["route"], &v["serves"]["upstream"]),
        (200, &json!(2), &json!("writer")),
        "{v}"
    );
    let (_, v) = which("header=x-canary:yes");
    assert_eq!(v["serves"]["upstream"], "canary", "{v}");
    assert_eq!(v["route_config"]["match_headers"]["x-canary"], "yes", "{v}");
    let (_, v) = which("path=/api/x&method=GET");
    assert_eq!(v["route"], 0, "{v}");
    let (s, _) = which("header=nocolon");
    assert_eq!(s, 400);
    // A path spelled another way is matched as the data plane matches it: normalized.
    let (s, v) = which("path=/x/../%61pi/y&method=PUT&header=authorization:t");
    assert_eq!(
        (s, &v["route"], &v["path"]),
        (200, &json!(2), &json!("/api/y")),
        "{v}"
    );
    let (s, _) = which("path=/../etc");
    assert_eq!(s, 400);

    let bad = routes("[[routes]]\nupstream = \"stable\"\nmethods = [\"get\", \"G T\", \"*\"]\n\
        match_headers = { \"bad name\" = \"v\", x-e = \"\", host = \"a\", X-E = \"1\", x-s = \" v\" }\n");
    let paths = refused_paths(&lb, &bad);
    for p in [
        "routes[3].methods[0]",
        "routes[3].methods[1]",
        "routes[3].methods[2]",
        "routes[3].match_headers.bad name",
        "routes[3].match_headers.x-e",
        "routes[3].match_headers.host",
        "routes[3].match_headers.x-s",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not named: {paths:?}");
    }
}

/// Routes that answer themselves (`respond`, NGINX's `return`): a redirect to another domain
/// keeping the path, a maintenance page with the route's response headers, a path refused;
/// nothing reaches a backend, on the HTTP/1 relay (handed to hyper's path) and on HTTP/2. A
/// `respond` that does not hold together is refused by field path.
#[test]
fn a_route_can_answer_itself_with_a_redirect_or_a_page() {
    let be = backends(1);
    let routes = |extra: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
             [[routes]]\nupstream = \"web\"\n\
             [[routes]]\nhosts = [\"old.example\"]\n\
             respond = {{ status = 301, location = \"https://new.example${{request_uri}}\" }}\n\
             [[routes]]\npath_prefix = \"/shop/\"\n\
             respond = {{ status = 503, body = \"back soon\\n\" }}\n\
             response_headers = {{ set = {{ retry-after = \"120\" }} }}\n\
             [[routes]]\npath_prefix = \"/.git/\"\nrespond = {{ status = 404 }}\n\
             [[routes]]\npath_prefix = \"/none/\"\nrespond = {{ status = 204 }}\n{extra}\n\
             [upstreams.web]\nbackends = [{}]\n",
            be.list()
        )
    };
    let lb = start(&routes(""));
    // `old.example` is the listener, for both clients.
    let plain = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("old.example", lb.addr);
    let h2 = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("old.example", lb.addr)
        .http2_prior_knowledge();
    let old = format!("http://old.example:{}/a/b?c=1", lb.addr.port());
    for c in [plain.build().unwrap(), h2.build().unwrap()] {
        let r = c.get(&old).send().unwrap();
        assert_eq!(r.status(), 301);
        assert_eq!(r.headers()["location"], "https://new.example/a/b?c=1");
        assert!(r.headers().get("x-demo-backend").is_none());
        assert!(r.headers().get("x-request-id").is_some());
        let r = c.get(lb.url("/shop/cart")).send().unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "120");
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(r.text().unwrap(), "back soon\n");
        let r = c.get(lb.url("/.git/config")).send().unwrap();
        assert_eq!(r.status(), 404);
        assert!(
            r.headers().get("x-switchyard-error").is_none(),
            "the route's, not an error"
        );
        let r = c.get(lb.url("/other")).send().unwrap();
        assert_eq!(r.headers()["x-demo-backend"], "b0");
    }
    assert_eq!(
        first_backend(&lb, 0)["requests_total"],
        2,
        "only /other was forwarded"
    );
    // A body sent after the head is read and dropped, and the connection goes on.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(lb.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"POST /shop/x HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"payloadGET /shop/y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert_eq!(out.matches("HTTP/1.1 503").count(), 2, "{out}");
    // HEAD and 204 carry no body, on HTTP/2 too (a DATA frame there is a protocol error).
    let h2 = h2c_client();
    let r = h2.head(lb.url("/shop/z")).send().unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().unwrap()),
        (503, String::new())
    );
    let r = h2.get(lb.url("/none/")).send().unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("content-type").is_none());
    let v = get_json(
        &client(),
        &lb.admin_url("/api/v1/routes/match?host=old.example&path=/x"),
    );
    assert_eq!(v["serves"]["respond"]["status"], 301, "{v}");
    let bad = routes(
        "[[routes]]\npath_prefix = \"/x\"\nupstream = \"web\"\nrespond = { status = 99 }\n\
         [[routes]]\npath_prefix = \"/y\"\nrespond = { status = 302, body = \"b\" }\n\
         [[routes]]\npath_prefix = \"/z\"\nrespond = { status = 308, location = \"/${nope}\" }\n\
         [[routes]]\npath_prefix = \"/w\"\nrespond = { status = 204, body = \"${host}\" }\ntimeout = \"1s\"\n",
    );
    let paths = refused_paths(&lb, &bad);
    for p in [
        "routes[5].respond",
        "routes[5].respond.status",
        "routes[6].respond.location",
        "routes[7].respond.location",
        "routes[8].respond.body",
        "routes[8].timeout",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not named: {paths:?}");
    }
}

/// A route may rewrite the path prefix (Envoy's `prefix_rewrite`; "/" strips it) and edit
/// request and response headers, on HTTP/1.1 and HTTP/2 alike; other routes are untouched.
#[test]
fn a_route_rewrites_its_prefix_and_edits_headers_both_ways() {
    let be = backends(1);
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"web\"\nrewrite_prefix = \"/\"\n\
         request_headers = {{ set = {{ x-env = \"prod\", host = \"users.internal\" }}, remove = [\"x-debug\"] }}\n\
         response_headers = {{ set = {{ x-route = \"api\" }}, remove = [\"x-demo-backend\"] }}\n\
         [[routes]]\nupstream = \"web\"\n\
         [upstreams.web]\nbackends = [{}]\n",
        be.list()
    ));
    for c in [client(), h2c_client()] {
        let r = c
            .get(lb.url("/api/users/7?full=1"))
            .header("x-debug", "1")
            .header("x-env", "dev")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-route"], "api");
        assert!(
            r.headers().get("x-demo-backend").is_none(),
            "{:?}",
            r.headers()
        );
        let v: Value = r.json().unwrap();
        assert_eq!(v["path"], "/users/7", "{v}");
        assert_eq!(v["query"], "full=1", "{v}");
        assert_eq!(v["headers"]["x-env"], "prod", "{v}");
        assert_eq!(v["headers"]["host"], "users.internal", "{v}");
        assert!(v["headers"].get("x-debug").is_none(), "{v}");
        // The other route: as sent.
        let r = c
            .get(lb.url("/other"))
            .header("x-debug", "1")
            .send()
            .unwrap();
        assert!(r.headers().get("x-route").is_none());
        assert!(r.headers().get("x-demo-backend").is_some());
        let v: Value = r.json().unwrap();
        assert_eq!(v["path"], "/other");
        assert_eq!(v["headers"]["x-debug"], "1", "{v}");
    }
    // Framing headers are Switchyard's: a route may not edit them.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"web\"\nrewrite_prefix = \"x\"\n\
         request_headers = { set = { content-length = \"0\", \"bad name\" = \"v\" } }\n\
         [upstreams.web]\nbackends = [{ address = \"127.0.0.1:1\" }]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for path in [
        "routes[0].rewrite_prefix",
        "routes[0].request_headers.set.content-length",
        "routes[0].request_headers.set.bad name",
    ] {
        assert!(text.contains(path), "{path} not named: {text}");
    }
}

/// A route's rate limit answers 429 with `Retry-After` once a client's burst is spent, never
/// forwarding; another client, and another route, are unaffected; tokens come back at the rate;
/// a configuration change elsewhere keeps the buckets (no fresh burst for everyone).
#[test]
fn a_rate_limited_route_answers_429_per_client_and_keeps_its_buckets_across_changes() {
    let be = backends(2);
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\npath_prefix = \"/api\"\nupstream = \"web\"\n\
         rate_limit = {{ requests_per_second = 2, burst = 3 }}\n\
         [[routes]]\nupstream = \"web\"\n\
         [upstreams.web]\nbackends = [{}]\n",
        be.addrs[..1]
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let c = client();
    let sent = || {
        lb.running().shared.current().upstreams[0]
            .backends
            .iter()
            .map(|b| {
                b.state
                    .requests_total
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum::<u64>()
    };
    let status = |url: &str| c.get(lb.url(url)).send().unwrap();
    for _ in 0..3 {
        assert_eq!(status("/api/x").status(), 200);
    }
    let before = sent();
    let r = status("/api/x");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-switchyard-error"], "rate_limited");
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(sent(), before, "a refused request is not forwarded");
    // Other routes are not limited; HTTP/2 (another connection, same client IP) shares the bucket.
    assert_eq!(status("/other").status(), 200);
    assert_eq!(
        h2c_client().get(lb.url("/api/x")).send().unwrap().status(),
        429
    );
    // A change elsewhere (a backend added) keeps the spent bucket.
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&serde_json::json!({"add": [{"address": be.addrs[1].to_string()}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        status("/api/x").status(),
        429,
        "the change handed out a fresh burst"
    );
    // Two tokens a second: one is back within 600 ms.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(status("/api/x").status(), 200);
}

/// Behind a TCP balancer that sends the PROXY protocol (`proxy_protocol = true`), the header's
/// client is the client: in `X-Forwarded-For` and the access log, over v1 and v2, on plain and
/// TLS-less keep-alive connections alike. A connection without the header is closed unanswered.
#[test]
fn proxy_protocol_headers_name_the_client_and_connections_without_one_are_closed() {
    let be = backends(1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_file = {:?}\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [upstreams.web]\nbackends = [{}]\n",
        log.display().to_string(),
        be.list()
    ));
    let get = b"GET /pp HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let forwarded_for = |resp: &str| -> String {
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{resp}"));
        v["headers"]["x-forwarded-for"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let v1 = [
        b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n".as_slice(),
        get,
    ]
    .concat();
    let r = raw(lb.addr, &v1);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(forwarded_for(&r), "203.0.113.7");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0, 12]);
    v2.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]);
    v2.extend_from_slice(get);
    let r = raw(lb.addr, &v2);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(forwarded_for(&r), "198.51.100.9");
    // The balancer's own health check (v1 UNKNOWN) is served as the peer.
    let unknown = [b"PROXY UNKNOWN\r\n".as_slice(), get].concat();
    assert!(raw(lb.addr, &unknown).starts_with("HTTP/1.1 200"));
    // No header: closed without an answer, nothing forwarded.
    assert_eq!(raw(lb.addr, get), "");
    let lines = access_lines(&log, 3);
    let clients: Vec<&str> = lines
        .iter()
        .map(|l| l["client"].as_str().unwrap())
        .collect();
    assert_eq!(
        clients[..2],
        ["203.0.113.7:56324", "198.51.100.9:8080"],
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
}

/// Behind a trusted proxy (`trusted_proxies`), the client is the rightmost address of
/// `X-Forwarded-For` that is not itself a trusted proxy: rate limits and the access log use it,
/// on the relay (HTTP/1.1) and hyper's path (h2c) alike. From any other peer the header is
/// passed on but never believed.
#[test]
fn behind_a_trusted_proxy_the_client_is_the_one_x_forwarded_for_names() {
    let be = backends(1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_file = {:?}\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n\
         [[routes]]\npath_prefix = \"/rl\"\nupstream = \"web\"\n\
         rate_limit = {{ requests_per_second = 0.01, burst = 1 }}\n\
         [[routes]]\nupstream = \"web\"\n\
         [upstreams.web]\nbackends = [{}]\n",
        log.display().to_string(),
        be.list()
    ));
    // 127.0.0.1 is a trusted proxy; 127.0.0.2 (also loopback) is any other client.
    let proxy = client();
    let other = client_from("127.0.0.2");
    let get = |c: &reqwest::blocking::Client, path: &str, xff: &str| {
        c.get(lb.url(path))
            .header("x-forwarded-for", xff)
            .send()
            .unwrap()
    };
    let seen_xff = |r: reqwest::blocking::Response| -> String {
        let v: Value = r.json().unwrap();
        v["headers"]["x-forwarded-for"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The peer is appended as it arrived; the spoofed 1.2.3.4 on the left is not the client.
    let r = get(&proxy, "/echo", "1.2.3.4, 203.0.113.7, 10.0.0.2");
    assert_eq!(seen_xff(r), "1.2.3.4, 203.0.113.7, 10.0.0.2, 127.0.0.1");
    // One request per client: the bucket is 203.0.113.7's, then 203.0.113.8's, not the proxy's.
    assert_eq!(get(&proxy, "/rl", "203.0.113.7").status(), 200);
    assert_eq!(get(&proxy, "/rl", "203.0.113.7").status(), 429);
    assert_eq!(get(&proxy, "/rl", "203.0.113.8").status(), 200);
    let h2 = h2c_client()
        .get(lb.url("/rl"))
        .header("x-forwarded-for", "10.9.9.9, 203.0.113.8")
        .send()
        .unwrap();
    assert_eq!(
        h2.status(),
        429,
        "over h2c the same client has the same bucket"
    );
    // Not a trusted proxy: whatever its header says, the peer is the client.
    assert_eq!(
        seen_xff(get(&other, "/echo", "198.51.100.1")),
        "198.51.100.1, 127.0.0.2"
    );
    assert_eq!(get(&other, "/rl", "198.51.100.1").status(), 200);
    assert_eq!(get(&other, "/rl", "198.51.100.2").status(), 429);

    let lines = access_lines(&log, 8);
    let logged = |path: &str, status: u64| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|l| l["path"] == path && l["status"] == status)
            .map(|l| {
                let peer = l["peer"].as_str().unwrap_or("-");
                (l["client"].as_str().unwrap().to_string(), peer.to_string())
            })
            .collect()
    };
    let echo = logged("/echo", 200);
    assert_eq!(echo.len(), 2, "{lines:?}");
    assert_eq!(echo[0].0, "203.0.113.7");
    assert!(echo[0].1.starts_with("127.0.0.1:"), "{echo:?}");
    assert!(echo[1].0.starts_with("127.0.0.2:"), "{echo:?}");
    assert_eq!(echo[1].1, "-", "no peer when the peer is the client");
    let limited: Vec<String> = logged("/rl", 429).into_iter().map(|(c, _)| c).collect();
    assert_eq!(limited[..2], ["203.0.113.7", "203.0.113.8"], "{lines:?}");
    assert!(limited[2].starts_with("127.0.0.2:"), "{limited:?}");
}

/// `request_headers` values with variables (NGINX's `proxy_set_header X-Real-IP $remote_addr`):
/// the client behind a trusted proxy, the peer, scheme, host, target, method and request id, the
/// same on the HTTP/1 relay and on hyper's path (h2c); one that expands to nothing is not sent,
/// and the client's own line of that name does not get through instead. Unknown variables, and
/// variables in response headers, are refused with their field paths.
#[test]
fn request_headers_take_variables_such_as_the_client_address() {
    let be = backends(1);
    let route = |set: &str, response: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listeners]]\nbind = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
             [[routes]]\nupstream = \"web\"\nrequest_headers = {{ set = {{ {set} }} }}\n{response}\n\
             [upstreams.web]\nbackends = [{}]\n",
            be.list()
        )
    };
    let lb = start(&route(
        "x-real-ip = \"${client_ip}\", x-peer = \"${peer_ip}\", \
         x-origin = \"${scheme}://${host}${request_uri}\", x-line = \"${method} id=${request_id}\", \
         x-cert = \"${tls_client_subject}\"",
        "",
    ));
    let host = lb.addr.to_string();
    for (c, via, xff, real, peer) in [
        (client(), "relay", "203.0.113.9", "203.0.113.9", "127.0.0.1"),
        (
            h2c_client(),
            "h2c",
            "203.0.113.9",
            "203.0.113.9",
            "127.0.0.1",
        ),
        (
            client_from("127.0.0.2"),
            "untrusted",
            "203.0.113.9",
            "127.0.0.2",
            "127.0.0.2",
        ),
    ] {
        let r = c
            .post(lb.url("/v/a?b=1"))
            .header("x-forwarded-for", xff)
            .header("x-cert", "CN=forged")
            .body("x")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{via}");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let v: Value = r.json().unwrap();
        let h = &v["headers"];
        assert_eq!(h["x-real-ip"], real, "{via}: {v}");
        assert_eq!(h["x-peer"], peer, "{via}: {v}");
        assert_eq!(
            h["x-origin"],
            format!("http://{host}/v/a?b=1"),
            "{via}: {v}"
        );
        assert_eq!(h["x-line"], format!("POST id={id}"), "{via}: {v}");
        assert!(h.get("x-cert").is_none(), "{via}: {v}");
    }
    // The client's own request id is the one named.
    for c in [client(), h2c_client()] {
        let v: Value = c
            .get(lb.url("/"))
            .header("x-request-id", "abc-1")
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["headers"]["x-line"], "GET id=abc-1", "{v}");
    }
    let bad = route(
        "x-bad = \"${remote_addr}\", x-open = \"${host\"",
        "response_headers = { set = { x-served = \"${host}\" } }",
    );
    let paths = refused_paths(&lb, &bad);
    for p in [
        "routes[0].request_headers.set.x-bad",
        "routes[0].request_headers.set.x-open",
        "routes[0].response_headers.set.x-served",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not named: {paths:?}");
    }
}

/// A route's `ip_allow` and `ip_deny` answer 403 `client_denied` to the clients they refuse,
/// with nothing forwarded, on the relay and on hyper's path, judging the client as rate limits
/// do: behind a trusted proxy, the one its `X-Forwarded-For` names.
#[test]
fn ip_allow_and_deny_refuse_clients_with_403_before_forwarding() {
    let be = backends(1);
    let routes = |allow: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listeners]]\nbind = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
             [[routes]]\npath_prefix = \"/admin\"\nupstream = \"web\"\nip_allow = [{allow}]\n\
             [[routes]]\npath_prefix = \"/public\"\nupstream = \"web\"\n\
             ip_deny = [\"203.0.113.0/24\"]\n\
             [upstreams.web]\nbackends = [{}]\n",
            be.list()
        )
    };
    let lb = start(&routes("\"10.0.0.0/8\", \"127.0.0.2\""));
    let sent = || {
        lb.running().shared.current().upstreams[0].backends[0]
            .state
            .requests_total
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (proxy, h2) = (client(), h2c_client());
    let other = client_from("127.0.0.2");
    let status = |c: &reqwest::blocking::Client, path: &str, xff: Option<&str>| {
        let mut r = c.get(lb.url(path));
        if let Some(x) = xff {
            r = r.header("x-forwarded-for", x);
        }
        let r = r.send().unwrap();
        let reason = r
            .headers()
            .get("x-switchyard-error")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), reason)
    };
    let denied = (403, Some("client_denied".to_string()));
    let before = sent();
    // 127.0.0.1 itself is outside the allow list; so is the client 198.51.100.1 it names.
    assert_eq!(status(&proxy, "/admin", None), denied);
    assert_eq!(status(&proxy, "/admin", Some("198.51.100.1")), denied);
    assert_eq!(status(&h2, "/admin", Some("198.51.100.1")), denied);
    assert_eq!(status(&proxy, "/public", Some("203.0.113.9")), denied);
    assert_eq!(status(&h2, "/public", Some("203.0.113.9")), denied);
    assert_eq!(sent(), before, "a refused request is not forwarded");
    assert_eq!(status(&proxy, "/admin", Some("10.1.2.3")), (200, None));
    assert_eq!(status(&h2, "/admin", Some("10.1.2.3")), (200, None));
    assert_eq!(status(&other, "/admin", None), (200, None));
    // Not a trusted proxy: its header does not make it 203.0.113.9.
    assert_eq!(status(&other, "/public", Some("203.0.113.9")), (200, None));
    assert_eq!(sent(), before + 4);
    assert_eq!(
        refused_paths(&lb, &routes("\"10.0.0.0/40\", \"localhost\"")),
        ["routes[0].ip_allow[0]", "routes[0].ip_allow[1]"]
    );
}

/// A client too slow with its request head (slowloris) or body gets 408 when the listener's
/// `header_timeout` passes, access-logged and counted, as HAProxy and NGINX answer; an idle
/// keep-alive connection is closed without one.
#[test]
fn a_request_not_finished_within_the_header_timeout_gets_408() {
    use std::io::{Read, Write};
    let be = backends(1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_file = {:?}\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\nheader_timeout = \"600ms\"\n\
         [upstreams.web]\nbackends = [{}]\n",
        log.display().to_string(),
        be.list()
    ));
    let answer = |parts: &[&[u8]]| {
        let mut c = std::net::TcpStream::connect(lb.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for p in parts {
            c.write_all(p).unwrap();
            std::thread::sleep(Duration::from_millis(250));
        }
        let t = Instant::now();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        (out, t.elapsed())
    };
    // Headers a few bytes at a time, never finished.
    let (r, _) = answer(&[b"GET / HT", b"TP/1.1\r\nHo", b"st: a\r\n"]);
    assert!(r.starts_with("HTTP/1.1 408"), "{r:?}");
    assert!(r.contains("x-switchyard-error: client_timeout"), "{r}");
    // A body promised and not sent.
    let (r, _) = answer(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12"]);
    assert!(r.starts_with("HTTP/1.1 408"), "{r:?}");
    // Idle after a whole request: closed, no 408.
    let (r, _) = answer(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]);
    assert!(r.starts_with("HTTP/1.1 200"), "{r:?}");
    assert!(!r.contains("408"), "{r}");
    // Bodies hyper's path serves: one streamed to the backend (chunked), one kept for a retry
    // (a PUT with Expect). A stall is the client's, answered 408 within the timeout, not a 504
    // after `timeouts.request` counted against the backend.
    for stalled in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhello"[..],
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n12",
    ] {
        let (r, waited) = answer(&[stalled]);
        let r = r.trim_start_matches("HTTP/1.1 100 Continue\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 408"), "{r:?}");
        assert!(r.contains("x-switchyard-error: client_timeout"), "{r}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }
    let lines = access_lines(&log, 5);
    let timeouts = lines.iter().filter(|l| l["status"] == 408).count();
    assert_eq!(timeouts, 4, "{lines:?}");
    let b = first_backend(&lb, 0);
    assert_eq!(b["failures_total"], 0, "{b}");
}

/// A body stalled on the client past the upstream's `timeouts.request` (shorter here than the
/// header timeout) is still the client's fault: 408, and nothing counted against the backend.
#[test]
fn a_deadline_that_passes_while_the_body_waits_on_the_client_is_a_408() {
    let be = backends(1);
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\nheader_timeout = \"10s\"\n\
         [upstreams.web]\nbackends = [{}]\ntimeouts = {{ request = \"400ms\" }}\n",
        be.list()
    ));
    for stalled in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\nhello",
    ] {
        let out = raw(lb.addr, stalled);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    }
    let b = first_backend(&lb, 0);
    assert_eq!(b["failures_total"], 0, "{b}");
}

#[test]
fn request_body_over_the_limit_gets_413() {
    let be = backends(1);
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\nmax_request_body = \"1KiB\"\n[upstreams.web]\nbackends = [{}]\n",
        be.list()
    ));
    let c = client();
    let r = c
        .post(lb.url("/"))
        .header("x-request-id", "big-1")
        .body(vec![b'a'; 2048])
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-request-id"], "big-1");
    let r = c.post(lb.url("/")).body(vec![b'a'; 512]).send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn retry_goes_to_another_backend_when_one_is_down() {
    let be = backends(2);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{dead}\" }}, {}]",
        be.list()
    )));
    let c = client();
    for _ in 0..30 {
        let (status, _) = get_backend(&c, &lb.url("/"));
        assert_eq!(status, 200);
    }
}

/// Sockets to `port` in CLOSE_WAIT (the peer closed, this side not yet), from /proc/net/tcp.
fn close_wait_to(port: u16) -> usize {
    let t = std::fs::read_to_string("/proc/net/tcp").unwrap();
    t.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "08"
                && f[2].rsplit(':').next() == Some(&format!("{port:04X}")[..])
        })
        .count()
}

/// A keep-alive backend answering `200 ok` on port `.0`; it closes a connection idle for
/// `idle_close` (if set). `.1` counts connections that ended, whichever side closed them.
fn keepalive_backend(
    idle_close: Option<Duration>,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let srv = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = srv.local_addr().unwrap().port();
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ended2 = ended.clone();
    std::thread::spawn(move || {
        for s in srv.incoming() {
            let Ok(mut s) = s else { return };
            let ended = ended2.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
                impl Drop for Count {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let _count = Count(ended);
                let _ = s.set_read_timeout(idle_close);
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                loop {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.clear();
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, ended)
}

#[test]
fn backend_closing_idle_connections_leaves_no_close_wait_and_no_error() {
    // The backend closes a connection once it has been idle for 200 ms, a short keep-alive
    // timeout as many servers have.
    let (port, closed) = keepalive_backend(Some(Duration::from_millis(200)));
    let lb = start(&config(&format!(
        "backends = [{{ address = \"127.0.0.1:{port}\" }}]"
    )));
    let c = client();
    for _ in 0..4 {
        let r = c.get(lb.url("/")).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), "ok");
    }
    // The backend closes the pooled connection after 200 ms; the worker's sweep notices.
    assert!(eventually(Duration::from_secs(3), || closed
        .load(std::sync::atomic::Ordering::SeqCst)
        >= 1));
    assert!(
        eventually(Duration::from_secs(6), || close_wait_to(port) == 0),
        "{} connections to the backend left in CLOSE_WAIT",
        close_wait_to(port)
    );
    // And the next request finds no dead connection in its way.
    let r = c.get(lb.url("/")).send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn idle_pooled_connections_are_closed_after_the_idle_timeout_without_traffic() {
    // The backend never closes; Switchyard must, `timeouts.idle` after the last request.
    let (port, ended) = keepalive_backend(None);
    let lb = start(&config(&format!(
        "backends = [{{ address = \"127.0.0.1:{port}\" }}]\ntimeouts = {{ idle = \"300ms\" }}"
    )));
    let c = client();
    let r = c.get(lb.url("/")).send().unwrap();
    assert_eq!(r.text().unwrap(), "ok");
    let t = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || ended
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1),
        "the idle backend connection is still open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

/// The kernel's TCP state (hex, as /proc/net/tcp shows it: 01 established, 03 SYN received) of
/// the server side of the connection from local port `client` to local port `server`.
fn server_side_state(server: u16, client: u16) -> Option<String> {
    let t = std::fs::read_to_string("/proc/net/tcp").unwrap();
    t.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3
            && f[1].ends_with(&format!(":{server:04X}"))
            && f[2].ends_with(&format!(":{client:04X}")))
        .then(|| f[3].to_string())
    })
}

#[test]
fn connections_are_handed_over_once_they_send_unless_defer_accept_is_off() {
    use std::io::{Read, Write};
    let be = backends(1);
    for defer in [true, false] {
        let lb = start(&format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\ndefer_accept = {defer}\n[upstreams.web]\nbackends = [{}]\n",
            be.list()
        ));
        let port = lb.addr.port();
        let mut s = std::net::TcpStream::connect(lb.addr).unwrap();
        let client = s.local_addr().unwrap().port();
        std::thread::sleep(Duration::from_millis(200));
        // Deferred, the connection is still a request socket in the kernel (SYN received): the
        // handshake's last ACK did not make it acceptable. Not deferred, it is established.
        let want = if defer { "03" } else { "01" };
        assert_eq!(
            server_side_state(port, client).as_deref(),
            Some(want),
            "defer_accept = {defer}"
        );
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    // A client silent past the deferral (one second, one SYN-ACK retransmission) is handed over
    // anyway, and served when it speaks.
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let mut s = std::net::TcpStream::connect(lb.addr).unwrap();
    let client = s.local_addr().unwrap().port();
    let t0 = Instant::now();
    while server_side_state(lb.addr.port(), client).as_deref() != Some("01") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never handed over: {:?}",
            server_side_state(lb.addr.port(), client)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
