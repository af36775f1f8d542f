//! The access log: one line per request, JSON (default) or NCSA `combined`, to stdout or a file
//! that is reopened on SIGUSR1 for logrotate.
//!
//! Workers format the line and hand it to a writer thread over a bounded channel; they never
//! block on disk. If the writer falls behind, lines are dropped and counted
//! (`switchyard_access_log_dropped_total`) rather than slowing requests down.

use crate::config::{AccessFormat, LogConfig};
use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::SystemTime;

/// Lines buffered between the workers and the writer thread.
const QUEUE: usize = 64 * 1024;
/// How often the writer wakes to drain the queue. Polling instead of blocking on the channel
/// means a worker's send never has to wake a parked thread (a futex call and a context switch
/// per request, measured at ~15 µs per request on a shared core); a line waits at most this long.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// A duration as the log's milliseconds, to the microsecond: `0.121`, where the plain
/// `f64` division printed `0.12086000000000001`.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One request as logged.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Entry {
    pub time: String,
    pub request_id: String,
    /// The client's `IP:port`; behind a trusted proxy, the IP its `X-Forwarded-For` named.
    pub client: String,
    /// The trusted proxy's `IP:port`, when `client` is the one it named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_connect_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_first_byte_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client: Option<String>,
    /// What the route's auth upstream said: `allowed`, `denied` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<&'static str>,
    /// The `x-switchyard-error` reason when Switchyard made the response itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referer: Option<String>,
}

/// One connection of a `tcp` listener as logged (JSON only: `combined` has no form for it).
#[derive(Serialize, Debug, Clone, Default)]
pub struct TcpEntry {
    /// When the connection was accepted.
    pub time: String,
    /// Always `"tcp"`: tells these lines from requests'.
    pub kind: &'static str,
    /// The listener's `name`, else its `bind`.
    pub listener: String,
    pub client: String,
    /// The TLS server name the client asked for (`sni_routes`, or a terminating listener).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Backends tried (connect attempts).
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_connect_ms: Option<f64>,
    /// Bytes from the client (to the backend) and to the client.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    /// How the relay ended once connected: `closed`, `broken` or `idle_timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<&'static str>,
    /// Why the connection was never relayed: `no_route`, `no_backend`, `connect_failed`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

enum Msg {
    Line(String),
    Reopen,
}

pub struct AccessLog {
    tx: SyncSender<Msg>,
    format: AccessFormat,
}

impl AccessLog {
    /// Starts the writer; `None` when the access log is off.
    pub fn start(cfg: &LogConfig) -> std::io::Result<Option<AccessLog>> {
        let format = cfg.access.unwrap_or_default();
        if format == AccessFormat::Off {
            return Ok(None);
        }
        let path = cfg.access_file.clone();
        let open = move || -> std::io::Result<Box<dyn Write + Send>> {
            Ok(match &path {
                Some(p) => Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?,
                ),
                None => Box::new(std::io::stdout()),
            })
        };
        let first = open()?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("switchyard-access-log".into())
            .spawn(move || writer(rx, first, open))?;
        Ok(Some(AccessLog { tx, format }))
    }

    pub fn log(&self, e: &Entry) {
        let line = match self.format {
            AccessFormat::Json => serde_json::to_string(e).unwrap_or_default(),
            AccessFormat::Combined => combined(e),
            AccessFormat::Off => return,
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            crate::observe::metrics::access_log_dropped();
        }
    }

    /// Logs a `tcp` listener's connection, when the format is JSON.
    pub fn log_tcp(&self, e: &TcpEntry) {
        if self.format != AccessFormat::Json {
            return;
        }
        let line = serde_json::to_string(e).unwrap_or_default();
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            crate::observe::metrics::access_log_dropped();
        }
    }

    /// Reopens the file (after logrotate moved it away).
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }
}

fn writer(
    rx: Receiver<Msg>,
    first: Box<dyn Write + Send>,
    open: impl Fn() -> std::io::Result<Box<dyn Write + Send>>,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, first);
    loop {
        // Write everything queued, then flush once: a burst costs one write(2).
        loop {
            match rx.try_recv() {
                Ok(Msg::Line(l)) => {
                    let _ = out.write_all(l.as_bytes());
                    let _ = out.write_all(b"\n");
                }
                Ok(Msg::Reopen) => {
                    let _ = out.flush();
                    match open() {
                        Ok(f) => out = std::io::BufWriter::with_capacity(64 * 1024, f),
                        Err(e) => tracing::error!("cannot reopen access log: {e}"),
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// NCSA combined: `client - - [time] "METHOD path PROTO" status bytes "referer" "agent"`.
fn combined(e: &Entry) -> String {
    format!(
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
        // `IP:port`, or an IP alone (a client a trusted proxy named).
        e.client
            .parse::<std::net::SocketAddr>()
            .map_or_else(|_| e.client.clone(), |a| a.ip().to_string()),
        clf_time(&e.time),
        e.method,
        e.path,
        e.protocol,
        e.status,
        e.bytes_out,
        e.referer.as_deref().unwrap_or("-"),
        e.user_agent.as_deref().unwrap_or("-"),
    )
}

/// The common log format's `24/Nov/2025:16:00:00 +0000` from [`rfc3339`]'s
/// `2025-11-24T16:00:00.123Z`, which log parsers (goaccess, the `COMBINEDAPACHELOG` grok
/// pattern, fail2ban) expect in a combined line; any other text is kept as it is.
fn clf_time(t: &str) -> std::borrow::Cow<'_, str> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = t
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)));
    match (t.get(0..4), month, t.get(8..10), t.get(11..19)) {
        (Some(y), Some(m), Some(d), Some(hms)) if t.len() >= 20 => {
            format!("{d}/{m}/{y}:{hms} +0000").into()
        }
        _ => t.into(),
    }
}

/// RFC 3339 UTC time with milliseconds, without a date-time dependency.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time_and_combined_lines() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_123);
        assert_eq!(rfc3339(t), "2025-11-24T16:00:00.123Z");
        let e = Entry {
            client: "10.0.0.1:5555".into(),
            method: "GET".into(),
            path: "/x".into(),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_out: 12,
            time: "t".into(),
            ..Entry::default()
        };
        assert_eq!(
            combined(&e),
            "10.0.0.1 - - [t] \"GET /x HTTP/1.1\" 200 12 \"-\" \"-\""
        );
        let e = Entry {
            client: "[::1]:5555".into(),
            time: rfc3339(t),
            ..e
        };
        assert_eq!(
            combined(&e),
            "::1 - - [24/Nov/2025:16:00:00 +0000] \"GET /x HTTP/1.1\" 200 12 \"-\" \"-\""
        );
    }

    #[test]
    fn durations_are_logged_to_the_microsecond() {
        use std::time::Duration;
        let e = Entry {
            duration_ms: ms(Duration::from_nanos(1_306_499)),
            upstream_connect_ms: Some(ms(Duration::from_nanos(120_860))),
            ..Entry::default()
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""duration_ms":1.306,"#), "{json}");
        assert!(json.contains(r#""upstream_connect_ms":0.121"#), "{json}");
    }
}
