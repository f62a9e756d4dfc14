//! The host side of the `slipway:plugin` contract: bindings for each world of each supported
//! version, and the check that tells a plugin author which version a plugin was built for.
//!
//! # How the contract evolves
//!
//! `wit/` at the top of the repository holds the newest version of the package. Within a version
//! series that semver calls compatible (0.1.x with 0.1.y; 1.x with 1.y), changes are additive and
//! a plugin built for an older release keeps working: wasmtime links imports and exports across
//! compatible versions. A breaking change starts a new series: the old package is copied, frozen,
//! into `wit/frozen/<version>/`, and this module gains one bindings module per frozen version,
//! whose types are converted into the newest with `From` — so the rest of Slipway only ever sees
//! the newest types. A plugin built for a series this server does not carry is refused at load
//! with "built for slipway:plugin@0.3.0; this server supports 0.1" rather than a linker error.

use semver::Version;

/// The versions of the contract this build of Slipway can load plugins for, newest first.
pub const SUPPORTED: &[&str] = &["0.1.0"];

/// The WIT package name, without version.
pub const PACKAGE: &str = "slipway:plugin";

pub mod v0_1 {
    //! Bindings for `slipway:plugin@0.1.x`.

    // `types` and `host` are generated once, owning, with the validation world; the others
    // reuse them. The placement world borrows its parameters instead: a decision lends each
    // plugin slices of one shared columnar fleet, and copying them into owned vectors per plugin
    // would cost as much again as the call.
    pub mod validation {
        wasmtime::component::bindgen!({
            world: "validation-plugin",
            path: "../../wit",
            additional_derives: [PartialEq],
        });
    }

    pub mod placement {
        wasmtime::component::bindgen!({
            world: "placement-plugin",
            path: "../../wit",
            ownership: Borrowing { duplicate_if_necessary: true },
            additional_derives: [PartialEq],
            with: {
                "slipway:plugin/types": super::validation::slipway::plugin::types,
                "slipway:plugin/host": super::validation::slipway::plugin::host,
            },
        });
    }

    pub mod identity {
        wasmtime::component::bindgen!({
            world: "identity-plugin",
            path: "../../wit",
            additional_derives: [PartialEq],
            with: {
                "slipway:plugin/types": super::validation::slipway::plugin::types,
                "slipway:plugin/host": super::validation::slipway::plugin::host,
            },
        });
    }

    pub mod drivers {
        wasmtime::component::bindgen!({
            world: "drivers-plugin",
            path: "../../wit",
            additional_derives: [PartialEq],
            with: {
                "slipway:plugin/types": super::validation::slipway::plugin::types,
                "slipway:plugin/host": super::validation::slipway::plugin::host,
            },
        });
    }

    pub use validation::slipway::plugin::{host, types};
}

pub use v0_1::types;

/// Whether a plugin built for `built_for` can be loaded by this server.
pub fn is_supported(built_for: &Version) -> bool {
    SUPPORTED.iter().any(|s| {
        let ours = Version::parse(s).expect("SUPPORTED holds valid versions");
        compatible(&ours, built_for)
    })
}

/// Semver compatibility as Cargo and wasmtime read it: same major for 1.x and later, same minor
/// for 0.x, and the plugin's version no newer than ours (it may use what we do not have).
fn compatible(ours: &Version, theirs: &Version) -> bool {
    let series = if ours.major == 0 {
        ours.minor == theirs.minor && theirs.major == 0
    } else {
        ours.major == theirs.major
    };
    series && theirs <= ours
}

/// "0.1" for the 0.1 series: how versions are named to users.
pub fn supported_series() -> String {
    SUPPORTED
        .iter()
        .map(|s| {
            let v = Version::parse(s).expect("SUPPORTED holds valid versions");
            if v.major == 0 {
                format!("0.{}", v.minor)
            } else {
                v.major.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds the contract version a component was built for from the names of its exports and
/// imports (`slipway:plugin/placement@0.1.0`). `None` when it names no `slipway:plugin` interface.
pub fn version_in_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Version> {
    names.into_iter().find_map(|name| {
        let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
        let (_, version) = rest.split_once('@')?;
        Version::parse(version).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_minor_of_zero_series_is_compatible_older_or_equal_only() {
        let ours = Version::new(0, 1, 2);
        assert!(compatible(&ours, &Version::new(0, 1, 0)));
        assert!(compatible(&ours, &Version::new(0, 1, 2)));
        assert!(!compatible(&ours, &Version::new(0, 1, 3)));
        assert!(!compatible(&ours, &Version::new(0, 2, 0)));
        assert!(!compatible(&ours, &Version::new(1, 1, 0)));
    }

    #[test]
    fn version_is_read_from_interface_names() {
        let names = [
            "wasi:cli/environment@0.2.6",
            "slipway:plugin/placement@0.2.0",
        ];
        assert_eq!(version_in_names(names), Some(Version::new(0, 2, 0)));
        assert_eq!(version_in_names(["wasi:io/streams@0.2.0"]), None);
    }
}
