//! Validation plugins on the host side.

use std::sync::Arc;

use crate::contract::v0_1::types::{Finding, VmRequest};
use crate::contract::v0_1::validation::exports::slipway::plugin::validation as wit;
use crate::contract::v0_1::validation::{ValidationPlugin as Bindings, ValidationPluginPre};
use crate::error::PluginError;
use crate::manifest::Manifest;
use crate::runtime::PluginCore;
use crate::state::{CallState, Sandbox};

pub use wit::ValidationContext;

/// The most findings one call may return; more is a broken or hostile plugin.
pub const MAX_FINDINGS: usize = 1_000;

/// A loaded validation plugin.
#[derive(Clone)]
pub struct ValidationPlugin {
    inner: Arc<(PluginCore, ValidationPluginPre<CallState>)>,
}

impl ValidationPlugin {
    pub(crate) fn new(
        core: PluginCore,
        pre: ValidationPluginPre<CallState>,
    ) -> Result<Self, PluginError> {
        // The eager first call: a plugin that cannot start, or refuses its configuration, fails
        // to load.
        core.call(
            Sandbox::Closed,
            |store| pre.instantiate(store),
            |b: &Bindings, store| b.slipway_plugin_validation().call_check_config(store),
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

    /// Runs the plugin's validation. Findings are bounded in number and size.
    pub fn validate(
        &self,
        request: &VmRequest,
        context: &ValidationContext,
    ) -> Result<Vec<Finding>, PluginError> {
        let (core, pre) = &*self.inner;
        let findings = core.call(
            Sandbox::Closed,
            |store| pre.instantiate(store),
            |b: &Bindings, store| {
                b.slipway_plugin_validation()
                    .call_validate(store, request, context)
            },
        )?;
        if findings.len() > MAX_FINDINGS {
            return Err(PluginError::InvalidResult {
                plugin: self.name().to_owned(),
                detail: format!(
                    "{} findings; at most {MAX_FINDINGS} are accepted",
                    findings.len()
                ),
            });
        }
        Ok(findings)
    }
}
