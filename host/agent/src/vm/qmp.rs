//! A small QMP client: QEMU's JSON control protocol over its Unix socket. One command at a time
//! per connection; events that arrive meanwhile are skipped by [`Qmp::execute`] and read by
//! [`Qmp::next_event`].

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QMP at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP closed the connection")]
    Closed,
    #[error("QMP did not answer in time")]
    Timeout,
    #[error("QMP answered something that is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("QMP refused {command}: {desc}")]
    Refused { command: String, desc: String },
}

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// QMP lines are small; a longer one is not QMP.
const MAX_LINE: usize = 1 << 20;

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout)?
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer: write,
        };
        qmp.line().await?; // {"QMP": {...}}
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// The next non-empty line, bounded in length; `Closed` at the end.
    async fn next_line(&mut self) -> Result<String, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_line(&mut line)
                .await?;
            if n == 0 {
                return Err(QmpError::Closed);
            }
            if !line.trim().is_empty() {
                return Ok(line);
            }
        }
    }

    async fn line(&mut self) -> Result<Value, QmpError> {
        let line = tokio::time::timeout(Duration::from_secs(10), self.next_line())
            .await
            .map_err(|_| QmpError::Timeout)??;
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let mut message = json!({ "execute": command });
        if let Some(args) = args {
            message["arguments"] = args;
        }
        let mut text = message.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes()).await?;
        loop {
            let answer = self.line().await?;
            if answer.get("event").is_some() {
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(QmpError::Refused {
                    command: command.to_owned(),
                    desc: error["desc"].as_str().unwrap_or("unknown").to_owned(),
                });
            }
            return Ok(answer.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// The next event (waits without a time limit); `Closed` when QEMU exits.
    pub async fn next_event(&mut self) -> Result<Value, QmpError> {
        loop {
            let line = self.next_line().await?;
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v.get("event").is_some()
            {
                return Ok(v);
            }
        }
    }
}
