//! Identity plugins: recognise an operating system in a guest tree and strip the model VM's
//! identity from it.
//!
//! The guest tree is the plugin's whole file system: `std::fs` paths starting at `/` are inside
//! it, and nothing outside can be reached (`..`, absolute symlinks and symlinks pointing out are
//! refused by the host). Implement [`Identity`] and invoke
//! [`export_identity!`](crate::export_identity).

use serde::de::DeserializeOwned;

pub use crate::bindings::types::{Arch, InitSystem, Operation, OsInfo};

/// An identity plugin.
pub trait Identity: Sized {
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration; an error refuses the configuration. Called when
    /// the plugin is loaded (so a bad configuration fails then) and at the start of every call.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Which OS the tree holds, or `None` if this plugin does not recognise it.
    fn inspect(&self) -> Result<Option<OsInfo>, String>;

    /// Removes the model's identity; returns what was done, in order.
    fn strip(&self, os: &OsInfo) -> Result<Vec<Operation>, String>;
}

#[doc(hidden)]
pub mod __glue {
    use super::*;

    fn plugin<P: Identity>() -> Result<P, String> {
        crate::log::install_panic_hook();
        P::new(crate::config::load()?)
    }

    pub fn check_config<P: Identity>() -> Result<(), String> {
        plugin::<P>().map(drop)
    }

    pub fn inspect<P: Identity>() -> Result<Option<OsInfo>, String> {
        plugin::<P>()?.inspect()
    }

    pub fn strip<P: Identity>(os: OsInfo) -> Result<Vec<Operation>, String> {
        plugin::<P>()?.strip(&os)
    }
}

/// Exports an [`Identity`] implementation as the component's `identity` interface.
#[macro_export]
macro_rules! export_identity {
    ($plugin:ty) => {
        const _: fn() = || {
            fn must_implement_identity<P: $crate::identity::Identity>() {}
            must_implement_identity::<$plugin>();
        };

        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        pub struct __SlipwayIdentityExport;

        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::__private::identity::exports::slipway::plugin::identity as wit;
            impl wit::Guest for __SlipwayIdentityExport {
                fn check_config() -> ::std::result::Result<(), ::std::string::String> {
                    $crate::identity::__glue::check_config::<$plugin>()
                }
                fn inspect() -> ::std::result::Result<
                    ::std::option::Option<$crate::types::OsInfo>,
                    ::std::string::String,
                > {
                    $crate::identity::__glue::inspect::<$plugin>()
                }
                fn strip(
                    os: $crate::types::OsInfo,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::types::Operation>,
                    ::std::string::String,
                > {
                    $crate::identity::__glue::strip::<$plugin>(os)
                }
            }
        };

        #[cfg(target_family = "wasm")]
        $crate::__private::identity::export_identity_world!(__SlipwayIdentityExport);
    };
}
