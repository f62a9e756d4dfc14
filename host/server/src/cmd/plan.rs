//! `slipway plan`: what a VM request would become — findings with suggestions, the staged VM
//! chosen and why, the apps to install, the host, the identity — without deploying anything.

use std::path::PathBuf;

use clap::Args;
use slipway_core::request::{Finding, Severity, apply_suggestions, size::say_mib};
use slipway_server::client::{Client, Connection, ProblemError, print_json, read_json};
use slipway_server::plan::Plan;

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    connection: Connection,
    /// The request as JSON (`-` for stdin), e.g.
    /// {"os": {"distro": "debian", "version": "12"}, "hardware": {"memory": "4GiB"}, "applications": ["nginx"]}.
    file: PathBuf,
    /// When findings block the request, print it with every suggestion taken (to plan again).
    #[arg(long)]
    fix: bool,
}

fn finding(f: &Finding) {
    let mark = match f.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    };
    let field = if f.field.is_empty() {
        "(request)"
    } else {
        &f.field
    };
    let suggestion = match &f.suggestion {
        Some(serde_json::Value::Null) => " → remove it".to_owned(),
        Some(v) => format!(" → suggest {v}"),
        None => String::new(),
    };
    println!("{mark:8}{field}: {} [{}]{suggestion}", f.message, f.source);
}

fn show(plan: &Plan) {
    for f in &plan.findings {
        finding(f);
    }
    if let Some(choice) = &plan.staged_vm {
        let c = &choice.chosen;
        println!(
            "staged VM: {} ({}), chosen of {}",
            c.name, c.os, choice.considered
        );
        for p in &c.parts {
            println!("           {:>14} {}", p.criterion, p.detail);
        }
        if let Some(r) = &choice.runner_up {
            println!("runner-up: {} ({})", r.name, r.os);
        }
    }
    if let Some(h) = &plan.hardware {
        println!(
            "hardware:  {} vCPUs, {}, {} disk(s) of {}, {} NIC(s), {:?}, {}",
            h.vcpus,
            say_mib(h.memory_mib),
            h.disks.len(),
            say_mib(h.disks.iter().map(|d| d.size_mib).sum()),
            h.nics.len(),
            h.firmware,
            h.machine_type.as_str()
        );
    }
    for app in &plan.install {
        println!("install:   {} {} at first boot", app.name, app.version);
    }
    if let Some(p) = &plan.placement {
        match &p.host {
            Some(h) => println!("host:      {} — {}", h.name, p.explanation.summary),
            None => println!("host:      none — {}", p.explanation.summary),
        }
    }
    for id in &plan.identities {
        println!(
            "identity:  {} {} {} {}",
            id.hostname,
            id.uuid,
            id.instance_id,
            id.macs.join(",")
        );
    }
    for v in &plan.validators {
        match &v.error {
            Some(e) => println!("validator: {} failed: {e}", v.plugin),
            None => println!("validator: {} ({} findings)", v.plugin, v.findings),
        }
    }
}

pub async fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let body = read_json(&args.file)?;
    match client.post::<_, Plan>("/v1/plans", &body).await {
        Ok(plan) => {
            if client.json {
                return print_json(&plan);
            }
            show(&plan);
            Ok(())
        }
        Err(e) => {
            let Some(plan) = e
                .downcast_ref::<ProblemError>()
                .and_then(|p| p.plan.clone())
                .and_then(|v| serde_json::from_value::<Plan>(v).ok())
            else {
                return Err(e);
            };
            if args.fix {
                // What was asked for: the request with every suggestion taken.
                let mut fixed = body;
                apply_suggestions(&mut fixed, &plan.findings);
                return print_json(&fixed);
            }
            if client.json {
                print_json(&plan)?;
            } else {
                show(&plan);
            }
            let errors = plan.findings.iter().filter(|f| f.is_error()).count();
            anyhow::bail!(
                "the request cannot be met as it is: {errors} error{}",
                if errors == 1 { "" } else { "s" }
            )
        }
    }
}
