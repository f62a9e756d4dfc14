//! `validate-basic`: a site's everyday policy on VM requests.
//!
//! - per-role limits (`roles.<role>.max-vcpus`, `max-memory-mib`, `max-count`): a request over a
//!   limit is refused with the limit as the suggestion;
//! - `allowed-os`: `family`, `family/distro` or `family/distro/version` entries; a request for
//!   another OS is refused, with the closest allowed OS the catalog can serve as the suggestion;
//! - `required-labels`: `key=value` labels every request must require of its host (a site that
//!   keeps requesters on their own racks); a missing one is suggested.

use std::collections::BTreeMap;

use serde::Deserialize;
use slipway_plugin_sdk::validation::*;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub roles: BTreeMap<String, RoleLimits>,
    pub allowed_os: Vec<String>,
    pub required_labels: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoleLimits {
    pub max_vcpus: Option<u32>,
    pub max_memory_mib: Option<u64>,
    pub max_count: Option<u32>,
}

const ROLES: [&str; 3] = ["admin", "operator", "requester"];

pub struct ValidateBasic {
    config: Config,
    /// `allowed-os`, split into its levels.
    allowed: Vec<Vec<String>>,
    required: Vec<(String, String)>,
}

impl Validation for ValidateBasic {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        for role in config.roles.keys() {
            if !ROLES.contains(&role.as_str()) {
                return Err(format!(
                    "roles.{role}: not a role; roles are {}",
                    ROLES.join(", ")
                ));
            }
        }
        let mut allowed = Vec::new();
        for os in &config.allowed_os {
            let levels: Vec<String> = os.split('/').map(str::to_owned).collect();
            if levels.len() > 3 || levels.iter().any(String::is_empty) {
                return Err(format!(
                    "allowed-os: {os:?} is not family, family/distro or family/distro/version"
                ));
            }
            allowed.push(levels);
        }
        let mut required = Vec::new();
        for label in &config.required_labels {
            match label.split_once('=') {
                Some((k, v)) if !k.is_empty() => required.push((k.to_owned(), v.to_owned())),
                _ => {
                    return Err(format!(
                        "required-labels: {label:?} must be written key=value"
                    ));
                }
            }
        }
        Ok(Self {
            config,
            allowed,
            required,
        })
    }

    fn validate(
        &self,
        request: &VmRequest,
        context: &ValidationContext,
    ) -> Result<Vec<Finding>, String> {
        let mut findings = Vec::new();
        if let Some(limits) = self.config.roles.get(&context.role) {
            let role = &context.role;
            if let Some(max) = limits.max_vcpus
                && request.vcpus > max
            {
                findings.push(error(
                    "vcpus",
                    format!("{} vCPUs exceed the {role} limit of {max}", request.vcpus),
                    Some(max.to_string()),
                ));
            }
            if let Some(max) = limits.max_memory_mib
                && request.memory_mib > max
            {
                findings.push(error(
                    "memory-mib",
                    format!(
                        "{} MiB of memory exceed the {role} limit of {max} MiB",
                        request.memory_mib
                    ),
                    Some(max.to_string()),
                ));
            }
            if let Some(max) = limits.max_count
                && request.count > max
            {
                findings.push(error(
                    "count",
                    format!(
                        "{} VMs exceed the {role} limit of {max} per request",
                        request.count
                    ),
                    Some(max.to_string()),
                ));
            }
        }
        if !self.allowed.is_empty() {
            let os = [
                request.os_family.as_deref().unwrap_or(""),
                request.os_distro.as_deref().unwrap_or(""),
                request.os_version.as_deref().unwrap_or(""),
            ];
            let allows = |levels: &[String], os: [&str; 3]| {
                levels.iter().zip(os).all(|(want, have)| want == have)
            };
            if !self.allowed.iter().any(|a| allows(a, os)) {
                // The closest OS the catalog can serve that the policy allows: same family first.
                let served: Vec<[&str; 3]> = context
                    .catalog_os
                    .iter()
                    .map(|o| [o.family.as_str(), o.distro.as_str(), o.version.as_str()])
                    .filter(|o| self.allowed.iter().any(|a| allows(a, *o)))
                    .collect();
                let closest = served
                    .iter()
                    .max_by_key(|o| o.iter().zip(os).take_while(|(a, b)| *a == b).count());
                let shown = os
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>();
                let message = format!(
                    "{} is not allowed here; allowed: {}",
                    if shown.is_empty() {
                        "this OS".to_owned()
                    } else {
                        shown.join(" ")
                    },
                    self.config.allowed_os.join(", ")
                );
                match closest {
                    // Suggest each level that differs, so that taking every suggestion lands on
                    // an allowed OS the catalog serves.
                    Some(c) => {
                        let fields = ["os-family", "os-distro", "os-version"];
                        let message = format!("{message}; the closest is {}", c.join(" "));
                        for ((field, want), have) in fields.iter().zip(c).zip(os) {
                            if *want != have {
                                findings.push(error(
                                    field,
                                    message.clone(),
                                    Some(want.to_string()),
                                ));
                            }
                        }
                    }
                    None => findings.push(error("os-distro", message, None)),
                }
            }
        }
        for (key, value) in &self.required {
            let has = request
                .required_labels
                .iter()
                .any(|l| l.key == *key && l.value == *value);
            if !has {
                findings.push(error(
                    "required-labels",
                    format!("requests here must require the host label {key}={value}"),
                    Some(format!("{key}={value}")),
                ));
            }
        }
        Ok(findings)
    }
}

slipway_plugin_sdk::export_validation!(ValidateBasic);
