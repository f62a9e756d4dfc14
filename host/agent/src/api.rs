//! The agent's own API, for the server's calls: health (open); with the secret the agent gave
//! the server at join, the machine's status, the image cache (receiving images in frames,
//! resumably), and the VMs (create from a cached base, start, stop, console, delete).

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use slipway_core::agent::HostReport;
use slipway_core::vm::VmSpec;

use crate::cache::{Cache, CacheError};
use crate::vm::{VmError, Vms};

pub struct Shared {
    pub secret: String,
    pub data_dir: std::path::PathBuf,
    /// The report of the last heartbeat.
    pub latest: RwLock<Option<HostReport>>,
    pub cache: Arc<Cache>,
    pub vms: Arc<Vms>,
}

pub type AppState = Arc<Shared>;

pub fn router(shared: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/vms", get(vms))
        .route(
            "/v1/vms/{id}",
            get(vm_status).put(vm_create).delete(vm_delete),
        )
        .route("/v1/vms/{id}/stop", post(vm_stop))
        .route("/v1/vms/{id}/start", post(vm_start))
        .route("/v1/vms/{id}/console", get(vm_console))
        .route("/v1/images", get(images))
        .route(
            "/v1/images/{digest}",
            get(image_state)
                .put(image_receive)
                .delete(image_delete)
                .layer(DefaultBodyLimit::disable()),
        )
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

async fn vms(
    _: FromServer,
    State(shared): State<AppState>,
) -> axum::Json<Vec<slipway_core::vm::VmStatus>> {
    axum::Json(shared.vms.list())
}

fn vm_problem(e: VmError) -> Response {
    let (status, kind) = match &e {
        VmError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
        VmError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        VmError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        VmError::NoBase(_) => (StatusCode::CONFLICT, "no-base-image"),
        VmError::Qemu(_) => (StatusCode::UNPROCESSABLE_ENTITY, "qemu-failed"),
        VmError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    problem(status, kind, &e.to_string())
}

async fn vm_status(
    _: FromServer,
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    match shared.vms.status(&id).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => vm_problem(e),
    }
}

async fn vm_create(
    _: FromServer,
    State(shared): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let spec: VmSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                &format!("not a VM spec: {e}"),
            );
        }
    };
    if spec.id != id {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-request",
            &format!("the spec is VM {}'s, not {id}'s", spec.id),
        );
    }
    let base = spec.base_image.clone();
    match shared.vms.create(spec).await {
        Ok((status, created)) => {
            shared.cache.touch(&base);
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, axum::Json(status)).into_response()
        }
        Err(e) => vm_problem(e),
    }
}

async fn vm_delete(
    _: FromServer,
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    match shared.vms.delete(&id).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => vm_problem(e),
    }
}

#[derive(Deserialize, Default)]
struct StopBody {
    timeout_s: Option<u64>,
}

async fn vm_stop(
    _: FromServer,
    State(shared): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: StopBody = serde_json::from_slice(&body).unwrap_or_default();
    let timeout = std::time::Duration::from_secs(body.timeout_s.unwrap_or(30).min(600));
    match shared.vms.stop(&id, timeout).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => vm_problem(e),
    }
}

async fn vm_start(
    _: FromServer,
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    match shared.vms.start(&id).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => vm_problem(e),
    }
}

#[derive(Deserialize)]
struct ConsoleQuery {
    tail_bytes: Option<u64>,
}

async fn vm_console(
    _: FromServer,
    State(shared): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> Response {
    match shared
        .vms
        .console(&id, q.tail_bytes.unwrap_or(64 << 10).min(1 << 20))
    {
        Ok(bytes) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            String::from_utf8_lossy(&bytes).into_owned(),
        )
            .into_response(),
        Err(e) => vm_problem(e),
    }
}

fn cache_problem(e: CacheError) -> Response {
    let (status, kind) = match &e {
        CacheError::BadDigest(_) | CacheError::Frame(_) => (StatusCode::BAD_REQUEST, "bad-request"),
        CacheError::Mismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "digest-mismatch"),
        CacheError::NoSpace(_) | CacheError::TooBig { .. } => {
            (StatusCode::INSUFFICIENT_STORAGE, "insufficient-storage")
        }
        CacheError::Busy(_) | CacheError::WrongStart { .. } | CacheError::InUse(_) => {
            (StatusCode::CONFLICT, "conflict")
        }
        CacheError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
        CacheError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    problem(status, kind, &e.to_string())
}

async fn images(_: FromServer, State(shared): State<AppState>) -> Response {
    let vms = shared.vms.clone();
    axum::Json(shared.cache.list(|d| vms.uses(d))).into_response()
}

async fn image_state(
    _: FromServer,
    State(shared): State<AppState>,
    Path(digest): Path<String>,
) -> Response {
    match shared.cache.state(&digest) {
        Ok(Some(state)) => axum::Json(state).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "not-found", "no such image here"),
        Err(e) => cache_problem(e),
    }
}

async fn image_delete(
    _: FromServer,
    State(shared): State<AppState>,
    Path(digest): Path<String>,
) -> Response {
    let used = shared.vms.uses(&digest);
    match shared.cache.remove(&digest, used) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => cache_problem(e),
    }
}

#[derive(Deserialize)]
struct ReceiveQuery {
    size: u64,
    #[serde(default)]
    from: u64,
}

/// Receives an image's frames. An image already cached answers 200 without reading the body.
async fn image_receive(
    _: FromServer,
    State(shared): State<AppState>,
    Path(digest): Path<String>,
    Query(q): Query<ReceiveQuery>,
    body: Body,
) -> Response {
    if let Ok(Some(state @ crate::cache::ImageState::Cached { .. })) = shared.cache.state(&digest) {
        return axum::Json(state).into_response();
    }
    let vms = shared.vms.clone();
    let mut receiver = match shared
        .cache
        .begin(&digest, q.size, q.from, &|d| vms.uses(d))
    {
        Ok(r) => r,
        Err(e) => return cache_problem(e),
    };
    // The writer (hashing, pwrite) runs on its own thread, a few chunks behind the socket, so
    // that receiving and writing overlap.
    enum Msg {
        Data(axum::body::Bytes),
        Cut,
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(64);
    let started = std::time::Instant::now();
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Data(chunk) => {
                    if let Err(e) = receiver.feed(chunk) {
                        // A bad frame or a full disk: nothing to resume. Else: resume later.
                        if matches!(e, CacheError::Frame(_) | CacheError::NoSpace(_)) {
                            receiver.abandon();
                        } else {
                            receiver.interrupted();
                        }
                        return Err(Some(e));
                    }
                }
                Msg::Cut => {
                    receiver.interrupted();
                    return Err(None);
                }
            }
        }
        let received = started.elapsed();
        let done = receiver.finish().map_err(Some);
        tracing::debug!(
            received_ms = received.as_millis() as u64,
            finished_ms = started.elapsed().as_millis() as u64,
            "image transfer timing"
        );
        done
    });
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let msg = match chunk {
            Ok(c) => Msg::Data(c),
            Err(_) => Msg::Cut,
        };
        let cut = matches!(msg, Msg::Cut);
        if tx.send(msg).await.is_err() || cut {
            break; // the writer stopped (an error it will report), or the body was cut
        }
    }
    drop(tx);
    let result = writer
        .await
        .unwrap_or_else(|e| Err(Some(CacheError::Frame(format!("the writer failed: {e}")))));
    match result {
        Ok(size) => {
            tracing::info!(image = %digest, size, "image received and verified");
            (
                StatusCode::CREATED,
                axum::Json(crate::cache::ImageState::Cached { digest, size }),
            )
                .into_response()
        }
        Err(None) => {
            tracing::info!(image = %digest, "a transfer was cut; it resumes where it got to");
            problem(StatusCode::BAD_REQUEST, "interrupted", "the body was cut")
        }
        Err(Some(e)) => cache_problem(e),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        let data_dir = tempfile::tempdir().unwrap().keep();
        router(Arc::new(Shared {
            secret: "0123456789abcdef".into(),
            cache: Cache::open(&data_dir, 1 << 30).unwrap(),
            vms: Vms::open(&data_dir, None, "tcg").unwrap(),
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
