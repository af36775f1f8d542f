//! Request mirroring (Envoy's `request_mirror_policies`, NGINX's `mirror`): a copy of a route's
//! requests, all or a share of them, goes to another upstream, and its answer is dropped. For
//! trying a new version on real traffic before any user depends on it.
//!
//! The copy is sent after the request's head and body are ready for the primary, on a task of
//! its own, so the client never waits for the shadow and never sees its answer, its errors or
//! its latency. It carries the same method, path, headers (after the route's edits) and body,
//! plus `X-Switchyard-Mirror` naming the primary upstream, so the shadow can tell a copy and
//! skip side effects it must not repeat.
//!
//! A body is copied only when Switchyard keeps it anyway to replay it on a retry (a declared
//! length up to the primary upstream's `retry.max_replay_body`): a streamed body is not held
//! back for the shadow's sake, and such requests are counted as `skipped`. So are copies over
//! [`MAX_IN_FLIGHT`], which keeps a slow shadow from piling up tasks and memory.

use super::body::ReqBody;
use super::Trace;
use crate::upstream::balancer::PickCtx;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Copies of one route in flight at most; more are skipped. A thousand outstanding copies is
/// far past what a healthy shadow holds at the rates one instance serves, and bounds the memory
/// a stalled one can take to that many requests (bodies up to `max_replay_body` each).
pub const MAX_IN_FLIGHT: usize = 1024;

/// Largest answer body read from the shadow so its connection can be reused; past it the
/// connection is dropped instead.
const MAX_DRAIN: usize = 1 << 20;

/// Header telling the shadow the request is a copy; its value is the primary upstream.
pub const X_SWITCHYARD_MIRROR: http::HeaderName =
    http::HeaderName::from_static("x-switchyard-mirror");

tokio::task_local! {
    /// Set while a copy is forwarded: errors made for it are not the client's, and are counted
    /// in the mirror's own metric, not in `switchyard_errors_total`.
    static IN_MIRROR: ();
}

/// Whether the current task forwards a mirrored copy.
pub fn in_mirror() -> bool {
    IN_MIRROR.try_with(|_| ()).is_ok()
}

/// A route's mirror, compiled per snapshot.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// The shadow upstream's index in the snapshot.
    pub upstream: usize,
    /// Share of requests copied, in `[0, 1]`.
    share: f64,
    in_flight: Arc<AtomicUsize>,
}

impl Mirror {
    pub fn new(upstream: usize, percent: f64) -> Mirror {
        Mirror {
            upstream,
            share: (percent / 100.0).clamp(0.0, 1.0),
            in_flight: Arc::default(),
        }
    }

    /// Whether this request is one of the share copied.
    pub fn draw(&self) -> bool {
        self.share >= 1.0 || fastrand::f64() < self.share
    }

    /// Sends a copy of a request, whose body is `body` (`None`: it has none), to `shadow` on a
    /// task of its own. `primary` names the upstream that serves the client.
    pub fn send(
        &self,
        shadow: Arc<Upstream>,
        ctx: PickCtx,
        parts: &http::request::Parts,
        body: Option<Bytes>,
        primary: &str,
    ) {
        if self.in_flight.fetch_add(1, Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Relaxed);
            crate::observe::metrics::mirror(Outcome::Skipped);
            return;
        }
        let mut req = http::Request::new(());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        if let Ok(v) = HeaderValue::from_str(primary) {
            req.headers_mut().insert(X_SWITCHYARD_MIRROR, v);
        }
        let (parts, ()) = req.into_parts();
        let body = body.map_or(ReqBody::Empty, |b| ReqBody::Replay(Some(b)));
        let in_flight = self.in_flight.clone();
        let timeout = shadow.request_timeout;
        tokio::spawn(IN_MIRROR.scope((), async move {
            let resp =
                super::forward::forward(&shadow, &ctx, parts, body, timeout, &mut Trace::default())
                    .await;
            let made_here = resp.headers().contains_key(super::X_SWITCHYARD_ERROR);
            crate::observe::metrics::mirror(if made_here {
                Outcome::Failed
            } else {
                Outcome::Sent
            });
            let mut body = resp.into_body();
            let mut read = 0;
            while read <= MAX_DRAIN {
                match body.frame().await {
                    Some(Ok(f)) => read += f.data_ref().map_or(0, Bytes::len),
                    _ => break,
                }
            }
            in_flight.fetch_sub(1, Relaxed);
        }));
    }
}

/// What became of one request's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The shadow answered (any status).
    Sent,
    /// No answer from the shadow: Switchyard made the error (no backend, refused, timed out).
    Failed,
    /// Not copied: its body was streamed, not kept, or too many copies were in flight.
    Skipped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_requests_is_drawn() {
        let m = Mirror::new(0, 25.0);
        let n = (0..10_000).filter(|_| m.draw()).count();
        // Mean 2,500, standard deviation 43.
        assert!((2_300..2_700).contains(&n), "{n}");
        assert!((0..100).all(|_| Mirror::new(0, 100.0).draw()));
    }

    #[tokio::test]
    async fn errors_made_for_a_copy_are_told_apart() {
        assert!(!in_mirror());
        assert!(IN_MIRROR.scope((), async { in_mirror() }).await);
        // Nor does it leak into a task the copy did not start.
        assert!(!tokio::spawn(async { in_mirror() }).await.unwrap());
    }
}
