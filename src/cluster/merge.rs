//! Three-way merge of the shared document, for a local change that lost the compare-and-swap
//! to another instance's. Instead of dropping the local change (the client that made it was
//! already told 200), it is replayed onto the winner: what this instance changed since the
//! document both last agreed on (`base`) is applied to the one now in etcd (`theirs`).
//!
//! The merge works on the documents as JSON values, field by field: a field only one side
//! changed takes that side's value; a field both changed to different values is a conflict, and
//! the cluster's (`theirs`) wins, as it would have without the merge. Objects (upstreams by name,
//! their settings) merge key by key, and a list of backends merges by `address`, so two
//! instances adding or removing different backends of one upstream both keep their change.
//! Other lists (routes) are one value each.

use serde_json::{Map, Value};
use std::collections::HashMap;

/// `base` → `ours` replayed onto `theirs`, and the paths where both changed the same thing
/// (there `theirs` was kept).
pub fn three_way(base: &Value, ours: &Value, theirs: &Value) -> (Value, Vec<String>) {
    let mut conflicts = Vec::new();
    let merged = field(Some(base), Some(ours), Some(theirs), "", &mut conflicts);
    (merged.unwrap_or(Value::Null), conflicts)
}

/// One field, each side `None` where it is absent.
fn field(
    base: Option<&Value>,
    ours: Option<&Value>,
    theirs: Option<&Value>,
    path: &str,
    conflicts: &mut Vec<String>,
) -> Option<Value> {
    if ours == base || ours == theirs {
        return theirs.cloned();
    }
    if theirs == base {
        return ours.cloned();
    }
    match (ours, theirs) {
        (Some(Value::Object(o)), Some(Value::Object(t))) => {
            let none = Map::new();
            let b = base.and_then(Value::as_object).unwrap_or(&none);
            Some(Value::Object(objects(b, o, t, path, conflicts)))
        }
        (Some(Value::Array(o)), Some(Value::Array(t))) => {
            let b = base
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            match (keyed(b), keyed(o), keyed(t)) {
                (Some(b), Some(o), Some(t)) => {
                    Some(Value::Array(backends(&b, &o, &t, path, conflicts)))
                }
                _ => {
                    conflicts.push(path.to_string());
                    theirs.cloned()
                }
            }
        }
        _ => {
            conflicts.push(path.to_string());
            theirs.cloned()
        }
    }
}

fn objects(
    base: &Map<String, Value>,
    ours: &Map<String, Value>,
    theirs: &Map<String, Value>,
    path: &str,
    conflicts: &mut Vec<String>,
) -> Map<String, Value> {
    // Their key order first, then keys only ours has (serde_json's map is sorted anyway).
    let keys = theirs
        .keys()
        .chain(ours.keys().filter(|k| !theirs.contains_key(*k)))
        .chain(
            base.keys()
                .filter(|k| !theirs.contains_key(*k) && !ours.contains_key(*k)),
        );
    let mut out = Map::new();
    for k in keys {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if let Some(v) = field(base.get(k), ours.get(k), theirs.get(k), &p, conflicts) {
            out.insert(k.clone(), v);
        }
    }
    out
}

/// A list whose every element is an object with a string `address`, by address (in order).
fn keyed(list: &[Value]) -> Option<Vec<(&str, &Value)>> {
    list.iter()
        .map(|v| Some((v.get("address")?.as_str()?, v)))
        .collect()
}

fn by_address<'a>(list: &[(&'a str, &'a Value)]) -> HashMap<&'a str, &'a Value> {
    list.iter().copied().collect()
}

/// By address: found through maps, since an upstream may have 10,000 backends.
fn backends(
    base: &[(&str, &Value)],
    ours: &[(&str, &Value)],
    theirs: &[(&str, &Value)],
    path: &str,
    conflicts: &mut Vec<String>,
) -> Vec<Value> {
    let (b, o, t) = (by_address(base), by_address(ours), by_address(theirs));
    let order = theirs
        .iter()
        .chain(ours.iter().filter(|(a, _)| !t.contains_key(a)))
        .map(|(a, _)| *a);
    order
        .filter_map(|a| {
            let p = format!("{path}[{a}]");
            field(
                b.get(a).copied(),
                o.get(a).copied(),
                t.get(a).copied(),
                &p,
                conflicts,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn web(backends: Value) -> Value {
        json!({"upstreams": {"web": {"algorithm": "round_robin", "backends": backends}}})
    }

    #[test]
    fn changes_to_different_backends_both_survive() {
        let base = web(json!([{"address": "a:1", "weight": 1}, {"address": "b:1", "weight": 1}]));
        // Ours adds c and reweights a; theirs removes b and adds d.
        let ours = web(
            json!([{"address": "a:1", "weight": 5}, {"address": "b:1", "weight": 1}, {"address": "c:1", "weight": 1}]),
        );
        let theirs = web(json!([{"address": "a:1", "weight": 1}, {"address": "d:1", "weight": 1}]));
        let (m, conflicts) = three_way(&base, &ours, &theirs);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        assert_eq!(
            m,
            web(
                json!([{"address": "a:1", "weight": 5}, {"address": "d:1", "weight": 1}, {"address": "c:1", "weight": 1}])
            )
        );
    }

    #[test]
    fn a_field_both_changed_keeps_theirs_and_is_named() {
        let base = web(json!([{"address": "a:1", "weight": 1}]));
        let ours = web(json!([{"address": "a:1", "weight": 2}]));
        let theirs = web(json!([{"address": "a:1", "weight": 3}]));
        let (m, conflicts) = three_way(&base, &ours, &theirs);
        assert_eq!(m, theirs);
        assert_eq!(conflicts, ["upstreams.web.backends[a:1].weight"]);
    }

    #[test]
    fn upstreams_added_on_each_side_and_one_removed_merge() {
        let base = json!({"upstreams": {"web": {"backends": []}, "old": {"backends": []}}});
        let ours = json!({"upstreams": {"web": {"backends": []}, "old": {"backends": []}, "api": {"backends": []}}});
        let theirs = json!({"upstreams": {"web": {"backends": []}, "img": {"backends": []}}});
        let (m, conflicts) = three_way(&base, &ours, &theirs);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        let names: Vec<&String> = m["upstreams"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["api", "img", "web"]);
    }

    #[test]
    fn nothing_changed_here_is_theirs_unchanged() {
        let base = web(json!([{"address": "a:1"}]));
        let theirs = web(json!([{"address": "b:1"}]));
        assert_eq!(three_way(&base, &base, &theirs), (theirs, vec![]));
    }
}
