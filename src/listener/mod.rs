//! Listeners and workers: sockets bound once per worker with `SO_REUSEPORT`, one single-threaded
//! tokio runtime per worker thread, HTTP/1.1 and prior-knowledge HTTP/2 on the same port.
//!
//! Workers share nothing on the hot path but the configuration snapshot (one atomic load) and
//! backend counters (atomics): each has its own accept loop, its own connections and its own
//! upstream connection pool. The kernel spreads new connections across the workers' sockets.

use crate::proxy::{self, ConnInfo};
use crate::state::Shared;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Largest request head (request line and headers) accepted; larger ones get 431. NGINX allows
/// 4 × 8 KiB by default and HAProxy 16 KiB; 64 KiB leaves room for large cookies and JWTs.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// One bound listener: its configured address, the concrete one, and per-worker sockets.
pub struct Bound {
    pub addr: SocketAddr,
    pub max_body: u64,
    sockets: Vec<std::net::TcpListener>,
}

impl Bound {
    pub fn into_sockets(self) -> Vec<std::net::TcpListener> {
        self.sockets
    }
}

/// Binds `bind` once per worker, all on the same concrete port (port 0 picks one for all).
pub fn bind(bind: SocketAddr, workers: usize, max_body: u64) -> std::io::Result<Bound> {
    let mut sockets = Vec::with_capacity(workers);
    let mut addr = bind;
    for _ in 0..workers {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        let l: std::net::TcpListener = s.into();
        addr = l.local_addr()?;
        sockets.push(l);
    }
    Ok(Bound {
        addr,
        max_body,
        sockets,
    })
}

/// Counts open client connections of a worker so shutdown can wait for them.
#[derive(Default)]
struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

/// Runs worker `index` on the current thread until `shutdown` turns true, then lets open
/// connections finish their in-flight requests for up to `grace`.
pub fn run_worker(
    index: usize,
    listeners: Vec<(std::net::TcpListener, u64)>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, "cannot start worker runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(MAX_HEADER_BYTES)
            .header_read_timeout(Duration::from_secs(30))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_pending_accept_reset_streams(50)
            .max_local_error_reset_streams(256)
            .enable_connect_protocol();
        let builder = Arc::new(builder);
        let tracker = Arc::new(Tracker::default());
        for (std_listener, max_body) in listeners {
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(worker = index, "listener: {e}");
                    continue;
                }
            };
            let (shared, builder, tracker, mut stop) = (
                shared.clone(),
                builder.clone(),
                tracker.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = stop.changed() => break,
                    };
                    let (stream, client) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let info = Arc::new(ConnInfo {
                        client,
                        https: false,
                        max_body,
                    });
                    serve(
                        stream,
                        info,
                        shared.clone(),
                        builder.clone(),
                        tracker.clone(),
                        stop.clone(),
                    );
                }
            });
        }
        let _ = shutdown.wait_for(|s| *s).await;
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            // Register for the wake-up before looking, so the last close cannot slip between.
            let notified = tracker.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if tracker.open.load(Relaxed) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    worker = index,
                    open = tracker.open.load(Relaxed),
                    "grace period over; closing connections"
                );
                break;
            }
        }
    });
}

fn serve<IO>(
    io: IO,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tracker: Arc<Tracker>,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tracker.open.fetch_add(1, Relaxed);
    tokio::spawn(async move {
        let svc = service_fn(move |req| {
            let (shared, info) = (shared.clone(), info.clone());
            async move { Ok::<_, Infallible>(proxy::handle(&shared, &info, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                // Stop taking new requests on this connection; let the in-flight ones finish.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        if tracker.open.fetch_sub(1, Relaxed) == 1 {
            tracker.idle.notify_waiters();
        }
    });
}
