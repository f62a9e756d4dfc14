//! Placement: decisions with their claims, the claims themselves, the pipeline an admin
//! configures, and installing plugins without a restart.

use axum::Json;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use slipway_core::PlacementRequest;
use slipway_core::host::Claim;
use slipway_core::resources::Page;
use utoipa::{IntoParams, ToSchema};

use super::{
    Admin, ApiError, AppState, Caller, JsonBody, Operator, Paging, Problem, QueryParams, if_match,
};
use crate::placement::{Options, PipelineSpec, PipelineView, PlaceError, Placed, SetError};
use crate::plugins::{LoadedPlugin, RegistryError};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementBody {
    pub request: PlacementRequest,
    /// Decide and explain without claiming anything [default: false].
    #[serde(default)]
    pub dry_run: bool,
    /// Hosts not to choose, by id (a migration's source).
    #[serde(default)]
    pub exclude_hosts: Vec<String>,
    /// What the claim is for, e.g. a deployment's id.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Make the claim confirmed at once instead of pending for the claim TTL [default: false].
    #[serde(default)]
    pub confirmed: bool,
}

/// Chooses a host for a VM through the placement pipeline and claims its resources there, in
/// one step. The answer explains the choice: how many hosts fit, why the others did not, the
/// chosen host's score plugin by plugin, and the runners-up. When no host fits, the problem
/// (422, `no-host`) carries the same explanation under `placement`, with the closest host and
/// all it lacks.
#[utoipa::path(post, path = "/v1/placements", tag = "placement", security(("bearer" = [])),
    request_body = PlacementBody,
    responses((status = 201, body = Placed, description = "Placed and claimed"),
        (status = 200, body = Placed, description = "A dry run: where it would go"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem, description = "No host fits, or the request is invalid"),
        (status = 503, body = Problem, description = "Other servers kept taking the chosen hosts; try again"),
        (status = 500, body = Problem, description = "A plugin failed the decision; the problem names it")))]
pub async fn place(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    JsonBody(body): JsonBody<PlacementBody>,
) -> Result<(StatusCode, Json<Placed>), ApiError> {
    if body.exclude_hosts.len() > 1024 {
        return Err(ApiError::BadRequest(
            "exclude_hosts names more than 1024 hosts".into(),
        ));
    }
    let options = Options {
        dry_run: body.dry_run,
        exclude: body.exclude_hosts,
        owner: caller.token.id.clone(),
        purpose: body.purpose,
        confirmed: body.confirmed,
    };
    let placed = app
        .placement
        .place(&body.request, &options)
        .await
        .map_err(|e| match e {
            PlaceError::NoHost(explanation) => ApiError::NoHost(explanation),
            PlaceError::Plugin(e) => ApiError::PluginFailed(e.to_string()),
            PlaceError::Invalid(detail) => ApiError::BadRequest(detail),
            PlaceError::Contended(detail) => ApiError::Busy(detail),
            PlaceError::Internal(detail) => ApiError::Internal(detail),
            PlaceError::Store(e) => e.into(),
        })?;
    if let Some(claim) = &placed.claim {
        app.events
            .notify("claim", &claim.id, "created", serde_json::json!(claim))
            .await;
        Ok((StatusCode::CREATED, Json(placed)))
    } else {
        Ok((StatusCode::OK, Json(placed)))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ClaimQuery {
    /// Only the claims on this host (id).
    pub host: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Lists claims.
#[utoipa::path(get, path = "/v1/claims", tag = "placement", security(("bearer" = [])),
    params(ClaimQuery),
    responses((status = 200, body = Page<Claim>), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn list_claims(
    _: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(q): QueryParams<ClaimQuery>,
) -> Result<Json<Page<Claim>>, ApiError> {
    let paging = Paging {
        limit: q.limit,
        after: q.after,
    };
    Ok(Json(
        app.store
            .list_claims(q.host.as_deref(), &paging.request())
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/claims/{id}", tag = "placement", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Claim), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_claim(
    _: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Claim>, ApiError> {
    Ok(Json(app.store.claim_record(&id).await?))
}

/// Confirms a pending claim, so that it no longer expires (a deployment started).
#[utoipa::path(post, path = "/v1/claims/{id}/confirm", tag = "placement", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Claim), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn confirm_claim(
    _: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Claim>, ApiError> {
    let claim = app.store.confirm_claim(&id).await?;
    app.events
        .notify("claim", &claim.id, "confirmed", serde_json::json!(claim))
        .await;
    Ok(Json(claim))
}

/// Releases a claim, giving its resources back to the host.
#[utoipa::path(delete, path = "/v1/claims/{id}", tag = "placement", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Claim), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn release_claim(
    _: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Claim>, ApiError> {
    let claim = app.placement.release(&id).await?;
    app.events
        .notify("claim", &claim.id, "released", serde_json::json!(claim))
        .await;
    Ok(Json(claim))
}

/// The placement pipeline: its steps as configured, and the plugin versions that run.
#[utoipa::path(get, path = "/v1/placement/pipeline", tag = "placement", security(("bearer" = [])),
    responses((status = 200, body = PipelineView), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn get_pipeline(_: Caller<Operator>, State(app): State<AppState>) -> Json<PipelineView> {
    Json(app.placement.view())
}

/// Replaces the placement pipeline: which plugins, in which order, their weights and
/// configuration. Checked whole (every plugin loaded with its configuration) before it takes
/// effect; decisions in flight finish on the pipeline they started with. `If-Match` with the
/// revision guards against overwriting someone else's change.
#[utoipa::path(put, path = "/v1/placement/pipeline", tag = "placement", security(("bearer" = [])),
    request_body = PipelineSpec,
    responses((status = 200, body = PipelineView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem)))]
pub async fn set_pipeline(
    caller: Caller<Admin>,
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(spec): JsonBody<PipelineSpec>,
) -> Result<Json<PipelineView>, ApiError> {
    if spec.steps.len() > 32 {
        return Err(ApiError::invalid(vec![slipway_core::FieldError::new(
            "steps",
            format!("{} steps; at most 32 are accepted", spec.steps.len()),
        )]));
    }
    let view = app
        .placement
        .set_pipeline(spec, if_match(&headers)?)
        .await
        .map_err(set_error)?;
    tracing::info!(revision = view.revision, running = ?view.running, by = %caller.token.name, "placement pipeline set");
    app.events
        .notify(
            "placement",
            "pipeline",
            "updated",
            serde_json::json!({ "revision": view.revision, "running": view.running }),
        )
        .await;
    Ok(Json(view))
}

fn set_error(e: SetError) -> ApiError {
    match e {
        SetError::Spec(e) => ApiError::invalid(vec![slipway_core::FieldError::new(
            e.field(),
            e.to_string(),
        )]),
        SetError::Registry(RegistryError::NotFound(name)) => {
            ApiError::NotFound(format!("no plugin is named {name}"))
        }
        SetError::Registry(e @ RegistryError::NotInstalled(_)) => ApiError::InUse(e.to_string()),
        SetError::Registry(e @ RegistryError::Io { .. }) => ApiError::internal(e),
        SetError::Registry(e) => ApiError::invalid(vec![slipway_core::FieldError::new(
            "component",
            e.to_string(),
        )]),
        SetError::Store(e) => e.into(),
        SetError::Internal(e) => ApiError::Internal(e),
    }
}

/// Installs a plugin, or replaces one of the same name, without a restart: a multipart body
/// with a `manifest` part (the plugin.toml) and a `component` part (the .wasm). The plugin is
/// loaded and checked, and the pipeline rebuilt with it, before anything changes; decisions in
/// flight finish on the version they started with.
#[utoipa::path(put, path = "/v1/plugins/{name}", tag = "plugins", security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body(content_type = "multipart/form-data", description = "`manifest` (TOML) and `component` (WebAssembly)"),
    responses((status = 201, body = LoadedPlugin, description = "Installed"),
        (status = 200, body = LoadedPlugin, description = "Replaced"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn install_plugin(
    caller: Caller<Admin>,
    State(app): State<AppState>,
    Path(name): Path<String>,
    mut form: Multipart,
) -> Result<(StatusCode, Json<LoadedPlugin>), ApiError> {
    let mut manifest = None;
    let mut component = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("the multipart body: {}", e.body_text())))?
    {
        let part = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "the plugin exceeds {} bytes",
                    slipway_runtime::package::MAX_COMPONENT_BYTES
                ))
            } else {
                ApiError::BadRequest(format!("part {part}: {}", e.body_text()))
            }
        })?;
        match part.as_str() {
            "manifest" => {
                manifest = Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::invalid(vec![slipway_core::FieldError::new(
                        "manifest",
                        "is not UTF-8 text",
                    )])
                })?)
            }
            "component" => component = Some(bytes.to_vec()),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unexpected part {other:?}: send `manifest` and `component`"
                )));
            }
        }
    }
    let (Some(manifest), Some(component)) = (manifest, component) else {
        return Err(ApiError::BadRequest(
            "send two parts: `manifest` (plugin.toml) and `component` (the .wasm)".into(),
        ));
    };
    let (entry, previous) = app
        .placement
        .install_plugin(name, manifest, component)
        .await
        .map_err(set_error)?;
    let listed = entry.listed();
    tracing::info!(plugin = %listed.name, version = %listed.version, replaced = previous.is_some(), by = %caller.token.name, "plugin installed");
    app.events
        .notify(
            "plugin",
            &listed.name,
            if previous.is_some() {
                "replaced"
            } else {
                "installed"
            },
            serde_json::json!({ "version": listed.version, "sha256": listed.sha256 }),
        )
        .await;
    let status = if previous.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(listed)))
}

/// Removes an installed plugin; a bundled plugin of the same name, if any, takes its place.
/// Refused while an enabled pipeline step needs it.
#[utoipa::path(delete, path = "/v1/plugins/{name}", tag = "plugins", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = LoadedPlugin), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn remove_plugin(
    caller: Caller<Admin>,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<LoadedPlugin>, ApiError> {
    let removed = app
        .placement
        .remove_plugin(name)
        .await
        .map_err(|e| match e {
            SetError::Registry(RegistryError::Plugin(p)) => ApiError::InUse(p.to_string()),
            other => set_error(other),
        })?;
    let listed = removed.listed();
    tracing::info!(plugin = %listed.name, by = %caller.token.name, "plugin removed");
    app.events
        .notify(
            "plugin",
            &listed.name,
            "removed",
            serde_json::json!({ "version": listed.version }),
        )
        .await;
    Ok(Json(listed))
}
