//! The agent's side of the protocol: join with a join token, heartbeat with the credential.
//! Errors are sorted by what the agent does next, and each names the server and the detail of
//! its problem document.

use std::time::Duration;

use slipway_core::agent::{Heartbeat, HeartbeatAck, JoinRequest, JoinResponse};

/// How a call to the server went wrong, in the terms the agent acts on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not reached, or failed (5xx, an answer that is not the protocol's): keep the credential
    /// and try again.
    #[error("the server at {server} is unavailable: {detail}")]
    Unavailable { server: String, detail: String },
    /// 401 to a heartbeat: the credential is not a host's (the host was removed): join again.
    #[error("the server at {server} does not know this host's credential: {detail}")]
    UnknownCredential { server: String, detail: String },
    /// 409 to a heartbeat: its sequence number did not grow: join again, to start afresh.
    #[error("the server at {server} refused the heartbeat as a replay: {detail}")]
    Replayed { server: String, detail: String },
    /// Refused for good: a bad join token, a name taken, a report it will not take.
    #[error("the server at {server} refused ({status}): {detail}")]
    Refused {
        server: String,
        status: u16,
        detail: String,
    },
}

pub struct ServerClient {
    base: String,
    http: reqwest::Client,
}

impl ServerClient {
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| ClientError::Unavailable {
                server: base.clone(),
                detail: e.to_string(),
            })?;
        Ok(Self { base, http })
    }

    /// The server's URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn join(&self, request: &JoinRequest) -> Result<JoinResponse, ClientError> {
        let response = self
            .http
            .post(format!("{}/v1/agent/join", self.base))
            .json(request)
            .send()
            .await;
        self.answer(response).await
    }

    pub async fn heartbeat(
        &self,
        credential: &str,
        beat: &Heartbeat,
    ) -> Result<HeartbeatAck, ClientError> {
        let response = self
            .http
            .post(format!("{}/v1/agent/heartbeat", self.base))
            .bearer_auth(credential)
            .json(beat)
            .send()
            .await;
        match self.answer(response).await {
            Err(ClientError::Refused {
                server,
                status: 401,
                detail,
            }) => Err(ClientError::UnknownCredential { server, detail }),
            Err(ClientError::Refused {
                server,
                status: 409,
                detail,
            }) => Err(ClientError::Replayed { server, detail }),
            other => other,
        }
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Result<reqwest::Response>,
    ) -> Result<T, ClientError> {
        let unavailable = |detail: String| ClientError::Unavailable {
            server: self.base.clone(),
            detail,
        };
        let response = response.map_err(|e| unavailable(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| unavailable(format!("an answer that is not the protocol's: {e}")));
        }
        let text = response.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or(text);
        if status.is_server_error() {
            return Err(unavailable(format!("{status}: {detail}")));
        }
        Err(ClientError::Refused {
            server: self.base.clone(),
            status: status.as_u16(),
            detail,
        })
    }
}

/// reqwest's own message ("error sending request for url ...") hides the cause, such as
/// "Connection refused", in its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}
