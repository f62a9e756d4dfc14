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

/// Where a deployed VM is in its life, as the server tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Its deploy job runs: transfer, create, boot, wait for the guest.
    Deploying,
    /// The guest applied its identity and reported.
    Ready,
    /// Stopped by a user (its claim stays: it can start again).
    Stopped,
    /// The deployment failed; the error says where. Its claim is released.
    Failed,
}

impl VmPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            VmPhase::Deploying => "deploying",
            VmPhase::Ready => "ready",
            VmPhase::Stopped => "stopped",
            VmPhase::Failed => "failed",
        }
    }
}

/// One app's outcome in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppOutcome {
    pub name: String,
    #[serde(default)]
    pub version: String,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

/// What the guest reported at first boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadyReport {
    pub instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// What it applied: `hostname`, `machine-id`, `ssh-host-keys`, ...
    #[serde(default)]
    pub applied: Vec<String>,
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub apps: Vec<AppOutcome>,
    /// `slipway-firstboot` or `cloud-init`.
    pub agent: String,
    pub reported_at: crate::resources::Timestamp,
}

/// A deployed VM, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Vm {
    pub id: String,
    /// The deployment it came from (one request, `count` VMs).
    pub deployment: String,
    pub phase: VmPhase,
    pub hostname: String,
    pub uuid: String,
    pub instance_id: String,
    /// One per NIC, unique across the inventory.
    pub macs: Vec<String>,
    /// The host placement chose, by id and name.
    pub host: String,
    pub host_name: String,
    /// The claim of its resources on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    pub staged_vm: String,
    /// The staged image its boot disk comes from.
    pub image: String,
    pub hardware: HardwareConfig,
    #[serde(default)]
    pub clone: CloneMode,
    /// The apps installed at first boot, with how.
    #[serde(default)]
    pub install: Vec<crate::request::AppInstall>,
    /// The deploy job.
    pub job: String,
    /// Bytes of the image sent to the host for this VM: 0 when the host had it cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadyReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The token that asked for it, by id.
    pub owner: String,
    pub created_at: crate::resources::Timestamp,
    pub updated_at: crate::resources::Timestamp,
}
