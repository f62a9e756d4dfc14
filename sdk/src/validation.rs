//! Validation plugins: site policy on requests.
//!
//! Implement [`Validation`] and invoke [`export_validation!`](crate::export_validation). Return
//! every finding at once; each names a field of the request and, where one exists, a value that
//! would satisfy the policy.

use serde::de::DeserializeOwned;

pub use crate::bindings::types::{App, Finding, Label, OsInfo, Severity, VmRequest};
pub use crate::bindings::validation::exports::slipway::plugin::validation::ValidationContext;

/// A validation plugin.
pub trait Validation: Sized {
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration; an error refuses the configuration. Called when
    /// the plugin is loaded (so a bad configuration fails then) and at the start of every call.
    fn new(config: Self::Config) -> Result<Self, String>;

    fn validate(
        &self,
        request: &VmRequest,
        context: &ValidationContext,
    ) -> Result<Vec<Finding>, String>;
}

/// A finding of severity `error`.
pub fn error(field: &str, message: impl Into<String>, suggestion: Option<String>) -> Finding {
    Finding {
        severity: Severity::Error,
        field: field.to_owned(),
        message: message.into(),
        suggestion,
    }
}

/// A finding of severity `warning`: reported, never blocking.
pub fn warning(field: &str, message: impl Into<String>, suggestion: Option<String>) -> Finding {
    Finding {
        severity: Severity::Warning,
        ..error(field, message, suggestion)
    }
}

#[doc(hidden)]
pub mod __glue {
    use super::*;

    fn plugin<P: Validation>() -> Result<P, String> {
        crate::log::install_panic_hook();
        P::new(crate::config::load()?)
    }

    pub fn validate<P: Validation>(
        request: VmRequest,
        context: ValidationContext,
    ) -> Result<Vec<Finding>, String> {
        plugin::<P>()?.validate(&request, &context)
    }

    pub fn check_config<P: Validation>() -> Result<(), String> {
        plugin::<P>().map(drop)
    }
}

/// Exports a [`Validation`] implementation as the component's `validation` interface.
#[macro_export]
macro_rules! export_validation {
    ($plugin:ty) => {
        const _: fn() = || {
            fn must_implement_validation<P: $crate::validation::Validation>() {}
            must_implement_validation::<$plugin>();
        };

        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        pub struct __SlipwayValidationExport;

        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::__private::validation::exports::slipway::plugin::validation as wit;
            impl wit::Guest for __SlipwayValidationExport {
                fn validate(
                    request: $crate::types::VmRequest,
                    context: wit::ValidationContext,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::types::Finding>,
                    ::std::string::String,
                > {
                    $crate::validation::__glue::validate::<$plugin>(request, context)
                }
                fn check_config() -> ::std::result::Result<(), ::std::string::String> {
                    $crate::validation::__glue::check_config::<$plugin>()
                }
            }
        };

        #[cfg(target_family = "wasm")]
        $crate::__private::validation::export_validation_world!(__SlipwayValidationExport);
    };
}
