//! What operating systems need of their virtual hardware, from their vendors' published minimums.
//! A requester who asks for less gets a finding before a VM that cannot boot is deployed.

use crate::Firmware;
use crate::catalog::OsFamily;

/// What an OS needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirements {
    pub min_memory_mib: u64,
    /// Boots only with UEFI (Windows 11).
    pub uefi_only: bool,
    /// Where the number comes from, for the finding's message.
    pub source: &'static str,
}

/// The requirements of `family`/`distro`/`version`, the most specific entry that matches.
pub fn requirements(family: OsFamily, distro: &str, version: &str) -> Requirements {
    let r = |min_memory_mib, uefi_only, source| Requirements {
        min_memory_mib,
        uefi_only,
        source,
    };
    let major = version.split('.').next().unwrap_or("");
    match (family, distro, major) {
        (OsFamily::Windows, _, "11") => r(4096, true, "Windows 11 needs 4 GiB and UEFI"),
        (OsFamily::Windows, _, _) => r(2048, false, "Windows needs 2 GiB"),
        (OsFamily::Linux, "rhel" | "rocky" | "almalinux" | "centos", _) => {
            r(1536, false, "Red Hat Enterprise Linux 9 needs 1.5 GiB")
        }
        (OsFamily::Linux, "fedora", _) => r(2048, false, "Fedora needs 2 GiB"),
        (OsFamily::Linux, "ubuntu", _) => r(1024, false, "Ubuntu Server needs 1 GiB"),
        (OsFamily::Linux, "debian", _) => r(256, false, "Debian without a desktop needs 256 MiB"),
        (OsFamily::Linux, "alpine", _) => r(128, false, "Alpine needs 128 MiB"),
        (OsFamily::Linux, _, _) => r(64, false, "a Linux kernel needs 64 MiB"),
        (OsFamily::Bsd, _, _) => r(256, false, "a BSD needs 256 MiB"),
    }
}

/// Whether `firmware` can boot an OS with these requirements.
pub fn boots_with(req: &Requirements, firmware: Firmware) -> bool {
    !(req.uefi_only && firmware == Firmware::Bios)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_entry_wins() {
        assert!(requirements(OsFamily::Windows, "windows", "11").uefi_only);
        assert!(!requirements(OsFamily::Windows, "windows", "2022").uefi_only);
        assert_eq!(
            requirements(OsFamily::Linux, "debian", "12").min_memory_mib,
            256
        );
        assert_eq!(
            requirements(OsFamily::Linux, "slipway-test", "1").min_memory_mib,
            64
        );
    }
}
