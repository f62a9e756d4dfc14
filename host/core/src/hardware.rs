//! Hardware vocabulary: instruction sets, firmware and the capabilities a host offers.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An instruction set, of a host, a VM or an operating system.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[serde(alias = "amd64", alias = "x86-64")]
    X86_64,
    #[serde(alias = "arm64")]
    Aarch64,
    Riscv64,
    Ppc64le,
    S390x,
}

impl Arch {
    pub const ALL: [Arch; 5] = [
        Arch::X86_64,
        Arch::Aarch64,
        Arch::Riscv64,
        Arch::Ppc64le,
        Arch::S390x,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Riscv64 => "riscv64",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The firmware a VM boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// A capability a host offers and a request may require.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HostFeature {
    /// Hardware-assisted virtualisation that actually works (probed, not assumed).
    Kvm,
    /// UEFI firmware (OVMF) is installed.
    Uefi,
    /// Guests can run their own hypervisors.
    NestedVirt,
    /// Huge pages are reserved for guests.
    Hugepages,
    /// Devices can be passed through.
    Iommu,
}

impl HostFeature {
    pub const ALL: [HostFeature; 5] = [
        HostFeature::Kvm,
        HostFeature::Uefi,
        HostFeature::NestedVirt,
        HostFeature::Hugepages,
        HostFeature::Iommu,
    ];
}
