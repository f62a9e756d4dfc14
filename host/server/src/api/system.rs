//! Health, and the plugins the server loaded.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Admin, ApiError, AppState, Caller};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` while the server serves; `shutting_down` once a shutdown has begun.
    pub status: String,
    pub version: String,
    /// The database schema's migration versions, oldest first.
    pub schema: Vec<i64>,
}

/// Whether the server is up; needs no token.
#[utoipa::path(get, path = "/v1/health", tag = "system",
    responses((status = 200, body = Health)))]
pub async fn health(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    Ok(Json(Health {
        status: if app.shutdown.is_cancelled() {
            "shutting_down"
        } else {
            "ok"
        }
        .to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        schema: app.store.schema_versions().await?,
    }))
}

pub use crate::plugins::LoadedPlugin;

/// Every plugin: bundled ones, and those installed through the API.
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", security(("bearer" = [])),
    responses((status = 200, body = Vec<LoadedPlugin>), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem)))]
pub async fn list_plugins(
    _: Caller<Admin>,
    State(app): State<AppState>,
) -> Json<Vec<LoadedPlugin>> {
    Json(app.plugins.list())
}
