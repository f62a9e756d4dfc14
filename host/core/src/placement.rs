//! What a VM needs from a host, in the terms placement decides on.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Arch, HostFeature};

/// The host-facing part of a VM request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Disk space the VM's images and overlays need on the host.
    #[serde(default)]
    pub disk_mib: u64,
    pub arch: Arch,
    /// Features the host must have, all of them.
    #[serde(default)]
    pub features: Vec<HostFeature>,
    /// Labels the host must carry.
    #[serde(default)]
    pub required_labels: BTreeMap<String, String>,
    /// No two VMs of this group on one host.
    #[serde(default)]
    pub anti_affinity_group: Option<String>,
    /// All VMs of this group together where possible.
    #[serde(default)]
    pub affinity_group: Option<String>,
}
