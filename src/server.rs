//! Starting and stopping a whole Switchyard in-process: bind every socket first (so a port in
//! use fails start-up with exit 1), then start the workers and the control plane. Tests use
//! [`start`] to run a real server on `127.0.0.1:0`, mini-redis style.

use crate::config::{size::parse_size, Config};
use crate::listener;
use crate::state::Shared;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The OS error is in the message and deliberately not a `source` (a field named so would
    /// be one): a chain printer such as anyhow's `{:#}` would print it a second time.
    #[error("cannot bind {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error("cannot start the control runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// How long in-flight requests get to finish after SIGTERM; as HAProxy's `hard-stop-after`
/// would be set by an operator: long enough for ordinary requests, short enough for deploys.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// A running server.
pub struct Running {
    pub shared: Arc<Shared>,
    /// Concrete addresses of the `[[listeners]]`, in configuration order.
    pub listeners: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    control: Option<tokio::runtime::Runtime>,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub config_path: Option<PathBuf>,
    /// Serve the admin API and UI (on `admin.listen`, default 127.0.0.1:5000).
    pub admin: bool,
    pub grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config_path: None,
            admin: true,
            grace: DEFAULT_GRACE,
        }
    }
}

pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Binds and starts everything described by `cfg` (already validated).
pub fn start(cfg: Config, opts: Options) -> Result<Running, StartError> {
    let workers = cfg.workers.unwrap_or_else(default_workers).max(1);
    let cpus = default_workers();
    if workers > cpus {
        // Not an error (a test or a benchmark may want it), but rarely what an operator means:
        // more workers than CPUs take turns on them, each waking for fewer events.
        tracing::warn!(
            "workers = {workers}, but this process may run on {cpus} CPU(s): the workers will \
             time-share them, which costs CPU per request and tail latency (BENCHMARKS.md, run 24 (e))"
        );
    }
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let addr: SocketAddr = l
            .bind
            .parse()
            .map_err(|_| StartError::Invalid(format!("bad bind address {}", l.bind)))?;
        let max_body = l
            .max_request_body
            .as_deref()
            .and_then(|s| parse_size(s).ok())
            .unwrap_or(u64::MAX);
        bound.push(
            listener::bind(
                addr,
                workers,
                max_body,
                l.defer_accept
                    .unwrap_or(l.mode != crate::config::ListenerMode::Tcp),
            )
            .map_err(|e| StartError::Bind {
                addr: l.bind.clone(),
                error: e,
            })?,
        );
    }
    // TLS material was checked by validation; this fails only if a file changed since.
    let tls_listeners =
        listener::set_modes(&cfg.listeners, &mut bound).map_err(StartError::Invalid)?;
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("switchyard-control")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let admin_listener = if opts.admin {
        let addr = cfg
            .admin
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:5000".into());
        let l = std::net::TcpListener::bind(&addr).map_err(|e| StartError::Bind {
            addr: addr.clone(),
            error: e,
        })?;
        l.set_nonblocking(true)
            .map_err(|e| StartError::Bind { addr, error: e })?;
        Some(l)
    } else {
        None
    };
    let access_log = crate::observe::access_log::AccessLog::start(&cfg.log)
        .map_err(|e| StartError::Invalid(format!("cannot open access log: {e}")))?;
    let shared = Shared::with_access_log(cfg, opts.config_path.clone(), access_log);
    let (stop, stop_rx) = watch::channel(false);
    let listeners: Vec<SocketAddr> = bound.iter().map(|b| b.addr).collect();
    let _ = shared.bound.set(listeners.clone());

    let mut per_worker: Vec<Vec<listener::WorkerSocket>> =
        (0..workers).map(|_| Vec::new()).collect();
    for b in bound {
        for (w, s) in b.into_sockets().into_iter().enumerate() {
            per_worker[w].push(s);
        }
    }
    let mut handles = Vec::new();
    for (i, socks) in per_worker.into_iter().enumerate() {
        let (shared, rx, grace) = (shared.clone(), stop_rx.clone(), opts.grace);
        let h = std::thread::Builder::new()
            .name(format!("switchyard-w{i}"))
            .spawn(move || listener::run_worker(i, socks, shared, rx, grace))
            .map_err(StartError::Runtime)?;
        handles.push(h);
    }
    let admin = match admin_listener {
        Some(l) => {
            let addr = l.local_addr().ok();
            let (shared, rx) = (shared.clone(), stop_rx.clone());
            control.spawn(async move {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => crate::admin::serve(l, shared, rx).await,
                    Err(e) => tracing::error!("admin listener: {e}"),
                }
            });
            addr
        }
        None => None,
    };
    {
        let _enter = control.enter();
        if let Some(exporter) = shared
            .current()
            .config
            .log
            .otlp_endpoint
            .as_deref()
            .and_then(crate::observe::otlp::Exporter::start)
        {
            let _ = shared.otlp.set(Arc::new(exporter));
        }
        crate::upstream::health::spawn_checker(shared.clone(), stop_rx.clone());
        crate::admin::watch_config_file(shared.clone());
        listener::tls::spawn_reloader(tls_listeners, shared.clone(), stop_rx.clone());
        // Discovery sources and cluster mode (etcd): both change configuration only through
        // the one door; the cluster task also registers this instance with its admin address.
        let discovered = crate::upstream::discovery::spawn(shared.clone(), stop_rx.clone());
        let _ = shared.discovered.set(discovered.clone());
        crate::cluster::spawn(shared.clone(), discovered, admin, stop_rx.clone());
    }
    Ok(Running {
        shared,
        listeners,
        admin,
        stop,
        workers: handles,
        control: Some(control),
    })
}

impl Running {
    /// The control-plane runtime, for tasks tied to this server (signals, file watching).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.control
            .as_ref()
            .map(|c| c.handle().clone())
            .unwrap_or_else(tokio::runtime::Handle::current)
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, and returns.
    pub fn shutdown(mut self) {
        self.begin_shutdown();
        self.join();
    }

    pub fn begin_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the workers to finish (after [`Running::begin_shutdown`]).
    pub fn join(&mut self) {
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        if let Some(c) = self.control.take() {
            c.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(c) = self.control.take() {
            c.shutdown_background();
        }
    }
}
