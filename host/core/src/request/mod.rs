//! What a requester asks for, and what Slipway finds about it.
//!
//! A request arrives as JSON and goes through three layers, each adding [`Finding`]s, all of them
//! reported at once:
//! 1. [`parse`]: the schema — types, ranges, units (`"8GiB"` and `8192` are both understood;
//!    `"8 GB"` is explained), unknown fields with the nearest known one;
//! 2. [`check`]: consistency with the catalog and with itself — the closest staged VM is chosen
//!    there, and its choice explained ([`choose`]); then feasibility against the hosts
//!    ([`feasibility`]);
//! 3. validator plugins (run by the server), whose findings are merged in.
//!
//! Every finding names a field by its JSON path (`hardware.memory`, `applications[1].version`)
//! and, wherever one exists, suggests a value for it that makes the finding go away: a JSON value
//! to put there, or `null` to remove the field (the request then says "no preference" there).
//! [`apply_suggestions`] does exactly that, so a client can too.

pub mod check;
pub mod feasibility;
pub mod os;
pub mod parse;
pub mod size;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::catalog::{DiskBus, MachineType, NicModel, OsFamily};
use crate::{Arch, Firmware};

pub use check::{
    AppInstall, CatalogView, Choice, Resolved, ScorePart, StagedCandidate, StagedScore, check,
    choose,
};
pub use feasibility::{HostRoom, Need, feasibility};
pub use parse::parse;

/// How much a finding matters. Only `error` blocks a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One thing found about a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Finding {
    pub severity: Severity,
    /// The field at fault, as a JSON path: `hardware.memory`, `applications[1].version`; empty for
    /// the request as a whole.
    pub field: String,
    /// A sentence a requester understands.
    pub message: String,
    /// A value for `field` that would make this finding go away; `null` means "remove the
    /// field". Absent when there is none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub suggestion: Option<Value>,
    /// Who found it: `schema`, `consistency`, `catalog`, `feasibility` or `plugin:<name>`.
    pub source: String,
    /// Stable, matchable: `unknown-field`, `decimal-unit`, `below-os-minimum`, ...
    pub code: String,
}

/// `"suggestion": null` is a suggestion (remove the field), not its absence.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Finding {
    pub fn error(source: &str, code: &str, field: impl Into<String>, message: String) -> Self {
        Self {
            severity: Severity::Error,
            field: field.into(),
            message,
            suggestion: None,
            source: source.to_owned(),
            code: code.to_owned(),
        }
    }

    pub fn warning(source: &str, code: &str, field: impl Into<String>, message: String) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(source, code, field, message)
        }
    }

    pub fn info(source: &str, code: &str, field: impl Into<String>, message: String) -> Self {
        Self {
            severity: Severity::Info,
            ..Self::error(source, code, field, message)
        }
    }

    pub fn suggest(mut self, value: impl Into<Value>) -> Self {
        self.suggestion = Some(value.into());
        self
    }

    /// Suggests removing the field.
    pub fn suggest_removal(mut self) -> Self {
        self.suggestion = Some(Value::Null);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Whether any finding blocks the request.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(Finding::is_error)
}

/// A request as the schema layer understood it: units resolved, "any" as `None`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmRequest {
    #[serde(default)]
    pub hardware: HardwareRequest,
    #[serde(default)]
    pub os: OsRequest,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<AppRequest>,
    /// Virtual networks the VM joins; a NIC's `network` names one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    #[serde(default)]
    pub placement: Constraints,
    /// The VM's hostname; with `count` over 1, use `hostname_pattern`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// A hostname with `{n}` (1, 2, ... within the request) and/or `{id}` (the first 8 hex
    /// digits of the VM's UUID), e.g. `web-{n}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_pattern: Option<String>,
    /// How many VMs [default: 1].
    pub count: u32,
}

/// Hardware; every field absent means "as the chosen staged VM has it".
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HardwareRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// MiB, as a number; the request may also say `"8GiB"`.
    #[serde(default, rename = "memory", skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// The first disk is the boot disk (the staged image); others start empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskRequest>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics: Option<Vec<NicRequest>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<MachineType>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskRequest {
    /// MiB, as a number; the request may also say `"20GiB"`.
    #[serde(default, rename = "size", skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NicRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<NicModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// The OS, each level "any" when absent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<OsFamily>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl OsRequest {
    pub fn describe(&self) -> String {
        let parts: Vec<&str> = [
            self.family.map(OsFamily::as_str),
            self.distro.as_deref(),
            self.version.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            "any OS".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppRequest {
    pub name: String,
    /// Absent means any version (the newest the catalog has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Where the VM may run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Constraints {
    /// Labels the host must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_group: Option<String>,
    /// One host, by name or id (admins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Limits on what a request may ask.
pub mod limits {
    pub const MAX_COUNT: u32 = 100;
    pub const MAX_NETWORKS: usize = 16;
    pub const MAX_HOSTNAME: usize = 63;
}

/// One step of a JSON path: a key or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Splits `a.b[2].c` into its steps; `None` when it is not a path.
fn steps(path: &str) -> Option<Vec<Step>> {
    let mut out = Vec::new();
    if path.is_empty() {
        return Some(out);
    }
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() {
            return None;
        }
        out.push(Step::Key(key.to_owned()));
        while !rest.is_empty() {
            let close = rest.find(']')?;
            let index = rest.get(1..close)?.parse().ok()?;
            out.push(Step::Index(index));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return None;
            }
        }
    }
    Some(out)
}

/// Applies every finding's suggestion to `request` (its JSON): sets the value at the field's
/// path, creating objects on the way, or removes the field for `null`. Removals from arrays run
/// last and from the highest index down, so that indexes named by other findings still hold.
/// Returns how many suggestions were applied.
pub fn apply_suggestions(request: &mut Value, findings: &[Finding]) -> usize {
    let mut applied = 0;
    let mut removals: Vec<Vec<Step>> = Vec::new();
    for f in findings {
        let (Some(suggestion), Some(path)) = (&f.suggestion, steps(&f.field)) else {
            continue;
        };
        if path.is_empty() {
            continue;
        }
        if suggestion.is_null() {
            removals.push(path);
        } else if set(request, &path, suggestion.clone()) {
            applied += 1;
        }
    }
    // Deepest and highest-indexed first.
    removals.sort_by(|a, b| cmp_paths(b, a));
    removals.dedup();
    for path in removals {
        if remove(request, &path) {
            applied += 1;
        }
    }
    applied
}

fn cmp_paths(a: &[Step], b: &[Step]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (Step::Index(i), Step::Index(j)) => i.cmp(j),
            (Step::Key(i), Step::Key(j)) => i.cmp(j),
            (Step::Key(_), Step::Index(_)) => std::cmp::Ordering::Less,
            (Step::Index(_), Step::Key(_)) => std::cmp::Ordering::Greater,
        };
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

fn set(root: &mut Value, path: &[Step], value: Value) -> bool {
    let mut at = root;
    for (i, step) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        match step {
            Step::Key(k) => {
                if !at.is_object() {
                    *at = Value::Object(Default::default());
                }
                let Value::Object(map) = at else {
                    return false;
                };
                if last {
                    map.insert(k.clone(), value);
                    return true;
                }
                at = map.entry(k.clone()).or_insert(Value::Null);
            }
            Step::Index(n) => {
                let Value::Array(items) = at else {
                    return false;
                };
                let Some(item) = items.get_mut(*n) else {
                    return false;
                };
                if last {
                    *item = value;
                    return true;
                }
                at = item;
            }
        }
    }
    false
}

fn remove(root: &mut Value, path: &[Step]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = root;
    for step in parents {
        at = match (step, at) {
            (Step::Key(k), Value::Object(map)) => match map.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Step::Index(n), Value::Array(items)) => match items.get_mut(*n) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, at) {
        (Step::Key(k), Value::Object(map)) => map.remove(k).is_some(),
        (Step::Index(n), Value::Array(items)) if *n < items.len() => {
            items.remove(*n);
            true
        }
        _ => false,
    }
}

/// The known name closest to `word` (by edit distance), if it is close enough to be a typo.
pub fn nearest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| {
            let lower = k.to_ascii_lowercase();
            // A prefix ("x86" for "x86_64") is as good as one typo.
            let d = if word.len() >= 2 && lower.starts_with(&word) {
                1
            } else {
                edit_distance(&word, &lower)
            };
            (d, k)
        })
        .filter(|(d, k)| *d <= (k.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance with adjacent transpositions (`ngnix` is one slip from `nginx`), bounded:
/// names longer than 64 bytes are not typos of ours.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX / 2;
    }
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = best;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_split_into_keys_and_indexes() {
        assert_eq!(
            steps("hardware.disks[1].size"),
            Some(vec![
                Step::Key("hardware".into()),
                Step::Key("disks".into()),
                Step::Index(1),
                Step::Key("size".into())
            ])
        );
        assert_eq!(steps("a[x]"), None);
        assert_eq!(steps("a..b"), None);
        assert_eq!(steps("a[1]b"), None);
    }

    #[test]
    fn suggestions_set_create_and_remove_in_a_safe_order() {
        let mut v = json!({"hardware": {"memory": "8 GB"}, "applications": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "colour": 1});
        let f = |field: &str, s: Value| Finding::error("t", "t", field, String::new()).suggest(s);
        let findings = vec![
            f("hardware.memory", json!("8GiB")),
            f("applications[0]", Value::Null),
            f("applications[2].version", json!("2")),
            f("applications[1]", Value::Null),
            f("colour", Value::Null),
            f("os.version", json!("12")),
        ];
        assert_eq!(apply_suggestions(&mut v, &findings), 6);
        assert_eq!(
            v,
            json!({"hardware": {"memory": "8GiB"}, "applications": [{"name": "c", "version": "2"}], "os": {"version": "12"}})
        );
    }

    #[test]
    fn nearest_finds_typos_only() {
        let known = ["memory", "vcpus", "disks"];
        assert_eq!(nearest("memroy", known), Some("memory"));
        assert_eq!(nearest("vcpu", known), Some("vcpus"));
        assert_eq!(nearest("colour", known), None);
        assert_eq!(nearest("ngnix", ["nginx", "redis"]), Some("nginx"));
    }
}
