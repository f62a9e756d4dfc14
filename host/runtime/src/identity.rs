//! Identity plugins on the host side. Each call gets the guest tree as its only directory:
//! read-only for `inspect`, read-write for `strip`.

use std::path::Path;
use std::sync::Arc;

use crate::contract::v0_1::identity::{IdentityPlugin as Bindings, IdentityPluginPre};
use crate::contract::v0_1::types::{Operation, OsInfo};
use crate::error::PluginError;
use crate::manifest::Manifest;
use crate::runtime::PluginCore;
use crate::state::{CallState, Sandbox};

/// A loaded identity plugin.
#[derive(Clone)]
pub struct IdentityPlugin {
    inner: Arc<(PluginCore, IdentityPluginPre<CallState>)>,
}

impl IdentityPlugin {
    pub(crate) fn new(
        core: PluginCore,
        pre: IdentityPluginPre<CallState>,
    ) -> Result<Self, PluginError> {
        // The eager first call: a plugin that cannot start, or refuses its configuration, fails
        // to load.
        core.call(
            Sandbox::Closed,
            |store| pre.instantiate(store),
            |b: &Bindings, store| b.slipway_plugin_identity().call_check_config(store),
        )?;
        Ok(Self {
            inner: Arc::new((core, pre)),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.0.name
    }

    pub fn manifest(&self) -> &Manifest {
        &self.inner.0.manifest
    }

    /// Asks the plugin which OS the tree at `tree` holds.
    pub fn inspect(&self, tree: &Path) -> Result<Option<OsInfo>, PluginError> {
        let (core, pre) = &*self.inner;
        core.call(
            Sandbox::Tree {
                dir: tree,
                writable: false,
            },
            |store| pre.instantiate(store),
            |b: &Bindings, store| b.slipway_plugin_identity().call_inspect(store),
        )
    }

    /// Has the plugin strip the model's identity from the tree at `tree`.
    pub fn strip(&self, tree: &Path, os: &OsInfo) -> Result<Vec<Operation>, PluginError> {
        let (core, pre) = &*self.inner;
        core.call(
            Sandbox::Tree {
                dir: tree,
                writable: true,
            },
            |store| pre.instantiate(store),
            |b: &Bindings, store| b.slipway_plugin_identity().call_strip(store, os),
        )
    }
}
