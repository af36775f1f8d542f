//! Request mirroring (`mirror` on a route): the shadow gets a faithful copy of each request,
//! body included, while the client gets the primary's answer and never waits for the shadow,
//! nor sees it fail.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the shadow received.
#[derive(Debug)]
struct Seen {
    method: String,
    path_and_query: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A shadow origin that reports every request it reads, and answers 500 after `/slow/...`
/// made it wait 3 s: neither may reach the client.
fn recording_shadow() -> (SocketAddr, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes());
                            let slow = parts.uri.path().starts_with("/slow");
                            let _ = tx.send(Seen {
                                method: parts.method.to_string(),
                                path_and_query: parts.uri.to_string(),
                                headers: parts.headers,
                                body: body.unwrap_or_default(),
                            });
                            if slow {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            let mut r = http::Response::new(Full::new(Bytes::from("shadow")));
                            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    (addr, rx)
}

fn mirror_config(primary: SocketAddr, shadow: SocketAddr, mirror: &str) -> String {
    format!(
        "workers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"primary\"\nmirror = {mirror}\n\
         request_headers = {{ set = {{ \"x-env\" = \"prod\" }} }}\n\
         [upstreams.primary]\nbackends = [{{ address = \"{primary}\" }}]\n\
         [upstreams.shadow]\nbackends = [{{ address = \"{shadow}\" }}]\n\
         retry = {{ attempts = 1 }}\n"
    )
}

fn next(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the shadow got no copy")
}

fn mirrored(lb: &Lb, result: &str) -> u64 {
    let text = client()
        .get(lb.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let prefix = format!("switchyard_mirrored_requests_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
}

#[test]
fn a_route_mirror_copies_each_request_to_the_shadow_and_the_client_never_waits_for_it() {
    let be = backends(1);
    let (shadow, rx) = recording_shadow();
    let lb = start(&mirror_config(
        be.addrs[0],
        shadow,
        "{ upstream = \"shadow\" }",
    ));
    let c = client();

    // HTTP/1.1 GET: the relay hands the route to hyper's path, which makes the copy.
    let r = c.get(lb.url("/a/b?x=1")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-demo-backend"], "b0");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let s = next(&rx);
    assert_eq!(
        (s.method.as_str(), s.path_and_query.as_str()),
        ("GET", "/a/b?x=1")
    );
    assert_eq!(s.headers["x-switchyard-mirror"], "primary");
    assert_eq!(
        s.headers["x-request-id"],
        id.as_str(),
        "the copy keeps the request's id"
    );
    assert_eq!(
        s.headers["x-env"], "prod",
        "the route's edits apply to the copy"
    );
    assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
    assert!(s.headers["host"]
        .to_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // A body of known length reaches both.
    let r = c
        .post(lb.url("/upload"))
        .body("hello mirror")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().unwrap();
    assert_eq!(doc["body_bytes"], 12);
    let s = next(&rx);
    assert_eq!(s.method, "POST");
    assert_eq!(&s.body[..], b"hello mirror");

    // HTTP/2 too, its cookie fields joined into one line, as the primary gets them.
    let r = h2c_client()
        .put(lb.url("/h2"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body("x2")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().unwrap();
    assert_eq!(doc["headers"]["cookie"], "a=1; b=2");
    let s = next(&rx);
    assert_eq!((s.method.as_str(), &s.body[..]), ("PUT", &b"x2"[..]));
    let cookies: Vec<_> = s.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);

    // The shadow takes 3 s and answers 500: the client has the primary's 200 long before.
    let t = Instant::now();
    let r = c.get(lb.url("/slow/1")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the client waited {:?} for the shadow",
        t.elapsed()
    );
    assert_eq!(next(&rx).path_and_query, "/slow/1");
    assert!(eventually(Duration::from_secs(6), || mirrored(&lb, "sent") == 4));

    // A streamed body (chunked, no length) is not held back for the shadow: not copied.
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(b"no length".to_vec()));
    let r = c.post(lb.url("/streamed")).body(chunked).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mirrored(&lb, "skipped"), 1);
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

    // Half of the requests: 400 draws, mean 200, standard deviation 10.
    let both = |m: &str| mirror_config(be.addrs[0], shadow, m);
    put_config(&lb, &both("{ upstream = \"shadow\", percent = 50 }"));
    for _ in 0..400 {
        assert_eq!(c.get(lb.url("/half")).send().unwrap().status(), 200);
    }
    let mut n = 0;
    while rx.recv_timeout(Duration::from_millis(500)).is_ok() {
        n += 1;
    }
    assert!((140..260).contains(&n), "{n} of 400 copied at 50 %");

    // A shadow that is down costs the client nothing; its failures are counted.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    put_config(
        &lb,
        &mirror_config(be.addrs[0], dead, "{ upstream = \"shadow\" }"),
    );
    let failed = mirrored(&lb, "failed");
    for _ in 0..3 {
        assert_eq!(c.get(lb.url("/")).send().unwrap().status(), 200);
    }
    assert!(eventually(Duration::from_secs(5), || mirrored(
        &lb, "failed"
    ) >= failed + 3));

    // A mirror that names nothing, or no share, is refused with both fields; nothing applied.
    let paths = refused_paths(&lb, &both("{ upstream = \"nope\", percent = 0 }"));
    for p in ["routes[0].mirror.upstream", "routes[0].mirror.percent"] {
        assert!(paths.iter().any(|x| x == p), "{p} not named: {paths:?}");
    }
    // Nor may a route mirror to its own upstream: every request would reach it twice.
    let paths = refused_paths(&lb, &both("{ upstream = \"primary\" }"));
    assert!(
        paths.iter().any(|x| x == "routes[0].mirror.upstream"),
        "{paths:?}"
    );
    let r = c.get(lb.url("/")).send().unwrap();
    assert_eq!(r.status(), 200);
}
