//! The command line as an operator uses it: `check`, `--version`, `run` with SIGTERM, the
//! memory a 100 MiB body costs while streaming through, and a process out of file descriptors.

use crate::support::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn check_reports_every_problem_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nbind = \"127.0.0.1:8080\"\n\n[upstreams.web]\nbackends = [\n  { address = \"127.0.0.1:9001\" },\n  { address = \"nope\" },\n]\nalgorithm = \"round_robin\"\ntimeouts = { conect = \"2s\" }\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        err.contains(&format!("{file}:7:5: upstreams.web.backends[1].address")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:10:14: upstreams.web.timeouts.conect: unknown key"
        )),
        "{err}"
    );

    std::fs::write(&path, "[[listeners]]\nbind = \"127.0.0.1:8080\"\n[upstreams.web]\nbackends = [{ address = \"127.0.0.1:9001\" }]\n").unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn version_and_usage_exit_codes() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard "));
    let out = Command::new(bin()).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sighup_reloads_the_file() {
    let be = backends(2);
    let (p, port, admin, dir) = run_binary(&format!("{{ address = \"{}\" }}", be.addrs[0]));
    let path = dir.path().join("s.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Same length and the same mtime: the file watcher cannot see it, only SIGHUP can.
    let edited = text.replace(&be.addrs[0].to_string(), &be.addrs[1].to_string());
    assert_eq!(edited.len(), text.len());
    let stamp = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, &edited).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let c = client();
    let who = || get_backend(&c, &format!("http://127.0.0.1:{port}/")).1;
    assert_eq!(who(), "b0", "no reload without the signal");
    assert!(Command::new("kill")
        .args(["-HUP", &p.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(eventually(Duration::from_secs(5), || who() == "b1"));
    let v: serde_json::Value = c
        .get(format!("http://127.0.0.1:{admin}/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["config_version"], 2);
}

fn run_binary(backends: &str) -> (Proc, u16, u16, tempfile::TempDir) {
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        format!("workers = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n[upstreams.web]\nbackends = [{backends}]\n"),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    (p, port, admin, dir)
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let be = backends(1);
    let (mut p, port, admin, _dir) = run_binary(&be.list());
    let slow = std::thread::spawn(move || {
        client()
            .get(format!("http://127.0.0.1:{port}/delay/1500"))
            .send()
            .map(|r| r.status().as_u16())
    });
    let c = client();
    assert!(eventually(Duration::from_secs(5), || {
        let v: serde_json::Value = c
            .get(format!("http://127.0.0.1:{admin}/api/v1/upstreams"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["upstreams"][0]["backends"][0]["active_requests"] == 1
    }));
    let pid = p.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        slow.join().unwrap().unwrap(),
        200,
        "in-flight request completed"
    );
    let status = p.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn hundred_mib_bodies_stream_in_bounded_memory() {
    let be = backends(1);
    let (p, port, _admin, _dir) = run_binary(&be.list());
    let c = client();
    // Upload 100 MiB from a generator: the proxy never sees it whole.
    struct Zeros(u64);
    impl Read for Zeros {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64).min(self.0) as usize;
            buf[..n].fill(b'z');
            self.0 -= n as u64;
            Ok(n)
        }
    }
    const SIZE: u64 = 100 << 20;
    let body = reqwest::blocking::Body::sized(Zeros(SIZE), SIZE);
    let r = c
        .post(format!("http://127.0.0.1:{port}/upload"))
        .body(body)
        .send()
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["body_bytes"], SIZE);
    // Download 100 MiB (102400 chunks of 1 KiB).
    let mut r = c
        .get(format!("http://127.0.0.1:{port}/stream/102400"))
        .send()
        .unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, SIZE);
    let hwm = vm_hwm_kib(p.0.id());
    assert!(
        hwm < 64 * 1024,
        "peak RSS {hwm} KiB while streaming 2 × 100 MiB"
    );
}

/// A refused reload is logged on one line with all its problems, so a line-based log shipper
/// keeps them with the message.
#[test]
fn a_refused_reload_is_logged_on_one_line() {
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    let good = format!("workers = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n[upstreams.web]\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n");
    std::fs::write(&path, &good).unwrap();
    let child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = Proc(child);
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    // Two problems, so the log has a list to put on its line. The file watcher sees the change
    // (a signal could arrive before the handlers are in place, just after the port opens).
    let bad = good.replace("127.0.0.1:9", "nope") + "max_connections = 0\n";
    let c = client();
    // Written again each second until a refusal is counted: the watcher may start only after
    // the port opened, and a busy machine (the whole suite at once) may be slow to start it.
    let mut writes = 0u32;
    let started = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(15), || {
        if started.elapsed().as_secs() >= u64::from(writes) {
            writes += 1;
            std::fs::write(&path, format!("{bad}# write {writes}\n")).unwrap();
        }
        c.get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .ok()
            .and_then(|r| r.text().ok())
            .is_some_and(|m| {
                m.lines().any(|l| {
                    l.starts_with("switchyard_config_reloads_total")
                        && l.contains("fail")
                        && !l.ends_with(" 0")
                })
            })
    }));
    let _ = p.0.kill();
    let _ = p.0.wait();
    let mut err = String::new();
    p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let line = err
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap_or_else(|| panic!("no reload refused line in {err}"));
    assert!(
        line.contains("upstreams.web.backends[0].address")
            && line.contains("upstreams.web.max_connections")
            && line.contains("; "),
        "{line}"
    );
}

/// A port in use fails start-up with the OS error said once (it was printed twice: once in the
/// message and once more as the error's source).
#[test]
fn a_bind_failure_names_the_os_error_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n[upstreams.web]\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n"),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot bind 127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

/// `switchyard demo` writes its configuration to a temporary file and removes it when it
/// stops on SIGTERM or SIGINT.
#[test]
fn demo_removes_its_config_file_at_exit() {
    for sig in ["-TERM", "-INT"] {
        let tmp = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let child = Command::new(bin())
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut p = Proc(child);
        let file = tmp
            .path()
            .join(format!("switchyard-demo-{}.toml", p.0.id()));
        // The banner's last line comes once the signals are handled.
        let mut out = std::io::BufReader::new(p.0.stdout.take().unwrap());
        let mut banner = String::new();
        while !banner.contains("Ctrl-C to stop.") {
            let mut line = String::new();
            assert!(
                std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
                "{banner}"
            );
            banner.push_str(&line);
        }
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(file.exists(), "the demo runs from {}", file.display());
        assert!(Command::new("kill")
            .args([sig, &p.0.id().to_string()])
            .status()
            .unwrap()
            .success());
        assert!(p.0.wait().unwrap().success(), "{sig}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{sig}: left behind {left:?}");
    }
}

/// A Switchyard out of file descriptors (its own limit, set in the child only: the test binary's
/// other tests share this process) cannot make its health checks' sockets. That is its own
/// shortage, not the backend's: no backend is marked unhealthy, and the checks are counted as
/// inconclusive.
#[test]
fn running_out_of_file_descriptors_marks_no_backend_unhealthy() {
    use std::os::unix::process::CommandExt;
    let be = backends(1);
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        format!(
            "workers = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n\
             [log]\naccess = \"off\"\n[upstreams.web]\nbackends = [{}]\n\
             health_check = {{ kind = \"tcp\", interval = \"100ms\", timeout = \"1s\", healthy_threshold = 1, unhealthy_threshold = 1 }}\n",
            be.list()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--config"])
        .arg(&path)
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _p = Proc(cmd.spawn().unwrap());
    let c = client();
    let upstreams = || get_json(&c, &format!("http://127.0.0.1:{admin}/api/v1/upstreams"));
    assert!(eventually(Duration::from_secs(10), || upstreams()
        ["upstreams"][0]["backends"][0]["health"]
        == "healthy"));
    // More connections than the limit: each accepted one holds a descriptor until none is left.
    let held: Vec<_> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(held.len() > 64, "only {} connections", held.len());
    // Ten check intervals and more at the limit.
    std::thread::sleep(Duration::from_millis(1500));
    drop(held);
    let metrics = || {
        c.get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    };
    let mut text = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        text = metrics();
        !text.is_empty()
    }));
    let history = get_json(
        &c,
        &format!("http://127.0.0.1:{admin}/api/v1/events/history"),
    );
    assert!(
        !history.to_string().contains("-> unhealthy"),
        "a backend was marked unhealthy: {history}"
    );
    let inconclusive = text
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_health_checks_inconclusive_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(inconclusive.unwrap_or(0) > 0, "{inconclusive:?}");
    assert_eq!(
        upstreams()["upstreams"][0]["backends"][0]["health"],
        "healthy"
    );
}
