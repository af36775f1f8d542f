//! `demo-backend`, a small origin for demos and tests, and `demo`, which starts three of them
//! with a balancer and the admin UI so the README's first command works with nothing installed.
//!
//! Endpoints (every response carries `x-demo-backend: NAME`): any path echoes the request as JSON;
//! `/status/{code}`; `/delay/{ms}`; `/healthz` (and `POST /healthz/fail`, `POST /healthz/ok`);
//! `/stream/{n}` streams n chunks of 1 KiB; `/ws` is a WebSocket echo (text and binary; the text
//! `close:CODE` makes it close with that code). With a certificate it serves HTTPS (ALPN h2 and
//! http/1.1); in clear it speaks HTTP/1.1 and h2c.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

mod ws;

type DemoBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

struct Origin {
    name: String,
    failing: AtomicBool,
}

/// Serves the demo backend on `listener` forever (until the task is dropped).
pub async fn serve_backend(listener: tokio::net::TcpListener, name: String) {
    serve_backend_tls(listener, name, None).await
}

/// The demo backend's TLS settings from a PEM certificate chain and key.
pub fn tls_config(cert: &str, key: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let loaded = crate::listener::certs::load_pair(cert, key)?;
    let mut c = rustls::ServerConfig::builder_with_provider(crate::listener::certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(loaded.key)));
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// Serves the demo backend, over TLS when `tls` is given.
pub async fn serve_backend_tls(
    listener: tokio::net::TcpListener,
    name: String,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let origin = Arc::new(Origin {
        name,
        failing: AtomicBool::new(false),
    });
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (origin, builder, acceptor) = (origin.clone(), builder.clone(), acceptor.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let origin = origin.clone();
                async move { Ok::<_, Infallible>(respond(&origin, req).await) }
            });
            match acceptor {
                None => {
                    let io = TokioIo::new(stream);
                    let _ = builder.serve_connection_with_upgrades(io, svc).await;
                }
                Some(a) => {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), a.accept(stream)).await
                    else {
                        return;
                    };
                    let io = TokioIo::new(tls);
                    let _ = builder.serve_connection_with_upgrades(io, svc).await;
                }
            }
        });
    }
}

fn full(b: impl Into<Bytes>) -> DemoBody {
    http_body_util::Full::new(b.into()).boxed_unsync()
}

async fn respond(origin: &Origin, req: Request<Incoming>) -> Response<DemoBody> {
    let path = req.uri().path().to_string();
    let mut resp = route(origin, &path, req).await;
    if let Ok(v) = HeaderValue::from_str(&origin.name) {
        resp.headers_mut().insert("x-demo-backend", v);
    }
    resp
}

async fn route(origin: &Origin, path: &str, req: Request<Incoming>) -> Response<DemoBody> {
    let seg: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    match (req.method(), seg.as_slice()) {
        (&Method::POST, ["healthz", "fail"]) => {
            origin.failing.store(true, Relaxed);
            status(StatusCode::OK, "health check will fail\n")
        }
        (&Method::POST, ["healthz", "ok"]) => {
            origin.failing.store(false, Relaxed);
            status(StatusCode::OK, "health check will pass\n")
        }
        (_, ["healthz"]) if origin.failing.load(Relaxed) => {
            status(StatusCode::SERVICE_UNAVAILABLE, "failing\n")
        }
        (_, ["healthz"]) => status(StatusCode::OK, "ok\n"),
        (_, ["status", code]) => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(s) => status(s, format!("{}\n", s.as_u16())),
            None => status(StatusCode::BAD_REQUEST, "bad status code\n"),
        },
        (_, ["delay", ms]) => match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
                echo(origin, req).await
            }
            Err(_) => status(StatusCode::BAD_REQUEST, "bad delay\n"),
        },
        (_, ["ws"]) => ws::accept(req),
        (_, ["stream", n]) => match n.parse::<usize>() {
            Ok(n) => stream(n),
            Err(_) => status(StatusCode::BAD_REQUEST, "bad chunk count\n"),
        },
        _ => echo(origin, req).await,
    }
}

fn status(s: StatusCode, body: impl Into<Bytes>) -> Response<DemoBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = s;
    r
}

/// Echoes the request; the body is counted, not stored, so huge uploads cost no memory.
async fn echo(origin: &Origin, req: Request<Incoming>) -> Response<DemoBody> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => return status(StatusCode::BAD_REQUEST, "broken body\n"),
        }
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    let doc = json!({
        "backend": origin.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "headers": headers,
        "body_bytes": body_bytes,
        "version": format!("{:?}", parts.version),
    });
    let mut r = Response::new(full(doc.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn stream(n: usize) -> Response<DemoBody> {
    let chunk = Bytes::from(vec![b'x'; 1024]);
    let frames = futures_util::stream::iter(
        (0..n).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    );
    Response::new(StreamBody::new(frames).boxed_unsync())
}

/// Binds and runs a demo backend in the current runtime; returns its address.
pub async fn spawn_backend(addr: SocketAddr, name: &str) -> std::io::Result<SocketAddr> {
    spawn_backend_tls(addr, name, None).await
}

/// Binds and runs a demo backend, HTTPS when `tls` is given; returns its address.
pub async fn spawn_backend_tls(
    addr: SocketAddr,
    name: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    tokio::spawn(serve_backend_tls(l, name.to_string(), tls));
    Ok(a)
}

/// The configuration `demo` runs: three backends, round robin, health checks.
pub fn demo_config(listen: &str, admin: &str, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect();
    format!(
        r#"# The configuration `switchyard demo` serves. Edit it live at http://{admin}/
[admin]
listen = "{admin}"

[[listeners]]
name = "web"
bind = "{listen}"

[upstreams.demo]
algorithm = "round_robin"
backends = [{}]
health_check = {{ kind = "http", path = "/healthz", interval = "1s", timeout = "500ms", healthy_threshold = 2, unhealthy_threshold = 2 }}
passive_health = {{ consecutive_failures = 5, base_ejection = "10s" }}
circuit_breaker = {{ failure_rate = 0.5, min_requests = 20, window = "10s", open_for = "5s" }}
retry = {{ attempts = 3, on = ["connect_failure", "reset", "502", "503"] }}
"#,
        list.join(", ")
    )
}
