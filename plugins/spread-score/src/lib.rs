//! The spreading score: prefers the emptiest, least loaded host, so that VMs share as little as
//! possible and a host failure takes down as few of them as possible.

use serde::Deserialize;
use slipway_plugin_sdk::placement::*;

/// How much each signal counts (`[config]` in plugin.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub cpu_weight: f64,
    pub memory_weight: f64,
    /// Weight of the host's measured load (one-minute load average per CPU).
    pub load_weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cpu_weight: 1.0,
            memory_weight: 1.0,
            load_weight: 0.5,
        }
    }
}

pub struct SpreadScore(Config);

impl Placement for SpreadScore {
    type Config = Config;
    const SCORES: bool = true;
    const COLUMNS: FleetColumns = FleetColumns::VCPUS
        .union(FleetColumns::MEMORY)
        .union(FleetColumns::LOAD);

    fn new(config: Config) -> Result<Self, String> {
        let Config {
            cpu_weight,
            memory_weight,
            load_weight,
        } = config;
        let weights = [cpu_weight, memory_weight, load_weight];
        let valid =
            weights.iter().all(|w| w.is_finite() && *w >= 0.0) && weights.iter().sum::<f64>() > 0.0;
        if !valid {
            return Err("weights must be non-negative and not all zero".into());
        }
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
            load_weight,
        } = self.0;
        let free = |used: f64, add: f64, total: f64| {
            if total > 0.0 {
                1.0 - (used + add) / total
            } else {
                0.0
            }
        };
        Ok(candidates
            .iter()
            .map(|&host| {
                let h = host as usize;
                let cpus = f64::from(f.vcpus_total[h]);
                let cpu = free(f.vcpus_allocated[h].into(), r.vcpus.into(), cpus);
                let memory = free(
                    f.memory_allocated_mib[h].into(),
                    r.memory_mib.into(),
                    f.memory_total_mib[h].into(),
                );
                let load = if cpus > 0.0 {
                    -(f64::from(f.load_milli[h]) / 1000.0 / cpus)
                } else {
                    0.0
                };
                cpu_weight * cpu + memory_weight * memory + load_weight * load
            })
            .collect())
    }
}

slipway_plugin_sdk::export_placement!(SpreadScore);
