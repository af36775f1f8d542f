//! Monitoring as an operator sees it: Prometheus text that promtool accepts and whose counters
//! move by exactly the requests sent; an access-log line per request with the right fields.

use crate::support::*;
use std::time::Duration;

fn scrape(lb: &Lb) -> String {
    client()
        .get(lb.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The value of the sample whose name and labels start with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix}"))
}

#[test]
fn metrics_count_exactly_and_pass_promtool() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let c = client();
    let a = be.addrs[0];
    let key = format!(
        "switchyard_upstream_responses_total{{upstream=\"web\",backend=\"{a}\",class=\"2xx\"}}"
    );
    let key5 = format!(
        "switchyard_upstream_responses_total{{upstream=\"web\",backend=\"{a}\",class=\"5xx\"}}"
    );
    let before = scrape(&lb);
    for _ in 0..7 {
        c.get(lb.url("/")).send().unwrap();
    }
    for _ in 0..3 {
        c.get(lb.url("/status/500")).send().unwrap();
    }
    let after = scrape(&lb);
    assert_eq!(sample(&after, &key) - sample(&before, &key), 7.0);
    assert_eq!(sample(&after, &key5) - sample(&before, &key5), 3.0);
    let count =
        format!("switchyard_upstream_response_seconds_count{{upstream=\"web\",backend=\"{a}\"}}");
    assert_eq!(sample(&after, &count) - sample(&before, &count), 10.0);
    // promtool is installed by scripts/test.sh (Debian's prometheus package).
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (apt-get install prometheus); scripts/test.sh does it");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(after.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && msg.trim().is_empty(),
        "promtool: {msg}"
    );
}

#[test]
fn client_connections_are_counted_as_they_open_and_close() {
    use std::io::{Read, Write};
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    // The counters are the process's, shared by every test running: only growth is checked.
    let total = "switchyard_downstream_connections_total ";
    let open = "switchyard_downstream_connections_open ";
    let before = sample(&scrape(&lb), total);
    let held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(lb.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            let mut b = [0u8; 512];
            assert!(s.read(&mut b).unwrap() > 0);
            s
        })
        .collect();
    let text = scrape(&lb);
    assert!(sample(&text, total) - before >= 3.0, "{text}");
    assert!(sample(&text, open) >= 3.0, "{text}");
    drop(held);
}

/// What clients got, by status class, on both request paths (the relay for plain HTTP/1.1,
/// hyper's for HTTP/2), Switchyard's own answers included and a retried request counted once.
#[test]
fn responses_to_clients_are_counted_by_status_class() {
    let be = backends(1);
    let dead = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (dead, dead2) = (dead(), dead());
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\
         [[routes]]\npath_prefix = \"/ok\"\nupstream = \"web\"\n\
         [upstreams.web]\nbackends = [{}]\n\
         [upstreams.dead]\nbackends = [{{ address = \"{dead}\" }}, {{ address = \"{dead2}\" }}]\n",
        be.list()
    ));
    // Process-wide counters, shared with every test running at once: only growth is checked.
    let class = |text: &str, c: &str| {
        sample(
            text,
            &format!("switchyard_downstream_responses_total{{class=\"{c}\"}} "),
        )
    };
    let before = scrape(&lb);
    let (h1, h2) = (client(), h2c_client());
    for c in [&h1, &h2] {
        for _ in 0..3 {
            let r = c.get(lb.url("/ok")).send().unwrap();
            assert_eq!(r.status(), 200);
        }
        let r = c.get(lb.url("/none")).send().unwrap();
        assert_eq!(r.status(), 404);
        // Two tries, one response.
        let r = c.get(lb.url("/dead")).send().unwrap();
        assert_eq!(r.status(), 502);
    }
    let after = scrape(&lb);
    assert!(
        class(&after, "2xx") - class(&before, "2xx") >= 6.0,
        "{after}"
    );
    assert!(
        class(&after, "4xx") - class(&before, "4xx") >= 2.0,
        "{after}"
    );
    assert!(
        class(&after, "5xx") - class(&before, "5xx") >= 2.0,
        "{after}"
    );
}

/// The Grafana dashboard and the metrics reference name only metrics that exist.
#[test]
fn the_dashboard_and_the_docs_name_only_metrics_that_exist() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let text = scrape(&lb);
    for file in ["contrib/grafana-dashboard.json", "docs/observability.md"] {
        let doc = std::fs::read_to_string(file).unwrap();
        let mut names: Vec<&str> = doc
            .match_indices("switchyard_")
            .map(|(i, _)| {
                let rest = &doc[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                let name = &rest[..end];
                name.strip_suffix("_bucket").unwrap_or(name)
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 8, "{file}: {names:?}");
        for n in names {
            assert!(
                text.contains(&format!("# TYPE {n} ")),
                "{file} names {n}, which /metrics does not have"
            );
        }
    }
}

/// An HTTP/2 request the client cancels (RST_STREAM) while the backend works still gets its
/// access-log line, as NGINX logs it: 499, `downstream_closed`.
#[test]
fn an_http2_request_cancelled_before_its_response_is_logged_499() {
    let be = backends(1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&json_log(
        config(&format!("backends = [{}]", be.list())),
        &log,
    ));
    be.rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::get(format!("http://{}/delay/1500", lb.addr))
            .header("x-request-id", "cancelled-1")
            .body(())
            .unwrap();
        let (resp, mut stream) = client.send_request(req, true).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.send_reset(h2::Reason::CANCEL);
        drop(resp);
        // The connection stays open; only the stream is gone.
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let lines = access_lines(&log, 1);
    let l = &lines[0];
    assert_eq!(l["status"], 499, "{l}");
    assert_eq!(l["path"], "/delay/1500", "{l}");
    assert_eq!(l["error"], "downstream_closed", "{l}");
    assert_eq!(l["protocol"], "HTTP/2.0", "{l}");
}

#[test]
fn access_log_has_a_line_per_request_including_errors_switchyard_made() {
    let be = backends(1);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_file = \"{}\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[[routes]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n[[routes]]\nupstream = \"web\"\n[upstreams.web]\nbackends = [{}]\n[upstreams.dead]\nbackends = [{{ address = \"{dead}\" }}]\nretry = {{ attempts = 1 }}\n",
        log.display(),
        be.list()
    ));
    let c = client();
    c.post(lb.url("/hello?x=1"))
        .header("x-request-id", "rid-1")
        .body("12345")
        .send()
        .unwrap();
    assert_eq!(c.get(lb.url("/dead")).send().unwrap().status(), 502);
    let mut lines = Vec::new();
    assert!(eventually(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= 2
    }));
    assert_eq!(lines.len(), 2);
    let ok: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(ok["request_id"], "rid-1");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/hello?x=1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["bytes_in"], 5);
    assert!(ok["bytes_out"].as_u64().unwrap() > 100);
    assert_eq!(ok["upstream"], "web");
    assert_eq!(ok["backend"], be.addrs[0].to_string());
    assert_eq!(ok["attempts"], 1);
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(ok["upstream_first_byte_ms"].as_f64().is_some());
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));
    let bad: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(bad["status"], 502);
    assert_eq!(bad["error"], "connect_failed");
    assert_eq!(bad["upstream"], "dead");
    assert_eq!(bad["backend"], dead.to_string());
}

#[test]
fn traceparent_reaches_the_backend_unchanged() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let v: serde_json::Value = client()
        .get(lb.url("/"))
        .header("traceparent", tp)
        .header("tracestate", "a=1")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["headers"]["traceparent"], tp);
    assert_eq!(v["headers"]["tracestate"], "a=1");
}

#[test]
fn otlp_spans_reach_a_collector_and_the_backend_continues_the_trace() {
    use std::sync::{Arc, Mutex};
    // An in-test OTLP/HTTP collector: records every POSTed JSON body.
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let be = backends(1);
    let sink = got.clone();
    let collector = be.rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let sink = sink.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let sink = sink.clone();
                            async move {
                                use http_body_util::BodyExt;
                                assert_eq!(req.uri().path(), "/v1/traces");
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                sink.lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap());
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    });
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"off\"\notlp_endpoint = \"http://{collector}\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.web]\nbackends = [{}]\n",
        be.list()
    ));
    let tid = "4bf92f3577b34da6a3ce929d0e0e4736";
    let v: serde_json::Value = client()
        .get(lb.url("/traced"))
        .header("traceparent", format!("00-{tid}-00f067aa0ba902b7-01"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let seen = v["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(
        seen.starts_with(&format!("00-{tid}-")),
        "backend continues the client's trace: {seen}"
    );
    let backend_parent = seen.split('-').nth(2).unwrap().to_string();
    let mut spans = Vec::new();
    assert!(eventually(Duration::from_secs(5), || {
        spans = got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                b["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        spans.len() >= 2
    }));
    let server = spans
        .iter()
        .find(|s| s["name"] == "switchyard.request")
        .expect("server span");
    let attempt = spans
        .iter()
        .find(|s| s["name"] == "switchyard.upstream_attempt")
        .expect("attempt span");
    assert_eq!(server["traceId"], tid);
    assert_eq!(server["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(attempt["parentSpanId"], server["spanId"]);
    assert_eq!(
        attempt["spanId"],
        backend_parent.as_str(),
        "the backend's parent is the attempt span"
    );
}
