//! Protocol upgrades (WebSocket) through the proxy. An HTTP/1.1 Upgrade handshake is forwarded
//! like any request, keeping the `Connection: upgrade` and `Upgrade` headers that are otherwise
//! hop-by-hop; an HTTP/2 extended CONNECT (RFC 8441, `:protocol = websocket`) is bridged to the
//! same HTTP/1.1 Upgrade at the backend, and the backend's `101` becomes the `200` an HTTP/2
//! client expects.
//!
//! Once both sides have switched, the two connections are taken over from hyper and bytes are
//! copied both ways until either side closes or nothing moves for the upstream's idle timeout.
//! The request stays counted as active on its backend while the tunnel is open, so
//! least_connections sees long-lived WebSockets; at shutdown open tunnels get the grace period.

use super::body::RespBody;
use crate::listener::Tunnel;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// A client's request to switch protocols.
#[derive(Clone, Debug)]
pub struct Upgrade {
    proto: HeaderValue,
    /// Asked for with HTTP/2 extended CONNECT rather than HTTP/1.1 Upgrade.
    h2: bool,
}

/// The client's side of an upgrade, to be completed once the backend agreed.
pub struct ClientUpgrade {
    on: OnUpgrade,
    h2: bool,
}

/// The protocol a client asks to switch to, if it does so properly.
pub fn requested<B>(req: &Request<B>) -> Option<Upgrade> {
    let h = req.headers();
    if req.version() == http::Version::HTTP_2 && req.method() == Method::CONNECT {
        let proto = req.extensions().get::<hyper::ext::Protocol>()?;
        return Some(Upgrade {
            proto: HeaderValue::from_str(proto.as_str()).ok()?,
            h2: true,
        });
    }
    let conn_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if req.version() != http::Version::HTTP_11 || !conn_upgrade {
        return None;
    }
    let proto = h.get(header::UPGRADE)?;
    // An upgrade to h2c is not passed on (NGINX drops it too; RFC 9113 retired it): the tunnel
    // would carry HTTP/2 straight to the backend, every request in it unseen by routing, ACLs
    // and rate limits ("h2c smuggling"). The request goes as a plain one, Upgrade removed.
    if tokens(proto).any(|t| t.eq_ignore_ascii_case(b"h2c")) {
        return None;
    }
    Some(Upgrade {
        proto: proto.clone(),
        h2: false,
    })
}

fn tokens(v: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    v.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

impl Upgrade {
    /// Whether a backend's `101` switched to a protocol this client asked for (RFC 9110 §7.8);
    /// one that switched to anything else (`h2c` for a `websocket` request) is refused, its
    /// tunnel never opened.
    pub fn agreed_by(&self, resp: &http::HeaderMap) -> bool {
        let asked: Vec<&[u8]> = tokens(&self.proto).collect();
        let mut got = resp.get_all(header::UPGRADE).iter().flat_map(tokens);
        got.next().is_some_and(|g| {
            // `websocket` and `WebSocket/13` name the same protocol as `websocket`.
            let name = |t: &[u8]| {
                t.split(|b| *b == b'/')
                    .next()
                    .unwrap_or(t)
                    .to_ascii_lowercase()
            };
            asked.iter().any(|a| name(a) == name(g))
        }) && got.next().is_none()
    }
}

impl Upgrade {
    /// Takes the client connection's upgrade handle out of the request.
    pub fn on<B>(self, req: &mut Request<B>) -> ClientUpgrade {
        ClientUpgrade {
            on: hyper::upgrade::on(req),
            h2: self.h2,
        }
    }
}

/// Puts back the handshake headers the hop-by-hop rules removed; an extended CONNECT becomes the
/// HTTP/1.1 `GET` + `Upgrade` handshake, with the `Sec-WebSocket-Key` that HTTP/2 does without.
pub fn restore_headers(parts: &mut http::request::Parts, u: &Upgrade) {
    let h = &mut parts.headers;
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, u.proto.clone());
    if u.h2 {
        parts.method = Method::GET;
        if u.proto.as_bytes().eq_ignore_ascii_case(b"websocket") {
            let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
            if let Ok(v) = HeaderValue::try_from(key) {
                h.insert(header::SEC_WEBSOCKET_KEY, v);
            }
            h.entry(header::SEC_WEBSOCKET_VERSION)
                .or_insert(HeaderValue::from_static("13"));
        }
    }
}

/// An upgrade the backend agreed to, waiting for the response to be observed (access log) before
/// its tunnel starts.
pub struct Agreed {
    client: ClientUpgrade,
    idle: Duration,
}

pub use super::tunnel::TunnelEnd;

/// Turns the backend's `101` into the answer the client expects (`200` for an HTTP/2 extended
/// CONNECT), before the response's hop-by-hop headers are dealt with; [`splice`] then starts the
/// tunnel.
pub fn agree(client: ClientUpgrade, resp: &mut Response<RespBody>, idle: Duration) -> Agreed {
    if client.h2 {
        // RFC 8441 §5: success is a 2xx; the accept key only means something in HTTP/1.1.
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
    }
    Agreed { client, idle }
}

/// Connects the two upgraded connections once the client has received the answer to its
/// handshake. The response body's guard (the backend's in-flight count, and the access-log
/// observer when logging is on) is kept until the tunnel ends, so the request stays active on
/// its backend and is logged with the tunnel's bytes and duration.
pub fn splice(agreed: Agreed, resp: &mut Response<RespBody>) {
    let guard = resp.body_mut().guard_slot().ok().and_then(Option::take);
    let backend = hyper::upgrade::on(&mut *resp);
    if agreed.client.h2 {
        *resp.body_mut() = RespBody::empty();
    }
    let Agreed { client, idle } = agreed;
    tokio::spawn(async move {
        let (Ok(c), Ok(b)) = tokio::join!(client.on, backend) else {
            if let Some(g) = guard {
                g.done(false);
            }
            return;
        };
        let _open = Tunnel::open();
        let (end, up, down) = super::tunnel::pump(TokioIo::new(c), TokioIo::new(b), idle).await;
        if let Some(mut g) = guard {
            g.tunnelled(up, down, end);
            // Never `true`: an upgraded backend connection cannot go back to the pool.
            g.done(false);
        }
    });
}
