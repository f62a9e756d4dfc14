//! A plugin on disk: a directory with `plugin.toml` and the component it names.

use std::collections::BTreeMap;
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
    /// A plugins directory could not be listed.
    #[error("cannot list plugins in {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Two plugin directories hold plugins of the same name.
    #[error("two plugins are named {name}: in {first} and {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
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

/// Finds the plugins in `dir`: every subdirectory with a `plugin.toml`, by the name its manifest
/// gives. Only manifests are read; components are read when a plugin is wanted.
pub fn discover(dir: &Path) -> Result<BTreeMap<String, PathBuf>, PackageError> {
    let list_error = |source| PackageError::List {
        path: dir.to_owned(),
        source,
    };
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(list_error)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("plugin.toml").is_file())
        .collect();
    entries.sort();
    for path in entries {
        let manifest = Manifest::from_path(&path.join("plugin.toml"))?;
        if let Some(first) = found.get(&manifest.name) {
            return Err(PackageError::Duplicate {
                name: manifest.name,
                first: first.clone(),
                second: path,
            });
        }
        found.insert(manifest.name, path);
    }
    Ok(found)
}
