//! `slipway`: the provisioning server (`slipway serve`) and its command-line client (every other
//! command), plus `slipway place`, which runs the placement pipeline without a server.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slipway_server::config::{Config, LogFormat, ServeArgs};

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "Provision virtual machines from a catalog, with policies as WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the provisioning server.
    ///
    /// Every option can also be set in a TOML file (--config, or slipway.toml in the data
    /// directory) and in the environment; flags win over the environment, which wins over the file.
    Serve(Box<ServeArgs>),
    /// API tokens: create (also offline, into a data directory), list, revoke.
    Token(cmd::TokenArgs),
    /// The image store: upload, import, list, show, delete.
    Image(cmd::ImageArgs),
    /// Applications in the catalog.
    App(cmd::AppArgs),
    /// Model VMs in the catalog.
    Model(cmd::ModelArgs),
    /// Stage a model VM: strip its identity and add first-boot software, in a new image.
    Stage(cmd::staged::StageArgs),
    /// Staged VMs.
    Staged(cmd::staged::StagedArgs),
    /// Jobs: list, show, follow to the end.
    Job(cmd::JobArgs),
    /// Print the server's events as they happen, one JSON document per line.
    Events(cmd::EventsArgs),
    /// Plugins: list, install or replace without a restart, remove.
    Plugin(cmd::PluginArgs),
    /// Hosts: the inventory as a table, drain and maintenance, join tokens.
    Host(cmd::hosts::HostArgs),
    /// Placement: decide and claim with an explanation; show or set the pipeline.
    Placement(cmd::hosts::PlacementArgs),
    /// Claims placement made: list, confirm, release.
    Claim(cmd::hosts::ClaimArgs),
    /// Plan a VM request: findings with suggestions, the staged VM chosen, the apps to install,
    /// the host, the identity; nothing deployed or claimed.
    Plan(cmd::plan::PlanArgs),
    /// Deploy a VM request: plan, claim, transfer, boot, wait for the guest to report ready.
    Deploy(cmd::vms::DeployArgs),
    /// Deployed VMs: list, show, stop, start, console, delete.
    Vm(cmd::vms::VmArgs),
    /// Choose a host for one VM with the placement plugins, and explain the choice (no server).
    Place(cmd::place::PlaceArgs),
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

fn main() -> ExitCode {
    slipway_server::tune_allocator();
    match try_main(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Serve(args) => {
            let config = Config::resolve(*args)?;
            init_logs(&config.log, config.log_format);
            runtime()?.block_on(slipway_server::serve::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Place(args) => {
            init_logs("warn", LogFormat::Text);
            cmd::place::place(args)
        }
        command => {
            init_logs(
                &std::env::var("SLIPWAY_LOG").unwrap_or_else(|_| "warn".into()),
                LogFormat::Text,
            );
            runtime()?.block_on(async move {
                match command {
                    Command::Token(args) => cmd::token(args).await,
                    Command::Image(args) => cmd::image(args).await,
                    Command::App(args) => cmd::app(args).await,
                    Command::Model(args) => cmd::model(args).await,
                    Command::Stage(args) => cmd::staged::stage(args).await,
                    Command::Staged(args) => cmd::staged::staged(args).await,
                    Command::Job(args) => cmd::job(args).await,
                    Command::Events(args) => cmd::events(args).await,
                    Command::Plugin(args) => cmd::plugin(args).await,
                    Command::Host(args) => cmd::hosts::host(args).await,
                    Command::Placement(args) => cmd::hosts::placement(args).await,
                    Command::Claim(args) => cmd::hosts::claim(args).await,
                    Command::Plan(args) => cmd::plan::plan(args).await,
                    Command::Deploy(args) => cmd::vms::deploy(args).await,
                    Command::Vm(args) => cmd::vms::vm(args).await,
                    Command::Serve(_) | Command::Place(_) => unreachable!("handled above"),
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
