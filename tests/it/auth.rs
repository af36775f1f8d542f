//! A route's `auth`: each request is put to an auth upstream first (NGINX's `auth_request`,
//! Traefik's `forwardAuth`). The auth service and the application are scripted over raw sockets
//! so every header each of them is sent is known.

use crate::relay::{scripted, Seen};
use crate::support::*;
use std::net::SocketAddr;

/// The auth service: a good bearer token is allowed (naming its user), a "login" token is sent
/// to a login page, anything else is refused.
fn verdict(req: &str) -> (Vec<u8>, bool) {
    let lower = req.to_ascii_lowercase();
    let r = if lower.contains("\r\nauthorization: bearer good\r\n") {
        "HTTP/1.1 200 OK\r\nX-User-Id: alice\r\nX-Auth-Internal: 1\r\nSet-Cookie: _auth=fresh\r\nContent-Length: 2\r\n\r\nok"
    } else if lower.contains("\r\nauthorization: bearer login\r\n") {
        "HTTP/1.1 302 Found\r\nLocation: https://login.example/?rd=x\r\nSet-Cookie: flow=1; HttpOnly\r\nContent-Length: 0\r\n\r\n"
    } else {
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"app\"\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nlogin required"
    };
    (r.as_bytes().to_vec(), false)
}

/// The application: echoes the request body.
fn app(req: &str) -> (Vec<u8>, bool) {
    let body = req.split("\r\n\r\n").nth(1).unwrap_or("");
    let r = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    (r.into_bytes(), false)
}

fn config_for(authz: SocketAddr, app: SocketAddr, log: &std::path::Path) -> String {
    let dead = free_port();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [log]\naccess = \"json\"\naccess_file = {:?}\n\
         [upstreams.app]\nbackends = [{{ address = \"{app}\" }}]\n\
         [upstreams.authz]\nbackends = [{{ address = \"{authz}\" }}]\n\
         [upstreams.gone]\nbackends = [{{ address = \"127.0.0.1:{dead}\" }}]\n\
         [[routes]]\npath_prefix = \"/strict/\"\nupstream = \"app\"\n\
         auth = {{ upstream = \"authz\", path = \"/verify?from=strict\", request_headers = [\"authorization\"] }}\n\
         [[routes]]\npath_prefix = \"/down/\"\nupstream = \"app\"\nauth = {{ upstream = \"gone\", path = \"/verify\" }}\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n\
         auth = {{ upstream = \"authz\", path = \"/verify\", response_headers = [\"x-user-id\"], client_headers = [\"set-cookie\"] }}\n",
        log.display().to_string()
    )
}

fn last(seen: &Seen) -> Option<String> {
    seen.lock().unwrap().last().map(|r| r.to_ascii_lowercase())
}

#[test]
fn a_route_asks_its_auth_upstream_first_and_only_allowed_requests_reach_the_backend() {
    let (authz, asked) = scripted(verdict);
    let (backend, served) = scripted(app);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&config_for(authz, backend, &log));
    let c = client();

    // Allowed: the body reaches the backend with the auth service's user, never the client's.
    let r = c
        .post(lb.url("/api/orders?page=2"))
        .header("authorization", "Bearer good")
        .header("x-user-id", "mallory")
        .header("cookie", "session=abc")
        .header("x-request-id", "req-1")
        .body("order=7")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The allowing answer's cookie reaches the client; its other headers do not.
    assert_eq!(r.headers()["set-cookie"], "_auth=fresh");
    assert!(r.headers().get("x-auth-internal").is_none());
    assert_eq!(r.text().unwrap(), "order=7");
    let q = last(&asked).expect("the auth service was asked");
    assert!(q.starts_with("get /verify http/1.1\r\n"), "{q}");
    for line in [
        "authorization: bearer good",
        "cookie: session=abc",
        "x-forwarded-method: post",
        "x-forwarded-uri: /api/orders?page=2",
        "x-forwarded-proto: http",
        "x-forwarded-for: 127.0.0.1",
        "x-request-id: req-1",
    ] {
        assert!(q.contains(&format!("\r\n{line}\r\n")), "{line} in {q}");
    }
    assert!(q.contains("\r\nx-forwarded-host: 127.0.0.1:"), "{q}");
    // The question has no body.
    assert!(
        !q.contains("content-length: 7") && !q.contains("order=7"),
        "{q}"
    );
    let s = last(&served).expect("the backend got the request");
    assert!(s.starts_with("post /api/orders?page=2 "), "{s}");
    assert!(s.contains("\r\nx-user-id: alice\r\n"), "{s}");
    assert!(
        !s.contains("mallory") && !s.contains("x-auth-internal"),
        "{s}"
    );
    assert!(s.contains("\r\nx-request-id: req-1\r\n"), "{s}");

    // Refused: the auth service's answer is the client's, hop-by-hop fields dropped, and the
    // backend never sees the request.
    let before = served.lock().unwrap().len();
    let r = c.get(lb.url("/api/orders")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"app\"");
    assert!(r.headers().get("x-hop").is_none());
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.text().unwrap(), "login required");
    assert_eq!(
        served.lock().unwrap().len(),
        before,
        "a refused request reached the backend"
    );
    // A refused request's unread body is never taken for the next request on its connection.
    let out = raw_all(
        lb.addr,
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /api/y HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer good\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 401 "), "{out}");
    // hyper's server reads the body past, and the next request is the one after it.
    assert!(out.contains("login requiredHTTP/1.1 200 OK\r\n"), "{out}");
    let s = last(&served).unwrap();
    assert!(s.starts_with("get /api/y "), "{s}");
    assert!(!served
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.contains("smuggled")));
    let before = served.lock().unwrap().len();
    // A redirect to log in, with its cookie.
    let r = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(lb.url("/api/orders"))
        .header("authorization", "Bearer login")
        .send()
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://login.example/?rd=x");
    assert_eq!(r.headers()["set-cookie"], "flow=1; HttpOnly");
    assert_eq!(
        served.lock().unwrap().len(),
        before,
        "refused requests reached the backend"
    );

    // HTTP/2 clients are asked about the same way.
    let r = h2c_client()
        .get(lb.url("/h2"))
        .header("authorization", "Bearer good")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(last(&asked)
        .unwrap()
        .contains("\r\nx-forwarded-uri: /h2\r\n"));
    assert_eq!(served.lock().unwrap().len(), before + 1);

    // Only the listed headers go with the question, and to its own path.
    c.get(lb.url("/strict/x"))
        .header("authorization", "Bearer good")
        .header("cookie", "session=abc")
        .send()
        .unwrap();
    let q = last(&asked).unwrap();
    assert!(q.starts_with("get /verify?from=strict "), "{q}");
    assert!(
        q.contains("\r\nauthorization: bearer good\r\n") && !q.contains("cookie"),
        "{q}"
    );

    // An auth service that cannot answer lets nothing through: Switchyard's own 5xx.
    let before = served.lock().unwrap().len();
    let r = c
        .get(lb.url("/down/x"))
        .header("authorization", "Bearer good")
        .send()
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    assert!(r.headers().contains_key("x-switchyard-error"));
    assert_eq!(served.lock().unwrap().len(), before);

    let metrics = c
        .get(lb.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    // At least: the counters are the process's, and other tests run beside this one.
    for (result, n) in [("allowed", 4), ("denied", 3), ("error", 1)] {
        let name = format!("switchyard_auth_requests_total{{result=\"{result}\"}} ");
        let got: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .unwrap_or_else(|| panic!("{name} in metrics"))
            .parse()
            .unwrap();
        assert!(got >= n, "{name}{got}");
    }
    let lines = access_lines(&log, 8);
    let said: Vec<_> = lines.iter().map(|l| l["auth"].as_str().unwrap()).collect();
    assert_eq!(
        said,
        ["allowed", "denied", "denied", "allowed", "denied", "allowed", "allowed", "error"]
    );
    assert_eq!(lines[1]["status"], 401);
    // A denial names who refused: the auth upstream and its backend.
    assert_eq!(lines[1]["upstream"], "authz", "{}", lines[1]);
    assert!(lines[1]["backend"].is_string(), "{}", lines[1]);
}

#[test]
fn a_bad_auth_is_refused_by_field_path_and_nothing_is_applied() {
    let (authz, _) = scripted(verdict);
    let (backend, _) = scripted(app);
    let dir = tempfile::tempdir().unwrap();
    let good = config_for(authz, backend, &dir.path().join("a.log"));
    let lb = start(&good);
    let bad = good.replace(
        "auth = { upstream = \"authz\", path = \"/verify\", response_headers = [\"x-user-id\"], client_headers = [\"set-cookie\"] }",
        "auth = { upstream = \"nobody\", path = \"verify\", request_headers = [\"bad name\"], response_headers = [\"content-length\", \"x-user-id\"], client_headers = [\"set-cookie\", \"connection\"] }",
    );
    assert_ne!(bad, good);
    let paths = refused_paths(&lb, &bad);
    assert_eq!(
        paths,
        [
            "routes[2].auth.upstream",
            "routes[2].auth.path",
            "routes[2].auth.request_headers[0]",
            "routes[2].auth.response_headers[0]",
            "routes[2].auth.client_headers[1]",
        ]
    );
    // Still asking the auth service.
    assert_eq!(client().get(lb.url("/x")).send().unwrap().status(), 401);
}

/// What the auth service judges by, and what its allowing answer sets, are Switchyard's to
/// say: a client cannot point the question at another URL or address, nor forge or remove the
/// identity header, by header, `Connection` or trailer.
#[test]
fn a_client_can_neither_steer_the_question_nor_forge_the_answer() {
    let (authz, asked) = scripted(verdict);
    let (backend, served) = scripted(app);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&config_for(authz, backend, &log));

    // Headers an auth service reads to learn the request and its client: replaced.
    let out = raw_all(
        lb.addr,
        b"GET /api/admin?x=1 HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer good\r\n\
          X-Original-URL: https://public.example/\r\nX-Original-Method: GET\r\n\
          X-Forwarded-For: 10.0.0.1\r\nX-Real-IP: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\
          X-Forwarded-Prefix: /public\r\nConnection: x-user-id\r\nX-User-Id: mallory\r\n\
          Connection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let q = last(&asked).unwrap();
    for line in [
        "x-original-url: http://app.test/api/admin?x=1",
        "x-original-method: get",
        "x-forwarded-for: 127.0.0.1",
    ] {
        assert!(q.contains(&format!("\r\n{line}\r\n")), "{line} in {q}");
    }
    for gone in ["public", "10.0.0.1", "forwarded:", "x-real-ip"] {
        assert!(!q.contains(gone), "{gone} in {q}");
    }
    // The client's `Connection: x-user-id` did not take away the user the answer named.
    let s = last(&served).unwrap();
    assert!(
        s.contains("\r\nx-user-id: alice\r\n") && !s.contains("mallory"),
        "{s}"
    );

    // A trailer under the name the answer sets is dropped; the body and other trailers pass.
    let out = raw_all(
        lb.addr,
        b"POST /api/upload HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer good\r\n\
          Transfer-Encoding: chunked\r\nTrailer: x-user-id, x-sum\r\nConnection: close\r\n\r\n\
          4\r\ndata\r\n0\r\nx-user-id: admin\r\nx-sum: 9\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let s = last(&served).unwrap();
    assert!(s.contains("\r\n\r\n4\r\ndata\r\n0\r\n"), "{s}");
    assert!(
        s.contains("\r\nx-sum: 9\r\n") && !s.contains("admin"),
        "{s}"
    );

    // A HEAD refused gets the refusal's head, and its line in the log has no error.
    let out = raw_all(
        lb.addr,
        b"HEAD /api/admin HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(
        out.ends_with("\r\n\r\n"),
        "no body after a HEAD's head: {out}"
    );
    let lines = access_lines(&log, 3);
    assert_eq!(lines[2]["auth"], "denied", "{}", lines[2]);
    assert!(lines[2].get("error").is_none(), "{}", lines[2]);
}

/// A guarded prefix spelled another way (dot segments, escaped letters) is still the guarded
/// prefix: routes judge the normalized path, and the backend gets that same path.
#[test]
fn a_guarded_prefix_cannot_be_reached_by_spelling_its_path_another_way() {
    let (authz, asked) = scripted(verdict);
    let (backend, served) = scripted(app);
    let lb = start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
         [upstreams.app]\nbackends = [{{ address = \"{backend}\" }}]\n\
         [upstreams.authz]\nbackends = [{{ address = \"{authz}\" }}]\n\
         [[routes]]\npath_prefix = \"/admin/\"\nupstream = \"app\"\nauth = {{ upstream = \"authz\", path = \"/verify\" }}\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\nambiguous_paths = \"reject\"\n"
    ));
    let strict = lb.running().listeners[1];
    let get_at = |addr, target: &str| {
        let out = raw_all(
            addr,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        out.split(' ').nth(1).unwrap_or("").to_string()
    };
    let get = |target: &str| get_at(lb.addr, target);
    for sneaky in [
        "/x/../admin/panel",
        "/%61dmin/panel",
        "/./admin/panel",
        "/admin/x/../panel",
    ] {
        assert_eq!(get(sneaky), "401", "{sneaky}");
        assert!(last(&asked)
            .unwrap()
            .contains("\r\nx-forwarded-uri: /admin/panel\r\n"));
    }
    assert!(
        served.lock().unwrap().is_empty(),
        "a guarded path reached the backend"
    );
    // Out of the guarded prefix: the open route, and the backend gets the path it was judged by.
    assert_eq!(get("/admin/../public/./a?x=../y"), "200");
    assert!(last(&served).unwrap().starts_with("get /public/a?x=../y "));
    assert_eq!(get("/%7Euser/%2F"), "200");
    assert!(last(&served).unwrap().starts_with("get /~user/%2f "));
    // Above the root: refused, as NGINX does; so is a `%` that escapes nothing, which could
    // be joined with what decoding leaves into an escape decoded later (`%2%65` → `%2e`).
    assert_eq!(get("/../etc/passwd"), "400");
    assert_eq!(get("/a/%2e%2e/%2e%2e/etc"), "400");
    assert_eq!(get("/x/%2%65%2%65/admin/panel"), "400");
    assert_eq!(get("/x/%zz"), "400");
    // A dot segment with parameters, which Tomcat reads as `..`: refused everywhere.
    assert_eq!(get("/public/..;/admin/panel"), "400");
    assert_eq!(served.lock().unwrap().len(), 2);
    // Spellings backends read as separators pass on a default listener (documented), and are
    // refused on one with `ambiguous_paths = "reject"`, on the relay and on hyper's path.
    for ambiguous in [
        "/public%2F..%2Fadmin/panel",
        "//admin/panel",
        "/public\\..\\admin\\panel",
    ] {
        assert_eq!(get_at(strict, ambiguous), "400", "{ambiguous}");
        let chunked = raw_all(
            strict,
            format!("POST {ambiguous} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n").as_bytes(),
        );
        assert!(
            chunked.starts_with("HTTP/1.1 400 "),
            "{ambiguous}: {chunked}"
        );
    }
    assert_eq!(get_at(strict, "/public/a;v=1"), "200");
    assert_eq!(
        get("//admin/panel"),
        "200",
        "the default keeps empty segments"
    );
    assert_eq!(served.lock().unwrap().len(), 4);
    // A fragment (which clients never send) does not hide dot segments from the fast path.
    let open_then_dots = get("/public/..#/admin/panel");
    assert!(
        open_then_dots == "400" || open_then_dots == "200",
        "{open_then_dots}"
    );
    if open_then_dots == "200" {
        assert!(
            last(&served).unwrap().starts_with("get / "),
            "resolved as hyper does"
        );
    }
}

/// An auth service that breaks off: before a status line is whole, with nothing at all, or in
/// the body of a refusal.
fn dying(req: &str) -> (Vec<u8>, bool) {
    let lower = req.to_ascii_lowercase();
    let r: &[u8] = if lower.contains("\r\nx-die: head\r\n") {
        b"HTTP/1.1 20"
    } else if lower.contains("\r\nx-die: body\r\n") {
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\n\r\nlogin"
    } else {
        b""
    };
    (r.to_vec(), true)
}

#[test]
fn an_auth_service_that_dies_mid_answer_lets_nothing_through() {
    let (authz, asked) = scripted(dying);
    let (backend, served) = scripted(app);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let lb = start(&config_for(authz, backend, &log));
    let c = client();
    for die in ["head", "silent"] {
        let r = c
            .post(lb.url("/api/orders"))
            .header("x-die", die)
            .body("order=7")
            .send()
            .unwrap();
        // Switchyard's own error, never the request let through on a broken answer.
        assert_eq!(r.status(), 502, "{die}");
        assert!(r.headers().contains_key("x-switchyard-error"), "{die}");
    }
    // A refusal whose body breaks off is still a refusal: its status reaches the client, and
    // the body ends short (hyper would drop the head it held if the error reached it at once).
    let r = client()
        .get(lb.url("/api/orders"))
        .header("x-die", "body")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().is_err(), "the body is cut, not completed");
    assert_eq!(asked.lock().unwrap().len(), 3);
    assert!(served.lock().unwrap().is_empty(), "the backend saw nothing");
    let lines = access_lines(&log, 3);
    let said: Vec<_> = lines.iter().map(|l| l["auth"].as_str().unwrap()).collect();
    assert_eq!(said, ["error", "error", "denied"]);
    assert_eq!(lines[0]["upstream"], "authz", "{}", lines[0]);
}
