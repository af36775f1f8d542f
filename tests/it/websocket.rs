//! WebSocket through the proxy to the demo backend's `/ws` echo: over HTTP/1.1 Upgrade and over
//! HTTP/2 extended CONNECT (RFC 8441), which Switchyard bridges to an HTTP/1.1 Upgrade; and both
//! refused (501) to an h2c upstream.

use crate::support::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Text, binary, a 1 MiB message and ping/pong, each answered in kind.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for m in [
        Message::Text("hello".into()),
        Message::Binary(Bytes::from_static(&[0, 1, 2, 255])),
        Message::Binary(Bytes::from(big)),
        Message::Ping(Bytes::from_static(b"are you there")),
    ] {
        ws.send(m.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("reply in time")
            .expect("open")
            .expect("valid frame");
        match m {
            Message::Ping(p) => assert_eq!(got, Message::Pong(p)),
            m => assert_eq!(got, m),
        }
    }
}

async fn next_close<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> CloseCode {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return f.code,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn ws_h1(addr: std::net::SocketAddr) -> WebSocketStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

#[test]
fn websocket_over_http1_echoes_text_binary_large_ping_and_close_codes() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    be.rt.block_on(async {
        let mut ws = ws_h1(lb.addr).await;
        exchange(&mut ws).await;
        // Client-initiated close: the backend echoes the code.
        ws.close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        assert_eq!(next_close(&mut ws).await, CloseCode::Library(4000));

        // Server-initiated close with its own code reaches the client.
        let mut ws = ws_h1(lb.addr).await;
        ws.send(Message::Text("close:4001".into())).await.unwrap();
        assert_eq!(next_close(&mut ws).await, CloseCode::Library(4001));
    });
}

/// `timeouts.request` bounds the exchange that opens a tunnel, not the tunnel: an open
/// WebSocket outlives it (its own bound is `timeouts.idle`).
#[test]
fn an_open_websocket_outlives_the_request_timeout() {
    let be = backends(1);
    let lb = start(&config(&format!(
        "backends = [{}]\ntimeouts = {{ request = \"300ms\" }}",
        be.list()
    )));
    be.rt.block_on(async {
        let mut ws = ws_h1(lb.addr).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
        exchange(&mut ws).await;
    });
}

#[test]
fn websocket_tunnel_counts_as_an_active_request_until_closed() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let active = || {
        let snap = lb.running().shared.current();
        snap.upstreams[0].backends[0]
            .state
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    be.rt.block_on(async {
        let mut ws = ws_h1(lb.addr).await;
        exchange(&mut ws).await;
        assert_eq!(active(), 1, "an open WebSocket is an active request");
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    assert!(eventually(Duration::from_secs(5), || active() == 0));
}

/// A tunnel is access-logged when it ends, as HAProxy logs a tunnelled session: status 101, the
/// bytes both ways and the tunnel's whole duration; one closed by the idle timeout says so.
#[test]
fn a_websocket_is_logged_when_it_closes_with_its_bytes_and_duration() {
    let be = backends(1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&json_log(
        config(&format!(
            "backends = [{}]\ntimeouts = {{ idle = \"400ms\" }}",
            be.list()
        )),
        &log,
    ));
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    be.rt.block_on(async {
        let mut ws = ws_h1(lb.addr).await;
        exchange(&mut ws).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(lines().is_empty(), "logged while open: {:?}", lines());
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        drop(ws);
        // Left open and silent: the idle timeout closes it.
        let mut idle = ws_h1(lb.addr).await;
        assert!(tokio::time::timeout(Duration::from_secs(5), idle.next())
            .await
            .is_ok_and(|m| !matches!(m, Some(Ok(Message::Text(_))))));
    });
    let got = access_lines(&log, 2);
    let (closed, idle) = (&got[0], &got[1]);
    assert_eq!(closed["status"], 101, "{closed}");
    assert!(closed.get("error").is_none(), "{closed}");
    // `exchange` sends (and gets back) a 1 MiB message among others.
    for dir in ["bytes_in", "bytes_out"] {
        let n = closed[dir].as_u64().unwrap();
        assert!((1 << 20..2 << 20).contains(&n), "{dir} = {n}: {closed}");
    }
    assert!(closed["duration_ms"].as_f64().unwrap() >= 200.0, "{closed}");
    assert_eq!(idle["status"], 101, "{idle}");
    assert_eq!(idle["error"], "idle_timeout", "{idle}");
    assert!(idle["duration_ms"].as_f64().unwrap() >= 400.0, "{idle}");
}

#[test]
fn open_websockets_get_the_grace_period_at_shutdown() {
    let be = backends(1);
    let mut lb = start(&config(&format!("backends = [{}]", be.list())));
    let mut ws = be.rt.block_on(ws_h1(lb.addr));
    let running = lb.running.take().unwrap();
    let stopping = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        running.shutdown();
        t.elapsed()
    });
    be.rt.block_on(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws.send(Message::Text("still here".into())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        assert_eq!(
            got.unwrap().unwrap().unwrap(),
            Message::Text("still here".into()),
            "the tunnel works while the server drains"
        );
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        drop(ws);
    });
    let took = stopping.join().unwrap();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(8),
        "shutdown waited for the tunnel, then ended when it closed: {took:?}"
    );
}

/// An HTTP/2 stream as a byte stream, for a WebSocket over extended CONNECT.
struct H2Io {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    buf: Bytes,
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.buf.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(d)) => {
                    let _ = self.recv.flow_control().release_capacity(d.len());
                    self.buf = d;
                }
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.send.reserve_capacity(buf.len());
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(n)) => {
                let chunk = Bytes::copy_from_slice(&buf[..n.min(buf.len())]);
                let len = chunk.len();
                self.send
                    .send_data(chunk, false)
                    .map_err(std::io::Error::other)?;
                Poll::Ready(Ok(len))
            }
            Some(Err(e)) => Poll::Ready(Err(std::io::Error::other(e))),
            None => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

/// An HTTP/2 connection to `addr` whose server has announced extended CONNECT.
async fn h2_extended(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let client = client.ready().await.unwrap();
    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) arrive just after the handshake.
    for _ in 0..100 {
        if client.is_extended_connect_protocol_enabled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.is_extended_connect_protocol_enabled());
    client
}

/// An RFC 8441 WebSocket request for `/ws` at `addr`.
fn extended_connect(addr: std::net::SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}/ws"))
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap()
}

#[test]
fn websocket_over_http2_extended_connect_is_bridged_to_http1_upgrade() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    be.rt.block_on(async {
        let mut client = h2_extended(lb.addr).await;
        let (resp, send) = client
            .send_request(extended_connect(lb.addr), false)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "RFC 8441: success is 200, not 101");
        assert!(resp.headers().get("sec-websocket-accept").is_none());
        let io = H2Io {
            send,
            recv: resp.into_body(),
            buf: Bytes::new(),
        };
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
        exchange(&mut ws).await;
        ws.send(Message::Text("close:4002".into())).await.unwrap();
        assert_eq!(next_close(&mut ws).await, CloseCode::Library(4002));
    });
}

/// Upgrades reach only HTTP/1.1 backends: to an h2c upstream both handshake forms are refused
/// with 501 before anything is sent upstream, and the shared HTTP/2 backend connection keeps
/// serving other requests.
#[test]
fn websocket_to_an_h2c_upstream_is_refused_with_501() {
    let be = backends(1);
    let lb = start(&config(&format!(
        "protocol = \"h2c\"\nbackends = [{}]",
        be.list()
    )));
    let c = client();
    assert_eq!(c.get(lb.url("/")).send().unwrap().status(), 200);
    let sent_upstream = || first_backend(&lb, 0)["requests_total"].clone();
    let before = sent_upstream();

    let h1 = raw(
        lb.addr,
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            lb.addr
        )
        .as_bytes(),
    );
    assert!(h1.starts_with("HTTP/1.1 501"), "{h1}");
    assert!(
        h1.to_ascii_lowercase()
            .contains("x-switchyard-error: upgrade_unsupported"),
        "{h1}"
    );

    be.rt.block_on(async {
        let mut client = h2_extended(lb.addr).await;
        let (resp, _send) = client
            .send_request(extended_connect(lb.addr), false)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 501);
        assert_eq!(resp.headers()["x-switchyard-error"], "upgrade_unsupported");
    });
    assert_eq!(sent_upstream(), before, "nothing went to the backend");
    assert_eq!(c.get(lb.url("/")).send().unwrap().status(), 200);
}

/// A backend that answers every request with `101 Switching Protocols` to h2c, whatever was
/// asked, and then talks in the tunnel; it reports each request head it read.
fn switching_backend() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
                let _ = s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nTUNNEL",
                );
                std::thread::sleep(Duration::from_secs(1));
            });
        }
    });
    (addr, rx)
}

/// Protocol upgrades cannot become a tunnel that skips routing ("h2c smuggling"): an Upgrade to
/// h2c is not passed on, and a backend's 101 to a protocol the client did not ask for (or when
/// it asked for none) is answered with 502 instead of a tunnel.
#[test]
fn an_upgrade_to_h2c_or_a_101_to_another_protocol_opens_no_tunnel() {
    let (addr, seen) = switching_backend();
    let lb = start(&config(&format!("backends = [{{ address = \"{addr}\" }}]")));
    let h2c = raw(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    let head = seen.recv_timeout(Duration::from_secs(3)).unwrap();
    assert!(!head.contains("upgrade"), "the upgrade went on: {head}");
    assert!(!head.contains("http2-settings"), "{head}");
    assert!(h2c.starts_with("HTTP/1.1 502"), "{h2c}");
    assert!(!h2c.contains("TUNNEL"), "{h2c}");

    let ws = raw(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let head = seen.recv_timeout(Duration::from_secs(3)).unwrap();
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(ws.starts_with("HTTP/1.1 502"), "{ws}");
    assert!(!ws.contains("TUNNEL"), "{ws}");
}

/// A WebSocket on a route with `auth` opens only when the auth service allows it; refused,
/// the client gets the refusal and no tunnel.
#[test]
fn a_websocket_on_a_route_with_auth_opens_only_when_allowed() {
    let be = backends(1);
    let lb = start(&format!(
        "{}\n[upstreams.authz]\nbackends = [{}]\n\
         [[routes]]\npath_prefix = \"/\"\nmatch_headers = {{ x-deny = \"1\" }}\nupstream = \"web\"\n\
         auth = {{ upstream = \"authz\", path = \"/status/403\" }}\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"web\"\nauth = {{ upstream = \"authz\", path = \"/status/204\" }}\n",
        config(&format!("backends = [{}]", be.list())),
        be.list()
    ));
    be.rt.block_on(async {
        let mut ws = ws_h1(lb.addr).await;
        exchange(&mut ws).await;
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}/ws", lb.addr),
            )
            .unwrap();
        req.headers_mut().insert("x-deny", "1".parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        match tokio_tungstenite::client_async(req, tcp).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403)
            }
            other => panic!(
                "refused WebSocket opened: {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    });
}
