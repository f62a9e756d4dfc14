//! What the server knows about one host at one moment: capacity, what is claimed, what the host
//! reports of itself, and its labels.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Arch, HostFeature};

/// One host as placement sees it: a snapshot of the monitored inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostSnapshot {
    /// The host's stable identifier.
    pub id: String,
    pub arch: Arch,
    /// Physical CPU threads.
    pub vcpus_total: u32,
    /// vCPUs claimed by VMs placed on the host.
    #[serde(default)]
    pub vcpus_allocated: u32,
    pub memory_total_mib: u64,
    /// Memory claimed by VMs placed on the host.
    #[serde(default)]
    pub memory_allocated_mib: u64,
    /// Memory the host reports free right now; defaults to unclaimed memory.
    #[serde(default)]
    pub memory_available_mib: Option<u64>,
    /// Disk space for VM images in the agent's data directory.
    pub disk_total_mib: u64,
    #[serde(default)]
    pub disk_allocated_mib: u64,
    /// One-minute load average times 1000.
    #[serde(default)]
    pub load_milli: u32,
    /// VMs running on the host.
    #[serde(default)]
    pub vms: u32,
    #[serde(default)]
    pub features: Vec<HostFeature>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Affinity and anti-affinity groups of the VMs already on the host.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl HostSnapshot {
    /// Memory the host reports free, or what is left unclaimed when it has not reported.
    pub fn memory_available_mib(&self) -> u64 {
        self.memory_available_mib.unwrap_or(
            self.memory_total_mib
                .saturating_sub(self.memory_allocated_mib),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_reads_from_minimal_json_with_defaults() {
        let h: HostSnapshot = serde_json::from_str(
            r#"{ "id": "a", "arch": "amd64", "vcpus_total": 4, "memory_total_mib": 1024,
                 "disk_total_mib": 10, "memory_allocated_mib": 256 }"#,
        )
        .unwrap();
        assert_eq!(h.arch, Arch::X86_64, "amd64 is an alias");
        assert_eq!(
            h.memory_available_mib(),
            768,
            "unreported free memory is what is unclaimed"
        );
        assert!(h.labels.is_empty() && h.groups.is_empty());
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let err = serde_json::from_str::<HostSnapshot>(
            r#"{ "id": "a", "arch": "x86_64", "vcpus_total": 4, "memory_total_mib": 1,
                 "disk_total_mib": 1, "ram": 5 }"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `ram`"), "{err}");
    }
}
