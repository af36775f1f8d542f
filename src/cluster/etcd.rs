//! Talking to etcd: one way to connect (timeouts, HTTP/2 keep-alive) shared by the cluster sync
//! and etcd discovery, and a deadline around every unary call.
//!
//! No request timeout is set on the channel itself because it would also cut long-lived watch
//! streams; unary calls get [`timed`] instead. HTTP/2 keep-alive pings detect an etcd that
//! vanished without closing the connection (a dead host, a partition) within a few seconds, so
//! the watch fails and the reconnect loop takes over.

use etcd_client::{Client, ConnectOptions};
use std::future::Future;
use std::time::Duration;

/// Deadline of one unary etcd call: a healthy etcd answers in milliseconds; a slow one must not
/// stall the control plane.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the first reachable endpoint of `endpoints` (`"http://host:port"` or
/// `"host:port"`).
pub async fn connect(endpoints: &[String]) -> Result<Client, String> {
    if endpoints.is_empty() {
        return Err("no etcd endpoints configured ([cluster] etcd)".into());
    }
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    timed(Client::connect(endpoints, Some(opts))).await
}

/// Runs one etcd call with [`CALL_TIMEOUT`], turning every failure into a message.
pub async fn timed<T>(
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "etcd did not answer within {}s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}
