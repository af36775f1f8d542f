//! HTTP/1.1 Upgrade (WebSocket): the handshake is forwarded like any request, keeping the
//! `Connection: upgrade` and `Upgrade` headers that are otherwise hop-by-hop; on `101` both
//! connections are taken over from hyper and bytes are copied both ways until either side closes
//! or nothing moves for the idle timeout. The request stays counted as active on its backend
//! while the tunnel is open, so least_connections sees long-lived WebSockets.

use super::body::RespBody;
use http::{header, HeaderMap, HeaderValue, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The protocol a client asks to upgrade to, if it does so properly.
pub fn requested(headers: &HeaderMap, version: http::Version) -> Option<HeaderValue> {
    let conn_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if version != http::Version::HTTP_11 || !conn_upgrade {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

pub fn restore_headers(h: &mut HeaderMap, proto: &HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, proto.clone());
}

/// Connects the two upgraded connections once the client has received the 101.
pub fn splice(client: OnUpgrade, resp: &mut Response<RespBody>, idle: Duration) {
    let guard = match resp.body_mut() {
        RespBody::Stream { guard, .. } => guard.take(),
        RespBody::Full(_) => None,
    };
    let backend = hyper::upgrade::on(&mut *resp);
    tokio::spawn(async move {
        let (Ok(c), Ok(b)) = tokio::join!(client, backend) else {
            return;
        };
        let _ = pump(TokioIo::new(c), TokioIo::new(b), idle).await;
        if let Some(g) = guard {
            g.done(false);
        }
    });
}

/// Copies both ways; ends when either side closes, on error, or after `idle` without traffic.
async fn pump<A, B>(mut a: A, mut b: B, idle: Duration) -> std::io::Result<()>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ab, mut ba) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        tokio::select! {
            r = a.read(&mut ab), if a_open => match r? {
                0 => { a_open = false; b.shutdown().await?; }
                n => b.write_all(&ab[..n]).await?,
            },
            r = b.read(&mut ba), if b_open => match r? {
                0 => { b_open = false; a.shutdown().await?; }
                n => a.write_all(&ba[..n]).await?,
            },
            _ = tokio::time::sleep(idle) => break,
        }
    }
    Ok(())
}
