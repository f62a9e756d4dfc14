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

/// A plugin directory, as `slipway serve --plugins` takes it, holding the four first-party
/// placement plugins (links to their built directories) and nothing else: under `dir/plugins`.
pub fn first_party_placement_plugins(dir: &std::path::Path) -> std::path::PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("creating the plugin directory");
    for guest in [CAPACITY_FILTER, LABEL_FILTER, BINPACK_SCORE, SPREAD_SCORE] {
        let built = std::path::Path::new(guest.dir);
        let name = built.file_name().expect("a plugin directory has a name");
        std::os::unix::fs::symlink(built, plugins.join(name)).expect("linking a plugin");
    }
    plugins
}
