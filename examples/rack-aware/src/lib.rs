//! A site's own placement plugin: keep the VMs of one group apart across racks and power
//! domains, not just across hosts.
//!
//! Slipway's label filter already keeps two VMs of an anti-affinity group off the same host. At
//! this site a rack shares a top-of-rack switch and a power domain shares a PDU, so losing either
//! takes down every host in it. This plugin:
//!
//! - **filters** (with `max-per-rack`): rejects hosts in a rack where that many hosts already run
//!   a VM of the request's anti-affinity group;
//! - **scores**: prefers racks, then power domains, with the fewest hosts running the group (or,
//!   for an affinity group, the most).
//!
//! The fleet tells which groups a host runs, not how many VMs of each, so counts are of hosts.
//!
//! Racks and power domains are host labels; which label keys they use is configuration.

use std::collections::HashMap;

use serde::Deserialize;
use slipway_plugin_sdk::placement::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The label key naming a host's rack.
    pub rack_label: String,
    /// The label key naming a host's power domain.
    pub power_label: String,
    pub rack_weight: f64,
    pub power_weight: f64,
    /// At most this many hosts running one anti-affinity group per rack. Absent: no limit.
    pub max_per_rack: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rack_label: "rack".into(),
            power_label: "power-domain".into(),
            rack_weight: 1.0,
            power_weight: 0.5,
            max_per_rack: None,
        }
    }
}

pub const RACK_FULL: u32 = 1;

pub struct RackAware(Config);

/// For one label key: the domain (label symbol) of each host, and how many VMs of a group each
/// domain holds.
struct Domains {
    of_host: Vec<Option<u32>>,
    members: HashMap<u32, u32>,
}

impl Domains {
    fn count(fleet: &Fleet, key: &str, group: u32) -> Self {
        let prefix = format!("{key}=");
        let is_domain: Vec<bool> = (0..fleet.symbol_count() as u32)
            .map(|id| fleet.symbol(id).starts_with(&prefix))
            .collect();
        let mut of_host = Vec::with_capacity(fleet.len());
        let mut members = HashMap::new();
        for host in 0..fleet.len() as u32 {
            let domain = fleet
                .labels(host)
                .iter()
                .copied()
                .find(|&id| is_domain.get(id as usize) == Some(&true));
            if let Some(d) = domain {
                let in_group = fleet.groups(host).iter().filter(|&&g| g == group).count() as u32;
                *members.entry(d).or_insert(0) += in_group;
            }
            of_host.push(domain);
        }
        Self { of_host, members }
    }

    fn members_near(&self, host: u32) -> u32 {
        self.of_host[host as usize].map_or(0, |d| self.members[&d])
    }
}

impl Placement for RackAware {
    type Config = Config;
    const FILTERS: bool = true;
    const SCORES: bool = true;
    const COLUMNS: FleetColumns = FleetColumns::LABELS.union(FleetColumns::GROUPS);

    fn reasons() -> Vec<Reason> {
        vec![reason(
            RACK_FULL,
            "rack holds its share of the group",
            DetailKind::Symbol,
        )]
    }

    fn new(config: Config) -> Result<Self, String> {
        if config.rack_weight < 0.0 || config.power_weight < 0.0 {
            return Err("rack-weight and power-weight must not be negative".into());
        }
        if config.max_per_rack == Some(0) {
            return Err("max-per-rack must be at least 1".into());
        }
        Ok(Self(config))
    }

    fn filter(
        &self,
        r: &PlacementRequest,
        f: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<Rejection>, String> {
        let (Some(max), Some(group)) = (self.0.max_per_rack, r.anti_affinity_group) else {
            return Ok(Vec::new());
        };
        let racks = Domains::count(f, &self.0.rack_label, group);
        Ok(candidates
            .iter()
            .filter(|&&h| racks.members_near(h) >= max)
            .map(|&host| Rejection {
                host,
                reason: RACK_FULL,
                detail: racks.of_host[host as usize].map_or(u64::MAX, u64::from),
            })
            .collect())
    }

    fn score(
        &self,
        r: &PlacementRequest,
        f: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<f64>, String> {
        // Spread an anti-affinity group; gather an affinity group; otherwise no opinion.
        let (group, sign) = match (r.anti_affinity_group, r.affinity_group) {
            (Some(g), _) => (g, -1.0),
            (None, Some(g)) => (g, 1.0),
            (None, None) => return Ok(vec![0.0; candidates.len()]),
        };
        let racks = Domains::count(f, &self.0.rack_label, group);
        let power = Domains::count(f, &self.0.power_label, group);
        Ok(candidates
            .iter()
            .map(|&h| {
                sign * (self.0.rack_weight * f64::from(racks.members_near(h))
                    + self.0.power_weight * f64::from(power.members_near(h)))
            })
            .collect())
    }
}

slipway_plugin_sdk::export_placement!(RackAware);
