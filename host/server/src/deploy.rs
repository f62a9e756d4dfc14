//! Deployment: a planned request becomes VMs. For each VM of the request: a claim on the host
//! placement chose, a new identity (UUID, MACs unique across the inventory, hostname,
//! instance-id, a seed token), and a durable job that sends the staged image to the host's
//! agent (nothing when the host has it cached), has the agent create the VM (a copy-on-write
//! overlay on the cached base) and start it, and waits for the guest to fetch its seed and report
//! ready. A failure at any step gives everything back: the VM is removed from the host, its claim
//! released, and the error says which step failed and why (for a guest that never reported,
//! with the tail of its console).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slipway_core::agent::Resources;
use slipway_core::resources::Timestamp;
use slipway_core::vm::{CloneMode, NetworkMode, Vm, VmPhase, VmRunState, VmSpec, VmStatus};
use slipway_store::{Store, StoreError};
use utoipa::ToSchema;

use crate::events::EventBus;
use crate::images::ImageStore;
use crate::inventory::{Inventory, sha256_hex};
use crate::placement::{Explanation, Options, PlaceError, Placement};
use crate::plan::{Plan, placement_request};

pub const VM_DEPLOY: &str = "vm.deploy";
pub const DEPLOY_STEPS: &[&str] = &["transfer", "create", "boot", "ready"];

/// The deploy job's input, as kept in its params (which operators can read: no secret here —
/// the seed token is derived again from the server's seed key when needed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployParams {
    pub vm: String,
}

/// HMAC-SHA256 (RFC 2104), for seed tokens: a VM's token is `HMAC(seed key, VM id)`, so that
/// the server keeps only its sha256 and still can tell it to the VM's host again after a restart.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let pad = |byte: u8| -> [u8; 64] { block.map(|b| b ^ byte) };
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Reads the server's seed key from `path`, or makes one (0600) at first start.
pub fn seed_key(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    use anyhow::Context;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .with_context(|| format!("{} is not hex", path.display()))?;
            bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is not 32 bytes of hex", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut key = [0u8; 32];
            key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            let tmp = path.with_extension("key.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(hex::encode(key).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path).with_context(|| format!("creating {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A deployment's answer: its VMs and their jobs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub id: String,
    pub vms: Vec<Vm>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the request cannot be deployed as it is")]
    Invalid(Box<Plan>),
    #[error("no host can take VM {index} of the request: {}", .explanation.summary)]
    NoHost {
        index: u32,
        explanation: Box<Explanation>,
    },
    #[error("placement failed: {0}")]
    Placement(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// Why a deploy step failed; the message is for the job's error.
pub struct StepFailure(pub String);

impl<E: std::fmt::Display> From<E> for StepFailure {
    fn from(e: E) -> Self {
        StepFailure(e.to_string())
    }
}

pub struct Deployer {
    store: Store,
    inventory: Arc<Inventory>,
    placement: Arc<Placement>,
    images: ImageStore,
    events: EventBus,
    http: reqwest::Client,
    /// Where guests reach this server's seed routes, e.g. `http://10.0.2.2:7780`: from the
    /// configuration, or from the port the server bound.
    seed_url: std::sync::RwLock<String>,
    seed_key: [u8; 32],
    ready_timeout: Duration,
}

fn random_macs(prefix: [u8; 3], n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = uuid::Uuid::new_v4();
            let b = r.as_bytes();
            format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                prefix[0], prefix[1], prefix[2], b[0], b[1], b[2]
            )
        })
        .collect()
}

impl Deployer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        inventory: Arc<Inventory>,
        placement: Arc<Placement>,
        images: ImageStore,
        events: EventBus,
        seed_url: String,
        seed_key: [u8; 32],
        ready_timeout: Duration,
    ) -> Self {
        Self {
            store,
            inventory,
            placement,
            images,
            events,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            seed_url: std::sync::RwLock::new(seed_url.trim_end_matches('/').to_owned()),
            seed_key,
            ready_timeout,
        }
    }

    pub fn seed_url(&self) -> String {
        self.seed_url
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The seed token of a VM: 64 hex digits.
    pub fn seed_token(&self, vm: &str) -> String {
        hex::encode(hmac_sha256(&self.seed_key, vm.as_bytes()))
    }

    /// The SMBIOS serial that points the VM's guest at its seed.
    pub fn smbios_serial(&self, vm: &str) -> Result<String, StepFailure> {
        let url = format!("{}/v1/seed/{}/", self.seed_url(), self.seed_token(vm));
        Ok(slipway_guest::seed::SeedUrl::parse(&url)?.smbios_serial())
    }

    /// The seed's location once the server knows its port (when none was configured).
    pub fn set_seed_url(&self, url: String) {
        *self.seed_url.write().unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// Claims a host for every VM of a valid plan and records the VMs with their new
    /// identities; the caller starts their jobs. If any VM finds no host, the claims already
    /// made are released and nothing is recorded.
    pub async fn admit(
        &self,
        plan: Plan,
        clone: CloneMode,
        owner: &str,
        mac_prefix: [u8; 3],
    ) -> Result<Vec<(Vm, DeployParams)>, DeployError> {
        if !plan.valid {
            return Err(DeployError::Invalid(Box::new(plan)));
        }
        let (Some(choice), Some(hardware)) = (&plan.staged_vm, &plan.hardware) else {
            return Err(DeployError::Internal(
                "a valid plan without a staged VM".into(),
            ));
        };
        let staged = self.store.staged_vm(&choice.chosen.staged_vm).await?;
        let core = placement_request(&plan.request, hardware);
        let deployment = slipway_store::new_id();
        let mut claims: Vec<String> = Vec::new();
        let mut admitted = Vec::new();
        let exclude = match &plan.request.placement.host {
            Some(pin) => self
                .inventory
                .rooms()
                .into_iter()
                .filter(|h| h.name != *pin && h.id != *pin)
                .map(|h| h.id)
                .collect(),
            None => Vec::new(),
        };
        for (index, identity) in plan.identities.iter().enumerate() {
            let id = slipway_store::new_id();
            let placed = self
                .placement
                .place(
                    &core,
                    &Options {
                        dry_run: false,
                        exclude: exclude.clone(),
                        owner: owner.to_owned(),
                        purpose: Some(format!("vm {id}")),
                        confirmed: false,
                    },
                )
                .await;
            let placed = match placed {
                Ok(p) => p,
                Err(e) => {
                    self.undo(&claims, &admitted).await;
                    return Err(match e {
                        PlaceError::NoHost(explanation) => DeployError::NoHost {
                            index: index as u32 + 1,
                            explanation,
                        },
                        other => DeployError::Placement(other.to_string()),
                    });
                }
            };
            let claim = placed.claim.map(|c| c.id).unwrap_or_default();
            claims.push(claim.clone());
            let token = self.seed_token(&id);
            let now = Timestamp::now();
            let mut vm = Vm {
                id: id.clone(),
                deployment: deployment.clone(),
                phase: VmPhase::Deploying,
                hostname: identity.hostname.clone(),
                uuid: identity.uuid.clone(),
                instance_id: identity.instance_id.clone(),
                macs: identity.macs.clone(),
                host: placed.host.id.clone(),
                host_name: placed.host.name.clone(),
                claim: Some(claim),
                staged_vm: staged.id.clone(),
                image: staged.image.clone(),
                hardware: hardware.clone(),
                clone,
                install: plan.install.clone(),
                job: String::new(),
                transferred_bytes: None,
                ready: None,
                error: None,
                owner: owner.to_owned(),
                created_at: now,
                updated_at: now,
            };
            // MACs are drawn at random from the prefix: a clash with another VM's is refused by
            // the store, and drawn again.
            let mut inserted = Err(StoreError::Gone("no attempt".into()));
            for _ in 0..8 {
                inserted = self.store.insert_vm(&vm, &sha256_hex(&token)).await;
                match &inserted {
                    Err(StoreError::AlreadyExists { .. }) => {
                        vm.macs = random_macs(mac_prefix, vm.macs.len());
                    }
                    _ => break,
                }
            }
            if let Err(e) = inserted {
                self.undo(&claims, &admitted).await;
                return Err(e.into());
            }
            admitted.push((vm, DeployParams { vm: id }));
        }
        Ok(admitted)
    }

    /// A deployment refused part-way: the claims made and the VMs recorded so far go, so that
    /// nothing of it is left.
    async fn undo(&self, claims: &[String], admitted: &[(Vm, DeployParams)]) {
        for claim in claims {
            if let Err(e) = self.placement.release(claim).await {
                tracing::warn!(claim = %claim, error = %e, "releasing a claim of a refused deployment");
            }
        }
        for (vm, _) in admitted {
            if let Err(e) = self.store.delete_vm(&vm.id).await {
                tracing::warn!(vm = %vm.id, error = %e, "forgetting a VM of a refused deployment");
            }
        }
    }

    fn agent(&self, host: &str) -> Result<(String, String), StepFailure> {
        self.inventory.agent(host).ok_or_else(|| {
            StepFailure(format!(
                "host {host} is no longer in the inventory; its VMs cannot be reached"
            ))
        })
    }

    async fn save(&self, vm: &mut Vm) -> Result<(), StepFailure> {
        vm.updated_at = Timestamp::now();
        self.store.update_vm(vm).await.map_err(StepFailure::from)
    }

    /// Step `transfer`: the staged image to the host's cache, unless it is there already.
    pub async fn transfer(
        &self,
        vm: &mut Vm,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<(), StepFailure> {
        let (url, secret) = self.agent(&vm.host)?;
        let path = self.images.blob_path(&vm.image);
        let sent =
            crate::transfer::send_image(&self.http, &url, &secret, &path, &vm.image, progress)
                .await?;
        tracing::info!(vm = %vm.id, host = %vm.host_name, bytes = sent.bytes_sent, cached = sent.already_cached, "image transferred");
        vm.transferred_bytes = Some(sent.bytes_sent);
        self.save(vm).await
    }

    /// Step `create`: the agent makes the VM's disks and starts QEMU.
    pub async fn create(&self, vm: &Vm) -> Result<(), StepFailure> {
        let (url, secret) = self.agent(&vm.host)?;
        let spec = VmSpec {
            id: vm.id.clone(),
            uuid: vm.uuid.clone(),
            name: vm.hostname.clone(),
            base_image: vm.image.clone(),
            clone: vm.clone,
            hardware: vm.hardware.clone(),
            macs: vm.macs.clone(),
            network: NetworkMode::User,
            smbios_serial: self.smbios_serial(&vm.id)?,
        };
        let response = self
            .http
            .put(format!("{url}/v1/vms/{}", vm.id))
            .bearer_auth(&secret)
            .json(&spec)
            .timeout(Duration::from_secs(120))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(StepFailure(agent_problem(response).await));
        }
        Ok(())
    }

    /// Step `boot`: QEMU runs the VM.
    pub async fn boot(&self, vm: &Vm) -> Result<(), StepFailure> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(vm).await?;
            match status.state {
                VmRunState::Running => return Ok(()),
                VmRunState::Crashed | VmRunState::Stopped => {
                    return Err(StepFailure(format!(
                        "QEMU did not keep running: {}",
                        status.error.unwrap_or_else(|| "it exited".into())
                    )));
                }
                VmRunState::Creating if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                VmRunState::Creating => {
                    return Err(StepFailure(
                        "the VM was still being created after 30 s".into(),
                    ));
                }
            }
        }
    }

    /// Step `ready`: the guest fetched its seed, applied it, and reported.
    pub async fn ready(&self, vm: &mut Vm) -> Result<(), StepFailure> {
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let now = self.store.vm(&vm.id).await?;
            if now.phase == VmPhase::Ready {
                *vm = now;
                if let Some(claim) = &vm.claim {
                    self.store.confirm_claim(claim).await?;
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = self.console_tail(vm, 2048).await.unwrap_or_default();
                return Err(StepFailure(format!(
                    "the guest did not report ready within {} s; the end of its console:\n{}",
                    self.ready_timeout.as_secs(),
                    tail.trim_end()
                )));
            }
            // A VM that died while booting will never report.
            if let Ok(status) = self.status(vm).await
                && matches!(status.state, VmRunState::Crashed | VmRunState::Stopped)
            {
                let tail = self.console_tail(vm, 2048).await.unwrap_or_default();
                return Err(StepFailure(format!(
                    "the VM stopped before it reported ready; the end of its console:\n{}",
                    tail.trim_end()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Calls the VM's host's agent at `/v1/vms/<id><rest>`; a failure answer is an error naming
    /// what the agent said.
    async fn call_agent(
        &self,
        vm: &Vm,
        method: reqwest::Method,
        rest: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<reqwest::Response, StepFailure> {
        let (url, secret) = self.agent(&vm.host)?;
        let mut request = self
            .http
            .request(method, format!("{url}/v1/vms/{}{rest}", vm.id))
            .bearer_auth(&secret)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            return Err(StepFailure(agent_problem(response).await));
        }
        Ok(response)
    }

    pub async fn status(&self, vm: &Vm) -> Result<VmStatus, StepFailure> {
        let response = self
            .call_agent(vm, reqwest::Method::GET, "", None, Duration::from_secs(10))
            .await?;
        Ok(response.json().await?)
    }

    pub async fn console_tail(&self, vm: &Vm, bytes: u64) -> Result<String, StepFailure> {
        let rest = format!("/console?tail_bytes={bytes}");
        let response = self
            .call_agent(
                vm,
                reqwest::Method::GET,
                &rest,
                None,
                Duration::from_secs(10),
            )
            .await?;
        Ok(response.text().await?)
    }

    /// Asks the host to stop (power down, then force after `timeout_s`) or start the VM.
    pub async fn power(
        &self,
        vm: &Vm,
        action: &str,
        timeout_s: u64,
    ) -> Result<VmStatus, StepFailure> {
        let response = self
            .call_agent(
                vm,
                reqwest::Method::POST,
                &format!("/{action}"),
                Some(serde_json::json!({ "timeout_s": timeout_s })),
                Duration::from_secs(timeout_s + 30),
            )
            .await?;
        Ok(response.json().await?)
    }

    /// Removes the VM from its host; a VM the host does not know is already gone.
    pub async fn remove_from_host(&self, vm: &Vm) -> Result<(), StepFailure> {
        let (url, secret) = self.agent(&vm.host)?;
        let response = self
            .http
            .delete(format!("{url}/v1/vms/{}", vm.id))
            .bearer_auth(&secret)
            .timeout(Duration::from_secs(60))
            .send()
            .await?;
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(StepFailure(agent_problem(response).await))
        }
    }

    /// After a failed step: the VM off its host, its claim released, its record failed.
    pub async fn give_back(&self, vm: &mut Vm, error: String) {
        if let Err(StepFailure(e)) = self.remove_from_host(vm).await {
            tracing::warn!(vm = %vm.id, error = %e, "removing a failed VM from its host");
        }
        if let Some(claim) = vm.claim.take()
            && let Err(e) = self.placement.release(&claim).await
        {
            tracing::warn!(vm = %vm.id, claim = %claim, error = %e, "releasing a failed VM's claim");
        }
        vm.phase = VmPhase::Failed;
        vm.error = Some(error);
        if let Err(StepFailure(e)) = self.save(vm).await {
            tracing::error!(vm = %vm.id, error = %e, "recording a failed VM");
        }
        self.events
            .notify(
                "vm",
                &vm.id,
                "failed",
                serde_json::json!({ "error": vm.error }),
            )
            .await;
    }

    /// Deletes a VM: off its host, its claim released, its record, MACs and seed token gone.
    pub async fn delete(&self, vm: &Vm) -> Result<Vm, StepFailure> {
        if self.inventory.agent(&vm.host).is_some() {
            match self.remove_from_host(vm).await {
                Ok(()) => {}
                // A failed VM was removed from its host when it failed, as far as the host let:
                // an unreachable host does not keep its record alive.
                Err(StepFailure(e)) if vm.phase == VmPhase::Failed => {
                    tracing::warn!(vm = %vm.id, error = %e, "the host of a failed VM did not answer its removal");
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(claim) = &vm.claim
            && let Err(e) = self.placement.release(claim).await
            && !matches!(e, StoreError::NotFound { .. })
        {
            return Err(StepFailure(e.to_string()));
        }
        let gone = self.store.delete_vm(&vm.id).await?;
        self.events
            .notify(
                "vm",
                &vm.id,
                "deleted",
                serde_json::json!({ "host": vm.host }),
            )
            .await;
        Ok(gone)
    }

    /// The resources a VM holds on its host, for its claim.
    pub fn resources(vm: &Vm) -> Resources {
        Resources {
            vcpus: vm.hardware.vcpus,
            memory_mib: vm.hardware.memory_mib,
            disk_mib: vm.hardware.disks.iter().map(|d| d.size_mib).sum(),
        }
    }
}

/// An agent's problem answer, as one line.
async fn agent_problem(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(500).collect());
    format!("the host's agent answered {status}: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2: a key shorter than a block is padded with zeros, as ours is.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
