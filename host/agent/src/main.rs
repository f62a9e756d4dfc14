//! `slipway-agent`: `run` joins a server and heartbeats until SIGINT or SIGTERM; `report`
//! prints what it would send, without a server.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use slipway_agent::config::{AgentArgs, Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "slipway-agent",
    version,
    about = "Runs on a host: joins a Slipway server and reports the machine to it",
    // `slipway-agent [options]` is `run`; options before a subcommand would be ignored.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: AgentArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Join the server (with a join token, the first time) and heartbeat until stopped; the
    /// default.
    Run(AgentArgs),
    /// Print the report a heartbeat would carry, as JSON: metrics and the hypervisor probe.
    Report(AgentArgs),
}

fn init_logs(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    match try_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Report(args)) => report(args),
        Some(Command::Run(args)) => run(args),
        None => run(cli.args),
    }
}

fn report(args: AgentArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args)?;
    slipway_agent::config::create_data_dir(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let probe = slipway_agent::probe::Probe::run(config.qemu.as_deref());
    let report = slipway_agent::metrics::read(&slipway_agent::metrics::Static {
        data_dir: config.data_dir.clone(),
        labels: config.labels.clone(),
        memory_reserved_mib: config.reserved_memory_mib,
        hypervisor: probe.hypervisor(),
        features: probe.features.clone(),
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args)?;
    init_logs(&config.log, config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(slipway_agent::run::run(config, stop_signal()))?;
    Ok(())
}
