//! Per-request observation: the access-log line and the OTLP server span, both finished when
//! the response body is done (so bytes out and duration are true), through the body's
//! [`OnDone`] guard. Only built when the access log or tracing is on; otherwise the request path
//! does none of this work.

use super::access_log::{self, rfc3339, AccessLog, Entry};
use super::otlp::{Exporter, Span, TraceCtx};
use crate::proxy::body::{OnDone, RespBody};
use crate::proxy::upgrade::TunnelEnd;
use crate::proxy::{headers, ConnInfo, Trace, X_SWITCHYARD_ERROR};
use http::{header, Request, Response, Version};
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub struct Observer {
    entry: Entry,
    log: Option<Arc<AccessLog>>,
    otlp: Option<Arc<Exporter>>,
    ctx: Option<TraceCtx>,
    started: Instant,
    started_at: SystemTime,
    sent: u64,
    /// Bytes from the client through an upgraded tunnel.
    tunnel_in: u64,
    /// The response became a tunnel, whose end is not the client leaving.
    tunnel: bool,
    /// The line was written (or handed to the exporter): nothing left for `Drop` to do.
    finished: bool,
    inner: Option<Box<dyn OnDone>>,
    trace: Trace,
}

impl Observer {
    pub fn begin<B>(
        log: Option<Arc<AccessLog>>,
        otlp: Option<Arc<Exporter>>,
        conn: &ConnInfo,
        req: &Request<B>,
    ) -> Observer {
        let h = |n: header::HeaderName| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let started_at = SystemTime::now();
        let ctx = otlp.as_ref().map(|_| {
            TraceCtx::from_traceparent(
                req.headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok()),
            )
        });
        let (client, peer) =
            conn.log_client(conn.client_of(|| crate::proxy::forwarded_for(req.headers())));
        let entry = Entry {
            time: rfc3339(started_at),
            client,
            peer,
            method: req.method().to_string(),
            host: h(header::HOST)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent: h(header::USER_AGENT),
            referer: h(header::REFERER),
            tls_version: conn.tls_version,
            tls_client: conn.tls_client.clone(),
            ..Entry::default()
        };
        Observer {
            entry,
            log,
            otlp,
            ctx,
            started: Instant::now(),
            started_at,
            sent: 0,
            tunnel_in: 0,
            tunnel: false,
            finished: false,
            inner: None,
            trace: Trace::default(),
        }
    }

    /// The server span's context, for the upstream attempts' child spans.
    pub fn trace_ctx(&self) -> Option<TraceCtx> {
        self.ctx
    }

    /// Takes what the proxy learned and hooks the observer to the end of the response body.
    pub fn attach(mut self, resp: &mut Response<RespBody>, trace: Trace) {
        let e = &mut self.entry;
        e.status = resp.status().as_u16();
        e.request_id = resp
            .headers()
            .get(headers::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        e.error = resp
            .headers()
            .get(X_SWITCHYARD_ERROR)
            .and_then(|v| crate::error::reason_from_header(v.as_bytes()));
        e.attempts = trace.attempts;
        e.auth = trace.auth.map(crate::proxy::auth::Outcome::as_str);
        e.upstream_connect_ms = trace.connect.map(access_log::ms);
        e.upstream_first_byte_ms = trace.first_byte.map(access_log::ms);
        if let Some(up) = &trace.upstream {
            e.upstream = Some(up.name.clone());
            e.backend = trace
                .backend
                .and_then(|i| up.backends.get(i))
                .map(|b| b.address.clone());
        }
        self.trace = trace;
        let mut me = Box::new(self);
        // Bytes are counted as the backend sent them, before any compression.
        match resp.body_mut().guard_slot() {
            Ok(guard) => {
                me.inner = guard.take();
                *guard = Some(me);
            }
            Err(len) => {
                me.sent = len;
                me.done(true);
            }
        }
    }
}

impl OnDone for Observer {
    fn poll_drive(&mut self, cx: &mut std::task::Context<'_>) {
        if let Some(i) = self.inner.as_mut() {
            i.poll_drive(cx);
        }
    }

    fn on_data(&mut self, n: usize) {
        self.sent += n as u64;
        if let Some(i) = self.inner.as_mut() {
            i.on_data(n);
        }
    }

    fn failed(&mut self) {
        self.entry.error = Some("upstream_reset");
        if let Some(i) = self.inner.as_mut() {
            i.failed();
        }
    }

    fn timed_out(&mut self) {
        self.entry.error = Some("request_timeout");
        if let Some(i) = self.inner.as_mut() {
            i.timed_out();
        }
    }

    fn tunnelled(&mut self, from_client: u64, to_client: u64, end: TunnelEnd) {
        self.tunnel = true;
        self.tunnel_in += from_client;
        self.sent += to_client;
        self.entry.error = match end {
            TunnelEnd::Closed => None,
            TunnelEnd::Broken => Some("tunnel_broken"),
            TunnelEnd::Idle => Some("idle_timeout"),
        };
        if let Some(i) = self.inner.as_mut() {
            i.tunnelled(from_client, to_client, end);
        }
    }

    fn done(mut self: Box<Self>, complete: bool) {
        if let Some(i) = self.inner.take() {
            i.done(complete);
        }
        self.finish(complete);
    }
}

/// A request whose handling was dropped before a response existed: an HTTP/2 client that reset
/// its stream or closed the connection while the backend worked. It is logged as NGINX logs
/// it, status 499 (client closed request) with `downstream_closed`, instead of leaving no trace
/// of a request the backend served.
impl Drop for Observer {
    fn drop(&mut self) {
        if !self.finished {
            if self.entry.status == 0 {
                self.entry.status = 499;
            }
            self.finish(false);
        }
    }
}

impl Observer {
    /// Writes the access-log line and exports the span, once.
    fn finish(&mut self, complete: bool) {
        self.finished = true;
        let mut e = std::mem::take(&mut self.entry);
        e.bytes_out = self.sent;
        e.bytes_in = self
            .trace
            .body
            .as_ref()
            .map_or(self.trace.bytes_in, |s| s.bytes.load(Relaxed))
            + self.tunnel_in;
        e.duration_ms = access_log::ms(self.started.elapsed());
        if !complete && !self.tunnel && e.error.is_none() {
            e.error = Some("downstream_closed");
        }
        if let (Some(otlp), Some(ctx)) = (&self.otlp, self.ctx) {
            let mut attrs = vec![
                ("http.request.method", json!(e.method)),
                ("url.path", json!(e.path)),
                ("server.address", json!(e.host)),
                ("client.address", json!(e.client)),
                ("http.response.status_code", json!(e.status)),
                ("switchyard.request_id", json!(e.request_id)),
            ];
            if let Some(u) = &e.upstream {
                attrs.push(("switchyard.upstream", json!(u)));
            }
            if let Some(r) = e.error {
                attrs.push(("error.type", json!(r)));
            }
            otlp.record(Span {
                ctx,
                span_id: ctx.span_id,
                parent: ctx.parent,
                name: "switchyard.request",
                kind: 2,
                start: self.started_at,
                end: SystemTime::now(),
                attrs,
                error: e.status >= 500,
            });
        }
        if let Some(log) = &self.log {
            log.log(&e);
        }
    }
}
