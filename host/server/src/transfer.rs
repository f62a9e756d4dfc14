//! Sending an image to a host's agent: only its allocated data (the file's data extents, found
//! with `SEEK_DATA`/`SEEK_HOLE`), in frames (`[offset u64 BE][len u32 BE][len bytes]`, see the
//! agent's `cache` module), streamed from a reader thread a few MiB ahead of the socket, never
//! whole in memory. An agent that has the image answers at once and nothing is sent; one that
//! has part of it (a transfer cut earlier) says where to resume. A cut connection resumes from
//! the agent's point; a digest mismatch (corrupted on the way) starts again once; a full disk on
//! the host ends it.

use std::io::{Read, Seek};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

/// Frames carry at most this much data.
const FRAME: u64 = 1 << 20;
/// Frames in flight between the reader and the socket.
const AHEAD: usize = 4;
const ATTEMPTS: u32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Data bytes sent (holes are not).
    pub bytes_sent: u64,
    pub already_cached: bool,
    pub resumed_from: Option<u64>,
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the host's disk is full: {0}")]
    DiskFull(String),
    #[error("the image arrived corrupted twice: {0}")]
    Corrupted(String),
    #[error("the host refused the image: {status} {detail}")]
    Refused { status: u16, detail: String },
    #[error("the transfer failed after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("reading the image {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum AgentState {
    Cached {},
    Partial { size: u64, resume_from: u64 },
}

/// The data extents of `file` at or after `from`: `[start, end)` pairs.
fn extents(file: &std::fs::File, from: u64, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = from;
    while at < len {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                // A file system without SEEK_DATA: all of it is data.
                out.push((at, len));
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        out.push((data as u64, (end as u64).min(len)));
        at = end as u64;
    }
    Ok(out)
}

/// Sends the image at `path`, named by its sha256 `digest`, to the agent. `progress` is told
/// the data bytes sent and the total to send, as they go.
pub async fn send_image(
    http: &reqwest::Client,
    agent_url: &str,
    agent_secret: &str,
    path: &Path,
    digest: &str,
    progress: impl Fn(u64, u64) + Send + Sync + 'static,
) -> Result<Sent, TransferError> {
    let read_error = |source| TransferError::Read {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    let progress = Arc::new(progress);
    let url = format!("{agent_url}/v1/images/{digest}");
    let mut attempts = 0;
    let mut restarted = false;
    let mut first_from = None;
    let mut last = String::new();
    let mut sent_total = 0u64;
    while attempts < ATTEMPTS {
        attempts += 1;
        if attempts > 1 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempts))).await;
        }
        // Where the agent is with this image.
        let state = match http
            .get(&url)
            .bearer_auth(agent_secret)
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r.json::<AgentState>().await.ok(),
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => None,
            Ok(r) => {
                last = format!("{} asking for the image's state", r.status());
                continue;
            }
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let from = match state {
            Some(AgentState::Cached {}) => {
                return Ok(Sent {
                    bytes_sent: sent_total,
                    already_cached: sent_total == 0,
                    resumed_from: first_from,
                    attempts,
                });
            }
            Some(AgentState::Partial {
                size: s,
                resume_from,
            }) if s == size => resume_from,
            _ => 0,
        };
        if from > 0 && first_from.is_none() {
            first_from = Some(from);
        }
        let file = std::fs::File::open(path).map_err(read_error)?;
        let spans = extents(&file, from, size).map_err(read_error)?;
        let total: u64 = spans.iter().map(|(a, b)| b - a).sum();
        let sent = Arc::new(AtomicU64::new(0));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(AHEAD);
        let reader = {
            let sent = sent.clone();
            let progress = progress.clone();
            tokio::task::spawn_blocking(move || {
                for (start, end) in spans {
                    let mut at = start;
                    while at < end {
                        let len = (end - at).min(FRAME) as usize;
                        // Read into spare capacity (no zeroing pass first): the header, then
                        // the data, in one buffer that becomes the body's chunk.
                        let mut frame = Vec::with_capacity(12 + len);
                        frame.extend_from_slice(&at.to_be_bytes());
                        frame.extend_from_slice(&(len as u32).to_be_bytes());
                        let read = (&file)
                            .seek(std::io::SeekFrom::Start(at))
                            .and_then(|_| (&file).take(len as u64).read_to_end(&mut frame));
                        match read {
                            Ok(n) if n == len => {}
                            Ok(n) => {
                                let _ = tx.blocking_send(Err(std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    format!(
                                        "the image ended {n} bytes into a {len}-byte extent at {at}"
                                    ),
                                )));
                                return;
                            }
                            Err(e) => {
                                let _ = tx.blocking_send(Err(e));
                                return;
                            }
                        }
                        if tx.blocking_send(Ok(Bytes::from(frame))).is_err() {
                            return; // the request ended
                        }
                        at += len as u64;
                        let done = sent.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
                        progress(done, total);
                    }
                }
            })
        };
        let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let answer = http
            .put(format!("{url}?size={size}&from={from}"))
            .bearer_auth(agent_secret)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await;
        let _ = reader.await;
        sent_total += sent.load(Ordering::Relaxed);
        match answer {
            Ok(r) if r.status().is_success() => {
                return Ok(Sent {
                    bytes_sent: sent_total,
                    already_cached: false,
                    resumed_from: first_from,
                    attempts,
                });
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let detail = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["detail"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                match status {
                    507 => return Err(TransferError::DiskFull(detail)),
                    422 if !restarted => {
                        // Corrupted on the way: the agent dropped it; once more from the start.
                        tracing::warn!(image = %digest, %detail, "the image arrived corrupted; sending it again");
                        restarted = true;
                        last = detail;
                    }
                    422 => return Err(TransferError::Corrupted(detail)),
                    // Cut, or another transfer of it: ask again where the agent is.
                    400 | 409 | 500..=599 => last = format!("{status} {detail}"),
                    _ => return Err(TransferError::Refused { status, detail }),
                }
            }
            Err(e) => {
                tracing::info!(image = %digest, error = %e, "a transfer was cut; resuming");
                last = e.to_string();
            }
        }
    }
    Err(TransferError::GaveUp { attempts, last })
}
