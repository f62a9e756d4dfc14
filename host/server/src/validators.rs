//! Validator plugins: site policy on requests, the third layer of validation. Every enabled
//! validation plugin sees the request (as the VM would be deployed) and returns findings; they
//! are merged with Slipway's own. A validator that fails — traps, runs past its deadline,
//! allocates past its limit, returns too much — fails closed: its failure is an error finding
//! naming it, so that a broken policy never lets a request through unseen.
//!
//! Which validators run, and with what configuration, is a setting an admin changes through the
//! API; without one, every loaded validation plugin runs with its manifest's configuration.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_core::catalog::{DiskBus, NicModel};
use slipway_core::request::{Finding, Severity, VmRequest};
use slipway_core::resources::{Role, StagedVm};
use slipway_core::{Arch, Firmware, catalog::HardwareConfig};
use slipway_runtime::manifest::PluginKind;
use slipway_runtime::types as wit;
use slipway_runtime::validation::{ValidationContext, ValidationPlugin};
use slipway_store::{Store, StoreError};
use utoipa::ToSchema;

use crate::plugins::{Registry, kind_name};

const SETTING: &str = "validation.validators";

/// At most this much of a plugin's text is kept in a finding.
const MAX_TEXT: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidatorsSpec {
    /// Run in order; their findings are merged.
    pub validators: Vec<ValidatorSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidatorSpec {
    /// A validation plugin, by name.
    pub plugin: String,
    /// Keys merged over the plugin manifest's `config`: the site's policy.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub config: serde_json::Map<String, Value>,
    /// [default: true]
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// The validators as the API shows them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidatorsView {
    /// 0 until an admin sets them: then every loaded validation plugin runs.
    pub revision: u64,
    pub validators: Vec<ValidatorSpec>,
    /// `name@version` of each that runs.
    pub running: Vec<String>,
}

/// One validator's run on one request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidatorRun {
    /// `name@version`.
    pub plugin: String,
    pub findings: usize,
    /// Why it failed, when it did (its failure is also an error finding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub elapsed_us: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ValidatorsError {
    #[error("validators[{index}].plugin: no plugin is named {name}")]
    Unknown { index: usize, name: String },
    #[error("validators[{index}].plugin: {name} is a {kind} plugin, not a validation plugin")]
    NotValidation {
        index: usize,
        name: String,
        kind: &'static str,
    },
    #[error("validators[{index}].config: {detail}")]
    Config { index: usize, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ValidatorsError {
    pub fn field(&self) -> String {
        match self {
            Self::Unknown { index, .. } | Self::NotValidation { index, .. } => {
                format!("validators[{index}].plugin")
            }
            Self::Config { index, .. } => format!("validators[{index}].config"),
            _ => "validators".into(),
        }
    }
}

struct Built {
    /// What it was built from: the spec's revision and each plugin's component digest, so that
    /// an installed replacement is noticed.
    key: (u64, Vec<String>),
    plugins: Arc<Vec<ValidationPlugin>>,
}

pub struct Validators {
    store: Store,
    registry: Arc<Registry>,
    spec: RwLock<(Option<ValidatorsSpec>, u64)>,
    built: RwLock<Option<Built>>,
}

impl Validators {
    pub async fn open(store: Store, registry: Arc<Registry>) -> anyhow::Result<Self> {
        let spec = match store.setting(SETTING).await? {
            Some((value, revision)) => match serde_json::from_value(value) {
                Ok(spec) => (Some(spec), revision),
                Err(e) => {
                    tracing::error!(error = %e, "the stored validators cannot be read; running every loaded validation plugin until an admin sets them");
                    (None, revision)
                }
            },
            None => (None, 0),
        };
        Ok(Self {
            store,
            registry,
            spec: RwLock::new(spec),
            built: RwLock::new(None),
        })
    }

    fn effective(&self) -> (ValidatorsSpec, u64) {
        let (spec, revision) = self.spec.read().unwrap_or_else(|e| e.into_inner()).clone();
        let spec = spec.unwrap_or_else(|| ValidatorsSpec {
            validators: self
                .registry
                .all()
                .into_iter()
                .filter(|e| e.manifest.kind == PluginKind::Validation)
                .map(|e| ValidatorSpec {
                    plugin: e.manifest.name.clone(),
                    config: Default::default(),
                    enabled: true,
                })
                .collect(),
        });
        (spec, revision)
    }

    pub async fn view(&self) -> Result<ValidatorsView, ValidatorsError> {
        let (spec, revision) = self.effective();
        let running = self
            .plugins()
            .await?
            .iter()
            .map(|p| format!("{}@{}", p.name(), p.manifest().version))
            .collect();
        Ok(ValidatorsView {
            revision,
            validators: spec.validators,
            running,
        })
    }

    /// Replaces the validators, once every one of them loads with its configuration.
    pub async fn set(
        &self,
        spec: ValidatorsSpec,
        expected: Option<u64>,
    ) -> Result<ValidatorsView, ValidatorsError> {
        let registry = self.registry.clone();
        let checked = spec.clone();
        tokio::task::spawn_blocking(move || build(&registry, &checked))
            .await
            .map_err(|e| ValidatorsError::Internal(e.to_string()))??;
        let value =
            serde_json::to_value(&spec).map_err(|e| ValidatorsError::Internal(e.to_string()))?;
        let revision = self.store.put_setting(SETTING, &value, expected).await?;
        *self.spec.write().unwrap_or_else(|e| e.into_inner()) = (Some(spec), revision);
        self.view().await
    }

    /// The validators that run, built anew when the spec or a plugin changed.
    async fn plugins(&self) -> Result<Arc<Vec<ValidationPlugin>>, ValidatorsError> {
        let (spec, revision) = self.effective();
        let digests: Vec<String> = spec
            .validators
            .iter()
            .filter(|v| v.enabled)
            .map(|v| {
                self.registry
                    .get(&v.plugin)
                    .map_or_else(String::new, |e| e.sha256)
            })
            .collect();
        let key = (revision, digests);
        if let Some(b) = &*self.built.read().unwrap_or_else(|e| e.into_inner())
            && b.key == key
        {
            return Ok(b.plugins.clone());
        }
        let registry = self.registry.clone();
        let plugins = tokio::task::spawn_blocking(move || build(&registry, &spec))
            .await
            .map_err(|e| ValidatorsError::Internal(e.to_string()))??;
        let plugins = Arc::new(plugins);
        *self.built.write().unwrap_or_else(|e| e.into_inner()) = Some(Built {
            key,
            plugins: plugins.clone(),
        });
        Ok(plugins)
    }

    /// Runs every enabled validator on the request as it would be deployed; their findings, with
    /// fields in the API's terms, and how each run went.
    pub async fn validate(
        &self,
        request: &VmRequest,
        hardware: Option<&HardwareConfig>,
        staged: Option<&StagedVm>,
        role: Role,
        catalog: &[StagedVm],
    ) -> (Vec<Finding>, Vec<ValidatorRun>) {
        let plugins = match self.plugins().await {
            Ok(p) => p,
            Err(e) => {
                let finding = Finding::error(
                    "validation",
                    "validator-failed",
                    "",
                    format!("the site's validators cannot run: {e}"),
                );
                return (vec![finding], Vec::new());
            }
        };
        if plugins.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let wire = to_wit(request, hardware, staged);
        let context = ValidationContext {
            role: role.as_str().to_owned(),
            catalog_os: catalog_os(catalog),
        };
        let apps = request.applications.len();
        tokio::task::spawn_blocking(move || {
            let mut findings = Vec::new();
            let mut runs = Vec::new();
            for plugin in plugins.iter() {
                let started = Instant::now();
                let label = format!("{}@{}", plugin.name(), plugin.manifest().version);
                let source = format!("plugin:{}", plugin.name());
                let result = plugin.validate(&wire, &context);
                let elapsed_us = started.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
                match result {
                    Ok(found) => {
                        runs.push(ValidatorRun {
                            plugin: label,
                            findings: found.len(),
                            error: None,
                            elapsed_us,
                        });
                        findings.extend(
                            found
                                .into_iter()
                                .map(|f| from_wit(f, &source, plugin.name(), apps)),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(plugin = %label, error = %e, "a validator failed");
                        findings.push(Finding::error(
                            &source,
                            "validator-failed",
                            "",
                            format!(
                                "the site's validator {label} failed, so the request cannot be checked against site policy: {e}"
                            ),
                        ));
                        runs.push(ValidatorRun {
                            plugin: label,
                            findings: 0,
                            error: Some(e.to_string()),
                            elapsed_us,
                        });
                    }
                }
            }
            (findings, runs)
        })
        .await
        .unwrap_or_else(|e| {
            (
                vec![Finding::error(
                    "validation",
                    "validator-failed",
                    "",
                    format!("the validators panicked: {e}"),
                )],
                Vec::new(),
            )
        })
    }
}

fn build(
    registry: &Registry,
    spec: &ValidatorsSpec,
) -> Result<Vec<ValidationPlugin>, ValidatorsError> {
    let mut out = Vec::new();
    for (index, v) in spec.validators.iter().enumerate() {
        let entry = registry
            .get(&v.plugin)
            .ok_or_else(|| ValidatorsError::Unknown {
                index,
                name: v.plugin.clone(),
            })?;
        if entry.manifest.kind != PluginKind::Validation {
            return Err(ValidatorsError::NotValidation {
                index,
                name: v.plugin.clone(),
                kind: kind_name(entry.manifest.kind),
            });
        }
        if !v.enabled {
            continue;
        }
        let plugin = entry
            .configured(registry.runtime(), &v.config)
            .map_err(|e| ValidatorsError::Config {
                index,
                detail: e.to_string(),
            })?;
        if let Some(p) = plugin.into_validation() {
            out.push(p);
        }
    }
    Ok(out)
}

fn wit_arch(a: Arch) -> wit::Arch {
    match a {
        Arch::X86_64 => wit::Arch::X8664,
        Arch::Aarch64 => wit::Arch::Aarch64,
        Arch::Riscv64 => wit::Arch::Riscv64,
        Arch::Ppc64le => wit::Arch::Ppc64le,
        Arch::S390x => wit::Arch::S390x,
    }
}

fn wit_firmware(f: Firmware) -> wit::Firmware {
    match f {
        Firmware::Bios => wit::Firmware::Bios,
        Firmware::Uefi => wit::Firmware::Uefi,
    }
}

fn wit_bus(b: DiskBus) -> wit::DiskBus {
    match b {
        DiskBus::Virtio => wit::DiskBus::Virtio,
        DiskBus::Nvme => wit::DiskBus::Nvme,
        DiskBus::Scsi => wit::DiskBus::Scsi,
        DiskBus::Sata => wit::DiskBus::Sata,
        DiskBus::Ide => wit::DiskBus::Ide,
    }
}

fn wit_nic(m: NicModel) -> wit::NicModel {
    match m {
        NicModel::Virtio => wit::NicModel::Virtio,
        NicModel::E1000 => wit::NicModel::E1000,
        NicModel::E1000e => wit::NicModel::E1000e,
        NicModel::Rtl8139 => wit::NicModel::Rtl8139,
        NicModel::Vmxnet3 => wit::NicModel::Vmxnet3,
    }
}

fn wit_init(s: &str) -> wit::InitSystem {
    match s {
        "systemd" => wit::InitSystem::Systemd,
        "openrc" => wit::InitSystem::Openrc,
        "sysvinit" => wit::InitSystem::Sysvinit,
        "busybox" => wit::InitSystem::Busybox,
        _ => wit::InitSystem::Unknown,
    }
}

fn catalog_os(staged: &[StagedVm]) -> Vec<wit::OsInfo> {
    let mut out: Vec<wit::OsInfo> = Vec::new();
    for s in staged {
        let os = wit::OsInfo {
            family: s.os.family.clone(),
            distro: s.os.distro.clone(),
            version: s.os.version.clone(),
            arch: wit_arch(s.hardware.arch),
            init_system: wit_init(&s.os.init_system),
        };
        if !out.contains(&os) {
            out.push(os);
        }
    }
    out
}

/// The request as the VM would be deployed: the chosen staged VM's OS and the resolved
/// hardware, so that a policy judges what would run, not what was left to "any".
fn to_wit(
    request: &VmRequest,
    hardware: Option<&HardwareConfig>,
    staged: Option<&StagedVm>,
) -> wit::VmRequest {
    let h = &request.hardware;
    let nics = request.hardware.nics.clone().unwrap_or_default();
    wit::VmRequest {
        vcpus: hardware.map_or(h.vcpus.unwrap_or(1), |hw| hw.vcpus),
        memory_mib: hardware.map_or(h.memory_mib.unwrap_or(0), |hw| hw.memory_mib),
        disks: hardware
            .map(|hw| {
                hw.disks
                    .iter()
                    .map(|d| wit::Disk {
                        size_mib: d.size_mib,
                        bus: wit_bus(d.bus),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        nics: hardware
            .map(|hw| {
                hw.nics
                    .iter()
                    .enumerate()
                    .map(|(i, n)| wit::Nic {
                        model: wit_nic(n.model),
                        network: nics.get(i).and_then(|n| n.network.clone()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        firmware: hardware
            .map(|hw| hw.firmware)
            .or(h.firmware)
            .map(wit_firmware),
        arch: hardware.map(|hw| hw.arch).or(h.arch).map(wit_arch),
        os_family: staged
            .map(|s| s.os.family.clone())
            .or_else(|| request.os.family.map(|f| f.as_str().to_owned())),
        os_distro: staged
            .map(|s| s.os.distro.clone())
            .or_else(|| request.os.distro.clone()),
        os_version: staged
            .map(|s| s.os.version.clone())
            .or_else(|| request.os.version.clone()),
        apps: request
            .applications
            .iter()
            .map(|a| wit::App {
                name: a.name.clone(),
                version: a.version.clone(),
            })
            .collect(),
        required_labels: request
            .placement
            .labels
            .iter()
            .map(|(k, v)| wit::Label {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        anti_affinity_group: request.placement.anti_affinity_group.clone(),
        affinity_group: request.placement.affinity_group.clone(),
        hostname: request
            .hostname
            .clone()
            .or_else(|| request.hostname_pattern.clone()),
        count: request.count,
    }
}

fn clip(s: String) -> String {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Where a WIT field (`memory-mib`, `apps.2.version`) is in the API's request, and whether its
/// suggestions are numbers; `None` for a field the request does not have.
fn api_field(field: &str, apps: usize) -> Option<(String, bool)> {
    let parts: Vec<&str> = field.split('.').collect();
    let index = |s: &str| s.parse::<usize>().ok().filter(|i| *i < 1024);
    Some(match parts.as_slice() {
        [""] => (String::new(), false),
        ["vcpus"] => ("hardware.vcpus".into(), true),
        ["memory-mib"] => ("hardware.memory".into(), true),
        ["firmware"] => ("hardware.firmware".into(), false),
        ["arch"] => ("hardware.arch".into(), false),
        ["disks"] => ("hardware.disks".into(), false),
        ["disks", i] => (format!("hardware.disks[{}]", index(i)?), false),
        ["disks", i, "size-mib"] => (format!("hardware.disks[{}].size", index(i)?), true),
        ["disks", i, "bus"] => (format!("hardware.disks[{}].bus", index(i)?), false),
        ["nics"] => ("hardware.nics".into(), false),
        ["nics", i] => (format!("hardware.nics[{}]", index(i)?), false),
        ["nics", i, f @ ("model" | "network")] => {
            (format!("hardware.nics[{}].{f}", index(i)?), false)
        }
        ["os-family"] => ("os.family".into(), false),
        ["os-distro"] => ("os.distro".into(), false),
        ["os-version"] => ("os.version".into(), false),
        ["apps"] => ("applications".into(), false),
        ["apps", i] if index(i)? < apps => (format!("applications[{i}]"), false),
        ["apps", i, f @ ("name" | "version")] if index(i)? < apps => {
            (format!("applications[{i}].{f}"), false)
        }
        ["required-labels"] => ("placement.labels".into(), false),
        ["anti-affinity-group"] => ("placement.anti_affinity_group".into(), false),
        ["affinity-group"] => ("placement.affinity_group".into(), false),
        ["hostname"] => ("hostname".into(), false),
        ["count"] => ("count".into(), true),
        _ => return None,
    })
}

/// A plugin's finding in the API's terms. A field the request does not have is kept (a policy
/// said something) but moved to the request as a whole, with the bad name in the message.
fn from_wit(f: wit::Finding, source: &str, plugin: &str, apps: usize) -> Finding {
    let severity = match f.severity {
        wit::Severity::Info => Severity::Info,
        wit::Severity::Warning => Severity::Warning,
        wit::Severity::Error => Severity::Error,
    };
    let message = clip(f.message);
    let Some((mut field, numeric)) = api_field(&f.field, apps) else {
        let named: String = f.field.chars().take(80).collect();
        return Finding {
            severity,
            field: String::new(),
            message: format!(
                "{message} (validator {plugin} named a field the request does not have: {named:?})"
            ),
            suggestion: None,
            source: source.to_owned(),
            code: "plugin-unknown-field".into(),
        };
    };
    let mut suggestion = f.suggestion.map(|s| {
        let s = clip(s);
        match (numeric, s.trim().parse::<u64>()) {
            (true, Ok(n)) => Value::from(n),
            _ => Value::from(s),
        }
    });
    // `required-labels` with `key=value`: that label, in the request's map of labels.
    if field == "placement.labels"
        && let Some(Value::String(s)) = &suggestion
        && let Some((k, v)) = s.split_once('=')
    {
        field = format!("placement.labels.{k}");
        suggestion = Some(Value::from(v));
    }
    Finding {
        severity,
        field,
        message,
        suggestion,
        source: source.to_owned(),
        code: "policy".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_fields_map_to_the_api_or_nowhere() {
        assert_eq!(
            api_field("memory-mib", 0),
            Some(("hardware.memory".into(), true))
        );
        assert_eq!(
            api_field("apps.1.version", 2),
            Some(("applications[1].version".into(), false))
        );
        assert_eq!(api_field("apps.5.version", 2), None);
        assert_eq!(api_field("disks.x.bus", 2), None);
        assert_eq!(api_field("no-such-field", 0), None);
        assert_eq!(api_field("disks.99999999999.bus", 0), None);
    }
}
