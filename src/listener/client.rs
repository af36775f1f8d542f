//! A plain client connection that joins the event loop only when it first has to wait.
//!
//! A connection per request (`Connection: close`, health probes, most HTTP/1.0 clients) usually
//! has its whole request in the socket by the time it is accepted, and its small response fits
//! the socket's send buffer: nothing on it ever waits. Registered with epoll at accept (as
//! tokio's `TcpListener::accept` does), it would cost an `epoll_ctl(ADD)` and, at close, an
//! `epoll_ctl(DEL)` for nothing, plus tokio's readiness slot (a 128-byte-aligned allocation).
//! HAProxy reads a new connection speculatively before subscribing to it for the same reason.
//!
//! [`ClientStream`] starts as the bare non-blocking socket: reads and writes are tried
//! directly, and only a read or write that would block registers the socket with tokio (it is
//! then an ordinary [`TcpStream`] for the rest of its life). A keep-alive connection pays one
//! `recvfrom` that finds nothing, once, when it first goes idle.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client socket, registered with the event loop on its first would-block.
pub struct ClientStream(State);

enum State {
    /// Not registered: every read and write so far completed at once.
    Bare(std::net::TcpStream),
    Evented(TcpStream),
    /// Registration failed; the error was returned and the socket closed.
    Failed,
}

impl ClientStream {
    /// Wraps a socket in non-blocking mode (as `accept4(SOCK_NONBLOCK)` returns it).
    pub fn new(socket: std::net::TcpStream) -> ClientStream {
        ClientStream(State::Bare(socket))
    }

    /// Whether the socket has joined the event loop.
    pub fn is_evented(&self) -> bool {
        matches!(self.0, State::Evented(_))
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match &self.0 {
            State::Bare(s) => s.set_nodelay(on),
            State::Evented(s) => s.set_nodelay(on),
            State::Failed => Err(failed()),
        }
    }

    /// The registered stream, registering the socket now if it is not yet.
    pub fn evented(&mut self) -> io::Result<&mut TcpStream> {
        if let State::Bare(_) = self.0 {
            let State::Bare(s) = std::mem::replace(&mut self.0, State::Failed) else {
                unreachable!()
            };
            self.0 = State::Evented(TcpStream::from_std(s)?);
        }
        match &mut self.0 {
            State::Evented(s) => Ok(s),
            _ => Err(failed()),
        }
    }

    /// Waits until the socket is readable (registering it: waiting is what the event loop is
    /// for). Readiness may be stale; the read that follows says.
    ///
    /// Through the reader slot that `poll_read` uses, not `TcpStream::readable`: that one links
    /// a waiter into the socket's list and unlinks it when done, three lock round trips per
    /// wait where this is one. Only one task ever reads a client connection, so the single slot
    /// is enough. (Measured: −25 of ~10,880 instructions per keep-alive request.)
    pub async fn readable(&mut self) -> io::Result<()> {
        let s = self.evented()?;
        std::future::poll_fn(|cx| s.poll_read_ready(cx)).await
    }

    /// Polls for the client leaving while its request is handled elsewhere: `Ready(true)` once
    /// it closed its side or reset, `Ready(false)` when bytes arrived instead (a pipelined
    /// request: the client is there, and nothing more can be learned without reading them).
    /// Peeks, so nothing is consumed. A socket not yet in the event loop is watched only when
    /// `register` says so: joining it costs two `epoll_ctl`s, which a connection per request
    /// whose answer comes at once should not pay.
    pub fn poll_hangup(&mut self, cx: &mut Context<'_>, register: bool) -> Poll<bool> {
        if !register && !self.is_evented() {
            return Poll::Pending;
        }
        let Ok(s) = self.evented() else {
            return Poll::Ready(true);
        };
        loop {
            match s.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(true),
                Poll::Ready(Ok(())) => {}
            }
            let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
            // `WouldBlock` clears the readiness, so the next turn waits in epoll.
            match s.try_io(tokio::io::Interest::READABLE, || {
                socket2::SockRef::from(&*s).peek(&mut byte)
            }) {
                Ok(0) => return Poll::Ready(true),
                Ok(_) => return Poll::Ready(false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Poll::Ready(true),
            }
        }
    }

    /// Reads into `buf`'s spare capacity without waiting: the count, 0 at end of stream, or
    /// `WouldBlock` (then wait with [`Self::readable`], which registers a bare socket).
    pub fn try_read_buf(&mut self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        if let State::Bare(_) = self.0 {
            return match self.read_bare(buf.spare_capacity_mut()) {
                Some(Ok(n)) => {
                    // SAFETY: `read_bare` initialised the first `n` spare bytes.
                    unsafe { buf.set_len(buf.len() + n) };
                    Ok(n)
                }
                Some(Err(e)) => Err(e),
                // It would block: join the event loop now, so that the caller's wait works.
                None => self.evented().and(Err(io::ErrorKind::WouldBlock.into())),
            };
        }
        match &self.0 {
            State::Evented(s) => crate::proxy::relay::sock::try_read(s, buf),
            _ => Err(failed()),
        }
    }

    /// While the socket is bare, a read into `spare` directly, as [`Self::try_bare`].
    fn read_bare(&mut self, spare: &mut [std::mem::MaybeUninit<u8>]) -> Option<io::Result<usize>> {
        // SAFETY: `read` only writes initialised bytes into the slice and returns how many; the
        // callers mark exactly those initialised.
        let spare = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        self.try_bare(|s| s.read(spare))
    }

    /// While the socket is bare, `op` on it directly (again if interrupted): its result, or
    /// `None` when it would block or the socket is registered (the caller then polls tokio's).
    fn try_bare<T>(
        &mut self,
        mut op: impl FnMut(&mut std::net::TcpStream) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        let State::Bare(s) = &mut self.0 else {
            return None;
        };
        loop {
            match op(s) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                r => return Some(r),
            }
        }
    }
}

impl From<TcpStream> for ClientStream {
    fn from(s: TcpStream) -> ClientStream {
        ClientStream(State::Evented(s))
    }
}

fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket registration failed")
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let State::Bare(_) = self.0 {
            // SAFETY: `read_bare` only writes initialised bytes (exactly those are marked below).
            match self.read_bare(unsafe { buf.unfilled_mut() }) {
                Some(Ok(n)) => {
                    // SAFETY: `read_bare` initialised the first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => {}
            }
        }
        match self.evented() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(r) = self.try_bare(|s| s.write(data)) {
            return Poll::Ready(r);
        }
        match self.evented() {
            // Tried through the readiness bits first (`relay::sock`): a ready socket needs no
            // waker or budget.
            Ok(s) => match s.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Pin::new(s).poll_write(cx, data),
                r => Poll::Ready(r),
            },
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(r) = self.try_bare(|s| s.write_vectored(bufs)) {
            return Poll::Ready(r);
        }
        match self.evented() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Neither form buffers: a completed write is in the kernel.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            State::Bare(s) => Poll::Ready(s.shutdown(std::net::Shutdown::Write)),
            State::Evented(s) => Pin::new(s).poll_shutdown(cx),
            State::Failed => Poll::Ready(Err(failed())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair over loopback: the accepted side non-blocking and bare, the client side.
    async fn pair() -> (ClientStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (ClientStream::new(s), client)
    }

    #[tokio::test]
    async fn bytes_already_there_are_read_and_answered_without_registering() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"ping").await.unwrap();
        // Let the bytes cross loopback before the first read.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut b = [0u8; 16];
        let n = server.read(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"ping");
        server.write_all(b"pong").await.unwrap();
        assert!(
            !server.is_evented(),
            "nothing waited, so nothing was registered"
        );
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong");
    }

    #[tokio::test]
    async fn a_hangup_is_seen_without_consuming_and_pipelined_bytes_end_the_watch() {
        async fn hangup(io: &mut ClientStream, register: bool) -> Result<bool, ()> {
            let f = std::future::poll_fn(|cx| io.poll_hangup(cx, register));
            let wait = std::time::Duration::from_millis(100);
            tokio::time::timeout(wait, f).await.map_err(drop)
        }
        // Bare and not asked to register: nothing is watched, nothing registered.
        let (mut server, client) = pair().await;
        assert!(hangup(&mut server, false).await.is_err());
        assert!(!server.is_evented());
        // Asked: registered, and a quiet client is still there.
        assert!(hangup(&mut server, true).await.is_err());
        assert!(server.is_evented());
        drop(client);
        assert_eq!(hangup(&mut server, false).await, Ok(true), "end of stream");
        // Bytes instead: the client is there, and the bytes are left for the reader.
        let (mut server, mut client) = pair().await;
        client.write_all(b"GET").await.unwrap();
        assert_eq!(hangup(&mut server, true).await, Ok(false));
        let mut b = [0u8; 8];
        let n = server.read(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"GET");
        // A reset counts as leaving.
        let (mut server, client) = pair().await;
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(client);
        assert_eq!(hangup(&mut server, true).await, Ok(true), "reset");
    }

    #[tokio::test]
    async fn a_read_that_would_block_registers_and_waits_for_the_bytes() {
        let (mut server, mut client) = pair().await;
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            client.write_all(b"late").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        let mut b = [0u8; 16];
        let n = server.read(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"late");
        assert!(server.is_evented());
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffers_registers_and_completes() {
        let (mut server, mut client) = pair().await;
        let big = vec![7u8; 16 << 20];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        server.write_all(&big).await.unwrap();
        assert!(server.is_evented(), "16 MiB cannot go out without waiting");
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap(), big);
    }
}
