//! Plans: what a VM request would become, without deploying or claiming anything; and the
//! validator plugins that apply the site's policy to requests.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::Value;

use super::{Admin, ApiError, AppState, Caller, JsonBody, Operator, Problem, if_match};
use crate::plan::{Plan, PlanError};
use crate::validators::{ValidatorsError, ValidatorsSpec, ValidatorsView};

/// A VM request, as JSON. Every field is optional; absent means "no preference" (the chosen
/// staged VM's value for hardware, any for the OS). Sizes are MiB numbers or strings with a
/// binary unit (`"8GiB"`).
///
/// ```json
/// {"hardware": {"vcpus": 2, "memory": "4GiB", "disks": [{"size": "20GiB", "bus": "virtio"}],
///               "nics": [{"model": "virtio", "network": "front"}], "firmware": "bios", "arch": "x86_64"},
///  "os": {"family": "linux", "distro": "debian", "version": "12"},
///  "applications": ["nginx", {"name": "redis", "version": "7.0"}],
///  "networks": ["front"],
///  "placement": {"labels": {"rack": "b"}, "anti_affinity_group": "web", "host": "node-1"},
///  "hostname_pattern": "web-{n}", "count": 3}
/// ```
#[derive(utoipa::ToSchema)]
#[schema(value_type = Object)]
pub struct VmRequestBody(#[allow(dead_code)] Value);

/// Plans a VM request without deploying or claiming anything: every finding of the three
/// validation layers (schema, consistency with the catalog and the hosts, the site's validator
/// plugins), the staged VM chosen with its score criterion by criterion and the runner-up, the
/// apps to install at first boot, the host the placement pipeline would choose with its
/// explanation, and the identity each VM would get. A request with error findings is answered
/// 422 (`invalid-request`) with all of them at once, and the plan as far as it goes; warnings
/// never block.
#[utoipa::path(post, path = "/v1/plans", tag = "requests", security(("bearer" = [])),
    request_body = VmRequestBody,
    responses((status = 200, body = Plan, description = "The request can be met, as planned"),
        (status = 400, body = Problem, description = "The body is not JSON"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem, description = "Findings block the request: `findings` has them all, `plan` the rest"),
        (status = 500, body = Problem, description = "A placement plugin failed the dry run; the problem names it")))]
pub async fn create_plan(
    caller: Caller<super::Requester>,
    State(app): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Plan>, ApiError> {
    let plan = app
        .planner
        .plan(&body, caller.token.role, &caller.token.id)
        .await
        .map_err(|e| match e {
            PlanError::Store(e) => e.into(),
            PlanError::Plugin(e) => ApiError::PluginFailed(e),
            PlanError::Internal(e) => ApiError::Internal(e),
        })?;
    if plan.valid {
        Ok(Json(plan))
    } else {
        Err(ApiError::InvalidRequest(Box::new(plan)))
    }
}

/// The validator plugins that run on every request, with their configuration (the site's
/// policy), and the versions that run.
#[utoipa::path(get, path = "/v1/validation/validators", tag = "requests", security(("bearer" = [])),
    responses((status = 200, body = ValidatorsView), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn get_validators(
    _: Caller<Operator>,
    State(app): State<AppState>,
) -> Result<Json<ValidatorsView>, ApiError> {
    Ok(Json(
        app.planner
            .validators()
            .view()
            .await
            .map_err(validators_error)?,
    ))
}

/// Replaces the validators: which validation plugins run on requests and with what policy.
/// Each is loaded with its configuration before anything changes. `If-Match` with the revision
/// guards against overwriting someone else's change.
#[utoipa::path(put, path = "/v1/validation/validators", tag = "requests", security(("bearer" = [])),
    request_body = ValidatorsSpec,
    responses((status = 200, body = ValidatorsView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem)))]
pub async fn set_validators(
    caller: Caller<Admin>,
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(spec): JsonBody<ValidatorsSpec>,
) -> Result<Json<ValidatorsView>, ApiError> {
    if spec.validators.len() > 32 {
        return Err(ApiError::invalid(vec![slipway_core::FieldError::new(
            "validators",
            format!(
                "{} validators; at most 32 are accepted",
                spec.validators.len()
            ),
        )]));
    }
    let view = app
        .planner
        .validators()
        .set(spec, if_match(&headers)?)
        .await
        .map_err(validators_error)?;
    tracing::info!(revision = view.revision, running = ?view.running, by = %caller.token.name, "validators set");
    app.events
        .notify(
            "validation",
            "validators",
            "updated",
            serde_json::json!({ "revision": view.revision, "running": view.running }),
        )
        .await;
    Ok(Json(view))
}

fn validators_error(e: ValidatorsError) -> ApiError {
    match e {
        ValidatorsError::Store(e) => e.into(),
        ValidatorsError::Internal(e) => ApiError::Internal(e),
        e @ ValidatorsError::Unknown { .. } => ApiError::NotFound(e.to_string()),
        e => ApiError::invalid(vec![slipway_core::FieldError::new(
            e.field(),
            e.to_string(),
        )]),
    }
}
