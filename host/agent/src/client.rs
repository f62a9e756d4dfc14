//! The agent's side of the protocol: join with a join token, heartbeat with the credential.

use std::time::Duration;

use slipway_core::agent::{Heartbeat, HeartbeatAck, JoinRequest, JoinResponse};

/// How a call to the server went wrong, in the terms the agent acts on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached, or failed (5xx): keep the credential and try again.
    #[error("the server at {server} is unavailable: {detail}")]
    Unavailable { server: String, detail: String },
    /// The credential is not a host's (401 to a heartbeat): join again.
    #[error("the server does not know this host's credential: {0}")]
    UnknownCredential(String),
    /// The heartbeat's sequence number did not grow (409): join again, to start afresh.
    #[error("the server refused the heartbeat as a replay: {0}")]
    Replayed(String),
    /// The server refused the call for good (a bad join token, a name taken, a bad report).
    #[error("the server refused: {status} {detail}")]
    Refused { status: u16, detail: String },
}

impl ClientError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClientError::Unavailable { .. })
    }
}

pub struct ServerClient {
    base: String,
    http: reqwest::Client,
}

impl ServerClient {
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| ClientError::Unavailable {
                server: base.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

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
                status: 401,
                detail,
            }) => Err(ClientError::UnknownCredential(detail)),
            Err(ClientError::Refused {
                status: 409,
                detail,
            }) => Err(ClientError::Replayed(detail)),
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
        let response = response.map_err(|e| unavailable(e.to_string()))?;
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
            status: status.as_u16(),
            detail,
        })
    }
}
