//! The first-party placement plugins compiled natively, run over the same data as their
//! WebAssembly builds: for the equivalence test and the benchmark's baseline.

use slipway_plugin_sdk::placement as sdk;
use slipway_plugin_sdk::placement::Placement;
use slipway_runtime::placement::{self as rt, Fleet, PlacementRequest};

/// The SDK's (guest-side) types for a host-side fleet: the same columns, moved across.
pub fn fleet(f: &Fleet) -> sdk::Fleet {
    sdk::Fleet {
        hosts: f.hosts,
        symbol_text: f.symbol_text.clone(),
        symbol_offsets: f.symbol_offsets.clone(),
        vcpus_total: f.vcpus_total.clone(),
        vcpus_allocated: f.vcpus_allocated.clone(),
        memory_total_mib: f.memory_total_mib.clone(),
        memory_allocated_mib: f.memory_allocated_mib.clone(),
        memory_available_mib: f.memory_available_mib.clone(),
        disk_total_mib: f.disk_total_mib.clone(),
        disk_allocated_mib: f.disk_allocated_mib.clone(),
        load_milli: f.load_milli.clone(),
        vms: f.vms.clone(),
        arch: f.arch.clone(),
        features: f.features.clone(),
        label_set: f.label_set.clone(),
        label_set_offsets: f.label_set_offsets.clone(),
        label_ids: f.label_ids.clone(),
        group_set: f.group_set.clone(),
        group_set_offsets: f.group_set_offsets.clone(),
        group_ids: f.group_ids.clone(),
    }
}

fn arch(a: slipway_runtime::types::Arch) -> sdk::Arch {
    use slipway_runtime::types::Arch as A;
    match a {
        A::X8664 => sdk::Arch::X8664,
        A::Aarch64 => sdk::Arch::Aarch64,
        A::Riscv64 => sdk::Arch::Riscv64,
        A::Ppc64le => sdk::Arch::Ppc64le,
        A::S390x => sdk::Arch::S390x,
    }
}

fn features(x: slipway_runtime::types::HostFeatures) -> sdk::HostFeatures {
    use slipway_runtime::types::HostFeatures as F;
    [
        (F::KVM, sdk::HostFeatures::KVM),
        (F::UEFI, sdk::HostFeatures::UEFI),
        (F::NESTED_VIRT, sdk::HostFeatures::NESTED_VIRT),
        (F::HUGEPAGES, sdk::HostFeatures::HUGEPAGES),
        (F::IOMMU, sdk::HostFeatures::IOMMU),
    ]
    .into_iter()
    .filter(|(host, _)| x.contains(*host))
    .fold(sdk::HostFeatures::empty(), |acc, (_, guest)| acc | guest)
}

pub fn request(r: &PlacementRequest) -> sdk::PlacementRequest {
    sdk::PlacementRequest {
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        disk_mib: r.disk_mib,
        arch: arch(r.arch),
        features: features(r.features),
        required_labels: r.required_labels.clone(),
        anti_affinity_group: r.anti_affinity_group,
        affinity_group: r.affinity_group,
    }
}

/// Configures a plugin from its manifest's `[config]`, as the runtime would.
pub fn configured<P: Placement>(manifest_dir: &str) -> P {
    let manifest = slipway_runtime::Manifest::from_path(
        &std::path::Path::new(manifest_dir).join("plugin.toml"),
    )
    .unwrap();
    P::new(slipway_plugin_sdk::config::parse(&manifest.config_json()).unwrap()).unwrap()
}

type NativeFilter = dyn Fn(&sdk::PlacementRequest, &sdk::Fleet, &[u32]) -> Vec<sdk::Rejection>;
type NativeScore = dyn Fn(&sdk::PlacementRequest, &sdk::Fleet, &[u32]) -> Vec<f64>;

/// The native version of a pipeline step.
pub enum NativeStep {
    Filter(Box<NativeFilter>),
    Score(Box<NativeScore>, f64),
}

pub fn filter<P: Placement + 'static>(p: P) -> NativeStep {
    NativeStep::Filter(Box::new(move |r, f, c| p.filter(r, f, c).unwrap()))
}

pub fn score<P: Placement + 'static>(p: P, weight: f64) -> NativeStep {
    NativeStep::Score(Box::new(move |r, f, c| p.score(r, f, c).unwrap()), weight)
}

/// What the native pipeline decided: survivors, their totals, the rejections and the winner.
#[derive(Debug, PartialEq)]
pub struct NativeDecision {
    pub chosen: Option<u32>,
    pub survivors: Vec<u32>,
    pub totals: Vec<f64>,
    pub rejections: Vec<(u32, u32, u64)>,
}

/// Runs filters then weighted scores natively, with the runtime's own combining rules.
pub fn decide(
    steps: &[NativeStep],
    request: &sdk::PlacementRequest,
    fleet: &sdk::Fleet,
) -> NativeDecision {
    let n = fleet.len();
    let mut candidates: Vec<u32> = (0..n as u32).collect();
    let mut rejections = Vec::new();
    for step in steps {
        if let NativeStep::Filter(f) = step {
            if candidates.is_empty() {
                break;
            }
            let rejected = f(request, fleet, &candidates);
            let mut out = vec![false; n];
            for r in &rejected {
                out[r.host as usize] = true;
                rejections.push((r.host, r.reason, r.detail));
            }
            candidates.retain(|&c| !out[c as usize]);
        }
    }
    let mut scored = Vec::new();
    if !candidates.is_empty() {
        for step in steps {
            if let NativeStep::Score(s, weight) = step {
                scored.push((s(request, fleet, &candidates), *weight));
            }
        }
    }
    let totals = rt::combine(candidates.len(), &scored);
    NativeDecision {
        chosen: rt::best(&candidates, &totals),
        survivors: candidates,
        totals,
        rejections,
    }
}

/// The first-party pipeline twice — as WebAssembly plugins loaded by `runtime`, and natively —
/// with the given scorers and weights after the capacity and label filters.
pub fn first_party(
    runtime: &slipway_runtime::Runtime,
    scorers: &[(&str, f64)],
) -> (rt::Pipeline, Vec<NativeStep>) {
    use slipway_test_artifacts as artifacts;
    let load = |guest: artifacts::Guest, weight| {
        let p = slipway_runtime::PluginPackage::read(std::path::Path::new(guest.dir)).unwrap();
        let plugin = runtime
            .load(p.manifest, &p.component)
            .unwrap()
            .into_placement()
            .unwrap();
        rt::Step { plugin, weight }
    };
    let mut wasm = vec![
        load(artifacts::CAPACITY_FILTER, 1.0),
        load(artifacts::LABEL_FILTER, 1.0),
    ];
    let mut native = vec![
        filter(configured::<slipway_capacity_filter::CapacityFilter>(
            artifacts::CAPACITY_FILTER.dir,
        )),
        filter(configured::<slipway_label_filter::LabelFilter>(
            artifacts::LABEL_FILTER.dir,
        )),
    ];
    for &(name, weight) in scorers {
        match name {
            "binpack-score" => {
                wasm.push(load(artifacts::BINPACK_SCORE, weight));
                native.push(score(
                    configured::<slipway_binpack_score::BinpackScore>(artifacts::BINPACK_SCORE.dir),
                    weight,
                ));
            }
            "spread-score" => {
                wasm.push(load(artifacts::SPREAD_SCORE, weight));
                native.push(score(
                    configured::<slipway_spread_score::SpreadScore>(artifacts::SPREAD_SCORE.dir),
                    weight,
                ));
            }
            other => panic!("no first-party scorer {other}"),
        }
    }
    (rt::Pipeline::new(wasm).unwrap(), native)
}
