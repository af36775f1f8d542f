//! TLS at the edge and to the services, with certificates made by rcgen: HTTPS over HTTP/1.1 and
//! h2, SNI, minimum version, hot certificate reload, mTLS, upstream verification, redirects and
//! HSTS, and `check` refusing bad material.

use crate::pki::{self, both_versions, client_config, Conn};
use crate::support::*;
use std::time::Duration;

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A config with one TLS listener (`tls_body` is the inside of `[listeners.tls]`) and `upstream`.
fn tls_config(tls_body: &str, upstream: &str) -> String {
    format!(
        "workers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [listeners.tls]\n{tls_body}\n\n[upstreams.web]\n{upstream}\n"
    )
}

fn cert_list(leaves: &[&pki::Leaf]) -> String {
    let items: Vec<String> = leaves
        .iter()
        .map(|l| format!("{{ cert = {:?}, key = {:?} }}", l.cert_str(), l.key_str()))
        .collect();
    format!("certificates = [{}]", items.join(", "))
}

#[test]
fn https_over_http1_and_h2_says_https_and_adds_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca(dir.path(), "ca");
    let leaf = ca.leaf(dir.path(), "site", &["localhost", "127.0.0.1"]);
    let be = backends(1);
    let tls = format!("{}\nhsts = \"365d\"", cert_list(&[&leaf]));
    let lb = start(&tls_config(&tls, &format!("backends = [{}]", be.list())));
    let rt = pki::rt();
    for (alpn, version) in [
        ("http/1.1", http::Version::HTTP_11),
        ("h2", http::Version::HTTP_2),
    ] {
        let cfg = client_config(&ca, &[alpn], both_versions(), None);
        let r = rt
            .block_on(pki::get(lb.addr, "localhost", cfg, "/hello"))
            .unwrap();
        assert_eq!(r.status, 200, "{alpn}");
        assert_eq!(r.version, version, "{alpn}");
        assert_eq!(r.headers["strict-transport-security"], "max-age=31536000");
        let v = r.json();
        assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{alpn}");
        assert_eq!(v["path"], "/hello");
    }
}

/// Plain HTTP sent to a TLS port (no `redirect_https`) gets a plain-HTTP 400 that says so, as
/// NGINX answers, not a TLS alert; never a request upstream. TLS on the port is unaffected.
#[test]
fn plain_http_on_a_tls_port_gets_a_400_it_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca(dir.path(), "ca");
    let leaf = ca.leaf(dir.path(), "site", &["localhost"]);
    let be = backends(1);
    let lb = start(&tls_config(
        &cert_list(&[&leaf]),
        &format!("backends = [{}]", be.list()),
    ));
    let r = raw(lb.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let lower = r.to_ascii_lowercase();
    assert!(
        lower.contains("x-switchyard-error: plain_http_to_https_port"),
        "{r}"
    );
    assert!(lower.contains("connection: close"), "{r}");
    let sent = lb.running().shared.current().upstreams[0].backends[0]
        .state
        .requests_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(sent, 0, "nothing went upstream");
    let cfg = client_config(&ca, &["http/1.1"], both_versions(), None);
    let r = pki::rt().block_on(pki::get(lb.addr, "localhost", cfg, "/"));
    assert_eq!(r.map(|r| r.status), Ok(200));
}

#[test]
fn sni_picks_the_certificate_by_name_and_falls_back_to_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca(dir.path(), "ca");
    let d = dir.path();
    let first = ca.leaf(d, "first", &["a.test"]);
    let wild = ca.leaf_with(d, "wild", &["*.wild.test"], &rcgen::PKCS_ED25519, |_| {});
    let rsa = ca.leaf_with(d, "rsa", &["b.test"], &rcgen::PKCS_RSA_SHA256, |_| {});
    let p384 = ca.leaf_with(
        d,
        "p384",
        &["c.test"],
        &rcgen::PKCS_ECDSA_P384_SHA384,
        |_| {},
    );
    let be = backends(1);
    let tls = cert_list(&[&first, &wild, &rsa, &p384]);
    let lb = start(&tls_config(&tls, &format!("backends = [{}]", be.list())));
    let rt = pki::rt();
    let cfg = client_config(&ca, &["http/1.1"], both_versions(), None);
    for (sni, want) in [
        ("a.test", &first),
        ("x.wild.test", &wild),
        ("B.TEST", &rsa),
        ("c.test", &p384),
        ("unknown.test", &first),
    ] {
        let s = rt.block_on(pki::connect(lb.addr, sni, cfg.clone()));
        // An SNI the certificate does not cover fails verification; compare what was offered.
        match s {
            Ok(s) => assert_eq!(pki::peer_cert(&s), want.der, "{sni}"),
            Err(e) => {
                assert_eq!(sni, "unknown.test", "{sni}: {e}");
                assert!(e.to_string().contains("DnsName(\"a.test\")"), "{e}");
            }
        }
    }
    // Through the proxy for the names it covers.
    let r = rt.block_on(pki::get(lb.addr, "b.test", cfg, "/")).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn tls12_is_refused_when_min_version_is_13() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca(dir.path(), "ca");
    let leaf = ca.leaf(dir.path(), "site", &["localhost"]);
    let be = backends(1);
    let strict = start(&tls_config(
        &format!("{}\nmin_version = \"1.3\"", cert_list(&[&leaf])),
        &format!("backends = [{}]", be.list()),
    ));
    let lenient = start(&tls_config(
        &cert_list(&[&leaf]),
        &format!("backends = [{}]", be.list()),
    ));
    let rt = pki::rt();
    let tls12 = client_config(&ca, &["http/1.1"], TLS12, None);
    let tls13 = client_config(&ca, &["http/1.1"], TLS13, None);
    // Refused handshakes are counted (the counters are the process's, shared by every test:
    // only growth is checked).
    let handshakes = |result: &str| {
        let text = client()
            .get(strict.admin_url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let key = format!("switchyard_tls_handshakes_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map_or(-1.0, |v| v.parse::<f64>().unwrap())
    };
    let (failed, ok) = (handshakes("failed"), handshakes("ok"));
    assert!(rt
        .block_on(pki::connect(strict.addr, "localhost", tls12.clone()))
        .is_err());
    assert!(eventually(Duration::from_secs(3), || handshakes("failed") > failed));
    let s = rt
        .block_on(pki::connect(strict.addr, "localhost", tls13))
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert!(eventually(Duration::from_secs(3), || handshakes("ok") > ok));
    let r = rt
        .block_on(pki::get(lenient.addr, "localhost", tls12, "/"))
        .unwrap();
    assert_eq!(r.status, 200, "TLS 1.2 is accepted by default");
}

#[test]
fn replaced_certificate_serves_new_handshakes_while_open_connections_continue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let old = ca.leaf(d, "live", &["localhost"]);
    let be = backends(1);
    let lb = start(&tls_config(
        &cert_list(&[&old]),
        &format!("backends = [{}]", be.list()),
    ));
    let rt = pki::rt();
    let cfg = client_config(&ca, &["http/1.1"], both_versions(), None);
    let s = rt
        .block_on(pki::connect(lb.addr, "localhost", cfg.clone()))
        .unwrap();
    assert_eq!(pki::peer_cert(&s), old.der);
    let mut open = rt.block_on(Conn::new(s));
    assert_eq!(rt.block_on(open.get("localhost", "/")).unwrap().status, 200);

    // Renew: new files written aside, then renamed over the live ones, as deploy tools do.
    let new = ca.leaf(d, "renewed", &["localhost"]);
    std::fs::rename(&new.cert, &old.cert).unwrap();
    std::fs::rename(&new.key, &old.key).unwrap();
    let served = || {
        rt.block_on(pki::connect(lb.addr, "localhost", cfg.clone()))
            .map(|s| pki::peer_cert(&s))
            .ok()
    };
    assert!(
        eventually(Duration::from_secs(5), || served() == Some(new.der.clone())),
        "new handshakes get the renewed certificate"
    );
    assert_eq!(
        rt.block_on(open.get("localhost", "/")).unwrap().status,
        200,
        "the connection opened before the swap keeps working"
    );

    // A broken file is refused and the last good certificate stays; the refusal is counted.
    let refused = || {
        let text = client()
            .get(lb.admin_url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("switchyard_tls_reloads_total{result=\"failed\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = refused();
    std::fs::write(&old.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    assert!(eventually(Duration::from_secs(5), || refused() > before));
    assert_eq!(served(), Some(new.der.clone()));
}

#[test]
fn mtls_accepts_a_verified_client_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let clients = pki::ca(d, "clients");
    let rogue = pki::ca(d, "rogue");
    let leaf = ca.leaf(d, "site", &["localhost"]);
    let good = clients.leaf(d, "alice", &["alice.example"]);
    let bad = rogue.leaf(d, "mallory", &["mallory.example"]);
    let be = backends(1);
    let tls = format!(
        "{}\nclient_ca = {:?}",
        cert_list(&[&leaf]),
        clients.path_str()
    );
    let lb = start(&tls_config(&tls, &format!("backends = [{}]", be.list())));
    let rt = pki::rt();
    for alpn in ["http/1.1", "h2"] {
        let cfg = client_config(&ca, &[alpn], both_versions(), Some(&good));
        let r = rt.block_on(pki::get(lb.addr, "localhost", cfg, "/"));
        assert_eq!(r.map(|r| r.status), Ok(200), "{alpn}");
    }
    // In TLS 1.3 the server's verdict on the client certificate arrives after the client's
    // handshake is done, so the refusal shows on the request.
    let none = client_config(&ca, &["http/1.1"], both_versions(), None);
    assert!(rt
        .block_on(pki::get(lb.addr, "localhost", none, "/"))
        .is_err());
    let wrong = client_config(&ca, &["http/1.1"], both_versions(), Some(&bad));
    assert!(rt
        .block_on(pki::get(lb.addr, "localhost", wrong, "/"))
        .is_err());
}

#[test]
fn upstream_tls_verifies_the_backend_against_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let other = pki::ca(d, "other");
    let leaf = ca.leaf(d, "backend", &["backend.internal", "127.0.0.1"]);
    let be = backends(0);
    let tls = switchyard::demo::tls_config(leaf.cert_str(), leaf.key_str()).unwrap();
    let addr = be
        .rt
        .block_on(switchyard::demo::spawn_backend_tls(
            "127.0.0.1:0".parse().unwrap(),
            "secure",
            Some(tls),
        ))
        .unwrap();
    let cfg = |tls: &str, protocol: &str| {
        config(&format!(
            "backends = [{{ address = \"{addr}\" }}]\nprotocol = \"{protocol}\"\ntls = {{ {tls} }}"
        ))
    };
    let c = client();

    // The right CA, with the default server name (the backend's IP) and an explicit one.
    for tls in [
        format!("ca_file = {:?}", ca.path_str()),
        format!(
            "ca_file = {:?}, server_name = \"backend.internal\"",
            ca.path_str()
        ),
    ] {
        for (protocol, version) in [("http1", "HTTP/1.1"), ("h2", "HTTP/2.0")] {
            let lb = start(&cfg(&tls, protocol));
            let r = c.get(lb.url("/x")).send().unwrap();
            assert_eq!(r.status(), 200, "{tls} {protocol}");
            assert_eq!(r.headers()["x-demo-backend"], "secure");
            let v: serde_json::Value = r.json().unwrap();
            assert_eq!(v["version"], version, "{protocol}");
        }
    }
    // The wrong CA: the backend is not who it claims to be.
    let lb = start(&cfg(&format!("ca_file = {:?}", other.path_str()), "http1"));
    let r = c.get(lb.url("/x")).send().unwrap();
    assert_eq!(r.status(), 502);
    // A name the certificate does not cover.
    let lb = start(&cfg(
        &format!(
            "ca_file = {:?}, server_name = \"evil.internal\"",
            ca.path_str()
        ),
        "http1",
    ));
    assert_eq!(c.get(lb.url("/x")).send().unwrap().status(), 502);
    // Verification off: accepted, with a warning in the log.
    let lb = start(&cfg("insecure_skip_verify = true", "http1"));
    assert_eq!(c.get(lb.url("/x")).send().unwrap().status(), 200);
}

/// An HTTPS backend that requires a client certificate from `client_ca` and answers with the
/// verified subject in `x-peer`.
async fn mtls_backend(server: &pki::Leaf, client_ca: &pki::Ca) -> std::net::SocketAddr {
    use std::sync::Arc;
    let provider = switchyard::listener::certs::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let key = switchyard::listener::certs::load_pair(server.cert_str(), server.key_str())
        .unwrap()
        .key;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                let subject = switchyard::listener::certs::subject(&peer).unwrap();
                let svc = hyper::service::service_fn(move |_req| {
                    let r = http::Response::builder()
                        .header("x-peer", subject.clone())
                        .body(http_body_util::Full::new(bytes::Bytes::from("ok")))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    addr
}

#[test]
fn upstream_mtls_presents_the_configured_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let clients = pki::ca(d, "clients");
    let server = ca.leaf(d, "service", &["127.0.0.1"]);
    let me = clients.leaf(d, "switchyard", &["lb.internal"]);
    let be = backends(0);
    let addr = be.rt.block_on(mtls_backend(&server, &clients));
    let up = |extra: &str| {
        config(&format!(
            "backends = [{{ address = \"{addr}\" }}]\ntls = {{ ca_file = {:?}{extra} }}",
            ca.path_str()
        ))
    };
    let c = client();
    let lb = start(&up(&format!(
        ", client_cert = {:?}, client_key = {:?}",
        me.cert_str(),
        me.key_str()
    )));
    let r = c.get(lb.url("/")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-peer"], "CN=switchyard");
    // Without the client certificate the service refuses the handshake.
    let lb = start(&up(""));
    assert_eq!(c.get(lb.url("/")).send().unwrap().status(), 502);
}

#[test]
fn redirect_listeners_answer_308_to_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::ca(dir.path(), "ca");
    let leaf = ca.leaf(dir.path(), "site", &["localhost"]);
    let be = backends(1);
    let log = dir.path().join("access.log");
    let text = format!(
        "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_file = {:?}\n\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\n[listeners.tls]\n{}\nredirect_https = true\n\n\
         [[listeners]]\nbind = \"127.0.0.2:0\"\ntls = {{ redirect_https = true }}\n\n\
         [upstreams.web]\nbackends = [{}]\n",
        log.display().to_string(),
        cert_list(&[&leaf]),
        be.list()
    );
    // Validation refuses two listeners on the same "IP:0", hence 127.0.0.2 for the second.
    let lb = start(&text);
    let https_port = lb.addr.port();
    let plain = lb.running().listeners[1];
    let get = b"GET /a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n";
    let mut ids = Vec::new();
    for addr in [plain, lb.addr] {
        let r = raw(addr, get);
        assert!(r.starts_with("HTTP/1.1 308"), "{addr}: {r}");
        // A request id, as on every other response, and the same one in the access log.
        let id = r
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-request-id: ")
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no x-request-id: {r}"));
        assert_eq!(id.len(), 32, "{r}");
        ids.push(id);
        assert!(
            r.to_ascii_lowercase().contains(&format!(
                "location: https://example.com:{https_port}/a/b?c=1"
            )),
            "{r}"
        );
    }
    // TLS on the same port is still served.
    let cfg = client_config(&ca, &["http/1.1"], both_versions(), None);
    let r = pki::rt().block_on(pki::get(lb.addr, "localhost", cfg, "/"));
    assert_eq!(r.map(|r| r.status), Ok(200));
    // Each redirect is access-logged like a proxied request.
    let lines = access_lines(&log, 3);
    let redirects: Vec<_> = lines.iter().filter(|l| l["status"] == 308).collect();
    assert_eq!(redirects.len(), 2, "{lines:?}");
    for l in redirects {
        assert_eq!(l["path"], "/a/b?c=1");
        assert_eq!(l["host"], "example.com:8080");
        assert!(l["bytes_out"].as_u64().unwrap() > 0, "{l}");
        assert!(
            ids.iter().any(|id| l["request_id"] == id.as_str()),
            "{l} {ids:?}"
        );
    }
    // A client's own id is kept.
    let r = raw(
        plain,
        b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n",
    );
    assert!(
        r.to_ascii_lowercase().contains("x-request-id: abc-123"),
        "{r}"
    );
}

/// Runs `switchyard check` on `toml` and returns (exit code, stderr).
fn check(dir: &std::path::Path, toml: &str) -> (i32, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_bad_certificate_material_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let a = ca.leaf(d, "a", &["a.test"]);
    let b = ca.leaf(d, "b", &["b.test"]);
    let expired = ca.leaf_with(
        d,
        "old",
        &["old.test"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
        |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        },
    );
    let up = "backends = [{ address = \"127.0.0.1:9\" }]";

    let (code, err) = check(d, &tls_config(&cert_list(&[&a]), up));
    assert_eq!(code, 0, "{err}");

    let mismatched = format!(
        "certificates = [{{ cert = {:?}, key = {:?} }}]",
        a.cert_str(),
        b.key_str()
    );
    let (code, err) = check(d, &tls_config(&mismatched, up));
    assert_eq!(code, 1);
    assert!(err.contains("listeners[0].tls.certificates[0]"), "{err}");
    assert!(err.contains(b.key_str()), "{err}");
    assert!(err.contains("does not match"), "{err}");

    let (code, err) = check(d, &tls_config(&cert_list(&[&expired]), up));
    assert_eq!(code, 1);
    assert!(
        err.contains(expired.cert_str()) && err.contains("expired"),
        "{err}"
    );

    let missing =
        "certificates = [{ cert = \"/nonexistent/x.crt\", key = \"/nonexistent/x.key\" }]";
    let (code, err) = check(d, &tls_config(missing, up));
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/x.crt: cannot read"), "{err}");

    let upstream = format!("{up}\ntls = {{ ca_file = \"/nonexistent/ca.pem\" }}");
    let (code, err) = check(d, &tls_config(&cert_list(&[&a]), &upstream));
    assert_eq!(code, 1);
    assert!(err.contains("upstreams.web.tls.ca_file"), "{err}");
}

#[test]
fn private_keys_load_in_pkcs8_pkcs1_and_sec1_forms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    for (alg, label) in [
        (&rcgen::PKCS_RSA_SHA256, "RSA PRIVATE KEY"),
        (&rcgen::PKCS_ECDSA_P256_SHA256, "EC PRIVATE KEY"),
        (&rcgen::PKCS_ED25519, ""),
    ] {
        let leaf = ca.leaf_with(d, "k", &["k.test"], alg, |_| {});
        let loaded = switchyard::listener::certs::load_pair(leaf.cert_str(), leaf.key_str());
        assert!(loaded.is_ok(), "PKCS#8 {label}");
        if label.is_empty() {
            continue;
        }
        // The traditional forms are the PKCS#8 privateKey field with their own PEM label.
        let der = pkcs8_inner(&pem_der(&leaf.key_pem));
        std::fs::write(&leaf.key, pem(label, &der)).unwrap();
        let loaded = switchyard::listener::certs::load_pair(leaf.cert_str(), leaf.key_str());
        assert!(loaded.is_ok(), "{label}: {:?}", loaded.err());
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let k = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    k.secret_der().to_vec()
}

/// The OCTET STRING `privateKey` of a PKCS#8 `PrivateKeyInfo` (short DER walk, test-only).
fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
    fn header(b: &[u8]) -> (usize, usize) {
        // (header length, content length)
        if b[1] < 0x80 {
            return (2, b[1] as usize);
        }
        let n = (b[1] & 0x7f) as usize;
        let len = b[2..2 + n]
            .iter()
            .fold(0usize, |a, x| (a << 8) | *x as usize);
        (2 + n, len)
    }
    let (h, _) = header(der);
    let mut rest = &der[h..];
    for _ in 0..2 {
        // version INTEGER, algorithm SEQUENCE
        let (h, l) = header(rest);
        rest = &rest[h + l..];
    }
    assert_eq!(rest[0], 0x04, "OCTET STRING");
    let (h, l) = header(rest);
    rest[h..h + l].to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for c in der.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                b64.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn health_checks_reach_tls_backends_the_way_traffic_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let leaf = ca.leaf(d, "backend", &["127.0.0.1"]);
    let be = backends(0);
    let tls = switchyard::demo::tls_config(leaf.cert_str(), leaf.key_str()).unwrap();
    let addr = be
        .rt
        .block_on(switchyard::demo::spawn_backend_tls(
            "127.0.0.1:0".parse().unwrap(),
            "secure",
            Some(tls),
        ))
        .unwrap();
    let c = client();
    for protocol in ["http1", "h2"] {
        let lb = start(&config(&format!(
            "backends = [{{ address = \"{addr}\" }}]\nprotocol = \"{protocol}\"\ntls = {{ ca_file = {:?} }}\n\
             health_check = {{ kind = \"http\", path = \"/healthz\", interval = \"200ms\", timeout = \"1s\" }}",
            ca.path_str()
        )));
        let health = || first_backend(&lb, 0)["health"].clone();
        assert!(
            eventually(Duration::from_secs(5), || health() == "healthy"),
            "{protocol}: {}",
            health()
        );
        assert_eq!(c.get(lb.url("/")).send().unwrap().status(), 200);
    }
}
