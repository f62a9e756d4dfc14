//! Every plugin in the repository, built for wasm32-wasip2 by this crate's build script, for tests
//! and benchmarks. Dev-only: nothing that ships depends on it, so `cargo build` of the server
//! never builds guests.

/// One built plugin.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    /// The cargo package.
    pub package: &'static str,
    /// A plugin directory: `plugin.toml` beside the component, as `PluginPackage::read` takes it.
    pub dir: &'static str,
    /// The component itself.
    pub wasm: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
