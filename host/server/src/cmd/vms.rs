//! `slipway deploy` and `slipway vm`: deploy a request, follow its VMs, stop, start, read the
//! console, delete.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use slipway_core::vm::{Vm, VmStatus};
use slipway_server::client::{Client, Connection, ProblemError, print_json, read_json, table};
use slipway_server::deploy::Deployment;

#[derive(Args)]
pub struct DeployArgs {
    #[command(flatten)]
    connection: Connection,
    /// The request as JSON (`-` for stdin), as `slipway plan` takes it.
    file: PathBuf,
    /// Wait until every VM is ready or failed.
    #[arg(long)]
    wait: bool,
    /// Give each VM a whole copy of the image instead of a copy-on-write overlay.
    #[arg(long)]
    full_copy: bool,
}

#[derive(Args)]
pub struct VmArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: VmCommand,
}

#[derive(Subcommand)]
enum VmCommand {
    /// List VMs: yours, or all for operators.
    List {
        #[arg(long)]
        deployment: Option<String>,
    },
    /// One VM: phase, identity, host, what its guest reported.
    Show { id: String },
    /// Power a VM down (then stop it hard after the timeout).
    Stop {
        id: String,
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Start a stopped VM.
    Start { id: String },
    /// The end of a VM's serial console.
    Console {
        id: String,
        #[arg(long, default_value_t = 65536)]
        bytes: u64,
    },
    /// Delete a VM: off its host, its claim released.
    Delete { id: String },
}

fn rows(vms: &[Vm]) -> Vec<Vec<String>> {
    vms.iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.hostname.clone(),
                v.phase.as_str().to_owned(),
                v.host_name.clone(),
                v.instance_id.clone(),
                v.macs.join(","),
                v.error
                    .as_deref()
                    .map(|e| {
                        e.lines()
                            .next()
                            .unwrap_or_default()
                            .chars()
                            .take(60)
                            .collect()
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect()
}

const HEADER: &[&str] = &[
    "ID", "HOSTNAME", "PHASE", "HOST", "INSTANCE", "MACS", "ERROR",
];

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let body = read_json(&args.file)?;
    let path = format!(
        "/v1/deployments?wait={}&clone={}",
        args.wait,
        if args.full_copy { "full" } else { "linked" }
    );
    let deployment: Deployment = match client.post(&path, &body).await {
        Ok(d) => d,
        Err(e) => {
            if let Some(p) = e.downcast_ref::<ProblemError>()
                && let Some(plan) = &p.plan
            {
                for f in plan["findings"].as_array().into_iter().flatten() {
                    println!(
                        "{:8}{}: {}",
                        f["severity"].as_str().unwrap_or_default(),
                        f["field"].as_str().unwrap_or_default(),
                        f["message"].as_str().unwrap_or_default()
                    );
                }
            }
            return Err(e);
        }
    };
    if client.json {
        return print_json(&deployment);
    }
    println!("deployment {}", deployment.id);
    table(HEADER, rows(&deployment.vms));
    if deployment.vms.iter().any(|v| v.error.is_some()) {
        anyhow::bail!("some VMs failed: `slipway vm show ID` says why");
    }
    Ok(())
}

pub async fn vm(args: VmArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    match args.command {
        VmCommand::List { deployment } => {
            let path = match deployment {
                Some(d) => format!("/v1/vms?deployment={d}"),
                None => "/v1/vms".to_owned(),
            };
            let vms: Vec<Vm> = client.list_all(&path).await?;
            if client.json {
                return print_json(&vms);
            }
            table(HEADER, rows(&vms));
            Ok(())
        }
        VmCommand::Show { id } => {
            let vm: Vm = client.get(&format!("/v1/vms/{id}")).await?;
            print_json(&vm)
        }
        VmCommand::Stop { id, timeout } => {
            let status: VmStatus = client
                .post(
                    &format!("/v1/vms/{id}/stop"),
                    &json!({ "timeout_s": timeout }),
                )
                .await?;
            print_json(&status)
        }
        VmCommand::Start { id } => {
            let status: VmStatus = client
                .post(&format!("/v1/vms/{id}/start"), &json!({}))
                .await?;
            print_json(&status)
        }
        VmCommand::Console { id, bytes } => {
            let text = client
                .get_text(&format!("/v1/vms/{id}/console?tail_bytes={bytes}"))
                .await?;
            print!("{text}");
            Ok(())
        }
        VmCommand::Delete { id } => {
            let vm: Vm = client.delete(&format!("/v1/vms/{id}")).await?;
            if client.json {
                return print_json(&vm);
            }
            println!("deleted {} ({}) from {}", vm.id, vm.hostname, vm.host_name);
            Ok(())
        }
    }
}
