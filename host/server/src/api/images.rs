//! The image store over HTTP: streamed uploads and imports by path (both jobs), listing, reading,
//! and deleting what nothing uses.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use slipway_core::catalog::{FieldError, check_name, is_digest};
use slipway_core::resources::{Image, ImageKind, Job, JobState, Page};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, Caller, JsonBody, Operator, Paging, Problem, QueryParams};
use crate::images::ImageError;
use crate::jobs::{
    IMAGE_IMPORT, IMAGE_UPLOAD, IMPORT_STEPS, ImportParams, UPLOAD_STEPS, UploadParams, Work,
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// A name to show for the image (names need not be unique; the id is the digest).
    pub name: String,
    /// `disk` (default) or `artifact`.
    pub kind: Option<ImageKind>,
    /// The sha256 the bytes must have; a mismatch refuses the upload.
    pub sha256: Option<String>,
    /// Answer when the job has finished, rather than once the bytes are received.
    pub wait: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// A file or block device on the server, inside one of its import directories.
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Defaults to the file's name.
    pub name: Option<String>,
    #[serde(default)]
    pub kind: Option<ImageKind>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Answer when the job has finished.
    pub wait: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImageListQuery {
    pub kind: Option<ImageKind>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Fails an upload's job if the handler ends before handing it on.
struct UploadGuard {
    jobs: crate::jobs::Jobs,
    id: Option<String>,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let jobs = self.jobs.clone();
            tokio::spawn(async move {
                jobs.fail_where_it_is(
                    &id,
                    "the upload was abandoned (the client went away or the server stopped) before it was stored",
                )
                .await;
            });
        }
    }
}

fn check_upload_name(name: &str) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    check_name("name", name, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// Answers for a job: at once (202, the job) or, with `wait`, at its end (201 and the job whose
/// result is the image, or the job's failure as a problem).
pub(crate) async fn job_response(
    app: &AppState,
    job: Job,
    wait: bool,
) -> Result<Response, ApiError> {
    if !wait {
        let location = format!("/v1/jobs/{}", job.id);
        return Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(job),
        )
            .into_response());
    }
    let job = tokio::select! {
        job = app.jobs.wait(&job.id) => job?,
        () = app.shutdown.cancelled() => return Err(ApiError::ShuttingDown),
    };
    match (&job.state, &job.error) {
        (JobState::Succeeded, _) => {
            let location = job
                .result
                .as_ref()
                .and_then(|r| r["id"].as_str())
                .map(|id| format!("/v1/images/{id}"))
                .unwrap_or_default();
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(job),
            )
                .into_response())
        }
        (_, Some(error)) => Err(ApiError::JobFailed {
            job: job.id.clone(),
            step: error.step.clone(),
            message: error.message.clone(),
        }),
        _ => Err(ApiError::ShuttingDown),
    }
}

/// Uploads an image: the body is the image's bytes, streamed to disk and hashed on the way.
///
/// The answer comes once the bytes are received (202, with the job that inspects, converts and
/// stores them) or, with `wait=true`, once the image is stored (201). A body cut short, a digest
/// that does not match, a full disk: each fails the job at `receive` and leaves nothing behind.
#[utoipa::path(post, path = "/v1/images", tag = "images", security(("bearer" = [])),
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Job, description = "Stored (with wait=true)"),
        (status = 202, body = Job, description = "Received; the job stores it"),
        (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem),
        (status = 422, body = Problem), (status = 507, body = Problem)))]
pub async fn upload_image(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_upload_name(&query.name)?;
    let expected = query.sha256.map(|s| s.to_ascii_lowercase());
    if let Some(digest) = &expected
        && !is_digest(digest)
    {
        return Err(ApiError::invalid(vec![FieldError::new(
            "sha256",
            "must be 64 hex digits",
        )]));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let kind = query.kind.unwrap_or(ImageKind::Disk);
    let slot = app.upload_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::Busy(format!(
            "{} uploads are already running; try again when one has finished",
            crate::serve::MAX_CONCURRENT_UPLOADS
        ))
    })?;
    let params = UploadParams {
        name: query.name,
        kind,
        size: declared,
        sha256: expected.clone(),
    };
    let job = app
        .jobs
        .create(
            IMAGE_UPLOAD,
            serde_json::to_value(&params).unwrap_or_default(),
            UPLOAD_STEPS,
            &caller.token.id,
        )
        .await?;
    // From here until the runner owns the job, a dropped handler (the client went away, the
    // server stopped) must not leave it running.
    let mut guard = UploadGuard {
        jobs: app.jobs.clone(),
        id: Some(job.id.clone()),
    };
    app.jobs.start_now(&job).await?;
    let progress = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(declared.unwrap_or(0)));
    let reporter = app.jobs.report_progress(&job.id, progress.clone(), total);
    let received = app
        .images
        .receive(
            body.into_data_stream(),
            declared,
            app.config.upload_idle_timeout,
            progress,
        )
        .await
        .and_then(|received| match &expected {
            Some(expected) if *expected != received.sha256 => Err(ImageError::DigestMismatch {
                expected: expected.clone(),
                actual: received.sha256.clone(),
            }),
            _ => Ok(received),
        });
    drop((reporter, slot));
    let received = match received {
        Ok(received) => received,
        Err(error) => {
            guard.id = None;
            app.jobs
                .fail(&job.id, UPLOAD_STEPS[0], error.to_string())
                .await?;
            return Err(error.into());
        }
    };
    tracing::info!(job = %job.id, bytes = received.size, sha256 = %received.sha256, "upload received");
    app.jobs
        .store()
        .set_job_progress(&job.id, received.size, Some(received.size))
        .await?;
    let job = app.jobs.store().job(&job.id).await?;
    guard.id = None;
    app.jobs
        .spawn(job.clone(), 1, Work::StoreUpload { params, received });
    job_response(&app, job, query.wait.unwrap_or(false)).await
}

/// Imports an image from a path on the server, as a job (`copy`, `inspect`, `convert`, `store`).
///
/// The path must lie inside one of the server's import directories once symlinks are resolved.
/// An import interrupted by a restart starts again from its first step.
#[utoipa::path(post, path = "/v1/images/import", tag = "images", security(("bearer" = [])),
    params(WaitQuery),
    request_body = ImportRequest,
    responses((status = 201, body = Job, description = "Stored (with wait=true)"),
        (status = 202, body = Job, description = "The job was started"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem)))]
pub async fn import_image(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<WaitQuery>,
    JsonBody(body): JsonBody<ImportRequest>,
) -> Result<Response, ApiError> {
    // Refused at once rather than as a failed job: the caller can fix the path.
    let source = app.images.import_source(&body.path)?;
    let name = match body.name {
        Some(name) => name,
        None => source
            .file_stem()
            .map(|s| s.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_else(|| "image".to_owned()),
    };
    check_upload_name(&name)?;
    let params = ImportParams {
        source,
        name,
        kind: body.kind.unwrap_or(ImageKind::Disk),
    };
    let job = app
        .jobs
        .create(
            IMAGE_IMPORT,
            serde_json::to_value(&params).unwrap_or_default(),
            IMPORT_STEPS,
            &caller.token.id,
        )
        .await?;
    app.jobs.spawn(job.clone(), 0, Work::Import(params));
    job_response(&app, job, query.wait.unwrap_or(false)).await
}

/// Lists the images, oldest first.
#[utoipa::path(get, path = "/v1/images", tag = "images", security(("bearer" = [])),
    params(ImageListQuery),
    responses((status = 200, body = Page<Image>), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn list_images(
    _: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<ImageListQuery>,
) -> Result<Json<Page<Image>>, ApiError> {
    let paging = Paging {
        limit: query.limit,
        after: query.after,
    };
    Ok(Json(
        app.store.list_images(query.kind, &paging.request()).await?,
    ))
}

/// One image, by its sha256.
#[utoipa::path(get, path = "/v1/images/{id}", tag = "images", security(("bearer" = [])),
    params(("id" = String, Path, description = "The image's sha256")),
    responses((status = 200, body = Image), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_image(
    _: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Image>, ApiError> {
    Ok(Json(app.store.image(&id).await?))
}

/// Deletes an image and its bytes, unless a model VM or an application uses it (409).
#[utoipa::path(delete, path = "/v1/images/{id}", tag = "images", security(("bearer" = [])),
    params(("id" = String, Path, description = "The image's sha256")),
    responses((status = 200, body = Image), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn delete_image(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Image>, ApiError> {
    // Held across record and file, so a concurrent store of the same bytes cannot lose its file.
    let _guard = app.images.lock().await;
    let image = app.store.delete_image(&id).await?;
    app.images.remove(&id).map_err(ApiError::internal)?;
    tracing::info!(image = %id, by = %caller.token.name, "image deleted");
    app.events
        .notify(
            "image",
            &id,
            "deleted",
            serde_json::json!({ "name": image.name }),
        )
        .await;
    Ok(Json(image))
}
