//! Test PKI and TLS clients: CAs and leaf certificates made with rcgen and written as PEM files,
//! rustls client settings, and a small HTTPS client (HTTP/1.1 or h2 by ALPN) that can also tell
//! which certificate the server presented.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub struct Ca {
    pub path: PathBuf,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub key_pem: String,
}

impl Leaf {
    pub fn cert_str(&self) -> &str {
        self.cert.to_str().unwrap()
    }
    pub fn key_str(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

/// A CA whose certificate is written to `dir/NAME.pem`.
pub fn ca(dir: &Path, name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    Ca {
        path,
        der: cert.der().clone(),
        issuer: Issuer::new(p, key),
    }
}

impl Ca {
    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// An ECDSA P-256 leaf for `names` (DNS names or IPs), written to `dir/STEM.{crt,key}`.
    pub fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> Leaf {
        self.leaf_with(dir, stem, names, &rcgen::PKCS_ECDSA_P256_SHA256, |_| {})
    }

    pub fn leaf_with(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        alg: &'static SignatureAlgorithm,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, stem);
        tweak(&mut p);
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Client settings trusting `ca`, offering `alpn`, limited to `versions`, with an optional
/// client certificate.
pub fn client_config(
    ca: &Ca,
    alpn: &[&str],
    versions: &[&'static SupportedProtocolVersion],
    client: Option<&Leaf>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let b = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut c = match client {
        Some(l) => {
            use rustls::pki_types::pem::PemObject;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes());
            b.with_client_auth_cert(vec![l.der.clone()], key.unwrap())
                .unwrap()
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(c)
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

pub fn both_versions() -> &'static [&'static SupportedProtocolVersion] {
    BOTH
}

/// TLS handshake to `addr` with SNI `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// The certificate the server presented on `s`.
pub fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// An HTTP client on one established TLS connection, HTTP/1.1 or h2 as ALPN chose.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

pub struct Reply {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Conn {
    pub async fn new(s: TlsStream<TcpStream>) -> Conn {
        let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(s);
        if h2 {
            let (tx, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(c);
            Conn::H2(tx)
        } else {
            let (tx, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(c);
            Conn::H1(tx)
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> hyper::Result<Reply> {
        let resp = match self {
            Conn::H1(tx) => {
                let req = http::Request::get(path)
                    .header("host", host)
                    .body(Empty::new())
                    .unwrap();
                tx.send_request(req).await?
            }
            Conn::H2(tx) => {
                let req = http::Request::get(format!("https://{host}{path}"))
                    .body(Empty::new())
                    .unwrap();
                tx.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }
}

/// One GET over a fresh TLS connection.
pub async fn get(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<ClientConfig>,
    path: &str,
) -> Result<Reply, String> {
    let s = connect(addr, sni, cfg).await.map_err(|e| e.to_string())?;
    Conn::new(s)
        .await
        .get(sni, path)
        .await
        .map_err(|e| e.to_string())
}

/// A current-thread runtime for a test's client side.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Server settings presenting `leaf`, without client authentication: a TLS backend.
pub fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let key = switchyard::listener::certs::load_pair(leaf.cert_str(), leaf.key_str())
        .unwrap()
        .key;
    let cfg = rustls::ServerConfig::builder_with_provider(switchyard::listener::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    Arc::new(cfg)
}
