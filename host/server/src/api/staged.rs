//! Staged VMs: model VMs made ready to deploy. Creating one is a job (see `staging`); the
//! record says which OS was found, which plugin stripped it, and every change, in order.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use slipway_core::FieldError;
use slipway_core::resources::{Page, StagedVm};
use slipway_image::layout::Sizing;
use utoipa::{IntoParams, ToSchema};

use super::images::{WaitQuery, job_response};
use super::{ApiError, AppState, Caller, JsonBody, Operator, Paging, Problem, QueryParams};
use crate::jobs::{StageParams, Work};
use crate::staging::{STAGE, STAGE_STEPS};

/// What to stage.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    /// The model VM, by id or name.
    pub model_vm: String,
    /// The staged VM's name [default: `<model>-staged`].
    #[serde(default)]
    pub name: Option<String>,
    /// Size of the staged image's root file system: its tree plus `fit_margin_mib`, or a whole
    /// disk of `disk_mib`; by default every partition keeps its size.
    #[serde(default)]
    pub fit_margin_mib: Option<u64>,
    #[serde(default)]
    pub disk_mib: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StagedListQuery {
    /// Only the staged VMs of this model VM (id or name).
    pub model_vm: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Stages a model VM, as a job: `copy-out`, `inspect`, `strip`, `first-boot`, `write-image`,
/// `store`. The job's result is the staged VM.
#[utoipa::path(post, path = "/v1/staged-vms", tag = "staged-vms", security(("bearer" = [])),
    params(WaitQuery),
    request_body = StageRequest,
    responses((status = 201, body = slipway_core::resources::Job, description = "Staged (with wait=true)"),
        (status = 202, body = slipway_core::resources::Job, description = "The job was started"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_staged_vm(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<WaitQuery>,
    JsonBody(body): JsonBody<StageRequest>,
) -> Result<Response, ApiError> {
    let model = app.store.model_vm(&body.model_vm).await?;
    let name = body
        .name
        .unwrap_or_else(|| format!("{}-staged", model.spec.name));
    let mut errors = Vec::new();
    slipway_core::catalog::check_name("name", &name, &mut errors);
    if model
        .spec
        .hardware
        .disks
        .first()
        .and_then(|d| d.image.as_ref())
        .is_none()
    {
        errors.push(FieldError::new(
            "model_vm",
            format!(
                "model VM {} has no boot disk image to stage",
                model.spec.name
            ),
        ));
    }
    // No larger than an image the store would accept.
    let max_mib = app.config.max_virtual_size >> 20;
    for (field, value) in [
        ("fit_margin_mib", body.fit_margin_mib),
        ("disk_mib", body.disk_mib),
    ] {
        if value.is_some_and(|v| v > max_mib) {
            errors.push(FieldError::new(
                field,
                format!("must be at most {max_mib} (the image store's limit)"),
            ));
        }
    }
    let sizing = match (body.fit_margin_mib, body.disk_mib) {
        (None, None) => Sizing::Same,
        (Some(margin_mib), None) => Sizing::Fit { margin_mib },
        (None, Some(disk_mib)) if disk_mib > 0 => Sizing::Disk { disk_mib },
        (None, Some(_)) => {
            errors.push(FieldError::new("disk_mib", "must be more than 0"));
            Sizing::Same
        }
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "disk_mib",
                "give fit_margin_mib or disk_mib, not both",
            ));
            Sizing::Same
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    match app.store.staged_vm(&name).await {
        Ok(_) => {
            return Err(ApiError::AlreadyExists(format!(
                "staged VM {name} already exists"
            )));
        }
        Err(slipway_store::StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let params = StageParams {
        model_vm: model.id.clone(),
        model_revision: model.revision,
        name,
        sizing,
    };
    let job = app
        .jobs
        .create(
            STAGE,
            serde_json::to_value(&params).unwrap_or_default(),
            STAGE_STEPS,
            &caller.token.id,
        )
        .await?;
    tracing::info!(job = %job.id, model_vm = %model.spec.name, by = %caller.token.name, "staging started");
    app.jobs.spawn(job.clone(), 0, Work::Stage(params));
    job_response(&app, job, query.wait.unwrap_or(false)).await
}

/// Lists staged VMs, oldest first.
#[utoipa::path(get, path = "/v1/staged-vms", tag = "staged-vms", security(("bearer" = [])),
    params(StagedListQuery),
    responses((status = 200, body = Page<StagedVm>), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_staged_vms(
    _: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<StagedListQuery>,
) -> Result<Json<Page<StagedVm>>, ApiError> {
    let model = match &query.model_vm {
        Some(m) => Some(app.store.model_vm(m).await?.id),
        None => None,
    };
    let paging = Paging {
        limit: query.limit,
        after: query.after,
    };
    Ok(Json(
        app.store
            .list_staged_vms(model.as_deref(), &paging.request())
            .await?,
    ))
}

/// A staged VM, by id or name, with its operations report.
#[utoipa::path(get, path = "/v1/staged-vms/{id}", tag = "staged-vms", security(("bearer" = [])),
    params(("id" = String, Path, description = "Id or name")),
    responses((status = 200, body = StagedVm), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_staged_vm(
    _: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StagedVm>, ApiError> {
    Ok(Json(app.store.staged_vm(&id).await?))
}

/// Deletes a staged VM's record; its image stays in the image store until deleted there.
#[utoipa::path(delete, path = "/v1/staged-vms/{id}", tag = "staged-vms", security(("bearer" = [])),
    params(("id" = String, Path, description = "Id or name")),
    responses((status = 200, body = StagedVm, description = "The deleted staged VM"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_staged_vm(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StagedVm>, ApiError> {
    let staged = app.store.delete_staged_vm(&id).await?;
    tracing::info!(staged_vm = %staged.id, by = %caller.token.name, "staged VM deleted");
    app.events
        .notify(
            "staged_vm",
            &staged.id,
            "deleted",
            serde_json::json!({ "name": staged.name }),
        )
        .await;
    Ok(Json(staged))
}
