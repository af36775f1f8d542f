//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies it), for a listener behind a
//! TCP load balancer (HAProxy `send-proxy`, AWS NLB, GCP's TCP proxy) with `proxy_protocol =
//! true`: each connection starts with a header naming the real client, which then stands in for
//! the peer address everywhere (`X-Forwarded-For`, the access log, `client_ip` hashing, rate
//! limits). A connection without a valid header is closed, as HAProxy's `accept-proxy` does:
//! accepting either would let any client that reaches the port forge its address.
//!
//! The header is read with `MSG_PEEK` first and then consumed to its exact length, so not one
//! byte of the request (or TLS ClientHello) that follows it is taken.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes with its CRLF (the specification's own bound).
const V1_MAX: usize = 107;
/// Enough to see a v2 header with IPv6 addresses (16 + 36); TLVs after are skipped by length.
const PEEK: usize = 256;

/// A proxied connection's two ends, as its PROXY header names them.
#[derive(Debug, PartialEq, Clone, Copy)]
pub struct Ends {
    /// The real client.
    pub client: SocketAddr,
    /// The address the client reached (the balancer in front's), which a `tcp` listener's own
    /// `send_proxy_protocol` passes on.
    pub reached: SocketAddr,
}

/// Reads the header; `Ok(Some(ends))` for a proxied connection, `Ok(None)` when the header
/// says it carries no client (v2 `LOCAL`, v1 `UNKNOWN`: the balancer's own health checks), so
/// the peer address stays. `Err` says why the connection must be closed.
pub async fn read_header(stream: &mut TcpStream, within: Duration) -> Result<Option<Ends>, String> {
    tokio::time::timeout(within, read(stream))
        .await
        .map_err(|_| "no PROXY protocol header in time".to_string())?
}

async fn read(stream: &mut TcpStream) -> Result<Option<Ends>, String> {
    let mut buf = [0u8; PEEK];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the PROXY protocol header".into());
        }
        match parse(&buf[..n]) {
            Parsed::Done { len, client } => {
                let mut sink = vec![0u8; len];
                stream
                    .read_exact(&mut sink)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(client);
            }
            Parsed::Invalid(why) => return Err(why),
            Parsed::Partial if n == seen => {
                // Peeking again would return the same bytes at once: wait for more to arrive.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Parsed::Partial => seen = n,
        }
    }
}

#[derive(Debug, PartialEq)]
enum Parsed {
    Done { len: usize, client: Option<Ends> },
    Partial,
    Invalid(String),
}

fn parse(b: &[u8]) -> Parsed {
    let sig = b.len().min(V2_SIGNATURE.len());
    if b[..sig] == V2_SIGNATURE[..sig] {
        return if sig < V2_SIGNATURE.len() {
            Parsed::Partial
        } else {
            v2(b)
        };
    }
    let p = b.len().min(6);
    if b[..p] == b"PROXY "[..p] {
        return v1(b);
    }
    Parsed::Invalid("the connection does not start with a PROXY protocol header".into())
}

fn v1(b: &[u8]) -> Parsed {
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() >= V1_MAX {
            Parsed::Invalid("PROXY v1 line longer than 107 bytes".into())
        } else {
            Parsed::Partial
        };
    };
    let bad = |what: &str| Parsed::Invalid(format!("PROXY v1: {what}"));
    let Ok(line) = std::str::from_utf8(&b[6..end]) else {
        return bad("not text");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let client = match parts.as_slice() {
        ["UNKNOWN", ..] => None,
        [proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let addr = |ip: &str, port: &str| {
                let (Ok(ip), Ok(port)) = (ip.parse::<IpAddr>(), port.parse::<u16>()) else {
                    return Err(bad("unparsable address or port"));
                };
                if ip.is_ipv4() != (*proto == "TCP4") {
                    return Err(bad("address family does not match the protocol"));
                }
                Ok(SocketAddr::new(ip, port))
            };
            match (addr(src, sport), addr(dst, dport)) {
                (Ok(client), Ok(reached)) => Some(Ends { client, reached }),
                (Err(e), _) | (_, Err(e)) => return e,
            }
        }
        _ => return bad("expected `PROXY TCP4|TCP6 SRC DST SPORT DPORT` or `PROXY UNKNOWN`"),
    };
    Parsed::Done {
        len: end + 2,
        client,
    }
}

fn v2(b: &[u8]) -> Parsed {
    if b.len() < 16 {
        return Parsed::Partial;
    }
    let bad = |what: &str| Parsed::Invalid(format!("PROXY v2: {what}"));
    let (ver_cmd, fam) = (b[12], b[13]);
    if ver_cmd >> 4 != 2 {
        return bad("version is not 2");
    }
    let len = 16 + usize::from(u16::from_be_bytes([b[14], b[15]]));
    let body = &b[16..b.len().min(len)];
    let client = match (ver_cmd & 0x0f, fam >> 4) {
        // LOCAL: the balancer speaking for itself (a health check).
        (0, _) => None,
        (1, 1) if body.len() >= 12 => {
            let ip = |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Some(Ends {
                client: SocketAddr::new(ip(0).into(), port(8)),
                reached: SocketAddr::new(ip(4).into(), port(10)),
            })
        }
        (1, 2) if body.len() >= 36 => {
            let ip = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[at..at + 16]);
                IpAddr::from(Ipv6Addr::from(a))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Some(Ends {
                client: SocketAddr::new(ip(0), port(32)),
                reached: SocketAddr::new(ip(16), port(34)),
            })
        }
        (1, 1 | 2) if b.len() < len => return Parsed::Partial,
        // UNSPEC or a UNIX socket: no client address to take.
        (1, 0 | 3) => None,
        (1, _) => return bad("address block too short for its family"),
        _ => return bad("command is neither LOCAL nor PROXY"),
    };
    Parsed::Done { len, client }
}

/// The header a `tcp` listener with `send_proxy_protocol` writes first on a backend connection:
/// `client` connected to `local`. Two IPv4 addresses (v4-mapped ones on a dual-stack socket
/// included) are written as IPv4; otherwise both as IPv6, an IPv4 one mapped.
pub fn encode(v2: bool, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = match (client.ip().to_canonical(), local.ip().to_canonical()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (IpAddr::V4(a), IpAddr::V4(b)),
        (a, b) => (IpAddr::V6(v6(a)), IpAddr::V6(v6(b))),
    };
    if !v2 {
        let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        let (sp, dp) = (client.port(), local.port());
        return format!("PROXY {proto} {src} {dst} {sp} {dp}\r\n").into_bytes();
    }
    let mut h = V2_SIGNATURE.to_vec();
    // Version 2, PROXY; then the family with STREAM (TCP).
    h.push(0x21);
    match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            h.extend_from_slice(&[0x11, 0, 12]);
            h.extend_from_slice(&a.octets());
            h.extend_from_slice(&b.octets());
        }
        (a, b) => {
            h.extend_from_slice(&[0x21, 0, 36]);
            h.extend_from_slice(&v6(a).octets());
            h.extend_from_slice(&v6(b).octets());
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&local.port().to_be_bytes());
    h
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_sent_reads_back_as_the_client_in_both_versions() {
        let v4: SocketAddr = "203.0.113.7:56324".parse().unwrap();
        let local4: SocketAddr = "10.0.0.1:5432".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let local6: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        for v2 in [false, true] {
            for (client, local) in [(v4, local4), (v6, local6), (v4, local6)] {
                let mut h = encode(v2, client, local);
                let len = h.len();
                h.extend_from_slice(b"after");
                let mapped = |x: SocketAddr| match x.ip() {
                    IpAddr::V4(a) if client.is_ipv6() != local.is_ipv6() => {
                        SocketAddr::new(a.to_ipv6_mapped().into(), x.port())
                    }
                    _ => x,
                };
                let want = Ends {
                    client: mapped(client),
                    reached: mapped(local),
                };
                assert_eq!(
                    parse(&h),
                    Parsed::Done {
                        len,
                        client: Some(want)
                    },
                    "v2={v2} {client} -> {local}"
                );
            }
        }
        assert_eq!(
            encode(false, v4, local4),
            b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 5432\r\n"
        );
        // An IPv4 client on a dual-stack socket: both v4-mapped, written as IPv4.
        let mapped: SocketAddr = "[::ffff:203.0.113.7]:56324".parse().unwrap();
        let local_mapped: SocketAddr = "[::ffff:10.0.0.1]:5432".parse().unwrap();
        assert_eq!(
            encode(false, mapped, local_mapped),
            encode(false, v4, local4)
        );
        assert_eq!(encode(true, mapped, local_mapped), encode(true, v4, local4));
    }

    #[test]
    fn v1_lines_are_read_to_their_crlf() {
        let b = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(b),
            Parsed::Done {
                len: 42,
                client: Some(Ends {
                    client: "203.0.113.7:56324".parse().unwrap(),
                    reached: "10.0.0.1:80".parse().unwrap()
                })
            }
        );
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n";
        assert!(matches!(parse(six), Parsed::Done { client: Some(e), .. }
            if e.client.port() == 4000 && e.reached == "[2001:db8::2]:443".parse().unwrap()));
        assert!(matches!(
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.x 56324 80\r\n"),
            Parsed::Invalid(_)
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET"),
            Parsed::Done {
                len: 15,
                client: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 203.0"), Parsed::Partial);
        assert_eq!(parse(b"PRO"), Parsed::Partial);
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid(_)));
        assert!(matches!(
            parse(b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse(&[b'P'; 200]), Parsed::Invalid(_)));
    }

    #[test]
    fn v2_headers_are_read_to_their_length_tlvs_included() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12 + 4]);
        h.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]);
        h.extend_from_slice(&[0x04, 0, 1, 0xff]); // a TLV (NOOP)
        let with_request = [h.clone(), b"GET / HTTP/1.1\r\n".to_vec()].concat();
        assert_eq!(
            parse(&with_request),
            Parsed::Done {
                len: 32,
                client: Some(Ends {
                    client: "198.51.100.9:8080".parse().unwrap(),
                    reached: "10.0.0.1:80".parse().unwrap()
                })
            }
        );
        assert_eq!(parse(&h[..20]), Parsed::Partial);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Parsed::Done {
                len: 16,
                client: None
            }
        );
        // IPv6: source, destination, then the two ports.
        let mut six = V2_SIGNATURE.to_vec();
        six.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8::7".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        );
        six.extend_from_slice(&src.octets());
        six.extend_from_slice(&dst.octets());
        six.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        assert_eq!(
            parse(&six),
            Parsed::Done {
                len: 52,
                client: Some(Ends {
                    client: "[2001:db8::7]:56324".parse().unwrap(),
                    reached: "[2001:db8::1]:443".parse().unwrap()
                })
            }
        );
        let mut v1_ver = h.clone();
        v1_ver[12] = 0x11;
        assert!(matches!(parse(&v1_ver), Parsed::Invalid(_)));
    }
}
