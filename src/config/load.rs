//! Reading a configuration from text: TOML (or JSON), unknown keys collected rather than fatal,
//! then [`validate`]; every problem is located at `FILE:LINE:COL` when the source is a file.
//!
//! Unknown keys are reported all together (via `serde_ignored`) instead of stopping at the
//! first, so one `check` run shows everything an operator has to fix.

use super::schema::Config;
use super::validate::{validate, Problem};
use std::path::Path;

/// The text format of a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    pub fn of_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Toml,
        }
    }
}

/// Why a configuration was refused: every problem found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem::new(path, message)],
        }
    }
}

/// Parses and validates; `origin` (a file name) is used to locate problems as FILE:LINE:COL.
pub fn parse_config(
    text: &str,
    format: Format,
    origin: Option<&str>,
) -> Result<Config, ConfigError> {
    let mut unknown = Vec::new();
    let parsed: Result<Config, (String, Option<std::ops::Range<usize>>)> = match format {
        Format::Toml => match toml::de::Deserializer::parse(text) {
            Ok(de) => serde_ignored::deserialize(de, |p| unknown.push(path_of(&p)))
                .map_err(|e: toml::de::Error| (e.message().to_string(), e.span())),
            Err(e) => Err((e.message().to_string(), e.span())),
        },
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_ignored::deserialize(&mut de, |p| unknown.push(path_of(&p))).map_err(
                |e: serde_json::Error| {
                    let off = offset_of(text, e.line(), e.column());
                    (e.to_string(), Some(off..off))
                },
            )
        }
    };
    let (cfg, mut problems) = match parsed {
        Ok(c) => {
            let mut problems = unknown_keys(unknown);
            problems.extend(validate(&c));
            (c, problems)
        }
        Err((msg, span)) => match typed_problems(text, format) {
            Some(found) => found,
            // Not even a tree of values: a syntax error, located by the parser's span.
            None => {
                let mut p = Problem::new("", msg);
                if let Some(s) = span {
                    p.place(origin, &LineIndex::new(text), text, s.start);
                }
                return Err(ConfigError { problems: vec![p] });
            }
        },
    };
    if problems.is_empty() {
        return Ok(cfg);
    }
    locate(&mut problems, text, format, origin);
    Err(ConfigError { problems })
}

fn unknown_keys(paths: Vec<String>) -> Vec<Problem> {
    paths
        .into_iter()
        .map(|path| Problem::new(path, "unknown key"))
        .collect()
}

/// At most this many values of the wrong type or form are reported from one text.
const MAX_TYPE_PROBLEMS: usize = 64;

/// Every value of the wrong type or form in a text that is syntactically sound, each with its
/// field path (see [`deserialize_every`]). The configuration left (with defaults where values
/// were cut) is then validated, and its problems kept where they do not concern a value
/// already reported. `None`: the text is not even a tree of values (a syntax error).
fn typed_problems(text: &str, format: Format) -> Option<(Config, Vec<Problem>)> {
    let tree: serde_json::Value = match format {
        Format::Toml => serde_json::to_value(text.parse::<toml::Table>().ok()?).ok()?,
        Format::Json => serde_json::from_str(text).ok()?,
    };
    let Every {
        rest: cfg,
        problems: typed,
        unknown,
        cuts,
    } = deserialize_every::<Config>(tree);
    // Nothing of the wrong type after all (a duplicate key, which the tree of values cannot
    // hold, fails only the direct parse): the caller reports the parser's own error.
    if typed.is_empty() {
        return None;
    }
    let mut problems = unknown_keys(unknown);
    let related = |p: &str| {
        typed
            .iter()
            .any(|t| nested(p, &t.path) || nested(&t.path, p))
    };
    // Validated only if what was left deserialized; otherwise defaults would stand in for
    // whole sections and be reported as missing.
    let semantic: Vec<Problem> = cfg
        .as_ref()
        .map(validate)
        .unwrap_or_default()
        .into_iter()
        .map(|mut p| {
            p.path = cuts.original(&p.path);
            p
        })
        .filter(|p| !related(&p.path))
        .collect();
    let cfg = cfg.unwrap_or_default();
    problems.extend(typed);
    problems.extend(semantic);
    Some((cfg, problems))
}

/// What [`deserialize_every`] found in a tree of values.
pub struct Every<T> {
    /// What is left once every wrong value is cut out, deserialized (defaults stand where values
    /// were cut); `None` if even that failed.
    pub rest: Option<T>,
    /// Every value of the wrong type or form, by its path in the text.
    pub problems: Vec<Problem>,
    /// Unknown keys, by their paths in the text, sorted.
    pub unknown: Vec<String>,
    /// How paths in `rest` translate to paths in the text.
    pub cuts: Cuts,
}

/// Deserializes `tree` as a `T`, finding every value of the wrong type or form rather than
/// only the first: deserialization stops at the first, so each one found is recorded and cut
/// out of the tree, and the rest deserialized again. Used for a whole configuration and for
/// the admin API's other bodies, so both report alike.
pub fn deserialize_every<T: serde::de::DeserializeOwned>(mut tree: serde_json::Value) -> Every<T> {
    use serde::de::IntoDeserializer;
    let mut typed: Vec<Problem> = Vec::new();
    let mut unknown = Vec::new();
    let mut cut: Vec<String> = Vec::new();
    let mut cuts = Cuts::default();
    let rest = loop {
        let mut seen = Vec::new();
        let mut note = |p: serde_ignored::Path<'_>| seen.push(path_of(&p));
        let de = serde_ignored::Deserializer::new(tree.clone().into_deserializer(), &mut note);
        let result = serde_path_to_error::deserialize::<_, T>(de);
        unknown.extend(seen.iter().map(|p| cuts.original(p)));
        let err = match result {
            Ok(v) => break Some(v),
            Err(e) => e,
        };
        let path = cuts.original(&path_text(err.path()));
        let message = err.inner().to_string();
        // A required field cut out above shows up again as missing from its parent: that is
        // the same problem, already reported.
        let recut = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .is_some_and(|f| cut.contains(&join(&path, f)));
        if !recut {
            typed.push(Problem::new(path.clone(), message));
        }
        if path.is_empty() || typed.len() >= MAX_TYPE_PROBLEMS || !prune(&mut tree, err.path()) {
            break None;
        }
        cuts.removed(&path);
        cut.push(path);
    };
    unknown.sort();
    unknown.dedup();
    Every {
        rest,
        problems: typed,
        unknown,
        cuts,
    }
}

/// The array elements cut out of the tree so far, by the array's path and their indexes as
/// first read: problems found later are found in the cut tree, and their paths are translated
/// back to the indexes the operator wrote.
#[derive(Default)]
pub struct Cuts(std::collections::HashMap<String, Vec<usize>>);

impl Cuts {
    /// `path` in the cut tree, as a path in the text.
    pub fn original(&self, path: &str) -> String {
        let mut out = String::new();
        for seg in segments(path) {
            match seg {
                Seg::Key(k) => out = join(&out, k),
                Seg::Index(i) => {
                    let first = self.original_index(&out, i);
                    out = format!("{out}[{first}]");
                }
            }
        }
        out
    }

    /// Element `i` of the array at `array` (a path in the text) in the cut tree, as an index in
    /// the text.
    pub fn original_index(&self, array: &str, i: usize) -> usize {
        let gone = self.0.get(array).map_or(&[][..], Vec::as_slice);
        (0..).filter(|j| !gone.contains(j)).nth(i).unwrap_or(i)
    }

    /// Notes that the value at `path` (a path in the text) was cut out.
    fn removed(&mut self, path: &str) {
        let element = path.strip_suffix(']').and_then(|p| p.rsplit_once('['));
        if let Some((array, Ok(i))) = element.map(|(a, i)| (a, i.parse::<usize>())) {
            self.0.entry(array.to_string()).or_default().push(i);
        }
    }
}

/// A deserializer's path as this module writes field paths (`a.b[0].c`; the root is empty).
pub fn path_text(p: &serde_path_to_error::Path) -> String {
    match p.to_string() {
        p if p == "." => String::new(),
        p => p,
    }
}

/// Whether the field path `inner` is `outer` or lies under it (`a.b[1]` is under `a.b` and
/// `a`, not under `a.b[10]`'s sibling `a.b[1` nor `a.bc`).
fn nested(inner: &str, outer: &str) -> bool {
    inner.strip_prefix(outer).is_some_and(|rest| {
        outer.is_empty() || rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
    })
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Removes the value at `path` from `tree`; false if there is none.
fn prune(tree: &mut serde_json::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_json::Value;
    use serde_path_to_error::Segment;
    let segs: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = tree;
    for seg in parents {
        let next = match (seg, cur) {
            (Segment::Seq { index }, Value::Array(a)) => a.get_mut(*index),
            (Segment::Map { key } | Segment::Enum { variant: key }, Value::Object(m)) => {
                m.get_mut(key.as_str())
            }
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match (last, cur) {
        (Segment::Seq { index }, Value::Array(a)) if *index < a.len() => {
            a.remove(*index);
            true
        }
        (Segment::Map { key } | Segment::Enum { variant: key }, Value::Object(m)) => {
            m.remove(key.as_str()).is_some()
        }
        _ => false,
    }
}

/// Reads and validates a file.
pub fn load_file(path: &Path) -> Result<(Config, String), ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one("", format!("cannot read {name}: {e}")))?;
    let cfg = parse_config(&text, Format::of_path(path), Some(&name))?;
    Ok((cfg, text))
}

/// A path `serde_ignored` reports, as this module writes field paths.
pub fn path_of(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", path_of(parent)),
        P::Map { parent, key } => {
            let head = path_of(parent);
            if head.is_empty() {
                key.clone()
            } else {
                format!("{head}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_of(parent)
        }
    }
}

fn offset_of(text: &str, line: usize, col: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    start + col.saturating_sub(1)
}

impl Problem {
    /// Records where in `text` the problem is: line and column, and `ORIGIN:LINE:COL` when the
    /// text has an origin (a file name).
    fn place(&mut self, origin: Option<&str>, lines: &LineIndex, text: &str, offset: usize) {
        let offset = offset.min(text.len());
        let (line, start) = lines.line_of(offset);
        let col = text.get(start..offset).map_or(0, |t| t.chars().count()) + 1;
        self.line = Some(line);
        self.column = Some(col);
        if let Some(origin) = origin {
            self.location = Some(format!("{origin}:{line}:{col}"));
        }
    }
}

/// Splits `upstreams.web.backends[1].address` into keys and indexes.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some((idx, r)) = rest.split_once(']') {
            if let Ok(i) = idx.parse() {
                out.push(Seg::Index(i));
            }
            rest = r.trim_start_matches('[');
        }
    }
    out
}

/// At most this many problems of a JSON text are located: each JSON walk may cross the whole
/// text, and a 10,000-backend document with a problem in every entry must not cost 10,000 of
/// them. A TOML text is parsed once and every problem is found in the tree.
const MAX_LOCATED_JSON: usize = 1000;

/// Sets each problem's line and column (and FILE:LINE:COL with an origin), and orders them as
/// they appear in the text; in JSON, problems past [`MAX_LOCATED_JSON`] follow, unlocated, in
/// their order.
fn locate(problems: &mut [Problem], text: &str, format: Format, origin: Option<&str>) {
    let toml_root = match format {
        Format::Toml => toml::de::DeTable::parse(text).ok(),
        Format::Json => None,
    };
    let lines = LineIndex::new(text);
    let mut at = Vec::with_capacity(problems.len());
    let most = match format {
        Format::Toml => usize::MAX,
        Format::Json => MAX_LOCATED_JSON,
    };
    for p in problems.iter_mut().take(most) {
        let offset = match (format, &toml_root) {
            (Format::Toml, Some(root)) => Some(toml_offset(root, &p.path)),
            (Format::Toml, None) => None,
            (Format::Json, _) => json_offset(text, &p.path),
        }
        .unwrap_or(0);
        p.place(origin, &lines, text, offset);
        at.push(offset);
    }
    let mut order: Vec<usize> = (0..problems.len()).collect();
    order.sort_by_key(|&i| at.get(i).copied().unwrap_or(usize::MAX));
    let sorted: Vec<Problem> = order.iter().map(|&i| problems[i].clone()).collect();
    problems.clone_from_slice(&sorted);
}

/// Where each line of a text starts, to turn offsets into lines by binary search.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex(starts)
    }

    /// Line (from 1) and the offset its text starts at.
    fn line_of(&self, offset: usize) -> (usize, usize) {
        let i = self.0.partition_point(|&s| s <= offset).max(1) - 1;
        (i + 1, self.0[i])
    }
}

fn toml_offset(root: &toml::Spanned<toml::de::DeTable<'_>>, path: &str) -> usize {
    use toml::de::DeValue;
    let mut best = root.span().start;
    let (mut table, mut array) = (Some(root.get_ref()), None);
    // Walk as deep as the path exists; the deepest element found is where the problem is.
    for seg in &segments(path) {
        let next = match seg {
            Seg::Key(k) => table.and_then(|t| {
                t.iter()
                    .find(|(key, _)| key.get_ref() == k)
                    .map(|(key, v)| {
                        best = key.span().start;
                        v
                    })
            }),
            Seg::Index(i) => array
                .and_then(|a: &toml::de::DeArray<'_>| a.get(*i))
                .inspect(|v| best = v.span().start),
        };
        let Some(v) = next else { break };
        (table, array) = match v.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(a)),
            _ => (None, None),
        };
    }
    best
}

/// Where the value at `path` is in JSON `text`: its key (or array element), or as deep as the
/// path exists. A walk of the text itself, since `serde_json` keeps no positions.
fn json_offset(text: &str, path: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut at = skip_ws(b, 0);
    let mut best = at;
    for seg in segments(path) {
        match (seg, b.get(at)) {
            (Seg::Key(k), Some(b'{')) => {
                at = skip_ws(b, at + 1);
                loop {
                    if b.get(at) != Some(&b'"') {
                        return Some(best);
                    }
                    let key_at = at;
                    let end = skip_value(b, at)?;
                    let key = text.get(key_at + 1..end - 1)?;
                    at = skip_ws(b, end);
                    at = skip_ws(b, at + 1); // the ':'
                    if key == k {
                        best = key_at;
                        break;
                    }
                    at = skip_ws(b, skip_value(b, at)?);
                    if b.get(at) != Some(&b',') {
                        return Some(best);
                    }
                    at = skip_ws(b, at + 1);
                }
            }
            (Seg::Index(i), Some(b'[')) => {
                at = skip_ws(b, at + 1);
                for _ in 0..i {
                    at = skip_ws(b, skip_value(b, at)?);
                    if b.get(at) != Some(&b',') {
                        return Some(best);
                    }
                    at = skip_ws(b, at + 1);
                }
                best = at;
            }
            _ => return Some(best),
        }
    }
    Some(best)
}

fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// The offset after the JSON value starting at `at`.
fn skip_value(b: &[u8], mut at: usize) -> Option<usize> {
    match b.get(at)? {
        b'"' => {
            at += 1;
            loop {
                match b.get(at)? {
                    b'\\' => at += 2,
                    b'"' => return Some(at + 1),
                    _ => at += 1,
                }
            }
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match b.get(at)? {
                    b'"' => {
                        at = skip_value(b, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        _ => {
            while b
                .get(at)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                at += 1;
            }
            Some(at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_is_reported_without_an_empty_path() {
        let e = parse_config("workers = \"two\n", Format::Toml, Some("f.toml")).unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("f.toml:1:"), "{shown}");
        assert!(!shown.contains(": :"), "{shown}");
    }

    /// Limits that would refuse every request, and a header timeout of nothing, are refused
    /// with their paths.
    #[test]
    fn rate_limits_header_timeouts_and_trusted_proxies_that_do_not_parse_are_refused() {
        let text = "[[listeners]]\nbind = \"127.0.0.1:0\"\nheader_timeout = \"0s\"\n\
                    trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\", \"lb.example\"]\n\
                    [[routes]]\nupstream = \"web\"\nrate_limit = { requests_per_second = 0 }\n\
                    [[routes]]\npath_prefix = \"/b\"\nupstream = \"web\"\n\
                    rate_limit = { requests_per_second = 5, burst = 0 }\n\
                    [upstreams.web]\nbackends = [{ address = \"127.0.0.1:9\" }]\n";
        let e = parse_config(text, Format::Toml, Some("f.toml")).unwrap_err();
        let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].header_timeout",
                "listeners[0].trusted_proxies[1]",
                "listeners[0].trusted_proxies[2]",
                "routes[0].rate_limit.requests_per_second",
                "routes[1].rate_limit.burst",
            ],
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn h2c_with_tls_enabled_is_refused_and_names_the_protocol_field() {
        let base = "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[upstreams.web]\nbackends = [{ address = \"127.0.0.1:9\" }]\n";
        for tls in [
            "tls = { server_name = \"a.internal\" }",
            "tls = { enabled = true }",
        ] {
            let text = format!("{base}protocol = \"h2c\"\n{tls}\n");
            let e = parse_config(&text, Format::Toml, Some("f.toml")).unwrap_err();
            assert!(
                e.problems
                    .iter()
                    .any(|p| p.path == "upstreams.web.protocol" && p.message.contains("h2c")),
                "{:?}",
                e.problems
            );
        }
        // Cleartext stays cleartext: h2c with TLS explicitly off, or with no tls table, is fine.
        for tls in ["tls = { enabled = false }", ""] {
            let text = format!("{base}protocol = \"h2c\"\n{tls}\n");
            assert!(
                parse_config(&text, Format::Toml, Some("f.toml")).is_ok(),
                "{tls}"
            );
        }
    }

    #[test]
    fn every_value_of_the_wrong_type_is_reported_with_its_path_and_the_rest_still_validated() {
        let text = r#"workers = "two"

[[listeners]]
bind = "127.0.0.1:0"

[[routes]]
upstream = "missing"

[upstreams.web]
algorithm = "fastest"
backends = [{ address = 5 }, { address = "127.0.0.1:9", weight = -1 }, { address = "127.0.0.1:9", wieght = 2 }]
timeouts = { connect = "2x" }
max_connections = 0
"#;
        let e = parse_config(text, Format::Toml, Some("f.toml")).unwrap_err();
        let got: Vec<(&str, &str)> = e
            .problems
            .iter()
            .map(|p| (p.path.as_str(), p.location.as_deref().unwrap_or("")))
            .collect();
        let want = [
            ("workers", "f.toml:1:1"),
            ("routes[0].upstream", "f.toml:7:1"),
            ("upstreams.web.algorithm", "f.toml:10:1"),
            ("upstreams.web.backends[0].address", "f.toml:11:15"),
            ("upstreams.web.backends[1].weight", "f.toml:11:57"),
            ("upstreams.web.backends[2].wieght", "f.toml:11:99"),
            // Validated in the tree left, and still named by the text's indexes.
            ("upstreams.web.backends[2].address", "f.toml:11:74"),
            ("upstreams.web.timeouts.connect", "f.toml:12:14"),
            ("upstreams.web.max_connections", "f.toml:13:1"),
        ];
        for w in want {
            assert!(got.contains(&w), "{w:?} not in {got:?}");
        }
        // In file order, and the cut-out address is not reported again as missing.
        let lines: Vec<&str> = got.iter().map(|(_, l)| *l).collect();
        let mut sorted = lines.clone();
        sorted.sort_by_key(|l| {
            let mut it = l.split(':').skip(1).map(|n| n.parse::<u32>().unwrap_or(0));
            (it.next(), it.next())
        });
        assert_eq!(lines, sorted);
        assert!(
            !e.problems
                .iter()
                .any(|p| p.message.contains("missing field")),
            "{e}"
        );
    }

    #[test]
    fn json_problems_are_located_by_their_whole_path() {
        // The same key under another upstream, and strings holding brackets and quotes, first.
        let text = r#"{
  "listeners": [{"bind": "127.0.0.1:0"}],
  "upstreams": {
    "a": {"backends": [{"address": "127.0.0.1:1", "weight": 1}], "x": "[{\"}"},
    "b": {"backends": [{"address": "127.0.0.1:2"},
                       {"address": "bad", "weight": 20000}]}
  }
}"#;
        let e = parse_config(text, Format::Json, Some("f.json")).unwrap_err();
        let at = |path: &str| {
            e.problems
                .iter()
                .find(|p| p.path == path)
                .and_then(|p| p.location.clone())
                .unwrap_or_default()
        };
        assert_eq!(at("upstreams.b.backends[1].address"), "f.json:6:25");
        assert_eq!(at("upstreams.b.backends[1].weight"), "f.json:6:43");
        assert_eq!(at("upstreams.a.x"), "f.json:4:66", "{e}");
        // Two equal keys are refused (the tree of values the type check uses would keep the last).
        let dup = r#"{"listeners": [{"bind": "127.0.0.1:0"}], "upstreams": {"a": {"backends": [{"address": "127.0.0.1:1", "weight": 0, "weight": 1}]}}}"#;
        let e = parse_config(dup, Format::Json, None).unwrap_err();
        assert!(e.to_string().contains("duplicate field"), "{e}");
    }
}
