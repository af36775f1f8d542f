//! Helpers shared by the integration tests: demo backends, a Switchyard started in-process from
//! TOML text, raw-socket requests, and polling with a deadline instead of sleeps.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchyard::server::{self, Options, Running};

/// A tokio runtime that lives for the whole test and serves the demo backends.
pub struct Backends {
    pub rt: tokio::runtime::Runtime,
    pub addrs: Vec<SocketAddr>,
}

/// Starts `n` demo backends named b0, b1, ...
pub fn backends(n: usize) -> Backends {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addrs = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..n {
            v.push(
                switchyard::demo::spawn_backend("127.0.0.1:0".parse().unwrap(), &format!("b{i}"))
                    .await
                    .unwrap(),
            );
        }
        v
    });
    Backends { rt, addrs }
}

impl Backends {
    pub fn list(&self) -> String {
        self.addrs
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
    /// Adds one more backend named `name`.
    pub fn add(&mut self, name: &str) -> SocketAddr {
        let a = self
            .rt
            .block_on(switchyard::demo::spawn_backend(
                "127.0.0.1:0".parse().unwrap(),
                name,
            ))
            .unwrap();
        self.addrs.push(a);
        a
    }
}

/// A running Switchyard with its config file in a temp dir.
pub struct Lb {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Lb {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("admin enabled"), path)
    }
    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.begin_shutdown();
            drop(r);
        }
    }
}

/// Starts Switchyard from TOML text (listener and admin on port 0 unless the text sets them).
pub fn start(toml_text: &str) -> Lb {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, toml_text).unwrap();
    let (cfg, _) = switchyard::config::load_file(&path)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    let running = server::start(
        cfg,
        Options {
            config_path: Some(path.clone()),
            admin: true,
            grace: Duration::from_secs(10),
        },
    )
    .expect("start");
    let addr = running.listeners[0];
    let admin = running.admin;
    Lb {
        running: Some(running),
        addr,
        admin,
        dir,
        path,
    }
}

/// The usual test config: one listener and admin on port 0, one upstream `web`.
pub fn config(upstream_body: &str) -> String {
    format!(
        "workers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[upstreams.web]\n{upstream_body}\n"
    )
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET and return (status, x-demo-backend header or "").
pub fn get_backend(c: &reqwest::blocking::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().unwrap();
    let b = r
        .headers()
        .get("x-demo-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), b)
}

/// Sends raw bytes and returns everything read until the server closes or 3s pass.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough for these tests once its head is complete and short.
                if out.windows(4).any(|w| w == b"\r\n\r\n")
                    && out.len() > 12
                    && !out.starts_with(b"HTTP/1.1 2")
                {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// Path of the built `switchyard` binary (cargo builds it for integration tests).
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// A demo backend on its own runtime, so the test can kill it (every socket closes at once) and
/// start it again on the same address.
pub struct Killable {
    pub name: String,
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Killable {
    pub fn start(name: &str) -> Killable {
        let mut k = Killable {
            name: name.into(),
            addr: "127.0.0.1:0".parse().unwrap(),
            rt: None,
        };
        k.restart();
        k
    }
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
    pub fn restart(&mut self) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = self.addr;
        let name = self.name.clone();
        self.addr = rt.block_on(async move {
            for _ in 0..100 {
                if let Ok(a) = switchyard::demo::spawn_backend(addr, &name).await {
                    return a;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("cannot bind {addr} again");
        });
        self.rt = Some(rt);
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}
