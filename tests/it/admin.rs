//! The admin API and live configuration: every change validated whole, applied without dropping
//! requests, persisted to the file, reversible.

use crate::support::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

fn served_by(lb: &Lb, n: usize) -> HashSet<String> {
    let c = client();
    (0..n).map(|_| get_backend(&c, &lb.url("/")).1).collect()
}

#[test]
fn added_backend_serves_the_next_requests_and_survives_restart() {
    let mut be = backends(2);
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{}\" }}]",
        be.addrs[0]
    )));
    let third = be.add("b-new");
    let c = client();
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({"add": [{"address": third.to_string(), "weight": 1}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["config_version"], 2);
    assert!(
        v["changes"][0].as_str().unwrap().contains("added backend"),
        "{v}"
    );
    assert_eq!(
        served_by(&lb, 4),
        HashSet::from(["b0".to_string(), "b-new".to_string()])
    );
    // Written back to the file as TOML: a restart comes back with the new backend.
    let text = std::fs::read_to_string(&lb.path).unwrap();
    assert!(text.contains(&third.to_string()), "{text}");
    let (cfg, _) = switchyard::config::load_file(&lb.path).unwrap();
    assert_eq!(cfg.upstreams["web"].backends.len(), 2);
    drop(lb);
    let lb2 = start(&text);
    assert_eq!(
        served_by(&lb2, 4),
        HashSet::from(["b0".to_string(), "b-new".to_string()])
    );
}

/// The file an API change is written back to keeps what the operator wrote: comments, layout,
/// explicit defaults.
#[test]
fn a_change_written_back_keeps_the_files_comments_and_layout() {
    let mut be = backends(2);
    let text = format!(
        "# Shop edge. Owner: platform team.\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"  # any port\n\n\
         [upstreams.web]\nalgorithm = \"round_robin\"  # explicit default\nbackends = [\n\
         \x20   {{ address = \"{}\" }},  # rack A\n\
         \x20   {{ address = \"{}\", weight = 1 }},  # rack B\n]\n",
        be.addrs[0], be.addrs[1]
    );
    let lb = start(&text);
    let third = be.add("b-new");
    let r = client()
        .post(lb.admin_url("/update-config"))
        .json(
            &json!({"add": [{"address": third.to_string()}], "remove": [be.addrs[0].to_string()]}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let file = std::fs::read_to_string(&lb.path).unwrap();
    for kept in [
        "# Shop edge. Owner: platform team.",
        "bind = \"127.0.0.1:0\"  # any port",
        "algorithm = \"round_robin\"  # explicit default",
        "weight = 1 },  # rack B",
    ] {
        assert!(file.contains(kept), "{kept:?} lost:\n{file}");
    }
    assert!(!file.contains("rack A"), "{file}");
    assert!(
        file.contains(&format!("\n    {{ address = \"{third}\"")),
        "{file}"
    );
    let (cfg, _) = switchyard::config::load_file(&lb.path).unwrap();
    assert_eq!(*lb.running().shared.current().config, cfg);
}

#[test]
fn removed_backend_gets_no_new_requests_while_its_slow_request_completes() {
    let be = backends(2);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let c = client();
    // Find which backend takes the slow request, then remove that one.
    let url = lb.url("/delay/1500");
    let slow = std::thread::spawn(move || get_backend(&client(), &url));
    let mut busy = String::new();
    assert!(eventually(Duration::from_secs(5), || {
        let v: Value = c
            .get(lb.admin_url("/api/v1/upstreams"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        match v["upstreams"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["active_requests"] == 1)
        {
            Some(b) => {
                busy = b["address"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    }));
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({"upstream": "web", "remove": [busy]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Still finishing its request, it stays in view as removed and draining.
    let listed = |c: &reqwest::blocking::Client| -> Vec<Value> {
        let v: Value = c
            .get(lb.admin_url("/api/v1/upstreams"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["upstreams"][0]["backends"].as_array().unwrap().clone()
    };
    let now = listed(&c);
    let leaving = now
        .iter()
        .find(|b| b["address"] == busy.as_str())
        .unwrap_or_else(|| panic!("the removed, busy backend vanished: {now:?}"));
    assert_eq!(leaving["removed"], true, "{leaving}");
    assert_eq!(leaving["draining"], true, "{leaving}");
    assert_eq!(leaving["active_requests"], 1, "{leaving}");
    assert_eq!(now.len(), 2, "{now:?}");
    let busy_name = format!(
        "b{}",
        be.addrs.iter().position(|a| a.to_string() == busy).unwrap()
    );
    let seen = served_by(&lb, 10);
    assert!(
        !seen.contains(&busy_name),
        "removed backend got new requests: {seen:?}"
    );
    let (status, who) = slow.join().unwrap();
    assert_eq!(
        (status, who),
        (200, busy_name),
        "in-flight request on the removed backend completed"
    );
    // Its last request done, it is gone.
    assert!(eventually(Duration::from_secs(5), || listed(&c).len() == 1));
    assert_eq!(listed(&c)[0]["removed"], false);
}

#[test]
fn invalid_change_gets_422_and_changes_nothing() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let c = client();
    let file_before = std::fs::read_to_string(&lb.path).unwrap();
    let etag = c
        .get(lb.admin_url("/api/v1/config"))
        .send()
        .unwrap()
        .headers()["etag"]
        .clone();
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({"add": [{"address": "not-an-address"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().unwrap();
    assert_eq!(v["path"], "upstreams.web.backends[1].address");
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({"add": [{"address": "127.0.0.1:1", "weight": 20000}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    // Well-formed JSON with a misspelt key or a value of the wrong type: 422 with its path
    // (a misspelt "weight" must not add the backend at full weight).
    for (body, path) in [
        (
            json!({"add": [{"address": "127.0.0.1:1", "wieght": 0}]}),
            "add[0].wieght",
        ),
        (
            json!({"add": [{"address": "127.0.0.1:1", "weight": -5}]}),
            "add[0].weight",
        ),
        (
            json!({"config": {"listeners": [{"bind": "127.0.0.1:0"}], "upstreams": {"web": {"backends": [{"address": "127.0.0.1:1", "weight": "x"}]}}}}),
            "upstreams.web.backends[0].weight",
        ),
    ] {
        let r = c
            .post(lb.admin_url("/update-config"))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["path"], path, "{v}");
    }
    // Two equal keys are refused, not settled by the last one: in a patch, and in a whole
    // configuration.
    for dup in [
        r#"{"add": [{"address": "127.0.0.1:1", "weight": 0, "weight": 10000}]}"#,
        r#"{"config": {"listeners": [{"bind": "127.0.0.1:0"}], "upstreams": {"web": {"backends": [{"address": "127.0.0.1:1", "weight": 0, "weight": 1}]}}}}"#,
    ] {
        let r = c
            .post(lb.admin_url("/update-config"))
            .header("content-type", "application/json")
            .body(dup)
            .send()
            .unwrap();
        assert!(
            [400, 422].contains(&r.status().as_u16()),
            "{dup}: {}",
            r.status()
        );
    }
    let r = c
        .post(lb.admin_url("/update-config"))
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({"upstream": "nope", "add": []}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .put(lb.admin_url("/api/v1/config"))
        .header("content-type", "application/toml")
        .body("[[listeners]]\nbind = \"x\"\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        c.get(lb.admin_url("/api/v1/config"))
            .send()
            .unwrap()
            .headers()["etag"],
        etag
    );
    assert_eq!(std::fs::read_to_string(&lb.path).unwrap(), file_before);
    assert_eq!(served_by(&lb, 3), HashSet::from(["b0".to_string()]));
}

#[test]
fn put_with_stale_etag_is_refused_and_rollback_restores() {
    let be = backends(2);
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{}\" }}]",
        be.addrs[0]
    )));
    let c = client();
    let r = c.get(lb.admin_url("/api/v1/config")).send().unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let mut cfg: Value = r.json().unwrap();
    cfg["upstreams"]["web"]["backends"] = json!([{"address": be.addrs[1].to_string()}]);
    let r = c
        .put(lb.admin_url("/api/v1/config"))
        .header("if-match", &etag)
        .json(&cfg)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&lb, 3), HashSet::from(["b1".to_string()]));
    let r = c
        .put(lb.admin_url("/api/v1/config"))
        .header("if-match", &etag)
        .json(&cfg)
        .send()
        .unwrap();
    assert_eq!(r.status(), 412, "stale ETag");
    // Dry run shows the diff and applies nothing.
    cfg["upstreams"]["web"]["backends"] =
        json!([{"address": be.addrs[1].to_string(), "weight": 3}]);
    let v: Value = c
        .post(lb.admin_url("/api/v1/config/validate"))
        .json(&cfg)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["valid"], true);
    assert!(
        v["changes"][0].as_str().unwrap().contains("weight 1 -> 3"),
        "{v}"
    );
    let versions: Value = c
        .get(lb.admin_url("/api/v1/config/versions"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(versions["current"], 2);
    let r = c
        .post(lb.admin_url("/api/v1/config/rollback"))
        .json(&json!({"version": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&lb, 3), HashSet::from(["b0".to_string()]));
}

/// A configuration sent to the API is located like a file: every problem has the line and
/// column it is at in the body (the UI's editor marks those lines), and a syntax error says
/// where it is.
#[test]
fn problems_in_a_configuration_body_carry_line_and_column() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let c = client();
    let body = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[upstreams.web]\nalgorithm = \"fastest\"\n\
         backends = [{{ address = \"{}\", weight = -1 }}]\n",
        be.addrs[0]
    );
    let weight_col = body.lines().nth(5).unwrap().find("weight").unwrap() as u64 + 1;
    let r = c
        .post(lb.admin_url("/api/v1/config/validate"))
        .header("content-type", "application/toml")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().unwrap();
    let at: Vec<(String, u64, u64)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["line"].as_u64().unwrap_or(0),
                p["column"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        at,
        [
            ("upstreams.web.algorithm".to_string(), 5, 1),
            (
                "upstreams.web.backends[0].weight".to_string(),
                6,
                weight_col
            ),
        ],
        "{v}"
    );
    let r = c
        .post(lb.admin_url("/api/v1/config/validate"))
        .header("content-type", "application/toml")
        .body("[upstreams.web]\nbackends = [\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("(line 2, column 13)"),
        "{v}"
    );
}

/// A backup backend (HAProxy's `backup`) serves only while no primary can: here while the
/// primary is drained through the API; `backup` itself can be changed through the API too.
#[test]
fn a_backup_backend_serves_only_while_the_primary_cannot() {
    let be = backends(2);
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{}\" }}, {{ address = \"{}\", backup = true }}]",
        be.addrs[0], be.addrs[1]
    )));
    let c = client();
    let only = |name: &str| HashSet::from([name.to_string()]);
    assert_eq!(served_by(&lb, 10), only("b0"));
    let patch = |address: std::net::SocketAddr, body: Value| {
        let r = c
            .patch(lb.admin_url(&format!("/api/v1/upstreams/web/backends/{address}")))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    };
    patch(be.addrs[0], json!({"drain": true}));
    assert_eq!(served_by(&lb, 10), only("b1"));
    patch(be.addrs[0], json!({"drain": false}));
    assert_eq!(served_by(&lb, 10), only("b0"));
    let v: Value = c
        .get(lb.admin_url("/api/v1/upstreams"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["upstreams"][0]["backends"][1]["backup"], true, "{v}");
    // No longer a backup: both share the traffic.
    patch(be.addrs[1], json!({"backup": false}));
    assert_eq!(
        served_by(&lb, 20),
        HashSet::from(["b0".into(), "b1".into()])
    );
}

#[test]
fn backend_patch_drains_and_deletes() {
    let be = backends(2);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let c = client();
    let a0 = be.addrs[0].to_string();
    let r = c
        .patch(lb.admin_url(&format!("/api/v1/upstreams/web/backends/{a0}")))
        .json(&json!({"drain": true}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&lb, 4), HashSet::from(["b1".to_string()]));
    let v: Value = c
        .get(lb.admin_url("/api/v1/upstreams"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["upstreams"][0]["backends"][0]["draining"], true);
    c.patch(lb.admin_url(&format!("/api/v1/upstreams/web/backends/{a0}")))
        .json(&json!({"drain": false}))
        .send()
        .unwrap();
    assert_eq!(served_by(&lb, 4).len(), 2);
    let r = c
        .delete(lb.admin_url(&format!("/api/v1/upstreams/web/backends/{a0}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&lb, 4), HashSet::from(["b1".to_string()]));
    let r = c
        .post(lb.admin_url("/api/v1/upstreams/web/backends"))
        .json(&json!({"address": a0}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .delete(lb.admin_url("/api/v1/upstreams/web/backends/127.0.0.1:1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A balancer over `be` whose admin API needs the token `s3cret`.
fn with_token(be: &Backends) -> Lb {
    start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.web]\nbackends = [{}]\n",
        be.list()
    ))
}

#[test]
fn token_is_required_when_configured() {
    let be = backends(1);
    let lb = with_token(&be);
    let c = client();
    assert_eq!(c.get(lb.admin_url("/health")).send().unwrap().status(), 200);
    assert_eq!(
        c.get(lb.admin_url("/api/v1/upstreams"))
            .send()
            .unwrap()
            .status(),
        401
    );
    let r = c
        .post(lb.admin_url("/update-config"))
        .bearer_auth("wrong")
        .json(&json!({"remove": [be.addrs[0].to_string()]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(lb.running().shared.current().version, 1, "nothing changed");
    let r = c
        .get(lb.admin_url("/api/v1/upstreams"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    for (value, status) in [
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("bearer S3CRET", 401),
    ] {
        let r = c
            .get(lb.admin_url("/api/v1/upstreams"))
            .header("authorization", value)
            .send()
            .unwrap();
        assert_eq!(r.status(), status, "{value}");
    }
}

#[test]
fn the_config_shown_hides_the_token_and_a_round_trip_keeps_it() {
    let be = backends(2);
    let lb = with_token(&be);
    let c = client();
    let get = |path: &str| {
        c.get(lb.admin_url(path))
            .bearer_auth("s3cret")
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let json_text = get("/api/v1/config");
    let toml_text = get("/api/v1/config?format=toml");
    for shown in [&json_text, &toml_text] {
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
    // Sent back as shown, with one backend fewer: the change applies and the token still works.
    let mut cfg: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    cfg["upstreams"]["web"]["backends"]
        .as_array_mut()
        .unwrap()
        .pop();
    let r = c
        .put(lb.admin_url("/api/v1/config"))
        .bearer_auth("s3cret")
        .json(&cfg)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let live = lb.running().shared.current();
    assert_eq!(live.config.admin.token.as_deref(), Some("s3cret"));
    assert_eq!(live.config.upstreams["web"].backends.len(), 1);
    let r = c
        .get(lb.admin_url("/api/v1/upstreams"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn an_unreadable_or_emptied_token_file_fails_closed() {
    let be = backends(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let cfg = |f: &std::path::Path| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {f:?}\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.web]\nbackends = [{}]\n",
            be.list()
        )
    };
    // Missing, or empty: refused whole, with the field named.
    for contents in [None, Some("\n")] {
        if let Some(c) = contents {
            std::fs::write(&file, c).unwrap();
        }
        let e =
            switchyard::config::parse_config(&cfg(&file), switchyard::config::Format::Toml, None)
                .unwrap_err();
        assert_eq!(e.problems[0].path, "admin.token_file", "{contents:?}");
    }
    std::fs::write(&file, "tok1\n").unwrap();
    let lb = start(&cfg(&file));
    let c = client();
    let get = |token: Option<&str>| {
        let r = c.get(lb.admin_url("/api/v1/config"));
        let r = match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        r.send().unwrap().status().as_u16()
    };
    assert_eq!((get(None), get(Some("tok1"))), (401, 200));
    // Rotated by truncating the file: no token matches meanwhile, and nothing opens.
    std::fs::write(&file, "").unwrap();
    assert_eq!((get(None), get(Some(""))), (503, 503));
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({"remove": [be.addrs[0].to_string()]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(lb.running().shared.current().version, 1, "nothing changed");
    std::fs::write(&file, "tok2").unwrap();
    assert_eq!((get(Some("tok1")), get(Some("tok2"))), (401, 200));
    assert_eq!(c.get(lb.admin_url("/health")).send().unwrap().status(), 200);
}

#[test]
fn non_loopback_admin_without_token_is_refused() {
    let cfg = "[admin]\nlisten = \"0.0.0.0:5000\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.web]\nbackends = [{ address = \"127.0.0.1:9\" }]\n";
    let e =
        switchyard::config::parse_config(cfg, switchyard::config::Format::Toml, None).unwrap_err();
    assert_eq!(e.problems[0].path, "admin.listen");
}

#[test]
fn events_stream_reports_changes() {
    use std::io::{BufRead, BufReader};
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let mut resp = reqwest::blocking::Client::new()
        .get(lb.admin_url("/api/v1/events"))
        .send()
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let admin = lb.admin_url("/update-config");
    let add = json!({"add": [{"address": "127.0.0.1:9"}]});
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        client().post(admin).json(&add).send().unwrap();
    });
    let reader = BufReader::new(&mut resp);
    for line in reader.lines().take(200) {
        if line.unwrap() == "event: config" {
            return;
        }
    }
    panic!("no config event");
}

#[test]
fn whole_configuration_form_and_live_state_survives_changes() {
    let be = backends(2);
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{}\" }}]",
        be.addrs[0]
    )));
    let c = client();
    for _ in 0..5 {
        c.get(lb.url("/")).send().unwrap();
    }
    let mut cfg: Value = c
        .get(lb.admin_url("/api/v1/config"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    cfg["upstreams"]["web"]["backends"] =
        json!([{"address": be.addrs[0].to_string()}, {"address": be.addrs[1].to_string()}]);
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({"config": cfg}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = c
        .get(lb.admin_url("/api/v1/upstreams"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let kept = &v["upstreams"][0]["backends"][0];
    assert_eq!(kept["address"], be.addrs[0].to_string());
    assert_eq!(
        kept["requests_total"], 5,
        "counters survive a change that keeps the backend"
    );
    assert_eq!(v["upstreams"][0]["backends"][1]["requests_total"], 0);
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({"config": {"listeners": [], "upstreams": {}}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().unwrap();
    assert!(
        v["problems"].as_array().unwrap().len() >= 2,
        "every problem is reported: {v}"
    );
}

/// With no token (the loopback default), a web page in the operator's browser cannot act on the
/// API: a cross-site "simple" POST is refused, as is a DNS-rebound name; curl is unaffected.
#[test]
fn a_cross_site_page_cannot_drive_a_tokenless_api() {
    let be = backends(2);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let c = client();
    let body = format!("{{\"remove\": [\"{}\"]}}", be.addrs[0]);
    let r = c
        .post(lb.admin_url("/update-config"))
        .header("content-type", "text/plain")
        .header("origin", "http://evil.example")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(lb.admin_url("/update-config"))
        .header("sec-fetch-site", "cross-site")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let port = lb.admin.unwrap().port();
    let r = c
        .get(lb.admin_url("/api/v1/config"))
        .header("host", format!("rebound.evil.example:{port}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(lb.running().shared.current().version, 1, "nothing applied");
    // Its own origin (the UI) and no origin at all (curl) are served.
    let own = format!("http://127.0.0.1:{port}");
    let r = c
        .post(lb.admin_url("/update-config"))
        .header("origin", own)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
}

/// A configuration file that cannot be written (a read-only mount; here, its directory gone)
/// does not stop a change: it applies, and the answer says the file no longer matches.
#[test]
fn a_change_applies_when_the_file_cannot_be_written_and_says_so() {
    let be = backends(2);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    std::fs::remove_dir_all(lb.dir.path()).unwrap();
    let r = client()
        .patch(lb.admin_url(&format!("/api/v1/upstreams/web/backends/{}", be.addrs[0])))
        .json(&json!({"drain": true}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["written"], false, "{v}");
    assert!(
        v["warning"].as_str().unwrap().contains("not written"),
        "{v}"
    );
    let live = lb.running().shared.current();
    assert!(live.config.upstreams["web"].backends[0].drain);
}

/// The whole-configuration form and the add/remove patch are exclusive: sent together, neither
/// is applied and the 422 names the patch's fields, instead of the patch being dropped silently.
#[test]
fn update_config_with_both_config_and_a_patch_is_refused_naming_the_fields() {
    let be = backends(2);
    let lb = start(&config(&format!(
        "backends = [{{ address = \"{}\" }}]",
        be.addrs[0]
    )));
    let c = client();
    let cfg: Value = c
        .get(lb.admin_url("/api/v1/config"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({
            "config": cfg,
            "add": [{"address": be.addrs[1].to_string()}],
            "remove": [be.addrs[0].to_string()],
        }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().unwrap();
    let paths: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["add", "remove"], "{v}");
    assert_eq!(upstreams(&lb)["config_version"], 1, "nothing was applied");
    assert_eq!(served_by(&lb, 4), HashSet::from(["b0".to_string()]));
}

/// The patch form reports every problem, as the whole form does: each value of the wrong type
/// with its path in the body (`add[0].weight`, `add[2].address`), and what the rest of the
/// patch would break, named as when nothing is wrong-typed (the position the backend would
/// have had). 422, and nothing is applied.
#[test]
fn update_config_patch_reports_every_problem_with_its_path() {
    let be = backends(1);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let c = client();
    let file_before = std::fs::read_to_string(&lb.path).unwrap();
    let r = c
        .post(lb.admin_url("/update-config"))
        .json(&json!({
            "add": [
                {"address": "127.0.0.1:1", "weight": -1},
                {"address": "127.0.0.1:2"},
                {"address": 5},
                {"address": "127.0.0.1:3", "wieght": 1},
                {"address": "not-an-address"},
            ],
            "remove": [7, "127.0.0.1:9"],
        }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().unwrap();
    let mut paths: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "add[0].weight",
            "add[2].address",
            "add[3].wieght",
            "remove[0]",
            "remove[1]",
            // The fifth added backend, after the one configured: index 1 + 4.
            "upstreams.web.backends[5].address",
        ],
        "{v}"
    );
    assert_eq!(upstreams(&lb)["config_version"], 1, "nothing was applied");
    assert_eq!(std::fs::read_to_string(&lb.path).unwrap(), file_before);
}

/// The file watcher compares the file with the running configuration, not with its own last
/// write-back: a file put back to what the API once wrote, after an edit changed the running
/// configuration, is applied; the write-back itself applies nothing.
#[test]
fn a_file_put_back_to_an_api_write_back_is_applied() {
    let be = backends(3);
    let lb = start(&config(&format!("backends = [{}]", be.list())));
    let shared = &lb.running().shared;
    let count = || shared.current().upstreams[0].backends.len();
    let r = client()
        .post(lb.admin_url("/update-config"))
        .json(&json!({"remove": [be.addrs[2].to_string()]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(count(), 2);
    let written = std::fs::read_to_string(&lb.path).unwrap();
    assert!(!written.contains(&be.addrs[2].to_string()), "{written}");
    // An operator adds the backend back by hand: applied.
    let edited = written.replace(
        &format!("address = \"{}\" }}", be.addrs[1]),
        &format!(
            "address = \"{}\" }}, {{ address = \"{}\" }}",
            be.addrs[1], be.addrs[2]
        ),
    );
    assert_ne!(edited, written);
    std::fs::write(&lb.path, &edited).unwrap();
    assert!(eventually(Duration::from_secs(10), || count() == 3));
    // ... and puts the file back to what the API wrote: what runs must follow the file again.
    std::fs::write(&lb.path, &written).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || count() == 2),
        "the file lists 2 backends, 3 are running"
    );
    let sources: Vec<String> = shared.versions().into_iter().map(|v| v.source).collect();
    assert_eq!(
        sources.len(),
        4,
        "the write-back is no version: {sources:?}"
    );
    assert_eq!(sources[0], "start");
    assert_eq!(&sources[2..], ["file", "file"], "{sources:?}");
}

/// A file rewritten in place in two writes, a pause shorter than the watcher's quiet window
/// between them, is applied whole: no version ever holds the first half, although the first half
/// alone is a valid configuration. Several rounds at different moments, since a watcher's poll
/// lands in the pause only sometimes.
#[test]
fn a_file_written_in_two_pieces_is_applied_only_whole() {
    use std::io::Write;
    let be = backends(1);
    let b0 = be.addrs[0];
    // Round k's first piece is valid alone (weight k, the default connect timeout); the second
    // sets the connect timeout to k seconds.
    let pieces = |k: u32| {
        let head = config(&format!(
            "backends = [{{ address = \"{b0}\", weight = {k} }}]"
        ));
        (head, format!("timeouts = {{ connect = \"{k}s\" }}\n"))
    };
    let (head, tail) = pieces(100);
    let lb = start(&format!("{head}{tail}"));
    let shared = &lb.running().shared;
    let shape = |c: &switchyard::config::Config| {
        let u = &c.upstreams["web"];
        (
            u.backends[0].weight,
            u.timeouts.connect.map(|d| d.to_string()),
        )
    };
    for k in 1..=8 {
        // A different moment in each round: the rounds would otherwise fall into step with the
        // watcher's poll (each starts just after a change was applied).
        std::thread::sleep(Duration::from_millis(60 * u64::from(k)));
        let (head, tail) = pieces(k);
        let mut f = std::fs::File::create(&lb.path).unwrap();
        f.write_all(head.as_bytes()).unwrap();
        f.sync_data().unwrap();
        // Well under the 500 ms window, with room for a loaded machine's late wake-up.
        std::thread::sleep(Duration::from_millis(200));
        f.write_all(tail.as_bytes()).unwrap();
        drop(f);
        assert!(
            eventually(Duration::from_secs(10), || shape(&shared.current().config)
                == (k, Some(format!("{k}s")))),
            "round {k} not applied"
        );
    }
    for v in shared.versions() {
        let (weight, connect) = shape(&v.config);
        assert_eq!(
            connect,
            Some(format!("{weight}s")),
            "version {} from {} holds a half-written file",
            v.version,
            v.source
        );
    }
}
