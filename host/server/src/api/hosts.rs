//! Hosts: join tokens (admin), the agent protocol (join with a join token, heartbeat with the
//! host's credential), and the inventory (listing, modes, removal).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use slipway_core::FieldError;
use slipway_core::agent::{
    Heartbeat, HeartbeatAck, HostMode, HostReport, HostState, JoinRequest, JoinResponse,
};
use slipway_core::catalog::check_name;
use slipway_core::host::{Host, JoinToken};
use slipway_core::resources::{Page, Timestamp};
use slipway_store::{NewHost, StoreError};
use utoipa::{IntoParams, ToSchema};

use super::{Admin, ApiError, AppState, Caller, JsonBody, Operator, Problem, QueryParams};
use crate::inventory::{HeartbeatRefused, sha256_hex};
use crate::monitor::publish;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// What the token is for, e.g. `rack-12`.
    pub name: String,
    /// Labels every host that joins with it gets (the agent's own labels win on conflict).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many hosts may join with it [default: no limit].
    #[serde(default)]
    pub uses: Option<u32>,
    /// Seconds it stays valid [default: until revoked].
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// A new join token with its secret, which is shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedJoinToken {
    pub token: JoinToken,
    pub secret: String,
}

/// Creates a join token: what an agent needs to join this server as a host.
#[utoipa::path(post, path = "/v1/join-tokens", tag = "hosts", security(("bearer" = [])),
    request_body = NewJoinToken,
    responses((status = 201, body = CreatedJoinToken), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_join_token(
    caller: Caller<Admin>,
    State(app): State<AppState>,
    JsonBody(body): JsonBody<NewJoinToken>,
) -> Result<(StatusCode, Json<CreatedJoinToken>), ApiError> {
    let mut errors = Vec::new();
    check_name("name", &body.name, &mut errors);
    check_labels("labels", &body.labels, &mut errors);
    if body.ttl_s == Some(0) {
        errors.push(FieldError::new("ttl_s", "must be at least 1 second"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let expires_at = body.ttl_s.map(|s| {
        Timestamp(
            Timestamp::now()
                .0
                .saturating_add(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)),
        )
    });
    let (token, secret) = app
        .store
        .create_join_token(&body.name, &body.labels, body.uses, expires_at)
        .await?;
    tracing::info!(token = %token.id, name = %token.name, by = %caller.token.name, "join token created");
    app.events
        .notify(
            "join_token",
            &token.id,
            "created",
            serde_json::json!({ "name": token.name }),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedJoinToken { token, secret }),
    ))
}

/// Lists join tokens, revoked ones included; never their secrets.
#[utoipa::path(get, path = "/v1/join-tokens", tag = "hosts", security(("bearer" = [])),
    responses((status = 200, body = Vec<JoinToken>), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn list_join_tokens(
    _: Caller<Admin>,
    State(app): State<AppState>,
) -> Result<Json<Vec<JoinToken>>, ApiError> {
    Ok(Json(app.store.list_join_tokens().await?))
}

/// Revokes a join token. Hosts that joined with it stay.
#[utoipa::path(delete, path = "/v1/join-tokens/{id}", tag = "hosts", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = JoinToken), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_join_token(
    _: Caller<Admin>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JoinToken>, ApiError> {
    Ok(Json(app.store.revoke_join_token(&id).await?))
}

/// An agent joins: with a join token, it becomes a host (or, with an agent id already known,
/// the same host again) and receives the credential of its heartbeats.
#[utoipa::path(post, path = "/v1/agent/join", tag = "agent",
    request_body = JoinRequest,
    responses((status = 201, body = JoinResponse, description = "A new host"),
        (status = 200, body = JoinResponse, description = "A known host, joined again"),
        (status = 401, body = Problem, description = "The join token is not valid"),
        (status = 409, body = Problem, description = "Another host has the name"),
        (status = 422, body = Problem)))]
pub async fn join(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<JoinRequest>,
) -> Result<(StatusCode, Json<JoinResponse>), ApiError> {
    let mut errors = Vec::new();
    check_text("agent_id", &body.agent_id, 8, 128, &mut errors);
    check_host_name(&body.name, &mut errors);
    check_url("agent_url", &body.agent_url, &mut errors);
    check_text("agent_secret", &body.agent_secret, 16, 256, &mut errors);
    check_report("report", &body.report, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let capacity = app.inventory.policy().ratios.capacity(&body.report);
    let (record, credential, created) = app
        .store
        .join_host(&NewHost {
            join_secret: &body.join_token,
            agent_id: &body.agent_id,
            name: &body.name,
            agent_url: &body.agent_url,
            agent_secret: &body.agent_secret,
            report: &body.report,
            capacity,
        })
        .await
        .map_err(|e| match e {
            StoreError::Refused(detail) => ApiError::Unauthorized(detail),
            other => other.into(),
        })?;
    let host_id = record.id.clone();
    let name = record.name.clone();
    let transition = app.inventory.joined(record);
    tracing::info!(host = %name, id = %host_id, created, "host joined");
    app.events
        .notify(
            "host",
            &host_id,
            if created { "joined" } else { "rejoined" },
            serde_json::json!({ "name": name }),
        )
        .await;
    if let Some(t) = transition {
        publish(&app, &t).await;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(JoinResponse {
            host_id,
            credential,
            heartbeat_interval_ms: interval_ms(&app),
            created,
        }),
    ))
}

fn interval_ms(app: &AppState) -> u64 {
    u64::try_from(app.config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX)
}

/// A host's heartbeat, authenticated by its credential. Each must carry a larger `seq` than
/// the last: one sent again is refused.
#[utoipa::path(post, path = "/v1/agent/heartbeat", tag = "agent", security(("bearer" = [])),
    request_body = Heartbeat,
    responses((status = 200, body = HeartbeatAck),
        (status = 401, body = Problem, description = "Not a host's credential: join again"),
        (status = 409, body = Problem, description = "A replayed heartbeat"),
        (status = 422, body = Problem)))]
pub async fn heartbeat(
    State(app): State<AppState>,
    HostCredential(credential): HostCredential,
    JsonBody(body): JsonBody<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let mut errors = Vec::new();
    check_report("report", &body.report, &mut errors);
    if let Some(url) = &body.agent_url {
        check_url("agent_url", url, &mut errors);
    }
    if !errors.is_empty() {
        app.metrics.heartbeat("invalid");
        return Err(ApiError::invalid(errors));
    }
    match app.inventory.heartbeat(&credential, body) {
        Ok(accepted) => {
            app.metrics.heartbeat("accepted");
            if let Some(t) = &accepted.transition {
                publish(&app, t).await;
            }
            Ok(Json(HeartbeatAck {
                host_id: accepted.host,
                heartbeat_interval_ms: interval_ms(&app),
                mode: accepted.mode,
            }))
        }
        Err(e @ HeartbeatRefused::UnknownCredential) => {
            app.metrics.heartbeat("unknown_credential");
            Err(ApiError::Unauthorized(format!("{e}: join again")))
        }
        Err(e @ HeartbeatRefused::Replayed { .. }) => {
            app.metrics.heartbeat("replayed");
            Err(ApiError::Replayed(e.to_string()))
        }
    }
}

/// A host's bearer credential (as its sha256), checked before the body is read: a heartbeat
/// without a host's credential is refused unread. The inventory knows the credentials (in
/// memory, so that a fleet's heartbeats never wait on the database).
pub struct HostCredential(String);

impl FromRequestParts<AppState> for HostCredential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let credential = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let Some(credential) = credential else {
            app.metrics.heartbeat("unknown_credential");
            return Err(ApiError::Unauthorized(
                "no bearer credential: send `Authorization: Bearer <the credential the join gave>`"
                    .into(),
            ));
        };
        let hash = sha256_hex(credential);
        if !app.inventory.knows(&hash) {
            app.metrics.heartbeat("unknown_credential");
            return Err(ApiError::Unauthorized(
                "the credential is not one of a host's: join again".into(),
            ));
        }
        Ok(Self(hash))
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HostQuery {
    /// Only hosts in this state: `ready`, `draining`, `maintenance`, `unreachable`.
    pub state: Option<String>,
    /// Only hosts with this label, `key=value`.
    pub label: Option<String>,
    /// Only hosts whose name contains this.
    pub name: Option<String>,
    /// Items per page, 1 to 500 [default: 100].
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

/// Lists the inventory, live: each host's state, capacity, claims and last report.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", security(("bearer" = [])),
    params(HostQuery),
    responses((status = 200, body = Page<Host>), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_hosts(
    _: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(q): QueryParams<HostQuery>,
) -> Result<Json<Page<Host>>, ApiError> {
    let state = q
        .state
        .as_deref()
        .map(|s| {
            HostState::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "state {s:?} is not one of ready, draining, maintenance, unreachable"
                ))
            })
        })
        .transpose()?;
    let label = q
        .label
        .as_deref()
        .map(|l| {
            l.split_once('=').ok_or_else(|| {
                ApiError::BadRequest(format!("label {l:?} must be written key=value"))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 500) as usize;
    // One more than the page tells whether another page follows.
    let mut hosts = app.inventory.hosts(q.after.as_deref(), limit + 1, |h| {
        state.is_none_or(|s| h.state == s)
            && label.is_none_or(|(k, v)| h.report.labels.get(k).is_some_and(|hv| hv == v))
            && q.name.as_deref().is_none_or(|n| h.name.contains(n))
    });
    let next = if hosts.len() > limit {
        hosts.truncate(limit);
        hosts.last().map(|h| h.id.clone())
    } else {
        None
    };
    Ok(Json(Page { items: hosts, next }))
}

/// One host, by id or name.
#[utoipa::path(get, path = "/v1/hosts/{id}", tag = "hosts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The host's id or name")),
    responses((status = 200, body = Host), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_host(
    _: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Host>, ApiError> {
    find(&app, &id).map(Json)
}

fn find(app: &AppState, id: &str) -> Result<Host, ApiError> {
    app.inventory
        .host(id)
        .ok_or_else(|| ApiError::NotFound(format!("host {id} does not exist")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostChange {
    /// `active` takes new VMs; `draining` and `maintenance` take none.
    pub mode: HostMode,
}

/// Sets a host's mode: drain it or put it in maintenance (no new placements), or make it
/// active again.
#[utoipa::path(patch, path = "/v1/hosts/{id}", tag = "hosts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The host's id or name")),
    request_body = HostChange,
    responses((status = 200, body = Host), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update_host(
    caller: Caller<Admin>,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<HostChange>,
) -> Result<Json<Host>, ApiError> {
    let host = find(&app, &id)?;
    app.store.set_host_mode(&host.id, body.mode).await?;
    let transition = app.inventory.set_mode(&host.id, body.mode);
    tracing::info!(host = %host.name, mode = body.mode.as_str(), by = %caller.token.name, "host mode set");
    app.events
        .notify(
            "host",
            &host.id,
            "mode_changed",
            serde_json::json!({ "name": host.name, "from": host.mode, "to": body.mode }),
        )
        .await;
    if let Some(t) = transition {
        publish(&app, &t).await;
    }
    find(&app, &host.id).map(Json)
}

/// Removes a host without claims. Its agent is refused from then on, and joins again if it still
/// has a valid join token.
#[utoipa::path(delete, path = "/v1/hosts/{id}", tag = "hosts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The host's id or name")),
    responses((status = 200, body = Host), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Claims remain on the host")))]
pub async fn delete_host(
    caller: Caller<Admin>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Host>, ApiError> {
    let host = find(&app, &id)?;
    app.store.delete_host(&host.id).await?;
    app.inventory.remove(&host.id);
    tracing::info!(host = %host.name, by = %caller.token.name, "host removed");
    app.events
        .notify(
            "host",
            &host.id,
            "deleted",
            serde_json::json!({ "name": host.name }),
        )
        .await;
    Ok(Json(host))
}

/// Labels as a site writes them: short keys and values, a bounded number.
fn check_labels(field: &str, labels: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    if labels.len() > 64 {
        errors.push(FieldError::new(
            field,
            format!("{} labels; at most 64 are accepted", labels.len()),
        ));
        return;
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !key_ok {
            errors.push(FieldError::new(
                format!("{field}.{k}"),
                "a label key is 1 to 63 characters: letters, digits, `-`, `_`, `.`, `/`",
            ));
        }
        if v.len() > 255 || v.chars().any(char::is_control) {
            errors.push(FieldError::new(
                format!("{field}.{k}"),
                "a label value is at most 255 characters, without control characters",
            ));
        }
    }
}

fn check_text(field: &str, value: &str, min: usize, max: usize, errors: &mut Vec<FieldError>) {
    if value.len() < min || value.len() > max || value.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            format!("must be {min} to {max} characters, without control characters"),
        ));
    }
}

/// A host name: what DNS accepts.
fn check_host_name(name: &str, errors: &mut Vec<FieldError>) {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && !part.starts_with('-')
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        errors.push(FieldError::new(
            "name",
            "must be a DNS host name: dot-separated labels of letters, digits and `-`",
        ));
    }
}

fn check_url(field: &str, url: &str, errors: &mut Vec<FieldError>) {
    let ok = url.len() <= 2048
        && url.parse::<axum::http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
    if !ok {
        errors.push(FieldError::new(
            field,
            "must be an http:// or https:// URL with a host",
        ));
    }
}

/// The bounds of a report: what one machine can plausibly say, so that a hostile agent cannot
/// make the inventory hold megabytes per host.
fn check_report(field: &str, r: &HostReport, errors: &mut Vec<FieldError>) {
    if r.cpus == 0 {
        errors.push(FieldError::new(
            format!("{field}.cpus"),
            "must be at least 1",
        ));
    }
    if r.memory_available_mib > r.memory_total_mib {
        errors.push(FieldError::new(
            format!("{field}.memory_available_mib"),
            "is more than memory_total_mib",
        ));
    }
    if r.disk_free_mib > r.disk_total_mib {
        errors.push(FieldError::new(
            format!("{field}.disk_free_mib"),
            "is more than disk_total_mib",
        ));
    }
    if r.vms.len() > 4096 {
        errors.push(FieldError::new(
            format!("{field}.vms"),
            format!("{} VMs; at most 4096 are accepted", r.vms.len()),
        ));
    }
    if r.vms.iter().any(|v| v.id.len() > 128) {
        errors.push(FieldError::new(
            format!("{field}.vms"),
            "a VM id is at most 128 characters",
        ));
    }
    check_text(
        &format!("{field}.agent_version"),
        &r.agent_version,
        1,
        64,
        errors,
    );
    if r.hypervisor.kvm.detail.len() > 1024
        || r.hypervisor
            .qemu
            .as_ref()
            .is_some_and(|q| q.path.len() > 4096 || q.version.len() > 64)
    {
        errors.push(FieldError::new(
            format!("{field}.hypervisor"),
            "is longer than a hypervisor's description can be",
        ));
    }
    check_labels(&format!("{field}.labels"), &r.labels, errors);
}
