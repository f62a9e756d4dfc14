//! A VM as the server asks an agent to run it, and as the agent reports it back: the contract of
//! the agent's `/v1/vms` routes.

use serde::{Deserialize, Serialize};

use crate::catalog::HardwareConfig;

/// How a VM's boot disk is made from the cached base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CloneMode {
    /// A qcow2 overlay on the cached base: copy-on-write, made in milliseconds whatever the size.
    #[default]
    Linked,
    /// A whole copy of the base: independent of it, at the cost of the copy.
    Full,
}

/// How a VM's NICs reach a network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum NetworkMode {
    /// QEMU's user-mode networking: no privileges; the host is 10.0.2.2 from the guest.
    #[default]
    User,
    /// A tap device already set up on the host.
    Tap { device: String },
    /// A bridge on the host, through QEMU's bridge helper.
    Bridge { bridge: String },
}

/// What the server asks an agent to run: `PUT /v1/vms/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// The deployment's VM id (a UUID): names the VM's directory on the host.
    pub id: String,
    /// The VM's SMBIOS UUID (`-uuid`), what the guest reads as its product UUID.
    pub uuid: String,
    /// For QEMU's `-name` and the host's listings.
    pub name: String,
    /// The sha256 of the staged image in the agent's cache: the boot disk's base.
    pub base_image: String,
    #[serde(default)]
    pub clone: CloneMode,
    /// Disks (the first boots from the base; the others start empty, of their size), NICs,
    /// firmware, machine type, vCPUs and memory.
    pub hardware: HardwareConfig,
    /// One MAC per NIC, in order.
    pub macs: Vec<String>,
    #[serde(default)]
    pub network: NetworkMode,
    /// SMBIOS type 1 serial: where the guest finds its seed, as
    /// `ds=nocloud-net;s=http://10.0.2.2:7780/v1/seed/<token>/`.
    pub smbios_serial: String,
}

/// A VM's life on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmRunState {
    /// Its disks are being made.
    Creating,
    /// QEMU runs it.
    Running,
    /// Powered off (asked to, or the guest shut down).
    Stopped,
    /// QEMU exited without being asked to, or could not start.
    Crashed,
}

/// What an agent says of one VM: `GET /v1/vms/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmStatus {
    pub id: String,
    pub state: VmRunState,
    /// QEMU's process, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// QMP's `query-status` answer (`running`, `paused`, `shutdown`...), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp_status: Option<String>,
    /// `kvm` or `tcg`.
    pub accelerator: String,
    /// Bytes of the VM's files on the host (overlays and empty disks, not the shared base).
    pub disk_bytes: u64,
    /// Why it crashed or failed to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
