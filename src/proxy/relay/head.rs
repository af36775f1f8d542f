//! Message heads for the HTTP/1 relay: the client's request head parsed in place (httparse) and
//! rewritten byte for byte into the head sent upstream, and the backend's response head rewritten
//! into the head sent to the client. No header map is built: each head is scanned once for the
//! few fields the proxy acts on and copied once.
//!
//! The header rules are those of [`crate::proxy::headers`] (hop-by-hop fields, including the ones
//! `Connection` names, removed; `X-Forwarded-For` appended to; `X-Forwarded-Proto` and `-Host`
//! set; `X-Request-Id` kept or created). Anything this path does not handle is reported as
//! [`Parsed::Handoff`], and the connection goes on under hyper, which has the full rules.

use super::scan::{self, Copier, Field, Scan, Slots};
use crate::proxy::template::Vars;
use crate::proxy::ConnInfo;
use crate::state::Snapshot;
use crate::upstream::balancer::hash_bytes;
use crate::upstream::{HashKey, Upstream};
use std::net::IpAddr;
use std::sync::Arc;

/// Most header lines a head may have (hyper's limit is 100 too).
pub const MAX_HEADERS: usize = 100;
// parse_request and parse_response keep a bit per header line in a u128.
const _: () = assert!(MAX_HEADERS <= 128);
/// Connection-named headers this path strips; a longer list goes to hyper (requests) or is a
/// bad response (502).
const MAX_CONNECTION_TOKENS: usize = 8;

/// Request headers dropped on the way upstream: hop-by-hop (RFC 9110 §7.6.1, plus the
/// non-standard ones) and the forwarding headers the proxy sets itself.
const REQUEST_DROPPED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "x-forwarded-proto",
    "x-forwarded-host",
];
/// Response headers dropped on the way to the client. `Transfer-Encoding` stays: the body is
/// relayed as it came, chunked or not; so does `Trailer`, which announces the trailers that
/// come with it (end to end, RFC 9110 §6.6.2).
const RESPONSE_DROPPED: [&str; 7] = [
    "upgrade",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
];

/// Fields that frame or route a message: a `Connection` header naming one of them never removes
/// it here (a request doing so goes to hyper, which re-frames the body; in a response the token
/// is ignored), or the bytes that follow would be read differently by the next hop.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];
/// A request whose `Connection` names one of these goes to hyper: besides the framing fields,
/// the ones whose values this path carries over (the id it echoes, the chain it extends).
const NAMED_HANDOFF: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "host",
    "x-request-id",
    "x-forwarded-for",
];

/// A request head the relay can forward.
pub struct Request {
    /// Bytes of the head in the client's buffer.
    pub head_len: usize,
    /// The head to send upstream.
    pub upstream_head: Vec<u8>,
    pub upstream: Arc<Upstream>,
    pub hash: u64,
    /// The backend the request's sticky-session cookie names (u32: keeps `Parsed` in 128 bytes).
    pub sticky: Option<u32>,
    pub body_len: u64,
    pub idempotent: bool,
    pub is_head: bool,
    /// The client asked to close after this exchange (`Connection: close`).
    pub close: bool,
    /// `X-Request-Id` as sent upstream, echoed to the client.
    pub request_id: RequestId,
    /// The route's header edits and the like, when it has any.
    pub actions: Option<Arc<crate::proxy::rewrite::RouteActions>>,
}

/// A request head in the client's buffer, as routing conditions see it.
struct View<'a> {
    method: &'a str,
    buf: &'a [u8],
    fields: &'a [Field],
}

impl crate::proxy::router::RequestView for View<'_> {
    fn method(&self) -> &[u8] {
        self.method.as_bytes()
    }
    fn has_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        let mut lines = self
            .fields
            .iter()
            .filter(|f| f.name(self.buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.value(self.buf));
        match value {
            None => lines.next().is_some(),
            Some(v) => lines.any(|l| l == v),
        }
    }
}

/// Whether the head that starts `buf` ends (blank line) within its first `limit` bytes.
pub fn ends_within(buf: &[u8], limit: usize) -> bool {
    let within = &buf[..buf.len().min(limit + 4)];
    within.windows(4).any(|w| w == b"\r\n\r\n") || within.windows(2).any(|w| w == b"\n\n")
}

/// What to answer a head over `limit` bytes: 414 when the request line alone is, else 431.
pub fn too_large(buf: &[u8], limit: usize) -> crate::error::ProxyError {
    if buf[..buf.len().min(limit)].contains(&b'\n') {
        crate::error::ProxyError::HeadTooLarge
    } else {
        crate::error::ProxyError::UriTooLong
    }
}

/// The request id: the client's own (a range of the head) or one made here.
pub enum RequestId {
    Client(usize, usize),
    Made([u8; 32]),
}

impl Request {
    /// Whether the request may go to a backend again after one received it.
    pub fn resendable(&self, max_replay_body: u64) -> bool {
        self.idempotent && self.body_len <= max_replay_body
    }
}

impl RequestId {
    pub fn bytes<'a>(&'a self, head: &'a [u8]) -> &'a [u8] {
        match self {
            RequestId::Client(a, b) => &head[*a..*b],
            RequestId::Made(id) => id,
        }
    }
}

pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// Not for this path (a protocol feature it leaves to hyper, an error hyper reports, no
    /// route, or an upstream that is not plain HTTP/1).
    Handoff,
    Ready(Request),
}

/// Room for httparse's header lines, left uninitialised: httparse writes the ones it finds, and
/// filling 100 empty slots (3.2 KiB) first cost every head a memset.
fn uninit_slots<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// A request head's parts.
struct RequestHead<'a> {
    method: &'a str,
    target: &'a str,
    head_len: usize,
    /// The request line's length when it goes upstream as it came (0: it is written anew).
    verbatim: usize,
    fields: &'a [Field],
}

/// Finds the parts of the request head at the start of `buf`: with the strict scan, or with
/// httparse when the head is not of its shape. `Err`: more bytes are needed, or the head is
/// for hyper.
fn request_head<'a>(buf: &'a [u8], slots: &'a mut Slots) -> Result<RequestHead<'a>, Parsed> {
    let ascii = |b: &'a [u8]| utf8(b).ok_or(Parsed::Handoff);
    match scan::request_line(buf) {
        Ok((method_end, target, target_end, end)) => match scan::fields(buf, end, slots) {
            Scan::Complete(head_len, n) => {
                return Ok(RequestHead {
                    method: ascii(&buf[..method_end])?,
                    target: ascii(&buf[target..target_end])?,
                    head_len,
                    verbatim: end,
                    fields: scan::written(slots, n),
                })
            }
            Scan::Partial => return Err(Parsed::Partial),
            Scan::Unusual => {}
        },
        Err(Scan::Partial) => return Err(Parsed::Partial),
        Err(_) => {}
    }
    let mut headers = uninit_slots();
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(Parsed::Partial),
        Err(_) => return Err(Parsed::Handoff),
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Err(Parsed::Handoff);
    };
    let n = scan::from_httparse(buf, req.headers, slots);
    Ok(RequestHead {
        method,
        target,
        head_len,
        verbatim: 0,
        fields: scan::written(slots, n),
    })
}

/// Whether the header name `n` is `t`, ignoring ASCII case, for the names this module knows
/// (lowercase letters and `-`, checked by a test). Setting bit 5 of each byte maps exactly the
/// two cases of a letter to one, and no other name byte (RFC 9110 `tchar`) onto a letter or
/// `-`; so eight bytes compare at a time, where `eq_ignore_ascii_case` lowercased both sides
/// byte by byte (with the classification, ~5 % of a keep-alive request's instructions).
fn is_name(n: &[u8], t: &str) -> bool {
    let t = t.as_bytes();
    if n.len() != t.len() {
        return false;
    }
    const CASE: u64 = 0x2020_2020_2020_2020;
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    if n.len() < 8 {
        return n.iter().zip(t).all(|(a, b)| a | 0x20 == *b);
    }
    let mut at = 0;
    while at + 8 < n.len() {
        if word(n, at) | CASE != word(t, at) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes (overlapping the word before when the length is not a multiple).
    word(n, n.len() - 8) | CASE == word(t, t.len() - 8)
}

/// `b` as text if it is UTF-8, checked for ASCII first: the request line and Host are ASCII
/// (the scan's request line always), and `from_utf8`'s general check was ~70 instructions per
/// call on them.
fn utf8(b: &[u8]) -> Option<&str> {
    if b.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(b) });
    }
    std::str::from_utf8(b).ok()
}

fn is_token(v: &[u8], t: &str) -> bool {
    v.eq_ignore_ascii_case(t.as_bytes())
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(|t| t.trim_ascii())
}

/// Parses a request head at the start of `buf`; routes it with `snap`.
pub fn parse_request(buf: &[u8], snap: &Snapshot, conn: &ConnInfo) -> Parsed {
    let mut slots = scan::slots();
    let head = match request_head(buf, &mut slots) {
        Ok(h) => h,
        Err(p) => return p,
    };
    let (method, target, head_len) = (head.method, head.target, head.head_len);
    if method == "CONNECT" || !target.starts_with('/') {
        return Parsed::Handoff;
    }
    let mut host: Option<&[u8]> = None;
    let mut body_len: Option<u64> = None;
    let mut close = false;
    // The X-Forwarded-For lines (by index): all of them are the list the client is added to.
    let mut forwarded_for = 0u128;
    let mut request_id: Option<&[u8]> = None;
    let mut named: [&[u8]; MAX_CONNECTION_TOKENS] = [b""; MAX_CONNECTION_TOKENS];
    let mut named_len = 0;
    // The client takes trailers (`TE` is hop-by-hop; only this part of it is passed on).
    let mut te_trailers = false;
    // Header lines (by index) not passed on, classified in this one pass as in parse_response;
    // `ids`: the X-Request-Id lines, dropped unless the client's id is kept.
    let (mut dropped, mut ids) = (0u128, 0u128);
    for (i, f) in head.fields.iter().enumerate() {
        let (n, v) = (f.name(buf), f.value(buf));
        let bit = 1u128 << i;
        match n.len() {
            4 if is_name(n, "host") && host.replace(v).is_some() => return Parsed::Handoff,
            14 if is_name(n, "content-length") => {
                let Some(len) = parse_len(v) else {
                    return Parsed::Handoff;
                };
                if body_len.replace(len).is_some() {
                    return Parsed::Handoff;
                }
            }
            10 if is_name(n, "connection") => {
                dropped |= bit;
                for t in tokens(v) {
                    if is_token(t, "close") {
                        close = true;
                    } else if t.is_empty() || is_token(t, "keep-alive") {
                    } else if NAMED_HANDOFF.iter().any(|f| is_token(t, f)) {
                        return Parsed::Handoff;
                    } else if named_len < MAX_CONNECTION_TOKENS {
                        named[named_len] = t;
                        named_len += 1;
                    } else {
                        return Parsed::Handoff;
                    }
                }
            }
            // Framing, protocol switches and interim responses are hyper's to handle.
            17 if is_name(n, "transfer-encoding") => return Parsed::Handoff,
            7 if is_name(n, "upgrade") => return Parsed::Handoff,
            6 if is_name(n, "expect") => return Parsed::Handoff,
            12 if is_name(n, "content-type") && v.starts_with(b"application/grpc") => {
                return Parsed::Handoff
            }
            15 if is_name(n, "x-forwarded-for") => {
                dropped |= bit;
                forwarded_for |= bit;
            }
            12 if is_name(n, "x-request-id") => {
                ids |= bit;
                request_id.get_or_insert(v);
            }
            2 if is_name(n, "te") => {
                dropped |= bit;
                te_trailers |= tokens(v).any(|t| is_token(t, "trailers"));
            }
            2 | 7 | 10 | 16 | 17 | 18 | 19 if REQUEST_DROPPED.iter().any(|d| is_name(n, d)) => {
                dropped |= bit;
            }
            _ => {}
        }
    }
    // HTTP/1.1 requires Host: hyper answers its absence (400).
    let Some(host) = host else {
        return Parsed::Handoff;
    };
    let body_len = body_len.unwrap_or(0);
    if body_len > conn.max_body {
        return Parsed::Handoff;
    }
    // hyper's path refuses a Host that is no host name (400).
    let Some(host_str) = utf8(host).filter(|_| crate::proxy::headers::is_host(host)) else {
        return Parsed::Handoff;
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    // A path to normalize is routed, and rewritten, on hyper's path; so is a target with a
    // fragment, which hyper's parser cuts off where this path would route on it.
    if crate::proxy::normalize::needed(path.as_bytes(), conn.strict_paths) || path.contains('#') {
        return Parsed::Handoff;
    }
    let view = View {
        method,
        buf,
        fields: head.fields,
    };
    let Some(matched) = snap.router.route(host_str, path, &view) else {
        return Parsed::Handoff;
    };
    let actions = matched.actions;
    if actions.is_some_and(|a| !a.relayable()) {
        return Parsed::Handoff;
    }
    let client = conn.client_of(|| header_values(buf, head.fields, "x-forwarded-for"));
    // A refused client is answered (403) on hyper's path, which checks again.
    if actions.is_some_and(|a| a.acl.as_ref().is_some_and(|acl| !acl.admits(client))) {
        return Parsed::Handoff;
    }
    // A route that answers itself does so on hyper's path.
    let Some(up_index) = matched.upstream(|k| hash_key(k, path, buf, head.fields, client)) else {
        return Parsed::Handoff;
    };
    let upstream = &snap.upstreams[up_index];
    if upstream.connector.is_h2() || upstream.connector.is_tls() {
        return Parsed::Handoff;
    }
    let hash = match upstream.algorithm {
        crate::config::Algorithm::ConsistentHash => {
            hash_key(&upstream.hash_key, path, buf, head.fields, client)
        }
        _ => 0,
    };

    // Last, so that no hand-off after it charges the client twice. A refused request is
    // answered (429) on hyper's path, which checks again.
    if let Some(l) = actions.and_then(|a| a.limiter.as_ref()) {
        if l.check(client, std::time::Instant::now()).is_err() {
            return Parsed::Handoff;
        }
    }
    let rewritten = actions.and_then(|a| a.rewrite(target, matched.prefix_len));
    let verbatim = if rewritten.is_some() {
        0
    } else {
        head.verbatim
    };

    // The head as it goes upstream.
    let mut out = Vec::with_capacity(head_len + 160);
    if verbatim == 0 {
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(rewritten.as_deref().unwrap_or(target).as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
    }
    let mut copy = Copier::new(verbatim);
    let edits = actions.map(|a| &a.request);
    let named = &named[..named_len];
    let own_id = request_id.is_some_and(|v| !v.is_empty() && v.len() <= 200);
    if !own_id {
        dropped |= ids;
    }
    for (i, f) in head.fields.iter().enumerate() {
        let n = f.name(buf);
        if dropped & (1u128 << i) != 0
            || named.iter().any(|t| n.eq_ignore_ascii_case(t))
            || edits.is_some_and(|e| e.touches(n))
        {
            continue;
        }
        copy.keep(&mut out, buf, f);
    }
    copy.flush(&mut out, buf);
    if te_trailers {
        // As on hyper's path: servers that send trailers only when asked are asked.
        out.extend_from_slice(b"te: trailers\r\n");
    }
    // Made before the edits, whose values may name it.
    let made_id = (!own_id).then(crate::proxy::headers::new_request_id);
    if let Some(e) = edits {
        let vars = Vars {
            conn,
            client,
            host,
            method: method.as_bytes(),
            request_uri: target.as_bytes(),
            request_id: match (&made_id, request_id) {
                (Some(id), _) => id,
                (None, id) => id.unwrap_or_default(),
            },
        };
        e.push_set(&mut out, Some(&vars));
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    // Every line in order, as one list (RFC 9110 §5.3), as the hyper path joins them.
    while forwarded_for != 0 {
        let prev = head.fields[forwarded_for.trailing_zeros() as usize].value(buf);
        forwarded_for &= forwarded_for - 1;
        if !prev.is_empty() {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(conn.client_ip.as_bytes());
    // The fixed parts of the added lines are written as few pieces as they allow (each small
    // copy is a call and a capacity check).
    out.extend_from_slice(if conn.https {
        b"\r\nx-forwarded-proto: https\r\nx-forwarded-host: "
    } else {
        b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: "
    });
    out.extend_from_slice(host);
    let request_id = match (made_id, request_id) {
        (None, Some(v)) => {
            let at = v.as_ptr() as usize - buf.as_ptr() as usize;
            RequestId::Client(at, at + v.len())
        }
        (id, _) => {
            let id = id.unwrap_or_else(crate::proxy::headers::new_request_id);
            out.extend_from_slice(b"\r\nx-request-id: ");
            out.extend_from_slice(&id);
            RequestId::Made(id)
        }
    };
    out.extend_from_slice(b"\r\n\r\n");
    Parsed::Ready(Request {
        head_len,
        upstream_head: out,
        upstream: upstream.clone(),
        hash,
        sticky: upstream
            .sticky
            .as_ref()
            .and_then(|s| s.backend_for(header_values(buf, head.fields, "cookie")))
            .map(|i| i as u32),
        body_len,
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        is_head: method == "HEAD",
        close,
        request_id,
        actions: actions.cloned(),
    })
}

pub(super) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only, as RFC 9110 §8.6 (a list of equal values is left to
/// hyper).
fn parse_len(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn header_values<'a>(
    buf: &'a [u8],
    fields: &'a [Field],
    name: &'a str,
) -> impl DoubleEndedIterator<Item = &'a [u8]> {
    fields
        .iter()
        .filter(move |f| f.name(buf).eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| f.value(buf))
}

fn hash_key(key: &HashKey, path: &str, buf: &[u8], fields: &[Field], client: IpAddr) -> u64 {
    let header = |name| header_values(buf, fields, name);
    let ip;
    let bytes: Option<&[u8]> = match key {
        HashKey::ClientIp => {
            ip = client.to_string();
            Some(ip.as_bytes())
        }
        HashKey::Path => Some(path.as_bytes()),
        HashKey::Header(h) => header(h.as_str()).next(),
        HashKey::Cookie(name) => crate::proxy::cookie_value(header("cookie"), name),
    };
    bytes.map_or_else(|| fastrand::u64(..), hash_bytes)
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes; the client connection closes after it too.
    UntilClose,
}

/// A response head from a backend, rewritten for the client.
pub struct Response {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend connection cannot be reused after this response.
    pub backend_close: bool,
    pub retry_after: Option<u64>,
}

pub enum ParsedResponse {
    Partial,
    /// An interim (1xx) response of this many bytes, to skip.
    Interim(usize),
    Ready(Response),
}

/// A response head's parts.
struct ResponseHead<'a> {
    /// The minor version: 0 for HTTP/1.0.
    version: u8,
    status: u16,
    reason: &'a [u8],
    head_len: usize,
    /// The status line's length when it goes to the client as it came (0: it is written anew).
    verbatim: usize,
    fields: &'a [Field],
}

/// Finds the parts of the response head at the start of `buf`, as [`request_head`] does.
/// `Ok(None)`: more bytes are needed.
fn response_head<'a>(buf: &'a [u8], slots: &'a mut Slots) -> Result<Option<ResponseHead<'a>>, ()> {
    match scan::status_line(buf) {
        Ok((status, end)) => match scan::fields(buf, end, slots) {
            Scan::Complete(head_len, n) => {
                return Ok(Some(ResponseHead {
                    version: 1,
                    status,
                    // After "HTTP/1.1 200 ", before the CRLF.
                    reason: &buf[13..end - 2],
                    head_len,
                    verbatim: end,
                    fields: scan::written(slots, n),
                }));
            }
            Scan::Partial => return Ok(None),
            Scan::Unusual => {}
        },
        Err(Scan::Partial) => return Ok(None),
        Err(_) => {}
    }
    let mut headers = uninit_slots();
    let mut resp = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let head_len = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(());
    };
    let n = scan::from_httparse(buf, resp.headers, slots);
    Ok(Some(ResponseHead {
        version,
        status,
        reason: resp.reason.unwrap_or("").as_bytes(),
        head_len,
        verbatim: 0,
        fields: scan::written(slots, n),
    }))
}

/// Parses a response head at the start of `buf` and writes the client's head to `out`. `close`:
/// the client connection closes after this response, and says so.
pub fn parse_response(
    buf: &[u8],
    is_head: bool,
    close: bool,
    request_id: &[u8],
    out: &mut Vec<u8>,
) -> Result<ParsedResponse, ()> {
    let mut slots = scan::slots();
    let Some(head) = response_head(buf, &mut slots)? else {
        return Ok(ParsedResponse::Partial);
    };
    let (version, status, head_len) = (head.version, head.status, head.head_len);
    // No upgrade was asked for, so a 101 is a protocol error; other 1xx are interim.
    match status {
        101 => return Err(()),
        100..=199 => return Ok(ParsedResponse::Interim(head_len)),
        _ => {}
    }
    let mut backend_close = version == 0;
    let mut has_date = false;
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut has_request_id = false;
    let mut retry_after = None;
    let mut named: [&[u8]; MAX_CONNECTION_TOKENS] = [b""; MAX_CONNECTION_TOKENS];
    let mut named_len = 0;
    // Which header lines (by index; at most MAX_HEADERS = 100) are not passed on: hop-by-hop
    // ones, and Content-Length lines, dropped when a Transfer-Encoding turns out to be there.
    // Classified here in one pass, by length first, so the copy below compares no names.
    let (mut dropped, mut lengths) = (0u128, 0u128);
    for (i, f) in head.fields.iter().enumerate() {
        let (n, v) = (f.name(buf), f.value(buf));
        let bit = 1u128 << i;
        match n.len() {
            14 if is_name(n, "content-length") => {
                lengths |= bit;
                let len = parse_len(v).ok_or(())?;
                if length.replace(len).is_some_and(|l| l != len) {
                    return Err(());
                }
            }
            17 if is_name(n, "transfer-encoding") => {
                chunked = Some(tokens(v).last().is_some_and(|t| is_token(t, "chunked")));
            }
            10 if is_name(n, "connection") => {
                dropped |= bit;
                for t in tokens(v) {
                    if is_token(t, "close") {
                        backend_close = true;
                    } else if is_token(t, "keep-alive") {
                        if version == 0 {
                            backend_close = false;
                        }
                    } else if !t.is_empty() && !FRAMING.iter().any(|f| is_token(t, f)) {
                        if named_len == MAX_CONNECTION_TOKENS {
                            return Err(());
                        }
                        named[named_len] = t;
                        named_len += 1;
                    }
                }
            }
            12 if is_name(n, "x-request-id") => has_request_id = true,
            4 if is_name(n, "date") => has_date = true,
            11 if is_name(n, "retry-after") => {
                retry_after = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map(|s| s.min(crate::proxy::MAX_RETRY_AFTER_S));
            }
            2 | 7 | 10 | 16 | 18 | 19 if RESPONSE_DROPPED.iter().any(|d| is_name(n, d)) => {
                dropped |= bit;
            }
            _ => {}
        }
    }
    // HTTP/1.0 has no transfer codings (hyper refuses them too).
    if version == 0 && chunked.is_some() {
        return Err(());
    }
    let framing = if is_head || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        backend_close = true;
    }
    let close = close || framing == Framing::UntilClose;

    if head.verbatim == 0 {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa3(status).as_slice());
        out.push(b' ');
        out.extend_from_slice(head.reason);
        out.extend_from_slice(b"\r\n");
    }
    let mut copy = Copier::new(head.verbatim);
    let named = &named[..named_len];
    // With a Transfer-Encoding the body's length is not Content-Length's (RFC 9112 §6.3);
    // passing both on would let the next hop frame it differently.
    if chunked.is_some() {
        dropped |= lengths;
    }
    for (i, f) in head.fields.iter().enumerate() {
        let n = f.name(buf);
        if dropped & (1u128 << i) != 0 || named.iter().any(|t| n.eq_ignore_ascii_case(t)) {
            continue;
        }
        copy.keep(out, buf, f);
    }
    copy.flush(out, buf);
    if !has_request_id {
        push_header(out, b"x-request-id", request_id);
    }
    if !has_date {
        // As hyper's server: a response without a Date gets one (RFC 9110 §6.6.1).
        push_date(out);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ParsedResponse::Ready(Response {
        head_len,
        status,
        framing,
        backend_close,
        retry_after,
    }))
}

/// Adds `connection: close` to a client head [`parse_response`] wrote without it.
pub fn announce_close(head: &mut Vec<u8>) {
    if head.ends_with(b"\r\n\r\n") {
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"connection: close\r\n\r\n");
    }
}

fn itoa3(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

thread_local! {
    /// The Date header value of the current second (formatting it per response costs more).
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            }
        }
        if d.0 == secs {
            push_header(out, b"date", &d.1);
        }
    });
}

/// A response Switchyard makes itself, as bytes (same status, reason header and body as
/// [`crate::proxy::error_response`]), and the length of its body. The answer to a HEAD request
/// has the body's length but not the body.
pub fn error_response(
    e: crate::error::ProxyError,
    request_id: &[u8],
    is_head: bool,
    close: bool,
) -> (Vec<u8>, u64) {
    crate::observe::metrics::error_made(e);
    let status = e.status();
    let body = format!("{} {}\n", status.as_u16(), e.reason());
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&itoa3(status.as_u16()));
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(
        &mut out,
        crate::proxy::X_SWITCHYARD_ERROR.as_bytes(),
        e.reason().as_bytes(),
    );
    push_header(&mut out, b"content-type", b"text/plain; charset=utf-8");
    push_header(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    push_date(&mut out);
    if !request_id.is_empty() {
        push_header(&mut out, b"x-request-id", request_id);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if is_head {
        return (out, 0);
    }
    out.extend_from_slice(body.as_bytes());
    (out, body.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_match_in_any_case_and_nothing_else_does() {
        let known = REQUEST_DROPPED
            .iter()
            .chain(&RESPONSE_DROPPED)
            .chain(&NAMED_HANDOFF)
            .chain(&[
                "content-type",
                "x-forwarded-for",
                "x-request-id",
                "expect",
                "date",
                "retry-after",
            ]);
        for &name in known {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name}"
            );
            let upper = name.to_ascii_uppercase();
            assert!(is_name(name.as_bytes(), name) && is_name(upper.as_bytes(), name));
            // Every other name byte in each position fails.
            for i in 0..name.len() {
                for b in (0u8..=255).filter(|b| !b.eq_ignore_ascii_case(&name.as_bytes()[i])) {
                    let mut n = name.as_bytes().to_vec();
                    n[i] = b;
                    if n.iter()
                        .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c))
                    {
                        assert!(
                            !is_name(&n, name),
                            "{:?} is not {name}",
                            String::from_utf8_lossy(&n)
                        );
                    }
                }
            }
            assert!(!is_name(&name.as_bytes()[1..], name));
        }
    }

    fn rewrite(head: &str) -> (Response, String) {
        let mut out = Vec::new();
        let Ok(ParsedResponse::Ready(r)) =
            parse_response(head.as_bytes(), false, false, b"rid", &mut out)
        else {
            panic!("not a complete response: {head:?}");
        };
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_rewrite_drops_hop_by_hop_and_named_fields_and_keeps_the_rest() {
        let (r, out) = rewrite(
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nConnection: keep-alive, X-Internal\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nProxy-Authenticate: Basic\r\n\
             Proxy-Authorization: y\r\nTE: trailers\r\nTrailer: x-t\r\nX-Internal: 1\r\n\
             Transfer-Encoding: chunked\r\nContent-Length: 5\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
             X-Request-Id: from-backend\r\nX-Kept: 2\r\nAge: 3\r\n\r\n",
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTrailer: x-t\r\nTransfer-Encoding: chunked\r\n\
             Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nX-Request-Id: from-backend\r\nX-Kept: 2\r\nAge: 3\r\n\r\n"
        );
        assert_eq!(r.framing, Framing::Chunked);
        assert!(!r.backend_close);
    }

    #[test]
    fn header_lines_are_copied_as_they_came_and_always_end_in_crlf() {
        let head = b"HTTP/1.1 200 OK\r\nX-Spaced:   a  b\r\nX-Empty:\r\nX-Tab:\tv\r\ncontent-length: 0\r\n\r\n";
        let mut out = Vec::new();
        let Ok(ParsedResponse::Ready(_)) = parse_response(head, false, false, b"r", &mut out)
        else {
            panic!("not parsed");
        };
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("\r\nX-Spaced:   a  b\r\n"), "{out:?}");
        assert!(
            out.contains("\r\nX-Empty:\r\n") || out.contains("\r\nX-Empty: \r\n"),
            "{out:?}"
        );
        assert!(
            out.contains("\r\nX-Tab:\tv\r\ncontent-length: 0\r\n"),
            "{out:?}"
        );
        // Bare LF line ends (httparse's to parse, not the scan's) go out as CRLF, and the
        // status line is written anew.
        let head = b"HTTP/1.1 200 OK\nX-Spaced:   a  b\nX-Empty:\ncontent-length: 0\n\n";
        let mut out = Vec::new();
        let Ok(ParsedResponse::Ready(r)) = parse_response(head, false, false, b"r", &mut out)
        else {
            panic!("not parsed");
        };
        assert_eq!(r.head_len, head.len());
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\nX-Spaced:   a  b\r\nX-Empty:\r\ncontent-length: 0\r\nx-request-id: r\r\n"),
            "{out:?}"
        );
    }

    #[test]
    fn response_rewrite_keeps_content_length_without_transfer_encoding_and_adds_what_is_missing() {
        let (r, out) =
            rewrite("HTTP/1.1 503 Busy\r\ncontent-length: 2\r\nretry-after: 7\r\n\r\nok");
        assert!(out.starts_with("HTTP/1.1 503 Busy\r\ncontent-length: 2\r\nretry-after: 7\r\nx-request-id: rid\r\ndate: "));
        assert!(out.ends_with(" GMT\r\n\r\n"));
        assert_eq!(r.framing, Framing::Length(2));
        assert_eq!(r.retry_after, Some(7));
        let (r, _) = rewrite("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        assert!(r.backend_close);
    }
}
