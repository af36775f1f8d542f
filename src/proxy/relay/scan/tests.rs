//! The scan against httparse on generated heads: wherever the scan says a head is complete or
//! partial, httparse (with the relay's settings) must say the same, with the same lines.

use super::*;

/// Pieces heads are made of: well-formed parts, and the bytes that make heads malformed.
const PIECES: &[&[u8]] = &[
    b"Host",
    b"content-length",
    b"X-Id",
    b"a",
    b"Z9",
    b"!#$%&'*+-.^_`|~",
    b":",
    b": ",
    b" ",
    b"\t",
    b"\r\n",
    b"\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"v",
    b"value with spaces",
    b"0",
    b"\x7f",
    b"\x00",
    b"\x0b",
    b"\x80\xff",
    b"\xc3\xa9",
    b"(",
    b"\"",
    b"/",
    b"?",
    b"=",
    b"@",
];

fn line(rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
    if rng.u8(..10) < 7 {
        // Mostly a plausible line, sometimes spoiled below.
        out.extend_from_slice(PIECES[rng.usize(..6)]);
        out.extend_from_slice(if rng.bool() { b": " } else { b":" });
        for _ in 0..rng.usize(0..4) {
            out.extend_from_slice(
                [b"v".as_slice(), b"x y", b"\t", b" ", b"12345678abc"][rng.usize(..5)],
            );
        }
        out.extend_from_slice(b"\r\n");
    }
    if rng.u8(..10) < 2 {
        for _ in 0..rng.usize(1..3) {
            out.extend_from_slice(PIECES[rng.usize(..PIECES.len())]);
        }
    }
}

fn head(rng: &mut fastrand::Rng, start: &[&[u8]]) -> Vec<u8> {
    let mut out = start[rng.usize(..start.len())].to_vec();
    for _ in 0..rng.usize(0..6) {
        line(rng, &mut out);
    }
    if rng.u8(..10) < 8 {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"body");
    let cut = rng.usize(..=out.len());
    if rng.bool() {
        out.truncate(cut);
    }
    out
}

fn same_fields(buf: &[u8], ours: &[Field], theirs: &[httparse::Header]) {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{:?}",
        String::from_utf8_lossy(buf)
    );
    for (f, h) in ours.iter().zip(theirs) {
        assert_eq!(f.name(buf), h.name.as_bytes());
        assert_eq!(f.value(buf), h.value, "{:?}", String::from_utf8_lossy(buf));
    }
}

/// Generates 50,000 heads from `starts` and the pieces. `check` scans each, checks the lines
/// of a complete one against httparse's, and returns what the scan said with what httparse
/// said; here the two must agree on complete (with the head's length) and on partial, and
/// enough heads must be of each kind for the comparison to mean something.
fn agree(seed: u64, starts: &[&[u8]], check: impl Fn(&[u8]) -> (Scan, httparse::Result<usize>)) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut complete, mut partial) = (0, 0);
    for _ in 0..50_000 {
        let buf = head(&mut rng, starts);
        let (ours, theirs) = check(&buf);
        let want = match ours {
            Scan::Complete(n, _) => {
                complete += 1;
                httparse::Status::Complete(n)
            }
            Scan::Partial => {
                partial += 1;
                httparse::Status::Partial
            }
            Scan::Unusual => continue,
        };
        assert_eq!(theirs, Ok(want), "{:?}", String::from_utf8_lossy(&buf));
    }
    assert!(
        complete > 2_000 && partial > 2_000,
        "{complete} complete, {partial} partial"
    );
}

#[test]
fn the_scan_agrees_with_httparse() {
    let starts: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"POST /a?b=c HTTP/1.1\r\n",
        b"GET /\x80 HTTP/1.1\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET / HTTP/1.0\r\n",
        b"G(T / HTTP/1.1\r\n",
        b"\r\nGET / HTTP/1.1\r\n",
        b"GET /x HTTP/1.1\n",
    ];
    agree(4, starts, |buf| {
        let mut theirs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut theirs);
        let r = req.parse(buf);
        let mut slots = slots();
        let (m, t, te, end) = match request_line(buf) {
            Ok(line) => line,
            Err(s) => return (s, r),
        };
        let ours = fields(buf, end, &mut slots);
        if let Scan::Complete(_, count) = ours {
            assert_eq!(req.method.unwrap().as_bytes(), &buf[..m]);
            assert_eq!(req.path.unwrap().as_bytes(), &buf[t..te]);
            assert_eq!(req.version, Some(1));
            same_fields(buf, written(&slots, count), req.headers);
        }
        (ours, r)
    });
}

#[test]
fn the_response_scan_agrees_with_httparse() {
    let starts: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\n",
        b"HTTP/1.1 204 \r\n",
        b"HTTP/1.1 200\r\n",
        b"HTTP/1.1 200 \xc3\xa9\r\n",
        b"HTTP/1.0 200 OK\r\n",
        b"HTTP/1.1 2000 OK\r\n",
        b"HTTP/1.1 2x0 OK\r\n",
        b"HTTP/1.1 20 OK\r\n",
        b"HTTP/1.1 200 OK\n",
    ];
    agree(5, starts, |buf| {
        let mut theirs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut theirs);
        let r = resp.parse(buf);
        let mut slots = slots();
        let (status, end) = match status_line(buf) {
            Ok(line) => line,
            Err(s) => return (s, r),
        };
        let ours = fields(buf, end, &mut slots);
        if let Scan::Complete(_, count) = ours {
            assert_eq!(resp.code, Some(status));
            assert_eq!(resp.version, Some(1));
            let line = format!("HTTP/1.1 {status} {}\r\n", resp.reason.unwrap());
            assert_eq!(&buf[..end], line.as_bytes());
            same_fields(buf, written(&slots, count), resp.headers);
        }
        (ours, r)
    });
}

#[test]
fn lines_copied_as_they_came_go_out_in_runs() {
    let buf = b"GET / HTTP/1.1\r\nA: 1\r\nB:  2 \r\nC: 3\r\n\r\n";
    let (.., end) = request_line(buf).unwrap();
    let mut slots = slots();
    let Scan::Complete(len, n) = fields(buf, end, &mut slots) else {
        panic!("complete")
    };
    assert_eq!(len, buf.len());
    let f = written(&slots, n);
    assert_eq!(f[1].value(buf), b"2");
    let (mut out, mut c) = (Vec::new(), Copier::new(end));
    c.keep(&mut out, buf, &f[0]);
    c.keep(&mut out, buf, &f[2]);
    c.flush(&mut out, buf);
    assert_eq!(out, b"GET / HTTP/1.1\r\nA: 1\r\nC: 3\r\n");
}

#[test]
fn a_value_is_checked_whole_eight_bytes_at_a_time() {
    for bad in [0u8, 0x0b, 0x7f, b'\n'] {
        for at in 0..20 {
            let mut buf = b"GET / HTTP/1.1\r\nX: ".to_vec();
            let v: Vec<u8> = (0..20).map(|i| if i == at { bad } else { b'a' }).collect();
            buf.extend_from_slice(&v);
            buf.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                fields(&buf, 16, &mut slots()),
                Scan::Unusual,
                "{bad:#x} at {at}"
            );
        }
    }
    let buf = b"X: a\tb\xff\x80c d\r\n\r\n";
    assert_eq!(fields(buf, 0, &mut slots()), Scan::Complete(buf.len(), 1));
}
