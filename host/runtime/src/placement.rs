//! Placement on the host side: loaded placement plugins, the columnar fleet they read, and the
//! pipeline that runs filters then weighted scores over one snapshot of the inventory.
//!
//! Per-host records carry no strings: [`FleetBuilder`] interns labels and group names into one
//! symbol table per decision, so a call copies plain number columns into the plugin in bulk.

use std::collections::HashMap;
use std::fmt::Write as _;

use slipway_core::{Arch, HostFeature, HostSnapshot, PlacementRequest as CoreRequest};

use crate::contract::v0_1::placement::exports::slipway::plugin::placement as wit;
use crate::contract::v0_1::placement::{PlacementPlugin as Bindings, PlacementPluginPre};
use crate::contract::v0_1::types;
use crate::error::PluginError;
use crate::manifest::Manifest;
use crate::runtime::PluginCore;
use crate::state::Sandbox;

pub use wit::{DetailKind, FleetColumns, Reason, Rejection};

/// A loaded placement plugin.
#[derive(Clone)]
pub struct PlacementPlugin {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    core: PluginCore,
    pre: PlacementPluginPre<crate::state::CallState>,
    info: PlacementInfo,
}

/// What a placement plugin said about itself at load.
#[derive(Debug, Clone)]
pub struct PlacementInfo {
    pub filters: bool,
    pub scores: bool,
    pub reasons: HashMap<u32, Reason>,
    /// The fleet columns the plugin reads; only these are copied into it.
    pub columns: FleetColumns,
}

/// What a VM needs from a host, in the numbers of one [`Fleet`]'s symbol table.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRequest {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub arch: types::Arch,
    pub features: types::HostFeatures,
    pub required_labels: Vec<u32>,
    pub anti_affinity_group: Option<u32>,
    pub affinity_group: Option<u32>,
}

impl PlacementRequest {
    fn wire(&self) -> wit::PlacementRequest<'_> {
        wit::PlacementRequest {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_mib: self.disk_mib,
            arch: self.arch,
            features: self.features,
            required_labels: &self.required_labels,
            anti_affinity_group: self.anti_affinity_group,
            affinity_group: self.affinity_group,
        }
    }
}

/// The candidate hosts of one decision, column by column (see `fleet` in `wit/placement.wit`).
/// Built once per decision by [`FleetBuilder`]; each plugin is lent the columns it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub hosts: u32,
    pub symbols: Vec<String>,
    pub vcpus_total: Vec<u32>,
    pub vcpus_allocated: Vec<u32>,
    pub memory_total_mib: Vec<u32>,
    pub memory_allocated_mib: Vec<u32>,
    pub memory_available_mib: Vec<u32>,
    pub disk_total_mib: Vec<u32>,
    pub disk_allocated_mib: Vec<u32>,
    pub load_milli: Vec<u32>,
    pub vms: Vec<u32>,
    /// The index of the host's `arch` case.
    pub arch: Vec<u8>,
    /// The host's `host-features` bits.
    pub features: Vec<u8>,
    pub label_offsets: Vec<u32>,
    pub label_ids: Vec<u32>,
    pub group_offsets: Vec<u32>,
    pub group_ids: Vec<u32>,
}

impl Fleet {
    /// The number of hosts.
    pub fn len(&self) -> usize {
        self.hosts as usize
    }

    pub fn is_empty(&self) -> bool {
        self.hosts == 0
    }

    /// The wire form a plugin that reads `columns` is given: those columns, the rest empty.
    fn view<'a>(&'a self, columns: FleetColumns, symbols: &'a [&'a str]) -> wit::Fleet<'a> {
        let pick = |column: FleetColumns, data: &'a [u32]| -> &'a [u32] {
            if columns.contains(column) { data } else { &[] }
        };
        let pick8 = |column: FleetColumns, data: &'a [u8]| -> &'a [u8] {
            if columns.contains(column) { data } else { &[] }
        };
        wit::Fleet {
            hosts: self.hosts,
            symbols,
            vcpus_total: pick(FleetColumns::VCPUS, &self.vcpus_total),
            vcpus_allocated: pick(FleetColumns::VCPUS, &self.vcpus_allocated),
            memory_total_mib: pick(FleetColumns::MEMORY, &self.memory_total_mib),
            memory_allocated_mib: pick(FleetColumns::MEMORY, &self.memory_allocated_mib),
            memory_available_mib: pick(FleetColumns::MEMORY_AVAILABLE, &self.memory_available_mib),
            disk_total_mib: pick(FleetColumns::DISK, &self.disk_total_mib),
            disk_allocated_mib: pick(FleetColumns::DISK, &self.disk_allocated_mib),
            load_milli: pick(FleetColumns::LOAD, &self.load_milli),
            vms: pick(FleetColumns::VMS, &self.vms),
            arch: pick8(FleetColumns::ARCH, &self.arch),
            features: pick8(FleetColumns::FEATURES, &self.features),
            label_offsets: pick(FleetColumns::LABELS, &self.label_offsets),
            label_ids: pick(FleetColumns::LABELS, &self.label_ids),
            group_offsets: pick(FleetColumns::GROUPS, &self.group_offsets),
            group_ids: pick(FleetColumns::GROUPS, &self.group_ids),
        }
    }

    /// Calls `f` with the view of this fleet for a plugin reading `columns`.
    fn lend<R>(&self, columns: FleetColumns, f: impl FnOnce(wit::Fleet<'_>) -> R) -> R {
        let symbols: Vec<&str> = if columns.intersects(FleetColumns::LABELS | FleetColumns::GROUPS)
        {
            self.symbols.iter().map(String::as_str).collect()
        } else {
            Vec::new()
        };
        f(self.view(columns, &symbols))
    }
}

impl PlacementPlugin {
    pub(crate) fn new(
        core: PluginCore,
        pre: PlacementPluginPre<crate::state::CallState>,
    ) -> Result<Self, PluginError> {
        // The eager first call: a plugin that cannot describe itself fails to load.
        let described = core.call(
            Sandbox::Closed,
            |store| pre.instantiate(store),
            |b: &Bindings, store| Ok(Ok(b.slipway_plugin_placement().call_describe(store)?)),
        )?;
        let mut reasons = HashMap::new();
        for reason in described.reasons {
            if reasons.insert(reason.code, reason.clone()).is_some() {
                return Err(PluginError::InvalidResult {
                    plugin: core.name.to_string(),
                    detail: format!("reason code {} is declared twice", reason.code),
                });
            }
        }
        let columns = described.columns;
        if !described.filters && !described.scores {
            return Err(PluginError::InvalidResult {
                plugin: core.name.to_string(),
                detail: "it describes itself as neither filtering nor scoring".into(),
            });
        }
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                info: PlacementInfo {
                    filters: described.filters,
                    scores: described.scores,
                    reasons,
                    columns,
                },
                core,
                pre,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.core.name
    }

    pub fn manifest(&self) -> &Manifest {
        &self.inner.core.manifest
    }

    pub fn info(&self) -> &PlacementInfo {
        &self.inner.info
    }

    /// Runs the plugin's filter over `candidates` and checks its answer: every rejected host is a
    /// candidate, rejected once, for a declared reason.
    pub fn filter(
        &self,
        request: &PlacementRequest,
        fleet: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<Rejection>, PluginError> {
        let rejections = fleet.lend(self.inner.info.columns, |view| {
            self.inner.core.call(
                Sandbox::Closed,
                |store| self.inner.pre.instantiate(store),
                |b: &Bindings, store| {
                    b.slipway_plugin_placement().call_filter(
                        store,
                        request.wire(),
                        view,
                        candidates,
                    )
                },
            )
        })?;
        self.check_rejections(&rejections, fleet, candidates)?;
        Ok(rejections)
    }

    /// Runs the plugin's score over `candidates` and checks its answer: one finite number each.
    pub fn score(
        &self,
        request: &PlacementRequest,
        fleet: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<f64>, PluginError> {
        let scores = fleet.lend(self.inner.info.columns, |view| {
            self.inner.core.call(
                Sandbox::Closed,
                |store| self.inner.pre.instantiate(store),
                |b: &Bindings, store| {
                    b.slipway_plugin_placement()
                        .call_score(store, request.wire(), view, candidates)
                },
            )
        })?;
        if scores.len() != candidates.len() {
            return Err(self.invalid(format!(
                "{} scores for {} candidates",
                scores.len(),
                candidates.len()
            )));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(self.invalid(format!(
                "score {} for candidate {} is not a finite number",
                scores[i], candidates[i]
            )));
        }
        Ok(scores)
    }

    fn check_rejections(
        &self,
        rejections: &[Rejection],
        fleet: &Fleet,
        candidates: &[u32],
    ) -> Result<(), PluginError> {
        const OTHER: u8 = 0;
        const CANDIDATE: u8 = 1;
        const REJECTED: u8 = 2;
        let mut seen = vec![OTHER; fleet.len()];
        for &c in candidates {
            if let Some(s) = seen.get_mut(c as usize) {
                *s = CANDIDATE;
            }
        }
        for r in rejections {
            match seen.get(r.host as usize).copied() {
                Some(CANDIDATE) => seen[r.host as usize] = REJECTED,
                Some(REJECTED) => {
                    return Err(self.invalid(format!("host {} is rejected twice", r.host)));
                }
                _ => {
                    return Err(self.invalid(format!(
                        "it rejects host {}, which is not a candidate",
                        r.host
                    )));
                }
            }
            if !self.inner.info.reasons.contains_key(&r.reason) {
                return Err(self.invalid(format!(
                    "reason code {} for host {} was never declared",
                    r.reason, r.host
                )));
            }
        }
        Ok(())
    }

    fn invalid(&self, detail: String) -> PluginError {
        PluginError::InvalidResult {
            plugin: self.name().to_owned(),
            detail,
        }
    }
}

/// Builds the columnar [`Fleet`] and the numeric [`PlacementRequest`] from host snapshots,
/// interning every label and group name into one symbol table.
#[derive(Default)]
pub struct FleetBuilder {
    symbols: HashMap<String, u32>,
    fleet: Fleet,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            hosts: 0,
            symbols: Vec::new(),
            vcpus_total: Vec::new(),
            vcpus_allocated: Vec::new(),
            memory_total_mib: Vec::new(),
            memory_allocated_mib: Vec::new(),
            memory_available_mib: Vec::new(),
            disk_total_mib: Vec::new(),
            disk_allocated_mib: Vec::new(),
            load_milli: Vec::new(),
            vms: Vec::new(),
            arch: Vec::new(),
            features: Vec::new(),
            label_offsets: vec![0],
            label_ids: Vec::new(),
            group_offsets: vec![0],
            group_ids: Vec::new(),
        }
    }
}

impl FleetBuilder {
    pub fn with_capacity(hosts: usize) -> Self {
        let mut b = Self::default();
        let f = &mut b.fleet;
        f.vcpus_total.reserve(hosts);
        f.vcpus_allocated.reserve(hosts);
        f.memory_total_mib.reserve(hosts);
        f.memory_allocated_mib.reserve(hosts);
        f.memory_available_mib.reserve(hosts);
        f.disk_total_mib.reserve(hosts);
        f.disk_allocated_mib.reserve(hosts);
        f.load_milli.reserve(hosts);
        f.vms.reserve(hosts);
        f.arch.reserve(hosts);
        f.features.reserve(hosts);
        f.label_offsets.reserve(hosts + 1);
        f.group_offsets.reserve(hosts + 1);
        b
    }

    /// Builds a fleet from snapshots, in order: host `i` of the fleet is `hosts[i]`.
    pub fn from_hosts<'a>(hosts: impl IntoIterator<Item = &'a HostSnapshot>) -> Self {
        let hosts = hosts.into_iter();
        let mut b = Self::with_capacity(hosts.size_hint().0);
        for h in hosts {
            b.push(h);
        }
        b
    }

    pub fn intern(&mut self, symbol: &str) -> u32 {
        if let Some(&id) = self.symbols.get(symbol) {
            return id;
        }
        let id = self.fleet.symbols.len() as u32;
        self.fleet.symbols.push(symbol.to_owned());
        self.symbols.insert(symbol.to_owned(), id);
        id
    }

    pub fn push(&mut self, h: &HostSnapshot) {
        let mut label = String::new();
        for (k, v) in &h.labels {
            label.clear();
            let _ = write!(label, "{k}={v}");
            let id = self.intern(&label);
            self.fleet.label_ids.push(id);
        }
        for g in &h.groups {
            let id = self.intern(g);
            self.fleet.group_ids.push(id);
        }
        let f = &mut self.fleet;
        f.hosts += 1;
        f.label_offsets.push(f.label_ids.len() as u32);
        f.group_offsets.push(f.group_ids.len() as u32);
        f.vcpus_total.push(h.vcpus_total);
        f.vcpus_allocated.push(h.vcpus_allocated);
        f.memory_total_mib.push(mib(h.memory_total_mib));
        f.memory_allocated_mib.push(mib(h.memory_allocated_mib));
        f.memory_available_mib.push(mib(h.memory_available_mib()));
        f.disk_total_mib.push(mib(h.disk_total_mib));
        f.disk_allocated_mib.push(mib(h.disk_allocated_mib));
        f.load_milli.push(h.load_milli);
        f.vms.push(h.vms);
        f.arch.push(arch(h.arch) as u8);
        f.features.push(feature_bits(&h.features));
    }

    /// The numeric form of a request against this fleet's symbols. Labels no host carries still
    /// get a symbol, so filters see them as missing everywhere.
    pub fn request(&mut self, r: &CoreRequest) -> PlacementRequest {
        let required_labels = r
            .required_labels
            .iter()
            .map(|(k, v)| self.intern(&format!("{k}={v}")))
            .collect();
        PlacementRequest {
            vcpus: r.vcpus,
            memory_mib: mib(r.memory_mib),
            disk_mib: mib(r.disk_mib),
            arch: arch(r.arch),
            features: features(&r.features),
            required_labels,
            anti_affinity_group: r.anti_affinity_group.as_deref().map(|g| self.intern(g)),
            affinity_group: r.affinity_group.as_deref().map(|g| self.intern(g)),
        }
    }

    pub fn finish(self) -> Fleet {
        self.fleet
    }
}

pub fn arch(a: Arch) -> types::Arch {
    match a {
        Arch::X86_64 => types::Arch::X8664,
        Arch::Aarch64 => types::Arch::Aarch64,
        Arch::Riscv64 => types::Arch::Riscv64,
        Arch::Ppc64le => types::Arch::Ppc64le,
        Arch::S390x => types::Arch::S390x,
    }
}

pub fn features(list: &[HostFeature]) -> types::HostFeatures {
    list.iter()
        .fold(types::HostFeatures::empty(), |acc, f| acc | feature(*f).0)
}

/// The `host-features` bits of the fleet's `features` column: bit i is the i-th flag.
pub fn feature_bits(list: &[HostFeature]) -> u8 {
    list.iter().fold(0, |acc, f| acc | feature(*f).1)
}

fn feature(f: HostFeature) -> (types::HostFeatures, u8) {
    match f {
        HostFeature::Kvm => (types::HostFeatures::KVM, 1 << 0),
        HostFeature::Uefi => (types::HostFeatures::UEFI, 1 << 1),
        HostFeature::NestedVirt => (types::HostFeatures::NESTED_VIRT, 1 << 2),
        HostFeature::Hugepages => (types::HostFeatures::HUGEPAGES, 1 << 3),
        HostFeature::Iommu => (types::HostFeatures::IOMMU, 1 << 4),
    }
}

/// MiB as the contract carries them: a `u32` (4 PiB), saturating.
fn mib(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// One placement step of a pipeline: a plugin, and for scorers the weight of its scores.
#[derive(Clone)]
pub struct Step {
    pub plugin: PlacementPlugin,
    pub weight: f64,
}

/// Filters in order, then weighted scores, over one fleet.
#[derive(Clone, Default)]
pub struct Pipeline {
    steps: Vec<Step>,
}

/// A host rejected by one plugin of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineRejection {
    pub plugin: String,
    pub host: u32,
    pub reason: u32,
    pub message: String,
    pub detail_kind: DetailKind,
    pub detail: u64,
}

/// What a pipeline decided, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The winning host, if any host passed every filter.
    pub chosen: Option<u32>,
    /// Hosts that passed every filter, in fleet order.
    pub survivors: Vec<u32>,
    /// The total weighted score of each survivor, in the same order.
    pub totals: Vec<f64>,
    /// Every rejection, by the plugin that made it, in pipeline order.
    pub rejections: Vec<PipelineRejection>,
    /// The number of hosts considered.
    pub considered: usize,
}

impl Pipeline {
    pub fn new(steps: Vec<Step>) -> Self {
        Self { steps }
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Runs every filter over the hosts still standing, then every scorer over the survivors,
    /// and picks the best total (ties go to the lowest host index, so decisions are repeatable).
    pub fn decide(
        &self,
        request: &PlacementRequest,
        fleet: &Fleet,
    ) -> Result<Decision, PluginError> {
        let considered = fleet.len();
        let mut candidates: Vec<u32> = (0..considered as u32).collect();
        let mut rejections = Vec::new();
        for step in self.steps.iter().filter(|s| s.plugin.info().filters) {
            if candidates.is_empty() {
                break;
            }
            let rejected = step.plugin.filter(request, fleet, &candidates)?;
            if rejected.is_empty() {
                continue;
            }
            remove_rejected(&mut candidates, &rejected, considered);
            let info = step.plugin.info();
            rejections.extend(rejected.into_iter().map(|r| {
                let reason = &info.reasons[&r.reason];
                PipelineRejection {
                    plugin: step.plugin.name().to_owned(),
                    host: r.host,
                    reason: r.reason,
                    message: reason.message.clone(),
                    detail_kind: reason.detail,
                    detail: r.detail,
                }
            }));
        }
        let mut scored = Vec::new();
        if !candidates.is_empty() {
            for step in self.steps.iter().filter(|s| s.plugin.info().scores) {
                scored.push((step.plugin.score(request, fleet, &candidates)?, step.weight));
            }
        }
        let totals = combine(candidates.len(), &scored);
        let chosen = best(&candidates, &totals);
        Ok(Decision {
            chosen,
            survivors: candidates,
            totals,
            rejections,
            considered,
        })
    }
}

/// Drops rejected hosts from `candidates`, keeping order.
pub fn remove_rejected(candidates: &mut Vec<u32>, rejected: &[Rejection], hosts: usize) {
    let mut out = vec![false; hosts];
    for r in rejected {
        if let Some(slot) = out.get_mut(r.host as usize) {
            *slot = true;
        }
    }
    candidates.retain(|&c| !out[c as usize]);
}

/// Normalises each scorer's scores to 0..=1 (min–max over the survivors; all-equal scores count
/// 0) and sums them with their weights.
pub fn combine(n: usize, scored: &[(Vec<f64>, f64)]) -> Vec<f64> {
    let mut totals = vec![0.0; n];
    for (scores, weight) in scored {
        let (min, max) = scores
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &s| {
                (lo.min(s), hi.max(s))
            });
        let range = max - min;
        // All equal (or a single survivor): this scorer has no preference.
        if range.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        for (t, s) in totals.iter_mut().zip(scores) {
            *t += weight * (s - min) / range;
        }
    }
    totals
}

/// The candidate with the highest total; the first one on ties.
pub fn best(candidates: &[u32], totals: &[f64]) -> Option<u32> {
    let mut best: Option<(u32, f64)> = None;
    for (&c, &t) in candidates.iter().zip(totals) {
        if best.is_none_or(|(_, bt)| t > bt) {
            best = Some((c, t));
        }
    }
    best.map(|(c, _)| c)
}

impl Decision {
    /// One line a person can read: "0/12 hosts: 7 insufficient memory (capacity-filter), ...".
    pub fn summary(&self) -> String {
        let mut counts: Vec<((&str, &str), usize)> = Vec::new();
        for r in &self.rejections {
            let key = (r.message.as_str(), r.plugin.as_str());
            match counts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => counts.push((key, 1)),
            }
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        let mut line = format!("{}/{} hosts fit", self.survivors.len(), self.considered);
        if !counts.is_empty() {
            line.push_str(": ");
            let parts: Vec<String> = counts
                .iter()
                .map(|((message, plugin), n)| format!("{n} {message} ({plugin})"))
                .collect();
            line.push_str(&parts.join(", "));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn host(id: &str, labels: &[(&str, &str)], groups: &[&str]) -> HostSnapshot {
        HostSnapshot {
            id: id.into(),
            arch: Arch::Aarch64,
            vcpus_total: 8,
            vcpus_allocated: 2,
            memory_total_mib: 8 << 30,
            memory_allocated_mib: 0,
            memory_available_mib: None,
            disk_total_mib: 100,
            disk_allocated_mib: 0,
            load_milli: 0,
            vms: 0,
            features: vec![HostFeature::Uefi, HostFeature::Iommu],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn labels_and_groups_are_interned_once_and_spanned_per_host() {
        let hosts = [
            host("a", &[("rack", "r1"), ("tier", "gold")], &["web"]),
            host("b", &[("rack", "r1")], &[]),
            host("c", &[], &["web", "db"]),
        ];
        let mut b = FleetBuilder::from_hosts(&hosts);
        let r = b.request(&CoreRequest {
            vcpus: 1,
            memory_mib: 1,
            disk_mib: 0,
            arch: Arch::Aarch64,
            features: vec![],
            required_labels: BTreeMap::from([("zone".into(), "z9".into())]),
            anti_affinity_group: Some("web".into()),
            affinity_group: None,
        });
        let f = b.finish();
        assert_eq!(f.symbols, ["rack=r1", "tier=gold", "web", "db", "zone=z9"]);
        assert_eq!(f.label_offsets, [0, 2, 3, 3]);
        assert_eq!(f.label_ids, [0, 1, 0]);
        assert_eq!(f.group_offsets, [0, 1, 1, 3]);
        assert_eq!(f.group_ids, [2, 2, 3]);
        assert_eq!(
            r.required_labels,
            [4],
            "a label no host has still gets a symbol"
        );
        assert_eq!(r.anti_affinity_group, Some(2));
        assert_eq!(f.arch, [1, 1, 1], "aarch64 is the arch enum's case 1");
        assert_eq!(f.features[0], 0b10010, "uefi is bit 1, iommu bit 4");
        assert_eq!(
            f.memory_total_mib[0],
            u32::MAX,
            "sizes beyond u32 MiB saturate"
        );
    }

    #[test]
    fn scores_are_normalised_per_scorer_then_weighted() {
        let totals = combine(
            3,
            &[
                (vec![10.0, 20.0, 30.0], 1.0),
                (vec![5.0, 5.0, 5.0], 100.0),
                (vec![1.0, 0.0, 0.0], 2.0),
            ],
        );
        assert_eq!(totals, [2.0, 0.5, 1.0]);
        assert_eq!(best(&[7, 8, 9], &totals), Some(7));
    }

    #[test]
    fn ties_go_to_the_first_candidate() {
        assert_eq!(best(&[4, 2, 9], &[1.0, 1.0, 0.5]), Some(4));
        assert_eq!(best(&[], &[]), None);
    }

    #[test]
    fn rejected_hosts_leave_the_candidates_in_order() {
        let mut candidates = vec![0, 2, 3, 5];
        let r = |host| Rejection {
            host,
            reason: 1,
            detail: 0,
        };
        remove_rejected(&mut candidates, &[r(3), r(0), r(99)], 6);
        assert_eq!(candidates, [2, 5]);
    }
}
