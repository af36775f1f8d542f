//! Header values with variables, for a route's `request_headers.set`: `"${client_ip}"` is
//! NGINX's `proxy_set_header X-Real-IP $remote_addr`, HAProxy's `set-header X-Real-IP %[src]`,
//! Envoy's `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
//!
//! A value is parsed once per snapshot into literal pieces and variables; a request only copies
//! bytes it already has. A value whose expansion is empty (`${tls_client_subject}` on a plain
//! connection) is not sent, as NGINX drops a header set to an empty string.

use super::ConnInfo;
use std::io::Write as _;
use std::net::IpAddr;

/// What a variable stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The client as judged behind `trusted_proxies` (rate limits' and the access log's).
    ClientIp,
    /// The connection's peer (or the PROXY protocol header's source).
    PeerIp,
    /// `http` or `https`.
    Scheme,
    /// The request's host, as routed.
    Host,
    Method,
    /// Path and query as the client sent them (NGINX's `$request_uri`).
    RequestUri,
    /// The `X-Request-Id` sent upstream.
    RequestId,
    /// `TLSv1.3`, or empty on a plain connection.
    TlsVersion,
    /// The verified client certificate's subject (mTLS), or empty.
    TlsClientSubject,
}

/// Every variable by name, as written in a value.
pub const VARS: [(&str, Var); 9] = [
    ("client_ip", Var::ClientIp),
    ("peer_ip", Var::PeerIp),
    ("scheme", Var::Scheme),
    ("host", Var::Host),
    ("method", Var::Method),
    ("request_uri", Var::RequestUri),
    ("request_id", Var::RequestId),
    ("tls_version", Var::TlsVersion),
    ("tls_client_subject", Var::TlsClientSubject),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(Box<[u8]>),
    Var(Var),
}

/// A value with at least one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Box<[Part]>);

impl Template {
    /// `None` when `s` has no `${`: a fixed value. An unknown or unclosed variable is an error
    /// naming it.
    pub fn parse(s: &str) -> Result<Option<Template>, String> {
        if !s.contains("${") {
            return Ok(None);
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(at) = rest.find("${") {
            if at > 0 {
                parts.push(Part::Lit(rest.as_bytes()[..at].into()));
            }
            let after = &rest[at + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("{:?} is not closed by `}}`", &rest[at..]));
            };
            let name = &after[..end];
            let Some(&(_, var)) = VARS.iter().find(|(n, _)| *n == name) else {
                let known: Vec<String> = VARS.iter().map(|(n, _)| format!("${{{n}}}")).collect();
                return Err(format!(
                    "unknown variable ${{{name}}}; known: {}",
                    known.join(", ")
                ));
            };
            parts.push(Part::Var(var));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.as_bytes().into()));
        }
        Ok(Some(Template(parts.into())))
    }

    /// Appends the value for one request to `out`. Returns false, with `out` as it was, when
    /// the value is empty or would not be a valid header value (a variable brought a control
    /// character): the header is then not sent.
    pub fn expand(&self, v: &Vars<'_>, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        for p in self.0.iter() {
            match p {
                Part::Lit(b) => out.extend_from_slice(b),
                Part::Var(var) => v.write(*var, out),
            }
        }
        let value = &out[start..];
        let ok = !value.is_empty()
            && value
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80);
        if !ok {
            out.truncate(start);
        }
        ok
    }
}

/// What the variables of one request stand for.
pub struct Vars<'a> {
    pub conn: &'a ConnInfo,
    pub client: IpAddr,
    pub host: &'a [u8],
    pub method: &'a [u8],
    pub request_uri: &'a [u8],
    pub request_id: &'a [u8],
}

impl Vars<'_> {
    fn write(&self, var: Var, out: &mut Vec<u8>) {
        match var {
            Var::ClientIp => {
                let _ = write!(out, "{}", self.client);
            }
            Var::PeerIp => out.extend_from_slice(self.conn.client_ip.as_bytes()),
            Var::Scheme => out.extend_from_slice(if self.conn.https { b"https" } else { b"http" }),
            Var::Host => out.extend_from_slice(self.host),
            Var::Method => out.extend_from_slice(self.method),
            Var::RequestUri => out.extend_from_slice(self.request_uri),
            Var::RequestId => out.extend_from_slice(self.request_id),
            Var::TlsVersion => {
                out.extend_from_slice(self.conn.tls_version.unwrap_or("").as_bytes())
            }
            Var::TlsClientSubject => {
                out.extend_from_slice(self.conn.tls_client.as_deref().unwrap_or("").as_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parsed_into_pieces_and_bad_variables_named() {
        assert_eq!(Template::parse("plain"), Ok(None));
        let t = Template::parse("for=${client_ip};proto=${scheme}")
            .unwrap()
            .unwrap();
        assert_eq!(t.0.len(), 4);
        assert_eq!(t.0[1], Part::Var(Var::ClientIp));
        let e = Template::parse("${remote_addr}").unwrap_err();
        assert!(e.contains("unknown variable ${remote_addr}") && e.contains("${client_ip}"));
        assert!(Template::parse("a ${host")
            .unwrap_err()
            .contains("not closed"));
    }

    #[test]
    fn an_expansion_that_is_empty_or_not_a_header_value_is_not_sent() {
        let mut conn = ConnInfo::new("192.0.2.1:4000".parse().unwrap(), u64::MAX, None);
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        let v = |conn: &ConnInfo, out: &mut Vec<u8>, s: &str| {
            let vars = Vars {
                conn,
                client,
                host: b"example.com",
                method: b"GET",
                request_uri: b"/a?b",
                request_id: b"id1",
            };
            Template::parse(s).unwrap().unwrap().expand(&vars, out)
        };
        let mut out = b"x: ".to_vec();
        assert!(v(
            &conn,
            &mut out,
            "${client_ip} via ${peer_ip} ${scheme}://${host}${request_uri}"
        ));
        assert_eq!(out, b"x: 198.51.100.7 via 192.0.2.1 http://example.com/a?b");
        let mut out = Vec::new();
        assert!(!v(&conn, &mut out, "${tls_client_subject}"));
        conn.tls_client = Some("CN=a\r\nx: y".into());
        assert!(!v(&conn, &mut out, "cert ${tls_client_subject}"));
        assert!(out.is_empty());
    }
}
