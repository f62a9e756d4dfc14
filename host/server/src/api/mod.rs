//! The HTTP API, versioned under `/v1`.
//!
//! Every handler carries its OpenAPI description (`#[utoipa::path]`) and is registered through
//! `utoipa_axum`, so the document served at `/v1/openapi.json` is generated from the routes that
//! exist; `host/server/openapi.json` is its committed copy, and a test fails when they differ.
//!
//! Authentication is a bearer token checked by the [`Caller`] extractor before anything else of
//! the request is read: a missing or unknown token is 401, a token without the role the route needs
//! is 403, in both cases before the handler looks anything up, so neither answer says whether the
//! resource exists. JSON bodies go through [`JsonBody`], which answers in the API's own problem
//! format with the path of the field at fault.

mod catalog;
mod error;
mod hosts;
mod images;
mod jobs;
mod placement;
mod plans;
mod seed;
mod staged;
pub mod system;
mod tokens;
mod vms;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use slipway_core::catalog::FieldError;
use slipway_core::resources::{Role, Token};
use slipway_store::PageRequest;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, Problem};

use crate::App;

pub type AppState = Arc<App>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Slipway",
        description = "Provision virtual machines from a catalog of model VMs. Every error is an \
                       application/problem+json document with a stable `type`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "system", description = "Health and the API's own description"),
        (name = "tokens", description = "API tokens (admin)"),
        (name = "images", description = "The content-addressed image store (operator)"),
        (name = "applications", description = "Applications and how to install them"),
        (name = "model-vms", description = "Model VMs: the catalog staging starts from (operator)"),
        (name = "jobs", description = "Long operations and the event stream (operator)"),
        (name = "plugins", description = "Plugins: listed, installed and removed at run time (admin)"),
        (name = "hosts", description = "The host inventory and join tokens"),
        (name = "agent", description = "The agent protocol: how hosts join and heartbeat (host credentials)"),
        (name = "placement", description = "Placement decisions, claims, and the pipeline of placement plugins"),
        (name = "requests", description = "VM requests: validation with suggestions, the staged VM chosen, plans"),
        (name = "deployments", description = "Deployments and their VMs: deploy, follow, stop, start, console, delete"),
        (name = "seed", description = "What deployed guests fetch at first boot (NoCloud-compatible), authorised by their seed token"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token from `slipway token create`"))
                    .build(),
            ),
        );
    }
}

/// The routes and their OpenAPI document, before state is attached.
fn routes(
    max_json_body: usize,
    request_timeout: Duration,
) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa_axum::routes;
    // Calls that answer promptly: bounded bodies and a deadline.
    let quick = OpenApiRouter::new()
        .routes(routes!(system::health))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(images::list_images))
        .routes(routes!(images::get_image, images::delete_image))
        .routes(routes!(
            catalog::create_application,
            catalog::list_applications
        ))
        .routes(routes!(
            catalog::get_application,
            catalog::replace_application,
            catalog::delete_application
        ))
        .routes(routes!(catalog::create_model_vm, catalog::list_model_vms))
        .routes(routes!(
            catalog::get_model_vm,
            catalog::replace_model_vm,
            catalog::delete_model_vm
        ))
        .routes(routes!(staged::list_staged_vms))
        .routes(routes!(staged::get_staged_vm, staged::delete_staged_vm))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(system::list_plugins))
        .routes(routes!(hosts::create_join_token, hosts::list_join_tokens))
        .routes(routes!(hosts::revoke_join_token))
        .routes(routes!(hosts::join))
        .routes(routes!(hosts::heartbeat))
        .routes(routes!(hosts::list_hosts))
        .routes(routes!(
            hosts::get_host,
            hosts::update_host,
            hosts::delete_host
        ))
        .routes(routes!(placement::place))
        .routes(routes!(placement::list_claims))
        .routes(routes!(placement::get_claim, placement::release_claim))
        .routes(routes!(placement::confirm_claim))
        .routes(routes!(placement::get_pipeline, placement::set_pipeline))
        .routes(routes!(placement::remove_plugin))
        .routes(routes!(plans::create_plan))
        .routes(routes!(plans::get_validators, plans::set_validators))
        .routes(routes!(vms::get_deployment))
        .routes(routes!(vms::list_vms))
        .routes(routes!(vms::get_vm, vms::delete_vm))
        .routes(routes!(vms::stop_vm))
        .routes(routes!(vms::start_vm))
        .routes(routes!(vms::console))
        .routes(routes!(seed::seed_file))
        .routes(routes!(seed::seed_ready))
        .layer(DefaultBodyLimit::max(max_json_body))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| async move {
                match tokio::time::timeout(request_timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => ApiError::Timeout(request_timeout.as_secs()).into_response(),
                }
            },
        ));
    // Calls that stream (an upload's body, event streams) or may wait for a job (an import with
    // `wait`): limits of their own instead of the deadline.
    let streaming = OpenApiRouter::new()
        .routes(routes!(images::upload_image))
        .routes(routes!(images::import_image))
        // With `wait=true` staging answers when the job ends, which outlasts the deadline.
        .routes(routes!(staged::create_staged_vm))
        .routes(routes!(jobs::job_events))
        // With `wait=true` a deployment answers when its VMs are ready; artifacts stream.
        .routes(routes!(vms::deploy))
        .routes(routes!(seed::seed_artifact))
        .routes(routes!(jobs::events));
    // A plugin is a few MiB of WebAssembly: more than a JSON body, read whole to check it.
    let plugins = OpenApiRouter::new()
        .routes(routes!(placement::install_plugin))
        .layer(DefaultBodyLimit::max(MAX_PLUGIN_UPLOAD));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(quick)
        .merge(streaming)
        .merge(plugins)
        .split_for_parts()
}

/// The largest plugin upload (manifest and component together).
pub const MAX_PLUGIN_UPLOAD: usize = 64 << 20;

/// The OpenAPI document, as generated from the routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes(1, Duration::from_secs(1)).1
}

/// The whole API, ready to serve.
pub fn router(app: AppState) -> Router {
    let (router, doc) = routes(app.config.max_json_body, app.config.request_timeout);
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_default());
    router
        // Prometheus scrapes without a token, like /v1/health; bind to loopback or a private
        // network (the default listens on loopback only).
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(app): axum::extract::State<AppState>| async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        app.metrics.render(&app.inventory),
                    )
                },
            ),
        )
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], (*doc).clone()) }
            }),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(app)
}

/// The marker types of [`Caller`]: the least role a route needs.
pub trait MinRole: Send + Sync + 'static {
    const ROLE: Role;
}
pub struct Admin;
pub struct Operator;
pub struct Requester;
impl MinRole for Admin {
    const ROLE: Role = Role::Admin;
}
impl MinRole for Operator {
    const ROLE: Role = Role::Operator;
}
impl MinRole for Requester {
    const ROLE: Role = Role::Requester;
}

/// The authenticated caller of a route that needs at least role `R`.
pub struct Caller<R: MinRole> {
    pub token: Token,
    _role: PhantomData<R>,
}

impl<R: MinRole> FromRequestParts<AppState> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthorized("no bearer token: send `Authorization: Bearer <token>`".into())
        })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header is not `Bearer <token>`".into())
            })?;
        let token = app
            .store
            .authenticate(secret)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the token is unknown or revoked".into()))?;
        if token.role < R::ROLE {
            return Err(ApiError::Forbidden {
                needed: R::ROLE,
                has: token.role,
            });
        }
        Ok(Self {
            token,
            _role: PhantomData,
        })
    }
}

/// A JSON body whose errors are problems: 415 without a JSON content type, 413 when too large, 400
/// when not JSON, 422 with the field's path when JSON of the wrong shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON, with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = bytes::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge("the JSON body exceeds the server's limit".into())
                } else {
                    ApiError::BadRequest(rejection.body_text())
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Most bodies are valid: parse them plainly, and pay for tracking the path (a tenth of a
    // heartbeat's cost) only to explain a body that is not.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::invalid(vec![FieldError::new(
                if path == "." { String::new() } else { path },
                strip_position(&inner.to_string()),
            )]),
            _ => ApiError::MalformedJson(format!("the body is not JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::MalformedJson(format!("the body is not JSON: {e}")))?;
    Ok(value)
}

/// serde_json appends " at line 1 column 42" to data errors; the field path says it better.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Query parameters whose errors are problems too.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded_deserializer(query);
        de.map(QueryParams)
    }
}

fn serde_urlencoded_deserializer<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::BadRequest("the query string is not valid".into()))?,
    )
    .map(|q| q.0)
    .map_err(|e| ApiError::BadRequest(format!("in the query string: {}", e.body_text())))
}

/// `?limit=&after=` on every listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page, 1 to 500 [default: 100].
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

impl Paging {
    pub fn request(&self) -> PageRequest {
        PageRequest {
            after: self.after.clone(),
            limit: self.limit.unwrap_or(100),
        }
    }
}

/// Parses `If-Match: "<revision>"` (or a bare number).
pub fn if_match(headers: &axum::http::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::BadRequest(format!(
            "If-Match must name a revision, as the ETag of a GET does; got {text:?}"
        ))
    })
}

/// `ETag: "<revision>"` for a resource with revisions.
pub fn etag(revision: u64) -> [(header::HeaderName, String); 1] {
    [(header::ETAG, format!("\"{revision}\""))]
}
