//! The bin-packing score: prefers the host that would be fullest after taking the VM, so that
//! whole hosts stay free for large VMs (and can be powered down).

use serde::Deserialize;
use slipway_plugin_sdk::placement::*;

/// How much each resource counts (`[config]` in plugin.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub cpu_weight: f64,
    pub memory_weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cpu_weight: 1.0,
            memory_weight: 1.0,
        }
    }
}

pub struct BinpackScore(Config);

/// The share of `total` used once `used` grows by `add`; 1 for a host with nothing to give.
pub fn utilisation(used: f64, add: f64, total: f64) -> f64 {
    if total > 0.0 {
        (used + add) / total
    } else {
        1.0
    }
}

impl Placement for BinpackScore {
    type Config = Config;
    const SCORES: bool = true;
    const COLUMNS: FleetColumns = FleetColumns::VCPUS.union(FleetColumns::MEMORY);

    fn new(config: Config) -> Result<Self, String> {
        check_weights(config.cpu_weight, config.memory_weight)?;
        Ok(Self(config))
    }

    fn score(
        &self,
        r: &PlacementRequest,
        f: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<f64>, String> {
        let Config {
            cpu_weight,
            memory_weight,
        } = self.0;
        let sum = cpu_weight + memory_weight;
        Ok(candidates
            .iter()
            .map(|&host| {
                let h = host as usize;
                let cpu = utilisation(
                    f.vcpus_allocated[h].into(),
                    r.vcpus.into(),
                    f.vcpus_total[h].into(),
                );
                let memory = utilisation(
                    f.memory_allocated_mib[h].into(),
                    r.memory_mib.into(),
                    f.memory_total_mib[h].into(),
                );
                (cpu_weight * cpu + memory_weight * memory) / sum
            })
            .collect())
    }
}

/// Weights must be non-negative and not all zero.
pub fn check_weights(cpu: f64, memory: f64) -> Result<(), String> {
    let valid = cpu.is_finite() && memory.is_finite() && cpu >= 0.0 && memory >= 0.0;
    if !valid || cpu + memory <= 0.0 {
        return Err(format!(
            "cpu-weight ({cpu}) and memory-weight ({memory}) must be non-negative and not both zero"
        ));
    }
    Ok(())
}

slipway_plugin_sdk::export_placement!(BinpackScore);
