//! The web UI in a real browser: starts six demo backends (three configured with HTTP health
//! checks, one spare, two for an upstream fed by file discovery), Switchyard with its admin
//! server, and runs `tests/ui/ui_test.mjs` in headless Debian Chromium through playwright-core.
//! The script adds the spare backend through the UI's form, edits the configuration (valid and
//! invalid), makes one configured backend's health check fail and watches the page turn it
//! unhealthy, edits the discovery file (a bad entry, then a good one) and watches the upstream's
//! discovery state, and has this test stop the balancer and start it again to watch the page
//! turn stale and recover; it writes the screenshots to docs/.
//!
//! A second test has Chromium judge a route's `cors`: a page on one origin calling another
//! (`tests/ui/cors_test.mjs`).
//!
//! Needs `/usr/bin/chromium` and `tests/ui/node_modules` (`scripts/test.sh` installs both); without
//! them this test fails and says so, rather than passing without having looked at anything.

use crate::support::{backends, free_port, start, Lb};
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

    let b = backends(6);
    let (configured, spare, discovered) = (&b.addrs[..3], b.addrs[3], &b.addrs[4..]);
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
    // The admin port is fixed so the balancer can be started again where the page looks for it.
    let admin_port = free_port();
    let files = tempfile::tempdir().expect("tempdir");
    let discovery_file = files.path().join("catalog.json");
    std::fs::write(
        &discovery_file,
        format!(r#"[{{"address": "{}"}}]"#, discovered[0]),
    )
    .expect("discovery file");
    let text = format!(
        r#"workers = 2
[admin]
listen = "127.0.0.1:{admin_port}"

[log]
access = "off"

[[listeners]]
name = "public"
bind = "{listen}"

[[routes]]
path_prefix = "/"
upstream = "web"
mirror = {{ upstream = "catalog", percent = 5 }}

[[routes]]
path_prefix = "/beta/"
split = [{{ upstream = "web", weight = 90 }}, {{ upstream = "catalog", weight = 10 }}]
split_by = "cookie:beta"
methods = ["GET", "HEAD"]
match_headers = {{ x-beta = "on" }}

[[routes]]
hosts = ["old.example"]
respond = {{ status = 308, location = "https://new.example${{request_uri}}" }}

[upstreams.web]
algorithm = "round_robin"
backends = [{list}]
health_check = {{ kind = "http", path = "/healthz", interval = "300ms", timeout = "250ms" }}

[upstreams.catalog]
discovery = {{ file = "{}", interval = "200ms" }}
sticky = {{ cookie = "sy" }}
"#,
        discovery_file.display()
    );
    let mut lb = Some(start(&text));
    let (admin_url, lb_url) = {
        let lb = lb.as_ref().expect("started");
        (lb.admin_url("/"), lb.url("/"))
    };
    // The script asks for the balancer to be stopped and started by creating files here.
    let control = tempfile::tempdir().expect("tempdir");

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
        .arg(&admin_url)
        .arg(&lb_url)
        .arg(&shots)
        .args(["--add", &spare.to_string()])
        .args(["--kill", &configured[1].to_string()])
        .arg("--discovery")
        .arg(&discovery_file)
        .args(["--discovered", &discovered[1].to_string()])
        .arg("--control")
        .arg(control.path())
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
        steer(control.path(), &mut lb, &text, admin_port);
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

/// Does what the script asked through files in `control`: `stop` stops the balancer (as an
/// operator's or a crash's stop looks to the page: the admin port goes away), `start` starts it
/// again from the same configuration on the same admin port. Each is answered by `stopped` or
/// `started`.
fn steer(control: &Path, lb: &mut Option<Lb>, text: &str, admin_port: u16) {
    if control.join("stop").exists() && !control.join("stopped").exists() {
        drop(lb.take());
        std::fs::write(control.join("stopped"), "").expect("control file");
    }
    if control.join("start").exists() && !control.join("started").exists() {
        // The old admin socket closes as its runtime winds down: wait until the port is free.
        let admin = format!("127.0.0.1:{admin_port}");
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind(&admin).is_err() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        *lb = Some(start(text));
        std::fs::write(control.join("started"), "").expect("control file");
    }
}

/// CORS as a browser enforces it: a page on `http://localhost:PORT` (a `respond` route) calls
/// `http://127.0.0.1:PORT`, where one route allows that origin and another does not. The
/// allowed GET and the PUT with a custom header (which needs a preflight) reach the page; the
/// refused one is kept from it by the browser, although the backend answered it.
#[test]
fn a_page_in_chromium_reads_only_the_routes_whose_cors_allows_its_origin() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ui = root.join("tests/ui");
    require_tools(&ui);
    let b = backends(1);
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let page = format!(
        r#"<!doctype html><title>cors</title><p id="result"></p><script>
const out = [];
const call = (name, url, init) => fetch(url, init)
  .then(r => out.push(name + ':' + r.status))
  .catch(e => out.push(name + ':' + e.name));
(async () => {{
  await call('get', '{api}/api/data');
  await call('put', '{api}/api/data', {{ method: 'PUT', headers: {{ 'x-token': 't' }}, body: 'x' }});
  await call('closed', '{api}/closed/data');
  const r = document.getElementById('result');
  r.textContent = out.join(' ');
  r.dataset.done = 'true';
}})();
</script>"#
    );
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"off\"\n\
         [[listeners]]\nbind = \"127.0.0.1:{port}\"\n\
         [upstreams.web]\nbackends = [{}]\n\
         [[routes]]\nhosts = [\"localhost\"]\npath = \"/page\"\n\
         respond = {{ status = 200, content_type = \"text/html\", body = '''{page}''' }}\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"web\"\n\
         cors = {{ allow_origins = [\"http://localhost:{port}\"], allow_methods = [\"GET\", \"PUT\"] }}\n\
         [[routes]]\npath_prefix = \"/closed/\"\nupstream = \"web\"\n\
         cors = {{ allow_origins = [\"https://elsewhere.example\"] }}\n",
        b.list()
    );
    let _lb = start(&text);
    let out = Command::new("node")
        .arg(ui.join("cors_test.mjs"))
        .arg(format!("http://localhost:{port}/page"))
        .current_dir(&ui)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("RESULT get:200 put:200 closed:TypeError"),
        "{stdout}"
    );
}
