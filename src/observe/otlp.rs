//! W3C trace context and optional OTLP trace export (OTLP/HTTP with JSON encoding).
//!
//! With `[log] otlp_endpoint` set, every request gets a server span and every upstream attempt a
//! client span; the attempt's span id goes to the backend in `traceparent`, so the backend's spans
//! hang under Switchyard's. The trace id comes from the client's `traceparent` when it sends one.
//! Spans are batched by a task in the control runtime and POSTed to `{endpoint}/v1/traces`; if the
//! collector is slow or down, spans are dropped rather than held or retried forever.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Spans buffered before the exporter drops new ones.
const QUEUE: usize = 8192;
/// Spans per export request, and the longest a span waits to be sent.
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span, if the client sent `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn random_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

impl TraceCtx {
    /// A server span continuing the client's trace, or starting a new one.
    pub fn from_traceparent(v: Option<&str>) -> TraceCtx {
        let parsed = v.and_then(|v| {
            let mut it = v.trim().split('-');
            let (ver, tid, pid, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
            let trace_id: [u8; 16] = unhex(tid)?;
            let parent: [u8; 8] = unhex(pid)?;
            let flags: [u8; 1] = unhex(flags)?;
            (ver == "00" && trace_id != [0; 16] && parent != [0; 8]).then_some((
                trace_id,
                parent,
                flags[0] & 1 == 1,
            ))
        });
        match parsed {
            Some((trace_id, parent, sampled)) => TraceCtx {
                trace_id,
                span_id: random_span_id(),
                parent: Some(parent),
                sampled,
            },
            None => TraceCtx {
                trace_id: fastrand::u128(1..).to_be_bytes(),
                span_id: random_span_id(),
                parent: None,
                sampled: true,
            },
        }
    }

    /// `traceparent` for a child span `span_id` of this trace.
    pub fn header_for(&self, span_id: [u8; 8]) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&span_id),
            self.sampled as u8
        )
    }
}

/// A finished span, ready to export.
pub struct Span {
    pub ctx: TraceCtx,
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    /// OTLP SpanKind: 2 server, 3 client.
    pub kind: u8,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attrs: Vec<(&'static str, Value)>,
    pub error: bool,
}

pub struct Exporter {
    tx: mpsc::Sender<Span>,
}

impl Exporter {
    /// Starts the export task on the current runtime.
    pub fn start(endpoint: &str) -> Option<Exporter> {
        let uri: http::Uri = format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            .parse()
            .ok()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export_loop(uri, rx));
        Some(Exporter { tx })
    }

    pub fn record(&self, span: Span) {
        if span.ctx.sampled {
            let _ = self.tx.try_send(span);
        }
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

fn encode(spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let attrs: Vec<Value> = s
                .attrs
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::Number(n) if n.is_u64() || n.is_i64() => json!({"intValue": n.to_string()}),
                        Value::Number(n) => json!({"doubleValue": n}),
                        Value::Bool(b) => json!({"boolValue": b}),
                        other => json!({"stringValue": other.as_str().map_or_else(|| other.to_string(), str::to_string)}),
                    };
                    json!({"key": k, "value": value})
                })
                .collect();
            let mut span = json!({
                "traceId": hex(&s.ctx.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attrs,
                "status": {"code": if s.error { 2 } else { 1 }},
            });
            if let Some(p) = s.parent {
                span["parentSpanId"] = json!(hex(&p));
            }
            span
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "switchyard"}}]},
        "scopeSpans": [{"scope": {"name": "switchyard", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}]
    }]})
}

async fn export_loop(uri: http::Uri, mut rx: mpsc::Receiver<Span>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let room = BATCH - batch.len();
        let closed = tokio::select! {
            n = rx.recv_many(&mut batch, room) => n == 0,
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
        };
        if !batch.is_empty() && (batch.len() >= BATCH || closed || rx.is_empty()) {
            let body = encode(&batch).to_string();
            batch.clear();
            if let Err(e) = post(&uri, body).await {
                tracing::debug!("OTLP export failed, spans dropped: {e}");
            }
        }
        if closed {
            return;
        }
    }
}

async fn post(uri: &http::Uri, body: String) -> Result<(), String> {
    let host = uri.host().ok_or("no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| "connect timeout".to_string())?
    .map_err(|e| e.to_string())?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::post(uri.path())
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), tx.send_request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_client_trace_and_makes_child_headers() {
        let c = TraceCtx::from_traceparent(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        assert_eq!(hex(&c.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            c.parent.map(|p| hex(&p)).as_deref(),
            Some("b7ad6b7169203331")
        );
        let h = c.header_for([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(h, "00-0af7651916cd43dd8448eb211c80319c-0102030405060708-01");
        let fresh = TraceCtx::from_traceparent(Some("garbage"));
        assert!(fresh.parent.is_none() && fresh.sampled);
    }
}
