//! Deployments and the VMs they made: deploy a request, follow its VMs to `ready`, stop, start,
//! read the console, delete. A requester sees and acts on their own VMs; operators on all.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use slipway_core::resources::{Page, Role};
use slipway_core::vm::{CloneMode, Vm, VmPhase, VmStatus};
use utoipa::{IntoParams, ToSchema};

use super::plans::VmRequestBody;
use super::{ApiError, AppState, Caller, JsonBody, Paging, Problem, QueryParams, Requester};
use crate::deploy::{DEPLOY_STEPS, DeployError, Deployment, VM_DEPLOY};
use crate::jobs::Work;
use crate::plan::PlanError;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// Answer when every VM is ready or failed (201), instead of at once (202).
    pub wait: Option<bool>,
    /// `linked` (a copy-on-write overlay on the host's cached base, the default) or `full` (a
    /// whole copy).
    pub clone: Option<CloneMode>,
}

/// One page holds a deployment: at most `count` (100) VMs.
fn whole_deployment() -> slipway_store::PageRequest {
    slipway_store::PageRequest {
        after: None,
        limit: slipway_store::PageRequest::MAX_LIMIT,
    }
}

fn plan_error(e: PlanError) -> ApiError {
    match e {
        PlanError::Store(e) => e.into(),
        PlanError::Plugin(e) => ApiError::PluginFailed(e),
        PlanError::Internal(e) => ApiError::Internal(e),
    }
}

/// Deploys a VM request: the same body as a plan. The request is planned (a request with error
/// findings is answered 422 `invalid-request`, as a plan is); then, for each VM, the host
/// placement chooses is claimed and the VM gets its identity (UUID, MACs, hostname,
/// instance-id, seed token); a job per VM sends the staged image to the host (nothing if it has
/// it cached), creates and starts the VM, and waits for the guest to report ready. When a VM
/// finds no host, the claims already made are released and nothing is deployed (422
/// `no-host`).
#[utoipa::path(post, path = "/v1/deployments", tag = "deployments", security(("bearer" = [])),
    params(DeployQuery),
    request_body = VmRequestBody,
    responses((status = 202, body = Deployment, description = "The VMs are deploying; follow them at /v1/vms/{id}"),
        (status = 201, body = Deployment, description = "With wait=true: every VM is ready or failed"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem, description = "Findings block the request, or no host can take a VM")))]
pub async fn deploy(
    caller: Caller<Requester>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<DeployQuery>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let plan = app
        .planner
        .plan(&body, caller.token.role, &caller.token.id)
        .await
        .map_err(plan_error)?;
    let admitted = app
        .deployer
        .admit(
            plan,
            query.clone.unwrap_or_default(),
            &caller.token.id,
            app.config.mac_prefix,
        )
        .await
        .map_err(|e| match e {
            DeployError::Invalid(plan) => ApiError::InvalidRequest(plan),
            DeployError::NoHost { explanation, .. } => ApiError::NoHost(explanation),
            DeployError::Placement(e) => ApiError::PluginFailed(e),
            DeployError::Store(e) => e.into(),
            DeployError::Internal(e) => ApiError::Internal(e),
        })?;
    let deployment = admitted
        .first()
        .map(|(vm, _)| vm.deployment.clone())
        .unwrap_or_default();
    let mut jobs = Vec::new();
    for (mut vm, params) in admitted {
        let job = app
            .jobs
            .create(
                VM_DEPLOY,
                serde_json::to_value(&params).map_err(ApiError::internal)?,
                DEPLOY_STEPS,
                &caller.token.id,
            )
            .await?;
        vm.job = job.id.clone();
        app.store.update_vm(&vm).await?;
        app.events
            .notify(
                "vm",
                &vm.id,
                "created",
                serde_json::json!({ "host": vm.host_name, "hostname": vm.hostname, "job": job.id }),
            )
            .await;
        tracing::info!(vm = %vm.id, host = %vm.host_name, hostname = %vm.hostname, job = %job.id, "deploying");
        app.jobs.spawn(job.clone(), 0, Work::Deploy(params));
        jobs.push(job.id);
    }
    let status = if query.wait.unwrap_or(false) {
        for job in &jobs {
            app.jobs.wait(job).await?;
        }
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    let vms = app
        .store
        .list_vms(Some(&deployment), None, &whole_deployment())
        .await?
        .items;
    Ok((
        status,
        Json(Deployment {
            id: deployment,
            vms,
        }),
    )
        .into_response())
}

/// A VM the caller may see: their own, or any for operators and admins. Another requester's VM
/// is "not found", so that its existence is not told.
async fn visible(
    app: &AppState,
    caller_role: Role,
    caller_id: &str,
    id: &str,
) -> Result<Vm, ApiError> {
    let vm = app.store.vm(id).await?;
    if caller_role == Role::Requester && vm.owner != caller_id {
        return Err(ApiError::NotFound(format!("VM {id} does not exist")));
    }
    Ok(vm)
}

/// A deployment's VMs.
#[utoipa::path(get, path = "/v1/deployments/{id}", tag = "deployments", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Deployment), (status = 401, body = Problem),
        (status = 404, body = Problem)))]
pub async fn get_deployment(
    caller: Caller<Requester>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    let owner = (caller.token.role == Role::Requester).then_some(caller.token.id.as_str());
    let vms = app
        .store
        .list_vms(Some(&id), owner, &whole_deployment())
        .await?
        .items;
    if vms.is_empty() {
        return Err(ApiError::NotFound(format!(
            "deployment {id} does not exist"
        )));
    }
    Ok(Json(Deployment { id, vms }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VmListQuery {
    pub deployment: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Lists VMs: a requester's own, or all for operators.
#[utoipa::path(get, path = "/v1/vms", tag = "deployments", security(("bearer" = [])),
    params(VmListQuery),
    responses((status = 200, body = Page<Vm>), (status = 401, body = Problem)))]
pub async fn list_vms(
    caller: Caller<Requester>,
    State(app): State<AppState>,
    QueryParams(q): QueryParams<VmListQuery>,
) -> Result<Json<Page<Vm>>, ApiError> {
    let owner = (caller.token.role == Role::Requester).then_some(caller.token.id.as_str());
    let paging = Paging {
        limit: q.limit,
        after: q.after,
    };
    Ok(Json(
        app.store
            .list_vms(q.deployment.as_deref(), owner, &paging.request())
            .await?,
    ))
}

/// One VM: its phase, identity, host, what the guest reported, or why it failed.
#[utoipa::path(get, path = "/v1/vms/{id}", tag = "deployments", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Vm), (status = 401, body = Problem),
        (status = 404, body = Problem)))]
pub async fn get_vm(
    caller: Caller<Requester>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vm>, ApiError> {
    Ok(Json(
        visible(&app, caller.token.role, &caller.token.id, &id).await?,
    ))
}

/// Deletes a VM: removed from its host (its overlay with it), its claim released, its MACs and
/// seed token forgotten. A VM still deploying cannot be deleted until its job ends (409).
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "deployments", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Vm), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 502, body = Problem, description = "The host's agent failed the removal")))]
pub async fn delete_vm(
    caller: Caller<Requester>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vm>, ApiError> {
    let vm = visible(&app, caller.token.role, &caller.token.id, &id).await?;
    if vm.phase == VmPhase::Deploying {
        return Err(ApiError::InUse(format!(
            "VM {id} is still deploying (job {}); delete it when the job has ended",
            vm.job
        )));
    }
    let gone = app
        .deployer
        .delete(&vm)
        .await
        .map_err(|e| ApiError::BadGateway(e.0))?;
    tracing::info!(vm = %id, host = %vm.host_name, by = %caller.token.name, "VM deleted");
    Ok(Json(gone))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    /// Seconds the guest has to power down before it is stopped hard [default: 30].
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// Stops a VM: an ACPI power-down, then a hard stop after the timeout. Its claim stays.
#[utoipa::path(post, path = "/v1/vms/{id}/stop", tag = "deployments", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = StopBody,
    responses((status = 200, body = VmStatus), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 502, body = Problem)))]
pub async fn stop_vm(
    caller: Caller<Requester>,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<StopBody>,
) -> Result<Json<VmStatus>, ApiError> {
    let mut vm = visible(&app, caller.token.role, &caller.token.id, &id).await?;
    if !matches!(vm.phase, VmPhase::Ready | VmPhase::Stopped) {
        return Err(ApiError::InUse(format!(
            "VM {id} is {}; only a ready VM can be stopped",
            vm.phase.as_str()
        )));
    }
    let timeout = body.timeout_s.unwrap_or(30).min(600);
    let status = app
        .deployer
        .power(&vm, "stop", timeout)
        .await
        .map_err(|e| ApiError::BadGateway(e.0))?;
    vm.phase = VmPhase::Stopped;
    vm.updated_at = slipway_core::resources::Timestamp::now();
    app.store.update_vm(&vm).await?;
    app.events
        .notify("vm", &id, "stopped", serde_json::json!({}))
        .await;
    Ok(Json(status))
}

/// Starts a stopped VM again, on the same host with the same disks.
#[utoipa::path(post, path = "/v1/vms/{id}/start", tag = "deployments", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = VmStatus), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 502, body = Problem)))]
pub async fn start_vm(
    caller: Caller<Requester>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VmStatus>, ApiError> {
    let mut vm = visible(&app, caller.token.role, &caller.token.id, &id).await?;
    if vm.phase != VmPhase::Stopped {
        return Err(ApiError::InUse(format!(
            "VM {id} is {}; only a stopped VM can be started",
            vm.phase.as_str()
        )));
    }
    let status = app
        .deployer
        .power(&vm, "start", 30)
        .await
        .map_err(|e| ApiError::BadGateway(e.0))?;
    vm.phase = VmPhase::Ready;
    vm.updated_at = slipway_core::resources::Timestamp::now();
    app.store.update_vm(&vm).await?;
    app.events
        .notify("vm", &id, "started", serde_json::json!({}))
        .await;
    Ok(Json(status))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsoleQuery {
    /// How much of the end of the console log [default: 65536, at most 1 MiB].
    pub tail_bytes: Option<u64>,
}

/// The end of a VM's serial console, as its host logged it.
#[utoipa::path(get, path = "/v1/vms/{id}/console", tag = "deployments", security(("bearer" = [])),
    params(("id" = String, Path), ConsoleQuery),
    responses((status = 200, body = String, content_type = "text/plain"),
        (status = 401, body = Problem), (status = 404, body = Problem), (status = 502, body = Problem)))]
pub async fn console(
    caller: Caller<Requester>,
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<ConsoleQuery>,
) -> Result<Response, ApiError> {
    let vm = visible(&app, caller.token.role, &caller.token.id, &id).await?;
    let text = tokio::time::timeout(
        Duration::from_secs(15),
        app.deployer
            .console_tail(&vm, q.tail_bytes.unwrap_or(65536).min(1 << 20)),
    )
    .await
    .map_err(|_| ApiError::BadGateway("the host's agent did not answer in 15 s".into()))?
    .map_err(|e| ApiError::BadGateway(e.0))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}
