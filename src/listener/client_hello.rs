//! Reading a TLS ClientHello's server name (SNI) without taking part in the handshake, for `tcp`
//! listeners that route TLS they pass through unopened (NGINX's `ssl_preread`, HAProxy's
//! `req.ssl_sni`).
//!
//! The bytes are read into a buffer and handed, as a copy, to rustls' [`Acceptor`], which parses
//! the ClientHello and no more; the buffer is then sent to the chosen backend ahead of the rest of
//! the connection, so the backend sees the client's handshake byte for byte.

use bytes::BytesMut;
use rustls::server::Acceptor;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most bytes read while waiting for a whole ClientHello. A hello is one handshake message of at
/// most 2^24 bytes in theory; in practice under 2 KiB, a few KiB with post-quantum key shares.
/// 64 KiB is as much as any client sends and bounds what a connection can make us hold.
const MAX_HELLO: usize = 64 * 1024;

/// Why no server name could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum NotTls {
    /// The bytes are not a TLS ClientHello (plain text on a TLS port, a scanner).
    Garbled,
    /// The client closed, or sent nothing more, before its hello was complete.
    Cut,
    /// No complete hello within the handshake timeout, or within [`MAX_HELLO`] bytes.
    TooSlowOrLarge,
}

/// Reads until `io`'s ClientHello is complete: every byte read, and the server name it asks for
/// (lowercased, without a trailing dot), if any. A handshake record rustls refuses to parse is
/// let through without a name (it goes to the listener's `upstream`).
pub async fn read_sni<IO: AsyncRead + Unpin>(
    io: &mut IO,
    within: Duration,
) -> Result<(BytesMut, Option<String>), NotTls> {
    let mut buf = BytesMut::with_capacity(4096);
    let work = async {
        let mut acceptor = Acceptor::default();
        let mut fed = 0;
        loop {
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(NotTls::Cut),
                Ok(_) => {}
            }
            // The acceptor takes what it can of the new bytes; it keeps its own copy.
            while fed < buf.len() {
                match acceptor.read_tls(&mut &buf[fed..]) {
                    Ok(0) => break,
                    Ok(n) => fed += n,
                    // Its buffer is full: more than a hello's worth and still no hello.
                    Err(_) => return Err(NotTls::TooSlowOrLarge),
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let name = accepted
                        .client_hello()
                        .server_name()
                        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
                    return Ok(name);
                }
                Ok(None) if buf.len() < MAX_HELLO => buf.reserve(4096),
                Ok(None) => return Err(NotTls::TooSlowOrLarge),
                // A TLS handshake record that rustls will not take (an old client's hello
                // without `signature_algorithms`, say): the backend may, so it goes on without
                // a name, as NGINX's lenient `ssl_preread` lets it.
                Err(_) if buf.len() >= 6 && buf[0] == 0x16 && buf[5] == 1 => return Ok(None),
                Err(_) => return Err(NotTls::Garbled),
            }
        }
    };
    match tokio::time::timeout(within, work).await {
        Ok(Ok(name)) => Ok((buf, name)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NotTls::TooSlowOrLarge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, as rustls' client writes it, for `name`.
    fn hello(name: &str) -> Vec<u8> {
        let provider = crate::listener::certs::provider();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn reads_the_name_and_keeps_every_byte_even_one_at_a_time() {
        let bytes = hello("DB.Example.com");
        let (mut a, mut b) = tokio::io::duplex(1);
        let sent = bytes.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for byte in sent {
                let _ = b.write_all(&[byte]).await;
            }
            let _ = b.write_all(b"after").await;
        });
        let (buf, name) = read_sni(&mut a, Duration::from_secs(5)).await.unwrap();
        assert_eq!(name.as_deref(), Some("db.example.com"));
        assert_eq!(
            &buf[..bytes.len()],
            &bytes[..],
            "the hello is kept byte for byte"
        );
    }

    /// `record` (one TLS record holding a ClientHello) without extension `ext`, every length
    /// adjusted.
    fn without_extension(record: &[u8], ext: u16) -> Vec<u8> {
        let mut at = 5 + 4 + 2 + 32; // record and handshake headers, version, random
        at += 1 + record[at] as usize; // session id
        at += 2 + u16::from_be_bytes([record[at], record[at + 1]]) as usize; // cipher suites
        at += 1 + record[at] as usize; // compression methods
        let (exts_len_at, mut i) = (at, at + 2);
        let mut out = record[..i].to_vec();
        while i < record.len() {
            let kind = u16::from_be_bytes([record[i], record[i + 1]]);
            let len = u16::from_be_bytes([record[i + 2], record[i + 3]]) as usize;
            if kind != ext {
                out.extend_from_slice(&record[i..i + 4 + len]);
            }
            i += 4 + len;
        }
        let removed = record.len() - out.len();
        let fix16 = |o: &mut Vec<u8>, at: usize| {
            let v = u16::from_be_bytes([o[at], o[at + 1]]) as usize - removed;
            o[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
        };
        fix16(&mut out, 3);
        fix16(&mut out, exts_len_at);
        let hs = u32::from_be_bytes([0, out[6], out[7], out[8]]) as usize - removed;
        out[6..9].copy_from_slice(&(hs as u32).to_be_bytes()[1..]);
        out
    }

    #[tokio::test]
    async fn a_hello_rustls_will_not_take_goes_on_without_a_name() {
        // No signature_algorithms (13), as some old clients send it: rustls refuses the hello,
        // a backend may not, so it is passed on unnamed, every byte kept.
        let odd = without_extension(&hello("a.example"), 13);
        assert!(odd.len() < hello("a.example").len());
        let mut io: &[u8] = &odd;
        let (buf, name) = read_sni(&mut io, Duration::from_secs(5)).await.unwrap();
        assert_eq!(name, None);
        assert_eq!(&buf[..], &odd[..]);
        // The same hello with the extension is named: the cut is what made it odd.
        let mut whole: &[u8] = &hello("a.example")[..];
        assert_eq!(
            read_sni(&mut whole, Duration::from_secs(5))
                .await
                .unwrap()
                .1
                .as_deref(),
            Some("a.example")
        );
    }

    #[tokio::test]
    async fn plain_text_and_a_cut_hello_are_told_apart() {
        let mut plain: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            read_sni(&mut plain, Duration::from_secs(5)).await.err(),
            Some(NotTls::Garbled)
        );
        let bytes = hello("a.example");
        let mut cut: &[u8] = &bytes[..bytes.len() / 2];
        assert_eq!(
            read_sni(&mut cut, Duration::from_secs(5)).await.err(),
            Some(NotTls::Cut)
        );
    }
}
