//! Drivers plugins: read a converted machine's hardware dependence from its tree and substitute
//! files that fit the target virtual hardware.
//!
//! Like identity plugins, the guest tree is the plugin's whole file system. Implement [`Drivers`]
//! and invoke [`export_drivers!`](crate::export_drivers).

use serde::de::DeserializeOwned;

pub use crate::bindings::drivers::exports::slipway::plugin::drivers::HardwareProfile;
pub use crate::bindings::types::{HardwareConfig, Operation, OsInfo};

/// A drivers plugin.
pub trait Drivers: Sized {
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration; an error refuses the configuration. Called when
    /// the plugin is loaded (so a bad configuration fails then) and at the start of every call.
    fn new(config: Self::Config) -> Result<Self, String>;

    fn inspect(&self, os: &OsInfo) -> Result<HardwareProfile, String>;

    fn substitute(
        &self,
        os: &OsInfo,
        found: &HardwareProfile,
        target: &HardwareConfig,
    ) -> Result<Vec<Operation>, String>;
}

#[doc(hidden)]
pub mod __glue {
    use super::*;

    fn plugin<P: Drivers>() -> Result<P, String> {
        crate::log::install_panic_hook();
        P::new(crate::config::load()?)
    }

    pub fn check_config<P: Drivers>() -> Result<(), String> {
        plugin::<P>().map(drop)
    }

    pub fn inspect<P: Drivers>(os: OsInfo) -> Result<HardwareProfile, String> {
        plugin::<P>()?.inspect(&os)
    }

    pub fn substitute<P: Drivers>(
        os: OsInfo,
        found: HardwareProfile,
        target: HardwareConfig,
    ) -> Result<Vec<Operation>, String> {
        plugin::<P>()?.substitute(&os, &found, &target)
    }
}

/// Exports a [`Drivers`] implementation as the component's `drivers` interface.
#[macro_export]
macro_rules! export_drivers {
    ($plugin:ty) => {
        const _: fn() = || {
            fn must_implement_drivers<P: $crate::drivers::Drivers>() {}
            must_implement_drivers::<$plugin>();
        };

        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        pub struct __SlipwayDriversExport;

        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::__private::drivers::exports::slipway::plugin::drivers as wit;
            impl wit::Guest for __SlipwayDriversExport {
                fn check_config() -> ::std::result::Result<(), ::std::string::String> {
                    $crate::drivers::__glue::check_config::<$plugin>()
                }
                fn inspect(
                    os: $crate::types::OsInfo,
                ) -> ::std::result::Result<wit::HardwareProfile, ::std::string::String> {
                    $crate::drivers::__glue::inspect::<$plugin>(os)
                }
                fn substitute(
                    os: $crate::types::OsInfo,
                    found: wit::HardwareProfile,
                    target: $crate::types::HardwareConfig,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::types::Operation>,
                    ::std::string::String,
                > {
                    $crate::drivers::__glue::substitute::<$plugin>(os, found, target)
                }
            }
        };

        #[cfg(target_family = "wasm")]
        $crate::__private::drivers::export_drivers_world!(__SlipwayDriversExport);
    };
}
