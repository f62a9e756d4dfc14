//! The agent protocol: what `slipway-agent` on a host and the server say to each other.
//!
//! An agent joins once with a join token an admin created, and gets a per-host credential in
//! exchange. From then on it heartbeats with that credential: every heartbeat carries a fresh
//! [`HostReport`] read from the machine, and a sequence number that only grows, so that a recorded
//! heartbeat sent again is refused. The server answers with the interval it wants, so a fleet
//! follows the server's configuration without being redeployed.
//!
//! The server calls the agent too (image transfer, VM lifecycle), with a secret the agent chose
//! and sent at join: each side authenticates the other with a secret it gave out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Arch, HostFeature};

/// `POST /v1/agent/join`: an agent asks to become (or become again) a host of this server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The join token's secret, as `slipway host join-token create` printed it.
    pub join_token: String,
    /// A random id the agent made at its first start and keeps in its data directory. An agent
    /// that joins again (its credential lost or revoked) with the same id becomes the same host,
    /// never a second one.
    pub agent_id: String,
    /// The host's name, unique in the inventory (by default its hostname).
    pub name: String,
    /// Where the server reaches the agent's API, e.g. `http://10.0.0.5:7781`.
    pub agent_url: String,
    /// The bearer secret the server must present when it calls the agent.
    pub agent_secret: String,
    /// The machine as it is now.
    pub report: HostReport,
}

/// The answer to a join: who the agent now is, and how it proves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinResponse {
    pub host_id: String,
    /// The bearer secret of every later heartbeat. Shown once; the server keeps only its hash.
    pub credential: String,
    /// How often the server wants a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// `false` when the agent id was already known: the existing host took the new credential.
    pub created: bool,
}

/// `POST /v1/agent/heartbeat`, authenticated by the host's credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Greater than every sequence number this host sent before (agents use the time in
    /// microseconds, bumped past the last one). A heartbeat that does not increase it is a
    /// replay, and refused.
    pub seq: u64,
    /// Where the agent's API is now, if it moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
    pub report: HostReport,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatAck {
    pub host_id: String,
    /// When to send the next one.
    pub heartbeat_interval_ms: u64,
    /// What an admin set: placement skips a host that is not `active`.
    pub mode: HostMode,
}

/// What an agent reads from its machine for every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HostReport {
    pub arch: Arch,
    /// Online CPU threads.
    pub cpus: u32,
    /// Load averages over 1, 5 and 15 minutes, times 1000.
    pub load_milli: [u32; 3],
    pub memory_total_mib: u64,
    /// `MemAvailable`: what new work can use without swapping.
    pub memory_available_mib: u64,
    /// Memory the site keeps for the host itself; placement never claims it.
    #[serde(default)]
    pub memory_reserved_mib: u64,
    /// The file system of the agent's data directory, where images and overlays go.
    pub disk_total_mib: u64,
    pub disk_free_mib: u64,
    pub hypervisor: Hypervisor,
    /// What the host offers VMs, probed (see [`HostFeature`]).
    #[serde(default)]
    pub features: Vec<HostFeature>,
    /// The site's labels from the agent's configuration, e.g. `rack=r12`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The VMs the agent runs, with their states.
    #[serde(default)]
    pub vms: Vec<VmReport>,
    /// The agent's version, e.g. `0.1.0`.
    pub agent_version: String,
    /// Seconds since the host booted.
    #[serde(default)]
    pub uptime_s: u64,
}

/// What the host can run VMs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Hypervisor {
    /// `qemu-system-<arch>` for the host's arch, when installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<Qemu>,
    /// Whether KVM can run a guest here: found by running one, not by the device node existing.
    pub kvm: KvmProbe,
    /// What VMs will run with: `kvm`, `tcg` (emulation, slow but everywhere), or `none` (no
    /// QEMU at all: the host cannot run VMs).
    pub accelerator: Accelerator,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    pub path: String,
    /// As `qemu-system-x86_64 --version` prints it, e.g. `10.0.2`.
    pub version: String,
}

/// The outcome of the agent's KVM probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KvmProbe {
    pub usable: bool,
    /// Why not, or what was checked: "no /dev/kvm", "KVM_RUN of the probe guest failed: ...".
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    Kvm,
    Tcg,
    None,
}

/// One VM on a host, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VmReport {
    pub id: String,
    pub state: VmState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Creating,
    Running,
    Stopped,
    Failed,
}

/// What an admin set on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HostMode {
    /// Takes new VMs.
    #[default]
    Active,
    /// Takes no new VMs; the ones it runs stay until moved away.
    Draining,
    /// Takes no new VMs, and is expected to go down for service.
    Maintenance,
}

impl HostMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HostMode::Active => "active",
            HostMode::Draining => "draining",
            HostMode::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(HostMode::Active),
            "draining" => Some(HostMode::Draining),
            "maintenance" => Some(HostMode::Maintenance),
            _ => None,
        }
    }
}

/// A host's state as the inventory shows it: its mode, unless it stopped heartbeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Heartbeating and active: placement may choose it.
    Ready,
    /// Heartbeating, draining.
    Draining,
    /// Heartbeating, in maintenance.
    Maintenance,
    /// It missed the configured number of heartbeats; its VMs' states are unknown.
    Unreachable,
}

impl HostState {
    pub const ALL: [HostState; 4] = [
        HostState::Ready,
        HostState::Draining,
        HostState::Maintenance,
        HostState::Unreachable,
    ];

    pub fn of(mode: HostMode, reachable: bool) -> Self {
        match (reachable, mode) {
            (false, _) => HostState::Unreachable,
            (true, HostMode::Active) => HostState::Ready,
            (true, HostMode::Draining) => HostState::Draining,
            (true, HostMode::Maintenance) => HostState::Maintenance,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ready => "ready",
            HostState::Draining => "draining",
            HostState::Maintenance => "maintenance",
            HostState::Unreachable => "unreachable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// Resources in the units placement claims them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

impl Resources {
    /// Whether `self + more` stays within `limit` in every dimension.
    pub fn fits(self, more: Resources, limit: Resources) -> bool {
        u64::from(self.vcpus) + u64::from(more.vcpus) <= u64::from(limit.vcpus)
            && self.memory_mib.saturating_add(more.memory_mib) <= limit.memory_mib
            && self.disk_mib.saturating_add(more.disk_mib) <= limit.disk_mib
    }
}

/// How far above the physical amounts a server lets claims go. Placement never claims more
/// than `physical × ratio` (less reserved memory); the capacity filter's defaults are the same.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AllocationRatios {
    pub cpu: f64,
    pub memory: f64,
    pub disk: f64,
}

impl Default for AllocationRatios {
    fn default() -> Self {
        Self {
            cpu: 4.0,
            memory: 1.0,
            disk: 1.0,
        }
    }
}

impl AllocationRatios {
    /// What may be claimed on a host that reports `report`.
    pub fn capacity(&self, report: &HostReport) -> Resources {
        let scale =
            |n: u64, ratio: f64| (n as f64 * ratio).floor().clamp(0.0, u64::MAX as f64) as u64;
        Resources {
            vcpus: u32::try_from(scale(u64::from(report.cpus), self.cpu)).unwrap_or(u32::MAX),
            memory_mib: scale(
                report
                    .memory_total_mib
                    .saturating_sub(report.memory_reserved_mib),
                self.memory,
            ),
            disk_mib: scale(report.disk_total_mib, self.disk),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> HostReport {
        HostReport {
            arch: Arch::X86_64,
            cpus: 8,
            load_milli: [500, 400, 300],
            memory_total_mib: 16_384,
            memory_available_mib: 12_000,
            memory_reserved_mib: 1_024,
            disk_total_mib: 100_000,
            disk_free_mib: 90_000,
            hypervisor: Hypervisor {
                qemu: None,
                kvm: KvmProbe {
                    usable: false,
                    detail: "no /dev/kvm".into(),
                },
                accelerator: Accelerator::None,
            },
            features: vec![],
            labels: BTreeMap::new(),
            vms: vec![],
            agent_version: "0.1.0".into(),
            uptime_s: 5,
        }
    }

    #[test]
    fn capacity_scales_physical_amounts_and_keeps_the_reserve() {
        let c = AllocationRatios::default().capacity(&report());
        assert_eq!(
            c,
            Resources {
                vcpus: 32,
                memory_mib: 15_360,
                disk_mib: 100_000
            }
        );
    }

    #[test]
    fn fits_checks_every_dimension_without_overflow() {
        let limit = Resources {
            vcpus: 4,
            memory_mib: 100,
            disk_mib: 10,
        };
        let used = Resources {
            vcpus: 3,
            memory_mib: 50,
            disk_mib: 10,
        };
        let one = Resources {
            vcpus: 1,
            memory_mib: 50,
            disk_mib: 0,
        };
        assert!(used.fits(one, limit));
        assert!(!used.fits(Resources { disk_mib: 1, ..one }, limit));
        assert!(!used.fits(
            Resources {
                memory_mib: u64::MAX,
                ..one
            },
            limit
        ));
    }

    #[test]
    fn a_report_round_trips_and_refuses_unknown_fields() {
        let json = serde_json::to_value(report()).unwrap();
        let back: HostReport = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, report());
        let mut bad = json;
        bad["ram"] = 1.into();
        let err = serde_json::from_value::<HostReport>(bad).unwrap_err();
        assert!(err.to_string().contains("ram"), "{err}");
    }
}
