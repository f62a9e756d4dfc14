//! The agent's own API, for the server's calls: health (open), the machine's status and its VMs
//! (with the secret the agent gave the server at join). The deploy work adds image transfer and
//! VM lifecycle here, behind the same check.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use slipway_core::agent::{HostReport, VmReport};

pub struct Shared {
    pub secret: String,
    pub data_dir: std::path::PathBuf,
    /// The report of the last heartbeat.
    pub latest: RwLock<Option<HostReport>>,
}

pub type AppState = Arc<Shared>;

pub fn router(shared: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/vms", get(vms))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "not-found", "no such endpoint") })
        .with_state(shared)
}

/// An `application/problem+json` answer, as the server gives them; `kind` completes the type.
fn problem(status: StatusCode, kind: &str, detail: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({
            "type": format!("urn:slipway:problem:{kind}"),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        })),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// A call from the server: it presents the secret the agent gave it at join.
pub struct FromServer;

impl FromRequestParts<AppState> for FromServer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, shared: &AppState) -> Result<Self, Response> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if constant_time_eq(presented.as_bytes(), shared.secret.as_bytes()) {
            Ok(FromServer)
        } else {
            Err(problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the agent's secret as `Authorization: Bearer <secret>`",
            ))
        }
    }
}

/// Compares without stopping at the first difference, so that timing tells nothing of the secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn status(_: FromServer, State(shared): State<AppState>) -> Response {
    let latest = shared
        .latest
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match latest {
        Some(report) => axum::Json(report).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not-found", "no report read yet"),
    }
}

async fn vms(_: FromServer, State(shared): State<AppState>) -> axum::Json<Vec<VmReport>> {
    axum::Json(crate::metrics::vms(&shared.data_dir))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        let data_dir = std::env::temp_dir().join("slipway-agent-api-test-nonexistent");
        router(Arc::new(Shared {
            secret: "0123456789abcdef".into(),
            data_dir,
            latest: RwLock::new(None),
        }))
    }

    async fn get(path: &str, bearer: Option<&str>) -> (StatusCode, String, serde_json::Value) {
        let mut request = Request::get(path);
        if let Some(b) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {b}"));
        }
        let response = app()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, kind, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn health_is_open() {
        let (status, _, body) = get("/v1/health", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }

    #[tokio::test]
    async fn without_the_secret_the_answer_is_a_401_problem() {
        for bearer in [None, Some("wrong"), Some("0123456789abcdeF")] {
            let (status, kind, body) = get("/v1/vms", bearer).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{bearer:?}");
            assert_eq!(kind, "application/problem+json");
            assert_eq!(body["status"], 401);
            assert_eq!(body["type"], "urn:slipway:problem:unauthorized");
            assert!(body["detail"].as_str().unwrap().contains("Bearer"));
        }
    }

    #[tokio::test]
    async fn with_the_secret_the_answer_is_the_data() {
        let (status, _, body) = get("/v1/vms", Some("0123456789abcdef")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!([]));
        // No heartbeat has read the machine yet.
        let (status, _, _) = get("/v1/status", Some("0123456789abcdef")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
