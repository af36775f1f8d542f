//! Response compression, a route's `compress`: which responses are gzipped and which are not,
//! the headers that change with it, streaming (a backend's pause flushes what it sent), HTTP/1
//! and h2c clients, the metrics, and the config's refusals.

use crate::relay::{scripted, scripted_counted};
use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

fn page() -> String {
    "<p>the same line, again and again, compresses well</p>\n".repeat(100)
}

/// Answers by path: each a case of what may or may not be compressed.
fn answer(req: &str) -> (Vec<u8>, bool) {
    let path = req.split(' ').nth(1).unwrap_or("/");
    let page = page();
    let head = req.starts_with("HEAD ");
    let with = |extra: &str, ct: &str, body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n{extra}\r\n{}",
            body.len(),
            if head { "" } else { body }
        )
    };
    let resp = match path {
        "/page" => with(
            "ETag: \"v1\"\r\nAccept-Ranges: bytes\r\nVary: Origin\r\n",
            "text/html; charset=utf-8",
            &page,
        ),
        "/small" => with("", "text/plain", "small"),
        // Declares the whole page, sends half, and closes: a backend dying mid-body.
        "/cut" => {
            let r = with("", "text/html", &page);
            return (r.as_bytes()[..r.len() - page.len() / 2].to_vec(), true);
        }
        "/png" => with("", "image/png", &page),
        "/encoded" => with("Content-Encoding: br\r\n", "text/html", &page),
        "/no-transform" => with("Cache-Control: public, no-transform\r\n", "text/html", &page),
        "/trailers" => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n{:x}\r\n{page}\r\n0\r\nx-checksum: 42\r\n\r\n",
            page.len()
        ),
        "/chunked" => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{page}\r\n0\r\n\r\n",
            page.len()
        ),
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
    };
    (resp.into_bytes(), false)
}

fn gunzip(b: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(b)
        .read_to_string(&mut out)
        .expect("a whole gzip stream");
    out
}

/// One route to `backend`, with `route` (TOML lines) for the rest of it.
fn config_for(backend: SocketAddr, route: &str) -> String {
    format!(
        "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\n\
         [[routes]]\n{route}\n\n[upstreams.web]\nbackends = [{{ address = \"{backend}\" }}]\n"
    )
}

fn lb_for(backend: SocketAddr, compress: &str) -> Lb {
    start(&config_for(
        backend,
        &format!("upstream = \"web\"\ncompress = {compress}"),
    ))
}

#[test]
fn a_route_compresses_what_the_client_accepts_and_leaves_the_rest() {
    let (backend, _) = scripted(answer);
    let lb = lb_for(backend, "{}");
    let c = client();
    let get = |path: &str, accept: Option<&str>| {
        let mut r = c.get(lb.url(path));
        if let Some(a) = accept {
            r = r.header("accept-encoding", a);
        }
        r.send().unwrap()
    };

    // Compressed: the encoding named, the length gone, the validator weak, ranges off, and
    // Accept-Encoding added to the backend's Vary.
    let r = get("/page", Some("br;q=1, gzip;q=0.8"));
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-encoding"], "gzip");
    assert!(h.get("content-length").is_none(), "{h:?}");
    assert_eq!(h["etag"], "W/\"v1\"");
    assert!(h.get("accept-ranges").is_none());
    let vary: Vec<_> = h
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(vary, ["Origin", "Accept-Encoding"]);
    let body = r.bytes().unwrap();
    assert!(body.len() * 10 < page().len(), "{} bytes", body.len());
    assert_eq!(gunzip(&body), page());

    // A chunked body too.
    let r = get("/chunked", Some("gzip"));
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(gunzip(&r.bytes().unwrap()), page());

    // Not asked for, or refused with q=0: as the backend sent it, still marked as varying.
    for accept in [None, Some("gzip;q=0"), Some("br, deflate")] {
        let r = get("/page", accept);
        let h = r.headers().clone();
        assert!(h.get("content-encoding").is_none(), "{accept:?}: {h:?}");
        assert_eq!(h["content-length"], page().len().to_string().as_str());
        assert_eq!(h["etag"], "\"v1\"");
        assert!(h.get_all("vary").iter().any(|v| v == "Accept-Encoding"));
        assert_eq!(r.text().unwrap(), page());
    }

    // Too short, not a listed type, already encoded, or `no-transform`: untouched.
    for path in ["/small", "/png", "/encoded", "/no-transform"] {
        let r = get(path, Some("gzip"));
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        let enc = h.get("content-encoding").map(|v| v.to_str().unwrap());
        assert_eq!(enc, (path == "/encoded").then_some("br"), "{path}: {h:?}");
        assert!(h.get("content-length").is_some(), "{path}: {h:?}");
        assert_eq!(
            h.get_all("vary").iter().count(),
            usize::from(path != "/png"),
            "{path}: only listed types vary"
        );
    }

    // HEAD gets the headers a GET's compressed answer has, and no body.
    let out = raw_all(
        lb.addr,
        b"HEAD /page HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    );
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("content-encoding: gzip"), "{out}");
    assert!(lower.contains("etag: w/\"v1\""), "{out}");
    assert!(!lower.contains("content-length"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "a body after HEAD's head: {out}");

    // A backend that dies mid-body: the client's response ends unfinished (no last chunk, no
    // whole gzip stream), never looking complete.
    let cut = c
        .get(lb.url("/cut"))
        .header("accept-encoding", "gzip")
        .send();
    let got = cut.map(|r| r.bytes());
    assert!(
        !matches!(got, Ok(Ok(_))),
        "a cut body read as complete: {got:?}"
    );

    // An HTTP/2 client is served the same way.
    let r = h2c_client()
        .get(lb.url("/page"))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(gunzip(&r.bytes().unwrap()), page());

    let m = c
        .get(lb.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in metrics"))
    };
    // The counters are the process's, shared with the other tests running beside this one.
    assert!(value("switchyard_compressed_responses_total") >= 3);
    let (i, o) = (
        value("switchyard_compression_bytes_total{stage=\"in\"}"),
        value("switchyard_compression_bytes_total{stage=\"out\"}"),
    );
    assert!(i >= 3 * page().len() as u64, "in {i}");
    assert!(o > 0 && o * 10 < i, "in {i}, out {o}");
}

/// A compressed body whose backend sends trailers still ends the exchange as complete: the
/// backend connection goes back to the pool, so the next request reuses it.
#[test]
fn a_compressed_body_with_trailers_leaves_its_backend_connection_reusable() {
    let (backend, _, accepted) = scripted_counted(answer);
    let lb = lb_for(backend, "{}");
    for _ in 0..3 {
        // `TE: trailers` keeps hyper's client, which passes trailers on.
        let out = raw_all(
            lb.addr,
            b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200"), "{out:.200}");
        assert!(
            out.to_ascii_lowercase().contains("content-encoding: gzip"),
            "{out:.300}"
        );
        // After the last compressed bytes, the backend's trailer.
        assert!(
            out.ends_with("\r\n0\r\nx-checksum: 42\r\n\r\n"),
            "{out:.300}"
        );
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "backend connections"
    );
}

/// A backend that sends the head and a first chunk, then waits for the test's word before
/// the last one: a server-sent stream, or a long poll.
fn pausing_backend() -> (SocketAddr, mpsc::Sender<()>) {
    let srv = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = srv.local_addr().unwrap();
    let (go, wait) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut s, _) = srv.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let first = "{\"event\": \"first\"}\n";
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
            first.len()
        );
        let _ = wait.recv_timeout(Duration::from_secs(10));
        let last = "{\"event\": \"last\"}\n";
        let _ = write!(s, "{:x}\r\n{last}\r\n0\r\n\r\n", last.len());
    });
    (addr, go)
}

#[test]
fn compressed_bytes_reach_the_client_when_the_backend_pauses() {
    let (backend, go) = pausing_backend();
    let lb = lb_for(backend, "{ min_length = 0 }");
    let mut r = client()
        .get(lb.url("/events"))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    // What arrived before the backend's next bytes decodes to its first event: the pause
    // flushed it (were it held for more input, this read would wait the client's 20 s out).
    let mut dec = flate2::write::GzDecoder::new(Vec::new());
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(dec.get_ref()).contains("first") {
        let n = r
            .read(&mut buf)
            .expect("the first event, before the backend sends more");
        assert!(n > 0, "the body ended early");
        dec.write_all(&buf[..n]).unwrap();
        dec.flush().unwrap();
    }
    assert!(!String::from_utf8_lossy(dec.get_ref()).contains("last"));
    go.send(()).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    dec.write_all(&rest).unwrap();
    let all = String::from_utf8(dec.finish().unwrap()).unwrap();
    assert_eq!(all, "{\"event\": \"first\"}\n{\"event\": \"last\"}\n");
}

#[test]
fn compress_settings_that_cannot_work_are_refused() {
    let (backend, _) = scripted(answer);
    let lb = lb_for(backend, "{}");
    let with = |route: &str| config_for(backend, route);
    let paths = refused_paths(
        &lb,
        &with("upstream = \"web\"\ncompress = { level = 0, content_types = [\"html\", \"text/*\", \"text/html; charset=utf-8\"] }"),
    );
    for p in [
        "routes[0].compress.level",
        "routes[0].compress.content_types[0]",
        "routes[0].compress.content_types[2]",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not named: {paths:?}");
    }
    assert!(!paths
        .iter()
        .any(|x| x == "routes[0].compress.content_types[1]"));
    let paths = refused_paths(
        &lb,
        &with("upstream = \"web\"\ncompress = { content_types = [] }"),
    );
    assert_eq!(paths, ["routes[0].compress.content_types"]);
    // A route that answers itself forwards no response to compress.
    let paths = refused_paths(
        &lb,
        &with("respond = { status = 200, body = \"ok\" }\ncompress = {}"),
    );
    assert_eq!(paths, ["routes[0].compress"]);
    // Nothing was applied: the route still compresses with the defaults.
    let r = client()
        .get(lb.url("/page"))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
}
