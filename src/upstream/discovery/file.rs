//! File discovery: a JSON file listing the backends, re-read every `interval` (default 1s).
//!
//! Either form is accepted, so a file written by a script or by a templating tool both work:
//! `[{"address": "10.0.0.5:8080", "weight": 2}, ...]` or `{"backends": [ ...same... ]}`; `weight`
//! defaults to 1. The file is read whole on each poll — it is small, and polling is immune to
//! editors and tools that replace the file rather than write it. Replace it atomically (write a
//! temporary file, rename): a half-written file fails to parse and is reported, and the last
//! known set stays in service until a good one appears.

use super::Reporter;
use crate::config::validate::{check_address, MAX_WEIGHT};
use crate::config::BackendConfig;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(untagged)]
enum Doc {
    List(Vec<Entry>),
    Object { backends: Vec<Entry> },
}

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
        })
    }
}

/// Parses one discovery entry (also the value format of etcd registrations).
pub(super) fn parse_entry(text: &[u8]) -> Result<BackendConfig, String> {
    serde_json::from_slice::<Entry>(text)
        .map_err(|e| format!("not a {{\"address\", \"weight\"}} object: {e}"))?
        .into_backend()
}

/// Parses the whole file; any bad entry refuses the file, so a typo never drops backends.
pub fn parse(text: &str) -> Result<Vec<BackendConfig>, String> {
    let doc: Doc = serde_json::from_str(text).map_err(|_| {
        "expected a JSON list of {\"address\", \"weight\"} objects or {\"backends\": [...]}"
            .to_string()
    })?;
    let entries = match doc {
        Doc::List(l) | Doc::Object { backends: l } => l,
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.into_backend().map_err(|m| format!("entry {i}: {m}")))
        .collect()
}

pub async fn run(path: PathBuf, interval: Option<Duration>, rep: Reporter) {
    let every = interval.unwrap_or(Duration::from_secs(1));
    loop {
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => match parse(&text) {
                Ok(list) => rep.found(list),
                Err(e) => rep.failed(format!("{}: {e}", path.display())),
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
        assert_eq!(a.as_ref().map(Vec::len), Ok(2));
        assert_eq!(a.unwrap()[1].weight, 3);
        let b = parse(r#"{"backends":[{"address":"127.0.0.1:9001","weight":1}]}"#);
        assert_eq!(b.map(|v| v.len()), Ok(1));
        assert!(parse(r#"[{"address":"nope"}]"#).is_err());
        assert!(parse(r#"[{"address":"127.0.0.1:1","weight":20000}]"#).is_err());
        assert!(parse(r#"[{"address":"127.0.0.1:1","wieght":2}]"#).is_err());
        assert!(parse("[").is_err());
    }
}
