//! PLACEHOLDER until the transfer work lands (branch wip/transfer): the signature deploy uses.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub bytes_sent: u64,
    pub already_cached: bool,
    pub resumed_from: Option<u64>,
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("image transfer is not built yet")]
    NotBuilt,
}

pub async fn send_image(
    _http: &reqwest::Client,
    _agent_url: &str,
    _agent_secret: &str,
    _path: &Path,
    _digest: &str,
    _progress: impl FnMut(u64, u64),
) -> Result<Sent, TransferError> {
    Err(TransferError::NotBuilt)
}
