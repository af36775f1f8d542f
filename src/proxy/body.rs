//! Body types of the proxy. Bodies stream frame by frame in both directions, so back-pressure
//! flows end to end and no body is held in memory (except a small one kept for retry replay).
//!
//! [`ReqBody`] is what goes to a backend: the client's streaming body (size-limited, with body
//! errors flagged so they become a 400 rather than a 502), bytes kept for replay, or nothing.
//! [`RespBody`] is what goes to the client: the backend's streaming body carrying a guard that,
//! when the body ends, returns the connection to the pool and ends the request's accounting.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Error put into the request stream when the client's body breaks or is too large.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("client request body exceeded the {0} byte limit")]
    TooLarge(u64),
    #[error("client request body error: {0}")]
    Broken(hyper::Error),
    #[error("client request body stalled")]
    Stalled,
}

/// What the proxy learns about a streamed request body while hyper sends it.
#[derive(Default)]
pub struct BodyStats {
    pub failed: AtomicU8,
    pub bytes: AtomicU64,
    /// The body is waiting on the client: a deadline that passes now is the client's doing.
    pub waiting: std::sync::atomic::AtomicBool,
}

/// Values of [`BodyStats::failed`].
pub const CLIENT_BODY_BROKEN: u8 = 1;
pub const CLIENT_BODY_TOO_LARGE: u8 = 2;
/// The client sent nothing of its body for the listener's `header_timeout`.
pub const CLIENT_BODY_STALLED: u8 = 3;

/// How long a client's body may go without a byte (NGINX's `client_body_timeout`, measured
/// between two reads), armed only while the body waits on the client. Without it, a client that
/// stops mid-body keeps the backend waiting until `timeouts.request`, and the 504 that follows
/// is counted against a backend that did nothing wrong.
pub struct BodyIdle {
    limit: Duration,
    last: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl BodyIdle {
    pub fn new(limit: Duration) -> BodyIdle {
        BodyIdle {
            limit,
            last: tokio::time::Instant::now(),
            sleep: None,
        }
    }

    /// Data arrived.
    fn progress(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    /// Polled while the body is pending: ready once it has been idle for the limit. The timer
    /// is moved only when it fires early (data came since it was set).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let due = self.last + self.limit;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if sleep.deadline() < due {
                sleep.as_mut().reset(due);
            }
            ready!(sleep.as_mut().poll(cx));
            if tokio::time::Instant::now() >= self.last + self.limit {
                return Poll::Ready(());
            }
        }
    }
}

pub enum ReqBody {
    Empty,
    Replay(Option<Bytes>),
    Stream {
        inner: Incoming,
        seen: u64,
        limit: u64,
        /// Shared with the proxy: whether the client's side failed (the proxy then answers
        /// 400/408/413, not 502) and how many bytes went through, for the access log.
        stats: Arc<BodyStats>,
        idle: BodyIdle,
        /// Fields removed from the request's trailers: on a route with `auth`, those an
        /// allowing answer sets, which trailers would otherwise carry past its check.
        scrub: Option<Arc<[http::HeaderName]>>,
    },
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Replay(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream {
                inner,
                seen,
                limit,
                stats,
                idle,
                scrub,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(mut f))) => {
                    idle.progress();
                    if let (Some(names), Some(t)) = (scrub.as_deref(), f.trailers_mut()) {
                        super::auth::scrub_trailers(t, names);
                    }
                    stats.waiting.store(false, Relaxed);
                    if let Some(d) = f.data_ref() {
                        *seen += d.len() as u64;
                        stats.bytes.store(*seen, Relaxed);
                        if *seen > *limit {
                            stats.failed.store(CLIENT_BODY_TOO_LARGE, Relaxed);
                            return Poll::Ready(Some(Err(Box::new(ClientBodyError::TooLarge(
                                *limit,
                            )))));
                        }
                    }
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => {
                    stats.failed.store(CLIENT_BODY_BROKEN, Relaxed);
                    Poll::Ready(Some(Err(Box::new(ClientBodyError::Broken(e)))))
                }
                Poll::Pending => {
                    stats.waiting.store(true, Relaxed);
                    ready!(idle.poll_expired(cx));
                    stats.failed.store(CLIENT_BODY_STALLED, Relaxed);
                    Poll::Ready(Some(Err(Box::new(ClientBodyError::Stalled))))
                }
                Poll::Ready(None) => {
                    stats.waiting.store(false, Relaxed);
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Replay(b) => b.is_none(),
            ReqBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Replay(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// Runs when a response body is finished (fully sent, or dropped because the client went away).
pub trait OnDone: Send + 'static {
    /// A data frame of `n` bytes is going to the client.
    fn on_data(&mut self, _n: usize) {}
    /// Advances whatever produces the body (the backend connection) from the polling task.
    /// No default: a wrapper that forgot to forward this would stall every streamed body.
    fn poll_drive(&mut self, cx: &mut Context<'_>);
    /// The exchange's deadline passed mid-body (`done(false)` follows).
    fn timed_out(&mut self) {}
    /// The backend failed mid-body: reset, closed early, malformed (`done(false)` follows).
    fn failed(&mut self) {}
    /// An upgraded tunnel ended (`done(false)` follows): bytes from and to the client, and how.
    fn tunnelled(&mut self, _from_client: u64, _to_client: u64, _end: super::upgrade::TunnelEnd) {}
    /// `complete` is true when the body reached its end normally.
    fn done(self: Box<Self>, complete: bool);
}

/// The exchange's deadline (`timeouts.request` covers the whole exchange, as Envoy's route
/// timeout does) for a streaming response body. The timer is armed only the first time the body
/// waits on the backend, so a body already at hand costs no timer.
pub struct Until {
    at: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Until {
    pub fn new(at: std::time::Instant) -> Self {
        Until {
            at: at.into(),
            sleep: None,
        }
    }

    /// Whether the deadline passed; with `waiting`, arms the timer to wake this task at it.
    fn passed(&mut self, cx: &mut Context<'_>, waiting: bool) -> bool {
        match &mut self.sleep {
            Some(s) => s.as_mut().poll(cx).is_ready(),
            None if waiting => {
                let s = self
                    .sleep
                    .insert(Box::pin(tokio::time::sleep_until(self.at)));
                s.as_mut().poll(cx).is_ready()
            }
            None => false,
        }
    }
}

pub enum RespBody {
    Full(Option<Bytes>),
    Stream {
        inner: BackendBody,
        guard: Option<Box<dyn OnDone>>,
        /// None for an upgrade's 101, whose tunnel `timeouts.idle` governs instead.
        until: Option<Until>,
        /// The backend's body broke off; the error goes to hyper at the next poll (see below).
        broke: bool,
    },
    /// A response compressed on its way ([`super::compress`]).
    Gzip(Box<super::compress::Gzip>),
}

/// A backend's streaming response body: from hyper's client, or read by Switchyard from a relay
/// connection ([`crate::proxy::relay::from_hyper`]).
pub enum BackendBody {
    Hyper(Incoming),
    Relay(Box<crate::proxy::relay::from_hyper::Relayed>),
}

impl BackendBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            BackendBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            BackendBody::Relay(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BackendBody::Hyper(b) => b.is_end_stream(),
            BackendBody::Relay(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BackendBody::Hyper(b) => b.size_hint(),
            BackendBody::Relay(b) => b.size_hint(),
        }
    }
}

impl RespBody {
    /// Where the guard of a streamed body sits (under any compression); for a whole body,
    /// its length instead.
    pub fn guard_slot(&mut self) -> Result<&mut Option<Box<dyn OnDone>>, u64> {
        match self {
            RespBody::Stream { guard, .. } => Ok(guard),
            RespBody::Full(b) => Err(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Gzip(g) => g.inner_mut().guard_slot(),
        }
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        RespBody::Full(Some(b.into()))
    }
    pub fn empty() -> Self {
        RespBody::Full(None)
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Gzip(g) => g.poll_frame(cx),
            RespBody::Stream {
                inner,
                guard,
                until,
                broke,
            } => {
                if *broke {
                    return Poll::Ready(Some(Err("the backend's response broke off".into())));
                }
                if let Some(g) = guard.as_mut() {
                    g.poll_drive(cx);
                }
                let r = inner.poll_frame(cx);
                if until.as_mut().is_some_and(|u| u.passed(cx, r.is_pending())) {
                    *until = None;
                    if let Some(mut g) = guard.take() {
                        g.timed_out();
                        g.done(false);
                    }
                    // hyper then ends the response unfinished: the HTTP/1 connection closes, an
                    // HTTP/2 stream is reset, so the client cannot take it for the whole body.
                    return Poll::Ready(Some(Err("timeouts.request passed mid-body".into())));
                }
                match &r {
                    Poll::Ready(Some(Ok(f))) => {
                        if let (Some(d), Some(g)) = (f.data_ref(), guard.as_mut()) {
                            g.on_data(d.len());
                        } else if f.is_trailers() {
                            // Trailers end a message, and hyper's server drops the body once it
                            // has them, unpolled: settled here as complete (the connection goes
                            // back to the pool, the access log has no error).
                            if let Some(g) = guard.take() {
                                g.done(true);
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(g) = guard.take() {
                            g.done(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // Only the backend's side errs here (a client that leaves drops the
                        // body instead): a failure of the backend's, for its health too.
                        if let Some(mut g) = guard.take() {
                            g.failed();
                            g.done(false);
                        }
                        // hyper's server drops what it holds unwritten (the head, the body so
                        // far) once a body errs. One turn first lets it write that out, so the
                        // client sees the status and how far the body got, cut short, as
                        // NGINX and HAProxy show it, instead of a connection closed on nothing.
                        *broke = true;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    _ => {}
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Stream { inner, .. } => inner.is_end_stream(),
            RespBody::Gzip(g) => g.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Stream { inner, .. } => inner.size_hint(),
            // Known only once compressed.
            RespBody::Gzip(_) => SizeHint::default(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let RespBody::Stream { inner, guard, .. } = self {
            if let Some(g) = guard.take() {
                // hyper may drop a body it knows is finished without polling it to the end.
                g.done(inner.is_end_stream());
            }
        }
    }
}
