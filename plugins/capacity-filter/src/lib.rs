//! The capacity filter: rejects hosts that cannot hold the VM — wrong architecture, missing
//! hypervisor features, or too few vCPUs, memory or disk once allocation ratios are applied.
//!
//! Each host is rejected for the first shortfall found, in the order of the reason codes, and the
//! rejection's detail says how much is missing so that the server can name the closest host.

use serde::Deserialize;
use slipway_plugin_sdk::placement::*;

/// Overcommit and reserve settings (`[config]` in plugin.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// vCPUs per physical CPU thread.
    pub cpu_allocation_ratio: f64,
    /// Memory that may be claimed per MiB installed.
    pub memory_allocation_ratio: f64,
    /// Disk that may be claimed per MiB available.
    pub disk_allocation_ratio: f64,
    /// Memory kept for the host itself, never claimed by VMs.
    pub reserved_memory_mib: u64,
    /// Also require the memory the host reports free right now.
    pub check_available_memory: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cpu_allocation_ratio: 4.0,
            memory_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
            reserved_memory_mib: 0,
            check_available_memory: true,
        }
    }
}

pub const ARCH: u32 = 1;
pub const FEATURES: u32 = 2;
pub const VCPUS: u32 = 3;
pub const MEMORY: u32 = 4;
pub const MEMORY_AVAILABLE: u32 = 5;
pub const DISK: u32 = 6;

pub struct CapacityFilter(Config);

/// `total × ratio`, rounded down, in integer units.
fn capacity(total: u64, ratio: f64) -> u64 {
    (total as f64 * ratio) as u64
}

impl Placement for CapacityFilter {
    type Config = Config;
    const FILTERS: bool = true;
    const COLUMNS: FleetColumns = FleetColumns::ARCH
        .union(FleetColumns::FEATURES)
        .union(FleetColumns::VCPUS)
        .union(FleetColumns::MEMORY)
        .union(FleetColumns::MEMORY_AVAILABLE)
        .union(FleetColumns::DISK);

    fn reasons() -> Vec<Reason> {
        vec![
            reason(ARCH, "wrong architecture", DetailKind::None),
            reason(FEATURES, "missing host features", DetailKind::Features),
            reason(VCPUS, "insufficient vCPUs", DetailKind::Count),
            reason(MEMORY, "insufficient memory", DetailKind::Mib),
            reason(
                MEMORY_AVAILABLE,
                "insufficient free memory",
                DetailKind::Mib,
            ),
            reason(DISK, "insufficient disk", DetailKind::Mib),
        ]
    }

    fn new(config: Config) -> Result<Self, String> {
        for (name, ratio) in [
            ("cpu-allocation-ratio", config.cpu_allocation_ratio),
            ("memory-allocation-ratio", config.memory_allocation_ratio),
            ("disk-allocation-ratio", config.disk_allocation_ratio),
        ] {
            if !(ratio.is_finite() && ratio > 0.0) {
                return Err(format!("{name} must be a positive number, not {ratio}"));
            }
        }
        Ok(Self(config))
    }

    fn filter(
        &self,
        r: &PlacementRequest,
        f: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<Rejection>, String> {
        let c = &self.0;
        let mut out = Vec::new();
        for &host in candidates {
            let h = host as usize;
            let reject = |reason, detail| Rejection {
                host,
                reason,
                detail,
            };
            if f.arch(host) != Some(r.arch) {
                out.push(reject(ARCH, 0));
                continue;
            }
            let features = f.features(host);
            if !features.contains(r.features) {
                let missing = r.features.difference(features);
                out.push(reject(FEATURES, missing.bits().into()));
                continue;
            }
            let vcpus_free = capacity(f.vcpus_total[h].into(), c.cpu_allocation_ratio)
                .saturating_sub(f.vcpus_allocated[h].into());
            if vcpus_free < u64::from(r.vcpus) {
                out.push(reject(VCPUS, u64::from(r.vcpus) - vcpus_free));
                continue;
            }
            let memory = u64::from(r.memory_mib);
            let memory_free = capacity(f.memory_total_mib[h].into(), c.memory_allocation_ratio)
                .saturating_sub(c.reserved_memory_mib)
                .saturating_sub(f.memory_allocated_mib[h].into());
            if memory_free < memory {
                out.push(reject(MEMORY, memory - memory_free));
                continue;
            }
            let available = u64::from(f.memory_available_mib[h]);
            if c.check_available_memory && available < memory {
                out.push(reject(MEMORY_AVAILABLE, memory - available));
                continue;
            }
            let disk = u64::from(r.disk_mib);
            let disk_free = capacity(f.disk_total_mib[h].into(), c.disk_allocation_ratio)
                .saturating_sub(f.disk_allocated_mib[h].into());
            if disk_free < disk {
                out.push(reject(DISK, disk - disk_free));
            }
        }
        Ok(out)
    }
}

slipway_plugin_sdk::export_placement!(CapacityFilter);
