//! The plugin manifest, `plugin.toml`: what a plugin is, which contract it was built for, what it
//! may use, and its default configuration.
//!
//! ```toml
//! name = "capacity-filter"
//! version = "0.1.0"
//! kind = "placement"
//! contract = "0.1.0"
//! description = "Rejects hosts without the CPU, memory or disk a VM needs."
//!
//! [limits]
//! memory-mib = 64
//! deadline-ms = 100
//!
//! [config]
//! cpu-allocation-ratio = 4.0
//! ```
//!
//! Unknown fields are errors, so a typo is caught at load rather than silently ignored. The JSON
//! Schema generated from these types is committed as `plugin-manifest.schema.json`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A plugin's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    /// Unique name: lower-case letters, digits and `-`, at most 64 characters.
    pub name: String,
    /// The plugin's own version (semver).
    pub version: String,
    pub kind: PluginKind,
    /// The version of the `slipway:plugin` contract the plugin was built against (semver).
    pub contract: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The component file, relative to the manifest. Defaults to `<name>.wasm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Which operating systems an identity or drivers plugin handles. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applies_to: Vec<OsMatch>,
    #[serde(default)]
    pub limits: Limits,
    /// The plugin's default configuration, passed to it as JSON. A site may override keys.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// The four kinds of plugin, one per world of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Filters and scores hosts (world `placement-plugin`).
    Placement,
    /// Checks requests against site policy (world `validation-plugin`).
    Validation,
    /// Inspects an OS in a guest tree and strips the model's identity (world `identity-plugin`).
    Identity,
    /// Substitutes hardware-dependent files (world `drivers-plugin`).
    Drivers,
}

impl PluginKind {
    /// The WIT world a plugin of this kind follows.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Placement => "placement-plugin",
            PluginKind::Validation => "validation-plugin",
            PluginKind::Identity => "identity-plugin",
            PluginKind::Drivers => "drivers-plugin",
        }
    }

    /// The interface a plugin of this kind exports.
    pub fn interface(self) -> &'static str {
        match self {
            PluginKind::Placement => "placement",
            PluginKind::Validation => "validation",
            PluginKind::Identity => "identity",
            PluginKind::Drivers => "drivers",
        }
    }

    /// Whether the plugin works on a guest tree (and so gets it as a preopened directory).
    pub fn works_on_tree(self) -> bool {
        matches!(self, PluginKind::Identity | PluginKind::Drivers)
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// An operating system an identity or drivers plugin applies to. Absent fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OsMatch {
    pub family: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What one call of the plugin may use. Absent fields take the defaults of the plugin's kind;
/// values above the server's ceilings are refused at load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Linear memory, in MiB, for each of the component's memories (Rust plugins have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Wall-clock time for one call, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Elements of each of the plugin's tables (function references).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_elements: Option<u32>,
    /// Core instances the component may create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
}

/// Limits with every value decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub memory_bytes: usize,
    pub deadline: Duration,
    pub table_elements: usize,
    pub instances: usize,
    /// The most bytes one call may hand back to the host (results, log lines): wasmtime's
    /// "hostcall fuel", so that a plugin cannot make the host allocate without bound.
    pub result_bytes: usize,
}

/// Ceilings no manifest may exceed.
pub const MAX_MEMORY_MIB: u32 = 4096;
pub const MAX_DEADLINE_MS: u64 = 10 * 60 * 1000;
pub const MAX_TABLE_ELEMENTS: u32 = 100_000;
/// The runtime's pool gives each component at most this many core instances.
pub const MAX_INSTANCES: u32 = 16;

impl Limits {
    /// The limits for a plugin of `kind`, with this manifest's values where it gives them.
    pub fn effective(&self, kind: PluginKind) -> Result<EffectiveLimits, ManifestError> {
        // Tree plugins walk whole file systems; policy plugins answer within a request.
        let (memory, deadline) = if kind.works_on_tree() {
            (256, 60_000)
        } else {
            (64, 200)
        };
        let memory_mib = self.memory_mib.unwrap_or(memory);
        let deadline_ms = self.deadline_ms.unwrap_or(deadline);
        let table_elements = self.table_elements.unwrap_or(20_000);
        let instances = self.instances.unwrap_or(MAX_INSTANCES);
        check_range(
            "limits.memory-mib",
            memory_mib.into(),
            1,
            MAX_MEMORY_MIB.into(),
        )?;
        check_range("limits.deadline-ms", deadline_ms, 1, MAX_DEADLINE_MS)?;
        check_range(
            "limits.table-elements",
            table_elements.into(),
            1,
            MAX_TABLE_ELEMENTS.into(),
        )?;
        check_range(
            "limits.instances",
            instances.into(),
            1,
            MAX_INSTANCES.into(),
        )?;
        Ok(EffectiveLimits {
            memory_bytes: memory_mib as usize * 1024 * 1024,
            deadline: Duration::from_millis(deadline_ms),
            table_elements: table_elements as usize,
            instances: instances as usize,
            // A placement answer is 16 bytes a host (1 MiB covers 65,000 hosts); findings and
            // operation lists are small. Tree plugins report every path they changed.
            result_bytes: if kind.works_on_tree() {
                16 << 20
            } else {
                4 << 20
            },
        })
    }
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ManifestError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ManifestError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

/// What is wrong with a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest could not be read.
    #[error("cannot read plugin manifest {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid TOML or does not fit the schema (the message names the field).
    #[error("invalid plugin manifest: {0}")]
    Parse(String),
    /// A field holds a value the manifest does not allow.
    #[error("invalid plugin manifest: `{field}` {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    /// A limit is outside what the server allows.
    #[error("invalid plugin manifest: `{field}` is {value}, allowed {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Reads `plugin.toml` (or the file `path` names).
    pub fn from_path(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Checks what the schema alone cannot.
    pub fn check(&self) -> Result<(), ManifestError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(ManifestError::Invalid {
                field: "name",
                problem: format!(
                    "is {:?}; use 1 to 64 lower-case letters, digits and `-`",
                    self.name
                ),
            });
        }
        semver::Version::parse(&self.version).map_err(|e| ManifestError::Invalid {
            field: "version",
            problem: format!("is {:?}, not a semver version: {e}", self.version),
        })?;
        self.contract_version()?;
        if !self.applies_to.is_empty() && !self.kind.works_on_tree() {
            return Err(ManifestError::Invalid {
                field: "applies-to",
                problem: format!(
                    "is only meaningful for identity and drivers plugins, not {}",
                    self.kind
                ),
            });
        }
        if let Some(component) = &self.component {
            let path = Path::new(component);
            let plain = path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(ManifestError::Invalid {
                    field: "component",
                    problem: format!(
                        "is {component:?}; it must be a relative path inside the plugin's directory"
                    ),
                });
            }
        }
        self.limits.effective(self.kind)?;
        Ok(())
    }

    /// The contract version this plugin declares.
    pub fn contract_version(&self) -> Result<semver::Version, ManifestError> {
        semver::Version::parse(&self.contract).map_err(|e| ManifestError::Invalid {
            field: "contract",
            problem: format!("is {:?}, not a semver version: {e}", self.contract),
        })
    }

    /// The component's file name.
    pub fn component_file(&self) -> String {
        self.component
            .clone()
            .unwrap_or_else(|| format!("{}.wasm", self.name))
    }

    /// The configuration as the JSON document the plugin receives.
    pub fn config_json(&self) -> String {
        serde_json::Value::Object(self.config.clone()).to_string()
    }

    /// The JSON Schema of the manifest format, as committed in `plugin-manifest.schema.json`.
    pub fn json_schema() -> String {
        let schema = schemars::schema_for!(Manifest);
        let mut text = serde_json::to_string_pretty(&schema).expect("a schema serialises");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "capacity-filter"
        version = "0.1.0"
        kind = "placement"
        contract = "0.1.0"
    "#;

    #[test]
    fn minimal_manifest_takes_kind_defaults() {
        let m = Manifest::from_toml(MINIMAL).unwrap();
        let limits = m.limits.effective(m.kind).unwrap();
        assert_eq!(limits.memory_bytes, 64 << 20);
        assert_eq!(m.component_file(), "capacity-filter.wasm");
        assert_eq!(m.config_json(), "{}");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Manifest::from_toml(&format!("{MINIMAL}\nmemory = 5")).unwrap_err();
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
    }

    #[test]
    fn limit_above_ceiling_is_refused() {
        let err =
            Manifest::from_toml(&format!("{MINIMAL}\n[limits]\nmemory-mib = 100000")).unwrap_err();
        assert!(err.to_string().contains("limits.memory-mib"), "{err}");
    }

    #[test]
    fn component_path_cannot_leave_the_plugin_directory() {
        let err =
            Manifest::from_toml(&format!("{MINIMAL}\ncomponent = \"../x.wasm\"")).unwrap_err();
        assert!(err.to_string().contains("`component`"), "{err}");
    }

    #[test]
    fn config_table_becomes_json() {
        let m = Manifest::from_toml(&format!("{MINIMAL}\n[config]\ncpu-allocation-ratio = 4.0"))
            .unwrap();
        assert_eq!(m.config_json(), r#"{"cpu-allocation-ratio":4.0}"#);
    }
}
