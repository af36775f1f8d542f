//! The demo backend's `/ws`: a WebSocket echo for tests and demos. Text and binary messages come
//! back as they went; pings are answered by tungstenite; a close is echoed with the client's
//! code; the text `close:CODE` makes the server close with CODE, to test close codes that start
//! on the backend side.

use super::{status, DemoBody};
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{frame::CloseFrame, Message, Role};
use tokio_tungstenite::WebSocketStream;

/// Answers the HTTP/1.1 handshake with 101 and echoes on the upgraded connection.
pub fn accept(mut req: Request<Incoming>) -> Response<DemoBody> {
    let h = req.headers();
    let is_ws = h
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_ws) else {
        return status(StatusCode::BAD_REQUEST, "expected a WebSocket handshake\n");
    };
    let Ok(accept) = HeaderValue::try_from(derive_accept_key(key.as_bytes())) else {
        return status(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n");
    };
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        echo(ws).await;
    });
    let mut r = status(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    r
}

async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) => match t.strip_prefix("close:").map(str::parse::<u16>) {
                Some(Ok(code)) => {
                    let frame = CloseFrame {
                        code: code.into(),
                        reason: "requested".into(),
                    };
                    let _ = ws.close(Some(frame)).await;
                    continue;
                }
                _ => Message::Text(t),
            },
            Message::Binary(b) => Message::Binary(b),
            // Pings are answered and closes echoed by tungstenite itself while reading.
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}
