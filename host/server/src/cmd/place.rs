//! `slipway place`: the placement pipeline over a sample or given fleet, without a server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use slipway_core::{Arch, HostSnapshot, PlacementRequest, sample};
use slipway_runtime::placement::{FleetBuilder, Pipeline, Step};
use slipway_runtime::{PluginPackage, Runtime, RuntimeConfig};

use super::hosts::parse_label;

#[derive(Parser)]
pub struct PlaceArgs {
    /// A directory of plugin directories (each with plugin.toml and its component).
    #[arg(long, env = "SLIPWAY_PLUGINS")]
    plugins: PathBuf,
    /// Read the fleet from a JSON file (a list of hosts) instead of generating one.
    #[arg(long, conflicts_with_all = ["hosts", "seed"])]
    fleet: Option<PathBuf>,
    /// Hosts in the generated sample fleet.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Seed of the generated fleet.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    #[arg(long, default_value_t = 4096)]
    memory_mib: u64,
    #[arg(long, default_value_t = 20_480)]
    disk_mib: u64,
    #[arg(long, value_enum, default_value_t = ArchArg::X86_64)]
    arch: ArchArg,
    /// A label the host must carry, `key=value`; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// No two VMs of this group on one host.
    #[arg(long)]
    anti_affinity: Option<String>,
    /// Pack VMs onto few hosts, or spread them out.
    #[arg(long, value_enum, default_value_t = Strategy::Binpack)]
    strategy: Strategy,
    /// How many of the best hosts to list.
    #[arg(long, default_value_t = 5)]
    top: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum ArchArg {
    #[value(name = "x86_64")]
    X86_64,
    Aarch64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Strategy {
    Binpack,
    Spread,
}

fn load_step(
    runtime: &Runtime,
    found: &BTreeMap<String, PathBuf>,
    name: &str,
    weight: f64,
) -> anyhow::Result<Step> {
    let dir = found.get(name).with_context(|| {
        format!(
            "no plugin named {name} among {}",
            found.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let package = PluginPackage::read(dir)
        .with_context(|| format!("reading plugin {name} from {}", dir.display()))?;
    let plugin = runtime
        .load(package.manifest, &package.component)?
        .into_placement()
        .with_context(|| format!("{name} is not a placement plugin"))?;
    Ok(Step { plugin, weight })
}

pub fn place(args: PlaceArgs) -> anyhow::Result<ExitCode> {
    // Never beside the plugins: whoever may add a plugin must not be able to plant machine code.
    let cache = std::env::var_os("SLIPWAY_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("slipway")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/slipway")))
        .context("set SLIPWAY_CACHE_DIR (or HOME) for the compiled-plugin cache")?
        .join("compiled-plugins");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache),
        ..RuntimeConfig::default()
    })?;
    let started = Instant::now();
    let scorer = match args.strategy {
        Strategy::Binpack => "binpack-score",
        Strategy::Spread => "spread-score",
    };
    let found = slipway_runtime::package::discover(&args.plugins)?;
    let pipeline = Pipeline::new(vec![
        load_step(&runtime, &found, "capacity-filter", 1.0)?,
        load_step(&runtime, &found, "label-filter", 1.0)?,
        load_step(&runtime, &found, scorer, 1.0)?,
    ])?;
    let loaded = started.elapsed();

    let hosts: Vec<HostSnapshot> = match &args.fleet {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => sample::fleet(args.hosts, args.seed),
    };
    if hosts.is_empty() {
        bail!("the fleet has no hosts");
    }
    let request = PlacementRequest {
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        disk_mib: args.disk_mib,
        arch: match args.arch {
            ArchArg::X86_64 => Arch::X86_64,
            ArchArg::Aarch64 => Arch::Aarch64,
        },
        features: Vec::new(),
        required_labels: args.labels.into_iter().collect(),
        anti_affinity_group: args.anti_affinity,
        affinity_group: None,
    };

    let started = Instant::now();
    let mut builder = FleetBuilder::from_hosts(&hosts);
    let wire_request = builder.request(&request);
    let fleet = builder.finish();
    let built = started.elapsed();
    let started = Instant::now();
    let decision = pipeline.decide(&wire_request, &fleet)?;
    let decided = started.elapsed();

    println!(
        "plugins: {} (loaded in {:.1} ms)",
        pipeline
            .steps()
            .iter()
            .map(|s| s.plugin.name())
            .collect::<Vec<_>>()
            .join(" → "),
        loaded.as_secs_f64() * 1e3
    );
    println!("{}", decision.summary());
    let mut ranked: Vec<(u32, f64)> = decision
        .survivors
        .iter()
        .copied()
        .zip(decision.totals.iter().copied())
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (host, total) in ranked.iter().take(args.top) {
        let h = &hosts[*host as usize];
        println!(
            "  {:<12} score {total:.3}  vCPUs {}/{}  memory {}/{} MiB  {:?}",
            h.id,
            h.vcpus_allocated,
            h.vcpus_total,
            h.memory_allocated_mib,
            h.memory_total_mib,
            h.labels
        );
    }
    println!(
        "fleet built in {:.2} ms, decided in {:.2} ms (one cold decision; `cargo bench -p slipway-runtime` measures warm ones)",
        built.as_secs_f64() * 1e3,
        decided.as_secs_f64() * 1e3
    );
    match decision.chosen {
        Some(host) => {
            println!("chosen: {}", hosts[host as usize].id);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!("no host can take this VM");
            Ok(ExitCode::from(1))
        }
    }
}
