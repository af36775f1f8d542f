//! Certificate material from PEM files, checked the way an operator wants to hear about it: which
//! file, and what is wrong with it (missing, unreadable, no certificate in it, a key that does not
//! belong to the certificate, expired).
//!
//! Used by the listener's TLS termination ([`super::tls`]), by upstream TLS
//! ([`crate::proxy::connector`]), by `demo-backend --tls-cert`, and by configuration validation,
//! so `switchyard check` refuses exactly what start-up would refuse.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The one crypto provider Switchyard uses (aws-lc-rs), shared by every TLS configuration.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A certificate chain with its key, ready to serve, plus what the SNI resolver needs to know.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (subjectAltName, or the common name when there is none), lowercase;
    /// wildcards stay as `*.example.com`.
    pub names: Vec<String>,
}

/// Reads every certificate in a PEM file, failing when there is none.
pub fn read_chain(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate file: {}", pem_error(&e)))?;
    if chain.is_empty() {
        return Err(format!("{path}: no CERTIFICATE block found"));
    }
    Ok(chain)
}

/// Reads the first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{path}: no PRIVATE KEY block (PKCS#8, RSA or EC) found")
        }
        e => format!("{path}: not a PEM private key file: {}", pem_error(&e)),
    })
}

/// A PEM parse error as text. The library's own `Display` prints the marker or line it stopped
/// at as a list of byte values (`[45, 45, 45, ...]`), which an operator cannot read.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        // The marker is the section's label (`CERTIFICATE`); show the line that was expected.
        Error::MissingSectionEnd { end_marker } => format!(
            "missing section end marker \"-----END {}-----\" (file cut short?)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => {
            format!("illegal section start {:?}", String::from_utf8_lossy(line))
        }
        e => e.to_string(),
    }
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{path}: cannot read: {e}"))
}

/// Loads a certificate and its key, checking that the key matches and the leaf has not expired.
pub fn load_pair(cert: &str, key: &str) -> Result<Loaded, String> {
    let chain = read_chain(cert)?;
    let leaf = leaf_info(cert, &chain[0])?;
    let der = read_key(key)?;
    let certified = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{key}: private key does not match the certificate in {cert}")
        }
        e => format!("{key}: unusable private key: {e}"),
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        names: leaf.names,
    })
}

struct LeafInfo {
    names: Vec<String>,
}

/// Parses the leaf: it must be a valid X.509 certificate that is within its validity period.
fn leaf_info(path: &str, der: &CertificateDer<'_>) -> Result<LeafInfo, String> {
    let (_, x509) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("{path}: not a valid X.509 certificate: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let validity = x509.validity();
    if validity.not_after.timestamp() < now {
        return Err(format!(
            "{path}: certificate expired on {}",
            validity.not_after
        ));
    }
    if validity.not_before.timestamp() > now {
        return Err(format!(
            "{path}: certificate is not valid before {}",
            validity.not_before
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // Pre-SAN certificates name their host in the common name; clients no longer accept that,
        // but the name still says which SNI the operator meant this certificate for.
        names.extend(
            x509.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|s| s.to_ascii_lowercase()),
        );
    }
    Ok(LeafInfo { names })
}

/// The subject of a DER certificate as an RFC 4514-like string (`CN=client,O=Example`).
pub fn subject(der: &[u8]) -> Option<String> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.subject().to_string())
}

/// Trust anchors from a PEM file of CA certificates.
pub fn read_roots(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in read_chain(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{path}: unusable CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// The operating system's trust anchors, read once per process (it is slow and never changes).
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("system CA certificates: {e}");
            }
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found; set tls.ca_file for upstreams");
            }
            Arc::new(roots)
        })
        .clone()
}

/// Whether `name` (lowercase) is covered by `pattern` — exact, or a `*.` wildcard matching
/// exactly one label, as RFC 6125 §6.4.3 allows.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("example.com", "example.com"));
    }

    #[test]
    fn a_truncated_pem_file_is_reported_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.pem");
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let path = path.to_str().unwrap();
        let e = read_chain(path).err().unwrap_or_default();
        assert!(
            e.contains("missing section end marker \"-----END CERTIFICATE-----\""),
            "{e}"
        );
        assert!(!e.contains("[67, 69"), "{e}");
    }

    #[test]
    fn missing_files_are_named() {
        let e = load_pair("/nonexistent/cert.pem", "/nonexistent/key.pem")
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("/nonexistent/cert.pem: cannot read"), "{e}");
    }
}
