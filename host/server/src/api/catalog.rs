//! The catalog: applications and model VMs. Create, list with filters and pages, get, replace
//! (optionally conditional on `If-Match`), delete unless something depends on it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use slipway_core::catalog::{ApplicationSpec, ModelVmSpec};
use slipway_core::resources::{Application, ModelVm, Page};
use slipway_store::ModelVmFilter;
use utoipa::IntoParams;

use super::{
    ApiError, AppState, Caller, JsonBody, Operator, Paging, Problem, QueryParams, Requester, etag,
    if_match,
};

fn checked(errors: Vec<slipway_core::FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errors))
    }
}

fn created<T: serde::Serialize>(location: String, revision: u64, body: T) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        etag(revision),
        Json(body),
    )
        .into_response()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApplicationListQuery {
    /// Only applications of this name (every version).
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Adds an application to the catalog.
#[utoipa::path(post, path = "/v1/applications", tag = "applications", security(("bearer" = [])),
    request_body = ApplicationSpec,
    responses((status = 201, body = Application), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_application(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    JsonBody(spec): JsonBody<ApplicationSpec>,
) -> Result<Response, ApiError> {
    checked(spec.check())?;
    let created_app = app.store.create_application(&spec).await?;
    tracing::info!(application = %created_app.id, name = %spec.name, version = %spec.version, by = %caller.token.name, "application created");
    app.events
        .notify(
            "application",
            &created_app.id,
            "created",
            serde_json::json!({ "name": spec.name, "version": spec.version }),
        )
        .await;
    Ok(created(
        format!("/v1/applications/{}", created_app.id),
        created_app.revision,
        created_app,
    ))
}

/// Lists applications; requesters may read them, to know what they can ask for.
#[utoipa::path(get, path = "/v1/applications", tag = "applications", security(("bearer" = [])),
    params(ApplicationListQuery),
    responses((status = 200, body = Page<Application>), (status = 401, body = Problem)))]
pub async fn list_applications(
    _: Caller<Requester>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<ApplicationListQuery>,
) -> Result<Json<Page<Application>>, ApiError> {
    let paging = Paging {
        limit: query.limit,
        after: query.after,
    };
    Ok(Json(
        app.store
            .list_applications(query.name.as_deref(), &paging.request())
            .await?,
    ))
}

/// One application.
#[utoipa::path(get, path = "/v1/applications/{id}", tag = "applications", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Application), (status = 401, body = Problem),
        (status = 404, body = Problem)))]
pub async fn get_application(
    _: Caller<Requester>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = app.store.application(&id).await?;
    Ok((etag(found.revision), Json(found)).into_response())
}

/// Replaces an application. With `If-Match: "<revision>"`, only if nobody changed it meanwhile.
/// Renaming one that a model VM lists is refused (409).
#[utoipa::path(put, path = "/v1/applications/{id}", tag = "applications", security(("bearer" = [])),
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "The revision the change is based on")),
    request_body = ApplicationSpec,
    responses((status = 200, body = Application), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem)))]
pub async fn replace_application(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(spec): JsonBody<ApplicationSpec>,
) -> Result<Response, ApiError> {
    checked(spec.check())?;
    let updated = app
        .store
        .replace_application(&id, &spec, if_match(&headers)?)
        .await?;
    tracing::info!(application = %id, revision = updated.revision, by = %caller.token.name, "application replaced");
    app.events
        .notify(
            "application",
            &id,
            "updated",
            serde_json::json!({ "revision": updated.revision }),
        )
        .await;
    Ok((etag(updated.revision), Json(updated)).into_response())
}

/// Deletes an application, unless a model VM lists it (409).
#[utoipa::path(delete, path = "/v1/applications/{id}", tag = "applications", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Application), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn delete_application(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Application>, ApiError> {
    let deleted = app.store.delete_application(&id).await?;
    tracing::info!(application = %id, by = %caller.token.name, "application deleted");
    app.events
        .notify("application", &id, "deleted", serde_json::json!({}))
        .await;
    Ok(Json(deleted))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ModelVmListQuery {
    /// `linux`, `windows` or `bsd`.
    pub os_family: Option<String>,
    pub os_distro: Option<String>,
    pub os_version: Option<String>,
    pub arch: Option<String>,
    /// `key=value`: only model VMs with this label.
    pub label: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Adds a model VM. Its images must be disk images in the store, and its applications must be in
/// the catalog; each one that is not is named with its field.
#[utoipa::path(post, path = "/v1/model-vms", tag = "model-vms", security(("bearer" = [])),
    request_body = ModelVmSpec,
    responses((status = 201, body = ModelVm), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_model_vm(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    JsonBody(spec): JsonBody<ModelVmSpec>,
) -> Result<Response, ApiError> {
    checked(spec.check())?;
    let model = app.store.create_model_vm(&spec).await?;
    tracing::info!(model_vm = %model.id, name = %spec.name, by = %caller.token.name, "model VM created");
    app.events
        .notify(
            "model_vm",
            &model.id,
            "created",
            serde_json::json!({ "name": spec.name }),
        )
        .await;
    Ok(created(
        format!("/v1/model-vms/{}", model.id),
        model.revision,
        model,
    ))
}

/// Lists model VMs, filtered by OS, arch or label.
#[utoipa::path(get, path = "/v1/model-vms", tag = "model-vms", security(("bearer" = [])),
    params(ModelVmListQuery),
    responses((status = 200, body = Page<ModelVm>), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_model_vms(
    _: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<ModelVmListQuery>,
) -> Result<Json<Page<ModelVm>>, ApiError> {
    let label = match &query.label {
        Some(label) => Some(
            label
                .split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("label {label:?} must be key=value"))
                })?,
        ),
        None => None,
    };
    let filter = ModelVmFilter {
        os_family: query.os_family,
        os_distro: query.os_distro,
        os_version: query.os_version,
        arch: query.arch,
        label,
    };
    let paging = Paging {
        limit: query.limit,
        after: query.after,
    };
    Ok(Json(
        app.store.list_model_vms(&filter, &paging.request()).await?,
    ))
}

/// One model VM, by id or by name.
#[utoipa::path(get, path = "/v1/model-vms/{id}", tag = "model-vms", security(("bearer" = [])),
    params(("id" = String, Path, description = "The model VM's id or name")),
    responses((status = 200, body = ModelVm), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_model_vm(
    _: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let model = app.store.model_vm(&id).await?;
    Ok((etag(model.revision), Json(model)).into_response())
}

/// Replaces a model VM. With `If-Match: "<revision>"`, only if nobody changed it meanwhile.
#[utoipa::path(put, path = "/v1/model-vms/{id}", tag = "model-vms", security(("bearer" = [])),
    params(("id" = String, Path, description = "The model VM's id or name"),
        ("If-Match" = Option<String>, Header, description = "The revision the change is based on")),
    request_body = ModelVmSpec,
    responses((status = 200, body = ModelVm), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem)))]
pub async fn replace_model_vm(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(spec): JsonBody<ModelVmSpec>,
) -> Result<Response, ApiError> {
    checked(spec.check())?;
    let model = app
        .store
        .replace_model_vm(&id, &spec, if_match(&headers)?)
        .await?;
    tracing::info!(model_vm = %model.id, revision = model.revision, by = %caller.token.name, "model VM replaced");
    app.events
        .notify(
            "model_vm",
            &model.id,
            "updated",
            serde_json::json!({ "revision": model.revision }),
        )
        .await;
    Ok((etag(model.revision), Json(model)).into_response())
}

/// Deletes a model VM; 409 while staged VMs were made from it.
#[utoipa::path(delete, path = "/v1/model-vms/{id}", tag = "model-vms", security(("bearer" = [])),
    params(("id" = String, Path, description = "The model VM's id or name")),
    responses((status = 200, body = ModelVm), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn delete_model_vm(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelVm>, ApiError> {
    let model = app.store.delete_model_vm(&id).await?;
    tracing::info!(model_vm = %model.id, by = %caller.token.name, "model VM deleted");
    app.events
        .notify(
            "model_vm",
            &model.id,
            "deleted",
            serde_json::json!({ "name": model.spec.name }),
        )
        .await;
    Ok(Json(model))
}
