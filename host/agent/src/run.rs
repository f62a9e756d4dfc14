//! The agent's life: probe the machine, serve the API, join if it has no credential, then
//! heartbeat at the interval the server asks for, until told to stop.
//!
//! A server that cannot be reached (restarting, say) is retried with a growing pause, keeping
//! the credential. A server that no longer knows the credential (the host was removed), or that
//! refuses a heartbeat as a replay, is joined again with the join token and the same agent id,
//! so the agent becomes the same host again, never a second one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use slipway_core::agent::{Heartbeat, JoinRequest};

use crate::api::Shared;
use crate::client::{ClientError, ServerClient};
use crate::config::Config;
use crate::metrics::Static;
use crate::probe::Probe;
use crate::state::{Joined, Sequence, State};

/// The longest pause between attempts to reach an unavailable server.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Runs until `stop` resolves.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = config
        .server
        .clone()
        .context("no server: pass --server (or SLIPWAY_AGENT_SERVER)")?;
    let server = server.trim_end_matches('/').to_owned();
    let mut state = State::load_or_create(&config.data_dir)?;
    let qemu = config.qemu.clone();
    let probe = tokio::task::spawn_blocking(move || Probe::run(qemu.as_deref())).await?;
    let hypervisor = probe.hypervisor();
    tracing::info!(qemu = ?hypervisor.qemu.as_ref().map(|q| &q.version), accelerator = ?hypervisor.accelerator, kvm = %hypervisor.kvm.detail, "probed the hypervisor");
    let fixed = Static {
        data_dir: config.data_dir.clone(),
        labels: config.labels.clone(),
        memory_reserved_mib: config.reserved_memory_mib,
        hypervisor,
        features: probe.features.clone(),
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let agent_url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    let shared = Arc::new(Shared {
        secret: state.agent_secret.clone(),
        data_dir: config.data_dir.clone(),
        latest: std::sync::RwLock::new(None),
    });
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let router = crate::api::router(shared.clone());
    let api = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = api_stopped.await;
            })
            .await
    });
    tracing::info!(url = %agent_url, server = %server, name = %config.name, "agent listening");
    eprintln!(
        "slipway-agent {} listening on {agent_url}",
        env!("CARGO_PKG_VERSION")
    );

    let client = ServerClient::new(&server)?;
    let beats = heartbeats(&config, &client, &mut state, &fixed, &shared, &agent_url);
    let result = tokio::select! {
        result = beats => result,
        () = stop => Ok(()),
    };
    let _ = stop_api.send(());
    let _ = api.await;
    tracing::info!("agent stopped");
    result
}

async fn heartbeats(
    config: &Config,
    client: &ServerClient,
    state: &mut State,
    fixed: &Static,
    shared: &Shared,
    agent_url: &str,
) -> anyhow::Result<()> {
    let mut seq = Sequence::default();
    let mut interval = Duration::from_secs(10);
    let mut pause = Duration::from_secs(1);
    loop {
        let report = match crate::metrics::read(fixed) {
            Ok(r) => r,
            Err(e) => bail!("reading the machine: {e}"),
        };
        *shared.latest.write().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        let joined = match state.credential_for(client.base()).cloned() {
            Some(j) => j,
            None => match join(config, client, state, agent_url, &report).await {
                Ok(j) => {
                    seq.reset();
                    pause = Duration::from_secs(1);
                    j
                }
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, "cannot join yet; trying again in {} s", pause.as_secs());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                    continue;
                }
                Err(e) => return Err(e).context("joining the server"),
            },
        };
        let beat = Heartbeat {
            seq: seq.next_seq(),
            agent_url: Some(agent_url.to_owned()),
            report,
        };
        match client.heartbeat(&joined.credential, &beat).await {
            Ok(ack) => {
                interval = Duration::from_millis(ack.heartbeat_interval_ms.clamp(50, 3_600_000));
                pause = Duration::from_secs(1);
                tokio::time::sleep(interval).await;
            }
            Err(e @ (ClientError::UnknownCredential(_) | ClientError::Replayed(_))) => {
                tracing::warn!(error = %e, "joining again");
                state.joined = None;
                state.save(&config.data_dir)?;
            }
            Err(e @ ClientError::Unavailable { .. }) => {
                let wait = pause.min(interval);
                tracing::warn!(error = %e, "heartbeat not delivered; trying again in {} ms", wait.as_millis());
                tokio::time::sleep(wait).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Err(e) => {
                // A report the server refuses will be refused again: say so, and keep trying
                // at the interval, since the machine may change.
                tracing::error!(error = %e, "heartbeat refused");
                tokio::time::sleep(interval).await;
            }
        }
    }
}

async fn join(
    config: &Config,
    client: &ServerClient,
    state: &mut State,
    agent_url: &str,
    report: &slipway_core::agent::HostReport,
) -> Result<Joined, ClientError> {
    let Some(token) = &config.join_token else {
        return Err(ClientError::Refused {
            status: 0,
            detail: "the agent has no credential for this server and no join token: pass \
                     --join-token-file (a token from `slipway host join-token create`)"
                .into(),
        });
    };
    let answer = client
        .join(&JoinRequest {
            join_token: token.clone(),
            agent_id: state.agent_id.clone(),
            name: config.name.clone(),
            agent_url: agent_url.to_owned(),
            agent_secret: state.agent_secret.clone(),
            report: report.clone(),
        })
        .await?;
    tracing::info!(host = %answer.host_id, created = answer.created, "joined the server");
    let joined = Joined {
        server: client.base().to_owned(),
        host_id: answer.host_id,
        credential: answer.credential,
    };
    state.joined = Some(joined.clone());
    state
        .save(&config.data_dir)
        .map_err(|e| ClientError::Refused {
            status: 0,
            detail: format!("joined, but the credential could not be kept: {e}"),
        })?;
    Ok(joined)
}
