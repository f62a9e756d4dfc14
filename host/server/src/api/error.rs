//! Errors as RFC 9457 problem details (`application/problem+json`): a stable `type` a client can
//! match on, a `title` per type, a `detail` for this occurrence, and for invalid bodies every field
//! at fault with its JSON path. Internal errors are logged with an id and answered without detail,
//! so nothing of the server's insides leaks.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use slipway_core::catalog::FieldError;
use slipway_core::resources::Role;
use slipway_store::StoreError;
use utoipa::ToSchema;

use crate::images::ImageError;
use crate::jobs::{error_chain, log_internal};
use crate::placement::Explanation;
use crate::plan::Plan;
use slipway_core::request::Finding;

/// A problem, as every error of the API is answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Stable, matchable: `urn:slipway:problem:<name>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For invalid bodies: each field at fault, with its JSON path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For failures of a job: the job, to read its events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// For a placement no host could take: why, host by host and reason by reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Box<Explanation>>,
    /// For a VM request that cannot be met: every finding, errors first, each with its field
    /// and, where one exists, a suggested value (`null`: remove the field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// For a VM request that cannot be met: the plan as far as it goes (the staged VM that
    /// comes closest, the hosts, the validators' runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Box<Plan>>,
}

/// Every way an API call fails.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("this needs the {needed} role; the token has the {has} role")]
    Forbidden { needed: Role, has: Role },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    StaleRevision(String),
    #[error("{0}")]
    MalformedJson(String),
    #[error("{detail}")]
    Invalid {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("this endpoint does not take that method")]
    MethodNotAllowed,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("step {step} failed: {message}")]
    JobFailed {
        job: String,
        step: String,
        message: String,
    },
    #[error("the request took longer than {0} s")]
    Timeout(u64),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Replayed(String),
    #[error("no host can take this VM: {}", .0.summary)]
    NoHost(Box<Explanation>),
    /// A VM request with error findings; the plan holds all of them.
    #[error("{}", request_summary(.0))]
    InvalidRequest(Box<Plan>),
    /// A seed token that is not a live VM's.
    #[error("this seed token is not valid")]
    SeedRefused,
    /// A host's agent failed what the server asked of it.
    #[error("{0}")]
    BadGateway(String),
    /// A plugin failed; the message names it. Not internal: the site needs to know which.
    #[error("{0}")]
    PluginFailed(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        ApiError::Invalid { detail, errors }
    }

    pub fn internal(e: impl std::error::Error) -> Self {
        ApiError::Internal(error_chain(&e))
    }

    fn kind(&self) -> (StatusCode, &'static str, &'static str) {
        use ImageError as I;
        match self {
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "No such resource"),
            ApiError::AlreadyExists(_) => {
                (StatusCode::CONFLICT, "already-exists", "Already exists")
            }
            ApiError::InUse(_) => (StatusCode::CONFLICT, "in-use", "In use"),
            ApiError::StaleRevision(_) => (
                StatusCode::PRECONDITION_FAILED,
                "stale-revision",
                "Changed since it was read",
            ),
            ApiError::MalformedJson(_) => {
                (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
            }
            ApiError::Invalid { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "The body is not valid",
            ),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Too large",
            ),
            ApiError::Image(e) => match e {
                I::Truncated { .. } | I::Interrupted { .. } => (
                    StatusCode::BAD_REQUEST,
                    "truncated-upload",
                    "The upload is incomplete",
                ),
                I::Idle(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    "upload-idle",
                    "The upload stalled",
                ),
                I::DigestMismatch { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "digest-mismatch",
                    "The content does not match its digest",
                ),
                I::TooLarge { .. } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "Too large",
                ),
                I::VirtualSizeTooLarge { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "virtual-size-too-large",
                    "The image claims too large a disk",
                ),
                I::Unsupported(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unsupported-image",
                    "The image is not accepted",
                ),
                I::Corrupt(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "corrupt-image",
                    "The image is damaged",
                ),
                I::NoSpace => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient-storage",
                    "The image store is full",
                ),
                I::ImportNotAllowed { .. } | I::Source { .. } | I::NotAFile { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "import-refused",
                    "The path cannot be imported",
                ),
                I::Cancelled => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting-down",
                    "The server is shutting down",
                ),
                I::QemuImg { .. } | I::Io(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                ),
            },
            ApiError::JobFailed { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "job-failed",
                "The job failed",
            ),
            ApiError::Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "The request took too long",
            ),
            ApiError::Busy(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "The server is busy",
            ),
            ApiError::Replayed(_) => (
                StatusCode::CONFLICT,
                "replayed",
                "Replayed: the sequence number did not increase",
            ),
            ApiError::NoHost(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "no-host",
                "No host can take this VM",
            ),
            ApiError::InvalidRequest(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request",
                "The VM request cannot be met as it is",
            ),
            ApiError::SeedRefused => (StatusCode::FORBIDDEN, "seed-refused", "Not allowed"),
            ApiError::BadGateway(_) => (
                StatusCode::BAD_GATEWAY,
                "agent-failed",
                "The host's agent failed",
            ),
            ApiError::PluginFailed(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "plugin-failed",
                "A plugin failed",
            ),
            ApiError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting-down",
                "The server is shutting down",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, name, title) = self.kind();
        let detail = match self {
            ApiError::Internal(message) => log_internal(message),
            ApiError::Image(e @ (ImageError::Io(_) | ImageError::QemuImg { .. })) => {
                log_internal(&error_chain(e))
            }
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::Invalid { errors, .. } => errors.clone(),
            ApiError::Image(
                e @ (ImageError::ImportNotAllowed { .. }
                | ImageError::Source { .. }
                | ImageError::NotAFile { .. }),
            ) => vec![FieldError::new("path", e.to_string())],
            _ => Vec::new(),
        };
        Problem {
            problem_type: format!("urn:slipway:problem:{name}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors,
            job: match self {
                ApiError::JobFailed { job, .. } => Some(job.clone()),
                _ => None,
            },
            placement: match self {
                ApiError::NoHost(explanation) => Some(explanation.clone()),
                _ => None,
            },
            findings: match self {
                ApiError::InvalidRequest(plan) => plan.findings.clone(),
                _ => Vec::new(),
            },
            plan: match self {
                ApiError::InvalidRequest(plan) => Some(plan.clone()),
                _ => None,
            },
        }
    }
}

/// "2 errors: hardware.memory: …; os.version: …" — the first few, for the `detail` line.
fn request_summary(plan: &Plan) -> String {
    let errors: Vec<&Finding> = plan.findings.iter().filter(|f| f.is_error()).collect();
    let shown: Vec<String> = errors
        .iter()
        .take(3)
        .map(|f| {
            if f.field.is_empty() {
                f.message.clone()
            } else {
                format!("{}: {}", f.field, f.message)
            }
        })
        .collect();
    let more = errors.len().saturating_sub(3);
    format!(
        "{} error{}: {}{}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        shown.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists(e.to_string()),
            StoreError::InUse { .. } | StoreError::Gone(_) => ApiError::InUse(e.to_string()),
            StoreError::StaleRevision { .. } => ApiError::StaleRevision(e.to_string()),
            StoreError::Dangling(errors) => ApiError::invalid(errors),
            other => ApiError::internal(other),
        }
    }
}
