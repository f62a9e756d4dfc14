//! The plugins a server has: the ones it loaded at start from `--plugins`, and the ones an admin
//! installed through the API since, kept in `<data-dir>/plugins-installed/<name>/` so that they
//! come back after a restart. An installed plugin of the same name as a loaded one replaces it.
//!
//! Loading compiles (or takes the compiled code from the cache) and calls the plugin once, so a
//! broken plugin is refused at install, never at the first decision that uses it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use slipway_runtime::manifest::{Manifest, PluginKind};
use slipway_runtime::{Plugin, PluginError, PluginPackage, Runtime};
use utoipa::ToSchema;

/// A plugin as the API lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoadedPlugin {
    pub name: String,
    pub version: String,
    /// `placement`, `validation`, `identity` or `drivers`.
    pub kind: String,
    /// The `slipway:plugin` contract it was built against.
    pub contract: String,
    pub description: Option<String>,
    /// `bundled` (loaded from the plugin directory at start) or `installed` (through the API).
    pub source: String,
    /// The sha256 of its component.
    pub sha256: String,
}

/// One plugin: what it is, its bytes (to load it again with a site's configuration), and the
/// loaded instance.
#[derive(Clone)]
pub struct Entry {
    pub manifest: Manifest,
    pub component: Arc<Vec<u8>>,
    pub plugin: Plugin,
    pub installed: bool,
    pub sha256: String,
}

impl Entry {
    pub fn listed(&self) -> LoadedPlugin {
        let m = &self.manifest;
        LoadedPlugin {
            name: m.name.clone(),
            version: m.version.clone(),
            kind: kind_name(m.kind).to_owned(),
            contract: m.contract.clone(),
            description: m.description.clone(),
            source: if self.installed {
                "installed"
            } else {
                "bundled"
            }
            .to_owned(),
            sha256: self.sha256.clone(),
        }
    }

    /// The plugin loaded again with `overrides` merged over its manifest's configuration.
    pub fn configured(
        &self,
        runtime: &Runtime,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Plugin, PluginError> {
        if overrides.is_empty() {
            return Ok(self.plugin.clone());
        }
        let mut manifest = self.manifest.clone();
        for (k, v) in overrides {
            manifest.config.insert(k.clone(), v.clone());
        }
        runtime.load(manifest, &self.component)
    }
}

pub fn kind_name(kind: PluginKind) -> &'static str {
    kind.world().trim_end_matches("-plugin")
}

/// Why a plugin could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("the manifest names plugin {manifest}, not {path}")]
    NameMismatch { path: String, manifest: String },
    #[error("plugin {0} is not installed (bundled plugins are replaced, not removed)")]
    NotInstalled(String),
    #[error("no plugin is named {0}")]
    NotFound(String),
    #[error("writing plugin {name} to {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Registry {
    runtime: Runtime,
    installed_dir: PathBuf,
    entries: RwLock<BTreeMap<String, Entry>>,
    /// Bundled plugins an installed one replaced, to return to when it is removed.
    bundled: RwLock<BTreeMap<String, Entry>>,
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

impl Registry {
    /// Loads the bundled plugins from `bundled_dir` (when it exists), then the installed ones.
    pub fn open(
        runtime: Runtime,
        bundled_dir: &Path,
        installed_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut entries = BTreeMap::new();
        let load_dir = |entries: &mut BTreeMap<String, Entry>,
                        dir: &Path,
                        installed: bool|
         -> anyhow::Result<()> {
            for (name, path) in slipway_runtime::package::discover(dir)? {
                let package = PluginPackage::read(&path)
                    .with_context(|| format!("reading plugin {name} from {}", path.display()))?;
                let entry = load(&runtime, package.manifest, package.component, installed)
                    .with_context(|| format!("loading plugin {name}"))?;
                tracing::info!(plugin = %name, version = %entry.manifest.version, installed, "plugin loaded");
                entries.insert(name, entry);
            }
            Ok(())
        };
        let mut bundled = BTreeMap::new();
        if bundled_dir.is_dir() {
            load_dir(&mut entries, bundled_dir, false)?;
            bundled = entries.clone();
        } else {
            tracing::warn!(dir = %bundled_dir.display(), "no plugin directory; starting without bundled plugins (scripts/run builds the first-party ones)");
        }
        if installed_dir.is_dir() {
            load_dir(&mut entries, &installed_dir, true)?;
        }
        Ok(Self {
            runtime,
            installed_dir,
            entries: RwLock::new(entries),
            bundled: RwLock::new(bundled),
        })
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn list(&self) -> Vec<LoadedPlugin> {
        read(&self.entries).values().map(Entry::listed).collect()
    }

    pub fn get(&self, name: &str) -> Option<Entry> {
        read(&self.entries).get(name).cloned()
    }

    pub fn all(&self) -> Vec<Entry> {
        read(&self.entries).values().cloned().collect()
    }

    /// Loads a plugin from its manifest and component; `accept` may refuse it (the placement
    /// pipeline checks that it still builds) before anything is written or replaced. Returns
    /// the entry it replaced, if any.
    pub fn install(
        &self,
        name: &str,
        manifest_toml: &str,
        component: Vec<u8>,
        accept: impl FnOnce(&Entry) -> Result<(), RegistryError>,
    ) -> Result<(Entry, Option<Entry>), RegistryError> {
        let manifest = Manifest::from_toml(manifest_toml).map_err(|source| {
            RegistryError::Plugin(PluginError::Manifest {
                plugin: name.to_owned(),
                source,
            })
        })?;
        if manifest.name != name {
            return Err(RegistryError::NameMismatch {
                path: name.to_owned(),
                manifest: manifest.name,
            });
        }
        let entry = load(&self.runtime, manifest, component, true)?;
        accept(&entry)?;
        self.write_installed(&entry, manifest_toml)?;
        let previous = write(&self.entries).insert(name.to_owned(), entry.clone());
        Ok((entry, previous))
    }

    /// Removes an installed plugin; a bundled plugin it replaced comes back. `accept` sees what
    /// the registry would then hold under that name.
    pub fn remove(
        &self,
        name: &str,
        accept: impl FnOnce(Option<&Entry>) -> Result<(), RegistryError>,
    ) -> Result<Entry, RegistryError> {
        let current = self
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        if !current.installed {
            return Err(RegistryError::NotInstalled(name.to_owned()));
        }
        let fallback = read(&self.bundled).get(name).cloned();
        accept(fallback.as_ref())?;
        let dir = self.installed_dir.join(name);
        std::fs::remove_dir_all(&dir).map_err(|source| RegistryError::Io {
            name: name.to_owned(),
            path: dir,
            source,
        })?;
        let mut entries = write(&self.entries);
        match fallback {
            Some(bundled) => entries.insert(name.to_owned(), bundled),
            None => entries.remove(name),
        };
        Ok(current)
    }

    /// Writes `<installed>/<name>/` whole or not at all: a new directory beside it, renamed
    /// over the old one.
    fn write_installed(&self, entry: &Entry, manifest_toml: &str) -> Result<(), RegistryError> {
        let name = &entry.manifest.name;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RegistryError::Io {
                name: name.clone(),
                path,
                source,
            }
        };
        std::fs::create_dir_all(&self.installed_dir).map_err(io(&self.installed_dir))?;
        let staging = tempfile::Builder::new()
            .prefix(".install-")
            .tempdir_in(&self.installed_dir)
            .map_err(io(&self.installed_dir))?;
        std::fs::write(staging.path().join("plugin.toml"), manifest_toml)
            .map_err(io(staging.path()))?;
        std::fs::write(
            staging.path().join(entry.manifest.component_file()),
            entry.component.as_slice(),
        )
        .map_err(io(staging.path()))?;
        let target = self.installed_dir.join(name);
        let old = self.installed_dir.join(format!(".old-{name}"));
        let _ = std::fs::remove_dir_all(&old);
        if target.exists() {
            std::fs::rename(&target, &old).map_err(io(&target))?;
        }
        let staged = staging.keep();
        std::fs::rename(&staged, &target).map_err(io(&target))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

fn load(
    runtime: &Runtime,
    manifest: Manifest,
    component: Vec<u8>,
    installed: bool,
) -> Result<Entry, PluginError> {
    let plugin = runtime.load(manifest.clone(), &component)?;
    Ok(Entry {
        sha256: sha256(&component),
        manifest,
        component: Arc::new(component),
        plugin,
        installed,
    })
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
