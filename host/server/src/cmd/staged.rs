//! `slipway stage` and `slipway staged`: turning model VMs into staged VMs, and looking at them.

use clap::{Args, Subcommand};
use slipway_core::resources::{Job, StagedVm};
use slipway_server::client::{Client, Connection, job_outcome, print_json, table};

#[derive(Args)]
pub struct StageArgs {
    #[command(flatten)]
    connection: Connection,
    /// The model VM, by id or name.
    model_vm: String,
    /// The staged VM's name [default: <model>-staged].
    #[arg(long)]
    name: Option<String>,
    /// Shrink (or grow) the root file system to what its tree uses plus this many MiB.
    #[arg(long, conflicts_with = "disk_mib")]
    fit_margin_mib: Option<u64>,
    /// Make the staged disk this many MiB; the last ext file system takes the difference.
    #[arg(long)]
    disk_mib: Option<u64>,
    /// Return once the job is started, without following it.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Args)]
pub struct StagedArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: StagedCommand,
}

#[derive(Subcommand)]
enum StagedCommand {
    /// List staged VMs.
    List {
        /// Only those of this model VM.
        #[arg(long)]
        model_vm: Option<String>,
    },
    /// Show one staged VM with every operation staging made, in order.
    Show { id: String },
    /// Delete a staged VM's record (its image stays until deleted).
    Delete { id: String },
}

const HEADER: [&str; 6] = ["ID", "NAME", "OS", "FIRST BOOT", "IMAGE", "OPERATIONS"];

fn rows(staged: &[StagedVm]) -> Vec<Vec<String>> {
    staged
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                format!(
                    "{} {} ({}, {})",
                    s.os.distro, s.os.version, s.os.arch, s.os.init_system
                ),
                s.first_boot.clone(),
                s.image.chars().take(12).collect(),
                s.operations.len().to_string(),
            ]
        })
        .collect()
}

fn report(s: &StagedVm) {
    table(&HEADER, rows(std::slice::from_ref(s)));
    println!();
    table(
        &["#", "BY", "OPERATION", "CHANGED", "DETAIL"],
        s.operations
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let changed = match o.changed.len() {
                    0 => "-".to_string(),
                    1..=3 => o.changed.join(" "),
                    n => format!("{} and {} more", o.changed[..2].join(" "), n - 2),
                };
                vec![
                    (i + 1).to_string(),
                    o.by.clone(),
                    o.name.clone(),
                    changed,
                    o.detail.clone(),
                ]
            })
            .collect(),
    );
}

pub async fn stage(args: StageArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let job: Job = client
        .post(
            "/v1/staged-vms",
            &serde_json::json!({
                "model_vm": args.model_vm,
                "name": args.name,
                "fit_margin_mib": args.fit_margin_mib,
                "disk_mib": args.disk_mib,
            }),
        )
        .await?;
    if args.no_wait {
        return if client.json {
            print_json(&job)
        } else {
            println!("job {} is {}", job.id, job.state.as_str());
            Ok(())
        };
    }
    let job = client.follow(&job.id).await?;
    if client.json {
        print_json(&job)?;
    } else if let Some(staged) = job
        .result
        .clone()
        .and_then(|r| serde_json::from_value::<StagedVm>(r).ok())
    {
        report(&staged);
    }
    job_outcome(&job)
}

pub async fn staged(args: StagedArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    match args.command {
        StagedCommand::List { model_vm } => {
            let path = match model_vm {
                Some(m) => format!("/v1/staged-vms?model_vm={m}"),
                None => "/v1/staged-vms".to_owned(),
            };
            let all: Vec<StagedVm> = client.list_all(&path).await?;
            if client.json {
                return print_json(&all);
            }
            table(&HEADER, rows(&all));
            Ok(())
        }
        StagedCommand::Show { id } => {
            let s: StagedVm = client.get(&format!("/v1/staged-vms/{id}")).await?;
            if client.json {
                return print_json(&s);
            }
            report(&s);
            Ok(())
        }
        StagedCommand::Delete { id } => {
            let s: StagedVm = client.delete(&format!("/v1/staged-vms/{id}")).await?;
            if client.json {
                return print_json(&s);
            }
            println!(
                "deleted staged VM {} ({}); its image {} stays until deleted",
                s.name, s.id, s.image
            );
            Ok(())
        }
    }
}
