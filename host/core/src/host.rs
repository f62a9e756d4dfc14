//! What the server knows about one host at one moment: capacity, what is claimed, what the host
//! reports of itself, and its labels.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::{HostMode, HostReport, HostState, Resources};
use crate::resources::Timestamp;
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

/// A host of the inventory, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Host {
    pub id: String,
    pub name: String,
    pub state: HostState,
    pub mode: HostMode,
    pub agent_url: String,
    /// What placement may claim: the reported amounts times the server's allocation ratios.
    pub capacity: Resources,
    /// What claims hold now.
    pub claimed: Resources,
    /// The number of claims on the host.
    pub claims: u32,
    /// The agent's last report.
    pub report: HostReport,
    pub last_heartbeat: Timestamp,
    pub joined_at: Timestamp,
    /// The join token it joined with, by id.
    pub join_token: String,
}

/// A claim on a host's resources: what placement reserved for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Claim {
    pub id: String,
    pub host: String,
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_group: Option<String>,
    pub state: ClaimState,
    /// When a pending claim lapses; confirmed claims never do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// The token that made it, by id.
    pub owner: String,
    /// What the claim is for, e.g. a deployment's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    /// Made by a placement; lapses at `expires_at` unless confirmed.
    Pending,
    /// Held until released (the VM is deleted or its deployment failed).
    Confirmed,
}

impl ClaimState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Pending => "pending",
            ClaimState::Confirmed => "confirmed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(ClaimState::Pending),
            "confirmed" => Some(ClaimState::Confirmed),
            _ => None,
        }
    }
}

/// A join token: lets agents become hosts. Its secret is shown once, at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinToken {
    pub id: String,
    pub name: String,
    /// Labels every host that joins with it gets, under the agent's own.
    pub labels: BTreeMap<String, String>,
    /// How many more joins it allows; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
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
