//! The runtime: one wasmtime engine for every plugin, the epoch ticker that enforces deadlines,
//! the compiled-component cache, and the per-call path every plugin kind shares.
//!
//! A plugin is compiled once (or loaded from the cache), linked once into an `InstancePre`
//! (type-checked against the contract), and instantiated eagerly once at load so that a broken
//! plugin fails then. Every call gets a fresh `Store`: its own WASI context, limits and epoch
//! deadline; a plugin that traps, loops or over-allocates fails that call alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
};

use crate::cache::{self, CompiledCache};
use crate::contract::v0_1::types::LogLevel;
use crate::contract::{self, v0_1};
use crate::error::PluginError;
use crate::manifest::{EffectiveLimits, Manifest, PluginKind};
use crate::state::{CallState, LimitHit, Sandbox};
use crate::{drivers, identity, placement, validation};

/// How often the epoch advances; deadlines are rounded up to whole ticks.
const TICK: Duration = Duration::from_millis(2);

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled plugins are cached. `None`: compile on every load.
    pub cache_dir: Option<PathBuf>,
    /// The most verbose level plugin log lines are recorded at (plugins are told, and skip
    /// formatting lines below it).
    pub plugin_log_level: tracing::Level,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            plugin_log_level: tracing::Level::INFO,
        }
    }
}

/// The plugin runtime. Cheap to clone; every clone shares the engine, the cache and the ticker.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    cache: Option<CompiledCache>,
    max_level: LogLevel,
    linkers: Linkers,
}

struct Linkers {
    placement: Linker<CallState>,
    validation: Linker<CallState>,
    identity: Linker<CallState>,
    drivers: Linker<CallState>,
}

/// A loaded plugin of any kind.
#[derive(Clone)]
pub enum Plugin {
    Placement(placement::PlacementPlugin),
    Validation(validation::ValidationPlugin),
    Identity(identity::IdentityPlugin),
    Drivers(drivers::DriversPlugin),
}

impl Plugin {
    pub fn manifest(&self) -> &Manifest {
        match self {
            Plugin::Placement(p) => p.manifest(),
            Plugin::Validation(p) => p.manifest(),
            Plugin::Identity(p) => p.manifest(),
            Plugin::Drivers(p) => p.manifest(),
        }
    }

    pub fn into_placement(self) -> Option<placement::PlacementPlugin> {
        match self {
            Plugin::Placement(p) => Some(p),
            _ => None,
        }
    }

    pub fn into_validation(self) -> Option<validation::ValidationPlugin> {
        match self {
            Plugin::Validation(p) => Some(p),
            _ => None,
        }
    }

    pub fn into_identity(self) -> Option<identity::IdentityPlugin> {
        match self {
            Plugin::Identity(p) => Some(p),
            _ => None,
        }
    }

    pub fn into_drivers(self) -> Option<drivers::DriversPlugin> {
        match self {
            Plugin::Drivers(p) => Some(p),
            _ => None,
        }
    }
}

impl Runtime {
    /// Creates the engine, starts the epoch ticker and opens the cache.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut wasm = Config::new();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool()))
            .epoch_interruption(true)
            .wasm_component_model(true)
            // Component-model async makes every call several times slower; no plugin needs it.
            .concurrency_support(false)
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(20));
        let engine = Engine::new(&wasm).map_err(anyhow::Error::from)?;
        let cache = match config.cache_dir {
            Some(dir) => Some(CompiledCache::new(dir, &engine)?),
            None => None,
        };
        let linkers = Linkers {
            placement: linker(&engine, |l| {
                v0_1::placement::PlacementPlugin::add_to_linker::<_, HasSelf<_>>(l, |s| s)
            })?,
            validation: linker(&engine, |l| {
                v0_1::validation::ValidationPlugin::add_to_linker::<_, HasSelf<_>>(l, |s| s)
            })?,
            identity: linker(&engine, |l| {
                v0_1::identity::IdentityPlugin::add_to_linker::<_, HasSelf<_>>(l, |s| s)
            })?,
            drivers: linker(&engine, |l| {
                v0_1::drivers::DriversPlugin::add_to_linker::<_, HasSelf<_>>(l, |s| s)
            })?,
        };
        start_ticker(&engine)?;
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                cache,
                max_level: log_level(config.plugin_log_level),
                linkers,
            }),
        })
    }

    /// Loads a plugin from its manifest and component bytes: checks the manifest, compiles (or
    /// takes from the cache), checks the contract, links, and calls it once.
    pub fn load(&self, manifest: Manifest, wasm: &[u8]) -> Result<Plugin, PluginError> {
        let name = manifest.name.clone();
        manifest.check().map_err(|source| PluginError::Manifest {
            plugin: name.clone(),
            source,
        })?;
        let limits =
            manifest
                .limits
                .effective(manifest.kind)
                .map_err(|source| PluginError::Manifest {
                    plugin: name.clone(),
                    source,
                })?;
        let declared = manifest
            .contract_version()
            .map_err(|source| PluginError::Manifest {
                plugin: name.clone(),
                source,
            })?;
        if !contract::is_supported(&declared) {
            return Err(PluginError::ContractMismatch {
                plugin: name,
                detail: format!(
                    "its manifest says it was built for {}@{declared}; this server supports {}",
                    contract::PACKAGE,
                    contract::supported_series()
                ),
            });
        }

        let component = self.compile(&name, wasm)?;
        self.check_contract(&name, manifest.kind, &component)?;

        let linker = match manifest.kind {
            PluginKind::Placement => &self.inner.linkers.placement,
            PluginKind::Validation => &self.inner.linkers.validation,
            PluginKind::Identity => &self.inner.linkers.identity,
            PluginKind::Drivers => &self.inner.linkers.drivers,
        };
        let pre =
            linker
                .instantiate_pre(&component)
                .map_err(|e| PluginError::ContractMismatch {
                    plugin: name.clone(),
                    detail: format!("{e:#}"),
                })?;
        let mismatch = |e: wasmtime::Error| PluginError::ContractMismatch {
            plugin: name.clone(),
            detail: format!("{e:#}"),
        };
        let shared = || PluginCore {
            name: Arc::from(name.as_str()),
            config: Arc::from(manifest.config_json()),
            manifest: manifest.clone(),
            limits,
            runtime: self.inner.clone(),
        };
        let plugin = match manifest.kind {
            PluginKind::Placement => Plugin::Placement(placement::PlacementPlugin::new(
                shared(),
                v0_1::placement::PlacementPluginPre::new(pre).map_err(mismatch)?,
            )?),
            PluginKind::Validation => Plugin::Validation(validation::ValidationPlugin::new(
                shared(),
                v0_1::validation::ValidationPluginPre::new(pre).map_err(mismatch)?,
            )?),
            PluginKind::Identity => Plugin::Identity(identity::IdentityPlugin::new(
                shared(),
                v0_1::identity::IdentityPluginPre::new(pre).map_err(mismatch)?,
            )?),
            PluginKind::Drivers => Plugin::Drivers(drivers::DriversPlugin::new(
                shared(),
                v0_1::drivers::DriversPluginPre::new(pre).map_err(mismatch)?,
            )?),
        };
        tracing::debug!(plugin = %name, kind = %manifest.kind, "plugin loaded");
        Ok(plugin)
    }

    fn compile(&self, name: &str, wasm: &[u8]) -> Result<Component, PluginError> {
        let digest = cache::digest(wasm);
        if let Some(cached) = self
            .inner
            .cache
            .as_ref()
            .and_then(|c| c.get(&self.inner.engine, &digest))
        {
            return Ok(cached);
        }
        let component = Component::new(&self.inner.engine, wasm).map_err(|e| {
            PluginError::InvalidComponent {
                plugin: name.to_owned(),
                detail: format!("{e:#}"),
            }
        })?;
        if let Some(cache) = &self.inner.cache {
            cache.put(&digest, &component);
        }
        Ok(component)
    }

    /// Refuses a component built for a contract series this server does not carry, with an error
    /// that says which one it was built for, before the linker gives a less helpful one.
    fn check_contract(
        &self,
        name: &str,
        kind: PluginKind,
        component: &Component,
    ) -> Result<(), PluginError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
        let names = exports.iter().chain(&imports).map(String::as_str);
        match contract::version_in_names(names) {
            Some(found) if !contract::is_supported(&found) => Err(PluginError::ContractMismatch {
                plugin: name.to_owned(),
                detail: format!(
                    "it was built for {}@{found}; this server supports {}",
                    contract::PACKAGE,
                    contract::supported_series()
                ),
            }),
            None => Err(PluginError::ContractMismatch {
                plugin: name.to_owned(),
                detail: format!(
                    "it uses no {} interface; a {kind} plugin exports `{}/{}`",
                    contract::PACKAGE,
                    contract::PACKAGE,
                    kind.interface()
                ),
            }),
            Some(_) => {
                let wanted = format!("{}/{}@", contract::PACKAGE, kind.interface());
                if exports.iter().any(|e| e.starts_with(&wanted)) {
                    Ok(())
                } else {
                    Err(PluginError::ContractMismatch {
                        plugin: name.to_owned(),
                        detail: format!(
                            "its manifest says kind `{kind}`, but it does not export `{}/{}` (it exports: {})",
                            contract::PACKAGE,
                            kind.interface(),
                            exports.join(", ")
                        ),
                    })
                }
            }
        }
    }
}

/// Plugin calls that may run at once; a call beyond it fails with a setup error, not a wait.
/// (A component with many core instances uses several slots of the core-instance pool, so a
/// pathological one lowers this.)
pub const MAX_CONCURRENT_CALLS: u32 = 256;

/// The pooling allocator: instance slots are reserved once and reused, and up to
/// `linear_memory_keep_resident` of each memory stays mapped between calls. A fresh store per
/// call then costs no mmap and, above all, no page faults when a call copies a 10,000-host fleet
/// into the plugin — which otherwise dominates the call.
fn pool() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_CONCURRENT_CALLS)
        .total_core_instances(MAX_CONCURRENT_CALLS * 8)
        .total_memories(MAX_CONCURRENT_CALLS * 2)
        .total_tables(MAX_CONCURRENT_CALLS * 4)
        .max_core_instances_per_component(crate::manifest::MAX_INSTANCES)
        .max_memories_per_component(2)
        .max_tables_per_component(4)
        .max_memory_size(crate::manifest::MAX_MEMORY_MIB as usize * 1024 * 1024)
        .table_elements(crate::manifest::MAX_TABLE_ELEMENTS as usize)
        // Covers a 10,000-host placement call; bounds the memory kept resident by idle slots
        // to 4 MiB × the slots actually used.
        .linear_memory_keep_resident(4 * 1024 * 1024)
        .table_keep_resident(64 * 1024)
        .pagemap_scan(Enabled::Auto);
    pool
}

fn linker(
    engine: &Engine,
    add_world: impl FnOnce(&mut Linker<CallState>) -> wasmtime::Result<()>,
) -> anyhow::Result<Linker<CallState>> {
    let mut linker = Linker::new(engine);
    // WASI is linked because Rust's standard library imports it; what it can reach is decided
    // per call by the store's WasiCtx, which grants nothing unless the kind needs a tree.
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
    add_world(&mut linker).map_err(anyhow::Error::from)?;
    Ok(linker)
}

/// Advances the engine's epoch every tick until the engine is dropped.
fn start_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    thread::Builder::new()
        .name("slipway-plugin-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(TICK);
            }
        })?;
    Ok(())
}

fn log_level(level: tracing::Level) -> LogLevel {
    match level {
        tracing::Level::TRACE => LogLevel::Trace,
        tracing::Level::DEBUG => LogLevel::Debug,
        tracing::Level::INFO => LogLevel::Info,
        tracing::Level::WARN => LogLevel::Warn,
        tracing::Level::ERROR => LogLevel::Error,
    }
}

/// What every plugin handle carries, whatever its kind.
pub(crate) struct PluginCore {
    pub(crate) name: Arc<str>,
    pub(crate) config: Arc<str>,
    pub(crate) manifest: Manifest,
    pub(crate) limits: EffectiveLimits,
    pub(crate) runtime: Arc<RuntimeInner>,
}

impl PluginCore {
    /// Runs one call in a fresh store: sets limits and the deadline, instantiates, calls `f`,
    /// moves the plugin's output into the log, and turns any failure into an error that names
    /// the plugin and its cause.
    pub(crate) fn call<B, R>(
        &self,
        sandbox: Sandbox<'_>,
        instantiate: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<B>,
        f: impl FnOnce(&B, &mut Store<CallState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, PluginError> {
        let state = CallState::new(
            self.name.clone(),
            self.config.clone(),
            self.runtime.max_level,
            &self.limits,
            sandbox,
        )
        .map_err(|e| PluginError::Setup {
            plugin: self.name.to_string(),
            detail: format!("{e:#}"),
        })?;
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.limits.result_bytes);
        let ticks = self.limits.deadline.as_nanos().div_ceil(TICK.as_nanos()) as u64;
        // One extra tick: the deadline counts from the next tick, never shorter than asked.
        store.set_epoch_deadline(ticks + 1);
        store.epoch_deadline_trap();

        let bindings = match instantiate(&mut store) {
            Ok(bindings) => bindings,
            Err(error) => {
                store.data_mut().flush_output();
                return Err(self.classify(&store, error, Phase::Instantiate));
            }
        };
        let outcome = f(&bindings, &mut store);
        store.data_mut().flush_output();
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(PluginError::Failed {
                plugin: self.name.to_string(),
                message: bounded(message),
            }),
            Err(error) => Err(self.classify(&store, error, Phase::Call)),
        }
    }

    fn classify(
        &self,
        store: &Store<CallState>,
        error: wasmtime::Error,
        phase: Phase,
    ) -> PluginError {
        let plugin = self.name.to_string();
        match store.data().limiter.hit {
            Some(LimitHit::Memory { requested }) => {
                return PluginError::MemoryLimit {
                    plugin,
                    limit_bytes: self.limits.memory_bytes,
                    requested_bytes: requested,
                };
            }
            Some(LimitHit::TableElements) => {
                return PluginError::ResourceLimit {
                    plugin,
                    what: "table elements",
                    limit: self.limits.table_elements,
                };
            }
            None => {}
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Deadline {
                plugin,
                deadline: self.limits.deadline,
            },
            Some(trap) => {
                let mut message = trap.to_string();
                if let Some(line) = &store.data().last_error_line {
                    message.push_str(": ");
                    message.push_str(line);
                }
                tracing::debug!(plugin = %self.name, "trap details: {error:?}");
                PluginError::Trap { plugin, message }
            }
            // Not a trap while instantiating: no slot left in the pool, or the like.
            None if phase == Phase::Instantiate => PluginError::Setup {
                plugin,
                detail: bounded(format!("{error:#}")),
            },
            // Not a trap during the call: lifting or lowering values failed, i.e. the plugin's
            // answer does not fit the contract (an invalid enum case, a string that is not UTF-8).
            None => PluginError::InvalidResult {
                plugin,
                detail: bounded(format!("{error:#}")),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Instantiate,
    Call,
}

/// Keeps plugin-supplied text from growing an error without bound.
pub(crate) fn bounded(mut text: String) -> String {
    const MAX: usize = 2048;
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
