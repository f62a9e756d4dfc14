//! The schema layer: a request's JSON read field by field, so that every problem is found in one
//! pass (serde would stop at the first) and each gets a suggestion where one exists. A field that
//! cannot be read is left out of the result ("no preference") and reported; the result is then
//! still checked by the later layers, which find what follows from the rest.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::size::{self, format_mib, kind};
use super::{
    AppRequest, Constraints, DiskRequest, Finding, HardwareRequest, NicRequest, OsRequest,
    VmRequest, limits, nearest,
};
use crate::catalog::{self, OsFamily, limits as hw};

const SOURCE: &str = "schema";

/// Reads a request. Always returns one (the fields that could be read), with every finding.
pub fn parse(body: &Value) -> (VmRequest, Vec<Finding>) {
    let mut p = Parser::default();
    let request = p.request(body);
    (request, p.findings)
}

#[derive(Default)]
struct Parser {
    findings: Vec<Finding>,
}

const TOP: &[&str] = &[
    "hardware",
    "os",
    "applications",
    "networks",
    "placement",
    "hostname",
    "hostname_pattern",
    "count",
];
const HARDWARE: &[&str] = &[
    "vcpus",
    "memory",
    "disks",
    "nics",
    "firmware",
    "arch",
    "machine_type",
];
const DISK: &[&str] = &["size", "bus"];
const NIC: &[&str] = &["model", "network"];
const OS: &[&str] = &["family", "distro", "version"];
const APP: &[&str] = &["name", "version"];
const PLACEMENT: &[&str] = &["labels", "anti_affinity_group", "affinity_group", "host"];

fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The names of a serde enum's values, as the API writes them.
fn variants<T: serde::Serialize>(all: &[T]) -> Vec<String> {
    all.iter()
        .filter_map(|v| serde_json::to_value(v).ok()?.as_str().map(str::to_owned))
        .collect()
}

impl Parser {
    fn error(&mut self, code: &str, field: impl Into<String>, message: String) -> &mut Finding {
        self.findings
            .push(Finding::error(SOURCE, code, field, message));
        self.findings.last_mut().expect("just pushed")
    }

    /// The object at `path`, with unknown keys reported (and suggested for removal, naming the
    /// nearest known key).
    fn object<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        known: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = value else {
            let what = if path.is_empty() { "the request" } else { path };
            self.error(
                "wrong-type",
                path,
                format!("{what} must be an object, not {}", kind(value)),
            )
            .suggestion = (!path.is_empty()).then_some(Value::Null);
            return None;
        };
        for key in map.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let hint = match nearest(key, known.iter().copied()) {
                Some(k) => format!("; did you mean {k:?}?"),
                None => format!("; known fields: {}", known.join(", ")),
            };
            let shown: String = key.chars().take(64).collect();
            self.error(
                "unknown-field",
                at(path, key),
                format!("{shown:?} is not a field here{hint}"),
            )
            .suggestion = Some(Value::Null);
        }
        Some(map)
    }

    fn request(&mut self, body: &Value) -> VmRequest {
        let mut r = VmRequest {
            count: 1,
            ..Default::default()
        };
        let Some(map) = self.object(body, "", TOP) else {
            return r;
        };
        if let Some(v) = present(map, "hardware") {
            r.hardware = self.hardware(v);
        }
        if let Some(v) = present(map, "os") {
            r.os = self.os(v);
        }
        if let Some(v) = present(map, "applications") {
            r.applications = self.applications(v);
        }
        if let Some(v) = present(map, "networks") {
            r.networks = self.networks(v);
        }
        if let Some(v) = present(map, "placement") {
            r.placement = self.placement(v);
        }
        r.hostname = present(map, "hostname").and_then(|v| self.hostname(v, "hostname", false));
        r.hostname_pattern = present(map, "hostname_pattern")
            .and_then(|v| self.hostname(v, "hostname_pattern", true));
        if let Some(v) = present(map, "count") {
            r.count = self
                .integer(v, "count", 1, u64::from(limits::MAX_COUNT), "VMs")
                .map_or(1, |n| n as u32);
        }
        r
    }

    /// A whole number in `min..=max`; out of range suggests the nearest bound.
    fn integer(&mut self, v: &Value, field: &str, min: u64, max: u64, unit: &str) -> Option<u64> {
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                let bound = n.clamp(min, max);
                self.error(
                    "out-of-range",
                    field,
                    format!("{n} {unit} is out of range: {min} to {max}"),
                )
                .suggestion = Some(Value::from(bound));
                None
            }
            None => {
                let f = v.as_f64();
                let shown = match v {
                    Value::String(s) => format!("{:?}", s.chars().take(32).collect::<String>()),
                    other => kind(other).to_owned(),
                };
                let suggestion = match (f, v.as_str().and_then(|s| s.trim().parse::<u64>().ok())) {
                    (_, Some(n)) => Some(Value::from(n.clamp(min, max))),
                    (Some(f), _) if f.is_finite() => {
                        Some(Value::from((f.round().max(0.0) as u64).clamp(min, max)))
                    }
                    _ => Some(Value::Null),
                };
                self.error(
                    "wrong-type",
                    field,
                    format!("expected a whole number of {unit} from {min} to {max}, got {shown}"),
                )
                .suggestion = suggestion;
                None
            }
        }
    }

    fn size(&mut self, v: &Value, field: &str, min: u64, max: u64) -> Option<u64> {
        match size::parse(v) {
            Ok(mib) if (min..=max).contains(&mib) => Some(mib),
            Ok(mib) => {
                let bound = mib.clamp(min, max);
                self.error(
                    "out-of-range",
                    field,
                    format!(
                        "{} is out of range: {} to {}",
                        format_mib(mib),
                        format_mib(min),
                        format_mib(max)
                    ),
                )
                .suggestion = Some(Value::from(format_mib(bound)));
                None
            }
            Err(e) => {
                let suggestion = e.suggestion.or(Some(Value::Null));
                self.error(e.code, field, e.message).suggestion = suggestion;
                None
            }
        }
    }

    /// One of an enum's values (or `any`, when allowed), with the nearest value suggested.
    fn choice<T: DeserializeOwned + serde::Serialize + Copy>(
        &mut self,
        v: &Value,
        field: &str,
        all: &[T],
    ) -> Option<T> {
        if v.as_str() == Some("any") {
            return None;
        }
        if let Ok(t) = serde_json::from_value::<T>(v.clone()) {
            return Some(t);
        }
        let names = variants(all);
        let (message, suggestion) = match v.as_str() {
            Some(s) => {
                let near = nearest(s, names.iter().map(String::as_str));
                let shown: String = s.chars().take(32).collect();
                (
                    format!("{shown:?} is not one of: {}, any", names.join(", ")),
                    near.map_or(Value::Null, Value::from),
                )
            }
            None => (
                format!("expected one of {}, any; got {}", names.join(", "), kind(v)),
                Value::Null,
            ),
        };
        self.error("unknown-value", field, message).suggestion = Some(suggestion);
        None
    }

    fn string(&mut self, v: &Value, field: &str) -> Option<String> {
        match v {
            Value::String(s) if s == "any" => None,
            Value::String(s) => Some(s.clone()),
            other => {
                self.error(
                    "wrong-type",
                    field,
                    format!("expected a string, got {}", kind(other)),
                )
                .suggestion = Some(Value::Null);
                None
            }
        }
    }

    fn name(&mut self, v: &Value, field: &str) -> Option<String> {
        let s = self.string(v, field)?;
        let mut errors = Vec::new();
        catalog::check_name(field, &s, &mut errors);
        let valid = errors.is_empty();
        for e in errors {
            let fixed = slug(&s);
            self.error("invalid-name", field, e.message).suggestion = Some(if fixed.is_empty() {
                Value::Null
            } else {
                Value::from(fixed)
            });
        }
        valid.then_some(s)
    }

    fn list<'v>(&mut self, v: &'v Value, field: &str, max: usize) -> Option<&'v [Value]> {
        match v {
            Value::Array(items) if items.len() <= max => Some(items),
            Value::Array(items) => {
                self.error(
                    "too-many",
                    field,
                    format!("at most {max} entries, got {}", items.len()),
                )
                .suggestion = Some(Value::Array(items[..max].to_vec()));
                None
            }
            other => {
                self.error(
                    "wrong-type",
                    field,
                    format!("expected a list, got {}", kind(other)),
                )
                .suggestion = Some(Value::Null);
                None
            }
        }
    }

    fn hardware(&mut self, v: &Value) -> HardwareRequest {
        let mut h = HardwareRequest::default();
        let Some(map) = self.object(v, "hardware", HARDWARE) else {
            return h;
        };
        if let Some(v) = present(map, "vcpus") {
            h.vcpus = self
                .integer(v, "hardware.vcpus", 1, u64::from(hw::MAX_VCPUS), "vCPUs")
                .map(|n| n as u32);
        }
        if let Some(v) = present(map, "memory") {
            h.memory_mib = self.size(v, "hardware.memory", hw::MIN_MEMORY_MIB, hw::MAX_MEMORY_MIB);
        }
        if let Some(v) = present(map, "disks")
            && let Some(items) = self.list(v, "hardware.disks", hw::MAX_DISKS)
        {
            if items.is_empty() {
                self.error(
                    "empty",
                    "hardware.disks",
                    "a VM needs its boot disk; leave `disks` out to take the staged VM's".into(),
                )
                .suggestion = Some(Value::Null);
            } else {
                h.disks = Some(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, d)| self.disk(d, &format!("hardware.disks[{i}]")))
                        .collect(),
                );
            }
        }
        if let Some(v) = present(map, "nics")
            && let Some(items) = self.list(v, "hardware.nics", hw::MAX_NICS)
        {
            h.nics = Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| self.nic(n, &format!("hardware.nics[{i}]")))
                    .collect(),
            );
        }
        if let Some(v) = present(map, "firmware") {
            h.firmware = self.choice(
                v,
                "hardware.firmware",
                &[crate::Firmware::Bios, crate::Firmware::Uefi],
            );
        }
        if let Some(v) = present(map, "arch") {
            h.arch = self.choice(v, "hardware.arch", &crate::Arch::ALL);
        }
        if let Some(v) = present(map, "machine_type") {
            use catalog::MachineType::*;
            h.machine_type = self.choice(v, "hardware.machine_type", &[Q35, Pc, Virt]);
        }
        h
    }

    fn disk(&mut self, v: &Value, path: &str) -> DiskRequest {
        let mut d = DiskRequest::default();
        let Some(map) = self.object(v, path, DISK) else {
            return d;
        };
        if let Some(v) = present(map, "size") {
            d.size_mib = self.size(v, &at(path, "size"), 1, hw::MAX_DISK_MIB);
        }
        if let Some(v) = present(map, "bus") {
            use catalog::DiskBus::*;
            d.bus = self.choice(v, &at(path, "bus"), &[Virtio, Nvme, Scsi, Sata, Ide]);
        }
        d
    }

    fn nic(&mut self, v: &Value, path: &str) -> NicRequest {
        let mut n = NicRequest::default();
        let Some(map) = self.object(v, path, NIC) else {
            return n;
        };
        if let Some(v) = present(map, "model") {
            use catalog::NicModel::*;
            n.model = self.choice(
                v,
                &at(path, "model"),
                &[Virtio, E1000, E1000e, Rtl8139, Vmxnet3],
            );
        }
        if let Some(v) = present(map, "network") {
            n.network = self.name(v, &at(path, "network"));
        }
        n
    }

    fn os(&mut self, v: &Value) -> OsRequest {
        let mut os = OsRequest::default();
        let Some(map) = self.object(v, "os", OS) else {
            return os;
        };
        if let Some(v) = present(map, "family") {
            os.family = self.choice(
                v,
                "os.family",
                &[OsFamily::Linux, OsFamily::Windows, OsFamily::Bsd],
            );
        }
        if let Some(v) = present(map, "distro") {
            // Distributions are named in lower case; "Debian" means debian.
            let lowered = match v {
                Value::String(s) => Value::from(s.to_ascii_lowercase()),
                other => other.clone(),
            };
            os.distro = self.name(&lowered, "os.distro");
        }
        if let Some(v) = present(map, "version") {
            // `12` as a number means the version "12".
            os.version = match v {
                Value::Number(n) => Some(n.to_string()),
                other => self.version(other, "os.version"),
            };
        }
        os
    }

    fn version(&mut self, v: &Value, field: &str) -> Option<String> {
        let s = self.string(v, field)?;
        let ok = !s.is_empty()
            && s.len() <= hw::MAX_NAME
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+~:".contains(&b));
        if !ok {
            self.error(
                "invalid-version",
                field,
                format!(
                    "{:?} is not a version: 1 to 63 letters, digits or '.-_+~:'",
                    s.chars().take(64).collect::<String>()
                ),
            )
            .suggestion = Some(Value::Null);
            return None;
        }
        Some(s)
    }

    fn applications(&mut self, v: &Value) -> Vec<AppRequest> {
        let Some(items) = self.list(v, "applications", hw::MAX_APPS) else {
            return Vec::new();
        };
        let mut apps: Vec<AppRequest> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("applications[{i}]");
            let app = match item {
                // "nginx" alone means any version.
                Value::String(_) => self.name(item, &path).map(|name| AppRequest {
                    name,
                    version: None,
                }),
                other => {
                    let Some(map) = self.object(other, &path, APP) else {
                        continue;
                    };
                    let name = match present(map, "name") {
                        Some(n) => self.name(n, &at(&path, "name")),
                        None => {
                            // Without a name the entry means nothing: suggest dropping it.
                            self.error(
                                "missing",
                                path.clone(),
                                "an application needs its name".into(),
                            )
                            .suggestion = Some(Value::Null);
                            None
                        }
                    };
                    let version = present(map, "version").and_then(|v| match v {
                        Value::Number(n) => Some(n.to_string()),
                        other => self.version(other, &at(&path, "version")),
                    });
                    name.map(|name| AppRequest { name, version })
                }
            };
            if let Some(app) = app {
                if apps.iter().any(|a| a.name == app.name) {
                    self.findings.push(
                        Finding::error(
                            SOURCE,
                            "duplicate",
                            path.clone(),
                            format!("{} is asked for twice", app.name),
                        )
                        .suggest_removal(),
                    );
                    continue;
                }
                apps.push(app);
            }
        }
        apps
    }

    fn networks(&mut self, v: &Value) -> Vec<String> {
        let Some(items) = self.list(v, "networks", limits::MAX_NETWORKS) else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("networks[{i}]");
            if let Some(n) = self.name(item, &field) {
                if out.contains(&n) {
                    self.findings.push(
                        Finding::error(SOURCE, "duplicate", field, format!("{n} is named twice"))
                            .suggest_removal(),
                    );
                } else {
                    out.push(n);
                }
            }
        }
        out
    }

    fn placement(&mut self, v: &Value) -> Constraints {
        let mut c = Constraints::default();
        let Some(map) = self.object(v, "placement", PLACEMENT) else {
            return c;
        };
        match present(map, "labels") {
            Some(Value::Object(labels)) => c.labels = self.labels(labels),
            Some(other) => {
                self.error(
                    "wrong-type",
                    "placement.labels",
                    format!("labels are an object of key: value, not {}", kind(other)),
                )
                .suggestion = Some(Value::Null);
            }
            None => {}
        }
        if let Some(v) = present(map, "anti_affinity_group") {
            c.anti_affinity_group = self.name(v, "placement.anti_affinity_group");
        }
        if let Some(v) = present(map, "affinity_group") {
            c.affinity_group = self.name(v, "placement.affinity_group");
        }
        if let Some(v) = present(map, "host") {
            c.host = self.string(v, "placement.host");
        }
        c
    }

    fn labels(&mut self, map: &Map<String, Value>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if map.len() > hw::MAX_LABELS {
            self.error(
                "too-many",
                "placement.labels",
                format!("at most {} labels, got {}", hw::MAX_LABELS, map.len()),
            )
            .suggestion = Some(Value::Null);
            return out;
        }
        for (k, v) in map {
            let field = format!("placement.labels.{k}");
            let Value::String(value) = v else {
                self.error(
                    "wrong-type",
                    field,
                    format!("a label's value is a string, not {}", kind(v)),
                )
                .suggestion = match v {
                    Value::Number(n) => Some(Value::from(n.to_string())),
                    Value::Bool(b) => Some(Value::from(b.to_string())),
                    _ => Some(Value::Null),
                };
                continue;
            };
            let mut errors = Vec::new();
            catalog::check_label(&field, k, value, &mut errors);
            if errors.is_empty() {
                out.insert(k.clone(), value.clone());
            }
            for e in errors {
                // A bad key cannot be fixed in place: the path itself is bad. Drop the label.
                self.error("invalid-label", field.clone(), e.message)
                    .suggestion = Some(Value::Null);
            }
        }
        out
    }

    /// A hostname (RFC 1123 label) or, with `pattern`, one with `{n}`/`{id}` placeholders.
    fn hostname(&mut self, v: &Value, field: &str, pattern: bool) -> Option<String> {
        let s = self.string(v, field)?;
        let probe = if pattern {
            s.replace("{n}", "1").replace("{id}", "0a1b2c3d")
        } else {
            s.clone()
        };
        if pattern && !s.contains("{n}") && !s.contains("{id}") {
            self.error(
                "no-placeholder",
                field,
                format!("{s:?} has no {{n}} or {{id}}, so every VM would get the same name"),
            )
            .suggestion = Some(Value::from(format!("{}-{{n}}", slug_host(&s))));
            return None;
        }
        if !is_hostname(&probe) {
            let fixed = slug_host(&s);
            let suggestion = match (pattern, fixed.is_empty()) {
                (_, true) => Value::Null,
                (true, false) => Value::from(format!("{fixed}-{{n}}")),
                (false, false) => Value::from(fixed),
            };
            self.error(
                "invalid-hostname",
                field,
                format!(
                    "{:?} is not a hostname: 1 to {} letters, digits and '-', not starting or ending with '-'",
                    s.chars().take(80).collect::<String>(),
                    limits::MAX_HOSTNAME
                ),
            )
            .suggestion = Some(suggestion);
            return None;
        }
        Some(s)
    }
}

/// The value of `key`, unless absent or `null` (both mean "no preference").
fn present<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// An RFC 1123 host label.
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= limits::MAX_HOSTNAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `s` made into a hostname: lower case, other characters as `-`, trimmed to length.
fn slug_host(s: &str) -> String {
    let mut out: String = s
        .replace("{n}", "")
        .replace("{id}", "")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(limits::MAX_HOSTNAME - 4);
    out.trim_matches('-').to_owned()
}

/// `s` made into a catalog name.
fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(hw::MAX_NAME);
    let out = out.trim_start_matches(['-', '.', '_']).to_owned();
    let mut errors = Vec::new();
    catalog::check_name("", &out, &mut errors);
    if errors.is_empty() {
        out
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn codes(body: Value) -> Vec<(String, String, Option<Value>)> {
        parse(&body)
            .1
            .into_iter()
            .map(|f| (f.field, f.code, f.suggestion))
            .collect()
    }

    #[test]
    fn a_good_request_reads_whole() {
        let (r, findings) = parse(&json!({
            "hardware": {"vcpus": 2, "memory": "4GiB", "disks": [{"size": "20GiB", "bus": "virtio"}],
                         "nics": [{"model": "virtio", "network": "front"}], "firmware": "uefi", "arch": "amd64"},
            "os": {"family": "linux", "distro": "Debian", "version": 12},
            "applications": ["nginx", {"name": "redis", "version": "7.0"}],
            "networks": ["front"],
            "placement": {"labels": {"rack": "b"}, "anti_affinity_group": "web"},
            "hostname_pattern": "web-{n}",
            "count": 3
        }));
        assert_eq!(findings, vec![], "{findings:?}");
        assert_eq!(r.hardware.memory_mib, Some(4096));
        assert_eq!(r.hardware.disks.as_ref().unwrap()[0].size_mib, Some(20480));
        assert_eq!(r.hardware.arch, Some(crate::Arch::X86_64));
        assert_eq!(r.os.distro.as_deref(), Some("debian"));
        assert_eq!(r.os.version.as_deref(), Some("12"));
        assert_eq!(r.applications[1].version.as_deref(), Some("7.0"));
        assert_eq!(r.count, 3);
        // The normalised form reads back as itself.
        let again = parse(&serde_json::to_value(&r).unwrap());
        assert_eq!(again, (r, vec![]));
    }

    #[test]
    fn every_problem_is_found_at_once_with_suggestions() {
        let found = codes(json!({
            "hardware": {"vcpus": 0, "memory": "8 GB", "firmwear": "uefi", "arch": "x86"},
            "os": {"family": "linus", "version": ""},
            "applications": [{"version": "1"}, "nginx", "nginx"],
            "hostname": "Web_01",
            "count": "3",
            "colour": "blue"
        }));
        let has = |field: &str, code: &str, suggestion: Option<Value>| {
            assert!(
                found.contains(&(field.to_owned(), code.to_owned(), suggestion.clone())),
                "{field} {code} {suggestion:?} not in {found:#?}"
            );
        };
        has("hardware.vcpus", "out-of-range", Some(json!(1)));
        has("hardware.memory", "decimal-unit", Some(json!("8GiB")));
        has("hardware.firmwear", "unknown-field", Some(Value::Null));
        has("hardware.arch", "unknown-value", Some(json!("x86_64")));
        has("os.family", "unknown-value", Some(json!("linux")));
        has("os.version", "invalid-version", Some(Value::Null));
        has("applications[0]", "missing", Some(Value::Null));
        has("applications[2]", "duplicate", Some(Value::Null));
        has("hostname", "invalid-hostname", Some(json!("web-01")));
        has("count", "wrong-type", Some(json!(3)));
        has("colour", "unknown-field", Some(Value::Null));
        assert_eq!(found.len(), 11, "{found:#?}");
    }

    #[test]
    fn hostile_shapes_are_findings_not_panics() {
        for body in [
            json!(null),
            json!([1, 2]),
            json!({"hardware": []}),
            json!({"hardware": {"disks": {}}}),
            json!({"hardware": {"disks": [[]], "nics": [1]}}),
            json!({"placement": {"labels": {"=": 1, "a": ["x"]}}}),
            json!({"applications": [null, 5, {"name": {}}]}),
            json!({"hostname_pattern": "{n}{n}{n}".repeat(40)}),
            json!({"count": 1e300}),
            json!({"hardware": {"disks": vec![json!({}); 100]}}),
        ] {
            let (_, findings) = parse(&body);
            assert!(!findings.is_empty(), "{body}");
        }
    }
}
