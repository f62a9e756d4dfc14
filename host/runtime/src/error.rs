//! Errors from loading and calling plugins. Every variant names the plugin, so that an operator
//! reading a failed decision knows which plugin to look at.

use std::time::Duration;

use crate::manifest::ManifestError;

/// Why a plugin could not be loaded or a call to it failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The manifest is invalid.
    #[error("plugin {plugin}: {source}")]
    Manifest {
        plugin: String,
        #[source]
        source: ManifestError,
    },
    /// The file is not a valid WebAssembly component.
    #[error("plugin {plugin} is not a valid WebAssembly component: {detail}")]
    InvalidComponent { plugin: String, detail: String },
    /// The component does not follow the contract this server speaks.
    #[error("plugin {plugin} does not fit the contract: {detail}")]
    ContractMismatch { plugin: String, detail: String },
    /// The plugin trapped (a panic, an `unreachable`, an out-of-bounds access...).
    #[error("plugin {plugin} trapped: {message}")]
    Trap { plugin: String, message: String },
    /// The call ran past the plugin's deadline and was interrupted.
    #[error("plugin {plugin} exceeded its deadline of {} ms", deadline.as_millis())]
    Deadline { plugin: String, deadline: Duration },
    /// The plugin asked for more memory than its limit allows.
    #[error(
        "plugin {plugin} exceeded its memory limit of {} MiB (asked for {} MiB)",
        limit_bytes >> 20,
        requested_bytes.div_ceil(1 << 20)
    )]
    MemoryLimit {
        plugin: String,
        limit_bytes: usize,
        requested_bytes: usize,
    },
    /// The plugin exceeded a table or instance limit.
    #[error("plugin {plugin} exceeded its {what} limit of {limit}")]
    ResourceLimit {
        plugin: String,
        what: &'static str,
        limit: usize,
    },
    /// The plugin answered, but its answer breaks the contract (wrong length, unknown host...).
    #[error("plugin {plugin} returned an invalid result: {detail}")]
    InvalidResult { plugin: String, detail: String },
    /// The plugin itself reported that it could not do its job.
    #[error("plugin {plugin} failed: {message}")]
    Failed { plugin: String, message: String },
    /// The plugin could not be given what it needs (a preopened directory, a store).
    #[error("plugin {plugin} could not be set up: {detail}")]
    Setup { plugin: String, detail: String },
}

impl PluginError {
    /// The name of the plugin at fault.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Manifest { plugin, .. }
            | PluginError::InvalidComponent { plugin, .. }
            | PluginError::ContractMismatch { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::Deadline { plugin, .. }
            | PluginError::MemoryLimit { plugin, .. }
            | PluginError::ResourceLimit { plugin, .. }
            | PluginError::InvalidResult { plugin, .. }
            | PluginError::Failed { plugin, .. }
            | PluginError::Setup { plugin, .. } => plugin,
        }
    }
}
