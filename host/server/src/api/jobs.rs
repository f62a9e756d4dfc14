//! Jobs, and the server-sent event streams: every event, or one job's until it ends.
//!
//! A stream reads the event log from the client's last seen sequence number (`Last-Event-ID`,
//! which browsers and most SSE clients resend on reconnect, or `?after=`), then waits for the bus
//! to say something new was appended and reads the log again. Reading from the log, never from the
//! broadcast itself, keeps a stream complete and in order even when a subscriber lags.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use slipway_core::resources::{Event, Job, JobState, Page};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;

use super::{ApiError, AppState, Caller, Operator, Paging, Problem, QueryParams};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    pub state: Option<JobState>,
    /// e.g. `image.import`.
    pub kind: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<String>,
}

/// Lists jobs, oldest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])),
    params(JobListQuery),
    responses((status = 200, body = Page<Job>), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn list_jobs(
    _: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<JobListQuery>,
) -> Result<Json<Page<Job>>, ApiError> {
    let paging = Paging {
        limit: query.limit,
        after: query.after,
    };
    Ok(Json(
        app.store
            .list_jobs(query.state, query.kind.as_deref(), &paging.request())
            .await?,
    ))
}

/// One job: its steps, where it is, its progress, and its result or the error of the step that
/// failed.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_job(
    _: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(app.store.job(&id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Start after this event sequence number (`Last-Event-ID` takes precedence).
    pub after: Option<i64>,
}

fn last_event_id(headers: &HeaderMap, after: Option<i64>) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or(after)
}

/// One job's events as server-sent events, from its creation (or `after`) to its end; the stream
/// closes after the job's `succeeded` or `failed` event.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path), StreamQuery),
    responses((status = 200, content_type = "text/event-stream", body = Event,
        description = "A stream of events, each `data` an Event"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub async fn job_events(
    _: Caller<Operator>,
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    app.store.job(&id).await?;
    // A job's stream starts at the job's beginning unless told otherwise.
    let after = last_event_id(&headers, query.after).unwrap_or(0);
    Ok(stream(app, after, Some(id), false))
}

/// Every event — jobs and inventory changes — as server-sent events: from now on, or from after
/// `after` (or `Last-Event-ID`) to resume; `after=0` replays the whole log.
#[utoipa::path(get, path = "/v1/events", tag = "jobs", security(("bearer" = [])),
    params(StreamQuery),
    responses((status = 200, content_type = "text/event-stream", body = Event,
        description = "A stream of events, each `data` an Event"),
        (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn events(
    caller: Caller<Operator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    // The global stream starts now unless told where to resume (`after=0`: the whole log).
    let after = match last_event_id(&headers, query.after) {
        Some(after) => after,
        None => app.store.last_event_seq().await?,
    };
    // Tokens are the admin's business: operators do not see them come and go.
    let tokens = caller.token.role == slipway_core::resources::Role::Admin;
    Ok(stream(app, after, None, tokens))
}

fn sse(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.seq.to_string())
        .event(format!("{}.{}", event.topic, event.kind))
        .data(serde_json::to_string(event).unwrap_or_default())
}

fn stream(
    app: AppState,
    mut after: i64,
    subject: Option<String>,
    token_events: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    const BATCH: u32 = 500;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        let mut live = app.events.subscribe();
        loop {
            let batch = match app.store.events(after, subject.as_deref(), BATCH).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(error = %error, "event stream could not read the log");
                    return;
                }
            };
            for event in &batch {
                after = event.seq;
                if event.topic == "token" && !token_events {
                    continue;
                }
                if tx.send(Ok(sse(event))).await.is_err() {
                    return;
                }
                let ended =
                    event.topic == "job" && matches!(event.kind.as_str(), "succeeded" | "failed");
                if subject.is_some() && ended {
                    return;
                }
            }
            if batch.len() == BATCH as usize {
                continue;
            }
            // A client resuming after a finished job's last event: nothing more will come.
            if batch.is_empty()
                && let Some(id) = &subject
                && app
                    .store
                    .last_terminal_event(id)
                    .await
                    .is_ok_and(|end| end.is_some_and(|seq| seq <= after))
            {
                return;
            }
            tokio::select! {
                received = live.recv() => match received {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                () = tx.closed() => return,
                () = shutdown.cancelled() => return,
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
