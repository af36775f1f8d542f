//! Request paths put in one form before they are routed (RFC 3986 §6.2.2): percent-encoded
//! unreserved characters decoded (`%61dmin` is `admin`), dot segments resolved (`/x/../admin/`
//! is `/admin/`). Routes, `ip_allow` and `auth` then judge the path the backend will act on,
//! and the backend gets the same form (Envoy's `normalize_path`): otherwise a request for a
//! guarded prefix, spelled another way, would take an unguarded route and still be served the
//! guarded path by a backend that resolves it. A path that climbs above the root is refused
//! (400), as NGINX does, and so is a `%` that escapes nothing.
//!
//! A dot segment with `;` parameters (`..;x`, which Tomcat and Jetty read as `..`) is refused
//! too. With a listener's `ambiguous_paths = "reject"`, so are encoded slashes and backslashes,
//! `\` and empty segments, which backends read in different ways.
//!
//! Otherwise left as they are: empty segments (`//`, which RFC 3986 does not merge and some APIs
//! use), encoded reserved characters (`%2F` is not `/`), case in other escapes, and the query.

/// Whether `path` has anything [`normalize`] would change or refuse (with `strict`, the
/// listener's `ambiguous_paths = "reject"`, also the spellings that refuses): one scan, no
/// allocation; most paths have neither a `%` nor a segment of dots.
pub fn needed(path: &[u8], strict: bool) -> bool {
    let mut i = 0;
    let mut seg_start = 0;
    while i < path.len() {
        match path[i] {
            // An escape to decode, or a `%` that escapes nothing (refused by `normalize`).
            b'%' if decoded_unreserved(path, i).is_some() || !escapes(path, i) => return true,
            b'%' if strict && slash_escape(path, i) => return true,
            b'/' => {
                if is_dots(&path[seg_start..i]) {
                    return true;
                }
                // An empty segment (`//`), but not the root's own slash.
                if strict && i > 0 && seg_start == i {
                    return true;
                }
                seg_start = i + 1;
            }
            // A dot segment with parameters (`..;x`), which Tomcat and Jetty read as a dot
            // segment: refused by `normalize`.
            b';' if is_dots(&path[seg_start..i]) => return true,
            b'\\' if strict => return true,
            _ => {}
        }
        i += 1;
    }
    is_dots(&path[seg_start..])
}

/// The normalized form of `path` (which starts with `/`). None: it is refused, because it
/// climbs above the root, has a `%` that escapes nothing or a dot segment with parameters, or
/// (with `strict`) an encoded slash or backslash, a `\` or an empty segment.
pub fn normalize(path: &str, strict: bool) -> Option<String> {
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(c) = decoded_unreserved(b, i) {
                decoded.push(c);
                i += 3;
                continue;
            }
            // A lone `%` (`%zz`, `%2%65`) is refused, as NGINX does: kept, it could be joined
            // with what decoding leaves after it into an escape a backend decodes again.
            if !escapes(b, i) || (strict && slash_escape(b, i)) {
                return None;
            }
        }
        if strict && b[i] == b'\\' {
            return None;
        }
        decoded.push(b[i]);
        i += 1;
    }
    // Decoding only turned `%XX` escapes into ASCII: still UTF-8 if the input was.
    let decoded = String::from_utf8(decoded).ok()?;
    let rest = decoded.strip_prefix('/').unwrap_or(&decoded);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (k, seg) in segments.iter().enumerate() {
        if seg
            .split_once(';')
            .is_some_and(|(name, _)| is_dots(name.as_bytes()))
        {
            return None;
        }
        if strict && seg.is_empty() && k < last {
            return None;
        }
        match *seg {
            "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
        // `/a/b/..` is `/a/`: a dot segment at the end leaves a directory.
        if k == last && (*seg == "." || *seg == "..") {
            out.push("");
        }
    }
    Some(format!("/{}", out.join("/")))
}

/// Whether the escape at `at` encodes a slash or a backslash (`%2F`, `%5C`, any case).
fn slash_escape(b: &[u8], at: usize) -> bool {
    matches!(
        (b.get(at + 1), b.get(at + 2).map(u8::to_ascii_uppercase)),
        (Some(b'2'), Some(b'F')) | (Some(b'5'), Some(b'C'))
    )
}

/// Whether the `%` at `at` starts an escape: two hex digits follow.
fn escapes(b: &[u8], at: usize) -> bool {
    b.get(at + 1).is_some_and(u8::is_ascii_hexdigit)
        && b.get(at + 2).is_some_and(u8::is_ascii_hexdigit)
}

fn is_dots(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// The character `%XX` at `at` encodes, if it is an unreserved one (RFC 3986 §2.3).
fn decoded_unreserved(b: &[u8], at: usize) -> Option<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    let (h, l) = (hex(*b.get(at + 1)?)?, hex(*b.get(at + 2)?)?);
    let c = (h * 16 + l) as u8;
    (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_unreserved_escapes_are_resolved_and_nothing_else_is_touched() {
        for (path, want) in [
            ("/x/../admin/", "/admin/"),
            ("/./admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/%61dmin/", "/admin/"),
            ("/x/%2e%2E/admin", "/admin"),
            ("/a/%2F/b", "/a/%2F/b"),
            ("/a//b", "/a//b"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b/", "/a/..b/"),
        ] {
            assert_eq!(
                needed(path.as_bytes(), false),
                path != want,
                "needed({path:?})"
            );
            assert_eq!(normalize(path, false).as_deref(), Some(want), "{path:?}");
        }
        for above in [
            "/..",
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/x",
            "/x/%2%65%2%65/a",
            "/%zz",
            "/a%",
            "/a%4",
            "/public/..;/admin",
            "/a/.;x/b",
            "/a/%2e%2e;x/b",
        ] {
            assert!(needed(above.as_bytes(), false), "{above}");
            assert_eq!(normalize(above, false), None, "{above}");
        }
        assert!(!needed(b"/", false) && !needed(b"/api/v1/users", false));
        // Normalized once is normalized: nothing a second pass would change.
        for p in ["/x/%2e%2E/admin", "/%2561dmin", "/a/%2F/../b"] {
            let once = normalize(p, false).unwrap();
            assert!(!needed(once.as_bytes(), false), "{p} -> {once}");
        }
    }

    #[test]
    fn strict_refuses_what_backends_read_as_separators_and_keeps_the_rest() {
        for p in [
            "/a/%2F/b",
            "/a%2fb",
            "/a/%5c..%5cadmin",
            "/a\\b",
            "//admin",
            "/a//b",
        ] {
            assert!(
                !needed(p.as_bytes(), false) || normalize(p, false).is_some(),
                "{p}"
            );
            assert!(needed(p.as_bytes(), true), "{p}");
            assert_eq!(normalize(p, true), None, "{p}");
        }
        for p in ["/", "/a/", "/a/b;v=1/c", "/a%20b", "/a/%3F"] {
            assert!(!needed(p.as_bytes(), true), "{p}");
            assert_eq!(normalize(p, true).as_deref(), Some(p), "{p}");
        }
    }
}
