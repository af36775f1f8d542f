//! The `switchyard` command line: parse arguments, call the library, map failures to exit codes
//! (0 ok, 1 invalid configuration or start-up failure, 2 bad usage — clap's own).

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchyard::config::{self, Config};
use switchyard::server::{self, Options};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A fast, live-configurable load balancer for microservices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configuration in FILE. SIGHUP reloads it; SIGTERM/SIGINT drain and exit.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate FILE and print every problem as FILE:LINE:COL: field.path: message.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Three demo backends, a balancer and the web UI, nothing to install.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:5000")]
        admin: SocketAddr,
    },
    /// A test and demo origin server.
    DemoBackend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "backend")]
        name: String,
        /// PEM certificate chain: serve HTTPS (ALPN h2 and http/1.1) instead of clear HTTP.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<String>,
        /// PEM private key for --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<String>,
    },
}

/// The allocator: mimalloc's per-thread free lists serve the relay's per-request and
/// per-connection blocks (a 2.4 KiB exchange, a 3.3 KiB connection task, 128-byte-aligned
/// tokio cells) that glibc takes from its large bins and `memalign`: 6 % fewer user-space
/// instructions per keep-alive request, 10 % fewer per connection-per-request and 8 % fewer per
/// h2c request (`bench/instr.sh`, BENCHMARKS.md); in CPU time a few per cent, inside this
/// host's noise. `switchyard::alloc` says why it is not the `mimalloc` crate's wrapper.
#[global_allocator]
static GLOBAL: switchyard::alloc::Mimalloc = switchyard::alloc::Mimalloc;

/// Transparent huge pages off for this process: with the kernel's THP set to `always`, the
/// first touch of mimalloc's 2 MiB-aligned arenas faults in whole huge pages, which took the
/// demo's idle RSS from 13 to 25 MiB for no measurable speed (a proxy's heap is small; its
/// working set is the connections').
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; no pointers are passed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// glibc's malloc still serves the C code (aws-lc's TLS state). It gives memory back to the
/// kernel whenever the free space at the top of a heap passes 128 KiB (`M_TRIM_THRESHOLD`), and
/// a worker's heap top moved with every connection: under a connection per request, 1.5 % of
/// connections ended in an `madvise` and page faults to map the memory again (strace,
/// BENCHMARKS.md, measured when glibc served every allocation). Up to 8 MiB of free space is
/// kept per heap instead; memory beyond that is still returned.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

fn main() -> ExitCode {
    no_huge_pages();
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run { config } => run(&config),
        Command::Demo { listen, admin } => demo(listen, admin),
        Command::DemoBackend {
            listen,
            name,
            tls_cert,
            tls_key,
        } => demo_backend(listen, name, tls_cert.zip(tls_key)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| cfg.log.level.clone())
        .unwrap_or_else(|| "info".into());
    // Colour only for a person at a terminal: a log file or journald gets plain text.
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

fn check(path: &Path) -> ExitCode {
    match config::load_file(path) {
        Ok((cfg, _)) => {
            let backends: usize = cfg.upstreams.values().map(|u| u.backends.len()).sum();
            println!(
                "{}: ok ({} listener(s), {} route(s), {} upstream(s), {} backend(s))",
                path.display(),
                cfg.listeners.len(),
                cfg.routes.len(),
                cfg.upstreams.len(),
                backends
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("{p}");
            }
            eprintln!("{}: {} problem(s)", path.display(), e.problems.len());
            ExitCode::from(1)
        }
    }
}

fn run(path: &Path) -> anyhow::Result<()> {
    let (cfg, _) =
        config::load_file(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    init_logging(&cfg);
    // Listeners are bound in the configuration's order.
    let schemes: Vec<&str> = cfg
        .listeners
        .iter()
        .map(|l| {
            let tls = l.tls.as_ref().is_some_and(|t| !t.certificates.is_empty());
            match (l.mode, tls) {
                (config::ListenerMode::Tcp, true) => "tcp+tls",
                (config::ListenerMode::Tcp, false) => "tcp",
                (_, true) => "https",
                _ => "http",
            }
        })
        .collect();
    let running = server::start(
        cfg,
        Options {
            config_path: Some(path.to_path_buf()),
            ..Options::default()
        },
    )?;
    for (i, a) in running.listeners.iter().enumerate() {
        let scheme = schemes.get(i).copied().unwrap_or("http");
        tracing::info!("listening on {scheme}://{a}");
    }
    if let Some(a) = running.admin {
        tracing::info!("admin API and web UI on http://{a}");
    }
    serve_until_signal(running, || {})
}

/// Blocks on signals: SIGHUP reloads the file, SIGTERM/SIGINT drain and return.
/// Serves until SIGTERM or SIGINT, then shuts down gracefully. `ready` runs once the signal
/// handlers are in place: a signal from then on is handled, never the default kill.
fn serve_until_signal(mut running: server::Running, ready: impl FnOnce()) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handle = running.handle();
    let shared = running.shared.clone();
    handle.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        ready();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => switchyard::admin::reload_from_file(&shared, "sighup"),
                _ = usr1.recv() => {
                    if let Some(log) = &shared.access_log {
                        log.reopen();
                    }
                }
            }
        }
        tracing::info!("shutting down: no new connections, letting in-flight requests finish");
        anyhow::Ok(())
    })?;
    running.begin_shutdown();
    running.join();
    Ok(())
}

fn demo(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let backends: Vec<SocketAddr> = rt.block_on(async {
        let mut v = Vec::new();
        for name in ["demo-1", "demo-2", "demo-3"] {
            v.push(switchyard::demo::spawn_backend("127.0.0.1:0".parse()?, name).await?);
        }
        anyhow::Ok(v)
    })?;
    let text = switchyard::demo::demo_config(&listen.to_string(), &admin.to_string(), &backends);
    let path = std::env::temp_dir().join(format!("switchyard-demo-{}.toml", std::process::id()));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    // The file is the demo's alone: removed when the demo ends (signal or start-up failure),
    // so runs do not pile up files in /tmp.
    let _remove = RemoveOnDrop(path.clone());
    let cfg = config::parse_config(&text, config::Format::Toml, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    init_logging(&cfg);
    let running = server::start(
        cfg,
        Options {
            config_path: Some(path.clone()),
            ..Options::default()
        },
    )?;
    println!("Switchyard demo");
    println!(
        "  load balancer:  http://{}/   (try: curl -s http://{}/ | head -c 200)",
        running.listeners[0], running.listeners[0]
    );
    println!("  web UI + API:   http://{admin}/   (health: http://{admin}/health)");
    println!("  metrics:        http://{admin}/metrics");
    println!(
        "  backends:       {}",
        backends
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  config file:    {}", path.display());
    // Said once Ctrl-C is handled, so the file below is removed from then on.
    let r = serve_until_signal(running, || println!("Ctrl-C to stop."));
    drop(rt);
    r
}

/// Removes a file when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn demo_backend(
    listen: SocketAddr,
    name: String,
    tls: Option<(String, String)>,
) -> anyhow::Result<()> {
    let tls = match tls {
        Some((cert, key)) => {
            Some(switchyard::demo::tls_config(&cert, &key).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind {listen}"))?;
        eprintln!("demo-backend {name} on {scheme}://{}", l.local_addr()?);
        tokio::select! {
            _ = switchyard::demo::serve_backend_tls(l, name, tls) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })
}
