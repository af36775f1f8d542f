//! File discovery: a JSON file listing the backends, re-read every `interval` (default 1s).
//!
//! Either form is accepted, so a file written by a script or by a templating tool both work:
//! `[{"address": "10.0.0.5:8080", "weight": 2}, ...]` or `{"backends": [ ...same... ]}`; `weight`
//! defaults to 1. The file is read whole on each poll — it is small, and polling is immune to
//! editors and tools that replace the file rather than write it. Replace it atomically (write a
//! temporary file, rename): a half-written file fails to parse and is reported, and the last
//! known set stays in service until a good one appears. So does a file with a bad entry among
//! good ones (one bad entry refuses the whole file, so a typo never drops backends); every bad
//! entry is named by its place in the file (`[2]`, `backends[2]`) in the source's `problems`.

use super::{Reporter, SourceProblem};
use crate::config::validate::{check_address, MAX_WEIGHT};
use crate::config::BackendConfig;
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl Entry {
    /// Checks one entry as configuration validation would check a static backend.
    pub(super) fn into_backend(self) -> Result<BackendConfig, String> {
        check_address(&self.address)?;
        if self.weight > MAX_WEIGHT {
            return Err(format!(
                "{}: weight must be between 0 and {MAX_WEIGHT}",
                self.address
            ));
        }
        Ok(BackendConfig {
            address: self.address,
            weight: self.weight,
            drain: false,
            backup: false,
        })
    }
}

/// Parses one discovery entry (also the value format of etcd registrations).
pub(super) fn parse_entry(text: &[u8]) -> Result<BackendConfig, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let entry = entry_from(&mut de)?;
    de.end()
        .map_err(|e| format!("not a {{\"address\", \"weight\"}} object: {e}"))?;
    Ok(entry)
}

/// One entry from any JSON deserializer; a value of the wrong type is named by its field
/// (`weight: invalid type: string "x", expected u32`), as configuration problems are.
fn entry_from<'de, D: serde::Deserializer<'de>>(de: D) -> Result<BackendConfig, String> {
    serde_path_to_error::deserialize::<_, Entry>(de)
        .map_err(|e| {
            let field = crate::config::load::path_text(e.path());
            let what = if field.is_empty() {
                String::new()
            } else {
                format!("{field}: ")
            };
            format!(
                "not a {{\"address\", \"weight\"}} object: {what}{}",
                e.inner()
            )
        })?
        .into_backend()
}

/// Why a file was refused: a summary, and each bad entry (none when the file is not a list).
#[derive(Debug)]
pub struct Refused {
    pub error: String,
    pub problems: Vec<SourceProblem>,
}

/// Parses the whole file; any bad entry refuses the file, so a typo never drops backends. Each
/// entry is read on its own, so every bad one is named, a value of the wrong type included.
pub fn parse(text: &str) -> Result<Vec<BackendConfig>, Refused> {
    let form = || Refused {
        error: "expected a JSON list of {\"address\", \"weight\"} objects or {\"backends\": [...]}"
            .into(),
        problems: Vec::new(),
    };
    let doc: Value = serde_json::from_str(text).map_err(|_| form())?;
    let (base, entries) = match doc {
        Value::Array(l) => ("", l),
        Value::Object(mut m) => match m.remove("backends") {
            Some(Value::Array(l)) => ("backends", l),
            _ => return Err(form()),
        },
        _ => return Err(form()),
    };
    let mut list = Vec::with_capacity(entries.len());
    let mut problems = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let parsed = entry_from(e);
        match parsed {
            Ok(b) => list.push(b),
            Err(error) => problems.push(SourceProblem {
                key: format!("{base}[{i}]"),
                error,
            }),
        }
    }
    if problems.is_empty() {
        return Ok(list);
    }
    let error = problems
        .iter()
        .map(|p| format!("{}: {}", p.key, p.error))
        .collect::<Vec<_>>()
        .join("; ");
    Err(Refused { error, problems })
}

pub async fn run(path: PathBuf, interval: Option<Duration>, rep: Reporter) {
    let every = interval.unwrap_or(Duration::from_secs(1));
    loop {
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => match parse(&text) {
                Ok(list) => rep.found(list),
                Err(r) => rep.failed_with(format!("{}: {}", path.display(), r.error), r.problems),
            },
            Err(e) => rep.failed(format!("cannot read {}: {e}", path.display())),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_bad_entries_are_refused() {
        let a = parse(r#"[{"address":"127.0.0.1:9001"},{"address":"127.0.0.1:9002","weight":3}]"#);
        assert_eq!(a.as_ref().map(Vec::len).ok(), Some(2));
        assert_eq!(a.unwrap()[1].weight, 3);
        let b = parse(r#"{"backends":[{"address":"127.0.0.1:9001","weight":1}]}"#);
        assert_eq!(b.map(|v| v.len()).ok(), Some(1));
        assert!(parse(r#"[{"address":"nope"}]"#).is_err());
        assert!(parse(r#"[{"address":"127.0.0.1:1","weight":20000}]"#).is_err());
        assert!(parse(r#"[{"address":"127.0.0.1:1","wieght":2}]"#).is_err());
        assert!(parse("[").is_err());
        assert!(parse(r#"{"servers": []}"#).is_err());
    }

    #[test]
    fn every_bad_entry_is_named_by_its_place() {
        let e = parse(
            r#"{"backends": [{"address":"127.0.0.1:1"}, {"address":"127.0.0.1:2","weight":"x"}, {"address":"nope"}]}"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["backends[1]", "backends[2]"]);
        assert!(
            e.problems[0].error.contains("weight: invalid type"),
            "{e:?}"
        );
        let etcd = parse_entry(br#"{"address": "127.0.0.1:1", "weight": -1}"#).unwrap_err();
        assert!(etcd.contains("weight: invalid value"), "{etcd}");
        assert!(parse_entry(br#"{"address": "127.0.0.1:1"} x"#).is_err());
        assert!(e.error.contains("backends[2]: "), "{e:?}");
    }
}
