//! Drivers plugins on the host side. Each call gets the guest tree as its only directory:
//! read-only for `inspect`, read-write for `substitute`.

use std::path::Path;
use std::sync::Arc;

use crate::contract::v0_1::drivers::exports::slipway::plugin::drivers as wit;
use crate::contract::v0_1::drivers::{DriversPlugin as Bindings, DriversPluginPre};
use crate::contract::v0_1::types::{HardwareConfig, Operation, OsInfo};
use crate::error::PluginError;
use crate::manifest::Manifest;
use crate::runtime::PluginCore;
use crate::state::{CallState, Sandbox};

pub use wit::HardwareProfile;

/// A loaded drivers plugin.
#[derive(Clone)]
pub struct DriversPlugin {
    inner: Arc<(PluginCore, DriversPluginPre<CallState>)>,
}

impl DriversPlugin {
    pub(crate) fn new(
        core: PluginCore,
        pre: DriversPluginPre<CallState>,
    ) -> Result<Self, PluginError> {
        // The eager first call: a plugin that cannot start, or refuses its configuration, fails
        // to load.
        core.call(
            Sandbox::Closed,
            |store| pre.instantiate(store),
            |b: &Bindings, store| b.slipway_plugin_drivers().call_check_config(store),
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

    /// Asks the plugin what the tree at `tree` depends on in hardware.
    pub fn inspect(&self, tree: &Path, os: &OsInfo) -> Result<HardwareProfile, PluginError> {
        let (core, pre) = &*self.inner;
        core.call(
            Sandbox::Tree {
                dir: tree,
                writable: false,
            },
            |store| pre.instantiate(store),
            |b: &Bindings, store| b.slipway_plugin_drivers().call_inspect(store, os),
        )
    }

    /// Has the plugin make the tree at `tree` fit `target`.
    pub fn substitute(
        &self,
        tree: &Path,
        os: &OsInfo,
        found: &HardwareProfile,
        target: &HardwareConfig,
    ) -> Result<Vec<Operation>, PluginError> {
        let (core, pre) = &*self.inner;
        core.call(
            Sandbox::Tree {
                dir: tree,
                writable: true,
            },
            |store| pre.instantiate(store),
            |b: &Bindings, store| {
                b.slipway_plugin_drivers()
                    .call_substitute(store, os, found, target)
            },
        )
    }
}
