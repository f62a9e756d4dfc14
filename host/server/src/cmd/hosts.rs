//! `slipway host`, `slipway placement` and `slipway claim`: the inventory, decisions with their
//! explanations, the pipeline, and the claims placement made.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use slipway_core::agent::HostMode;
use slipway_core::host::{Claim, Host, JoinToken};
use slipway_core::resources::Timestamp;
use slipway_core::{Arch, HostFeature, PlacementRequest};
use slipway_server::client::{Client, Connection, ProblemError, print_json, read_json, table};
use slipway_server::placement::{Explanation, PipelineView, Placed};

#[derive(Args)]
pub struct HostArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: HostCommand,
}

#[derive(Subcommand)]
enum HostCommand {
    /// List hosts as a table: state, claimed of capacity, load, accelerator, last heartbeat.
    List {
        /// Only hosts in this state: ready, draining, maintenance, unreachable.
        #[arg(long)]
        state: Option<String>,
        /// Only hosts with this label, key=value.
        #[arg(long)]
        label: Option<String>,
    },
    /// One host, with its last report.
    Show { id: String },
    /// No new placements; the VMs it runs stay until moved.
    Drain { id: String },
    /// No new placements; the host is going down for service.
    Maintenance { id: String },
    /// Take new placements again.
    Activate { id: String },
    /// Remove a host without claims (its agent must join again to come back).
    Delete { id: String },
    /// Join tokens: what agents need to join.
    #[command(subcommand)]
    JoinToken(JoinTokenCommand),
}

#[derive(Subcommand)]
enum JoinTokenCommand {
    /// Create a join token; its secret is printed once (give it to `slipway-agent --join-token`).
    Create {
        #[arg(long)]
        name: String,
        /// A label for every host that joins with it, key=value; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// How many hosts may join with it [default: no limit].
        #[arg(long)]
        uses: Option<u32>,
        /// Seconds it stays valid [default: until revoked].
        #[arg(long)]
        ttl: Option<u64>,
    },
    List,
    Revoke {
        id: String,
    },
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} must be written key=value"))?;
    Ok((k.to_owned(), v.to_owned()))
}

const HOST_HEADER: [&str; 10] = [
    "name",
    "state",
    "vcpus",
    "memory",
    "disk",
    "load",
    "vms",
    "accel",
    "heartbeat",
    "labels",
];

fn gib(mib: u64) -> String {
    format!("{:.1}", mib as f64 / 1024.0)
}

fn ago(t: Timestamp) -> String {
    let ms = (Timestamp::now().0 - t.0).max(0);
    match ms {
        0..1_000 => format!("{ms} ms ago"),
        1_000..120_000 => format!("{} s ago", ms / 1000),
        _ => format!("{} min ago", ms / 60_000),
    }
}

fn host_rows(hosts: &[Host]) -> Vec<Vec<String>> {
    hosts
        .iter()
        .map(|h| {
            let r = &h.report;
            vec![
                h.name.clone(),
                h.state.as_str().to_owned(),
                format!("{}/{}", h.claimed.vcpus, h.capacity.vcpus),
                format!(
                    "{}/{} GiB",
                    gib(h.claimed.memory_mib),
                    gib(h.capacity.memory_mib)
                ),
                format!(
                    "{}/{} GiB",
                    gib(h.claimed.disk_mib),
                    gib(h.capacity.disk_mib)
                ),
                format!("{:.2}", f64::from(r.load_milli[0]) / 1000.0),
                r.vms.len().to_string(),
                serde_json::to_value(r.hypervisor.accelerator)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                ago(h.last_heartbeat),
                r.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect()
}

pub async fn host(args: HostArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let mode = |id: String, mode: HostMode| (id, mode);
    let (id, new_mode) = match args.command {
        HostCommand::List { state, label } => {
            let mut query = Vec::new();
            if let Some(state) = state {
                query.push(format!("state={state}"));
            }
            if let Some(label) = label {
                query.push(format!("label={label}"));
            }
            let path = if query.is_empty() {
                "/v1/hosts".to_owned()
            } else {
                format!("/v1/hosts?{}", query.join("&"))
            };
            let hosts: Vec<Host> = client.list_all(&path).await?;
            if client.json {
                return print_json(&hosts);
            }
            table(&HOST_HEADER, host_rows(&hosts));
            return Ok(());
        }
        HostCommand::Show { id } => {
            let h: Host = client.get(&format!("/v1/hosts/{id}")).await?;
            if client.json {
                return print_json(&h);
            }
            table(&HOST_HEADER, host_rows(std::slice::from_ref(&h)));
            let r = &h.report;
            println!();
            println!("id:          {}", h.id);
            println!("agent:       {} (version {})", h.agent_url, r.agent_version);
            println!(
                "machine:     {} {} CPUs, {} GiB memory ({} available), {} GiB disk ({} free)",
                r.arch,
                r.cpus,
                gib(r.memory_total_mib),
                gib(r.memory_available_mib),
                gib(r.disk_total_mib),
                gib(r.disk_free_mib)
            );
            println!(
                "hypervisor:  {} (KVM: {})",
                r.hypervisor
                    .qemu
                    .as_ref()
                    .map(|q| format!("QEMU {} at {}", q.version, q.path))
                    .unwrap_or_else(|| "no QEMU".to_owned()),
                r.hypervisor.kvm.detail
            );
            println!("claims:      {}", h.claims);
            println!("joined:      {}", h.joined_at);
            return Ok(());
        }
        HostCommand::Drain { id } => mode(id, HostMode::Draining),
        HostCommand::Maintenance { id } => mode(id, HostMode::Maintenance),
        HostCommand::Activate { id } => mode(id, HostMode::Active),
        HostCommand::Delete { id } => {
            let h: Host = client.delete(&format!("/v1/hosts/{id}")).await?;
            if client.json {
                return print_json(&h);
            }
            println!("removed host {} ({})", h.name, h.id);
            return Ok(());
        }
        HostCommand::JoinToken(command) => return join_token(&client, command).await,
    };
    let h: Host = client
        .patch(&format!("/v1/hosts/{id}"), &json!({ "mode": new_mode }))
        .await?;
    if client.json {
        return print_json(&h);
    }
    println!("host {} is {}", h.name, h.state.as_str());
    Ok(())
}

async fn join_token(client: &Client, command: JoinTokenCommand) -> anyhow::Result<()> {
    match command {
        JoinTokenCommand::Create {
            name,
            labels,
            uses,
            ttl,
        } => {
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            let created: Value = client
                .post(
                    "/v1/join-tokens",
                    &json!({ "name": name, "labels": labels, "uses": uses, "ttl_s": ttl }),
                )
                .await?;
            if client.json {
                return print_json(&created);
            }
            eprintln!(
                "created join token {} ({}); its secret, shown only now:",
                name,
                created["token"]["id"].as_str().unwrap_or_default()
            );
            println!("{}", created["secret"].as_str().unwrap_or_default());
            Ok(())
        }
        JoinTokenCommand::List => {
            let tokens: Vec<JoinToken> = client.get("/v1/join-tokens").await?;
            if client.json {
                return print_json(&tokens);
            }
            table(
                &["id", "name", "labels", "uses left", "expires", "revoked"],
                tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(","),
                            t.uses_left.map_or("-".into(), |n| n.to_string()),
                            t.expires_at.map_or("-".into(), |t| t.to_string()),
                            t.revoked_at.map_or("-".into(), |t| t.to_string()),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        JoinTokenCommand::Revoke { id } => {
            let t: JoinToken = client.delete(&format!("/v1/join-tokens/{id}")).await?;
            if client.json {
                return print_json(&t);
            }
            println!("revoked join token {} ({})", t.name, t.id);
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct PlacementArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: PlacementCommand,
}

#[derive(Subcommand)]
enum PlacementCommand {
    /// Choose a host for a VM and claim its resources there; print why.
    Decide(DecideArgs),
    /// Show the pipeline: its steps, and the plugin versions that run.
    Pipeline,
    /// Replace the pipeline with the JSON in FILE (`-` for stdin):
    /// {"steps": [{"plugin": "capacity-filter"}, {"plugin": "spread-score", "weight": 2}]}.
    SetPipeline {
        file: PathBuf,
        /// Overwrite even if someone changed the pipeline since it was read.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct DecideArgs {
    #[arg(long)]
    vcpus: u32,
    #[arg(long)]
    memory_mib: u64,
    #[arg(long, default_value_t = 0)]
    disk_mib: u64,
    #[arg(long, default_value = "x86_64", value_parser = parse_arch)]
    arch: Arch,
    /// A host feature the VM needs (kvm, uefi, nested_virt, hugepages, iommu); repeatable.
    #[arg(long = "feature", value_parser = parse_feature)]
    features: Vec<HostFeature>,
    /// A label the host must carry, key=value; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    #[arg(long)]
    anti_affinity: Option<String>,
    #[arg(long)]
    affinity: Option<String>,
    /// A host not to choose, by id; repeatable.
    #[arg(long)]
    exclude: Vec<String>,
    /// Decide and explain, but claim nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    serde_json::from_value(json!(s)).map_err(|_| format!("{s:?} is not an architecture"))
}

fn parse_feature(s: &str) -> Result<HostFeature, String> {
    serde_json::from_value(json!(s)).map_err(|_| {
        format!("{s:?} is not a host feature: kvm, uefi, nested_virt, hugepages or iommu")
    })
}

fn explain(e: &Explanation) {
    println!("{}", e.summary);
    if let Some(c) = &e.chosen {
        let parts: Vec<String> = c
            .scores
            .iter()
            .map(|s| format!("{} {:.3}×{}", s.plugin, s.normalised, s.weight))
            .collect();
        println!(
            "chosen:   {} (score {:.3}: {})",
            c.host.name,
            c.total,
            parts.join(" + ")
        );
    }
    for r in &e.runners_up {
        println!("runner-up: {} (score {:.3})", r.host.name, r.total);
    }
    if let Some(c) = &e.closest {
        let lacks: Vec<String> = c
            .lacks
            .iter()
            .map(|l| match &l.detail {
                Some(d) => format!("{} {d} ({})", l.reason, l.plugin),
                None => format!("{} ({})", l.reason, l.plugin),
            })
            .collect();
        println!(
            "closest:  {}, which lacks: {}",
            c.host.name,
            lacks.join("; ")
        );
    }
    println!(
        "pipeline: {} (revision {}), {} µs",
        e.pipeline.join(" → "),
        e.pipeline_revision,
        e.elapsed_us
    );
}

pub async fn placement(args: PlacementArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    match args.command {
        PlacementCommand::Decide(d) => {
            let request = PlacementRequest {
                vcpus: d.vcpus,
                memory_mib: d.memory_mib,
                disk_mib: d.disk_mib,
                arch: d.arch,
                features: d.features,
                required_labels: d.labels.into_iter().collect(),
                anti_affinity_group: d.anti_affinity,
                affinity_group: d.affinity,
            };
            let body =
                json!({ "request": request, "dry_run": d.dry_run, "exclude_hosts": d.exclude });
            let placed: Placed = match client.post("/v1/placements", &body).await {
                Ok(placed) => placed,
                Err(e) => {
                    if let Some(why) = e
                        .downcast_ref::<ProblemError>()
                        .and_then(|p| p.placement.clone())
                        .and_then(|v| serde_json::from_value::<Explanation>(v).ok())
                    {
                        if client.json {
                            print_json(&why)?;
                        } else {
                            explain(&why);
                        }
                        anyhow::bail!("no host can take this VM");
                    }
                    return Err(e);
                }
            };
            if client.json {
                return print_json(&placed);
            }
            explain(&placed.explanation);
            match &placed.claim {
                Some(c) => println!(
                    "claimed:  {} on {} ({} vCPUs, {} MiB, {} MiB disk){}",
                    c.id,
                    placed.host.name,
                    c.resources.vcpus,
                    c.resources.memory_mib,
                    c.resources.disk_mib,
                    c.expires_at
                        .map(|t| format!(", pending until {t}"))
                        .unwrap_or_default()
                ),
                None => println!("dry run: {} would be chosen", placed.host.name),
            }
            Ok(())
        }
        PlacementCommand::Pipeline => {
            let view: PipelineView = client.get("/v1/placement/pipeline").await?;
            print_pipeline(&client, &view)
        }
        PlacementCommand::SetPipeline { file, force } => {
            let spec = read_json(&file)?;
            let revision = if force {
                None
            } else {
                let current: PipelineView = client.get("/v1/placement/pipeline").await?;
                Some(current.revision)
            };
            let view: PipelineView = client
                .put("/v1/placement/pipeline", &spec, revision)
                .await?;
            print_pipeline(&client, &view)
        }
    }
}

fn print_pipeline(client: &Client, view: &PipelineView) -> anyhow::Result<()> {
    if client.json {
        return print_json(view);
    }
    table(
        &["#", "plugin", "weight", "enabled", "config"],
        view.steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                vec![
                    (i + 1).to_string(),
                    s.plugin.clone(),
                    s.weight.to_string(),
                    s.enabled.to_string(),
                    if s.config.is_empty() {
                        "-".into()
                    } else {
                        Value::Object(s.config.clone()).to_string()
                    },
                ]
            })
            .collect(),
    );
    println!(
        "revision {}; running: {}",
        view.revision,
        view.running.join(" → ")
    );
    Ok(())
}

#[derive(Args)]
pub struct ClaimArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: ClaimCommand,
}

#[derive(Subcommand)]
enum ClaimCommand {
    List {
        /// Only the claims on this host (id).
        #[arg(long)]
        host: Option<String>,
    },
    Show {
        id: String,
    },
    /// Keep a pending claim: it no longer expires.
    Confirm {
        id: String,
    },
    /// Give a claim's resources back to its host.
    Release {
        id: String,
    },
}

fn claim_rows(claims: &[Claim]) -> Vec<Vec<String>> {
    claims
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.host.clone(),
                c.resources.vcpus.to_string(),
                c.resources.memory_mib.to_string(),
                c.resources.disk_mib.to_string(),
                c.state.as_str().to_owned(),
                c.expires_at.map_or("-".into(), |t| t.to_string()),
            ]
        })
        .collect()
}

const CLAIM_HEADER: [&str; 7] = [
    "id",
    "host",
    "vcpus",
    "memory mib",
    "disk mib",
    "state",
    "expires",
];

pub async fn claim(args: ClaimArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    let one: Claim = match args.command {
        ClaimCommand::List { host } => {
            let path = match host {
                Some(h) => format!("/v1/claims?host={h}"),
                None => "/v1/claims".to_owned(),
            };
            let claims: Vec<Claim> = client.list_all(&path).await?;
            if client.json {
                return print_json(&claims);
            }
            table(&CLAIM_HEADER, claim_rows(&claims));
            return Ok(());
        }
        ClaimCommand::Show { id } => client.get(&format!("/v1/claims/{id}")).await?,
        ClaimCommand::Confirm { id } => {
            client
                .post(&format!("/v1/claims/{id}/confirm"), &json!({}))
                .await?
        }
        ClaimCommand::Release { id } => client.delete(&format!("/v1/claims/{id}")).await?,
    };
    if client.json {
        return print_json(&one);
    }
    table(&CLAIM_HEADER, claim_rows(std::slice::from_ref(&one)));
    Ok(())
}

/// `slipway plugin install DIR`: the manifest and component of a plugin directory.
pub async fn install_plugin(client: &Client, dir: &std::path::Path) -> anyhow::Result<Value> {
    let manifest_path = dir.join("plugin.toml");
    let manifest = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let parsed = slipway_runtime::Manifest::from_toml(&manifest)
        .with_context(|| format!("in {}", manifest_path.display()))?;
    let component_path = dir.join(parsed.component_file());
    let component = std::fs::read(&component_path)
        .with_context(|| format!("reading {}", component_path.display()))?;
    client
        .install_plugin(&parsed.name, manifest, component)
        .await
}
