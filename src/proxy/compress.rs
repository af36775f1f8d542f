//! Response compression, a route's `compress`: gzip for clients that accept it, as NGINX's
//! `gzip`, Envoy's compressor filter, Caddy's `encode` and Traefik's `compress` do.
//!
//! A response is compressed when the request's `Accept-Encoding` allows gzip and the response
//! is of a listed media type, not already encoded, not `Cache-Control: no-transform`, not a
//! range (206) or bodiless status, and not declared shorter than `min_length`. A HEAD's answer
//! gets the same headers and keeps its empty body. Its length is
//! then unknown (chunked, or the end of an HTTP/2 stream), its strong `ETag` becomes weak (the
//! bytes differ, the meaning does not) and `Accept-Ranges` goes. Every response of a listed
//! type gets `Vary: Accept-Encoding`, compressed or not, so a cache keeps the two apart.
//!
//! The body streams: what the backend sent is compressed as it comes, and flushed whenever the
//! backend pauses, so a server-sent event or a long poll's answer reaches the client at once.
//! A backend that fails mid-body makes the response end unfinished, as on any route.

use super::body::RespBody;
use crate::config::CompressConfig;
use bytes::Bytes;
use flate2::write::GzEncoder;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame};
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

/// Compressed output is handed on once this much gathered, even while the backend keeps
/// sending: a frame of about one TLS record's worth per write.
const EMIT_AT: usize = 16 * 1024;

/// Responses compressed, bytes taken from backends and the compressed bytes made of them.
pub static COMPRESSED: AtomicU64 = AtomicU64::new(0);
pub static BYTES_IN: AtomicU64 = AtomicU64::new(0);
pub static BYTES_OUT: AtomicU64 = AtomicU64::new(0);

/// A route's compression settings, compiled.
#[derive(Debug, Clone)]
pub struct Compress {
    level: u32,
    min_length: u64,
    /// Lower-case media types; one ending in `/` is a whole type (`text/*`).
    types: Vec<String>,
}

impl Compress {
    pub fn compile(c: &CompressConfig) -> Compress {
        let types = c
            .content_types
            .iter()
            .map(|t| {
                let t = t.trim().to_ascii_lowercase();
                t.strip_suffix('*').map_or(t.clone(), str::to_owned)
            })
            .collect();
        Compress {
            level: c.level.clamp(1, 9),
            min_length: c.min_length,
            types,
        }
    }

    /// Adds `Vary` to a response of a listed type and, when the client accepts gzip
    /// (`accepted`, [`accepts_gzip`]), compresses it. The answer to a HEAD (`head`) gets the
    /// headers a GET's compressed answer would have (RFC 9110 §9.3.2), and keeps its empty body.
    pub fn apply(
        &self,
        accepted: bool,
        head: bool,
        resp: Response<RespBody>,
    ) -> Response<RespBody> {
        if !self.listed(resp.headers()) {
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        super::headers::add_vary(&mut parts.headers, "Accept-Encoding");
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .or_else(|| body.size_hint().exact());
        let compress = accepted
            && !bodiless(parts.status)
            && parts.status != StatusCode::PARTIAL_CONTENT
            && !parts.headers.contains_key(header::CONTENT_RANGE)
            && !encoded(&parts.headers)
            && !no_transform(&parts.headers)
            && declared.is_none_or(|n| n >= self.min_length.max(1));
        if !compress {
            return Response::from_parts(parts, body);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::ACCEPT_RANGES);
        // Digests of the bytes the backend sent, which the client no longer gets.
        for digest in ["content-md5", "content-digest", "repr-digest"] {
            parts.headers.remove(digest);
        }
        parts
            .headers
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        weaken_etag(&mut parts.headers);
        if head {
            return Response::from_parts(parts, body);
        }
        COMPRESSED.fetch_add(1, Relaxed);
        let gz = Gzip {
            inner: body,
            enc: Some(GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(self.level),
            )),
            unflushed: false,
            trailers: None,
            inner_done: false,
        };
        Response::from_parts(parts, RespBody::Gzip(Box::new(gz)))
    }

    /// Whether the response's media type is one of the route's.
    fn listed(&self, h: &HeaderMap) -> bool {
        let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let media = ct.split(';').next().unwrap_or("").trim();
        self.types.iter().any(|t| {
            if t.ends_with('/') {
                media.len() > t.len()
                    && media
                        .get(..t.len())
                        .is_some_and(|m| m.eq_ignore_ascii_case(t))
            } else {
                media.eq_ignore_ascii_case(t)
            }
        })
    }
}

/// Whether `Accept-Encoding` allows gzip (or `x-gzip`, RFC 9110 §8.4.1.3): named with a
/// weight above 0, or covered by `*` when not named. No header: not compressed, as every
/// proxy does (RFC 9110 would allow any coding).
pub fn accepts_gzip(h: &HeaderMap) -> bool {
    let (mut named, mut star) = (None, None);
    for v in h.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut it = item.split(';');
            let coding = it.next().unwrap_or("").trim();
            let q = it
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .next()
                .is_none_or(|q| q.trim().parse::<f32>().is_ok_and(|q| q > 0.0));
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                named = Some(named.unwrap_or(false) || q);
            } else if coding == "*" {
                star = Some(q);
            }
        }
    }
    named.or(star).unwrap_or(false)
}

fn bodiless(s: StatusCode) -> bool {
    s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED
}

/// Already encoded by the backend (anything but `identity`).
fn encoded(h: &HeaderMap) -> bool {
    h.get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// `Cache-Control: no-transform` (RFC 9111 §5.2.2.6): no proxy changes the content.
fn no_transform(h: &HeaderMap) -> bool {
    h.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    })
}

/// A strong validator names exact bytes, which compression changes: `"x"` becomes `W/"x"`.
fn weaken_etag(h: &mut HeaderMap) {
    let Some(tag) = h.get(header::ETAG) else {
        return;
    };
    if tag.as_bytes().starts_with(b"\"") {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            h.insert(header::ETAG, v);
        }
    }
}

/// A response body gzip-compressed as it streams.
pub struct Gzip {
    inner: RespBody,
    /// None once the gzip trailer is written.
    enc: Option<GzEncoder<Vec<u8>>>,
    /// Input taken since the last flush.
    unflushed: bool,
    /// The backend's trailers, sent after the last compressed bytes.
    trailers: Option<HeaderMap>,
    /// The backend's body has ended: its guard has settled the request as complete.
    inner_done: bool,
}

impl Gzip {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::body::BoxError>>> {
        loop {
            let Some(enc) = self.enc.as_mut() else {
                // After trailers the backend's body still has its end to give, which is what
                // settles its guard (connection back to the pool, a complete access-log line).
                // Taken before the trailers go on: hyper drops a body once it has its trailers.
                if !self.inner_done {
                    match Pin::new(&mut self.inner).poll_frame(cx) {
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                        Poll::Ready(_) => self.inner_done = true,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        BYTES_IN.fetch_add(data.len() as u64, Relaxed);
                        // Writing into a Vec fails only for want of memory.
                        enc.write_all(&data)?;
                        self.unflushed = !data.is_empty() || self.unflushed;
                        if enc.get_ref().len() >= EMIT_AT {
                            return Poll::Ready(Some(Ok(self.take())));
                        }
                    }
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        return self.finish();
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    self.inner_done = true;
                    return self.finish();
                }
                Poll::Pending => {
                    // The backend paused: what it sent so far goes out now, not with its next
                    // bytes, which may be a long way off (server-sent events, long polls).
                    if !self.unflushed {
                        return Poll::Pending;
                    }
                    enc.flush()?;
                    self.unflushed = false;
                    return Poll::Ready(Some(Ok(self.take())));
                }
            }
        }
    }

    /// The compressed bytes gathered so far, as one frame.
    fn take(&mut self) -> Frame<Bytes> {
        let out = self
            .enc
            .as_mut()
            .map(|e| std::mem::take(e.get_mut()))
            .unwrap_or_default();
        BYTES_OUT.fetch_add(out.len() as u64, Relaxed);
        Frame::data(Bytes::from(out))
    }

    /// The end of the backend's body: the gzip trailer, then any trailers of the backend's.
    fn finish(&mut self) -> Poll<Option<Result<Frame<Bytes>, super::body::BoxError>>> {
        let Some(enc) = self.enc.take() else {
            return Poll::Ready(None);
        };
        let out = enc.finish()?;
        BYTES_OUT.fetch_add(out.len() as u64, Relaxed);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }

    pub fn is_end_stream(&self) -> bool {
        self.enc.is_none() && self.trailers.is_none() && self.inner_done
    }

    pub fn inner_mut(&mut self) -> &mut RespBody {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        accepts_gzip(&h)
    }

    #[test]
    fn accept_encoding_weights_decide() {
        assert!(accept("gzip"));
        assert!(accept("br, GZIP;q=0.5"));
        assert!(accept("x-gzip"));
        assert!(accept("*"));
        assert!(!accept("gzip;q=0"));
        assert!(!accept("gzip; q=0.000"));
        assert!(!accept("br, deflate"));
        assert!(!accept("*;q=0"));
        // A coding named outright wins over `*`.
        assert!(!accept("*, gzip;q=0"));
        assert!(accept("*;q=0, gzip"));
        assert!(!accept("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn media_types_match_whole_or_by_type() {
        let c = Compress::compile(&CompressConfig {
            min_length: 0,
            content_types: vec!["text/*".into(), "application/json".into()],
            level: 1,
        });
        let typed = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
            c.listed(&h)
        };
        assert!(typed("text/html; charset=utf-8"));
        assert!(typed("Application/JSON"));
        assert!(!typed("application/json-seq"));
        assert!(!typed("image/png"));
        assert!(!typed("text/"));
        assert!(!c.listed(&HeaderMap::new()));
    }
}
