//! The HTTP/1 byte relay (src/proxy/relay): what it does with each framing a backend may use,
//! the header rules on both heads, pipelining, and handing a connection to hyper mid-way.
//! Backends here are scripted over raw sockets so every byte on the wire is known.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) type Seen = Arc<Mutex<Vec<String>>>;

/// A backend that reads each request (head and `Content-Length` or chunked body, kept as text
/// in `seen`) and writes what `answer` gives for it, pausing 100 ms at each NUL byte;
/// `answer` returning `(bytes, true)` closes the connection after writing.
pub(crate) fn scripted(answer: fn(&str) -> (Vec<u8>, bool)) -> (SocketAddr, Seen) {
    let (addr, seen, _) = scripted_counted(answer);
    (addr, seen)
}

/// [`scripted`], also counting the connections it accepted.
pub(crate) fn scripted_counted(
    answer: fn(&str) -> (Vec<u8>, bool),
) -> (SocketAddr, Seen, Arc<AtomicUsize>) {
    let srv = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = srv.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in srv.incoming() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, SeqCst);
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(len) = request_len(&got) else {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let req: Vec<u8> = got.drain(..len).collect();
                    let req = String::from_utf8_lossy(&req).into_owned();
                    let (resp, close) = answer(&req);
                    seen.lock().unwrap().push(req);
                    // `PAUSE` in a scripted answer: write what comes before, wait, write the rest.
                    for (i, part) in resp.split(|b| *b == 0).enumerate() {
                        if i > 0 {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        if s.write_all(part).is_err() {
                            return;
                        }
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen, accepted)
}

/// Length of the first complete request in `b`, if there is one.
fn request_len(b: &[u8]) -> Option<usize> {
    let head = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&b[..head]).to_ascii_lowercase();
    if text.contains("transfer-encoding: chunked") {
        // The last chunk, then the trailer section (maybe empty) up to its blank line.
        let body = &b[head..];
        let last = if body.starts_with(b"0\r\n") {
            0
        } else {
            body.windows(5).position(|w| w == b"\r\n0\r\n")? + 2
        };
        let rest = &body[last + 3..];
        let end = if rest.starts_with(b"\r\n") {
            2
        } else {
            rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4
        };
        return Some(head + last + 3 + end);
    }
    let len = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (b.len() >= head + len).then_some(head + len)
}

/// Reads from `s` until `done` says the bytes so far are complete (or 5 s pass).
fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&out) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn lb_for(backend: SocketAddr) -> Lb {
    start(&config(&format!(
        "backends = [{{ address = \"{backend}\" }}]"
    )))
}

fn answer(req: &str) -> (Vec<u8>, bool) {
    let path = req.split(' ').nth(1).unwrap_or("");
    let r: &[u8] = match path {
        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive, x-internal\r\nx-internal: 1\r\n\r\n5\r\nhello\r\n6;ext\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        "/interim" => b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "/named-length" => b"HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 3\r\n\r\nxyz",
        "/slow" => b"\0\0HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "/trailers" => b"HTTP/1.1 200 OK\r\nTrailer: x-checksum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
        "/eof" => return (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_vec(), true),
        "/echo" => {
            let body = req.split("\r\n\r\n").nth(1).unwrap_or("");
            return (
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes(),
                false,
            );
        }
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc",
    };
    (r.to_vec(), false)
}

#[test]
fn chunked_interim_and_close_delimited_responses_relay_on_one_client_connection() {
    let (backend, seen) = scripted(answer);
    let lb = lb_for(backend);
    let mut c = TcpStream::connect(lb.addr).unwrap();

    c.write_all(b"GET /chunked HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-secret\r\nx-secret: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n").unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"0\r\nx-trailer: 1\r\n\r\n"));
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    let lower = r.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{r}");
    assert!(lower.contains("x-request-id: "), "{r}");
    // Hop-by-hop headers of the response, including the one its Connection named, are gone.
    assert!(
        !lower.contains("x-internal") && !lower.contains("connection:"),
        "{r}"
    );
    assert!(
        r.ends_with("5\r\nhello\r\n6;ext\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"),
        "{r}"
    );

    // Same connection: an interim 103 is not passed on, the final response is.
    c.write_all(b"GET /interim HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"\r\n\r\nok"));
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && !r.contains("103"),
        "{r}"
    );

    // A body delimited by the backend's close: relayed whole, then the client connection closes.
    c.write_all(b"GET /eof HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let r = read_until(&mut c, |_| false);
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
    assert!(r.ends_with("\r\n\r\nuntil the end"), "{r}");

    // What the backend saw: hop-by-hop request headers removed, forwarding headers set.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let first = seen[0].to_ascii_lowercase();
    assert!(first.starts_with("get /chunked http/1.1\r\n"), "{first}");
    assert!(first.contains("host: app.test\r\n"), "{first}");
    assert!(
        first.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"),
        "{first}"
    );
    assert!(first.contains("x-forwarded-proto: http\r\n"), "{first}");
    assert!(first.contains("x-forwarded-host: app.test\r\n"), "{first}");
    assert!(first.contains("x-request-id: "), "{first}");
    for gone in ["x-secret", "keep-alive", "connection:", "https"] {
        assert!(!first.contains(gone), "{gone} was forwarded: {first}");
    }
}

#[test]
fn pipelined_requests_and_bodies_are_answered_in_order() {
    let (backend, seen) = scripted(answer);
    let lb = lb_for(backend);
    let mut c = TcpStream::connect(lb.addr).unwrap();
    c.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nfirstGET /plain HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine-1\r\n\r\nPOST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nsecond",
    )
    .unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"second"));
    let bodies: Vec<&str> = r
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|m| m.split("\r\n\r\n").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(bodies, ["first", "abc", "second"], "{r}");
    // A client's request id is kept and echoed.
    assert!(r.contains("x-request-id: mine-1\r\n"), "{r}");
    assert!(seen.lock().unwrap()[1].contains("X-Request-Id: mine-1\r\n"));
}

#[test]
fn a_request_the_relay_does_not_take_moves_the_connection_to_hyper_intact() {
    let (backend, seen) = scripted(answer);
    let lb = lb_for(backend);
    let mut c = TcpStream::connect(lb.addr).unwrap();
    c.write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"abc"));
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    // A chunked request body is hyper's to handle; the connection carries on there.
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /plain HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"abc"));
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 2, "{r}");
    assert!(r.contains("hello"), "{r}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].contains("hello"), "{}", seen[1]);
    // Malformed heads are answered by hyper too: 400, never forwarded.
    let r = raw(lb.addr, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(seen.len(), 3);
}

#[test]
fn a_broken_backend_response_is_a_502_and_the_client_connection_survives() {
    let (backend, _) = scripted(|req| {
        if req.starts_with("GET /bad ") {
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                false,
            )
        } else if req.starts_with("GET /garbage ") {
            (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), true)
        } else {
            answer(req)
        }
    });
    let lb = lb_for(backend);
    let mut c = TcpStream::connect(lb.addr).unwrap();
    c.write_all(b"GET /garbage HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"upstream_reset\n"));
    assert!(r.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{r}");
    assert!(r.contains("x-switchyard-error: upstream_reset\r\n"), "{r}");
    c.write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"abc"));
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    // Malformed chunked coding at the start of the body: nothing was sent yet, so a 502.
    c.write_all(b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"upstream_reset\n"));
    assert!(r.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{r}");
    assert!(!r.contains("zz"), "{r}");
}

#[test]
fn a_connection_header_naming_the_framing_cannot_desynchronise_either_side() {
    let (backend, seen) = scripted(answer);
    let lb = lb_for(backend);
    let mut c = TcpStream::connect(lb.addr).unwrap();
    // Were Content-Length dropped as "named by Connection" while the body went on, the backend
    // would read "GET /smuggled" as a second request of its own.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    // The echo of the body (re-framed by hyper, which took this request) holds the text.
    let r = read_until(&mut c, |b| b.windows(9).any(|w| w == b"/smuggled"));
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    // The response's Connection naming its Content-Length does not remove it.
    c.write_all(b"GET /named-length HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"xyz"));
    assert!(
        r.to_ascii_lowercase().contains("content-length: 3\r\n"),
        "{r}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|r| !r.starts_with("GET /smuggled")),
        "{seen:?}"
    );
}

#[test]
fn late_bytes_after_a_response_retire_the_backend_connection() {
    // After the head of a HEAD response, the backend sends (late) a body it should not: bytes
    // that would be read as the next request's response if the connection were reused.
    let (backend, seen) = scripted(|req| {
        if req.starts_with("HEAD /f ") {
            let evil = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil";
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", evil.len());
            (format!("{head}\0{evil}").into_bytes(), false)
        } else {
            answer(req)
        }
    });
    let lb = lb_for(backend);
    let mut c = TcpStream::connect(lb.addr).unwrap();
    c.write_all(b"HEAD /f HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"\r\n\r\n"));
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    c.write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"abc") || b.ends_with(b"evil"));
    assert!(r.ends_with("abc"), "{r}");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn an_error_answering_head_has_no_body_so_the_next_response_stays_in_step() {
    // Nothing listens on the backend's port: 502 connect_failed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let lb = lb_for(addr);
    let mut c = TcpStream::connect(lb.addr).unwrap();
    c.write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_until(&mut c, |b| b.ends_with(b"connect_failed\n"));
    let parts: Vec<&str> = r.split("HTTP/1.1 502 Bad Gateway\r\n").collect();
    assert_eq!(parts.len(), 3, "{r}");
    // The HEAD answer ends with its head; the GET answer carries the body.
    assert!(parts[1].ends_with("\r\n\r\n"), "{r}");
    assert!(parts[2].ends_with("\r\n\r\n502 connect_failed\n"), "{r}");
    assert!(parts[1].contains("content-length: 19\r\n"), "{r}");
}

/// HTTP/2 requests to an HTTP/1.1 backend go over the relay's backend connections
/// (src/proxy/relay/from_hyper.rs): each framing the backend may use arrives decoded, the request
/// head carries the proxy's rewrites and a declared length, and one backend connection serves
/// request after request.
#[test]
fn h2_requests_to_an_http1_backend_decode_every_framing_and_reuse_the_connection() {
    let (backend, seen) = scripted(answer);
    let lb = lb_for(backend);
    let c = h2c_client();
    let get = |path: &str| {
        let r = c
            .get(lb.url(path))
            .header("x-secret", "1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .send()
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().unwrap())
    };
    let (status, h, body) = get("/chunked");
    assert_eq!((status, body.as_str()), (200, "hello world"));
    assert!(
        h.get("transfer-encoding").is_none() && h.get("x-internal").is_none(),
        "{h:?}"
    );
    assert_eq!(h["x-request-id"].len(), 32, "{h:?}");
    assert_eq!(get("/interim").2, "ok");
    assert_eq!(get("/plain").2, "abc");
    assert_eq!(get("/named-length").2, "xyz");
    // Close-delimited: the whole body, then the backend connection is not reused.
    assert_eq!(get("/eof").2, "until the end");
    assert_eq!(get("/plain").2, "abc");

    // A replayable body (PUT is idempotent) goes with its length; HEAD gets no body.
    let r = c.put(lb.url("/echo")).body("ping").send().unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().unwrap()),
        (200, "ping".to_string())
    );
    let r = c.head(lb.url("/plain")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 8, "{seen:?}");
    let first = seen[0].to_ascii_lowercase();
    assert!(first.starts_with("get /chunked http/1.1\r\n"), "{first}");
    assert!(first.contains("x-forwarded-for: 127.0.0.1\r\n"), "{first}");
    assert!(first.contains("x-request-id: "), "{first}");
    assert!(
        first.contains("x-secret: 1\r\n"),
        "end-to-end headers pass: {first}"
    );
    // Cookie fields split by HTTP/2 travel as one HTTP/1.1 header.
    assert!(first.contains("cookie: a=1; b=2\r\n"), "{first}");
    assert_eq!(first.matches("cookie:").count(), 1, "{first}");
    let put = seen[6].to_ascii_lowercase();
    assert!(put.starts_with("put /echo http/1.1\r\n"), "{put}");
    assert_eq!(put.matches("content-length").count(), 1, "{put}");
    assert!(
        put.contains("content-length: 4\r\n") && put.ends_with("\r\n\r\nping"),
        "{put}"
    );
    assert!(seen[7]
        .to_ascii_lowercase()
        .starts_with("head /plain http/1.1\r\n"));
}

/// The same relay connections, seen from the backend: sequential HTTP/2 requests share one
/// connection, one closed by the backend is replaced, and a body cut short is an error on the
/// client's stream, never a short success.
#[test]
fn h2_requests_share_relay_connections_and_a_cut_body_fails_the_stream() {
    let (backend, _, accepted) = scripted_counted(|req| {
        if req.starts_with("GET /cut ") {
            // Promises 100 bytes, sends 5, closes.
            return (
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello".to_vec(),
                true,
            );
        }
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            false,
        )
    });
    let lb = lb_for(backend);
    let c = h2c_client();
    for _ in 0..20 {
        let r = c.get(lb.url("/")).send().unwrap();
        assert_eq!(r.text().unwrap(), "ok");
    }
    assert_eq!(
        accepted.load(SeqCst),
        1,
        "20 sequential requests, one backend connection"
    );
    // The reset may overtake the response head (h2 drops a reset stream's queued frames), so
    // the error may come from the request or from the body; never a complete 200.
    let cut = c.get(lb.url("/cut")).send().and_then(|r| r.bytes());
    assert!(
        cut.is_err(),
        "a body cut short must not read as complete: {cut:?}"
    );
    // The cut connection is gone; the next request gets a new one and succeeds.
    let r = c.get(lb.url("/")).send().unwrap();
    assert_eq!(r.text().unwrap(), "ok");
    assert_eq!(accepted.load(SeqCst), 2);
}

/// Large streamed (chunked) responses through the same path, to an HTTP/2 client and to an
/// HTTP/1.0 client (which the byte relay leaves to hyper's server): every byte arrives, decoded,
/// and framed anew for each client.
#[test]
fn streamed_responses_reach_h2_and_http10_clients_whole() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let r = h2c_client().get(lb.url("/stream/4096")).send().unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.bytes().unwrap().len(), 4096 * 1024);

    let r = raw(lb.addr, b"GET /stream/3 HTTP/1.0\r\nHost: a\r\n\r\n");
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    assert_eq!(body.len(), 3 * 1024, "{head}");
}

/// A backend that stalls mid-body on an HTTP/2 request is given up after the upstream's idle
/// timeout: the client's stream fails instead of hanging, as on the relay's own path.
#[test]
fn h2_response_body_stalled_past_the_idle_timeout_fails_the_stream() {
    let (backend, _) = scripted(|_| {
        // Promises 100 bytes, sends 5, then nothing (the connection stays open).
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello".to_vec(),
            false,
        )
    });
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{backend}\" }}]\ntimeouts = {{ idle = \"300ms\" }}"
    )));
    let started = std::time::Instant::now();
    let r = h2c_client().get(lb.url("/")).send().and_then(|r| r.bytes());
    assert!(r.is_err(), "a stalled body must fail: {r:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "gave up after {took:?}");
}

/// One response with a `Content-Length` body from `c`.
fn read_response(c: &mut TcpStream) -> String {
    read_until(c, |b| {
        let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
        let len = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        b.len() >= end + 4 + len
    })
}

#[test]
fn each_request_on_a_kept_alive_connection_gets_its_whole_timeout() {
    // The relay moves its one timer per connection lazily: a later deadline is only noted,
    // and the timer, firing at the earlier one, waits on. Each of these answers takes 250 ms of
    // a 400 ms timeout and starts before the previous request's deadline, so a timer that gave
    // up when it first fired would answer the second one 504.
    let be = backends(1);
    let lb = start(&config(&format!(
        "backends = [{}]\ntimeouts = {{ request = \"400ms\" }}",
        be.list()
    )));
    let mut c = TcpStream::connect(lb.addr).unwrap();
    for i in 0..3 {
        c.write_all(b"GET /delay/250 HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let r = read_response(&mut c);
        assert!(r.starts_with("HTTP/1.1 200 "), "request {i}: {r}");
    }
    // And a deadline still ends a request that overruns it, on the same connection.
    let t = std::time::Instant::now();
    c.write_all(b"GET /delay/3000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c);
    assert!(r.starts_with("HTTP/1.1 504 "), "{r}");
    assert!(r.contains("upstream_timeout"), "{r}");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

/// What the origin got last, lowercased (the relay copies the client's lines as they came,
/// hyper writes names in lowercase).
pub(crate) fn last_seen(seen: &Seen) -> String {
    seen.lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

#[test]
fn forwarding_headers_keep_every_client_line_and_host_follows_the_request_target() {
    let (addr, seen) = scripted(answer);
    let lb = lb_for(addr);
    let to = lb.addr;
    // Two X-Forwarded-For lines are one list (RFC 9110 §5.3), the client appended at its end:
    // on the relay (a plain GET) and on hyper's path (a chunked body goes there).
    let xff = "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n";
    let relayed = format!("GET / HTTP/1.1\r\nHost: a\r\n{xff}Connection: close\r\n\r\n");
    let via_hyper = format!("POST / HTTP/1.1\r\nHost: a\r\n{xff}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n");
    for req in [relayed, via_hyper] {
        let resp = raw(to, req.as_bytes());
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let got = last_seen(&seen);
        assert!(
            got.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 127.0.0.1\r\n"),
            "{got}"
        );
        assert_eq!(got.matches("x-forwarded-for").count(), 1, "{got}");
    }
    // HTTP/1.0 without Host: the client's X-Forwarded-Host does not pass, and the HTTP/1.1
    // request upstream gets a Host (the upstream's name, as NGINX's `$proxy_host`).
    let resp = raw(
        to,
        b"GET / HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    let got = last_seen(&seen);
    assert!(!got.contains("evil"), "{got}");
    assert!(got.contains("\r\nhost: web\r\n"), "{got}");
    // Absolute-form: the target's authority replaces Host (RFC 9112 §3.2.2).
    let resp = raw(
        to,
        b"GET http://other.test/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let got = last_seen(&seen);
    assert!(got.starts_with("get /x http/1.1\r\n"), "{got}");
    assert!(got.contains("\r\nhost: other.test\r\n"), "{got}");
    assert!(
        got.contains("\r\nx-forwarded-host: other.test\r\n"),
        "{got}"
    );
    assert!(!got.contains("host: a\r\n"), "{got}");
    // Two Host lines, and CONNECT: 400, and nothing reaches the origin.
    let before = seen.lock().unwrap().len();
    let two_hosts = raw(
        to,
        b"GET / HTTP/1.1\r\nHost: public.example\r\nHost: admin.example\r\n\r\n",
    );
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let connect = raw(
        to,
        format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    );
    assert!(connect.starts_with("HTTP/1.1 400"), "{connect}");
    assert_eq!(seen.lock().unwrap().len(), before);
}

#[test]
fn a_response_in_flight_when_shutdown_begins_says_the_connection_closes() {
    let (addr, _seen) = scripted(answer);
    let lb = lb_for(addr);
    let mut c = TcpStream::connect(lb.addr).unwrap();
    // A first exchange makes the connection a kept-alive one.
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let first = read_until(&mut c, |b| b.ends_with(b"abc"));
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    // The backend takes 200 ms to answer; shutdown begins meanwhile.
    c.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(80));
    lb.running().begin_shutdown();
    let second = read_until(&mut c, |b| b.ends_with(b"ok"));
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{second}"
    );
}

/// `timeouts.request` covers the whole exchange (the contract's words; Envoy's route timeout):
/// a body still trickling in when it passes is cut, on the relay's own path (the client
/// connection closes short of the declared length) and on hyper's (the HTTP/2 stream fails),
/// and the access log says why.
#[test]
fn a_response_body_still_trickling_at_the_request_deadline_is_cut() {
    let (backend, _) = scripted(|_| {
        // 20 body bytes, one per 100 ms: 2 s in all, each gap far under the idle timeout.
        let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n".to_vec();
        for _ in 0..20 {
            r.extend_from_slice(b"\0x");
        }
        (r, false)
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_file = {:?}\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.web]\n\
         backends = [{{ address = \"{backend}\" }}]\ntimeouts = {{ request = \"700ms\" }}\n",
        log.display().to_string()
    ));
    let t = std::time::Instant::now();
    let mut c = TcpStream::connect(lb.addr).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = read_until(&mut c, |_| false);
    let took = t.elapsed();
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.len() < 20, "cut short: {body:?}");
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_millis(1800), "{took:?}");

    let t = std::time::Instant::now();
    let r = h2c_client().get(lb.url("/")).send().and_then(|r| r.bytes());
    assert!(
        r.is_err(),
        "the stream must fail, not end as if whole: {r:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1800),
        "{:?}",
        t.elapsed()
    );

    let lines = access_lines(&log, 2);
    for l in &lines {
        assert_eq!(l["error"], "request_timeout", "{l}");
    }
}

/// A client that stops reading is let go after the idle timeout (NGINX's `send_timeout`), so it
/// cannot hold a client connection and a backend connection for ever.
#[test]
fn a_client_that_stops_reading_is_let_go_after_the_idle_timeout() {
    let be = backends(1);
    let lb = start(&config(&format!(
        "backends = [{}]\ntimeouts = {{ idle = \"300ms\" }}",
        be.list()
    )));
    let mut c = TcpStream::connect(lb.addr).unwrap();
    // 200 MiB, chunked: far more than the socket buffers on both sides hold.
    c.write_all(b"GET /stream/204800 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(_) => break false,
        }
    };
    assert!(ended, "the proxy closed the connection");
    assert!(
        total < 100 << 20,
        "only what the buffers held went out: {total}"
    );
}

/// A backend whose response breaks off mid-body is the backend's failure, whichever path
/// relayed it: counted against it (so passive health and the breaker see it) and logged as
/// `upstream_reset`, not as a client that went away.
#[test]
fn a_response_that_breaks_off_mid_body_counts_against_the_backend() {
    let (backend, _) = scripted(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello\0".to_vec(),
            true,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_file = {:?}\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.web]\n\
         backends = [{{ address = \"{backend}\" }}]\n",
        log.display().to_string()
    ));
    let mut c = TcpStream::connect(lb.addr).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = read_until(&mut c, |_| false);
    assert!(r.ends_with("hello"), "{r}");
    let h2 = h2c_client().get(lb.url("/")).send().and_then(|r| r.bytes());
    assert!(h2.is_err(), "{h2:?}");
    let failures = || {
        lb.running().shared.current().upstreams[0].backends[0]
            .state
            .failures_total
            .load(SeqCst)
    };
    assert!(
        eventually(Duration::from_secs(5), || failures() == 2),
        "{}",
        failures()
    );
    let lines = access_lines(&log, 2);
    for l in &lines {
        assert_eq!(l["error"], "upstream_reset", "{l}");
    }
}

/// Trailers, and the `Trailer` field that announces them, reach an HTTP/1 client on both paths
/// (the relay, and hyper's, which sends only the trailer fields `Trailer` names); a client's
/// `TE: trailers` reaches the backend, and a request's own trailers reach it too.
#[test]
fn trailers_and_their_announcement_pass_both_ways_on_both_paths() {
    let (backend, seen, accepted) = scripted_counted(answer);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // One worker: backend connections are pooled per worker, and the client's connections
    // would otherwise land on either.
    let lb = start(&json_log(
        config(&format!("backends = [{{ address = \"{backend}\" }}]"))
            .replace("workers = 2", "workers = 1"),
        &log,
    ));
    let exchange = |req: &[u8]| {
        let mut c = TcpStream::connect(lb.addr).unwrap();
        c.write_all(req).unwrap();
        let out = read_until(&mut c, |_| false);
        let sent = seen
            .lock()
            .unwrap()
            .pop()
            .expect("the backend saw the request");
        (out, sent.to_ascii_lowercase())
    };
    // The response announced and ended with its trailer; the backend was told they are taken.
    let trailed = |out: &str, sent: &str| {
        let announced = out
            .to_ascii_lowercase()
            .contains("\r\ntrailer: x-checksum\r\n");
        assert!(announced, "{out}");
        assert!(out.ends_with("0\r\nx-checksum: 42\r\n\r\n"), "{out}");
        assert!(sent.contains("\r\nte: trailers\r\n"), "{sent}");
    };
    // The relay: a GET with no body.
    let (out, sent) =
        exchange(b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n");
    trailed(&out, &sent);
    let relay_connections = accepted.load(SeqCst);
    // hyper's path: a chunked request, with trailers of its own.
    let (out, sent) = exchange(
        b"POST /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nTrailer: x-req-sum\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nx-req-sum: 7\r\n\r\n",
    );
    trailed(&out, &sent);
    assert!(sent.contains("\r\ntrailer: x-req-sum\r\n"), "{sent}");
    assert!(sent.ends_with("\r\nx-req-sum: 7\r\n\r\n"), "{sent}");
    // A client that does not take trailers is not said to, and hyper's path sends it none.
    let (out, sent) = exchange(
        b"POST /trailers HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("x-checksum: 42"), "{out}");
    assert!(!sent.contains("\r\nte:"), "{sent}");
    // A body that ended in trailers was complete: its backend connection took the next request.
    assert_eq!(
        accepted.load(SeqCst) - relay_connections,
        1,
        "backend connections"
    );
    for l in access_lines(&log, 3) {
        assert_eq!(l["status"], 200, "{l}");
        assert!(l.get("error").is_none(), "{l}");
    }
}
