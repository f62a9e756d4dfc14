//! The agent's life: probe the machine, serve the API, join if it has no credential, then
//! heartbeat at the interval the server asks for, until told to stop.
//!
//! A server that cannot be reached (restarting, say) is retried with a growing pause, keeping
//! the credential. A server that no longer knows the credential (the host was removed), or that
//! refuses a heartbeat as a replay, is joined again with the join token and the same agent id,
//! so the agent becomes the same host again, never a second one.

use std::sync::Arc;
use std::time::Duration;

use slipway_core::agent::{Heartbeat, HostReport, JoinRequest};

use crate::api::Shared;
use crate::client::{ClientError, ServerClient};
use crate::config::Config;
use crate::metrics::{MetricsError, Static};
use crate::probe::Probe;
use crate::state::{Joined, Sequence, State, StateError};

/// The longest pause between attempts to reach an unavailable server, before it has said what
/// interval it wants.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Why the agent stopped other than by being told to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no server: pass --server (or set SLIPWAY_AGENT_SERVER)")]
    NoServer,
    #[error(
        "the agent has no credential for {server} and no join token: pass --join-token-file \
         (a token from `slipway host join-token create`)"
    )]
    NoJoinToken { server: String },
    #[error("the agent's state")]
    State(#[from] StateError),
    #[error("reading the machine")]
    Metrics(#[from] MetricsError),
    #[error("listening on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("joining the server")]
    Join(#[source] ClientError),
    #[error("opening the VMs and images: {0}")]
    Vms(String),
    #[error("the hypervisor probe did not finish")]
    Probe(#[from] tokio::task::JoinError),
}

/// Runs until `stop` resolves.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let server = config.server.clone().ok_or(RunError::NoServer)?;
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

    let listen_error = |source| RunError::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    let agent_url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    let accelerator = match fixed.hypervisor.accelerator {
        slipway_core::agent::Accelerator::Kvm => "kvm",
        _ => "tcg",
    };
    let qemu_path = fixed
        .hypervisor
        .qemu
        .as_ref()
        .map(|q| std::path::PathBuf::from(&q.path));
    let vms = crate::vm::Vms::open(&config.data_dir, qemu_path, accelerator)
        .map_err(|e| RunError::Vms(e.to_string()))?;
    let cache_max = match config.cache_max_mib {
        Some(mib) => mib << 20,
        None => crate::metrics::disk_mib(&config.data_dir)
            .map(|(total, _)| (total << 20) / 2)
            .unwrap_or(u64::MAX),
    };
    let cache = crate::cache::Cache::open(&config.data_dir, cache_max)
        .map_err(|e| RunError::Vms(e.to_string()))?;
    let shared = Arc::new(Shared {
        secret: state.agent_secret.clone(),
        data_dir: config.data_dir.clone(),
        latest: std::sync::RwLock::new(None),
        cache,
        vms,
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

    let client = ServerClient::new(&server).map_err(RunError::Join)?;
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
) -> Result<(), RunError> {
    let mut seq = Sequence::default();
    let mut interval = MAX_PAUSE;
    let mut pause = Duration::from_secs(1);
    loop {
        let report = crate::metrics::read(fixed)?;
        *shared.latest.write().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        let joined = match state.credential_for(client.base()).cloned() {
            Some(j) => j,
            None => match join(config, client, state, agent_url, &report).await {
                Ok((j, asked)) => {
                    interval = asked;
                    pause = Duration::from_secs(1);
                    j
                }
                Err(RunError::Join(e @ ClientError::Unavailable { .. })) => {
                    tracing::warn!(error = %e, "cannot join yet; trying again in {} s", pause.as_secs());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let beat = Heartbeat {
            seq: seq.next_seq(),
            agent_url: Some(agent_url.to_owned()),
            report,
        };
        match client.heartbeat(&joined.credential, &beat).await {
            Ok(ack) => {
                interval = interval_from(ack.heartbeat_interval_ms);
                pause = Duration::from_secs(1);
                tokio::time::sleep(interval).await;
            }
            Err(e @ (ClientError::UnknownCredential { .. } | ClientError::Replayed { .. })) => {
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

/// The interval the server asks for, within bounds that keep a mistaken value harmless.
fn interval_from(ms: u64) -> Duration {
    Duration::from_millis(ms.clamp(50, 3_600_000))
}

/// Joins with the join token and the agent's own id, and keeps the credential; returns it with
/// the heartbeat interval the server wants.
async fn join(
    config: &Config,
    client: &ServerClient,
    state: &mut State,
    agent_url: &str,
    report: &HostReport,
) -> Result<(Joined, Duration), RunError> {
    let Some(token) = &config.join_token else {
        return Err(RunError::NoJoinToken {
            server: client.base().to_owned(),
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
        .await
        .map_err(RunError::Join)?;
    tracing::info!(host = %answer.host_id, created = answer.created, "joined the server");
    let joined = Joined {
        server: client.base().to_owned(),
        host_id: answer.host_id,
        credential: answer.credential,
    };
    state.joined = Some(joined.clone());
    state.save(&config.data_dir)?;
    Ok((joined, interval_from(answer.heartbeat_interval_ms)))
}
