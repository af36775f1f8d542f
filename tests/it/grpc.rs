//! gRPC through the proxy with a tonic client and server (raw-bytes codec, no protobuf build
//! step): unary, server-streaming and bidirectional calls with status, details, metadata and
//! trailers checked end to end over h2c; and errors Switchyard makes answered in gRPC terms.

// tonic's streams carry `Result<_, Status>`; the size of its error type is tonic's choice.
#![allow(clippy::result_large_err)]

use crate::support::*;
use bytes::{Buf, BufMut, Bytes};
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Response, Status, Streaming};

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type BoxStream = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, Status>> + Send>>;

/// Messages are opaque bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn trailer_status() -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("x-trailer", "kept".parse().unwrap());
    Status::with_details_and_metadata(
        Code::FailedPrecondition,
        "stream over",
        Bytes::from_static(b"\x01details"),
        md,
    )
}

/// `Echo/Unary` echoes (and its `x-id` metadata); `Echo/Fail` fails with details; `Echo/Slow`
/// takes 3 s; `Echo/Stream` sends the request N times then ends with a status in the trailers;
/// `Echo/Bidi` echoes each message as it arrives.
struct Unary(&'static str);

/// Makes the test server's health service answer NOT_SERVING.
static NOT_SERVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFut<Response<Bytes>>;
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let kind = self.0;
        Box::pin(async move {
            match kind {
                "fail" => Err(Status::with_details(
                    Code::InvalidArgument,
                    "bad input",
                    Bytes::from_static(b"why"),
                )),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(Response::new(Bytes::new()))
                }
                // grpc.health.v1 HealthCheckResponse { status: SERVING (1) | NOT_SERVING (2) }.
                "health" => {
                    let status = if NOT_SERVING.load(std::sync::atomic::Ordering::Relaxed) {
                        2
                    } else {
                        1
                    };
                    Ok(Response::new(Bytes::from(vec![0x08, status])))
                }
                _ => {
                    let id = req.metadata().get("x-id").cloned();
                    let mut r = Response::new(req.into_inner());
                    if let Some(id) = id {
                        r.metadata_mut().insert("x-echo-id", id);
                    }
                    Ok(r)
                }
            }
        })
    }
}

struct ServerStream;

impl tonic::server::ServerStreamingService<Bytes> for ServerStream {
    type Response = Bytes;
    type ResponseStream = BoxStream;
    type Future = BoxFut<Response<BoxStream>>;
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let msg = req.into_inner();
        Box::pin(async move {
            let items = (0..3)
                .map(move |_| Ok(msg.clone()))
                .chain(std::iter::once(Err(trailer_status())));
            Ok(Response::new(
                Box::pin(futures_util::stream::iter(items)) as BoxStream
            ))
        })
    }
}

struct Bidi;

impl tonic::server::StreamingService<Bytes> for Bidi {
    type Response = Bytes;
    type ResponseStream = BoxStream;
    type Future = BoxFut<Response<BoxStream>>;
    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let s = req
                .into_inner()
                .map(|m| m.map(|b| [b"echo:".as_slice(), &b].concat().into()));
            Ok(Response::new(Box::pin(s) as BoxStream))
        })
    }
}

async fn grpc_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut g = tonic::server::Grpc::new(Raw);
                        let resp = match req.uri().path() {
                            "/test.Echo/Unary" => g.unary(Unary("echo"), req).await,
                            "/test.Echo/Fail" => g.unary(Unary("fail"), req).await,
                            "/test.Echo/Slow" => g.unary(Unary("slow"), req).await,
                            "/grpc.health.v1.Health/Check" => g.unary(Unary("health"), req).await,
                            "/test.Echo/Stream" => g.server_streaming(ServerStream, req).await,
                            "/test.Echo/Bidi" => g.streaming(Bidi, req).await,
                            _ => Status::unimplemented("no such method").into_http(),
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// tonic's client over one hyper h2c connection.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut tx = self.0.clone();
        Box::pin(async move { tx.send_request(req).await })
    }
}

async fn grpc_client(addr: SocketAddr) -> tonic::client::Grpc<H2> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let origin = format!("http://{addr}").parse().unwrap();
    tonic::client::Grpc::with_origin(H2(tx), origin)
}

fn path(p: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(p)
}

async fn unary(
    c: &mut tonic::client::Grpc<H2>,
    method: &'static str,
    msg: &'static [u8],
) -> Result<Response<Bytes>, Status> {
    c.ready().await.unwrap();
    let mut req = Request::new(Bytes::from_static(msg));
    req.metadata_mut().insert("x-id", "42".parse().unwrap());
    c.unary(req, path(method), Raw).await
}

fn lb_for(upstream: &str) -> Lb {
    start(&config(upstream))
}

#[test]
fn grpc_unary_streaming_and_bidi_calls_pass_with_status_and_trailers() {
    let be = backends(0);
    let addr = be.rt.block_on(grpc_backend());
    let lb = lb_for(&format!(
        "protocol = \"h2c\"\nbackends = [{{ address = \"{addr}\" }}]"
    ));
    be.rt.block_on(async {
        let mut c = grpc_client(lb.addr).await;

        let r = unary(&mut c, "/test.Echo/Unary", b"hello").await.unwrap();
        assert_eq!(r.metadata().get("x-echo-id").unwrap(), "42");
        assert_eq!(r.into_inner(), "hello");

        let e = unary(&mut c, "/test.Echo/Fail", b"x").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "bad input");
        assert_eq!(e.details(), b"why");

        // Server streaming: three messages, then a status with details and metadata in trailers.
        c.ready().await.unwrap();
        let req = Request::new(Bytes::from_static(b"tick"));
        let mut s = c
            .server_streaming(req, path("/test.Echo/Stream"), Raw)
            .await
            .unwrap()
            .into_inner();
        for _ in 0..3 {
            assert_eq!(s.message().await.unwrap().unwrap(), "tick");
        }
        let end = s.message().await.unwrap_err();
        assert_eq!(end.code(), Code::FailedPrecondition);
        assert_eq!(end.message(), "stream over");
        assert_eq!(end.details(), b"\x01details");
        assert_eq!(end.metadata().get("x-trailer").unwrap(), "kept");

        // Bidirectional: each message is answered before the next is sent.
        c.ready().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut replies = c
            .streaming(Request::new(out), path("/test.Echo/Bidi"), Raw)
            .await
            .unwrap()
            .into_inner();
        for i in 0..5 {
            tx.send(Bytes::from(format!("m{i}"))).await.unwrap();
            assert_eq!(
                replies.message().await.unwrap().unwrap(),
                format!("echo:m{i}")
            );
        }
        drop(tx);
        assert!(
            replies.message().await.unwrap().is_none(),
            "clean end, grpc-status 0"
        );
    });
}

#[test]
fn errors_switchyard_makes_on_grpc_calls_are_grpc_statuses() {
    let be = backends(0);
    let addr = be.rt.block_on(grpc_backend());
    let slow = lb_for(&format!(
        "protocol = \"h2c\"\nbackends = [{{ address = \"{addr}\" }}]\ntimeouts = {{ request = \"300ms\" }}"
    ));
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = lb_for(&format!(
        "protocol = \"h2c\"\nbackends = [{{ address = \"{dead}\" }}]"
    ));
    be.rt.block_on(async {
        let mut c = grpc_client(slow.addr).await;
        let e = unary(&mut c, "/test.Echo/Slow", b"").await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert_eq!(e.message(), "upstream_timeout");

        let mut c = grpc_client(down.addr).await;
        let e = unary(&mut c, "/test.Echo/Unary", b"x").await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    });
    // A plain HTTP client still gets the HTTP status.
    let r = client().get(down.url("/")).send().unwrap();
    assert_eq!(r.status(), 502);
}

#[test]
fn grpc_health_checks_follow_the_serving_status() {
    let be = backends(0);
    let addr = be.rt.block_on(grpc_backend());
    let lb = lb_for(&format!(
        "backends = [{{ address = \"{addr}\" }}]\nprotocol = \"h2c\"\n\
         health_check = {{ kind = \"grpc\", interval = \"200ms\", timeout = \"1s\", healthy_threshold = 1, unhealthy_threshold = 1 }}"
    ));
    let health = || first_backend(&lb, 0)["health"].clone();
    assert!(
        eventually(Duration::from_secs(5), || health() == "healthy"),
        "{}",
        health()
    );
    NOT_SERVING.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || health() == "unhealthy"),
        "{}",
        health()
    );
    NOT_SERVING.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || health() == "healthy"),
        "{}",
        health()
    );
}
