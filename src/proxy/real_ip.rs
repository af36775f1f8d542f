//! The real client behind trusted proxies (NGINX's `set_real_ip_from` with
//! `real_ip_recursive on`, Caddy's and Traefik's `trusted_proxies`).
//!
//! Behind a CDN or a cloud load balancer every connection comes from the proxy, and the client
//! is named only in `X-Forwarded-For`. That header is the client's to write, so it is believed
//! only as far as it was written by proxies the listener trusts: from a trusted peer, the list
//! is read right to left (each proxy appends the address it received from) and the first
//! address that is not itself a trusted proxy is the client. If every address is trusted, the
//! leftmost is; at something that is not an address, reading stops at the last one read.
//!
//! Whether the peer is trusted is decided once per connection ([`CidrSet::contains`]), so a
//! listener without `trusted_proxies`, or a client that is not a proxy, costs a branch.
//! `X-Forwarded-For` still gets the peer appended as it arrived, as every proxy does: the next
//! hop can make the same choice.

use std::net::IpAddr;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `ADDRESS` or `ADDRESS/BITS`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| {
            format!("{s:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\")")
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client reached over an IPv6 socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(
                u128::from(u32::from(n)),
                u128::from(u32::from(a)),
                self.bits,
                32,
            ),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(n.into(), a.into(), self.bits, 128),
            _ => false,
        }
    }
}

/// Whether the first `bits` of two `width`-bit numbers agree.
fn prefix_eq(a: u128, b: u128, bits: u8, width: u32) -> bool {
    let shift = width - u32::from(bits);
    shift >= 128 || (a ^ b) >> shift == 0
}

/// A list of address blocks: a listener's `trusted_proxies`, a route's `ip_allow`.
#[derive(Debug, Default, Clone)]
pub struct CidrSet(Box<[Cidr]>);

impl CidrSet {
    /// From validated configuration; entries that do not parse are left out.
    pub fn new(entries: &[String]) -> CidrSet {
        CidrSet(entries.iter().filter_map(|e| Cidr::parse(e).ok()).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether one of the blocks holds `ip` (for trusted proxies: only then is a peer's
    /// `X-Forwarded-For` read).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// With `self` the trusted proxies: the client that `X-Forwarded-For` (its lines in order,
    /// as received from a trusted peer) names; `None` if it names none.
    pub fn client<'a>(&self, lines: impl DoubleEndedIterator<Item = &'a [u8]>) -> Option<IpAddr> {
        let mut last = None;
        for line in lines.rev() {
            for item in line.rsplit(|&b| b == b',') {
                let item = item.trim_ascii();
                if item.is_empty() {
                    continue;
                }
                let Some(ip) = parse_hop(item) else {
                    return last;
                };
                if !self.contains(ip) {
                    return Some(ip);
                }
                last = Some(ip);
            }
        }
        last
    }
}

/// A route's `ip_allow` and `ip_deny` (NGINX's `allow`/`deny`, Traefik's `ipAllowList`).
#[derive(Debug, Clone)]
pub struct Acl {
    allow: CidrSet,
    deny: CidrSet,
}

impl Acl {
    /// `None` when both lists are empty.
    pub fn new(allow: &[String], deny: &[String]) -> Option<Acl> {
        let a = Acl {
            allow: CidrSet::new(allow),
            deny: CidrSet::new(deny),
        };
        (!a.allow.is_empty() || !a.deny.is_empty()).then_some(a)
    }

    /// A client in `ip_deny` is refused; with an `ip_allow`, so is every client outside it.
    pub fn admits(&self, client: IpAddr) -> bool {
        !self.deny.contains(client) && (self.allow.is_empty() || self.allow.contains(client))
    }
}

/// One `X-Forwarded-For` entry: an address, with a port as some proxies write it
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_hop(item: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(item).ok()?;
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(list: &[&str]) -> CidrSet {
        CidrSet::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_what_their_prefix_covers() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.255.7")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "v4-mapped counts as v4");
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.9")));
        assert!(!Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("2001:db8::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("192.0.2.1").unwrap().contains(ip("192.0.2.1")));
        assert!(!Cidr::parse("192.0.2.1").unwrap().contains(ip("192.0.2.2")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "x", "10.0.0.0/", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_deny_wins_over_an_allow_and_an_allow_list_refuses_the_rest() {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let acl = Acl::new(&list(&["10.0.0.0/8"]), &list(&["10.6.6.0/24"])).unwrap();
        assert!(acl.admits(ip("10.1.2.3")));
        assert!(!acl.admits(ip("10.6.6.6")));
        assert!(!acl.admits(ip("192.0.2.1")));
        let deny_only = Acl::new(&[], &list(&["192.0.2.1"])).unwrap();
        assert!(deny_only.admits(ip("192.0.2.2")));
        assert!(!deny_only.admits(ip("192.0.2.1")));
        assert!(Acl::new(&[], &[]).is_none());
    }

    #[test]
    fn the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy() {
        let p = t(&["10.0.0.0/8", "2001:db8::/32"]);
        let c = |lines: &[&str]| p.client(lines.iter().map(|l| l.as_bytes()));
        // A spoofed entry on the left is ignored: 198.51.100.7 is what the proxy saw.
        assert_eq!(
            c(&["1.2.3.4, 198.51.100.7, 10.0.0.2"]),
            Some(ip("198.51.100.7"))
        );
        // Every line in order is one list.
        assert_eq!(c(&["198.51.100.7", "10.0.0.9"]), Some(ip("198.51.100.7")));
        assert_eq!(
            c(&["[2001:db9::5]:443 , 2001:db8::1"]),
            Some(ip("2001:db9::5"))
        );
        assert_eq!(c(&["192.0.2.1:4711"]), Some(ip("192.0.2.1")));
        // All trusted: the leftmost. Garbage stops the walk at the last address read.
        assert_eq!(c(&["10.0.0.1, 10.0.0.2"]), Some(ip("10.0.0.1")));
        assert_eq!(
            c(&["198.51.100.7, unknown, 10.0.0.2"]),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(c(&["unknown"]), None);
        assert_eq!(c(&[]), None);
        assert_eq!(c(&[" , "]), None);
    }
}
