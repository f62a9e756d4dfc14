//! The `slipway` command line as a client of a server: every resource of the API, as tables for
//! people or JSON (`--json`) for scripts, with progress bars for uploads and for following a job.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use slipway_core::resources::{Event, Image, Job, JobState, Page, Token};

use crate::config::{DEFAULT_LISTEN, default_data_dir};

/// How the client reaches a server.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The server's URL.
    #[arg(long, env = "SLIPWAY_SERVER", default_value_t = format!("http://{DEFAULT_LISTEN}"), global = true)]
    pub server: String,
    /// A bearer token [default: the local server's admin token, when this user can read it].
    #[arg(long, env = "SLIPWAY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// An API problem as the client shows it.
#[derive(Debug, thiserror::Error)]
#[error("{status} {title}: {detail}{fields}")]
pub struct ProblemError {
    pub status: u16,
    pub problem_type: String,
    pub title: String,
    pub detail: String,
    fields: String,
    /// A placement's explanation, when no host could take the VM.
    pub placement: Option<Value>,
    /// A VM request's plan, when findings block it.
    pub plan: Option<Value>,
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    pub json: bool,
}

impl Client {
    pub fn new(connection: &Connection) -> anyhow::Result<Self> {
        let token = connection.token.clone().or_else(local_admin_token);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            base: connection.server.trim_end_matches('/').to_owned(),
            token,
            http,
            json: connection.json,
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(problem(response).await.into())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self
            .send(self.request(Method::GET, path))
            .await?
            .json()
            .await?)
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self
            .send(self.request(Method::DELETE, path))
            .await?
            .json()
            .await?)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        Ok(self
            .send(self.request(Method::POST, path).json(body))
            .await?
            .json()
            .await?)
    }

    /// A GET whose answer is text (a console).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self
            .send(self.request(Method::GET, path))
            .await?
            .text()
            .await?)
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        revision: Option<u64>,
    ) -> anyhow::Result<T> {
        let mut request = self.request(Method::PUT, path).json(body);
        if let Some(revision) = revision {
            request = request.header(header::IF_MATCH, format!("\"{revision}\""));
        }
        Ok(self.send(request).await?.json().await?)
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        Ok(self
            .send(self.request(Method::PATCH, path).json(body))
            .await?
            .json()
            .await?)
    }

    /// `PUT /v1/plugins/{name}` with the manifest and component as a multipart body.
    pub async fn install_plugin<T: DeserializeOwned>(
        &self,
        name: &str,
        manifest: String,
        component: Vec<u8>,
    ) -> anyhow::Result<T> {
        let form = reqwest::multipart::Form::new()
            .text("manifest", manifest)
            .part(
                "component",
                reqwest::multipart::Part::bytes(component)
                    .file_name(format!("{name}.wasm"))
                    .mime_str("application/wasm")?,
            );
        Ok(self
            .send(
                self.request(Method::PUT, &format!("/v1/plugins/{name}"))
                    .multipart(form),
            )
            .await?
            .json()
            .await?)
    }

    /// Every page of a listing.
    pub async fn list_all<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Vec<T>> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let url = match &after {
                Some(after) => format!("{path}{sep}limit=500&after={after}"),
                None => format!("{path}{sep}limit=500"),
            };
            let page: Page<T> = self.get(&url).await?;
            items.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// Streams a file to `POST /v1/images` with a progress bar; returns the job.
    pub async fn upload(
        &self,
        file: &Path,
        name: &str,
        kind: &str,
        sha256: Option<&str>,
    ) -> anyhow::Result<Job> {
        let opened =
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = opened.metadata()?.len();
        let bar = self.bar(len, "uploading");
        let counter = bar.clone();
        let stream = file_stream(opened, move |n| counter.inc(n));
        let mut query = vec![("name", name.to_owned()), ("kind", kind.to_owned())];
        if let Some(sha256) = sha256 {
            query.push(("sha256", sha256.to_owned()));
        }
        let request = self
            .request(Method::POST, "/v1/images")
            .query(&query)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        let result = self.send(request).await;
        bar.finish_and_clear();
        Ok(result?.json().await?)
    }

    fn bar(&self, len: u64, message: &'static str) -> ProgressBar {
        if self.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(message);
        bar
    }

    /// A server-sent event stream, as events.
    pub async fn event_stream(
        &self,
        path: &str,
    ) -> anyhow::Result<impl futures_util::Stream<Item = anyhow::Result<Event>> + use<>> {
        let response = self
            .send(
                self.request(Method::GET, path)
                    .header(header::ACCEPT, "text/event-stream"),
            )
            .await?;
        let body = Box::pin(response.bytes_stream());
        Ok(futures_util::stream::unfold(
            (body, Vec::new()),
            |(mut body, mut buffer)| async move {
                loop {
                    if let Some(end) = find_blank_line(&buffer) {
                        let block: Vec<u8> = buffer.drain(..end).collect();
                        match parse_sse(&block) {
                            Some(event) => return Some((Ok(event), (body, buffer))),
                            None => continue,
                        }
                    }
                    match body.next().await {
                        Some(Ok(chunk)) => {
                            buffer.extend_from_slice(&chunk);
                            // Events are small; a server that never ends one is not one we follow.
                            if buffer.len() > MAX_EVENT_BYTES {
                                let error = anyhow::anyhow!(
                                    "the server sent an event longer than {MAX_EVENT_BYTES} bytes"
                                );
                                return Some((Err(error), (body, Vec::new())));
                            }
                        }
                        Some(Err(e)) => {
                            let error = anyhow::Error::new(e).context("the event stream broke");
                            return Some((Err(error), (body, buffer)));
                        }
                        None => return None,
                    }
                }
            },
        ))
    }

    /// Follows a job's event stream to its end, drawing its steps and progress; returns the job
    /// as it ended.
    pub async fn follow(&self, id: &str) -> anyhow::Result<Job> {
        let events = self.event_stream(&format!("/v1/jobs/{id}/events")).await?;
        let mut events = Box::pin(events);
        let bar = self.bar(0, "");
        while let Some(event) = events.next().await {
            let event = event?;
            match event.kind.as_str() {
                "step_started" => {
                    bar.set_position(0);
                    bar.set_length(0);
                    bar.set_message(event.data["step"].as_str().unwrap_or("").to_owned());
                }
                "progress" => {
                    if let Some(total) = event.data["total_bytes"].as_u64() {
                        bar.set_length(total);
                    }
                    bar.set_position(event.data["done_bytes"].as_u64().unwrap_or(0));
                }
                _ => {}
            }
        }
        bar.finish_and_clear();
        self.get(&format!("/v1/jobs/{id}")).await
    }
}

/// A file as a stream of 1 MiB chunks, read by a thread of its own straight into the buffers
/// that are sent (no copy through an async file's own buffer); `sent` hears each chunk's size.
pub fn file_stream(
    mut file: std::fs::File,
    sent: impl Fn(u64) + Send + 'static,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use std::io::Read;
    const CHUNK: usize = 1 << 20;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        loop {
            let mut buf = bytes::BytesMut::zeroed(CHUNK);
            let n = match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            buf.truncate(n);
            sent(n as u64);
            if tx.blocking_send(Ok(buf.freeze())).is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

const MAX_EVENT_BYTES: usize = 4 << 20;

fn find_blank_line(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

fn parse_sse(block: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(block).ok()?;
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&data).ok()
}

async fn problem(response: reqwest::Response) -> ProblemError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    // One field's error is already the detail.
    let fields = value["errors"]
        .as_array()
        .filter(|errors| errors.len() > 1)
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    format!(
                        "\n  {}: {}",
                        e["field"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or("?")
                    )
                })
                .collect::<String>()
        })
        .unwrap_or_default();
    ProblemError {
        status: status.as_u16(),
        problem_type: value["type"].as_str().unwrap_or_default().to_owned(),
        title: value["title"]
            .as_str()
            .unwrap_or(status.canonical_reason().unwrap_or("error"))
            .to_owned(),
        detail: value["detail"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| text.trim().to_owned()),
        fields,
        placement: value.get("placement").cloned(),
        plan: value.get("plan").cloned(),
    }
}

/// The admin token a local server wrote at its first start, if this user can read it.
fn local_admin_token() -> Option<String> {
    let data = std::env::var_os("SLIPWAY_DATA_DIR")
        .map(PathBuf::from)
        .or_else(default_data_dir)?;
    let secret = std::fs::read_to_string(data.join("admin.token")).ok()?;
    Some(secret.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Reads a JSON body from a file, or from standard input for `-`.
pub fn read_json(file: &Path) -> anyhow::Result<Value> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    for row in rows {
        table.add_row(row);
    }
    println!("{table}");
}

pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

pub fn image_rows(images: &[Image]) -> Vec<Vec<String>> {
    images
        .iter()
        .map(|i| {
            vec![
                i.id.get(..16).unwrap_or(&i.id).to_owned(),
                i.name.clone(),
                i.kind.as_str().to_owned(),
                format!("{} (from {})", i.format, i.source_format),
                i.virtual_size.map(bytes).unwrap_or_default(),
                bytes(i.stored_size),
                i.created_at.to_string(),
            ]
        })
        .collect()
}

pub const IMAGE_HEADER: &[&str] = &[
    "id", "name", "kind", "format", "virtual", "stored", "created",
];

pub fn job_rows(jobs: &[Job]) -> Vec<Vec<String>> {
    jobs.iter()
        .map(|j| {
            let at = j
                .steps
                .get(j.step)
                .map(|s| format!("{}/{} {s}", j.step + 1, j.steps.len()))
                .unwrap_or_else(|| "done".to_owned());
            vec![
                j.id.clone(),
                j.kind.clone(),
                j.state.as_str().to_owned(),
                at,
                j.error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.step, e.message))
                    .unwrap_or_default(),
            ]
        })
        .collect()
}

pub const JOB_HEADER: &[&str] = &["id", "kind", "state", "step", "error"];

pub fn token_rows(tokens: &[Token]) -> Vec<Vec<String>> {
    tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.role.to_string(),
                t.created_at.to_string(),
                t.revoked_at.map(|r| r.to_string()).unwrap_or_default(),
            ]
        })
        .collect()
}

pub const TOKEN_HEADER: &[&str] = &["id", "name", "role", "created", "revoked"];

/// After following a job: the exit status it deserves, with the reason on stderr.
pub fn job_outcome(job: &Job) -> anyhow::Result<()> {
    match (job.state, &job.error) {
        (JobState::Succeeded, _) => Ok(()),
        (_, Some(error)) => bail!(
            "job {} failed at step {}: {}",
            job.id,
            error.step,
            error.message
        ),
        (state, None) => bail!("job {} is {}", job.id, state.as_str()),
    }
}

pub fn is_not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ProblemError>()
        .is_some_and(|p| p.status == StatusCode::NOT_FOUND.as_u16())
}
