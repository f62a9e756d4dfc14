//! A test harness for placement plugins: runs the *compiled* plugin in Slipway's real runtime —
//! the same sandbox, limits and marshalling as in production — against JSON fixtures.
//!
//! ```ignore
//! // tests/fixtures.rs of a plugin crate, with slipway-plugin-sdk's `harness` feature in
//! // [dev-dependencies]:
//! let harness = Harness::build_crate(Path::new(env!("CARGO_MANIFEST_DIR")))?;
//! harness.check_dir(Path::new("tests/fixtures"))?;
//! ```
//!
//! A fixture is one JSON document:
//!
//! ```json
//! {
//!   "description": "what this case shows",
//!   "config": { "max-per-rack": 1 },
//!   "request": { "vcpus": 2, "memory_mib": 2048, "arch": "x86_64" },
//!   "hosts": [ { "id": "a", "arch": "x86_64", "vcpus_total": 8, "memory_total_mib": 16384,
//!                "disk_total_mib": 100000, "labels": { "rack": "r1" } } ],
//!   "expect": { "rejected": { "b": "missing label" }, "chosen": "a", "ranking": ["a", "c"] }
//! }
//! ```
//!
//! `config` is merged over the manifest's `[config]`. In `expect`, `rejected` lists exactly the
//! hosts the plugin's filter rejects, with the message of the reason; `ranking` is the order of
//! the surviving hosts by score, best first (a prefix is enough); `chosen` is the best one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use slipway_core::{HostSnapshot, PlacementRequest};
use slipway_runtime::placement::{FleetBuilder, PlacementPlugin};
use slipway_runtime::{Manifest, PluginKind, Runtime, RuntimeConfig};

/// One test case for a placement plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    pub request: PlacementRequest,
    pub hosts: Vec<HostSnapshot>,
    #[serde(default)]
    pub expect: Expect,
}

/// What a fixture expects of the plugin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Exactly these hosts are rejected, each with this reason message.
    pub rejected: Option<BTreeMap<String, String>>,
    /// The best host by score among the survivors.
    pub chosen: Option<String>,
    /// The survivors by score, best first; a prefix of the full order.
    pub ranking: Option<Vec<String>>,
}

/// What the plugin did with a fixture.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Rejected host id → reason message.
    pub rejected: BTreeMap<String, String>,
    /// Surviving host ids by score, best first (fleet order when the plugin does not score).
    pub ranking: Vec<String>,
}

/// A compiled placement plugin, loaded in the real runtime.
pub struct Harness {
    runtime: Runtime,
    manifest: Manifest,
    wasm: Vec<u8>,
}

impl Harness {
    /// Builds the plugin crate at `crate_dir` for wasm32-wasip2 (release) and loads it with the
    /// crate's `plugin.toml`. The build uses its own target directory beside the workspace's,
    /// since the outer `cargo test` holds the usual one.
    pub fn build_crate(crate_dir: &Path) -> anyhow::Result<Self> {
        let wasm = build(crate_dir)?;
        Self::load(&crate_dir.join("plugin.toml"), &wasm)
    }

    /// Loads an already built plugin.
    pub fn load(manifest: &Path, wasm: &Path) -> anyhow::Result<Self> {
        let manifest = Manifest::from_path(manifest)?;
        ensure!(
            manifest.kind == PluginKind::Placement,
            "the harness runs placement plugins; {} is a {} plugin",
            manifest.name,
            manifest.kind
        );
        let wasm = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
        let runtime = Runtime::new(RuntimeConfig {
            plugin_log_level: tracing::Level::DEBUG,
            ..RuntimeConfig::default()
        })?;
        let harness = Self {
            runtime,
            manifest,
            wasm,
        };
        harness.plugin(&serde_json::Map::new())?;
        Ok(harness)
    }

    /// The plugin, loaded with `overrides` merged over its manifest's configuration.
    pub fn plugin(
        &self,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<PlacementPlugin> {
        let mut manifest = self.manifest.clone();
        for (key, value) in overrides {
            manifest.config.insert(key.clone(), value.clone());
        }
        let plugin = self.runtime.load(manifest, &self.wasm)?;
        plugin
            .into_placement()
            .context("the component is not a placement plugin")
    }

    /// Runs a fixture given as JSON text, without checking its expectations.
    pub fn run_json(&self, fixture: &str) -> anyhow::Result<Outcome> {
        let fixture: Fixture = serde_json::from_str(fixture).context("parsing the fixture")?;
        self.run(&fixture)
    }

    /// Runs the plugin over a fixture: its filter over every host, then its score over the
    /// survivors.
    pub fn run(&self, fixture: &Fixture) -> anyhow::Result<Outcome> {
        let plugin = self.plugin(&fixture.config)?;
        let mut builder = FleetBuilder::from_hosts(&fixture.hosts);
        let request = builder.request(&fixture.request);
        let fleet = builder.finish();
        let mut candidates: Vec<u32> = (0..fixture.hosts.len() as u32).collect();
        let mut rejected = BTreeMap::new();
        if plugin.info().filters {
            let rejections = plugin.filter(&request, &fleet, &candidates)?;
            for r in &rejections {
                let message = plugin.info().reasons[&r.reason].message.clone();
                rejected.insert(fixture.hosts[r.host as usize].id.clone(), message);
            }
            slipway_runtime::placement::remove_rejected(
                &mut candidates,
                &rejections,
                fixture.hosts.len(),
            );
        }
        let mut order: Vec<(u32, f64)> = candidates.iter().map(|&c| (c, 0.0)).collect();
        if plugin.info().scores && !candidates.is_empty() {
            let scores = plugin.score(&request, &fleet, &candidates)?;
            for (entry, score) in order.iter_mut().zip(scores) {
                entry.1 = score;
            }
            // Best first; ties keep fleet order, as the server breaks them.
            order.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        let ranking = order
            .into_iter()
            .map(|(c, _)| fixture.hosts[c as usize].id.clone())
            .collect();
        Ok(Outcome { rejected, ranking })
    }

    /// Runs a fixture and checks its expectations; the error says what differed.
    pub fn check(&self, fixture: &Fixture) -> anyhow::Result<Outcome> {
        let outcome = self.run(fixture)?;
        let e = &fixture.expect;
        if let Some(rejected) = &e.rejected {
            ensure!(
                &outcome.rejected == rejected,
                "rejected hosts differ\n  expected: {rejected:?}\n  actual:   {:?}",
                outcome.rejected
            );
        }
        if let Some(chosen) = &e.chosen {
            ensure!(
                outcome.ranking.first() == Some(chosen),
                "expected {chosen} to be chosen; ranking was {:?}",
                outcome.ranking
            );
        }
        if let Some(ranking) = &e.ranking {
            ensure!(
                outcome.ranking.starts_with(ranking),
                "ranking differs\n  expected: {ranking:?}\n  actual:   {:?}",
                outcome.ranking
            );
        }
        Ok(outcome)
    }

    /// Checks every `*.json` fixture in `dir`, in name order; returns how many ran. The error
    /// names the fixture that failed.
    pub fn check_dir(&self, dir: &Path) -> anyhow::Result<usize> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for file in &files {
            let text = std::fs::read_to_string(file)?;
            let fixture: Fixture = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            self.check(&fixture)
                .with_context(|| format!("fixture {} ({})", file.display(), fixture.description))?;
        }
        Ok(files.len())
    }
}

/// Builds the crate at `crate_dir` for wasm32-wasip2 and returns the component's path.
fn build(crate_dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest_path = crate_dir.join("Cargo.toml");
    let metadata = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest_path)
        .output()
        .context("running cargo metadata")?;
    ensure!(
        metadata.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata names no target directory")?;
    let target_dir = Path::new(target_dir).join("slipway-plugin-harness");

    let output = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format",
            "json",
        ])
        .arg("--manifest-path")
        .arg(&manifest_path)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build for wasm32-wasip2")?;
    if !output.status.success() {
        bail!(
            "building {} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)",
            crate_dir.display()
        );
    }
    // The cdylib target of the package whose manifest this is, as cargo metadata names it.
    let manifest_path = manifest_path.canonicalize()?;
    let package_id = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["manifest_path"]
                .as_str()
                .is_some_and(|m| Path::new(m) == manifest_path)
        })
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .find(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .and_then(|t| t["name"].as_str().map(|n| n.replace('-', "_")))
        .with_context(|| format!("{} has no cdylib target", manifest_path.display()))?;
    let wanted = format!("{package_id}.wasm");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .find(|f| f.file_name().is_some_and(|n| n == wanted.as_str()))
        .with_context(|| format!("cargo built no {wanted}"))
}
