//! Slipway's WebAssembly plugin runtime.
//!
//! Site- and vendor-specific policy runs as WebAssembly components that follow the
//! `slipway:plugin` WIT contract (`wit/` at the repository's top): placement, validation, identity
//! and drivers plugins. This crate loads them (manifest, compile or cached compilation, contract
//! check, link, one eager call), and calls them in a sandbox:
//!
//! - one engine; a fresh store per call, so no state leaks between requests;
//! - a wall-clock deadline per call (epoch interruption), a memory cap and table/instance caps,
//!   each failing that call alone with an error naming the plugin and the limit;
//! - WASI deny-by-default: no environment or network; placement and validation plugins get no
//!   files and a frozen clock; identity and drivers plugins get exactly one directory, the guest
//!   tree, preopened as `/` (cap-std keeps `..` and symlinks in), read-only while inspecting;
//! - plugin stdout, stderr and log lines go to `tracing`, labelled with the plugin's name.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use slipway_runtime::{PluginPackage, Runtime, RuntimeConfig};
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let package = PluginPackage::read(std::path::Path::new("plugins/capacity-filter"))?;
//! let plugin = runtime.load(package.manifest, &package.component)?;
//! # Ok(()) }
//! ```

pub mod cache;
pub mod contract;
pub mod drivers;
pub mod error;
pub mod identity;
pub mod manifest;
mod output;
pub mod package;
pub mod placement;
mod runtime;
mod state;
pub mod validation;

pub use contract::v0_1::types;
pub use error::PluginError;
pub use manifest::{Limits, Manifest, PluginKind};
pub use package::PluginPackage;
pub use runtime::{Plugin, Runtime, RuntimeConfig};
