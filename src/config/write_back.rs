//! Writing a changed configuration back into the operator's TOML file without losing what they
//! wrote around it: comments, key order, inline or table style, blank lines. The new
//! configuration is rendered, then merged into the file's own document (toml_edit) value by
//! value; only what changed is rewritten. Backends are matched by address, so removing one from
//! the middle of a list keeps the comments of the others.
//!
//! Keys the file spells out but the rendering leaves out (a default such as `weight = 1`) are
//! kept where the result still reads back as the new configuration; every result is read back
//! and compared, and the plain rendering is written when no merge reads back equal.

use super::Config;
use std::collections::HashMap;
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, TableLike, Value};

/// The text to write for `cfg` into a file that now holds `old` (TOML).
pub fn merged_toml(old: &str, cfg: &Config) -> String {
    let fresh = super::to_toml(cfg);
    let (Ok(doc), Ok(new), Ok(target)) = (
        old.parse::<DocumentMut>(),
        fresh.parse::<DocumentMut>(),
        toml::from_str::<Config>(&fresh),
    ) else {
        return fresh;
    };
    let reads_back = |d: &DocumentMut| {
        let text = d.to_string();
        toml::from_str::<Config>(&text)
            .is_ok_and(|c| c == target)
            .then_some(text)
    };
    // Keeping every key only the file has (explicit defaults such as `weight = 1`)...
    let mut m = Merge {
        keep: true,
        path: Vec::new(),
        kept: Vec::new(),
    };
    let mut d = doc.clone();
    merge_table(d.as_table_mut(), new.as_table(), &mut m);
    let Ok(got) = toml::from_str::<Config>(&d.to_string()) else {
        return fresh;
    };
    if got == target {
        return d.to_string();
    }
    // ...but those that were removed (a `health_check` taken away): where the configuration
    // read back differs from the new one, compared field by field.
    let (Ok(got), Ok(want)) = (serde_json::to_value(&got), serde_json::to_value(&target)) else {
        return fresh;
    };
    for at in m.kept.iter().rev() {
        if pointer(&got, at) != pointer(&want, at) {
            remove_at(d.as_table_mut(), at);
        }
    }
    if let Some(text) = reads_back(&d) {
        return text;
    }
    let mut m = Merge {
        keep: false,
        path: Vec::new(),
        kept: Vec::new(),
    };
    let mut d = doc;
    merge_table(d.as_table_mut(), new.as_table(), &mut m);
    reads_back(&d).unwrap_or(fresh)
}

/// The state of one merge: whether keys only the old file has are kept, and which were.
struct Merge {
    keep: bool,
    path: Vec<Seg>,
    kept: Vec<Vec<Seg>>,
}

#[derive(Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn pointer<'a>(v: &'a serde_json::Value, at: &[Seg]) -> Option<&'a serde_json::Value> {
    at.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.get(k),
        Seg::Index(i) => v.get(i),
    })
}

/// Removes the key at `at` (its last segment is a key) from the document.
fn remove_at(t: &mut dyn TableLike, at: &[Seg]) {
    match at {
        [Seg::Key(k)] => {
            t.remove(k);
        }
        [Seg::Key(k), rest @ ..] => {
            if let Some(i) = t.get_mut(k) {
                remove_in_item(i, rest);
            }
        }
        _ => {}
    }
}

fn remove_in_item(i: &mut Item, at: &[Seg]) {
    match (i, at.first()) {
        (Item::ArrayOfTables(a), Some(Seg::Index(j))) => {
            if let Some(t) = a.get_mut(*j) {
                remove_at(t, &at[1..]);
            }
        }
        (Item::Value(v), _) => remove_in_value(v, at),
        (i, Some(Seg::Key(_))) => {
            if let Some(t) = i.as_table_like_mut() {
                remove_at(t, at);
            }
        }
        _ => {}
    }
}

fn remove_in_value(v: &mut Value, at: &[Seg]) {
    match (v, at.first()) {
        (Value::InlineTable(t), Some(Seg::Key(_))) => remove_at(t, at),
        (Value::Array(a), Some(Seg::Index(j))) => {
            if let Some(v) = a.get_mut(*j) {
                remove_in_value(v, &at[1..]);
            }
        }
        _ => {}
    }
}

fn merge_table(old: &mut dyn TableLike, new: &dyn TableLike, m: &mut Merge) {
    if !m.keep {
        let gone: Vec<String> = old
            .iter()
            .filter(|(k, _)| !new.contains_key(k))
            .map(|(k, _)| k.to_string())
            .collect();
        for k in gone {
            old.remove(&k);
        }
    }
    if m.keep {
        for (k, _) in old.iter().filter(|(k, _)| !new.contains_key(k)) {
            let mut at = m.path.clone();
            at.push(Seg::Key(k.to_string()));
            m.kept.push(at);
        }
    }
    for (k, n) in new.iter() {
        m.path.push(Seg::Key(k.to_string()));
        match old.get_mut(k) {
            Some(o) => merge_item(o, n, m),
            None => {
                old.insert(k, n.clone());
            }
        }
        m.path.pop();
    }
}

/// Merges `new` into `old` in `old`'s style: a `[table]` stays one, an inline table stays
/// inline, `[[array of tables]]` and `[{...}, {...}]` each stay what the file has.
fn merge_item(old: &mut Item, new: &Item, m: &mut Merge) {
    match (&mut *old, new) {
        (Item::Table(o), Item::Table(n)) => merge_table(o, n, m),
        (Item::Table(o), Item::Value(Value::InlineTable(n))) => merge_table(o, n, m),
        (Item::Value(o), Item::Value(n)) => merge_value(o, n, m),
        (Item::Value(o), Item::Table(n)) => {
            merge_value(o, &Value::InlineTable(n.clone().into_inline_table()), m)
        }
        (Item::Value(o), Item::ArrayOfTables(n)) => {
            merge_value(o, &Value::Array(n.clone().into_array()), m)
        }
        (Item::ArrayOfTables(o), Item::ArrayOfTables(n)) => {
            merge_tables(o, n.iter().cloned().collect(), m)
        }
        (Item::ArrayOfTables(o), Item::Value(Value::Array(n)))
            if n.iter().all(Value::is_inline_table) =>
        {
            let tables = n
                .iter()
                .filter_map(|v| v.as_inline_table())
                .map(|t| t.clone().into_table())
                .collect();
            merge_tables(o, tables, m)
        }
        (o, n) => *o = n.clone(),
    }
}

fn merge_value(old: &mut Value, new: &Value, m: &mut Merge) {
    match (&mut *old, new) {
        (Value::InlineTable(o), Value::InlineTable(n)) => merge_table(o, n, m),
        (Value::Array(o), Value::Array(n)) => merge_array(o, n, m),
        (o, n) => {
            if !same(o, n) {
                // The new value, with the old one's surroundings (`key = 1  # why`).
                let decor = o.decor().clone();
                *o = n.clone();
                *o.decor_mut() = decor;
            }
        }
    }
}

/// The new array's elements in its order; each one the file already has (the same backend
/// address, or else an equal value) keeps its text, comments and layout. A comment at the end
/// of an element's line (`{ address = "a" },  # rack A`) is, to TOML, the start of the next
/// element's prefix; it is moved with the element it follows.
fn merge_array(old: &mut Array, new: &Array, m: &mut Merge) {
    let prefix = |v: &Value| raw(v.decor().prefix()).to_string();
    let mut olds: Vec<Option<(Value, String, String)>> = Vec::new();
    let mut head = String::new();
    let items: Vec<Value> = old.iter().cloned().collect();
    for (i, v) in items.iter().enumerate() {
        let p = prefix(v);
        let (eol_before, rest) = split_eol(&p);
        if i == 0 {
            head = eol_before.to_string();
        } else if let Some(Some(prev)) = olds.last_mut() {
            prev.2 = eol_before.to_string();
        }
        olds.push(Some((v.clone(), rest.to_string(), String::new())));
    }
    let trailing = raw(Some(old.trailing())).to_string();
    let (last_eol, trailing_rest) = split_eol(&trailing);
    if let Some(Some(last)) = olds.last_mut() {
        last.2 = last_eol.to_string();
    }
    // A new element is laid out as the file's last one (one per line stays one per line).
    let template = olds.last().and_then(|o| o.as_ref()).map(|o| o.1.clone());
    old.clear();
    let mut before = head;
    let by_address = index_by_address(olds.iter().map(|o| o.as_ref().and_then(|o| address(&o.0))));
    for (j, n) in new.iter().enumerate() {
        let found = match address(n) {
            Some(a) => by_address.get(a).copied(),
            None => olds
                .iter()
                .position(|o| o.as_ref().is_some_and(|(o, ..)| same(o, n))),
        };
        let (mut v, rest, eol) = match found.and_then(|i| olds[i].take()) {
            Some((mut o, rest, eol)) => {
                m.path.push(Seg::Index(j));
                merge_value(&mut o, n, m);
                m.path.pop();
                (o, rest, eol)
            }
            None => {
                let rest = template.clone().unwrap_or_else(|| prefix(n));
                (n.clone(), rest, String::new())
            }
        };
        v.decor_mut().set_prefix(format!("{before}{rest}"));
        before = eol;
        old.push_formatted(v);
    }
    old.set_trailing(format!("{before}{trailing_rest}"));
}

fn raw(r: Option<&toml_edit::RawString>) -> &str {
    r.and_then(|r| r.as_str()).unwrap_or("")
}

/// `"  # rack A\n    "` → (`"  # rack A"`, `"\n    "`): the end of the previous line when it
/// holds a comment, and the rest.
fn split_eol(prefix: &str) -> (&str, &str) {
    match prefix.find('\n') {
        Some(i) if prefix[..i].contains('#') => prefix.split_at(i),
        _ => ("", prefix),
    }
}

/// [`merge_array`] for `[[array of tables]]`: each table keeps its header's comments.
fn merge_tables(old: &mut ArrayOfTables, new: Vec<Table>, m: &mut Merge) {
    let mut olds: Vec<Option<Table>> = old.iter().cloned().map(Some).collect();
    old.clear();
    let table_address = |t: &Table| t.get("address").and_then(Item::as_str).map(str::to_string);
    let by_address = index_by_address(olds.iter().map(|o| {
        o.as_ref()
            .and_then(|t| t.get("address").and_then(Item::as_str))
    }));
    for (j, n) in new.into_iter().enumerate() {
        let inline = |t: &Table| Value::InlineTable(t.clone().into_inline_table());
        let found = match table_address(&n) {
            Some(a) => by_address.get(&a).copied(),
            None => olds
                .iter()
                .position(|o| o.as_ref().is_some_and(|o| same(&inline(o), &inline(&n)))),
        };
        let t = match found.and_then(|i| olds[i].take()) {
            Some(mut o) => {
                m.path.push(Seg::Index(j));
                merge_table(&mut o, &n, m);
                m.path.pop();
                o
            }
            None => n,
        };
        old.push(t);
    }
}

/// Where each address is among the old elements (the first, if the file repeats one): a
/// lookup per new element, where a scan made an upstream of 10,000 backends 10^8 comparisons.
fn index_by_address<'a>(
    addresses: impl Iterator<Item = Option<&'a str>>,
) -> HashMap<String, usize> {
    let mut map = HashMap::new();
    for (i, a) in addresses.enumerate() {
        if let Some(a) = a {
            map.entry(a.to_string()).or_insert(i);
        }
    }
    map
}

/// A backend's address, the identity of an element of `backends`.
fn address(v: &Value) -> Option<&str> {
    v.as_inline_table()?.get("address")?.as_str()
}

/// Equal as values, whatever their spelling and spacing.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.value() == y.value(),
        (Value::Integer(x), Value::Integer(y)) => x.value() == y.value(),
        (Value::Float(x), Value::Float(y)) => x.value() == y.value(),
        (Value::Boolean(x), Value::Boolean(y)) => x.value() == y.value(),
        (Value::Datetime(x), Value::Datetime(y)) => x.value() == y.value(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(a, b)| same(a, b))
        }
        (Value::InlineTable(x), Value::InlineTable(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# Edge of the shop: two listeners, one upstream.
workers = 2

[admin]
listen = "127.0.0.1:5000" # loopback only

[[listeners]]
bind = "127.0.0.1:8080"

[upstreams.web]
algorithm = "round_robin"   # explicit, though it is the default
backends = [
    { address = "127.0.0.1:9001" },                 # rack A
    { address = "127.0.0.1:9002", weight = 3 },     # rack B, bigger box
    { address = "127.0.0.1:9003" },                 # rack C
]
# Checked every two seconds.
health_check = { kind = "http", path = "/healthz", interval = "2s" }
"#;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_removed_backend_and_a_changed_weight_keep_every_comment_and_explicit_default() {
        let mut cfg = parse(FILE);
        let web = cfg.upstreams.get_mut("web").unwrap();
        web.backends.remove(0);
        web.backends[0].weight = 5;
        let out = merged_toml(FILE, &cfg);
        assert_eq!(parse(&out), cfg, "{out}");
        for kept in [
            "# Edge of the shop",
            "# loopback only",
            "# explicit, though it is the default",
            "algorithm = \"round_robin\"",
            "# rack B, bigger box",
            "# rack C",
            "# Checked every two seconds.",
            "health_check = { kind = \"http\"",
        ] {
            assert!(out.contains(kept), "{kept:?} lost:\n{out}");
        }
        assert!(!out.contains("9001"), "{out}");
        assert!(!out.contains("rack A"), "its comment goes with it:\n{out}");
        assert!(out.contains("weight = 5"), "{out}");
    }

    #[test]
    fn an_added_backend_is_laid_out_as_its_neighbours_and_a_removed_section_goes() {
        let mut cfg = parse(FILE);
        let web = cfg.upstreams.get_mut("web").unwrap();
        let mut extra = web.backends[0].clone();
        extra.address = "127.0.0.1:9004".into();
        web.backends.push(extra);
        web.health_check = None;
        let out = merged_toml(FILE, &cfg);
        assert_eq!(parse(&out), cfg, "{out}");
        assert!(
            out.contains("\n    { address = \"127.0.0.1:9004\" }"),
            "{out}"
        );
        assert!(!out.contains("health_check"), "{out}");
        assert!(!out.contains("every two seconds"), "{out}");
        assert!(out.contains("# rack A"), "{out}");
        assert!(
            out.contains("algorithm = \"round_robin\"   # explicit"),
            "{out}"
        );
    }

    #[test]
    fn tables_the_file_writes_as_sections_stay_sections() {
        let file = "[[listeners]]\nbind = \"127.0.0.1:8080\"\n\n[upstreams.web]\n# the two\n\
                    [[upstreams.web.backends]]\naddress = \"127.0.0.1:9001\"\n\n\
                    [[upstreams.web.backends]]\naddress = \"127.0.0.1:9002\"\n";
        let mut cfg = parse(file);
        cfg.upstreams.get_mut("web").unwrap().backends[1].weight = 2;
        let out = merged_toml(file, &cfg);
        assert_eq!(parse(&out), cfg, "{out}");
        assert!(out.contains("[[upstreams.web.backends]]"), "{out}");
        assert!(out.contains("# the two"), "{out}");
    }

    #[test]
    fn a_file_that_is_not_toml_any_more_gets_the_plain_rendering() {
        let cfg = parse(FILE);
        assert_eq!(
            merged_toml("not = [toml", &cfg),
            super::super::to_toml(&cfg)
        );
    }
}
