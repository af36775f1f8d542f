//! HTTP/2 end to end: many concurrent requests multiplexed over one backend connection per
//! worker (`protocol = "h2c"`), and a rapid-reset flood (CVE-2023-44487) from one client that
//! does not starve another client's requests.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A backend that counts its connections and the most requests it had in flight at once, and
/// takes 100 ms per request so concurrent requests overlap.
#[derive(Default)]
struct Counting {
    conns: AtomicUsize,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    versions_h2: AtomicUsize,
    requests: AtomicUsize,
}

async fn counting_backend(stats: Arc<Counting>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            stats.conns.fetch_add(1, SeqCst);
            let stats = stats.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let stats = stats.clone();
                    async move {
                        stats.requests.fetch_add(1, SeqCst);
                        if req.version() == http::Version::HTTP_2 {
                            stats.versions_h2.fetch_add(1, SeqCst);
                        }
                        let now = stats.inflight.fetch_add(1, SeqCst) + 1;
                        stats.max_inflight.fetch_max(now, SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        stats.inflight.fetch_sub(1, SeqCst);
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// An h2c (prior knowledge) client connection to `addr`.
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

#[test]
fn concurrent_requests_share_one_h2c_backend_connection() {
    let be = backends(0);
    let stats = Arc::new(Counting::default());
    let addr = be.rt.block_on(counting_backend(stats.clone()));
    let text = format!(
        "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\n\
         [upstreams.web]\nprotocol = \"h2c\"\nbackends = [{{ address = \"{addr}\" }}]\n"
    );
    let lb = start(&text);
    let statuses = be.rt.block_on(async {
        let tx = h2c(lb.addr).await;
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let mut tx = tx.clone();
                let url = format!("http://{}/r/{i}", lb.addr);
                tokio::spawn(async move {
                    let req = http::Request::get(url).body(Empty::new()).unwrap();
                    let r = tx.send_request(req).await.unwrap();
                    let s = r.status().as_u16();
                    let _ = r.into_body().collect().await;
                    s
                })
            })
            .collect();
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap());
        }
        v
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(stats.versions_h2.load(SeqCst), 64, "spoken as HTTP/2");
    assert_eq!(
        stats.conns.load(SeqCst),
        1,
        "one worker, one multiplexed connection"
    );
    assert!(
        stats.max_inflight.load(SeqCst) > 8,
        "streams ran concurrently: max {}",
        stats.max_inflight.load(SeqCst)
    );
}

#[test]
fn rapid_reset_flood_does_not_starve_other_clients() {
    let be = backends(0);
    let stats = Arc::new(Counting::default());
    let backend = be.rt.block_on(counting_backend(stats.clone()));
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{backend}\" }}]"
    )));
    let addr = lb.addr;
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The attacker: HEADERS then RST_STREAM, as fast as the connection allows, for 3 seconds,
    // on its own thread; reconnects when the server closes the connection on it.
    let f = flooding.clone();
    let flood = std::thread::spawn(move || {
        let rt = crate::pki::rt();
        rt.block_on(async move {
            let (mut sent, mut conns, mut errors) = (0u64, 0u32, Vec::new());
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (client, conn) = h2::client::handshake(tcp).await.unwrap();
                let conn = tokio::spawn(conn);
                conns += 1;
                let mut client = Some(client);
                while let Some(c) = client.take() {
                    if start.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                    let Ok(mut c) = c.ready().await else { break };
                    let req = http::Request::get(format!("http://{addr}/"))
                        .body(())
                        .unwrap();
                    match c.send_request(req, true) {
                        Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                        Err(_) => break,
                    }
                    sent += 1;
                    if sent % 64 == 0 {
                        // Let the connection task write: a real attacker's frames hit the wire.
                        tokio::task::yield_now().await;
                    }
                    client = Some(c);
                }
                if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(2), conn).await {
                    errors.push(e.to_string());
                }
            }
            f.store(false, SeqCst);
            (sent, conns, errors)
        })
    });
    // The bystander: ordinary requests while the flood lasts, each answered and reasonably fast.
    let c = client();
    let (mut slowest, mut done) = (Duration::ZERO, 0);
    while flooding.load(SeqCst) || done < 10 {
        let t = Instant::now();
        let r = c.get(lb.url("/")).send().unwrap();
        assert_eq!(r.status(), 200);
        slowest = slowest.max(t.elapsed());
        done += 1;
    }
    let (sent, conns, errors) = flood.join().unwrap();
    errors
        .iter()
        .take(1)
        .for_each(|e| eprintln!("attacker saw: {e}"));
    eprintln!(
        "rapid reset: {sent} streams on {conns} connection(s), {} reached the backend; \
         bystander: {done} requests, slowest {slowest:?}",
        stats.requests.load(SeqCst) - done
    );
    assert!(sent > 1000, "the flood happened");
    assert!(
        slowest < Duration::from_secs(2),
        "bystander slowed to {slowest:?}"
    );
}

/// An h2c backend that refuses (`REFUSED_STREAM`, RFC 9113 §8.7: not processed) the first
/// request for each path, as a server shedding load or going away does, and answers the rest.
/// Returns its address and how many requests it answered.
async fn refusing_h2_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (count, seen) = (count.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if seen.lock().unwrap().insert(req.uri().path().to_string()) {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    if let Ok(mut body) = respond.send_response(http::Response::new(()), false) {
                        let _ = body.send_data(Bytes::from_static(b"ok"), true);
                        count.fetch_add(1, SeqCst);
                    }
                }
            });
        }
    });
    (addr, answered)
}

#[test]
fn a_stream_an_h2_backend_refused_unprocessed_goes_again_whatever_its_method() {
    let be = backends(1);
    let (addr, answered) = be.rt.block_on(refusing_h2_backend());
    let lb = start(&config(&format!(
        "protocol = \"h2c\"\nbackends = [{{ address = \"{addr}\" }}]\nretry = {{ attempts = 1 }}"
    )));
    let failed = be.rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut tx = h2c(lb.addr).await;
            tasks.push(tokio::spawn(async move {
                let mut failed = 0;
                for _ in 0..50 {
                    let path = format!("/r/{}", fastrand::u64(..));
                    let req = http::Request::post(format!("http://{}{path}", lb_host()))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    match tx.send_request(req).await {
                        Ok(r) if r.status() == 200 => {}
                        _ => failed += 1,
                    }
                }
                failed
            }));
        }
        let mut failed = 0;
        for t in tasks {
            failed += t.await.unwrap();
        }
        failed
    });
    assert_eq!(
        failed, 0,
        "of 400 requests (POST: not idempotent, one attempt)"
    );
    assert!(answered.load(SeqCst) >= 400);
}

fn lb_host() -> &'static str {
    "switchyard.test"
}
