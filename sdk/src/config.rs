//! The plugin's configuration: the manifest's `config` table with the site's overrides, as JSON.

use serde::de::DeserializeOwned;

/// Deserialises this plugin's configuration into `T`. Missing fields take `T`'s serde defaults;
/// the error names the field at fault and is returned to the server as the call's failure.
pub fn load<T: DeserializeOwned>() -> Result<T, String> {
    parse(&raw())
}

/// Parses a configuration document. Separate from [`load`] so that native callers (tests,
/// benchmarks) can configure a plugin without a host.
pub fn parse<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    let mut document = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut document).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("invalid plugin configuration: {inner}")
        } else {
            format!("invalid plugin configuration: `{path}`: {inner}")
        }
    })
}

/// The configuration document as the host passed it.
pub fn raw() -> String {
    #[cfg(target_family = "wasm")]
    {
        crate::bindings::host::config()
    }
    #[cfg(not(target_family = "wasm"))]
    {
        "{}".to_owned()
    }
}
