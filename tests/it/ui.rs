//! The web UI in a real browser: starts four demo backends (three configured with HTTP health
//! checks, one spare), Switchyard with its admin server, and runs `tests/ui/ui_test.mjs` in
//! headless Debian Chromium through playwright-core. The script adds the spare backend through
//! the UI's form, edits the configuration (valid and invalid), makes one configured backend's
//! health check fail and watches the page turn it unhealthy; it writes the screenshots to docs/.
//!
//! Needs `/usr/bin/chromium` and `tests/ui/node_modules` (`scripts/test.sh` installs both); without
//! them this test fails and says so, rather than passing without having looked at anything.

use crate::support::{backends, start};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const TIMEOUT: Duration = Duration::from_secs(240);

fn require_tools(ui: &Path) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the web UI test needs Debian's chromium \
         (apt-get install -y chromium, or run scripts/test.sh as root)"
    );
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "tests/ui/node_modules/playwright-core is missing: run `cd tests/ui && npm ci`"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: the web UI test needs Node.js (apt-get install -y nodejs npm)"
    );
}

/// Reads a child's pipe to the end on its own thread, so a chatty child never blocks on a full
/// pipe while we wait for it.
fn collect(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    })
}

#[test]
fn web_ui_shows_and_steers_the_balancer_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ui = root.join("tests/ui");
    require_tools(&ui);

    let b = backends(4);
    let (configured, spare) = (&b.addrs[..3], b.addrs[3]);
    let list = configured
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    // The listener gets a concrete port only so the screenshots show a real address, as they
    // would for an operator; the admin API stays on port 0.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let lb = start(&format!(
        r#"workers = 2
[admin]
listen = "127.0.0.1:0"

[log]
access = "off"

[[listeners]]
name = "public"
bind = "{listen}"

[[routes]]
path_prefix = "/"
upstream = "web"

[upstreams.web]
algorithm = "round_robin"
backends = [{list}]
health_check = {{ kind = "http", path = "/healthz", interval = "300ms", timeout = "250ms" }}
"#
    ));

    // Screenshots go to docs/ only when asked (SWITCHYARD_UPDATE_SCREENSHOTS=1), so a test run
    // leaves the tree clean.
    let tmp_shots = tempfile::tempdir().expect("tempdir");
    let shots = if std::env::var_os("SWITCHYARD_UPDATE_SCREENSHOTS").is_some() {
        root.join("docs")
    } else {
        tmp_shots.path().to_path_buf()
    };
    let mut child = Command::new("node")
        .arg(ui.join("ui_test.mjs"))
        .arg(lb.admin_url("/"))
        .arg(lb.url("/"))
        .arg(&shots)
        .args(["--add", &spare.to_string()])
        .args(["--kill", &configured[1].to_string()])
        .current_dir(&ui)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    println!("{out}");
    eprintln!("{err}");
    match status {
        Some(s) => assert!(s.success(), "the browser test failed ({s}):\n{out}\n{err}"),
        None => panic!("the browser test did not finish within {TIMEOUT:?}:\n{out}\n{err}"),
    }
    assert!(out.contains("all UI checks passed"), "{out}");
}
