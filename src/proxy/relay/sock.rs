//! Reads and writes on registered sockets straight through tokio's readiness bits
//! (`TcpStream::try_io`), not through `AsyncRead`/`AsyncWrite`. Each `poll_read`/`poll_write`
//! also charges the task's cooperative budget and handles a waker even when the socket is
//! ready, ~100 instructions per call (callgrind: `Registration::poll_ready` and
//! `ScheduledIo::poll_readiness` were ~500 of a keep-alive request's ~10,600). A wait still goes
//! through `poll_read_ready` / `poll_write`, so the budget is charged once per wait.

use bytes::BytesMut;
use std::io;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Reads into `buf`'s spare capacity if the socket is readable: the count, 0 at end of stream
/// (or when `buf` has no spare capacity), or `WouldBlock` with nothing read. A short read
/// clears the readiness, as tokio's `poll_read` does, so the next wait goes to epoll instead of
/// trying a read that would block.
pub fn try_read(s: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let want = spare.len();
    let mut got = 0;
    let r = loop {
        let r = s.try_io(Interest::READABLE, || {
            let n = socket2::SockRef::from(s).recv(&mut *spare)?;
            got = n;
            if n > 0 && n < want {
                // Drained: `WouldBlock` is how `try_io` is told to clear the readiness. The
                // bytes are kept in `got`.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    if got > 0 {
        // SAFETY: `recv` initialised the first `got` spare bytes.
        unsafe { buf.set_len(buf.len() + got) };
        return Ok(got);
    }
    r
}

/// Reads at least one byte into `buf`'s spare capacity, waiting as needed: as `read_buf`.
pub async fn read(s: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        match try_read(s, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::future::poll_fn(|cx| s.poll_read_ready(cx)).await?
            }
            r => return r,
        }
    }
}

/// Writes some of `data`, waiting as needed: as `write`.
pub async fn write(s: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    match s.try_write(data) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.write(data).await,
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (a, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn reads_what_arrives_and_waits_when_drained() {
        let (mut a, b) = pair().await;
        let mut buf = BytesMut::with_capacity(64);
        assert_eq!(
            try_read(&b, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        write(&mut a, b"hello").await.unwrap();
        assert_eq!(read(&b, &mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..], b"hello");
        // The short read cleared the readiness: the next try makes no syscall and would block.
        assert_eq!(
            try_read(&b, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let later = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            a.write_all(b" world").await.unwrap();
            a
        });
        assert_eq!(read(&b, &mut buf).await.unwrap(), 6);
        assert_eq!(&buf[..], b"hello world");
        drop(later.await.unwrap());
        assert_eq!(read(&b, &mut buf).await.unwrap(), 0, "end of stream");
    }

    #[tokio::test]
    async fn a_read_that_fills_the_buffer_leaves_the_rest_readable() {
        let (mut a, b) = pair().await;
        a.write_all(&[1u8; 100]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut buf = BytesMut::with_capacity(64);
        let cap = buf.capacity();
        assert_eq!(read(&b, &mut buf).await.unwrap(), cap);
        buf.reserve(200);
        let mut rest = vec![0u8; 0];
        while buf.len() < 100 {
            read(&b, &mut buf).await.unwrap();
        }
        assert_eq!(&buf[..], &[1u8; 100][..]);
        drop(a);
        let mut b = b;
        assert_eq!(b.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
