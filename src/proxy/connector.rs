//! How an upstream's connections are made: TCP, then TLS when the upstream's `tls` section (or
//! `protocol = "h2"`) asks for it, speaking HTTP/1.1, HTTP/2 over TLS (`h2`) or cleartext HTTP/2
//! with prior knowledge (`h2c`).
//!
//! A [`Connector`] is built once per upstream when a configuration is compiled
//! ([`crate::upstream::Upstream::compile`]) — the rustls `ClientConfig` with its trust anchors and
//! client certificate is made there, off the hot path — and [`super::pool`] uses it to dial.
//! Certificates are verified against `ca_file` or the system's roots, for `server_name` or else
//! the backend's host; `insecure_skip_verify` turns verification off and says so in the log.

use crate::config::{Protocol, UpstreamConfig, UpstreamTls};
use crate::error::ProxyError;
use crate::listener::certs;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream to a backend, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// How to reach the backends of one upstream. Cheap to clone (the TLS config is shared).
#[derive(Clone)]
pub struct Connector {
    pub protocol: Protocol,
    /// `None`: cleartext. `Some(Err)`: TLS material that failed to load; every dial fails (502)
    /// rather than silently falling back to cleartext.
    tls: Option<Result<TlsConnect, String>>,
    /// Separates pooled connections of upstreams that share a backend address but not settings.
    pub pool_key: u64,
}

#[derive(Clone)]
struct TlsConnect {
    config: Arc<ClientConfig>,
    /// The same without ALPN, for a `tcp` listener's connections: what they carry is not HTTP,
    /// and a server that knows no offered protocol may refuse the handshake.
    raw: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl Default for Connector {
    fn default() -> Self {
        Connector {
            protocol: Protocol::Http1,
            tls: None,
            pool_key: 0,
        }
    }
}

impl Connector {
    /// Compiles upstream `name`'s protocol and TLS settings. Material problems were refused by
    /// validation; if a file went bad since, the upstream answers 502 and the log says why.
    pub fn from_config(name: &str, cfg: &UpstreamConfig) -> Connector {
        let tls_on = match &cfg.tls {
            Some(t) => t.enabled != Some(false),
            None => cfg.protocol == Protocol::H2,
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (cfg.protocol as u8, tls_on, format!("{:?}", cfg.tls)).hash(&mut h);
        let default = UpstreamTls::default();
        let tls = tls_on.then(|| {
            let t = cfg.tls.as_ref().unwrap_or(&default);
            let r = client_config(t, cfg.protocol == Protocol::H2);
            match &r {
                Err(e) => tracing::error!(upstream = name, "upstream TLS unusable: {e}"),
                Ok(_) if t.insecure_skip_verify == Some(true) => tracing::warn!(
                    upstream = name,
                    "tls.insecure_skip_verify is set: backend certificates are NOT verified"
                ),
                Ok(_) => {}
            }
            r
        });
        Connector {
            protocol: cfg.protocol,
            tls,
            pool_key: h.finish(),
        }
    }

    /// Whether connections speak HTTP/2 (and are shared by concurrent requests).
    pub fn is_h2(&self) -> bool {
        matches!(self.protocol, Protocol::H2 | Protocol::H2c)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// TCP connect, then the TLS handshake if any, all within `timeout`.
    pub async fn dial(
        &self,
        address: &str,
        socket: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<Box<dyn Io>, ProxyError> {
        self.dial_checked(address, socket, timeout)
            .await
            .map_err(DialError::into_proxy)
    }

    /// [`Connector::dial`], telling a failure of this process's own ([`DialError::Local`]) from
    /// the backend's.
    pub async fn dial_checked(
        &self,
        address: &str,
        socket: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<Box<dyn Io>, DialError> {
        self.dial_as(address, socket, timeout, true, &[]).await
    }

    /// [`Connector::dial_checked`] for a `tcp` listener's connection: `first` (a PROXY protocol
    /// header) is written on the TCP connection before anything else, TLS included, as the
    /// protocol requires; TLS (if any) offers no ALPN protocol.
    pub async fn dial_raw(
        &self,
        address: &str,
        socket: Option<SocketAddr>,
        timeout: Duration,
        first: &[u8],
    ) -> Result<Box<dyn Io>, DialError> {
        self.dial_as(address, socket, timeout, false, first).await
    }

    async fn dial_as(
        &self,
        address: &str,
        socket: Option<SocketAddr>,
        timeout: Duration,
        http: bool,
        first: &[u8],
    ) -> Result<Box<dyn Io>, DialError> {
        let work = async {
            let mut stream = tcp(address, socket).await?;
            if !http {
                super::tcp::keepalive(&stream);
            }
            if !first.is_empty() {
                use tokio::io::AsyncWriteExt;
                stream
                    .write_all(first)
                    .await
                    .map_err(|_| ProxyError::ConnectFailed)?;
            }
            let tls = match &self.tls {
                None => return Ok(Box::new(stream) as Box<dyn Io>),
                Some(Err(_)) => return Err(ProxyError::ConnectFailed.into()),
                Some(Ok(t)) => t,
            };
            let name = match &tls.server_name {
                Some(n) => n.clone(),
                None => host_name(address).ok_or(ProxyError::ConnectFailed)?,
            };
            let config = if http { &tls.config } else { &tls.raw };
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            match connector.connect(name, stream).await {
                Ok(s) => Ok(Box::new(s) as Box<dyn Io>),
                Err(e) => {
                    tracing::warn!(backend = address, "TLS handshake with backend failed: {e}");
                    Err(ProxyError::ConnectFailed.into())
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ProxyError::ConnectTimeout)?
    }
}

/// Why a dial failed.
#[derive(Debug)]
pub enum DialError {
    /// This process could not make the socket ([`is_local_shortage`]): it says nothing about the
    /// backend, which was never asked.
    Local(std::io::Error),
    /// The backend refused, did not answer in time, or failed the TLS handshake.
    Backend(ProxyError),
}

impl From<ProxyError> for DialError {
    fn from(e: ProxyError) -> Self {
        DialError::Backend(e)
    }
}

impl DialError {
    /// As the proxy sees it: the request did not reach a backend either way.
    pub fn into_proxy(self) -> ProxyError {
        match self {
            DialError::Local(_) => ProxyError::ConnectFailed,
            DialError::Backend(e) => e,
        }
    }
}

/// True when `e` is this process running short of a resource to make a socket with: file
/// descriptors (EMFILE, the process's limit; ENFILE, the system's), socket buffers (ENOBUFS) or
/// memory (ENOMEM). A connect failing so was never sent, and must not count against a backend.
pub fn is_local_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A TCP connection to a backend, with Nagle off (requests and responses are written whole).
async fn tcp(address: &str, socket: Option<SocketAddr>) -> Result<TcpStream, DialError> {
    let stream = match socket {
        Some(sa) => TcpStream::connect(sa).await,
        None => TcpStream::connect(address).await,
    }
    .map_err(|e| {
        if is_local_shortage(&e) {
            DialError::Local(e)
        } else {
            DialError::Backend(ProxyError::ConnectFailed)
        }
    })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A plain TCP connection within `timeout`, for upstreams without TLS (the HTTP/1 relay).
pub async fn dial_tcp(
    address: &str,
    socket: Option<SocketAddr>,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    tokio::time::timeout(timeout, tcp(address, socket))
        .await
        .map_err(|_| ProxyError::ConnectTimeout)?
        .map_err(DialError::into_proxy)
}

/// The host part of `host:port` (or `[v6]:port`) as a TLS server name.
fn host_name(address: &str) -> Option<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

fn client_config(t: &UpstreamTls, h2: bool) -> Result<TlsConnect, String> {
    let provider = certs::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = if t.insecure_skip_verify == Some(true) {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let roots = match &t.ca_file {
            Some(ca) => Arc::new(certs::read_roots(ca)?),
            None => certs::system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            // load_pair checks that the key matches and the certificate has not expired.
            certs::load_pair(cert, key)?;
            builder
                .with_client_auth_cert(certs::read_chain(cert)?, certs::read_key(key)?)
                .map_err(|e| format!("{key}: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let server_name = match &t.server_name {
        Some(n) => Some(
            ServerName::try_from(n.clone())
                .map_err(|_| format!("server_name {n:?} is not a DNS name or IP address"))?,
        ),
        None => None,
    };
    let mut raw = config.clone();
    raw.alpn_protocols.clear();
    Ok(TlsConnect {
        config: Arc::new(config),
        raw: Arc::new(raw),
        server_name,
    })
}

/// Checks an upstream `tls` section's files: `(field, message)` per problem, relative to it.
pub fn check(t: &UpstreamTls) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if t.enabled == Some(false) {
        return out;
    }
    if let Some(ca) = &t.ca_file {
        if let Err(e) = certs::read_roots(ca) {
            out.push(("ca_file".into(), e));
        }
    }
    if let (Some(cert), Some(key)) = (&t.client_cert, &t.client_key) {
        if let Err(e) = certs::load_pair(cert, key) {
            out.push(("client_cert".into(), e));
        }
    }
    if let Some(n) = &t.server_name {
        if ServerName::try_from(n.as_str()).is_err() {
            out.push((
                "server_name".into(),
                format!("{n:?} is not a DNS name or IP address"),
            ));
        }
    }
    out
}

/// `insecure_skip_verify`: accepts any certificate, but still checks the handshake signatures so
/// the connection is at least bound to the key the backend presented.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Error;

    /// Only this process's own shortages are local; everything a backend (or the network to it)
    /// can cause is not.
    #[test]
    fn local_shortages_are_told_from_the_backends_failures() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(
                is_local_shortage(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ECONNRESET,
            libc::EADDRNOTAVAIL,
            libc::EACCES,
        ] {
            assert!(
                !is_local_shortage(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        // Not an OS error at all (a name that does not resolve, say).
        assert!(!is_local_shortage(&Error::other("no such host")));
    }

    #[test]
    fn server_name_defaults_to_the_backend_host() {
        assert_eq!(
            host_name("api.internal:443"),
            ServerName::try_from("api.internal").ok()
        );
        assert!(matches!(
            host_name("127.0.0.1:8443"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            host_name("[::1]:8443"),
            Some(ServerName::IpAddress(_))
        ));
    }
}
