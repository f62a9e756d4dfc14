//! The generated bindings, one module per world. The `types` and `host` interfaces are generated
//! once (with the placement world) and shared by the others, so a `types::Arch` is the same type
//! in every world.

pub mod placement {
    wit_bindgen::generate!({
        world: "placement-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_placement_world",
        default_bindings_module: "::slipway_plugin_sdk::__private::placement",
        runtime_path: "::slipway_plugin_sdk::__private::wit_bindgen::rt",
        bitflags_path: "::slipway_plugin_sdk::__private::wit_bindgen::rt::bitflags",
        additional_derives: [PartialEq, Clone],
    });
}

pub mod validation {
    wit_bindgen::generate!({
        world: "validation-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_validation_world",
        default_bindings_module: "::slipway_plugin_sdk::__private::validation",
        runtime_path: "::slipway_plugin_sdk::__private::wit_bindgen::rt",
        bitflags_path: "::slipway_plugin_sdk::__private::wit_bindgen::rt::bitflags",
        with: {
            "slipway:plugin/types@0.1.0": crate::bindings::placement::slipway::plugin::types,
            "slipway:plugin/host@0.1.0": crate::bindings::placement::slipway::plugin::host,
        },
        additional_derives: [PartialEq, Clone],
    });
}

pub mod identity {
    wit_bindgen::generate!({
        world: "identity-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_identity_world",
        default_bindings_module: "::slipway_plugin_sdk::__private::identity",
        runtime_path: "::slipway_plugin_sdk::__private::wit_bindgen::rt",
        bitflags_path: "::slipway_plugin_sdk::__private::wit_bindgen::rt::bitflags",
        with: {
            "slipway:plugin/types@0.1.0": crate::bindings::placement::slipway::plugin::types,
            "slipway:plugin/host@0.1.0": crate::bindings::placement::slipway::plugin::host,
        },
        additional_derives: [PartialEq, Clone],
    });
}

pub mod drivers {
    wit_bindgen::generate!({
        world: "drivers-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_drivers_world",
        default_bindings_module: "::slipway_plugin_sdk::__private::drivers",
        runtime_path: "::slipway_plugin_sdk::__private::wit_bindgen::rt",
        bitflags_path: "::slipway_plugin_sdk::__private::wit_bindgen::rt::bitflags",
        with: {
            "slipway:plugin/types@0.1.0": crate::bindings::placement::slipway::plugin::types,
            "slipway:plugin/host@0.1.0": crate::bindings::placement::slipway::plugin::host,
        },
        additional_derives: [PartialEq, Clone],
    });
}

pub use placement::slipway::plugin::{host, types};
pub use wit_bindgen;
