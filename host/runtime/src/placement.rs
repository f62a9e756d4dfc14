//! Placement on the host side: loaded placement plugins, the columnar fleet they read, and the
//! pipeline that runs filters then weighted scores over one snapshot of the inventory.
//!
//! Per-host records carry no strings: [`FleetBuilder`] interns labels and group names into one
//! symbol table per decision, so a call copies plain number columns into the plugin in bulk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

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

/// The most reasons a plugin may declare, and the longest message of one.
pub const MAX_REASONS: usize = 64;
pub const MAX_REASON_MESSAGE: usize = 200;

/// What a placement plugin said about itself at load.
#[derive(Debug, Clone)]
pub struct PlacementInfo {
    pub filters: bool,
    pub scores: bool,
    pub reasons: Arc<BTreeMap<u32, Reason>>,
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
    /// Every symbol, concatenated; symbol `k` is `symbol_text[symbol_offsets[k]..symbol_offsets[k + 1]]`.
    pub symbol_text: String,
    pub symbol_offsets: Vec<u32>,
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
    /// Each host's label set; set `s` is `label_ids[label_set_offsets[s]..label_set_offsets[s + 1]]`.
    pub label_set: Vec<u32>,
    pub label_set_offsets: Vec<u32>,
    pub label_ids: Vec<u32>,
    /// Each host's group set, stored like labels.
    pub group_set: Vec<u32>,
    pub group_set_offsets: Vec<u32>,
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
    /// The number of symbols.
    pub fn symbol_count(&self) -> usize {
        self.symbol_offsets.len() - 1
    }

    /// Symbol `id`.
    pub fn symbol(&self, id: u32) -> &str {
        let i = id as usize;
        &self.symbol_text[self.symbol_offsets[i] as usize..self.symbol_offsets[i + 1] as usize]
    }

    /// The symbol ids of host `host`'s labels.
    pub fn labels(&self, host: u32) -> &[u32] {
        let set = self.label_set[host as usize] as usize;
        &self.label_ids
            [self.label_set_offsets[set] as usize..self.label_set_offsets[set + 1] as usize]
    }

    /// The symbol ids of the groups of the VMs on host `host`.
    pub fn groups(&self, host: u32) -> &[u32] {
        let set = self.group_set[host as usize] as usize;
        &self.group_ids
            [self.group_set_offsets[set] as usize..self.group_set_offsets[set + 1] as usize]
    }

    /// The wire form a plugin that reads `columns` is given: those columns, the rest empty.
    fn view<'a>(&'a self, columns: FleetColumns) -> wit::Fleet<'a> {
        let pick = |column: FleetColumns, data: &'a [u32]| -> &'a [u32] {
            if columns.contains(column) { data } else { &[] }
        };
        let pick8 = |column: FleetColumns, data: &'a [u8]| -> &'a [u8] {
            if columns.contains(column) { data } else { &[] }
        };
        let symbolic = columns.intersects(FleetColumns::LABELS | FleetColumns::GROUPS);
        wit::Fleet {
            hosts: self.hosts,
            symbol_text: if symbolic { &self.symbol_text } else { "" },
            symbol_offsets: if symbolic { &self.symbol_offsets } else { &[] },
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
            label_set: pick(FleetColumns::LABELS, &self.label_set),
            label_set_offsets: pick(FleetColumns::LABELS, &self.label_set_offsets),
            label_ids: pick(FleetColumns::LABELS, &self.label_ids),
            group_set: pick(FleetColumns::GROUPS, &self.group_set),
            group_set_offsets: pick(FleetColumns::GROUPS, &self.group_set_offsets),
            group_ids: pick(FleetColumns::GROUPS, &self.group_ids),
        }
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
            |b: &Bindings, store| b.slipway_plugin_placement().call_describe(store),
        )?;
        let invalid = |detail: String| PluginError::InvalidResult {
            plugin: core.name.to_string(),
            detail,
        };
        if described.reasons.len() > MAX_REASONS {
            return Err(invalid(format!(
                "it declares {} reasons; at most {MAX_REASONS} are accepted",
                described.reasons.len()
            )));
        }
        let mut reasons = BTreeMap::new();
        for reason in described.reasons {
            if reason.message.len() > MAX_REASON_MESSAGE {
                return Err(invalid(format!(
                    "the message of reason {} is {} bytes; at most {MAX_REASON_MESSAGE} are accepted",
                    reason.code,
                    reason.message.len()
                )));
            }
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
                    reasons: Arc::new(reasons),
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
        let view = fleet.view(self.inner.info.columns);
        let rejections = self.inner.core.call(
            Sandbox::Closed,
            |store| self.inner.pre.instantiate(store),
            |b: &Bindings, store| {
                b.slipway_plugin_placement()
                    .call_filter(store, request.wire(), view, candidates)
            },
        )?;
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
        let view = fleet.view(self.inner.info.columns);
        let scores = self.inner.core.call(
            Sandbox::Closed,
            |store| self.inner.pre.instantiate(store),
            |b: &Bindings, store| {
                b.slipway_plugin_placement()
                    .call_score(store, request.wire(), view, candidates)
            },
        )?;
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
/// interning every label and group name into one symbol table, and every distinct label set and
/// group set once.
#[derive(Clone)]
pub struct FleetBuilder {
    // Fx, not SipHash: interning is most of a fleet's build time, and the keys are the site's
    // own labels, not attacker-chosen.
    symbols: FxHashMap<String, u32>,
    label_sets: FxHashMap<Vec<u32>, u32>,
    group_sets: FxHashMap<Vec<u32>, u32>,
    scratch: String,
    ids: Vec<u32>,
    // Shared with the decisions that hold a snapshot; a change copies it only while one does.
    fleet: Arc<Fleet>,
}

impl Default for FleetBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl FleetBuilder {
    pub fn with_capacity(hosts: usize) -> Self {
        let column = || Vec::with_capacity(hosts);
        Self {
            symbols: FxHashMap::default(),
            label_sets: FxHashMap::default(),
            group_sets: FxHashMap::default(),
            scratch: String::new(),
            ids: Vec::new(),
            fleet: Arc::new(Fleet {
                hosts: 0,
                symbol_text: String::new(),
                symbol_offsets: vec![0],
                vcpus_total: column(),
                vcpus_allocated: column(),
                memory_total_mib: column(),
                memory_allocated_mib: column(),
                memory_available_mib: column(),
                disk_total_mib: column(),
                disk_allocated_mib: column(),
                load_milli: column(),
                vms: column(),
                arch: Vec::with_capacity(hosts),
                features: Vec::with_capacity(hosts),
                label_set: column(),
                label_set_offsets: vec![0],
                label_ids: Vec::new(),
                group_set: column(),
                group_set_offsets: vec![0],
                group_ids: Vec::new(),
            }),
        }
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

    /// The id of `symbol`, adding it to the table if it is new.
    pub fn intern(&mut self, symbol: &str) -> u32 {
        if let Some(&id) = self.symbols.get(symbol) {
            return id;
        }
        let f = Arc::make_mut(&mut self.fleet);
        let id = (f.symbol_offsets.len() - 1) as u32;
        f.symbol_text.push_str(symbol);
        f.symbol_offsets.push(f.symbol_text.len() as u32);
        self.symbols.insert(symbol.to_owned(), id);
        id
    }

    fn intern_label(&mut self, key: &str, value: &str) -> u32 {
        let mut label = std::mem::take(&mut self.scratch);
        label.clear();
        label.push_str(key);
        label.push('=');
        label.push_str(value);
        let id = self.intern(&label);
        self.scratch = label;
        id
    }

    pub fn push(&mut self, h: &HostSnapshot) {
        let (label_set, group_set) = self.sets(h);
        let f = Arc::make_mut(&mut self.fleet);
        f.hosts += 1;
        f.label_set.push(label_set);
        f.group_set.push(group_set);
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

    /// Replaces host `i` (pushed earlier) with `h`, in place: a heartbeat or a claim changes
    /// one host, not the fleet. Label and group sets it no longer uses stay in the tables.
    pub fn set(&mut self, i: usize, h: &HostSnapshot) {
        if i >= self.fleet.len() {
            return;
        }
        let (label_set, group_set) = self.sets(h);
        let f = Arc::make_mut(&mut self.fleet);
        f.label_set[i] = label_set;
        f.group_set[i] = group_set;
        f.vcpus_total[i] = h.vcpus_total;
        f.vcpus_allocated[i] = h.vcpus_allocated;
        f.memory_total_mib[i] = mib(h.memory_total_mib);
        f.memory_allocated_mib[i] = mib(h.memory_allocated_mib);
        f.memory_available_mib[i] = mib(h.memory_available_mib());
        f.disk_total_mib[i] = mib(h.disk_total_mib);
        f.disk_allocated_mib[i] = mib(h.disk_allocated_mib);
        f.load_milli[i] = h.load_milli;
        f.vms[i] = h.vms;
        f.arch[i] = arch(h.arch) as u8;
        f.features[i] = feature_bits(&h.features);
    }

    /// The ids of `h`'s label set and group set, interning them if new.
    fn sets(&mut self, h: &HostSnapshot) -> (u32, u32) {
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        for (k, v) in &h.labels {
            ids.push(self.intern_label(k, v));
        }
        let f = Arc::make_mut(&mut self.fleet);
        let label_set = intern_set(
            &mut self.label_sets,
            &ids,
            &mut f.label_set_offsets,
            &mut f.label_ids,
        );
        ids.clear();
        for g in &h.groups {
            ids.push(self.intern(g));
        }
        ids.sort_unstable();
        ids.dedup();
        let f = Arc::make_mut(&mut self.fleet);
        let group_set = intern_set(
            &mut self.group_sets,
            &ids,
            &mut f.group_set_offsets,
            &mut f.group_ids,
        );
        self.ids = ids;
        (label_set, group_set)
    }

    /// The fleet as it is now, for a decision: later changes do not reach it.
    pub fn snapshot(&self) -> Arc<Fleet> {
        self.fleet.clone()
    }

    /// The number of symbols interned: a server rebuilds the fleet when sets and symbols left
    /// behind by changes outgrow the hosts.
    pub fn symbols(&self) -> usize {
        self.symbols.len()
    }

    /// The numeric form of a request whose labels and groups are all symbols already; `None`
    /// when one is not (see [`FleetBuilder::request`]).
    pub fn request_known(&self, r: &CoreRequest) -> Option<PlacementRequest> {
        let mut label = String::new();
        let mut required_labels = Vec::with_capacity(r.required_labels.len());
        for (k, v) in &r.required_labels {
            label.clear();
            label.push_str(k);
            label.push('=');
            label.push_str(v);
            required_labels.push(*self.symbols.get(&label)?);
        }
        let group = |g: &Option<String>| -> Option<Option<u32>> {
            match g {
                None => Some(None),
                Some(g) => self.symbols.get(g).map(|&id| Some(id)),
            }
        };
        Some(PlacementRequest {
            vcpus: r.vcpus,
            memory_mib: mib(r.memory_mib),
            disk_mib: mib(r.disk_mib),
            arch: arch(r.arch),
            features: features(&r.features),
            required_labels,
            anti_affinity_group: group(&r.anti_affinity_group)?,
            affinity_group: group(&r.affinity_group)?,
        })
    }

    /// The numeric form of a request against this fleet's symbols. Labels no host carries still
    /// get a symbol, so filters see them as missing everywhere.
    pub fn request(&mut self, r: &CoreRequest) -> PlacementRequest {
        let required_labels = r
            .required_labels
            .iter()
            .map(|(k, v)| self.intern_label(k, v))
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
        Arc::unwrap_or_clone(self.fleet)
    }
}

/// The id of the set `ids`, appending it to `offsets`/`all` if it is new.
fn intern_set(
    sets: &mut FxHashMap<Vec<u32>, u32>,
    ids: &[u32],
    offsets: &mut Vec<u32>,
    all: &mut Vec<u32>,
) -> u32 {
    if let Some(&set) = sets.get(ids) {
        return set;
    }
    let set = (offsets.len() - 1) as u32;
    all.extend_from_slice(ids);
    offsets.push(all.len() as u32);
    sets.insert(ids.to_vec(), set);
    set
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

/// A host rejected by one step of the pipeline. Plain numbers, so that a decision over 10,000
/// hosts allocates nothing per rejection; [`Decision::plugin`] and [`Decision::reason`] name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineRejection {
    /// The index of the rejecting step in the pipeline.
    pub step: usize,
    pub host: u32,
    pub reason: u32,
    pub detail: u64,
}

/// What a pipeline decided, and why.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The winning host, if any host passed every filter.
    pub chosen: Option<u32>,
    /// Hosts that passed every filter, in fleet order.
    pub survivors: Vec<u32>,
    /// The total weighted score of each survivor, in the same order.
    pub totals: Vec<f64>,
    /// Every rejection, in pipeline order.
    pub rejections: Vec<PipelineRejection>,
    /// The number of hosts considered.
    pub considered: usize,
    /// Per scoring step (by index): its raw scores of the survivors, and its weight.
    pub scores: Vec<(usize, (Vec<f64>, f64))>,
    /// Every plugin call, in order.
    pub timings: Vec<StepTiming>,
    /// Per step: the plugin's name and its reasons, to explain rejections.
    steps: Vec<(String, Arc<BTreeMap<u32, Reason>>)>,
}

/// A pipeline step that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A weight is negative, infinite or not a number.
    #[error("the weight of {plugin} is {weight}; weights are finite and not negative")]
    Weight { plugin: String, weight: f64 },
}

impl Pipeline {
    pub fn new(steps: Vec<Step>) -> Result<Self, PipelineError> {
        for step in &steps {
            if !(step.weight.is_finite() && step.weight >= 0.0) {
                return Err(PipelineError::Weight {
                    plugin: step.plugin.name().to_owned(),
                    weight: step.weight,
                });
            }
        }
        Ok(Self { steps })
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
        self.decide_among(request, fleet, (0..fleet.len() as u32).collect())
    }

    /// [`Pipeline::decide`] over some of the fleet's hosts only (the server leaves out hosts
    /// that are unreachable or drained). `candidates` are fleet indexes in increasing order.
    pub fn decide_among(
        &self,
        request: &PlacementRequest,
        fleet: &Fleet,
        mut candidates: Vec<u32>,
    ) -> Result<Decision, PluginError> {
        let considered = candidates.len();
        let mut rejections = Vec::new();
        let mut timings = Vec::with_capacity(self.steps.len());
        for (index, step) in self.steps.iter().enumerate() {
            if !step.plugin.info().filters || candidates.is_empty() {
                continue;
            }
            let started = Instant::now();
            let rejected = step.plugin.filter(request, fleet, &candidates)?;
            timings.push(StepTiming {
                step: index,
                call: Call::Filter,
                elapsed: started.elapsed(),
            });
            if rejected.is_empty() {
                continue;
            }
            remove_rejected(&mut candidates, &rejected, fleet.len());
            rejections.extend(rejected.into_iter().map(|r| PipelineRejection {
                step: index,
                host: r.host,
                reason: r.reason,
                detail: r.detail,
            }));
        }
        let mut scored = Vec::new();
        let mut scores = Vec::new();
        if !candidates.is_empty() {
            for (index, step) in self.steps.iter().enumerate() {
                if !step.plugin.info().scores {
                    continue;
                }
                let started = Instant::now();
                let raw = step.plugin.score(request, fleet, &candidates)?;
                timings.push(StepTiming {
                    step: index,
                    call: Call::Score,
                    elapsed: started.elapsed(),
                });
                scores.push(index);
                scored.push((raw, step.weight));
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
            scores: scores.into_iter().zip(scored).collect(),
            timings,
            steps: self
                .steps
                .iter()
                .map(|s| (s.plugin.name().to_owned(), s.plugin.info().reasons.clone()))
                .collect(),
        })
    }

    /// Every filter over `candidates`, each seeing all of them (not only those earlier filters
    /// passed): every reason each host fails for. A decision that found no host uses it to
    /// name the closest one and all that it lacks.
    pub fn all_rejections(
        &self,
        request: &PlacementRequest,
        fleet: &Fleet,
        candidates: &[u32],
    ) -> Result<Vec<PipelineRejection>, PluginError> {
        let mut all = Vec::new();
        for (index, step) in self.steps.iter().enumerate() {
            if !step.plugin.info().filters || candidates.is_empty() {
                continue;
            }
            let rejected = step.plugin.filter(request, fleet, candidates)?;
            all.extend(rejected.into_iter().map(|r| PipelineRejection {
                step: index,
                host: r.host,
                reason: r.reason,
                detail: r.detail,
            }));
        }
        Ok(all)
    }
}

/// Which export of a plugin a timing measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Filter,
    Score,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Filter => "filter",
            Call::Score => "score",
        }
    }
}

/// How long one plugin call of a decision took, host side included (copying the fleet in).
#[derive(Debug, Clone, Copy)]
pub struct StepTiming {
    pub step: usize,
    pub call: Call,
    pub elapsed: Duration,
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
/// 0) and sums them with their weights. Scores are halved before subtracting, so that even
/// `[-1e308, 1e308]` normalises instead of overflowing to NaN.
pub fn combine(n: usize, scored: &[(Vec<f64>, f64)]) -> Vec<f64> {
    let mut totals = vec![0.0; n];
    for (scores, weight) in scored {
        let (min, max) = scores
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &s| {
                (lo.min(s), hi.max(s))
            });
        let range = max / 2.0 - min / 2.0;
        // All equal (or a single survivor): this scorer has no preference.
        if range.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        for (t, s) in totals.iter_mut().zip(scores) {
            *t += weight * ((s / 2.0 - min / 2.0) / range);
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
    /// The name of the plugin that made a rejection.
    pub fn plugin(&self, r: &PipelineRejection) -> &str {
        &self.steps[r.step].0
    }

    /// The name of the plugin of step `step`.
    pub fn step_name(&self, step: usize) -> &str {
        &self.steps[step].0
    }

    /// The declared reason of a rejection (the runtime checked that it was declared).
    pub fn reason(&self, r: &PipelineRejection) -> &Reason {
        &self.steps[r.step].1[&r.reason]
    }

    /// One line a person can read: "0/12 hosts: 7 insufficient memory (capacity-filter), ...".
    pub fn summary(&self) -> String {
        let mut counts: Vec<((&str, &str), usize)> = Vec::new();
        for r in &self.rejections {
            let key = (self.reason(r).message.as_str(), self.plugin(r));
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
        let symbols: Vec<&str> = (0..f.symbol_count() as u32).map(|i| f.symbol(i)).collect();
        assert_eq!(symbols, ["rack=r1", "tier=gold", "web", "db", "zone=z9"]);
        assert_eq!(f.label_set, [0, 1, 2]);
        assert_eq!(f.labels(0), [0, 1]);
        assert_eq!(f.labels(1), [0]);
        assert_eq!(f.labels(2), [] as [u32; 0]);
        assert_eq!(f.groups(0), [2]);
        assert_eq!(f.groups(1), [] as [u32; 0]);
        assert_eq!(f.groups(2), [2, 3]);
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
    fn extreme_scores_normalise_instead_of_overflowing() {
        let totals = combine(3, &[(vec![-1e308, 0.0, 1e308], 1.0)]);
        assert_eq!(totals, [0.0, 0.5, 1.0]);
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
