//! The client commands: each parses its arguments, calls the API, and prints a table or JSON.

pub mod hosts;
pub mod place;
pub mod plan;
pub mod staged;
pub mod vms;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::Value;
use slipway_core::resources::{Application, Image, Job, ModelVm, Role, Token};
use slipway_server::api::system::LoadedPlugin;
use slipway_server::client::{
    Client, Connection, IMAGE_HEADER, JOB_HEADER, TOKEN_HEADER, image_rows, job_outcome, job_rows,
    print_json, read_json, table, token_rows,
};
use slipway_server::config::default_data_dir;

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// Who or what the token is for.
        #[arg(long)]
        name: String,
        /// admin, operator or requester.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Write the token straight into a data directory's database instead of asking a server
        /// (for the first tokens, or when every admin token is lost).
        #[arg(long)]
        local: bool,
        /// The data directory, with --local [default: as `slipway serve`'s].
        #[arg(long, env = "SLIPWAY_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token.
    Revoke { id: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not a role: admin, operator or requester"))
}

pub async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let json = args.connection.json;
    match args.command {
        TokenCommand::Create {
            name,
            role,
            local: true,
            data_dir,
        } => {
            let data = data_dir
                .or_else(default_data_dir)
                .context("no data directory: pass --data-dir")?;
            let db = data.join("slipway.db");
            anyhow::ensure!(
                db.exists(),
                "{} has no database; start `slipway serve --data-dir {}` once first",
                data.display(),
                data.display()
            );
            let store = slipway_store::Store::open(&db).await?;
            let (token, secret) = store.create_token(&name, role).await?;
            store.close().await;
            print_created(&token, &secret, json)
        }
        TokenCommand::Create { name, role, .. } => {
            let client = Client::new(&args.connection)?;
            let created: Value = client
                .post(
                    "/v1/tokens",
                    &serde_json::json!({ "name": name, "role": role }),
                )
                .await?;
            let token: Token = serde_json::from_value(created["token"].clone())?;
            print_created(&token, created["secret"].as_str().unwrap_or_default(), json)
        }
        TokenCommand::List => {
            let client = Client::new(&args.connection)?;
            let tokens: Vec<Token> = client.get("/v1/tokens").await?;
            if json {
                return print_json(&tokens);
            }
            table(TOKEN_HEADER, token_rows(&tokens));
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let client = Client::new(&args.connection)?;
            let token: Token = client.delete(&format!("/v1/tokens/{id}")).await?;
            if json {
                return print_json(&token);
            }
            println!("revoked {} ({})", token.id, token.name);
            Ok(())
        }
    }
}

fn print_created(token: &Token, secret: &str, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&serde_json::json!({ "token": token, "secret": secret }));
    }
    eprintln!(
        "created {} token {} ({}); its secret, shown only now:",
        token.role, token.name, token.id
    );
    println!("{secret}");
    Ok(())
}

#[derive(Args)]
pub struct ImageArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Upload a disk image (raw, qcow2 or VMDK, detected from its header) or an artifact.
    Upload {
        file: PathBuf,
        /// [default: the file's name without its extension]
        #[arg(long)]
        name: Option<String>,
        /// disk or artifact.
        #[arg(long, default_value = "disk")]
        kind: String,
        /// The sha256 the file must have.
        #[arg(long)]
        sha256: Option<String>,
        /// Return once the bytes are sent, without following the job.
        #[arg(long)]
        no_wait: bool,
        /// Print only the stored image's id.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Import an image from a path on the server's machine (inside its import directories).
    Import {
        path: PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "disk")]
        kind: String,
        #[arg(long)]
        no_wait: bool,
        /// Print only the stored image's id.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List images.
    List {
        #[arg(long)]
        kind: Option<String>,
    },
    /// Show one image.
    Show { id: String },
    /// Delete an image that nothing uses.
    Delete { id: String },
}

fn default_name(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_else(|| "image".into())
}

async fn finish_job(client: &Client, job: Job, no_wait: bool, quiet: bool) -> anyhow::Result<()> {
    let job = if no_wait {
        job
    } else {
        client.follow(&job.id).await?
    };
    if quiet {
        let id = job.result.as_ref().and_then(|r| r["id"].as_str());
        println!("{}", id.unwrap_or(&job.id));
    } else if client.json {
        print_json(&job)?;
    } else if let Some(result) = &job.result {
        if let Ok(image) = serde_json::from_value::<Image>(result.clone()) {
            table(IMAGE_HEADER, image_rows(&[image]));
        } else {
            print_json(result)?;
        }
    } else if !job.state.is_finished() {
        println!("job {} is {}", job.id, job.state.as_str());
    }
    if no_wait { Ok(()) } else { job_outcome(&job) }
}

pub async fn image(args: ImageArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    match args.command {
        ImageCommand::Upload {
            file,
            name,
            kind,
            sha256,
            no_wait,
            quiet,
        } => {
            let name = name.unwrap_or_else(|| default_name(&file));
            let job = client
                .upload(&file, &name, &kind, sha256.as_deref())
                .await?;
            finish_job(&client, job, no_wait, quiet).await
        }
        ImageCommand::Import {
            path,
            name,
            kind,
            no_wait,
            quiet,
        } => {
            // The server resolves the path on its machine; make a relative one mean what the user
            // sees from here.
            let path = std::path::absolute(&path)?;
            let job: Job = client
                .post(
                    "/v1/images/import",
                    &serde_json::json!({ "path": path, "name": name, "kind": kind }),
                )
                .await?;
            finish_job(&client, job, no_wait, quiet).await
        }
        ImageCommand::List { kind } => {
            let path = match kind {
                Some(kind) => format!("/v1/images?kind={kind}"),
                None => "/v1/images".to_owned(),
            };
            let images: Vec<Image> = client.list_all(&path).await?;
            if client.json {
                return print_json(&images);
            }
            table(IMAGE_HEADER, image_rows(&images));
            Ok(())
        }
        ImageCommand::Show { id } => {
            let image: Image = client.get(&format!("/v1/images/{id}")).await?;
            print_json(&image)
        }
        ImageCommand::Delete { id } => {
            let image: Image = client.delete(&format!("/v1/images/{id}")).await?;
            if client.json {
                return print_json(&image);
            }
            println!("deleted image {} ({})", image.id, image.name);
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct AppArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Args)]
pub struct ModelArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Create from a JSON file (`-` for standard input).
    Create { file: PathBuf },
    /// List, optionally filtered (`--filter os_family=linux`, `--filter label=tier=gold`).
    List {
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// Show one, as JSON.
    Show { id: String },
    /// Replace with a JSON file; with --revision, only if it is still at that revision.
    Update {
        id: String,
        file: PathBuf,
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Delete one that nothing depends on.
    Delete { id: String },
}

fn query(filters: &[String]) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for filter in filters {
        let (key, value) = filter
            .split_once('=')
            .with_context(|| format!("filter {filter:?} must be KEY=VALUE"))?;
        parts.push(format!("{key}={}", urlencode(value)));
    }
    Ok(if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn app(args: AppArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    catalog::<Application>(&client, "/v1/applications", args.command, |apps| {
        table(
            &["id", "name", "version", "recipes", "revision"],
            apps.iter()
                .map(|a| {
                    vec![
                        a.id.clone(),
                        a.spec.name.clone(),
                        a.spec.version.clone(),
                        a.spec
                            .recipes
                            .iter()
                            .map(|r| match &r.method {
                                slipway_core::catalog::InstallMethod::Packages {
                                    manager, ..
                                } => manager.as_str().to_owned(),
                                slipway_core::catalog::InstallMethod::Bundle { .. } => {
                                    "bundle".to_owned()
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(","),
                        a.revision.to_string(),
                    ]
                })
                .collect(),
        );
    })
    .await
}

pub async fn model(args: ModelArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    catalog::<ModelVm>(&client, "/v1/model-vms", args.command, |models| {
        table(
            &[
                "id", "name", "os", "arch", "vcpus", "memory", "apps", "revision",
            ],
            models
                .iter()
                .map(|m| {
                    let os = &m.spec.os;
                    vec![
                        m.id.clone(),
                        m.spec.name.clone(),
                        format!("{} {} {}", os.family, os.distro, os.version),
                        m.spec.hardware.arch.to_string(),
                        m.spec.hardware.vcpus.to_string(),
                        format!("{} MiB", m.spec.hardware.memory_mib),
                        m.spec.applications.len().to_string(),
                        m.revision.to_string(),
                    ]
                })
                .collect(),
        );
    })
    .await
}

async fn catalog<T>(
    client: &Client,
    base: &str,
    command: CatalogCommand,
    show_table: impl Fn(&[T]),
) -> anyhow::Result<()>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    match command {
        CatalogCommand::Create { file } => {
            let created: T = client.post(base, &read_json(&file)?).await?;
            if client.json {
                return print_json(&created);
            }
            show_table(std::slice::from_ref(&created));
        }
        CatalogCommand::List { filters } => {
            let items: Vec<T> = client
                .list_all(&format!("{base}{}", query(&filters)?))
                .await?;
            if client.json {
                return print_json(&items);
            }
            show_table(&items);
        }
        CatalogCommand::Show { id } => {
            let item: Value = client.get(&format!("{base}/{id}")).await?;
            print_json(&item)?;
        }
        CatalogCommand::Update { id, file, revision } => {
            let item: T = client
                .put(&format!("{base}/{id}"), &read_json(&file)?, revision)
                .await?;
            if client.json {
                return print_json(&item);
            }
            show_table(std::slice::from_ref(&item));
        }
        CatalogCommand::Delete { id } => {
            let item: T = client.delete(&format!("{base}/{id}")).await?;
            if client.json {
                return print_json(&item);
            }
            println!("deleted {id}");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct JobArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand)]
enum JobCommand {
    /// List jobs.
    List {
        /// queued, running, succeeded or failed.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one job, as JSON.
    Show { id: String },
    /// Follow a job to its end, with a progress bar; exits non-zero if it fails.
    Follow { id: String },
}

pub async fn job(args: JobArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    match args.command {
        JobCommand::List { state } => {
            let path = match state {
                Some(state) => format!("/v1/jobs?state={state}"),
                None => "/v1/jobs".to_owned(),
            };
            let jobs: Vec<Job> = client.list_all(&path).await?;
            if client.json {
                return print_json(&jobs);
            }
            table(JOB_HEADER, job_rows(&jobs));
            Ok(())
        }
        JobCommand::Show { id } => print_json(&client.get::<Job>(&format!("/v1/jobs/{id}")).await?),
        JobCommand::Follow { id } => {
            let job = client.follow(&id).await?;
            if client.json {
                print_json(&job)?;
            } else {
                table(JOB_HEADER, job_rows(std::slice::from_ref(&job)));
            }
            job_outcome(&job)
        }
    }
}

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    connection: Connection,
    /// Start after this event sequence number (0: from the beginning of the log).
    #[arg(long)]
    after: Option<i64>,
}

pub async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let connection = Connection {
        json: true,
        ..args.connection
    };
    let client = Client::new(&connection)?;
    let path = match args.after {
        Some(after) => format!("/v1/events?after={after}"),
        None => "/v1/events".to_owned(),
    };
    let mut stream = Box::pin(client.event_stream(&path).await?);
    while let Some(event) = stream.next().await {
        println!("{}", serde_json::to_string(&event?)?);
    }
    Ok(())
}

#[derive(Args)]
pub struct PluginArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// List the plugins: bundled, and installed through the API.
    List,
    /// Install a plugin directory (plugin.toml and its component), or replace the plugin of its
    /// name, without restarting the server.
    Install { dir: PathBuf },
    /// Remove an installed plugin (a bundled one of its name comes back).
    Remove { name: String },
}

pub async fn plugin(args: PluginArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection)?;
    match args.command {
        PluginCommand::List => {
            let plugins: Vec<LoadedPlugin> = client.get("/v1/plugins").await?;
            if client.json {
                return print_json(&plugins);
            }
            table(
                &["name", "version", "kind", "contract", "source"],
                plugins
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.version.clone(),
                            p.kind.clone(),
                            p.contract.clone(),
                            p.source.clone(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        PluginCommand::Install { dir } => {
            let installed = hosts::install_plugin(&client, &dir).await?;
            if client.json {
                return print_json(&installed);
            }
            println!(
                "installed {} {}",
                installed["name"].as_str().unwrap_or_default(),
                installed["version"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        PluginCommand::Remove { name } => {
            let removed: LoadedPlugin = client.delete(&format!("/v1/plugins/{name}")).await?;
            if client.json {
                return print_json(&removed);
            }
            println!("removed {} {}", removed.name, removed.version);
            Ok(())
        }
    }
}
