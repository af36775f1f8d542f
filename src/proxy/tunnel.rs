//! Copying bytes both ways between two connections, for an upgraded (WebSocket) exchange and for
//! a `tcp` listener's connection: tokio's `copy_bidirectional`, which passes each side's end of
//! input on as a half-close and keeps the other direction going, with the bytes and the time of
//! the last read counted on the way, so that a tunnel where nothing moves is closed after the
//! idle timeout and its access-log line can say how much went each way.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How a tunnel ended, for its access-log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed (or one side's close was passed on and the other then closed).
    Closed,
    /// A read or write failed: a reset, or one side vanished.
    Broken,
    /// Nothing moved either way for the upstream's idle timeout.
    Idle,
}

/// Each direction's buffer, as NGINX's `proxy_buffer_size` for streams: one read of a large
/// transfer fills it, and two per connection cost 32 KiB while data flows.
const BUFFER: usize = 16 * 1024;

/// Copies both ways at once until both directions have ended, either fails, or nothing has moved
/// either way for `idle`. Returns how it ended and the bytes copied from `a` to `b` and back.
pub async fn pump<A, B>(a: A, b: B, idle: Duration) -> (TunnelEnd, u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last read that brought bytes.
    let last = AtomicU64::new(0);
    let (from_a, from_b) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut a = Counted::new(a, start, &last, &from_a);
    let mut b = Counted::new(b, start, &last, &from_b);
    let both = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER, BUFFER);
    let watchdog = async {
        loop {
            let at = start + Duration::from_millis(last.load(Relaxed)) + idle;
            tokio::time::sleep_until(at).await;
            if start.elapsed().as_millis() as u64 >= last.load(Relaxed) + idle.as_millis() as u64 {
                return;
            }
        }
    };
    let end = tokio::select! {
        r = both => if r.is_ok() { TunnelEnd::Closed } else { TunnelEnd::Broken },
        _ = watchdog => TunnelEnd::Idle,
    };
    (end, from_a.load(Relaxed), from_b.load(Relaxed))
}

/// A connection whose reads are counted: bytes, and when the last of them came.
struct Counted<'a, T> {
    inner: T,
    start: Instant,
    last: &'a AtomicU64,
    moved: &'a AtomicU64,
}

impl<'a, T> Counted<'a, T> {
    fn new(inner: T, start: Instant, last: &'a AtomicU64, moved: &'a AtomicU64) -> Self {
        Counted {
            inner,
            start,
            last,
            moved,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = match Pin::new(&mut self.inner).poll_read(cx, buf) {
            // A TLS peer that closes without close_notify (many do): an end of input like any
            // other, so the other direction still finishes and the tunnel ends `closed`.
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            r => r,
        };
        let n = buf.filled().len() - before;
        if n > 0 {
            self.moved.fetch_add(n as u64, Relaxed);
            self.last
                .store(self.start.elapsed().as_millis() as u64, Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_are_counted_each_way_and_a_half_close_passed_on() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let relay = tokio::spawn(pump(a, b, Duration::from_secs(5)));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello", "the client's end reached the server");
        server.write_all(b"after the end").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"after the end");
        assert_eq!(relay.await.unwrap(), (TunnelEnd::Closed, 5, 13));
    }

    #[tokio::test]
    async fn traffic_keeps_a_tunnel_open_past_its_idle_time() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let relay = tokio::spawn(pump(a, b, Duration::from_millis(300)));
        // Ten bytes, one every 100 ms: three idle periods in all, none of them silent.
        for _ in 0..10 {
            client.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            server.read_exact(&mut one).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!relay.is_finished(), "closed while bytes moved");
        drop(client);
        drop(server);
        assert_eq!(relay.await.unwrap().1, 10);
    }

    #[tokio::test]
    async fn a_tunnel_where_nothing_moves_is_closed_after_the_idle_time() {
        let (_client, a) = tokio::io::duplex(64);
        let (b, _server) = tokio::io::duplex(64);
        let (end, ..) = pump(a, b, Duration::from_millis(50)).await;
        assert_eq!(end, TunnelEnd::Idle);
    }
}
