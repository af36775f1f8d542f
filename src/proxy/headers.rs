//! Request and response header rules of a reverse proxy: hop-by-hop headers removed (including
//! those named in `Connection`), `X-Forwarded-*` set, `X-Request-Id` kept or created. `Host` and
//! W3C `traceparent` pass through untouched.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard ones clients still send.
/// `Trailer` is not one (RFC 2616 listed it; RFC 9110 §6.6.2 makes it end to end): hyper's
/// HTTP/1 encoders send only the trailer fields it names, so dropping it dropped the trailers.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
];

/// Removes hop-by-hop headers. `Transfer-Encoding` is also removed: hyper re-frames the body.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Fast path: most messages carry none of these; one pass over the (few) header names is
    // cheaper than eight hash lookups.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::try_from(t.trim()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::TRANSFER_ENCODING);
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    *n == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(n)
}

/// Adds `field` to a response's `Vary`, unless it varies by it (or by everything) already.
pub fn add_vary(h: &mut HeaderMap, field: &'static str) {
    let present = h.get_all(header::VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            let t = t.trim_ascii();
            t == b"*" || t.eq_ignore_ascii_case(field.as_bytes())
        })
    });
    if !present {
        h.append(header::VARY, HeaderValue::from_static(field));
    }
}

/// Appends the client to `X-Forwarded-For` and sets proto and host.
pub fn add_forwarded(
    h: &mut HeaderMap,
    client_ip: &HeaderValue,
    https: bool,
    host: Option<&HeaderValue>,
) {
    // Every X-Forwarded-For line, in order, is one list (RFC 9110 §5.3): a proxy in front that
    // adds a line of its own (HAProxy's `option forwardfor`) must not lose the earlier ones.
    let mut prev = String::new();
    for v in h.get_all(&X_FORWARDED_FOR) {
        let v = v.to_str().map_or("", str::trim);
        if !v.is_empty() {
            if !prev.is_empty() {
                prev.push_str(", ");
            }
            prev.push_str(v);
        }
    }
    // Most requests bring no X-Forwarded-For: the connection's precomputed value is inserted
    // as is (a reference count), with no formatting or allocation per request.
    let xff = match client_ip.to_str() {
        Ok(ip) if !prev.is_empty() => HeaderValue::try_from(format!("{prev}, {ip}")).ok(),
        _ => Some(client_ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    // The client's own value never passes, with or without a host to replace it.
    match host {
        Some(host) => h.insert(X_FORWARDED_HOST, host.clone()),
        None => h.remove(X_FORWARDED_HOST),
    };
}

/// Joins several `cookie` lines into one, "; " between them.
pub fn join_cookies(h: &mut HeaderMap) {
    let mut lines = h.get_all(http::header::COOKIE).iter();
    if lines.next().is_none() || lines.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, c) in h.get_all(http::header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(c.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(http::header::COOKIE, v);
    }
}

/// Whether a Host value is a host (RFC 3986 reg-name, IP literal) with an optional port: no
/// space, `/`, `@`, `?`, `#` or quote that could make the router and the backend read it apart.
pub fn is_host(h: &[u8]) -> bool {
    // A table: one load per byte, on every request's Host.
    const OK: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = (b as u8).is_ascii_alphanumeric();
            b += 1;
        }
        let extra = b"-._~%!$&'()*+,;=:[]";
        let mut i = 0;
        while i < extra.len() {
            t[extra[i] as usize] = true;
            i += 1;
        }
        t
    };
    h.iter().all(|&b| OK[usize::from(b)])
}

/// The client's IP as a header value, made once per connection for `X-Forwarded-For`.
///
/// IPv4 is written by hand: `Ipv4Addr`'s `Display` (four `u8` formats through `fmt::write`
/// into a `String`) was 7 % of a connection-per-request's user-space instructions
/// (callgrind, `bench/instr.sh -m close`).
pub fn client_ip(client: std::net::SocketAddr) -> HeaderValue {
    let v = match client.ip() {
        std::net::IpAddr::V4(ip) => {
            let mut out = [0u8; 15];
            let n = write_ipv4(&mut out, ip.octets());
            HeaderValue::from_bytes(&out[..n])
        }
        ip => HeaderValue::try_from(ip.to_string()),
    };
    v.unwrap_or(HeaderValue::from_static("unknown"))
}

/// Writes `a.b.c.d` in decimal into `out`; returns its length.
fn write_ipv4(out: &mut [u8; 15], octets: [u8; 4]) -> usize {
    let mut n = 0;
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            out[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            out[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        out[n] = b'0' + o % 10;
        n += 1;
    }
    n
}

/// Keeps a client's `X-Request-Id` or creates one (128 random bits, hex); returns it.
pub fn ensure_request_id(h: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = client_request_id(h) {
        return v.clone();
    }
    let v = fresh_request_id();
    h.insert(X_REQUEST_ID, v.clone());
    v
}

/// The client's own `X-Request-Id`, when it is one worth keeping (not empty, at most 200 bytes).
pub fn client_request_id(h: &HeaderMap) -> Option<&HeaderValue> {
    h.get(&X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 200)
}

/// A new request id as a header value.
pub fn fresh_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&new_request_id()).unwrap_or(HeaderValue::from_static("0"))
}

/// A new request id: 128 random bits as 32 hex digits, written on the stack (no formatting
/// machinery on the hot path).
pub fn new_request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    // A byte at a time: shifting the u128 for each digit took ~180 instructions per request.
    for (pair, b) in id.chunks_exact_mut(2).zip(fastrand::u128(..).to_be_bytes()) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_are_host_names_with_a_port_or_ip_literals() {
        for ok in [
            "a.example",
            "A-b_c.example:8080",
            "127.0.0.1:80",
            "[::1]:443",
            "",
            "x%41",
        ] {
            assert!(is_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "a b", "a/b", "u@h", "h?q", "h#f", "h\"", "h\\x", "h\tx", "h\u{e9}",
        ] {
            assert!(!is_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn client_ip_is_written_as_display_writes_it() {
        let mut octets = vec![0u8, 1, 9, 10, 99, 100, 199, 200, 255];
        octets.extend((0..=255).step_by(7));
        for &a in &octets {
            for &b in &[0u8, 7, 42, 255] {
                let ip = std::net::Ipv4Addr::new(a, b, 255 - a, a / 2);
                let v = client_ip(std::net::SocketAddr::new(ip.into(), 9));
                assert_eq!(v.to_str().unwrap(), ip.to_string());
            }
        }
        let v6 = client_ip("[2001:db8::1]:9".parse().unwrap());
        assert_eq!(v6.to_str().unwrap(), "2001:db8::1");
    }

    #[test]
    fn strips_connection_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("traceparent", HeaderValue::from_static("00-aa-bb-01"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("traceparent"));
    }

    #[test]
    fn appends_to_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            &client_ip("127.0.0.1:9".parse().unwrap()),
            false,
            None,
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &client_ip("[::1]:9".parse().unwrap()), true, None);
        assert_eq!(h[X_FORWARDED_FOR], "::1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
    }
}
