//! The seed: what a deployed guest fetches at first boot, compatible with cloud-init's NoCloud
//! datasource (`meta-data`, `user-data`, `vendor-data`, `network-config`) and read the same way
//! by Slipway's own first-boot agent (which also reads `slipway-apps`), and where it reports
//! `ready`. The guest finds it through its SMBIOS serial (`ds=nocloud-net;s=<url>`).
//!
//! No bearer token: the seed token in the path is what authorises, and it is one VM's alone
//! (stored as its sha256). A token that is not a live VM's is 403, whatever the file, so that
//! the answer never tells a guessed token from a deleted VM's, nor reveals another VM's data. An
//! artifact is served only to a VM whose install list names it.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use slipway_core::catalog::{InstallMethod, PackageManager};
use slipway_core::resources::Timestamp;
use slipway_core::vm::{AppOutcome, ReadyReport, Vm, VmPhase};
use slipway_guest::seed::{Hostname, MetaData};

use super::{ApiError, AppState, Problem};
use crate::inventory::sha256_hex;

fn forbidden() -> ApiError {
    ApiError::SeedRefused
}

async fn vm_of(app: &AppState, token: &str) -> Result<Vm, ApiError> {
    // Tokens are 64 hex digits; anything else is not one, without a lookup.
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(forbidden());
    }
    app.store
        .vm_by_seed(&sha256_hex(token))
        .await?
        .ok_or_else(forbidden)
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn seed_base(app: &AppState, token: &str) -> String {
    format!("{}/v1/seed/{token}/", app.deployer.seed_url())
}

/// The apps as Slipway's first-boot agent reads them.
fn apps_document(app: &AppState, token: &str, vm: &Vm) -> Value {
    let base = seed_base(app, token);
    let apps: Vec<Value> = vm
        .install
        .iter()
        .map(|a| {
            let method = match &a.method {
                InstallMethod::Bundle {
                    artifact,
                    install_script,
                } => json!({
                    "kind": "bundle",
                    "url": format!("{base}artifacts/{artifact}"),
                    "sha256": artifact,
                    "install_script": install_script,
                }),
                InstallMethod::Packages { manager, packages } => json!({
                    "kind": "packages", "manager": manager.as_str(), "packages": packages,
                }),
            };
            json!({ "name": a.name, "version": a.version, "method": method })
        })
        .collect();
    json!({ "apps": apps })
}

/// cloud-config for guests with cloud-init: packages, bundles fetched and checked by `runcmd`,
/// and `phone_home` to report ready once they have run. JSON is YAML, so serde writes it.
fn user_data(app: &AppState, token: &str, vm: &Vm) -> String {
    let base = seed_base(app, token);
    let mut packages: Vec<String> = Vec::new();
    let mut runcmd: Vec<Value> = Vec::new();
    for a in &vm.install {
        match &a.method {
            InstallMethod::Packages {
                manager,
                packages: p,
            } => {
                if *manager == PackageManager::Apt || *manager == PackageManager::Dnf {
                    packages.extend(p.iter().cloned());
                } else {
                    let mut cmd = vec![json!("apk"), json!("add")];
                    cmd.extend(p.iter().map(|x| json!(x)));
                    runcmd.push(Value::Array(cmd));
                }
            }
            InstallMethod::Bundle {
                artifact,
                install_script,
            } => {
                // Values go in as positional parameters, never into the script's text.
                runcmd.push(json!([
                    "sh",
                    "-c",
                    "set -e; d=/var/lib/slipway/apps/$1; mkdir -p \"$d\"; \
                     (curl -fsS -o \"$d/bundle\" \"$2\" || wget -qO \"$d/bundle\" \"$2\"); \
                     echo \"$3  $d/bundle\" | sha256sum -c -; tar -xf \"$d/bundle\" -C \"$d\"; \
                     cd \"$d\" && sh \"./$4\"",
                    "install",
                    a.name,
                    format!("{base}artifacts/{artifact}"),
                    artifact,
                    install_script
                ]));
            }
        }
    }
    let mut config = json!({
        "phone_home": { "url": format!("{base}ready"), "post": ["instance_id", "hostname", "fqdn"], "tries": 10 },
    });
    if !packages.is_empty() {
        config["packages"] = json!(packages);
    }
    if !runcmd.is_empty() {
        config["runcmd"] = Value::Array(runcmd);
    }
    format!(
        "#cloud-config\n{}\n",
        serde_json::to_string_pretty(&config).unwrap_or_default()
    )
}

/// One file of a VM's seed.
#[utoipa::path(get, path = "/v1/seed/{token}/{file}", tag = "seed",
    params(("token" = String, Path, description = "The VM's seed token, from its SMBIOS serial"),
        ("file" = String, Path, description = "`meta-data`, `user-data`, `vendor-data`, `network-config` or `slipway-apps`")),
    responses((status = 200, body = String, content_type = "text/plain"),
        (status = 403, body = Problem, description = "Not a live VM's seed token"),
        (status = 404, body = Problem, description = "No such file in the seed")))]
pub async fn seed_file(
    State(app): State<AppState>,
    Path((token, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let vm = vm_of(&app, &token).await?;
    Ok(match file.as_str() {
        "meta-data" => {
            let meta = MetaData {
                instance_id: vm.instance_id.clone(),
                local_hostname: Hostname::parse(&vm.hostname).ok(),
            };
            text(meta.to_yaml())
        }
        "user-data" => text(user_data(&app, &token, &vm)),
        "vendor-data" => text("#cloud-config\n{}\n".into()),
        "network-config" => {
            // DHCP on every NIC, matched by the MAC it was given.
            let mut ethernets = serde_json::Map::new();
            for (i, mac) in vm.macs.iter().enumerate() {
                ethernets.insert(
                    format!("nic{i}"),
                    json!({ "match": { "macaddress": mac }, "set-name": format!("eth{i}"), "dhcp4": true }),
                );
            }
            text(
                serde_json::to_string_pretty(&json!({ "version": 2, "ethernets": ethernets }))
                    .unwrap_or_default(),
            )
        }
        "slipway-apps" => axum::Json(apps_document(&app, &token, &vm)).into_response(),
        other => {
            return Err(ApiError::NotFound(format!(
                "the seed has no file {:?}",
                other.chars().take(64).collect::<String>()
            )));
        }
    })
}

/// An app bundle of the VM's install list, from the image store.
#[utoipa::path(get, path = "/v1/seed/{token}/artifacts/{sha256}", tag = "seed",
    params(("token" = String, Path), ("sha256" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream"),
        (status = 403, body = Problem, description = "Not a live VM's seed token, or not its artifact")))]
pub async fn seed_artifact(
    State(app): State<AppState>,
    Path((token, sha256)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let vm = vm_of(&app, &token).await?;
    let named = vm.install.iter().any(
        |a| matches!(&a.method, InstallMethod::Bundle { artifact, .. } if *artifact == sha256),
    );
    if !named {
        return Err(forbidden());
    }
    let path = app.images.blob_path(&sha256);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// The first-boot agent's report (JSON) or cloud-init's phone-home (a form).
#[derive(Debug, Deserialize)]
struct Reported {
    #[serde(rename = "instance-id", alias = "instance_id")]
    instance_id: String,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    applied: Vec<String>,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    apps: Vec<AppOutcome>,
}

/// The guest says it has applied its seed. The VM becomes `ready` with what it applied.
#[utoipa::path(post, path = "/v1/seed/{token}/ready", tag = "seed",
    params(("token" = String, Path)),
    request_body(content = String, description = "JSON from slipway-firstboot, or cloud-init's phone-home form"),
    responses((status = 204, description = "Recorded"),
        (status = 400, body = Problem, description = "Not a report"),
        (status = 403, body = Problem), (status = 409, body = Problem, description = "Another instance's report")))]
pub async fn seed_ready(
    State(app): State<AppState>,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let mut vm = vm_of(&app, &token).await?;
    let (reported, agent) = if body.first() == Some(&b'{') {
        (
            serde_json::from_slice::<Reported>(&body)
                .map_err(|e| ApiError::BadRequest(format!("the report is not one: {e}")))?,
            "slipway-firstboot",
        )
    } else {
        (
            serde_urlencoded::from_bytes::<Reported>(&body)
                .map_err(|e| ApiError::BadRequest(format!("the report is not one: {e}")))?,
            "cloud-init",
        )
    };
    if reported.instance_id != vm.instance_id {
        return Err(ApiError::InUse(format!(
            "the report is for instance {:?}, not this VM's",
            reported.instance_id.chars().take(64).collect::<String>()
        )));
    }
    let clip = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .take(64)
            .map(|s| s.chars().take(1024).collect())
            .collect()
    };
    vm.ready = Some(ReadyReport {
        instance_id: reported.instance_id,
        hostname: reported.hostname.map(|h| h.chars().take(253).collect()),
        applied: clip(reported.applied),
        errors: clip(reported.errors),
        apps: reported
            .apps
            .into_iter()
            .take(256)
            .map(|a| AppOutcome {
                name: a.name.chars().take(64).collect(),
                version: a.version.chars().take(64).collect(),
                ok: a.ok,
                detail: a.detail.chars().take(4096).collect(),
            })
            .collect(),
        agent: agent.to_owned(),
        reported_at: Timestamp::now(),
    });
    // A report again (a reboot) is recorded; only a deploying VM becomes ready by it.
    if vm.phase == VmPhase::Deploying {
        vm.phase = VmPhase::Ready;
    }
    vm.updated_at = Timestamp::now();
    app.store.update_vm(&vm).await?;
    tracing::info!(vm = %vm.id, hostname = ?vm.ready.as_ref().and_then(|r| r.hostname.clone()), "the guest reported ready");
    app.events
        .notify("vm", &vm.id, "reported", json!({ "agent": agent }))
        .await;
    Ok(StatusCode::NO_CONTENT)
}
