//! API tokens: created with a role, listed without their secrets, revoked.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use slipway_core::catalog::{FieldError, check_name};
use slipway_core::resources::{Role, Token};
use utoipa::ToSchema;

use super::{Admin, ApiError, AppState, Caller, JsonBody, Problem};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Who or what the token is for, e.g. `ci` or `alice`.
    pub name: String,
    pub role: Role,
}

/// A new token with its secret, which is shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: Token,
    pub secret: String,
}

/// Creates a token.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_token(
    caller: Caller<Admin>,
    State(app): State<AppState>,
    JsonBody(body): JsonBody<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let mut errors: Vec<FieldError> = Vec::new();
    check_name("name", &body.name, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let (token, secret) = app.store.create_token(&body.name, body.role).await?;
    tracing::info!(token = %token.id, name = %token.name, role = %token.role, by = %caller.token.name, "token created");
    app.events
        .notify(
            "token",
            &token.id,
            "created",
            serde_json::json!({ "name": token.name, "role": token.role }),
        )
        .await;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Lists every token, revoked ones included; never their secrets.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses((status = 200, body = Vec<Token>), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn list_tokens(
    _: Caller<Admin>,
    State(app): State<AppState>,
) -> Result<Json<Vec<Token>>, ApiError> {
    Ok(Json(app.store.list_tokens().await?))
}

/// Revokes a token; it stops working at once.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", security(("bearer" = [])),
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 200, body = Token), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_token(
    caller: Caller<Admin>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Token>, ApiError> {
    let token = app.store.revoke_token(&id).await?;
    tracing::info!(token = %token.id, by = %caller.token.name, "token revoked");
    app.events
        .notify("token", &token.id, "revoked", serde_json::json!({}))
        .await;
    Ok(Json(token))
}
