//! The label filter: rejects hosts that lack a label the request requires or a label the site
//! requires of every placement, hosts carrying a label the site forbids, and hosts that already
//! run a VM of the request's anti-affinity group.

use serde::Deserialize;
use slipway_plugin_sdk::placement::*;

/// Site-wide label policy (`[config]` in plugin.toml), as `key=value` strings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Labels every host must carry, whatever the request says.
    pub required: Vec<String>,
    /// Labels that keep a host out of every placement (e.g. `maintenance=true`).
    pub forbidden: Vec<String>,
}

pub const MISSING_LABEL: u32 = 1;
pub const FORBIDDEN_LABEL: u32 = 2;
pub const ANTI_AFFINITY: u32 = 3;
pub const UNKNOWN_SITE_LABEL: u32 = 4;

pub struct LabelFilter(Config);

impl Placement for LabelFilter {
    type Config = Config;
    const FILTERS: bool = true;
    const COLUMNS: FleetColumns = FleetColumns::LABELS.union(FleetColumns::GROUPS);

    fn reasons() -> Vec<Reason> {
        vec![
            reason(MISSING_LABEL, "missing label", DetailKind::Symbol),
            reason(FORBIDDEN_LABEL, "forbidden label", DetailKind::Symbol),
            reason(ANTI_AFFINITY, "anti-affinity conflict", DetailKind::Symbol),
            // A site-required label that no host carries has no symbol to point at.
            reason(
                UNKNOWN_SITE_LABEL,
                "no host carries a site-required label",
                DetailKind::None,
            ),
        ]
    }

    fn new(config: Config) -> Result<Self, String> {
        for label in config.required.iter().chain(&config.forbidden) {
            if !label.contains('=') {
                return Err(format!("label {label:?} must be written key=value"));
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
        // Site labels no host carries have no symbol: a required one then rejects every host.
        let symbol = |label: &str| f.symbol_id(label);
        let mut required: Vec<(u32, u64)> = r
            .required_labels
            .iter()
            .map(|&id| (id, id.into()))
            .collect();
        let mut unknown_required = None;
        for label in &self.0.required {
            match symbol(label) {
                Some(id) => required.push((id, id.into())),
                None => unknown_required = Some(label),
            }
        }
        let forbidden: Vec<u32> = self.0.forbidden.iter().filter_map(|l| symbol(l)).collect();

        if let Some(label) = unknown_required {
            slipway_plugin_sdk::debug!("no host carries the site-required label {label}");
        }
        let mut out = Vec::new();
        for &host in candidates {
            let labels = f.labels(host);
            if unknown_required.is_some() {
                out.push(Rejection {
                    host,
                    reason: UNKNOWN_SITE_LABEL,
                    detail: 0,
                });
                continue;
            }
            if let Some(&(_, id)) = required.iter().find(|(l, _)| !labels.contains(l)) {
                out.push(Rejection {
                    host,
                    reason: MISSING_LABEL,
                    detail: id,
                });
                continue;
            }
            if let Some(&id) = forbidden.iter().find(|l| labels.contains(l)) {
                out.push(Rejection {
                    host,
                    reason: FORBIDDEN_LABEL,
                    detail: id.into(),
                });
                continue;
            }
            if let Some(group) = r.anti_affinity_group
                && f.groups(host).contains(&group)
            {
                out.push(Rejection {
                    host,
                    reason: ANTI_AFFINITY,
                    detail: group.into(),
                });
            }
        }
        Ok(out)
    }
}

slipway_plugin_sdk::export_placement!(LabelFilter);
