//! `tcp` listeners: connections balanced over an upstream's backends with their bytes relayed
//! unread; TLS passed through by SNI or terminated; PROXY protocol headers to the backend; live
//! changes of where connections go; configurations refused by field.

use crate::pki;
use crate::support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A backend that speaks first (as MySQL, SMTP or Redis replicas do): `hi NAME\n`; then echoes
/// each line upper-cased; at the client's end of input it writes `bye NAME\n` and closes. What
/// it read first on each connection (a PROXY header, if any) is sent to `first`.
fn greeter(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(format!("hi {name}\n").as_bytes());
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let _ = s.write_all(line.to_uppercase().as_bytes());
                    line.clear();
                }
                let _ = s.write_all(format!("bye {name}\n").as_bytes());
            });
        }
    });
    addr
}

/// An address nothing listens on.
fn dead() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn line(r: &mut impl BufRead) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s
}

/// One whole conversation through the proxy: greeting, an echo, the client's half-close and the
/// backend's farewell after it. Returns the backend's name.
fn converse(addr: SocketAddr) -> String {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let hi = line(&mut r);
    let name = hi.strip_prefix("hi ").expect(&hi).trim().to_string();
    (&s).write_all(b"ping\n").unwrap();
    assert_eq!(line(&mut r), "PING\n");
    // The half-close reaches the backend, and what it says after still reaches the client.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(line(&mut r), format!("bye {name}\n"));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "then the end: {rest:?}");
    name
}

/// Starts Switchyard from a test running on tokio (start blocks until it is bound).
async fn start_async(text: String) -> Lb {
    tokio::task::spawn_blocking(move || start(&text))
        .await
        .unwrap()
}

/// Stops it off the test's runtime (dropping waits for its workers).
async fn stop_async(lb: Lb) {
    tokio::task::spawn_blocking(move || drop(lb)).await.unwrap();
}

/// A listener's `[listeners.tls]` section serving `leaf`.
fn tls_section(leaf: &pki::Leaf) -> String {
    format!(
        "[listeners.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]",
        leaf.cert_str(),
        leaf.key_str()
    )
}

fn tcp_config(log: &std::path::Path, listener: &str, upstreams: &str) -> String {
    format!(
        "workers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_file = {log:?}\n\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\n{listener}\n\n{upstreams}"
    )
}

#[test]
fn connections_are_balanced_their_bytes_relayed_and_half_closes_passed_on() {
    let (b1, b2) = (greeter("b1"), greeter("b2"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&tcp_config(
        &log,
        "upstream = \"db\"",
        &format!(
            "[upstreams.db]\nalgorithm = \"least_connections\"\n\
             backends = [{{ address = \"{b1}\" }}, {{ address = \"{}\" }}, {{ address = \"{b2}\" }}]",
            dead()
        ),
    ));
    let mut seen: Vec<String> = (0..6).map(|_| converse(lb.addr)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["b1", "b2"], "both live backends, never the dead one");

    // least_connections counts open connections: with one held open, the next goes elsewhere,
    // and the API shows one active connection on each.
    let held = TcpStream::connect(lb.addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let first = line(&mut BufReader::new(held.try_clone().unwrap()));
    let other = TcpStream::connect(lb.addr).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let second = line(&mut BufReader::new(other.try_clone().unwrap()));
    assert_ne!(
        first, second,
        "the second connection avoids the busy backend"
    );
    let active: Vec<u64> = backends_of(&lb, "db")
        .iter()
        .map(|b| b["active_requests"].as_u64().unwrap())
        .collect();
    assert_eq!(active, [1, 0, 1], "{active:?}");
    drop((held, other));

    let lines = access_lines(&log, 8);
    let done: Vec<_> = lines.iter().filter(|l| l["end"] == "closed").collect();
    assert!(done.len() >= 6, "{lines:?}");
    let l = done[0];
    assert_eq!(l["kind"], "tcp");
    assert_eq!(l["upstream"], "db");
    assert_eq!(l["bytes_in"], 5, "ping\\n");
    assert_eq!(l["bytes_out"], 6 + 5 + 7, "hi bN, PING, bye bN: {l}");
    assert!(
        lines.iter().any(|l| l["attempts"] == 2),
        "a connect refused by the dead backend went to another: {lines:?}"
    );

    // At least: the counters are the process's, and other tests run beside this one.
    let metrics = get_text(&lb.admin_url("/metrics"));
    assert!(
        counter(
            &metrics,
            "switchyard_tcp_connections_total{result=\"relayed\"}"
        ) >= 8
    );
    assert!(
        counter(
            &metrics,
            "switchyard_tcp_bytes_total{direction=\"received\"}"
        ) >= 30
    );
}

#[test]
fn with_every_backend_down_a_connection_is_closed_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&tcp_config(
        &log,
        "upstream = \"db\"",
        &format!(
            "[upstreams.db]\nbackends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]",
            dead(),
            dead()
        ),
    ));
    let mut s = TcpStream::connect(lb.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    assert_eq!(s.read_to_end(&mut got).unwrap(), 0, "closed without a byte");
    let l = &access_lines(&log, 1)[0];
    assert_eq!(l["error"], "connect_failed", "{l}");
    assert_eq!(l["attempts"], 2, "retried once on the other backend: {l}");
    let metrics = get_text(&lb.admin_url("/metrics"));
    assert!(
        counter(
            &metrics,
            "switchyard_tcp_connections_total{result=\"connect_failed\"}"
        ) >= 1
    );
    // Both failures count against their backends, as an HTTP connect failure does.
    let failures: u64 = backends_of(&lb, "db")
        .iter()
        .map(|b| b["failures_total"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(failures, 2);
}

/// The live state of upstream `name`'s backends, in configuration order.
fn backends_of(lb: &Lb, name: &str) -> Vec<serde_json::Value> {
    let all = upstreams(lb);
    let up = all["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no upstream {name}: {all}"));
    up["backends"].as_array().unwrap().clone()
}

/// The value of the sample `name` (with its labels) in a Prometheus text page.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in {metrics}"))
        .parse()
        .unwrap()
}

fn get_text(url: &str) -> String {
    client().get(url).send().unwrap().text().unwrap()
}

/// A TLS backend for `leaf` that answers each connection with `NAME saw SNI\n`: what it learnt
/// from the handshake the client made with it through the proxy.
async fn tls_backend(leaf: &pki::Leaf, name: &'static str) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(pki::server_config(leaf));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                let _ = tls
                    .write_all(format!("{name} saw {sni}\n").as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

async fn read_all(mut s: impl tokio::io::AsyncRead + Unpin) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passes_through_unopened_to_the_upstream_its_server_name_picks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let a = tls_backend(&ca.leaf(d, "a", &["a.test"]), "a").await;
    let b = tls_backend(&ca.leaf(d, "b", &["*.b.test"]), "b").await;
    let fallback = tls_backend(&ca.leaf(d, "c", &["other.test", "127.0.0.1"]), "c").await;
    let log = d.join("access.log");
    let text = tcp_config(
        &log,
        "upstream = \"rest\"\nsni_routes = [{ hosts = [\"a.test\"], upstream = \"a\" }, { hosts = [\"*.b.test\"], upstream = \"b\" }]",
        &format!(
            "[upstreams.a]\nbackends = [{{ address = \"{a}\" }}]\n\
             [upstreams.b]\nbackends = [{{ address = \"{b}\" }}]\n\
             [upstreams.rest]\nbackends = [{{ address = \"{fallback}\" }}]\n"
        ),
    );
    let lb = start_async(text).await;
    let cfg = pki::client_config(&ca, &[], pki::both_versions(), None);
    // Switchyard holds no certificate at all: a verified handshake is the backend's own.
    for (sni, want) in [
        ("a.test", "a saw a.test\n"),
        ("x.b.test", "b saw x.b.test\n"),
        ("other.test", "c saw other.test\n"),
        // Connecting by IP address, a client sends no server name: the listener's `upstream`.
        ("127.0.0.1", "c saw -\n"),
    ] {
        let s = pki::connect(lb.addr, sni, cfg.clone()).await.unwrap();
        assert_eq!(read_all(s).await, want);
    }
    // Plain text where a ClientHello should be: closed, nothing forwarded.
    let mut plain = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_all(plain).await, "");
    // Half a ClientHello, then the client leaves: logged as the client's leaving.
    let mut hello = Vec::new();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    rustls::ClientConnection::new(cfg.clone(), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    let mut cut = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut cut, &hello[..hello.len() / 2])
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut cut).await.unwrap();
    assert_eq!(read_all(cut).await, "");
    let lines = tokio::task::spawn_blocking(move || access_lines(&log, 6))
        .await
        .unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l["sni"] == "x.b.test" && l["upstream"] == "b"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l["error"] == "not_tls"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l["error"] == "client_closed"),
        "{lines:?}"
    );
    stop_async(lb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_and_the_backend_told_the_client_by_a_proxy_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let leaf = ca.leaf(d, "edge", &["db.test"]);
    // The backend reads the PROXY v2 header and the client's bytes, and says what it got.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = [0u8; 28];
        s.read_exact(&mut head).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        let sig_ok = head[..12] == *b"\r\n\r\n\0\r\nQUIT\n" && head[12] == 0x21 && head[13] == 0x11;
        let port = u16::from_be_bytes([head[24], head[25]]);
        let reply = format!(
            "sig={sig_ok} port={port} got={}",
            String::from_utf8_lossy(&rest)
        );
        s.write_all(reply.as_bytes()).await.unwrap();
    });
    let text = tcp_config(
        &d.join("access.log"),
        &format!(
            "upstream = \"db\"\nsend_proxy_protocol = \"v2\"\n{}",
            tls_section(&leaf)
        ),
        &format!("[upstreams.db]\nbackends = [{{ address = \"{backend}\" }}]\n"),
    );
    let lb = start_async(text).await;
    // The client offers h2: a tcp listener names no protocol for what it carries.
    let cfg = pki::client_config(&ca, &["h2"], pki::both_versions(), None);
    let mut s = pki::connect(lb.addr, "db.test", cfg).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), None);
    let port = s.get_ref().0.local_addr().unwrap().port();
    s.write_all(b"hello").await.unwrap();
    assert_eq!(read_all(s).await, format!("sig=true port={port} got=hello"));
    stop_async(lb).await;
}

#[test]
fn where_connections_go_changes_live_without_cutting_open_ones() {
    let (b1, b2) = (greeter("b1"), greeter("b2"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let ups = format!(
        "[upstreams.one]\nbackends = [{{ address = \"{b1}\" }}]\n\
         [upstreams.two]\nbackends = [{{ address = \"{b2}\" }}]\n"
    );
    let lb = start(&tcp_config(&log, "upstream = \"one\"", &ups));
    let open = TcpStream::connect(lb.addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(open.try_clone().unwrap());
    assert_eq!(line(&mut r), "hi b1\n");

    let moved = tcp_config(&log, "upstream = \"two\"", &ups);
    put_config(&lb, &moved);
    assert_eq!(converse(lb.addr), "b2", "new connections follow the change");
    (&open).write_all(b"still here\n").unwrap();
    assert_eq!(
        line(&mut r),
        "STILL HERE\n",
        "the open one stays where it was"
    );

    // A client in `ip_deny` is closed at once, before any backend hears of it.
    put_config(
        &lb,
        &tcp_config(
            &log,
            "upstream = \"two\"\nip_deny = [\"127.0.0.0/8\"]",
            &ups,
        ),
    );
    let mut denied = TcpStream::connect(lb.addr).unwrap();
    denied
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    assert_eq!(denied.read_to_end(&mut got).unwrap(), 0, "{got:?}");
    assert!(
        access_lines(&log, 2)
            .iter()
            .any(|l| l["error"] == "client_denied"),
        "logged as denied"
    );
    put_config(
        &lb,
        &tcp_config(&log, "upstream = \"two\"\nip_allow = [\"127.0.0.1\"]", &ups),
    );
    assert_eq!(
        converse(lb.addr),
        "b2",
        "an allowed client still gets through"
    );

    // Refused, each by its field, and nothing applied.
    let bad = |listener: &str, extra: &str| {
        let text = format!(
            "{}\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{extra}\n[[routes]]\nupstream = \"one\"\n",
            tcp_config(
                &log,
                listener,
                &format!("{ups}[upstreams.h2]\nprotocol = \"h2c\"\n")
            )
        );
        refused_paths(&lb, &text)
    };
    assert_eq!(bad("", ""), ["listeners[0].upstream"]);
    assert_eq!(bad("upstream = \"nope\"", ""), ["listeners[0].upstream"]);
    assert_eq!(bad("upstream = \"h2\"", ""), ["listeners[0].upstream"]);
    assert_eq!(
        bad(
            "upstream = \"one\"\nheader_timeout = \"5s\"\nsend_proxy_protocol = \"v3\"",
            ""
        ),
        [
            "listeners[0].header_timeout",
            "listeners[0].send_proxy_protocol"
        ]
    );
    assert_eq!(
        bad(
            "sni_routes = [{ hosts = [\"A.test\", \"*.\", \"b.test\", \"b.test\"], upstream = \"one\" }]",
            ""
        ),
        [
            "listeners[0].sni_routes[0].hosts[0]",
            "listeners[0].sni_routes[0].hosts[1]",
            "listeners[0].sni_routes[0].hosts[3]"
        ]
    );
    assert_eq!(
        bad(
            "upstream = \"one\"\nip_allow = [\"10.0.0.0/33\"]",
            "upstream = \"one\"\nip_deny = [\"10.0.0.1\"]"
        ),
        [
            "listeners[0].ip_allow[0]",
            "listeners[1].upstream",
            "listeners[1].ip_deny"
        ]
    );
    assert_eq!(converse(lb.addr), "b2", "still the last accepted change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_goes_before_the_tls_of_a_tls_upstream() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let leaf = ca.leaf(d, "db", &["db.test"]);
    // The backend reads a PROXY v1 line in the clear, then a TLS handshake, then the client's
    // bytes, and says what the line was.
    let acceptor = tokio_rustls::TlsAcceptor::from(pki::server_config(&leaf));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut r = tokio::io::BufReader::new(s);
        let mut header = String::new();
        r.read_line(&mut header).await.unwrap();
        let mut tls = acceptor.accept(r).await.unwrap();
        let mut got = [0u8; 5];
        tls.read_exact(&mut got).await.unwrap();
        tls.write_all(header.as_bytes()).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let text = tcp_config(
        &d.join("access.log"),
        "upstream = \"db\"\nsend_proxy_protocol = \"v1\"",
        &format!(
            "[upstreams.db]\nbackends = [{{ address = \"{backend}\" }}]\n\
             tls = {{ ca_file = {:?}, server_name = \"db.test\" }}\n",
            ca.path_str()
        ),
    );
    let lb = start_async(text).await;
    let mut c = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"hello").await.unwrap();
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        me.port(),
        lb.addr.port()
    );
    assert_eq!(read_all(c).await, want);
    stop_async(lb).await;
}

/// Behind a balancer that sends PROXY headers, the header sent on names the client and the
/// address it reached as the balancer's header said, not this listener's socket (HAProxy's
/// `accept-proxy` with `send-proxy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_read_in_front_is_passed_on_whole() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut r = tokio::io::BufReader::new(s);
        let mut header = String::new();
        r.read_line(&mut header).await.unwrap();
        r.get_mut().write_all(header.as_bytes()).await.unwrap();
        r.get_mut().shutdown().await.unwrap();
    });
    let text = tcp_config(
        &dir.path().join("access.log"),
        "upstream = \"db\"\nproxy_protocol = true\nsend_proxy_protocol = \"v1\"",
        &format!("[upstreams.db]\nbackends = [{{ address = \"{backend}\" }}]\n"),
    );
    let lb = start_async(text).await;
    let mut c = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let header = "PROXY TCP4 203.0.113.7 198.51.100.1 56324 5432\r\n";
    c.write_all(format!("{header}hello").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_all(c).await, header);
    stop_async(lb).await;
}

#[test]
fn upstream_settings_a_tcp_connection_cannot_use_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let check = |listener: &str, upstream: &str| -> Vec<String> {
        let text = tcp_config(
            &dir.join("a.log"),
            listener,
            &format!("[upstreams.db]\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n{upstream}\n"),
        );
        match switchyard::config::parse_config(&text, switchyard::config::Format::Toml, None) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(|p| p.path.clone()).collect(),
        }
    };
    assert_eq!(
        check("upstream = \"db\"", "health_check = { kind = \"tcp\" }"),
        Vec::<String>::new()
    );
    assert_eq!(
        check(
            "upstream = \"db\"",
            "algorithm = \"consistent_hash\"\nhash_key = \"cookie:s\"\nsticky = {}\nhealth_check = { interval = \"2s\" }"
        ),
        [
            "upstreams.db.hash_key",
            "upstreams.db.sticky",
            "upstreams.db.health_check.kind"
        ]
    );
    // TLS passed through unopened cannot also be wrapped in TLS to the backend.
    assert_eq!(
        check(
            "sni_routes = [{ hosts = [\"a.test\"], upstream = \"db\" }]",
            "tls = { server_name = \"a.test\" }"
        ),
        ["upstreams.db.tls"]
    );
}

/// A TLS client that ends its side with a bare TCP FIN, no close_notify (many do), has ended
/// its input, not broken the connection: the backend is told, and what it says after still
/// reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_closing_without_close_notify_is_a_half_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let leaf = ca.leaf(d, "edge", &["db.test"]);
    let backend = greeter("g");
    let log = d.join("access.log");
    let text = tcp_config(
        &log,
        &format!("upstream = \"db\"\n{}", tls_section(&leaf)),
        &format!("[upstreams.db]\nbackends = [{{ address = \"{backend}\" }}]\n"),
    );
    let lb = start_async(text).await;
    let cfg = pki::client_config(&ca, &[], pki::both_versions(), None);
    let mut s = pki::connect(lb.addr, "db.test", cfg).await.unwrap();
    s.write_all(b"ping\n").await.unwrap();
    s.flush().await.unwrap();
    let mut hi = [0u8; 10];
    s.read_exact(&mut hi).await.unwrap();
    assert_eq!(&hi, b"hi g\nPING\n");
    // The TCP write side closed under the TLS session: no close_notify.
    s.get_mut().0.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert_eq!(String::from_utf8_lossy(&rest), "bye g\n");
    let lines = tokio::task::spawn_blocking(move || access_lines(&log, 1))
        .await
        .unwrap();
    assert_eq!(lines[0]["end"], "closed", "{}", lines[0]);
    stop_async(lb).await;
}

/// `max_connections` holds connections as it holds requests: one over the limit waits for a
/// slot, one over `max_pending` too is closed at once (`upstream_overloaded`), and the waiting
/// one is relayed as soon as a slot frees.
#[test]
fn connections_over_max_connections_queue_and_then_overflow() {
    let b = greeter("b");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&tcp_config(
        &log,
        "upstream = \"db\"",
        &format!(
            "[upstreams.db]\nbackends = [{{ address = \"{b}\" }}]\nmax_connections = 1\nmax_pending = 1"
        ),
    ));
    let open = |addr| {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let first = open(lb.addr);
    assert_eq!(
        line(&mut BufReader::new(first.try_clone().unwrap())),
        "hi b\n"
    );
    let queued = open(lb.addr);
    assert!(eventually(Duration::from_secs(3), || {
        lb.running().shared.current().upstreams[0].queue.waiting() == 1
    }));
    let mut over = open(lb.addr);
    let mut got = Vec::new();
    assert_eq!(
        over.read_to_end(&mut got).unwrap(),
        0,
        "closed at once: {got:?}"
    );
    drop(first);
    assert_eq!(
        line(&mut BufReader::new(queued.try_clone().unwrap())),
        "hi b\n",
        "the queued connection got the freed slot"
    );
    let lines = access_lines(&log, 2);
    assert!(
        lines.iter().any(|l| l["error"] == "upstream_overloaded"),
        "{lines:?}"
    );
}

/// At shutdown an open tcp connection gets the grace period, as an HTTP request does: it keeps
/// relaying while the server drains, and the server stops once it closes.
#[test]
fn an_open_connection_gets_the_grace_period_at_shutdown() {
    let b = greeter("b");
    let dir = tempfile::tempdir().unwrap();
    let mut lb = start(&tcp_config(
        &dir.path().join("access.log"),
        "upstream = \"db\"",
        &format!("[upstreams.db]\nbackends = [{{ address = \"{b}\" }}]"),
    ));
    let s = TcpStream::connect(lb.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(line(&mut r), "hi b\n");
    let running = lb.running.take().unwrap();
    let stopping = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        running.shutdown();
        t.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    (&s).write_all(b"still here\n").unwrap();
    assert_eq!(
        line(&mut r),
        "STILL HERE\n",
        "relayed while the server drains"
    );
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the open connection"
    );
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(line(&mut r), "bye b\n");
    let took = stopping.join().unwrap();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(8),
        "shutdown waited for the connection, then ended when it closed: {took:?}"
    );
}
