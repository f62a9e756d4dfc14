//! The consistency layer: the request against the catalog and against itself. The closest staged
//! VM is chosen first ([`choose`]), because most rules depend on it — the OS's minimum memory,
//! the boot disk's size, the firmware the image boots with, the apps it already has.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::os::{self, Requirements};
use super::size::{format_mib, say_mib};
use super::{AppRequest, Finding, VmRequest, nearest};
use crate::Firmware;
use crate::catalog::{
    ApplicationSpec, DiskBus, DiskSpec, HardwareConfig, InstallMethod, MachineType, NicModel,
    NicSpec, OsFamily,
};
use crate::resources::{Role, StagedVm};

const SOURCE: &str = "consistency";
const CATALOG: &str = "catalog";

/// What the catalog offers a request.
pub struct CatalogView<'a> {
    pub staged: &'a [StagedVm],
    pub applications: &'a [ApplicationSpec],
}

/// A staged VM as the scoring saw it. Kept small: the plan shows it beside the choice.
pub type StagedCandidate = StagedVm;

/// One criterion of a staged VM's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScorePart {
    /// `os`, `arch`, `applications`, `firmware`, `disk`, `machine-type`, `newest`.
    pub criterion: String,
    pub points: i64,
    pub detail: String,
}

/// A staged VM's score against the request, criterion by criterion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StagedScore {
    pub staged_vm: String,
    pub name: String,
    /// `linux debian 12 x86_64`.
    pub os: String,
    pub score: i64,
    pub parts: Vec<ScorePart>,
}

/// The staged VM chosen, the next best, and how many were compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Choice {
    pub chosen: StagedScore,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_up: Option<StagedScore>,
    pub considered: usize,
}

/// An app the chosen staged VM lacks: installed at first boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppInstall {
    pub name: String,
    pub version: String,
    /// How, on this OS: the catalog recipe that applies.
    pub method: InstallMethod,
}

/// What the consistency layer makes of a request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resolved {
    pub findings: Vec<Finding>,
    pub choice: Option<Choice>,
    /// The VM's hardware: the request's, the staged VM's where the request has no preference.
    pub hardware: Option<HardwareConfig>,
    pub install: Vec<AppInstall>,
}

// Weights: each tier outweighs everything below it, so the ranking is OS, then arch, then apps,
// then hardware — the order in which a mismatch costs the requester most.
const FAMILY: i64 = 1 << 40;
const ARCH: i64 = 1 << 36;
const DISTRO: i64 = 1 << 32;
const VERSION: i64 = 1 << 28;
const APP_EXACT: i64 = 1 << 16;
const APP_OTHER_VERSION: i64 = 1 << 12;
const FIRMWARE: i64 = 64;
const DISK: i64 = 16;
const MACHINE: i64 = 4;

fn os_of(s: &StagedVm) -> (Option<OsFamily>, &str, &str) {
    let family = serde_json::from_value(Value::from(s.os.family.as_str())).ok();
    (family, s.os.distro.as_str(), s.os.version.as_str())
}

fn describe(s: &StagedVm) -> String {
    format!(
        "{} {} {} {}",
        s.os.family, s.os.distro, s.os.version, s.hardware.arch
    )
}

/// Orders versions as people do: `12` > `9`, `3.20` > `3.9`, text compared as text.
pub fn cmp_versions(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> Vec<String> {
        v.split(['.', '-', '+', '~', ':'])
            .map(str::to_owned)
            .collect()
    };
    for (x, y) in split(a).iter().zip(split(b).iter()) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// Scores one staged VM.
fn score(request: &VmRequest, s: &StagedVm) -> StagedScore {
    let mut parts = Vec::new();
    let mut part = |criterion: &str, points: i64, detail: String| {
        parts.push(ScorePart {
            criterion: criterion.to_owned(),
            points,
            detail,
        })
    };
    let (family, distro, version) = os_of(s);
    let r = &request.os;
    match r.family {
        Some(f) if Some(f) != family => part("os", 0, format!("{} is not {f}", s.os.family)),
        _ => part("os", FAMILY, format!("family {}", s.os.family)),
    }
    match &r.distro {
        Some(d) if d == distro => part("os", DISTRO, format!("distro {distro}, as asked")),
        Some(d) => part("os", 0, format!("distro {distro}, not {d}")),
        None => {}
    }
    match &r.version {
        Some(v) if v == version => part("os", VERSION, format!("version {version}, as asked")),
        Some(v) => part("os", 0, format!("version {version}, not {v}")),
        None => {}
    }
    match request.hardware.arch {
        Some(a) if a != s.hardware.arch => {
            part("arch", 0, format!("{} is not {a}", s.hardware.arch))
        }
        _ => part("arch", ARCH, s.hardware.arch.to_string()),
    }
    let (mut exact, mut other) = (Vec::new(), Vec::new());
    for app in &request.applications {
        match s.applications.iter().find(|a| a.name == app.name) {
            Some(have) if app.version.as_ref().is_none_or(|v| *v == have.version) => {
                exact.push(format!("{} {}", have.name, have.version))
            }
            Some(have) => other.push(format!("{} {}", have.name, have.version)),
            None => {}
        }
    }
    if !request.applications.is_empty() {
        let points = exact.len() as i64 * APP_EXACT + other.len() as i64 * APP_OTHER_VERSION;
        let mut detail = format!(
            "{} of {} asked installed",
            exact.len(),
            request.applications.len()
        );
        if !exact.is_empty() {
            detail += &format!(": {}", exact.join(", "));
        }
        if !other.is_empty() {
            detail += &format!("; at another version: {}", other.join(", "));
        }
        part("applications", points, detail);
    }
    if let Some(f) = request.hardware.firmware {
        let same = f == s.hardware.firmware;
        part(
            "firmware",
            if same { FIRMWARE } else { 0 },
            format!(
                "boots with {}{}",
                fw(s.hardware.firmware),
                if same { ", as asked" } else { "" }
            ),
        );
    }
    let boot = s.hardware.disks.first().map_or(0, |d| d.size_mib);
    if let Some(asked) = request
        .hardware
        .disks
        .as_ref()
        .and_then(|d| d.first())
        .and_then(|d| d.size_mib)
    {
        let fits = boot <= asked;
        part(
            "disk",
            if fits { DISK } else { 0 },
            format!(
                "boot image {} {} the {} asked",
                say_mib(boot),
                if fits { "fits in" } else { "exceeds" },
                say_mib(asked)
            ),
        );
    }
    if let Some(m) = request.hardware.machine_type {
        let same = m == s.hardware.machine_type;
        part(
            "machine-type",
            if same { MACHINE } else { 0 },
            s.hardware.machine_type.as_str().to_owned(),
        );
    }
    StagedScore {
        staged_vm: s.id.clone(),
        name: s.name.clone(),
        os: describe(s),
        score: parts.iter().map(|p| p.points).sum(),
        parts,
    }
}

fn fw(f: Firmware) -> &'static str {
    match f {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    }
}

/// Ranks the staged VMs for `request`, best first: by score, then the newest OS version, then
/// name, so that the same catalog always gives the same answer.
pub fn choose(request: &VmRequest, staged: &[StagedVm]) -> Option<Choice> {
    let mut ranked: Vec<(StagedScore, &StagedVm)> =
        staged.iter().map(|s| (score(request, s), s)).collect();
    ranked.sort_by(|(a, sa), (b, sb)| {
        b.score
            .cmp(&a.score)
            .then_with(|| cmp_versions(&sb.os.version, &sa.os.version))
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut it = ranked.into_iter().map(|(s, _)| s);
    let chosen = it.next()?;
    Some(Choice {
        chosen,
        runner_up: it.next(),
        considered: staged.len(),
    })
}

/// The consistency layer. `request` is what the schema layer read.
pub fn check(request: &VmRequest, role: Role, catalog: &CatalogView<'_>) -> Resolved {
    let mut out = Resolved::default();
    let findings = &mut out.findings;
    self_consistency(request, role, findings);

    let Some(choice) = choose(request, catalog.staged) else {
        findings.push(Finding::error(
            CATALOG,
            "no-staged-vm",
            "",
            "the catalog has no staged VMs to deploy from: stage a model VM first".into(),
        ));
        return out;
    };
    let Some(staged) = catalog
        .staged
        .iter()
        .find(|s| s.id == choice.chosen.staged_vm)
    else {
        return out;
    };
    os_findings(request, staged, catalog.staged, findings);
    let (family, distro, version) = os_of(staged);
    let needs = family.map(|f| os::requirements(f, distro, version));
    let hardware = resolve_hardware(request, staged, needs.as_ref(), findings);
    out.install = applications(request, staged, family, catalog.applications, findings);
    out.hardware = Some(hardware);
    out.choice = Some(choice);
    out
}

/// Rules that need nothing but the request.
fn self_consistency(request: &VmRequest, role: Role, findings: &mut Vec<Finding>) {
    if request.count > 1 && request.hostname.is_some() {
        let f = Finding::error(
            SOURCE,
            "hostname-with-count",
            "hostname",
            format!(
                "{} VMs cannot all be named {:?}; use hostname_pattern",
                request.count,
                request.hostname.as_deref().unwrap_or_default()
            ),
        )
        .suggest_removal();
        findings.push(f);
        if request.hostname_pattern.is_none() {
            findings.push(
                Finding::error(
                    SOURCE,
                    "hostname-with-count",
                    "hostname_pattern",
                    "name the VMs with a pattern instead".into(),
                )
                .suggest(format!(
                    "{}-{{n}}",
                    request.hostname.as_deref().unwrap_or("vm")
                )),
            );
        }
    } else if request.hostname.is_some() && request.hostname_pattern.is_some() {
        findings.push(
            Finding::error(
                SOURCE,
                "hostname-and-pattern",
                "hostname_pattern",
                "give a hostname or a hostname pattern, not both".into(),
            )
            .suggest_removal(),
        );
    }
    if request.placement.host.is_some() && role != Role::Admin {
        findings.push(
            Finding::error(
                SOURCE,
                "admin-only",
                "placement.host",
                format!(
                    "only admins may pin a VM to a host; this token has the {} role",
                    role.as_str()
                ),
            )
            .suggest_removal(),
        );
    }
    if let (Some(a), Some(b)) = (
        &request.placement.affinity_group,
        &request.placement.anti_affinity_group,
    ) && a == b
    {
        findings.push(
            Finding::error(
                SOURCE,
                "affinity-conflict",
                "placement.affinity_group",
                format!("{a} cannot be both an affinity and an anti-affinity group"),
            )
            .suggest_removal(),
        );
    }
    if let Some(nics) = &request.hardware.nics {
        for (i, nic) in nics.iter().enumerate() {
            if let Some(net) = &nic.network
                && !request.networks.contains(net)
            {
                let mut f = Finding::error(
                    SOURCE,
                    "unknown-network",
                    format!("hardware.nics[{i}].network"),
                    format!(
                        "{net} is not one of the request's networks ({})",
                        if request.networks.is_empty() {
                            "none".to_owned()
                        } else {
                            request.networks.join(", ")
                        }
                    ),
                );
                f.suggestion = Some(
                    nearest(net, request.networks.iter().map(String::as_str))
                        .or(request.networks.first().map(String::as_str))
                        .map_or(Value::Null, Value::from),
                );
                findings.push(f);
            }
        }
    }
    if let Some(m) = request.hardware.machine_type
        && let Some(a) = request.hardware.arch
        && !m.supports(a)
    {
        let fit = [MachineType::Q35, MachineType::Pc, MachineType::Virt]
            .into_iter()
            .find(|m| m.supports(a));
        findings.push(
            Finding::error(
                SOURCE,
                "machine-type-arch",
                "hardware.machine_type",
                format!("the {} machine does not emulate {a}", m.as_str()),
            )
            .suggest(fit.map_or(Value::Null, |m| Value::from(m.as_str()))),
        );
    }
}

/// The chosen staged VM's OS against the OS and arch asked.
fn os_findings(
    request: &VmRequest,
    staged: &StagedVm,
    all: &[StagedVm],
    findings: &mut Vec<Finding>,
) {
    let (family, distro, version) = os_of(staged);
    let r = &request.os;
    let served: Vec<String> = {
        let mut v: Vec<String> = all
            .iter()
            .map(|s| format!("{} {} {}", s.os.family, s.os.distro, s.os.version))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let closest = format!(
        "the closest is {} (staged VM {})",
        describe(staged),
        staged.name
    );
    if let Some(f) = r.family
        && Some(f) != family
    {
        findings.push(
            Finding::error(
                CATALOG,
                "no-staged-vm-for-os",
                "os.family",
                format!(
                    "no staged VM runs {f}; the catalog can serve: {}",
                    served.join(", ")
                ),
            )
            .suggest(staged.os.family.clone()),
        );
    }
    if let Some(d) = &r.distro
        && d != distro
    {
        findings.push(
            Finding::error(
                CATALOG,
                "no-staged-vm-for-os",
                "os.distro",
                format!("no staged VM runs {}; {closest}", r.describe()),
            )
            .suggest(distro),
        );
    }
    if let Some(v) = &r.version
        && v != version
    {
        findings.push(
            Finding::error(
                CATALOG,
                "no-staged-vm-for-os",
                "os.version",
                format!("no staged VM runs {}; {closest}", r.describe()),
            )
            .suggest(version),
        );
    }
    if let Some(a) = request.hardware.arch
        && a != staged.hardware.arch
    {
        let mut arches: Vec<&str> = all.iter().map(|s| s.hardware.arch.as_str()).collect();
        arches.sort_unstable();
        arches.dedup();
        findings.push(
            Finding::error(
                CATALOG,
                "arch-mismatch",
                "hardware.arch",
                format!(
                    "no staged VM for {} runs on {a}; staged VMs are built for {}",
                    r.describe(),
                    arches.join(", ")
                ),
            )
            .suggest(staged.hardware.arch.as_str()),
        );
    }
    // Levels left to "any" that several OSes could fill: the choice is made, and said.
    let same_score: Vec<&StagedVm> = all
        .iter()
        .filter(|s| {
            let (f, ..) = os_of(s);
            f == family && s.hardware.arch == staged.hardware.arch
        })
        .collect();
    if r.distro.is_none() {
        let mut distros: Vec<&str> = same_score.iter().map(|s| s.os.distro.as_str()).collect();
        distros.sort_unstable();
        distros.dedup();
        if distros.len() > 1 {
            findings.push(
                Finding::warning(
                    CATALOG,
                    "ambiguous-os",
                    "os.distro",
                    format!(
                        "any distribution of {} was asked and {} match ({}); chose {distro}",
                        staged.os.family,
                        distros.len(),
                        distros.join(", ")
                    ),
                )
                .suggest(distro),
            );
            return;
        }
    }
    if r.version.is_none() {
        let mut versions: Vec<&str> = same_score
            .iter()
            .filter(|s| s.os.distro == distro)
            .map(|s| s.os.version.as_str())
            .collect();
        versions.sort_unstable_by(|a, b| cmp_versions(a, b));
        versions.dedup();
        if versions.len() > 1 {
            findings.push(
                Finding::warning(
                    CATALOG,
                    "ambiguous-os",
                    "os.version",
                    format!(
                        "any version of {distro} was asked and {} match ({}); chose {version}",
                        versions.len(),
                        versions.join(", ")
                    ),
                )
                .suggest(version),
            );
        }
    }
}

/// PCI slots a machine leaves for NICs once its own devices and the disks have theirs: QEMU's
/// i440FX and Q35 root buses have 32 slots; the host bridge, the ISA/LPC bridge, the display and
/// (Q35) the AHCI and SMBus functions take some, each virtio disk or NVMe controller one more.
fn nic_slots(machine: MachineType, disks: &[DiskSpec]) -> usize {
    let fixed = match machine {
        MachineType::Pc => 4,
        MachineType::Q35 => 5,
        MachineType::Virt => 2,
    };
    let disk_slots = disks
        .iter()
        .filter(|d| matches!(d.bus, DiskBus::Virtio | DiskBus::Nvme))
        .count()
        + usize::from(disks.iter().any(|d| d.bus == DiskBus::Scsi));
    32usize.saturating_sub(fixed + disk_slots)
}

fn resolve_hardware(
    request: &VmRequest,
    staged: &StagedVm,
    needs: Option<&Requirements>,
    findings: &mut Vec<Finding>,
) -> HardwareConfig {
    let h = &request.hardware;
    let base = &staged.hardware;
    let memory_mib = h.memory_mib.unwrap_or(base.memory_mib);
    if let Some(needs) = needs
        && memory_mib < needs.min_memory_mib
    {
        let mut f = Finding::error(
            SOURCE,
            "below-os-minimum",
            "hardware.memory",
            format!(
                "{} is below what {} needs: {} ({})",
                say_mib(memory_mib),
                describe(staged),
                say_mib(needs.min_memory_mib),
                needs.source
            ),
        )
        .suggest(format_mib(needs.min_memory_mib));
        if h.memory_mib.is_none() {
            // The staged VM's own amount is too small: a warning, the request did not say it.
            f.severity = super::Severity::Warning;
        }
        findings.push(f);
    }
    let firmware = h.firmware.unwrap_or(base.firmware);
    if let Some(needs) = needs
        && !os::boots_with(needs, firmware)
    {
        findings.push(
            Finding::error(
                SOURCE,
                "uefi-only",
                "hardware.firmware",
                format!(
                    "{} boots only with UEFI ({})",
                    describe(staged),
                    needs.source
                ),
            )
            .suggest("uefi"),
        );
    } else if firmware != base.firmware {
        findings.push(
            Finding::error(
                SOURCE,
                "firmware-mismatch",
                "hardware.firmware",
                format!(
                    "staged VM {} boots with {}, and no staged VM for {} boots with {}",
                    staged.name,
                    fw(base.firmware),
                    request.os.describe(),
                    fw(firmware)
                ),
            )
            .suggest(fw(base.firmware)),
        );
    }
    let machine_type = h.machine_type.unwrap_or(base.machine_type);
    if !machine_type.supports(base.arch) && h.arch.is_none() {
        findings.push(
            Finding::error(
                SOURCE,
                "machine-type-arch",
                "hardware.machine_type",
                format!(
                    "the {} machine does not emulate {}, the staged VM's arch",
                    machine_type.as_str(),
                    base.arch
                ),
            )
            .suggest(base.machine_type.as_str()),
        );
    }

    // Disks: the first is the staged image's; the others start empty and need a size.
    let boot = base.disks.first().cloned().unwrap_or(DiskSpec {
        size_mib: 0,
        bus: DiskBus::Virtio,
        image: None,
    });
    let mut disks = Vec::new();
    match &h.disks {
        None => disks = base.disks.clone(),
        Some(asked) => {
            for (i, d) in asked.iter().enumerate() {
                let field = format!("hardware.disks[{i}]");
                if i == 0 {
                    let size = d.size_mib.unwrap_or(boot.size_mib);
                    if size < boot.size_mib {
                        findings.push(
                            Finding::error(
                                SOURCE,
                                "disk-too-small",
                                format!("{field}.size"),
                                format!(
                                    "{} is smaller than staged VM {}'s image, {}",
                                    say_mib(size),
                                    staged.name,
                                    say_mib(boot.size_mib)
                                ),
                            )
                            .suggest(format_mib(boot.size_mib)),
                        );
                    }
                    let bus = d.bus.unwrap_or(boot.bus);
                    if bus != boot.bus {
                        findings.push(
                            Finding::warning(
                                SOURCE,
                                "boot-bus-change",
                                format!("{field}.bus"),
                                format!(
                                    "staged VM {} boots from a {} disk; on {} its OS may not find its root file system",
                                    staged.name,
                                    bus_name(boot.bus),
                                    bus_name(bus)
                                ),
                            )
                            .suggest(bus_name(boot.bus)),
                        );
                    }
                    disks.push(DiskSpec {
                        size_mib: size.max(boot.size_mib),
                        bus,
                        image: boot.image.clone(),
                    });
                } else {
                    let Some(size) = d.size_mib else {
                        findings.push(
                            Finding::error(
                                SOURCE,
                                "missing",
                                format!("{field}.size"),
                                "an added disk needs a size".into(),
                            )
                            .suggest("10GiB"),
                        );
                        continue;
                    };
                    disks.push(DiskSpec {
                        size_mib: size,
                        bus: d.bus.unwrap_or(DiskBus::Virtio),
                        image: None,
                    });
                }
            }
        }
    }
    for (i, d) in disks.iter().enumerate() {
        if d.bus == DiskBus::Ide && machine_type.max_ide_disks() == 0 {
            findings.push(
                Finding::error(
                    SOURCE,
                    "bus-unsupported",
                    format!("hardware.disks[{i}].bus"),
                    format!("the {} machine has no IDE bus", machine_type.as_str()),
                )
                .suggest("sata"),
            );
        }
    }
    let nics: Vec<NicSpec> = match &h.nics {
        None => base.nics.clone(),
        Some(asked) => asked
            .iter()
            .map(|n| NicSpec {
                model: n.model.unwrap_or(NicModel::Virtio),
            })
            .collect(),
    };
    let slots = nic_slots(machine_type, &disks);
    if nics.len() > slots {
        findings.push(
            Finding::error(
                SOURCE,
                "too-many-nics",
                "hardware.nics",
                format!(
                    "{} NICs do not fit: the {} machine has PCI slots for {slots} beside its disks",
                    nics.len(),
                    machine_type.as_str()
                ),
            )
            .suggest(Value::Array(
                request
                    .hardware
                    .nics
                    .iter()
                    .flatten()
                    .take(slots)
                    .map(|n| serde_json::to_value(n).unwrap_or(Value::Null))
                    .collect(),
            )),
        );
    }
    HardwareConfig {
        vcpus: h.vcpus.unwrap_or(base.vcpus),
        memory_mib,
        disks,
        nics,
        firmware,
        arch: base.arch,
        machine_type,
    }
}

fn bus_name(b: DiskBus) -> &'static str {
    match b {
        DiskBus::Virtio => "virtio",
        DiskBus::Nvme => "nvme",
        DiskBus::Scsi => "scsi",
        DiskBus::Sata => "sata",
        DiskBus::Ide => "ide",
    }
}

/// The recipe of `app` for the staged VM's OS: one for its distribution over one for its family.
fn recipe<'a>(
    app: &'a ApplicationSpec,
    family: Option<OsFamily>,
    distro: &str,
) -> Option<&'a InstallMethod> {
    let family = family?;
    let of_family = app.recipes.iter().filter(|r| r.os_family == family);
    of_family
        .clone()
        .find(|r| r.distro.as_deref() == Some(distro))
        .or_else(|| of_family.clone().find(|r| r.distro.is_none()))
        .map(|r| &r.method)
}

/// The apps asked for: those the staged VM has are done; the others must be installable on its
/// OS, and become the install list.
fn applications(
    request: &VmRequest,
    staged: &StagedVm,
    family: Option<OsFamily>,
    catalog: &[ApplicationSpec],
    findings: &mut Vec<Finding>,
) -> Vec<AppInstall> {
    let mut install = Vec::new();
    for (i, AppRequest { name, version }) in request.applications.iter().enumerate() {
        let field = format!("applications[{i}]");
        if staged
            .applications
            .iter()
            .any(|a| a.name == *name && version.as_ref().is_none_or(|v| *v == a.version))
        {
            continue;
        }
        let versions: Vec<&ApplicationSpec> = catalog.iter().filter(|a| a.name == *name).collect();
        if versions.is_empty() {
            let near = nearest(name, catalog.iter().map(|a| a.name.as_str()));
            let f = Finding::error(
                CATALOG,
                "unknown-app",
                format!("{field}.name"),
                match near {
                    Some(n) => format!("the catalog has no application {name}; did you mean {n}?"),
                    None => format!("the catalog has no application {name}"),
                },
            );
            findings.push(match near {
                Some(n) => f.suggest(n),
                None => Finding {
                    field: field.clone(),
                    ..f.suggest_removal()
                },
            });
            continue;
        }
        let installable: Vec<(&ApplicationSpec, &InstallMethod)> = versions
            .iter()
            .filter_map(|a| recipe(a, family, &staged.os.distro).map(|m| (*a, m)))
            .collect();
        let wanted = match version {
            Some(v) => {
                if !versions.iter().any(|a| a.version == *v) {
                    let newest = newest(&versions).map(|a| a.version.clone());
                    findings.push(
                        Finding::error(
                            CATALOG,
                            "unknown-app-version",
                            format!("{field}.version"),
                            format!(
                                "the catalog has {name} at {}, not {v}",
                                list_versions(&versions)
                            ),
                        )
                        .suggest(newest.map_or(Value::Null, Value::from)),
                    );
                    continue;
                }
                installable.iter().find(|(a, _)| a.version == *v)
            }
            None => installable
                .iter()
                .max_by(|(a, _), (b, _)| cmp_versions(&a.version, &b.version)),
        };
        match wanted {
            Some((app, method)) => install.push(AppInstall {
                name: app.name.clone(),
                version: app.version.clone(),
                method: (*method).clone(),
            }),
            None => {
                // Another version may install here: suggest it before giving up on the app.
                let other = installable
                    .iter()
                    .max_by(|(a, _), (b, _)| cmp_versions(&a.version, &b.version));
                let (sfield, suggestion) = match other {
                    Some((a, _)) => (format!("{field}.version"), Value::from(a.version.clone())),
                    None => (field.clone(), Value::Null),
                };
                let families: Vec<String> = versions
                    .iter()
                    .flat_map(|a| &a.recipes)
                    .map(|r| match &r.distro {
                        Some(d) => format!("{} {d}", r.os_family),
                        None => r.os_family.to_string(),
                    })
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let mut f = Finding::error(
                    CATALOG,
                    "app-not-available-for-os",
                    sfield,
                    format!(
                        "{name}{} cannot be installed on {} (it has recipes for {})",
                        version
                            .as_ref()
                            .map(|v| format!(" {v}"))
                            .unwrap_or_default(),
                        describe(staged),
                        if families.is_empty() {
                            "nothing".to_owned()
                        } else {
                            families.join(", ")
                        }
                    ),
                );
                f.suggestion = Some(suggestion);
                findings.push(f);
            }
        }
    }
    install
}

fn newest<'a>(apps: &[&'a ApplicationSpec]) -> Option<&'a ApplicationSpec> {
    apps.iter()
        .copied()
        .max_by(|a, b| cmp_versions(&a.version, &b.version))
}

fn list_versions(apps: &[&ApplicationSpec]) -> String {
    let mut v: Vec<&str> = apps.iter().map(|a| a.version.as_str()).collect();
    v.sort_unstable_by(|a, b| cmp_versions(a, b));
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_people_read_them() {
        assert_eq!(cmp_versions("12", "9"), Ordering::Greater);
        assert_eq!(cmp_versions("3.20", "3.9"), Ordering::Greater);
        assert_eq!(cmp_versions("1.22", "1.22"), Ordering::Equal);
        assert_eq!(cmp_versions("24.04", "22.04"), Ordering::Greater);
    }

    #[test]
    fn nic_slots_shrink_with_disks() {
        let disk = |bus| DiskSpec {
            size_mib: 1,
            bus,
            image: None,
        };
        assert_eq!(nic_slots(MachineType::Pc, &[disk(DiskBus::Virtio)]), 27);
        assert_eq!(
            nic_slots(
                MachineType::Q35,
                &[disk(DiskBus::Nvme), disk(DiskBus::Sata)]
            ),
            26
        );
    }
}
