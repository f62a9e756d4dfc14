//! Write Slipway plugins in Rust.
//!
//! A plugin is a WebAssembly component that follows one world of the `slipway:plugin` WIT package
//! (in the repository's `wit/`). This crate hides the generated bindings: you implement one trait
//! for your plugin kind and invoke one export macro.
//!
//! ```
//! use slipway_plugin_sdk::placement::*;
//!
//! #[derive(Default, serde::Deserialize)]
//! #[serde(default)]
//! struct Config { per_vm_penalty: f64 }
//!
//! /// Prefers hosts with little load and few VMs.
//! struct LeastLoaded(Config);
//!
//! impl Placement for LeastLoaded {
//!     type Config = Config;
//!     const SCORES: bool = true;
//!     const COLUMNS: FleetColumns = FleetColumns::LOAD.union(FleetColumns::VMS);
//!
//!     fn new(config: Config) -> Result<Self, String> { Ok(Self(config)) }
//!
//!     fn score(&self, _: &PlacementRequest, fleet: &Fleet, candidates: &[u32]) -> Result<Vec<f64>, String> {
//!         Ok(candidates.iter().map(|&h| {
//!             let h = h as usize;
//!             -f64::from(fleet.load_milli[h]) - self.0.per_vm_penalty * f64::from(fleet.vms[h])
//!         }).collect())
//!     }
//! }
//!
//! slipway_plugin_sdk::export_placement!(LeastLoaded);
//! ```
//!
//! - Logging: [`trace!`], [`debug!`], [`info!`], [`warn!`], [`error!`] write to the server's log,
//!   labelled with the plugin's name, and skip formatting lines the server would drop.
//! - A panic is forwarded to the server's log before the plugin traps, so the error a user sees
//!   says why.
//! - Configuration: the trait's `Config` type is deserialised from the manifest's `config` table
//!   (with the site's overrides) before every call.
//! - Testing: with the `harness` feature, [`harness`] runs your *compiled* plugin in the real
//!   runtime against JSON fixtures, from your own `cargo test`.
//!
//! The export macros only emit the component's exports when compiling for WebAssembly, so the same
//! crate can also be built natively (as an `rlib`) and its logic called directly — which is how
//! Slipway compares its plugins against native Rust.

// Lets the generated bindings name this crate by its public path, as plugin crates see it.
extern crate self as slipway_plugin_sdk;

#[doc(hidden)]
pub mod bindings;

pub mod config;
pub mod drivers;
pub mod identity;
pub mod log;
pub mod placement;
pub mod validation;

#[cfg(all(feature = "harness", not(target_family = "wasm")))]
pub mod harness;

/// The shared records of the contract: hardware, OS, apps, requests, findings, operations.
pub mod types {
    pub use crate::bindings::types::*;
}

/// The version of the `slipway:plugin` contract this SDK builds plugins for.
pub const CONTRACT_VERSION: &str = "0.1.0";

#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::*;
    pub use crate::log::install_panic_hook;
}
