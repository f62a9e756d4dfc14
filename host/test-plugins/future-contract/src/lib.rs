//! A placement plugin built for `slipway:plugin@0.2.0`, a contract this server does not speak.

wit_bindgen::generate!({ world: "placement-plugin", path: "wit" });

use exports::slipway::plugin::placement::{Guest, PluginInfo};

struct Future;

impl Guest for Future {
    fn describe() -> PluginInfo {
        PluginInfo {
            filters: true,
            scores: false,
        }
    }
}

// Only for WebAssembly: natively, `:` in export names breaks the linker's version script.
#[cfg(target_family = "wasm")]
export!(Future);
