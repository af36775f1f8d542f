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
    let (mut cfg, _) = switchyard::config::load_file(&path)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    // Never the default 127.0.0.1:5000: tests run in parallel, and a demo may be running.
    cfg.admin.listen.get_or_insert_with(|| "127.0.0.1:0".into());
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

/// An h2c (prior knowledge) client, as `curl --http2-prior-knowledge` or h2load would be.
pub fn h2c_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is this host's), to be
/// a client other than 127.0.0.1.
pub fn client_from(ip: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(5))
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

/// Sends `bytes` and reads everything until the server closes (or 3 s pass).
pub fn raw_all(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
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

/// A free TCP port on 127.0.0.1 (bound and released: good enough for a test's own servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd (Debian's `etcd-server`) on free loopback ports with its own data directory,
/// killed on drop. Missing `etcd` fails the test: scripts/test.sh installs it.
pub struct Etcd {
    child: Option<std::process::Child>,
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    pub rt: tokio::runtime::Runtime,
}

impl Etcd {
    pub fn start() -> Etcd {
        if std::process::Command::new("etcd")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!(
                "`etcd` is not installed: apt-get install -y etcd-server (scripts/test.sh does)"
            );
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
            rt,
        };
        e.restart();
        e
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd on the same ports and data (after [`Etcd::stop`]) and waits until it serves.
    pub fn restart(&mut self) {
        let (c, p) = (self.client_port, self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = std::process::Command::new("etcd")
            .args(["--name", "default", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{c}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{c}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{p}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{p}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{p}"),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let ok = eventually(Duration::from_secs(20), || self.get("/ready").is_ok());
        assert!(ok, "etcd did not become ready on port {c}");
    }

    fn client(&self) -> Result<etcd_client::Client, String> {
        let ep = self.endpoint();
        self.rt.block_on(async move {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(3));
            etcd_client::Client::connect([ep], Some(opts))
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// The value at `key` (`Ok(None)` when absent).
    pub fn get(&self, key: &str) -> Result<Option<String>, String> {
        let mut c = self.client()?;
        self.rt.block_on(async move {
            let r = c.get(key, None).await.map_err(|e| e.to_string())?;
            Ok(r.kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
        })
    }

    pub fn put(&self, key: &str, value: &str) {
        let mut c = self.client().unwrap();
        self.rt.block_on(c.put(key, value, None)).unwrap();
    }

    pub fn delete(&self, key: &str) {
        let mut c = self.client().unwrap();
        self.rt.block_on(c.delete(key, None)).unwrap();
    }

    /// Puts `key` attached to a new lease of `ttl_s` seconds; returns the lease ID.
    pub fn put_with_lease(&self, key: &str, value: &str, ttl_s: i64) -> i64 {
        let mut c = self.client().unwrap();
        self.rt.block_on(async move {
            let lease = c.lease_grant(ttl_s, None).await.unwrap().id();
            let opts = etcd_client::PutOptions::new().with_lease(lease);
            c.put(key, value, Some(opts)).await.unwrap();
            lease
        })
    }

    /// Revokes `lease`, deleting the keys still attached to it (as its expiry would, at once).
    pub fn revoke(&self, lease: i64) {
        let mut c = self.client().unwrap();
        self.rt.block_on(c.lease_revoke(lease)).unwrap();
    }

    /// Keeps `lease` alive (every 500ms) until the returned handle is aborted or dropped with
    /// the runtime.
    pub fn keep_alive(&self, lease: i64) -> tokio::task::JoinHandle<()> {
        let mut c = self.client().unwrap();
        self.rt.spawn(async move {
            let Ok((mut keeper, mut stream)) = c.lease_keep_alive(lease).await else {
                return;
            };
            loop {
                if keeper.keep_alive().await.is_err() || stream.message().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GET `url` and parse JSON (`Value::Null` on any failure, so it can be polled).
pub fn get_json(c: &reqwest::blocking::Client, url: &str) -> serde_json::Value {
    c.get(url)
        .send()
        .and_then(|r| r.json())
        .unwrap_or(serde_json::Value::Null)
}

/// `GET /api/v1/upstreams` of a running Switchyard.
pub fn upstreams(lb: &Lb) -> serde_json::Value {
    client()
        .get(lb.admin_url("/api/v1/upstreams"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// The live state of backend `i` of the first upstream.
pub fn first_backend(lb: &Lb, i: usize) -> serde_json::Value {
    upstreams(lb)["upstreams"][0]["backends"][i].clone()
}

/// Replaces the whole configuration through the admin API (as an operator's live change).
/// `PUT /api/v1/config` with a TOML body.
fn put_toml(lb: &Lb, toml_text: &str) -> reqwest::blocking::Response {
    client()
        .put(lb.admin_url("/api/v1/config"))
        .header("content-type", "application/toml")
        .body(toml_text.to_string())
        .send()
        .unwrap()
}

pub fn put_config(lb: &Lb, toml_text: &str) {
    let r = put_toml(lb, toml_text);
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
}

/// PUTs a configuration that must be refused: asserts 422, and returns the problems' field
/// paths in the order given.
pub fn refused_paths(lb: &Lb, toml_text: &str) -> Vec<String> {
    let r = put_toml(lb, toml_text);
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().unwrap();
    v["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems: {v}"))
        .iter()
        .map(|p| p["path"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `text` with a JSON access log written to `log`.
pub fn json_log(text: String, log: &std::path::Path) -> String {
    format!(
        "{text}\n[log]\naccess = \"json\"\naccess_file = {:?}\n",
        log.display().to_string()
    )
}

/// The JSON access-log lines in `path` once there are at least `n` (waiting up to 5 s).
pub fn access_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            lines = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            lines.len() >= n
        }),
        "{} access-log lines, expected {n}",
        lines.len()
    );
    lines
}
