//! A plugin on disk: a directory with `plugin.toml` and the component it names.

use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, ManifestError};

/// The most bytes a component file may have; larger is refused before it is read.
pub const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// A manifest and its component's bytes, read from a plugin directory.
#[derive(Debug, Clone)]
pub struct PluginPackage {
    pub manifest: Manifest,
    pub component: Vec<u8>,
    pub dir: PathBuf,
}

/// Why a plugin directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The component file named by the manifest could not be read.
    #[error("cannot read plugin component {path}")]
    Component {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The component file is larger than the runtime accepts.
    #[error("plugin component {path} is {size} bytes; at most {MAX_COMPONENT_BYTES} are accepted")]
    TooLarge { path: PathBuf, size: u64 },
}

impl PluginPackage {
    /// Reads `dir/plugin.toml` and the component it names (default `<name>.wasm`).
    pub fn read(dir: &Path) -> Result<Self, PackageError> {
        let manifest = Manifest::from_path(&dir.join("plugin.toml"))?;
        let path = dir.join(manifest.component_file());
        let component_error = |source| PackageError::Component {
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(&path).map_err(component_error)?.len();
        if size > MAX_COMPONENT_BYTES {
            return Err(PackageError::TooLarge { path, size });
        }
        let component = std::fs::read(&path).map_err(component_error)?;
        Ok(Self {
            manifest,
            component,
            dir: dir.to_owned(),
        })
    }
}
