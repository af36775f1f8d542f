//! The relay's idle backend connections: plain TCP streams kept per worker (a thread-local, as
//! [`crate::proxy::pool`]), per upstream connector and backend, with the time after which they
//! are not reused (the upstream's idle timeout). A backend is known by its live state's id
//! ([`crate::upstream::backend::BackendState::id`]), which a reload keeps for the same upstream
//! and address: one hash of two words per lookup, where keys by address string took two maps,
//! a string hash and a compare (callgrind: ~4 % of a keep-alive request).
//!
//! A stream is taken most-recently-used first, and only if nothing is waiting to be read on it:
//! a close or stray bytes (a body beyond its length, sent late) the event loop has seen make it
//! unusable — checked from tokio's readiness, so a quiet connection costs no syscall. The sweep
//! every [`crate::proxy::pool::SWEEP_EVERY`] closes such connections while idle. A close that
//! crosses the request on the wire is handled by the request: a reused connection that fails
//! before any response byte is replaced and the request sent again when that is safe, as NGINX
//! does for its cached upstream connections.
//!
//! Read buffers are recycled the same way: a connection keeps its response buffer while idle,
//! and a client connection returns its request buffer to the worker's spares whenever it has
//! nothing buffered, so a keep-alive request allocates no buffer (and glibc does not trim and
//! re-fault the heap between requests).

use bytes::BytesMut;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;
use tokio::net::TcpStream;

/// Size of a read buffer, for client requests and backend responses alike.
pub const BUFFER: usize = 8 * 1024;
/// Spare buffers kept per worker: enough for every connection of a busy moment to take one
/// without allocating, bounded so an idle worker holds at most 1 MiB of them.
const MAX_SPARE: usize = 128;

/// Idle connections kept per backend per worker; beyond this a finished connection is closed.
const MAX_IDLE_PER_BACKEND: usize = 1024;

type Idle = Vec<(TcpStream, BytesMut, Instant)>;

thread_local! {
    static IDLE: RefCell<HashMap<(u64, u64), Idle, Quick>> = RefCell::new(HashMap::default());
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// The pools' hash: a multiply per 8 bytes. std's SipHash, there to resist keys chosen by an
/// attacker, took four hashes of ~120 instructions per relayed request (callgrind) for keys
/// that come from the configuration (connector ids and backend addresses).
#[derive(Default, Clone, Copy)]
struct Quick;

impl std::hash::BuildHasher for Quick {
    type Hasher = QuickHasher;
    fn build_hasher(&self) -> QuickHasher {
        QuickHasher(0)
    }
}

struct QuickHasher(u64);

impl QuickHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for QuickHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// An empty read buffer of at least [`BUFFER`] bytes.
pub fn buffer() -> BytesMut {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUFFER))
}

/// Gives a buffer back for reuse (its contents are dropped). Grown buffers are freed.
pub fn recycle(mut b: BytesMut) {
    b.clear();
    // With nothing in it, this moves the start back to the allocation's start: no allocation.
    b.reserve(BUFFER);
    if b.capacity() > 2 * BUFFER {
        return;
    }
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < MAX_SPARE {
            s.push(b);
        }
    });
}

/// An idle connection to the backend whose state has id `backend` that has not expired, with
/// its read buffer.
pub fn take(pool_key: u64, backend: u64, now: Instant) -> Option<(TcpStream, BytesMut)> {
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(&(pool_key, backend))?;
        while let Some((s, buf, expires)) = list.pop() {
            if now < expires && quiet(&s) {
                return Some((s, buf));
            }
        }
        None
    })
}

/// Keeps a connection whose exchange ended cleanly, until `expires`.
pub fn put(pool_key: u64, backend: u64, stream: TcpStream, mut buf: BytesMut, expires: Instant) {
    buf.clear();
    buf.reserve(BUFFER);
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.entry((pool_key, backend)).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push((stream, buf, expires));
        }
    });
}

/// Closes expired connections and those the backend closed (or wrote to unasked).
pub fn sweep() {
    let now = Instant::now();
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        for list in p.values_mut() {
            list.retain(|(s, _, expires)| now < *expires && quiet(s));
        }
        p.retain(|_, list| !list.is_empty());
    });
}

/// Nothing to read: neither a close nor stray bytes.
fn quiet(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
