//! Per-worker, per-backend pool of keep-alive HTTP/1.1 connections to backends.
//!
//! Each worker thread owns its pool (a thread-local), so checkout and checkin never contend with
//! another worker — no lock shared between requests on the hot path. A connection goes back to
//! the pool when its response body has been read to the end; a connection idle longer than the
//! upstream's idle timeout, or closed by the backend, is dropped at the next checkout.

use super::body::ReqBody;
use crate::error::ProxyError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per backend per worker; beyond this a finished connection is closed.
const MAX_IDLE_PER_BACKEND: usize = 1024;

struct Idle {
    tx: SendRequest<ReqBody>,
    since: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<String, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// A connection ready to carry one request.
pub struct Conn {
    pub tx: SendRequest<ReqBody>,
    /// Came from the pool (the backend may have closed it meanwhile).
    pub reused: bool,
}

/// Takes an idle connection to `address` or opens a new one within `connect_timeout`.
pub async fn checkout(
    address: &str,
    socket: Option<SocketAddr>,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<Conn, ProxyError> {
    if let Some(tx) = take_idle(address, idle_timeout) {
        return Ok(Conn { tx, reused: true });
    }
    connect(address, socket, connect_timeout)
        .await
        .map(|tx| Conn { tx, reused: false })
}

fn take_idle(address: &str, idle_timeout: Duration) -> Option<SendRequest<ReqBody>> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(address)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < idle_timeout && idle.tx.is_ready() {
                return Some(idle.tx);
            }
        }
        None
    })
}

/// Returns a connection whose exchange finished cleanly.
pub fn checkin(address: &str, tx: SendRequest<ReqBody>) {
    if !tx.is_ready() {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = match p.get_mut(address) {
            Some(l) => l,
            None => p.entry(address.to_string()).or_default(),
        };
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    });
}

/// Opens a fresh connection (not from the pool).
pub async fn connect(
    address: &str,
    socket: Option<SocketAddr>,
    connect_timeout: Duration,
) -> Result<SendRequest<ReqBody>, ProxyError> {
    let stream = tokio::time::timeout(connect_timeout, async {
        match socket {
            Some(sa) => TcpStream::connect(sa).await,
            None => TcpStream::connect(address).await,
        }
    })
    .await
    .map_err(|_| ProxyError::ConnectTimeout)?
    .map_err(|_| ProxyError::ConnectFailed)?;
    let _ = stream.set_nodelay(true);
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ProxyError::ConnectFailed)?;
    tokio::spawn(async move {
        // Errors here are the backend closing; the request side already saw them.
        let _ = conn.with_upgrades().await;
    });
    Ok(tx)
}
