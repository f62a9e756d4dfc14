//! The catalog's vocabulary: model VMs (hardware, OS, installed applications, disk images) and
//! applications with their install recipes.
//!
//! These are the bodies the HTTP API accepts and returns. Serde rejects unknown fields and wrong
//! types; [`ModelVmSpec::check`] and [`ApplicationSpec::check`] then apply the rules serde cannot
//! express (ranges, names, consistency between arch and machine type) and name the field at fault,
//! so a client sees every problem of a body at once.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Arch, Firmware};

/// One problem with a body, at a JSON path such as `hardware.disks[0].size_mib`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The bus a virtual disk is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DiskBus {
    Virtio,
    Nvme,
    Scsi,
    Sata,
    Ide,
}

/// The model of a virtual network card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NicModel {
    Virtio,
    E1000,
    E1000e,
    Rtl8139,
    Vmxnet3,
}

/// The emulated chipset (QEMU machine type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MachineType {
    /// x86_64 with PCIe (ICH9).
    Q35,
    /// x86_64 with PCI (i440FX).
    Pc,
    /// The generic ARM and RISC-V machine.
    Virt,
}

impl MachineType {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineType::Q35 => "q35",
            MachineType::Pc => "pc",
            MachineType::Virt => "virt",
        }
    }

    pub fn supports(self, arch: Arch) -> bool {
        match self {
            MachineType::Q35 | MachineType::Pc => arch == Arch::X86_64,
            MachineType::Virt => matches!(arch, Arch::Aarch64 | Arch::Riscv64),
        }
    }

    /// How many disks of `bus` the chipset can take without extra controllers.
    pub fn max_ide_disks(self) -> usize {
        match self {
            MachineType::Pc => 4,
            MachineType::Q35 | MachineType::Virt => 0,
        }
    }
}

/// A virtual disk. The first disk with an image is the one the VM boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Size in MiB; at least the image's virtual size.
    pub size_mib: u64,
    pub bus: DiskBus,
    /// The image this disk starts from: the sha256 digest of an image in the image store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A virtual network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub model: NicModel,
}

/// A VM's virtual hardware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HardwareConfig {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    pub firmware: Firmware,
    pub arch: Arch,
    pub machine_type: MachineType,
}

/// An operating system: family (`linux`, `windows`, `bsd`), distribution and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OsSpec {
    pub family: OsFamily,
    /// e.g. `debian`, `ubuntu`, `fedora`, `rhel`, `alpine`.
    pub distro: String,
    /// e.g. `12`, `24.04`, `3.20`.
    pub version: String,
    pub arch: Arch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OsFamily {
    Linux,
    Windows,
    Bsd,
}

impl OsFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            OsFamily::Linux => "linux",
            OsFamily::Windows => "windows",
            OsFamily::Bsd => "bsd",
        }
    }
}

impl fmt::Display for OsFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An application installed in a model VM, naming an application of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AppRef {
    pub name: String,
    pub version: String,
}

/// A model VM as a client creates or replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelVmSpec {
    /// Unique in the catalog: lower-case letters, digits, `-`, `.` and `_`, at most 63 characters.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub hardware: HardwareConfig,
    pub os: OsSpec,
    /// Applications installed in the model's image; each must exist in the catalog.
    #[serde(default)]
    pub applications: Vec<AppRef>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Limits on what a model VM may declare; generous, but finite, so that no body can ask the
/// server to plan for absurd hardware.
pub mod limits {
    pub const MAX_VCPUS: u32 = 1024;
    pub const MIN_MEMORY_MIB: u64 = 16;
    pub const MAX_MEMORY_MIB: u64 = 16 << 20; // 16 TiB
    pub const MAX_DISK_MIB: u64 = 64 << 20; // 64 TiB
    pub const MAX_DISKS: usize = 32;
    pub const MAX_NICS: usize = 16;
    pub const MAX_APPS: usize = 256;
    pub const MAX_LABELS: usize = 64;
    pub const MAX_NAME: usize = 63;
    pub const MAX_TEXT: usize = 4096;
    pub const MAX_LABEL_VALUE: usize = 253;
}

/// Whether `s` has the shape of a UUID (`8-4-4-4-12` hex digits), as resource ids do.
pub fn is_uuid_shaped(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A catalog name: `[a-z0-9][a-z0-9._-]{0,62}`, never shaped like an id, so that a resource
/// looked up by "id or name" is never ambiguous.
pub fn check_name(field: &str, name: &str, errors: &mut Vec<FieldError>) {
    if is_uuid_shaped(name) {
        errors.push(FieldError::new(
            field,
            format!("{name:?} has the shape of an id; choose a name that does not"),
        ));
        return;
    }
    let ok = !name.is_empty()
        && name.len() <= limits::MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        errors.push(FieldError::new(
            field,
            format!(
                "{name:?} is not a valid name: use 1 to {} lower-case letters, digits, '.', '-' or '_', starting with a letter or digit",
                limits::MAX_NAME
            ),
        ));
    }
}

/// A label key: like a name, plus `/` for prefixes (`topology/rack`); never `=`, which would make
/// `a=b`/`c` and `a`/`b=c` the same selector.
pub fn check_label(field: &str, key: &str, value: &str, errors: &mut Vec<FieldError>) {
    let key_ok = !key.is_empty()
        && key.len() <= limits::MAX_NAME
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if !key_ok {
        errors.push(FieldError::new(
            field,
            format!("label key {key:?} must be 1 to 63 letters, digits, '.', '-', '_' or '/'"),
        ));
    }
    if value.len() > limits::MAX_LABEL_VALUE || value.chars().any(|c| c.is_control()) {
        errors.push(FieldError::new(
            field,
            format!(
                "label value must be at most {} characters without control characters",
                limits::MAX_LABEL_VALUE
            ),
        ));
    }
}

/// A sha256 digest in lower-case hex, as image ids are.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_text(field: &str, text: &str, max: usize, errors: &mut Vec<FieldError>) {
    if text.len() > max {
        errors.push(FieldError::new(
            field,
            format!("at most {max} bytes, got {}", text.len()),
        ));
    }
}

fn check_version(field: &str, version: &str, errors: &mut Vec<FieldError>) {
    let ok = !version.is_empty()
        && version.len() <= limits::MAX_NAME
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~:".contains(&b));
    if !ok {
        errors.push(FieldError::new(
            field,
            format!("{version:?} is not a valid version: 1 to 63 letters, digits or '.-_+~:'"),
        ));
    }
}

impl ModelVmSpec {
    /// Every rule serde cannot express, each broken one reported with its field path.
    pub fn check(&self) -> Vec<FieldError> {
        use limits::*;
        let mut errors = Vec::new();
        check_name("name", &self.name, &mut errors);
        check_text("description", &self.description, MAX_TEXT, &mut errors);

        let hw = &self.hardware;
        if hw.vcpus == 0 || hw.vcpus > MAX_VCPUS {
            errors.push(FieldError::new(
                "hardware.vcpus",
                format!("must be between 1 and {MAX_VCPUS}, got {}", hw.vcpus),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&hw.memory_mib) {
            errors.push(FieldError::new(
                "hardware.memory_mib",
                format!(
                    "must be between {MIN_MEMORY_MIB} MiB and {MAX_MEMORY_MIB} MiB (16 TiB), got {}",
                    hw.memory_mib
                ),
            ));
        }
        if hw.disks.is_empty() {
            errors.push(FieldError::new(
                "hardware.disks",
                "a model VM needs at least one disk",
            ));
        }
        if hw.disks.len() > MAX_DISKS {
            errors.push(FieldError::new(
                "hardware.disks",
                format!("at most {MAX_DISKS} disks, got {}", hw.disks.len()),
            ));
        }
        for (i, disk) in hw.disks.iter().enumerate() {
            if disk.size_mib == 0 || disk.size_mib > MAX_DISK_MIB {
                errors.push(FieldError::new(
                    format!("hardware.disks[{i}].size_mib"),
                    format!(
                        "must be between 1 MiB and {MAX_DISK_MIB} MiB (64 TiB), got {}",
                        disk.size_mib
                    ),
                ));
            }
            if let Some(image) = &disk.image
                && !is_digest(image)
            {
                errors.push(FieldError::new(
                    format!("hardware.disks[{i}].image"),
                    format!("{image:?} is not an image id (64 lower-case hex digits of sha256)"),
                ));
            }
        }
        if !hw.disks.iter().any(|d| d.image.is_some()) && !hw.disks.is_empty() {
            errors.push(FieldError::new(
                "hardware.disks",
                "no disk names an image: a model VM boots from the first disk with an image",
            ));
        }
        let ide = hw.disks.iter().filter(|d| d.bus == DiskBus::Ide).count();
        if ide > hw.machine_type.max_ide_disks() {
            errors.push(FieldError::new(
                "hardware.disks",
                format!(
                    "{ide} IDE disks, but machine type {} takes at most {}",
                    hw.machine_type.as_str(),
                    hw.machine_type.max_ide_disks()
                ),
            ));
        }
        if hw.nics.len() > MAX_NICS {
            errors.push(FieldError::new(
                "hardware.nics",
                format!("at most {MAX_NICS} NICs, got {}", hw.nics.len()),
            ));
        }
        if !hw.machine_type.supports(hw.arch) {
            errors.push(FieldError::new(
                "hardware.machine_type",
                format!(
                    "machine type {} does not exist for {}",
                    hw.machine_type.as_str(),
                    hw.arch
                ),
            ));
        }
        if self.os.arch != hw.arch {
            errors.push(FieldError::new(
                "os.arch",
                format!(
                    "the OS is built for {} but the hardware is {}",
                    self.os.arch, hw.arch
                ),
            ));
        }
        check_name("os.distro", &self.os.distro, &mut errors);
        check_version("os.version", &self.os.version, &mut errors);

        if self.applications.len() > MAX_APPS {
            errors.push(FieldError::new(
                "applications",
                format!("at most {MAX_APPS} applications"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, app) in self.applications.iter().enumerate() {
            check_name(&format!("applications[{i}].name"), &app.name, &mut errors);
            check_version(
                &format!("applications[{i}].version"),
                &app.version,
                &mut errors,
            );
            if !seen.insert(&app.name) {
                errors.push(FieldError::new(
                    format!("applications[{i}].name"),
                    format!("{} is listed twice", app.name),
                ));
            }
        }
        if self.labels.len() > MAX_LABELS {
            errors.push(FieldError::new(
                "labels",
                format!("at most {MAX_LABELS} labels"),
            ));
        }
        for (key, value) in &self.labels {
            check_label(&format!("labels.{key}"), key, value, &mut errors);
        }
        errors
    }

    /// The digests of every image this model's disks start from, without repeats.
    pub fn images(&self) -> Vec<&str> {
        let mut images: Vec<&str> = self
            .hardware
            .disks
            .iter()
            .filter_map(|d| d.image.as_deref())
            .collect();
        images.sort_unstable();
        images.dedup();
        images
    }
}

/// The package manager a package recipe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PackageManager {
    Apt,
    Dnf,
    Apk,
}

impl PackageManager {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageManager::Apt => "apt",
            PackageManager::Dnf => "dnf",
            PackageManager::Apk => "apk",
        }
    }
}

/// How to install an application on one OS family (optionally one distribution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InstallRecipe {
    pub os_family: OsFamily,
    /// Restricts the recipe to one distribution; absent means any of the family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro: Option<String>,
    pub method: InstallMethod,
}

/// Packages from the distribution's repositories, or a bundle from the image store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InstallMethod {
    Packages {
        manager: PackageManager,
        packages: Vec<String>,
    },
    Bundle {
        /// The sha256 id of an artifact in the image store.
        artifact: String,
        /// The script inside the bundle that installs it, relative to the bundle's root.
        install_script: String,
    },
}

/// An application as a client creates or replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ApplicationSpec {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub recipes: Vec<InstallRecipe>,
}

impl ApplicationSpec {
    pub fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_name("name", &self.name, &mut errors);
        check_version("version", &self.version, &mut errors);
        check_text(
            "description",
            &self.description,
            limits::MAX_TEXT,
            &mut errors,
        );
        if self.recipes.len() > 32 {
            errors.push(FieldError::new("recipes", "at most 32 recipes"));
        }
        for (i, recipe) in self.recipes.iter().enumerate() {
            let at = format!("recipes[{i}]");
            if let Some(distro) = &recipe.distro {
                check_name(&format!("{at}.distro"), distro, &mut errors);
            }
            match &recipe.method {
                InstallMethod::Packages { manager, packages } => {
                    if recipe.os_family != OsFamily::Linux {
                        errors.push(FieldError::new(
                            format!("{at}.method.manager"),
                            format!("{} packages exist only for linux", manager.as_str()),
                        ));
                    }
                    if packages.is_empty() || packages.len() > 256 {
                        errors.push(FieldError::new(
                            format!("{at}.method.packages"),
                            "name 1 to 256 packages",
                        ));
                    }
                    for (j, package) in packages.iter().enumerate() {
                        // Package names reach a shell in the guest: keep them to what every
                        // package manager allows, so nothing else can ride along.
                        let ok = !package.is_empty()
                            && package.len() <= 128
                            && package
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._+-:=~".contains(&b))
                            && package.as_bytes()[0].is_ascii_alphanumeric();
                        if !ok {
                            errors.push(FieldError::new(
                                format!("{at}.method.packages[{j}]"),
                                format!("{package:?} is not a package name"),
                            ));
                        }
                    }
                }
                InstallMethod::Bundle {
                    artifact,
                    install_script,
                } => {
                    if !is_digest(artifact) {
                        errors.push(FieldError::new(
                            format!("{at}.method.artifact"),
                            format!("{artifact:?} is not an artifact id (sha256 hex)"),
                        ));
                    }
                    let script_ok = !install_script.is_empty()
                        && install_script.len() <= 255
                        && !install_script.starts_with('/')
                        && install_script
                            .split('/')
                            .all(|part| !part.is_empty() && part != ".." && part != ".");
                    if !script_ok {
                        errors.push(FieldError::new(
                            format!("{at}.method.install_script"),
                            format!(
                                "{install_script:?} must be a relative path inside the bundle, without '..'"
                            ),
                        ));
                    }
                }
            }
        }
        errors
    }

    pub fn artifacts(&self) -> Vec<&str> {
        let mut artifacts: Vec<&str> = self
            .recipes
            .iter()
            .filter_map(|r| match &r.method {
                InstallMethod::Bundle { artifact, .. } => Some(artifact.as_str()),
                InstallMethod::Packages { .. } => None,
            })
            .collect();
        artifacts.sort_unstable();
        artifacts.dedup();
        artifacts
    }
}
