//! The HTTP/1 byte relay (src/proxy/relay): what it does with each framing a backend may use,
//! the header rules on both heads, pipelining, and handing a connection to hyper mid-way.
//! Backends here are scripted over raw sockets so every byte on the wire is known.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Seen = Arc<Mutex<Vec<String>>>;

/// A backend that reads each request (head and `Content-Length` or chunked body, kept as text
/// in `seen`) and writes what `answer` gives for it, pausing 100 ms at each NUL byte;
/// `answer` returning `(bytes, true)` closes the connection after writing.
fn scripted(answer: fn(&str) -> (Vec<u8>, bool)) -> (SocketAddr, Seen) {
    let srv = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = srv.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in srv.incoming() {
            let Ok(mut s) = s else { return };
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
    (addr, seen)
}

/// Length of the first complete request in `b`, if there is one.
fn request_len(b: &[u8]) -> Option<usize> {
    let head = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&b[..head]).to_ascii_lowercase();
    if text.contains("transfer-encoding: chunked") {
        let end = b[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head + end + 5);
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
