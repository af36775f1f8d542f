//! Protocol detection on a new connection: HTTP/2 with prior knowledge or HTTP/1.x.
//!
//! The first read takes whatever the client sent (usually the whole first request) into one
//! buffer, which is then handed back to the HTTP server in front of the socket by [`Prefixed`].
//! hyper-util's auto builder reads exactly the 24 bytes of the HTTP/2 preface first, which costs
//! every HTTP/1 connection a second `recvfrom` for the rest of its first request.

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first read's size: a typical request head fits, and the buffer lives only until the
/// server has taken its bytes.
const FIRST_READ: usize = 4096;

/// Reads into `buf` (empty) until the bytes seen decide the protocol. Returns them and whether
/// they are (the start of) the HTTP/2 preface. End of stream before any byte gives an empty
/// prefix.
pub async fn sniff<IO: AsyncRead + Unpin>(
    io: &mut IO,
    mut buf: BytesMut,
) -> io::Result<(BytesMut, bool)> {
    buf.reserve(FIRST_READ);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            let h2 = !buf.is_empty() && PREFACE.starts_with(&buf);
            return Ok((buf, h2));
        }
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Ok((buf, false));
        }
        if n == PREFACE.len() {
            return Ok((buf, true));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(FIRST_READ);
        }
    }
}

/// A stream with bytes already read from it put back in front.
///
/// `shutdown` is passed through even for plain TCP, where skipping it would save a syscall per
/// `Connection: close` request: an upgraded (WebSocket) connection keeps this wrapper, and its
/// half-close must reach the client.
pub struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: Bytes, io: IO) -> Self {
        Prefixed { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Free the first read's buffer as soon as it has been handed over.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(chunks: &[&[u8]]) -> (Bytes, bool, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        tokio::spawn(async move {
            for c in chunks {
                a.write_all(&c).await.unwrap();
                // Let the reader see each chunk on its own.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        let (prefix, h2) = sniff(&mut b, BytesMut::new()).await.unwrap();
        let prefix = prefix.freeze();
        let mut all = Vec::new();
        Prefixed::new(prefix.clone(), b)
            .read_to_end(&mut all)
            .await
            .unwrap();
        (prefix, h2, all)
    }

    #[tokio::test]
    async fn tells_http1_from_the_h2_preface_and_loses_no_byte() {
        let (p, h2, all) = sniffed(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]).await;
        assert!(!h2);
        assert_eq!(&p[..], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");

        let mut frame = PREFACE.to_vec();
        frame.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let (_, h2, all) = sniffed(&[&frame[..5], &frame[5..]]).await;
        assert!(h2, "a preface split over reads is still HTTP/2");
        assert_eq!(all, frame);

        let (p, h2, _) = sniffed(&[]).await;
        assert!(p.is_empty() && !h2);
        let (_, h2, all) = sniffed(&[b"PRI * HTTP/1.1\r\n"]).await;
        assert!(!h2, "diverges from the preface");
        assert_eq!(all, b"PRI * HTTP/1.1\r\n");
    }
}
