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
