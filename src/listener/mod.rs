//! Listeners and workers: sockets bound once per worker with `SO_REUSEPORT`, one single-threaded
//! tokio runtime per worker thread, HTTP/1.1 and prior-knowledge HTTP/2 on the same port.
//!
//! Workers share nothing on the hot path but the configuration snapshot (one atomic load) and
//! backend counters (atomics): each has its own accept loop, its own connections and its own
//! upstream connection pool. The kernel spreads new connections across the workers' sockets.
//!
//! A listener is plain, TLS ([`tls`]: the handshake runs inside the connection's own task with a
//! timeout, so a slow client never holds up the accept loop), or an HTTP → HTTPS [`redirect`].

pub mod certs;
pub mod client;
pub mod client_hello;
pub mod proxy_protocol;
pub mod redirect;
mod sniff;
pub mod tls;

use crate::proxy::real_ip::CidrSet;
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;
pub use client::ClientStream;
use http::{header, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

/// Largest request head (request line and headers) accepted; larger ones get 431. NGINX allows
/// 4 × 8 KiB by default and HAProxy 16 KiB; 64 KiB leaves room for large cookies and JWTs.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Time a client gets to complete the TLS handshake, as HAProxy's `timeout client` bounds it:
/// long enough for a phone on a bad network, short enough that idle sockets do not pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener speaks.
pub enum Mode {
    Plain,
    Tls(Arc<tls::TlsListener>),
    /// Answers every request with a redirect to https on this port.
    Redirect {
        https_port: u16,
    },
    /// Relays each connection's bytes to a backend (`mode = "tcp"`), after TLS if it has any.
    Tcp(Arc<proxy::tcp::TcpSite>),
}

thread_local! {
    /// Upgraded (WebSocket) tunnels open on this worker. hyper hands an upgraded connection over
    /// and forgets it, so shutdown counts tunnels here to give them the grace period too, as
    /// HAProxy's soft-stop does, rather than cutting them at once. A tunnel's task runs on the
    /// worker's single-threaded runtime, so the count is per worker thread.
    static OPEN_TUNNELS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts an upgraded tunnel on the current worker while it lives.
pub struct Tunnel(());

impl Tunnel {
    pub fn open() -> Tunnel {
        OPEN_TUNNELS.with(|n| n.set(n.get() + 1));
        Tunnel(())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        OPEN_TUNNELS.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// One bound listener: its configured address, the concrete one, and per-worker sockets.
pub struct Bound {
    pub addr: SocketAddr,
    pub max_body: u64,
    pub mode: Arc<Mode>,
    /// Connections start with a PROXY protocol header ([`proxy_protocol`]).
    pub proxy_protocol: bool,
    /// `header_timeout` of the listener.
    pub header_timeout: Duration,
    /// `trusted_proxies` of the listener, when it has any.
    pub trusted: Option<Arc<CidrSet>>,
    /// `ambiguous_paths = "reject"`.
    pub strict_paths: bool,
    sockets: Vec<std::net::TcpListener>,
}

/// One worker's socket of a listener.
pub struct WorkerSocket {
    socket: std::net::TcpListener,
    max_body: u64,
    mode: Arc<Mode>,
    proxy_protocol: bool,
    header_timeout: Duration,
    trusted: Option<Arc<CidrSet>>,
    strict_paths: bool,
}

impl Bound {
    pub fn into_sockets(self) -> Vec<WorkerSocket> {
        let (max_body, mode, proxy_protocol) = (self.max_body, self.mode, self.proxy_protocol);
        let (header_timeout, trusted, strict_paths) =
            (self.header_timeout, self.trusted, self.strict_paths);
        self.sockets
            .into_iter()
            .map(|socket| WorkerSocket {
                socket,
                max_body,
                mode: mode.clone(),
                proxy_protocol,
                header_timeout,
                trusted: trusted.clone(),
                strict_paths,
            })
            .collect()
    }
}

/// Binds `bind` once per worker, all on the same concrete port (port 0 picks one for all).
/// With `defer`, the kernel queues a connection for accept only once its first bytes arrived.
pub fn bind(
    bind: SocketAddr,
    workers: usize,
    max_body: u64,
    defer: bool,
) -> std::io::Result<Bound> {
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
        if defer {
            if let Err(e) = defer_accept(&s) {
                // Only slower without it: worth a warning, not a refusal to start.
                tracing::warn!("{addr}: TCP_DEFER_ACCEPT not set: {e}");
            }
        }
        s.listen(4096)?;
        let l: std::net::TcpListener = s.into();
        addr = l.local_addr()?;
        sockets.push(l);
    }
    Ok(Bound {
        addr,
        max_body,
        mode: Arc::new(Mode::Plain),
        proxy_protocol: false,
        header_timeout: HEADER_READ_TIMEOUT,
        trusted: None,
        strict_paths: false,
        sockets,
    })
}

/// `TCP_DEFER_ACCEPT`: the handshake's last ACK no longer makes the connection acceptable, its
/// first data does. A client connects and sends its request (or ClientHello) in the same
/// instant, but the event loop often accepted between the two: the first read then found
/// nothing, and the connection joined epoll (`epoll_ctl` ADD, later DEL) and waited once more.
/// Deferred, a connection per request costs 6.2 syscalls instead of 9.6 (BENCHMARKS.md), and a
/// client that connects and stays silent holds no descriptor, task or buffer of ours meanwhile.
/// One second: after it the kernel hands the connection over anyway (on the client's ACK of a
/// retransmitted SYN-ACK), and the header read timeout takes over.
#[cfg(target_os = "linux")]
fn defer_accept(s: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = 1;
    // SAFETY: a valid socket, and a c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_accept(_: &socket2::Socket) -> std::io::Result<()> {
    Ok(())
}

/// Gives each bound listener its [`Mode`] from its configuration (same order): TLS, a redirect
/// to the first TLS listener's port (443 if none), or plain. Returns the TLS listeners, for the
/// certificate reloader. The error names the file and what is wrong with it.
pub fn set_modes(
    cfg: &[crate::config::ListenerConfig],
    bound: &mut [Bound],
) -> Result<Vec<Arc<tls::TlsListener>>, String> {
    let mut out = Vec::new();
    for (index, (c, b)) in cfg.iter().zip(bound.iter_mut()).enumerate() {
        b.proxy_protocol = c.proxy_protocol == Some(true);
        b.header_timeout = c.header_timeout.map_or(HEADER_READ_TIMEOUT, |d| d.get());
        let trusted = CidrSet::new(&c.trusted_proxies);
        b.trusted = (!trusted.is_empty()).then(|| Arc::new(trusted));
        b.strict_paths = c.ambiguous_paths == crate::config::AmbiguousPaths::Reject;
        let tcp = c.mode == crate::config::ListenerMode::Tcp;
        let tls = match c.tls.as_ref().filter(|t| !t.certificates.is_empty()) {
            Some(t) => {
                let l = tls::TlsListener::new(&c.bind, t, !tcp)
                    .map_err(|e| format!("listener {}: {e}", c.bind))?;
                out.push(l.clone());
                Some(l)
            }
            None => None,
        };
        if tcp {
            for s in &b.sockets {
                proxy::tcp::keepalive(s);
            }
            b.mode = Arc::new(Mode::Tcp(Arc::new(proxy::tcp::TcpSite::new(index, c, tls))));
        } else if let Some(l) = tls {
            b.mode = Arc::new(Mode::Tls(l));
        }
    }
    let https_port = bound
        .iter()
        .find(|b| matches!(*b.mode, Mode::Tls(_)))
        .map_or(443, |b| b.addr.port());
    for (c, b) in cfg.iter().zip(bound.iter_mut()) {
        let t = c.tls.as_ref();
        if t.is_some_and(|t| t.certificates.is_empty() && t.redirect_https == Some(true)) {
            b.mode = Arc::new(Mode::Redirect { https_port });
        }
    }
    Ok(out)
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
    listeners: Vec<WorkerSocket>,
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
        let tracker = Arc::new(Tracker::default());
        tokio::spawn(async {
            let mut every = tokio::time::interval(proxy::pool::SWEEP_EVERY);
            loop {
                every.tick().await;
                proxy::pool::sweep();
            }
        });
        for WorkerSocket {
            socket,
            max_body,
            mode,
            proxy_protocol,
            header_timeout,
            trusted,
            strict_paths,
        } in listeners
        {
            let builder = builders(header_timeout);
            // Read-only interest: the listener is only ever accepted from.
            let read = tokio::io::Interest::READABLE;
            // SAFETY: the AsyncFd owns the std listener, whose descriptor stays open and the
            // same until the AsyncFd is dropped.
            let listener =
                match unsafe { tokio::io::unix::AsyncFd::register_with_interest(socket, read) } {
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
                        a = accept(&listener) => a,
                        _ = stop.changed() => break,
                    };
                    let (stream, client) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning, and log once
                            // a second at most, for every worker: at the fd limit each one
                            // fails twenty times a second.
                            if let Some(n) = ACCEPT_LOG.hit() {
                                tracing::warn!("accept: {e} ({n} since the last such line)");
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let mut info = ConnInfo::new(client, max_body, trusted.clone());
                    info.body_timeout = builder.header_timeout;
                    info.strict_paths = strict_paths;
                    let conn = Conn {
                        shared: shared.clone(),
                        builder: builder.clone(),
                        stop: stop.clone(),
                        hsts: None,
                    };
                    // Counted from here: a connection dropped below still comes off the count.
                    let open = Open::new(tracker.clone());
                    // Plain connections, the common case, are served by a task holding only
                    // what plain HTTP needs; TLS handshake state and the TLS stream are boxed
                    // so they do not widen every connection's task (10 KiB → 3.3 KiB measured
                    // on 30 Nov, most of what 10,000 idle keep-alive connections cost).
                    // Every connection's state is boxed inside a small task (below).
                    match &*mode {
                        // Plain connections join the event loop only if they have to wait (see
                        // `client`), and set TCP_NODELAY only once they write twice (see
                        // `serve_plain`), as NGINX does: a connection per request needs neither.
                        Mode::Plain if !proxy_protocol => tokio::spawn(async move {
                            // A guard: the count comes down even if serving the connection panics.
                            let _open = open;
                            // Boxed here, in the task: the task's own future stays a few hundred
                            // bytes, so spawning it moves that instead of the 3.3 KiB connection
                            // state through each of tokio's spawn layers (callgrind: ~700
                            // instructions per connection, see BENCHMARKS.md).
                            proxy::relay::boxed_in_place(|| {
                                serve_plain(ClientStream::new(stream), info, conn)
                            })
                            .await;
                        }),
                        _ => {
                            let stream = match TcpStream::from_std(stream) {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::warn!("registering a connection: {e}");
                                    continue;
                                }
                            };
                            let _ = stream.set_nodelay(true);
                            let mode = mode.clone();
                            let served: ConnFuture = Box::pin(async move {
                                accepted_conn(stream, info, &mode, proxy_protocol, conn).await
                            });
                            tokio::spawn(async move {
                                let _open = open;
                                served.await;
                            })
                        }
                    };
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
            let tunnels = OPEN_TUNNELS.with(|n| n.get());
            if tracker.open.load(Relaxed) == 0 && tunnels == 0 {
                break;
            }
            // Tunnels have no close to wait on here; look again every 100 ms.
            let wake = async {
                if tunnels == 0 {
                    notified.await
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            };
            if tokio::time::timeout_at(deadline, wake).await.is_err() {
                tracing::warn!(
                    worker = index,
                    open = tracker.open.load(Relaxed),
                    tunnels = OPEN_TUNNELS.with(|n| n.get()),
                    "grace period over; closing connections"
                );
                break;
            }
        }
    });
}

static ACCEPT_LOG: crate::observe::throttle::Throttle =
    crate::observe::throttle::Throttle::new(Duration::from_secs(1));

/// Accepts a connection as a non-blocking socket not yet registered with the event loop: a
/// plain connection is registered only if it has to wait ([`ClientStream`]).
async fn accept(
    l: &tokio::io::unix::AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = l.readable().await?;
        let accepted = ready.try_io(|l| {
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            let (s, peer) = socket2::SockRef::from(l.get_ref()).accept4(flags)?;
            let peer = peer
                .as_socket()
                .ok_or_else(|| std::io::Error::other("peer is not an IP address"))?;
            Ok((std::net::TcpStream::from(s), peer))
        });
        // Err: nothing was pending after all (readiness cleared); wait again.
        if let Ok(r) = accepted {
            return r;
        }
    }
}

/// One open client connection in the worker's [`Tracker`] and the connection metrics.
struct Open(Arc<Tracker>);

impl Open {
    fn new(tracker: Arc<Tracker>) -> Open {
        tracker.open.fetch_add(1, Relaxed);
        crate::observe::metrics::connection_opened();
        Open(tracker)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        crate::observe::metrics::connection_closed();
        if self.0.open.fetch_sub(1, Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How long a client may take to send a request head (and its first bytes).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// hyper's server settings for each protocol, shared by a worker's connections.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// The listener's `header_timeout`, for the relay and the first read too.
    header_timeout: Duration,
}

/// hyper's servers as one listener configures them.
fn builders(header_timeout: Duration) -> Arc<Builders> {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .max_buf_size(MAX_HEADER_BYTES)
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        // Bounds per client connection: 256 streams (NGINX's http2_max_concurrent_streams
        // is 128, Envoy's 2^31); 1 MiB per stream and 4 MiB per connection of flow-control
        // window, so one connection cannot make the proxy buffer more than that.
        .max_concurrent_streams(256)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        // A header block larger than this is refused, however many CONTINUATION frames it
        // is split into (the 2024 CONTINUATION-flood class of attacks).
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        // Rapid reset (CVE-2023-44487): a client that resets more than 50 streams before
        // they are served gets GOAWAY ENHANCE_YOUR_CALM; see tests/it/http2.rs.
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(256)
        .enable_connect_protocol();
    Arc::new(Builders {
        h1,
        h2,
        header_timeout,
    })
}

type ConnFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
type RequestFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<http::Response<proxy::body::RespBody>, Infallible>>
            + Send,
    >,
>;

/// What serving one connection needs besides the socket.
struct Conn {
    shared: Arc<Shared>,
    builder: Arc<Builders>,
    stop: watch::Receiver<bool>,
    hsts: Option<HeaderValue>,
}

/// One accepted connection, in its own task: TLS handshake if any, then HTTP until it closes.
async fn accepted_conn(
    mut stream: TcpStream,
    mut info: ConnInfo,
    mode: &Mode,
    proxy_protocol: bool,
    mut conn: Conn,
) {
    // The address the client reached, when a PROXY header says it was not this socket's.
    let mut reached = None;
    if proxy_protocol {
        match proxy_protocol::read_header(&mut stream, HANDSHAKE_TIMEOUT).await {
            Ok(Some(ends)) => {
                info.set_peer(ends.client);
                reached = Some(ends.reached);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(peer = %info.client, "closing: {e}");
                return;
            }
        }
    }
    let t = match mode {
        Mode::Plain => return serve_plain(stream.into(), info, conn).await,
        Mode::Tcp(site) => {
            return proxy::tcp::serve(stream, (info, reached), site, &conn.shared, conn.stop).await
        }
        Mode::Redirect { https_port } => {
            return serve_redirect(stream, Some(*https_port), info, conn).await
        }
        Mode::Tls(t) => t.current(),
    };
    // A client's first byte: 0x16 opens a TLS handshake; a letter is plain HTTP on the wrong
    // port (a request method), which gets an answer it can show instead of a TLS alert.
    match first_byte(&stream).await {
        None => return,
        Some(b) if b.is_ascii_alphabetic() => {
            let port = stream.local_addr().map_or(443, |a| a.port());
            let to = t.redirect_plain.then_some(port);
            return serve_redirect(stream, to, info, conn).await;
        }
        Some(_) => {}
    }
    let mut stop = conn.stop.clone();
    let Some(tls) = handshake(stream, &t, &mut info, &mut stop).await else {
        return;
    };
    conn.hsts = t.hsts.clone();
    serve(tls, Arc::new(info), conn).await;
}

/// The server side of a TLS handshake within [`HANDSHAKE_TIMEOUT`], counted in the metrics, with
/// what it settled written into `info`; `None` when it failed, timed out, or shutdown began.
pub(crate) async fn handshake(
    stream: TcpStream,
    t: &tls::TlsState,
    info: &mut ConnInfo,
    stop: &mut watch::Receiver<bool>,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(t.server.clone());
    let tls = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => return None,
    };
    crate::observe::metrics::tls_handshake(matches!(tls, Ok(Ok(_))));
    let tls = match tls {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Scanners and clients that distrust the certificate do this all day: debug, not warn.
            tracing::debug!(client = %info.client, "TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::debug!(client = %info.client, "TLS handshake timed out");
            return None;
        }
    };
    let session = tls.get_ref().1;
    info.https = true;
    info.tls_version = session.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        _ => "TLSv1.2",
    });
    // Present only when verified: without client_ca no certificate is asked for.
    info.tls_client = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| certs::subject(c.as_ref()));
    Some(tls)
}

/// The client's first byte, left in the socket; `None` when it closed or sent nothing within the
/// handshake timeout (a TLS client speaks first, so this waits no longer than a handshake would).
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut b)).await {
        Ok(Ok(1)) => Some(b[0]),
        _ => None,
    }
}

/// Answers every request with the redirect to `https_port`, or without one with 400 (plain
/// HTTP on a TLS port), access-logged like any other request (an operator looking for a client
/// that never reached https finds it there).
async fn serve_redirect(
    mut stream: TcpStream,
    https_port: Option<u16>,
    info: ConnInfo,
    conn: Conn,
) {
    let mut stop = conn.stop.clone();
    let Some((prefix, h2)) = sniff_first(
        &mut stream,
        bytes::BytesMut::new(),
        &mut stop,
        conn.builder.header_timeout,
    )
    .await
    else {
        return;
    };
    let (shared, info) = (conn.shared.clone(), Arc::new(info));
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let mut resp = match https_port {
            Some(port) => redirect::respond(&req, port),
            None => {
                let mut r = proxy::error_response(crate::error::ProxyError::PlainHttpOnTls);
                r.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                r
            }
        };
        // Like every response, a redirect carries the request's id (the client's, else a new
        // one), so its access-log line can be found from what the client saw.
        let id = proxy::headers::ensure_request_id(req.headers_mut());
        resp.headers_mut().insert(proxy::headers::X_REQUEST_ID, id);
        crate::observe::metrics::downstream_response(resp.status().as_u16());
        let otlp = shared.otlp.get().cloned();
        if shared.access_log.is_some() || otlp.is_some() {
            crate::observe::request::Observer::begin(shared.access_log.clone(), otlp, &info, &req)
                .attach(&mut resp, proxy::Trace::default());
        }
        std::future::ready(Ok::<_, Infallible>(resp))
    });
    serve_with(stream, prefix.freeze(), h2, svc, &conn.builder, conn.stop).await;
}

/// Reads the connection's first bytes (within the header-read timeout): they and whether they
/// are the HTTP/2 preface, or `None` when the client closed, timed out, or shutdown began.
async fn sniff_first<IO>(
    io: &mut IO,
    buf: bytes::BytesMut,
    stop: &mut watch::Receiver<bool>,
    timeout: Duration,
) -> Option<(bytes::BytesMut, bool)>
where
    IO: tokio::io::AsyncRead + Unpin,
{
    // Biased: the read is tried first, so a request already there never registers the
    // shutdown wait (or a timer: the timeout is only armed if the read has to wait).
    let first = tokio::select! {
        biased;
        r = tokio::time::timeout(timeout, sniff::sniff(io, buf)) => r,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => return None,
    };
    let Ok(Ok((prefix, h2))) = first else {
        return None;
    };
    (!prefix.is_empty()).then_some((prefix, h2))
}

/// A plain TCP connection: HTTP/1.1 requests go through the byte relay
/// ([`proxy::relay`]) until one needs hyper; HTTP/2 and the rest go to hyper.
async fn serve_plain(mut stream: ClientStream, info: ConnInfo, conn: Conn) {
    let mut stop = conn.stop.clone();
    // The read buffer comes from the worker's spares and goes back there when the connection
    // closes: a connection per request allocates (and glibc trims) no buffer.
    let spare = proxy::relay::idle::buffer();
    let Some((mut buf, h2)) =
        sniff_first(&mut stream, spare, &mut stop, conn.builder.header_timeout).await
    else {
        return;
    };
    if !h2 {
        let end = proxy::relay::serve(
            &mut stream,
            &mut buf,
            &conn.shared,
            &info,
            &stop,
            conn.builder.header_timeout,
        )
        .await;
        if let proxy::relay::End::Close = end {
            proxy::relay::idle::recycle(buf);
            return;
        }
    }
    // hyper writes heads and bodies separately.
    let _ = stream.set_nodelay(true);
    // Boxed: hyper's connection state is large, and inline it would widen every relayed
    // connection's task by it (copied on spawn, held while idle) for the rare hand-off.
    Box::pin(serve_sniffed(
        stream,
        buf.freeze(),
        h2,
        Arc::new(info),
        conn,
    ))
    .await;
}

/// Serves HTTP/1.1 or HTTP/2 on an established (plain or TLS) connection until it closes, or
/// until shutdown, when it stops taking new requests and lets the in-flight ones finish.
async fn serve<IO>(mut io: IO, info: Arc<ConnInfo>, conn: Conn)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut stop = conn.stop.clone();
    let Some((prefix, h2)) = sniff_first(
        &mut io,
        bytes::BytesMut::new(),
        &mut stop,
        conn.builder.header_timeout,
    )
    .await
    else {
        return;
    };
    serve_sniffed(io, prefix.freeze(), h2, info, conn).await;
}

/// hyper's server on a connection whose first bytes (`prefix`) were read by the sniff.
async fn serve_sniffed<IO>(io: IO, prefix: bytes::Bytes, h2: bool, info: Arc<ConnInfo>, conn: Conn)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        shared,
        builder,
        stop,
        hsts,
    } = conn;
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (shared, info, hsts) = (shared.clone(), info.clone(), hsts.clone());
        // Boxed: hyper keeps the slot for the in-flight request's future for the whole life of
        // the connection, so an inline 5 KiB proxy future would be held by every idle
        // keep-alive connection. Boxed, it lives only while the request does.
        let fut: RequestFuture = Box::pin(async move {
            // Errors Switchyard makes on a gRPC call must be spoken in gRPC; decide before the
            // request is consumed.
            let grpc = proxy::grpc::is_grpc(req.headers());
            let mut resp = proxy::handle(&shared, &info, req).await;
            if grpc {
                resp = proxy::grpc::local_reply(resp);
            }
            if let Some(h) = hsts {
                resp.headers_mut()
                    .entry(header::STRICT_TRANSPORT_SECURITY)
                    .or_insert(h);
            }
            Ok::<_, Infallible>(resp)
        });
        fut
    });
    serve_with(io, prefix, h2, svc, &builder, stop).await;
}

/// Runs hyper's HTTP/1 (with upgrades) or HTTP/2 server on the connection, starting with the
/// bytes the sniff read; on shutdown, stops taking requests and lets the in-flight ones finish.
async fn serve_with<IO, S, B>(
    io: IO,
    prefix: bytes::Bytes,
    h2: bool,
    svc: S,
    builder: &Builders,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(sniff::Prefixed::new(prefix, io));
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    // Stop taking new requests on this connection; let the in-flight ones
                    // finish.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }};
    }
    if h2 {
        drive!(builder.h2.serve_connection(io, svc))
    } else {
        drive!(builder.h1.serve_connection(io, svc).with_upgrades())
    }
}
