//! A `slipway-agent` for the server's own machine, started and watched by the server
//! (`--local-agent`), so that one command gives a working installation: the server, and a host
//! to place VMs on.
//!
//! The agent keeps its state in `<data-dir>/local-agent`. It joins like any agent, with a join
//! token the server makes for it when it has no credential yet (one use, written 0600 for the
//! agent to read), and listens on a loopback port of its choosing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::App;

/// How long the agent gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub fn agent_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("local-agent")
}

/// Runs the agent until the server shuts down, starting it again (after a pause that grows up
/// to a minute) whenever it exits.
pub async fn run(app: Arc<App>, binary: PathBuf, server_url: String) {
    let mut pause = Duration::from_secs(1);
    loop {
        match start(&app, &binary, &server_url).await {
            Ok(mut child) => {
                tokio::select! {
                    status = child.wait() => {
                        tracing::warn!(status = ?status.ok(), "the local agent exited; starting it again in {} s", pause.as_secs());
                    }
                    _ = app.shutdown.cancelled() => {
                        stop(&mut child).await;
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "the local agent could not start; trying again in {} s",
                    pause.as_secs()
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = app.shutdown.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(60));
    }
}

async fn start(
    app: &App,
    binary: &Path,
    server_url: &str,
) -> anyhow::Result<tokio::process::Child> {
    let dir = agent_dir(&app.config.data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let token_file = dir.join("join.token");
    if !has_credential(&dir) {
        let (_, secret) = app
            .store
            .create_join_token(
                "local-agent",
                &std::collections::BTreeMap::new(),
                Some(1),
                None,
            )
            .await?;
        crate::serve::write_secret(&token_file, &secret)?;
    }
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("run")
        .arg("--server")
        .arg(server_url)
        .arg("--data-dir")
        .arg(&dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if token_file.exists() {
        command.arg("--join-token-file").arg(&token_file);
    }
    let child = command
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    tracing::info!(pid = child.id(), dir = %dir.display(), "local agent started");
    Ok(child)
}

/// Whether the agent joined before: its state file holds a credential.
fn has_credential(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("agent.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|state| state.get("credential").is_some_and(|c| c.is_string()))
}

async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) on our own child's pid, which `wait` has not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
