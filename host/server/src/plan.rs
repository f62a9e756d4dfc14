//! Plans: a request validated in its three layers, the closest staged VM chosen, the apps it
//! lacks listed, the host placement would choose, and the identity each VM would get — all
//! without deploying or claiming anything. A deployment starts from the same plan.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_core::Firmware;
use slipway_core::HostFeature;
use slipway_core::PlacementRequest;
use slipway_core::catalog::{ApplicationSpec, HardwareConfig};
use slipway_core::request::{
    self, AppInstall, CatalogView, Choice, Finding, Need, VmRequest, has_errors,
};
use slipway_core::resources::{Role, StagedVm};
use slipway_store::{PageRequest, Store, StoreError};
use utoipa::ToSchema;

use crate::inventory::Inventory;
use crate::placement::{Explanation, Options, PlaceError, Placed, Placement};
use crate::validators::{ValidatorRun, Validators};

/// What a plan answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// No finding is an error: the request can be deployed as planned.
    pub valid: bool,
    /// Every finding of every layer, errors first.
    pub findings: Vec<Finding>,
    /// The request as understood: units resolved, "any" left out.
    pub request: VmRequest,
    /// The VM's hardware: the request's, the staged VM's where the request has no preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareConfig>,
    /// The chosen staged VM with its score, criterion by criterion, and the runner-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_vm: Option<Choice>,
    /// The apps the chosen staged VM lacks, installed at first boot.
    pub install: Vec<AppInstall>,
    /// Where the placement pipeline would put the first VM, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlannedPlacement>,
    /// The identity each VM would get. Not reserved: a deployment makes its own.
    pub identities: Vec<IdentityPreview>,
    /// How each validator plugin's run went.
    pub validators: Vec<ValidatorRun>,
    pub elapsed_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlannedPlacement {
    /// The host chosen; absent when none fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<crate::placement::HostRef>,
    pub explanation: Explanation,
}

/// A VM's new identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IdentityPreview {
    pub uuid: String,
    pub instance_id: String,
    pub hostname: String,
    /// One per NIC.
    pub macs: Vec<String>,
}

pub struct Planner {
    store: Store,
    inventory: Arc<Inventory>,
    placement: Arc<Placement>,
    validators: Arc<Validators>,
    mac_prefix: [u8; 3],
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A placement plugin failed the dry run; the message names it.
    #[error("placement failed: {0}")]
    Plugin(String),
    #[error("{0}")]
    Internal(String),
}

/// What a plan is judged against, read once per plan.
struct World {
    staged: Vec<StagedVm>,
    applications: Vec<ApplicationSpec>,
    rooms: Vec<slipway_core::request::HostRoom>,
}

/// What the validation layers make of one body.
struct Layers {
    request: VmRequest,
    findings: Vec<Finding>,
    resolved: request::Resolved,
    place_request: Option<PlacementRequest>,
    validators: Vec<ValidatorRun>,
}

/// Everything of one kind in the store, page by page.
async fn all_staged(store: &Store) -> Result<Vec<StagedVm>, StoreError> {
    let mut out = Vec::new();
    let mut page = PageRequest {
        after: None,
        limit: PageRequest::MAX_LIMIT,
    };
    loop {
        let p = store.list_staged_vms(None, &page).await?;
        out.extend(p.items);
        match p.next {
            Some(next) => page.after = Some(next),
            None => return Ok(out),
        }
    }
}

async fn all_applications(store: &Store) -> Result<Vec<ApplicationSpec>, StoreError> {
    let mut out = Vec::new();
    let mut page = PageRequest {
        after: None,
        limit: PageRequest::MAX_LIMIT,
    };
    loop {
        let p = store.list_applications(None, &page).await?;
        out.extend(p.items.into_iter().map(|a| a.spec));
        match p.next {
            Some(next) => page.after = Some(next),
            None => return Ok(out),
        }
    }
}

impl Planner {
    pub fn new(
        store: Store,
        inventory: Arc<Inventory>,
        placement: Arc<Placement>,
        validators: Arc<Validators>,
        mac_prefix: [u8; 3],
    ) -> Self {
        Self {
            store,
            inventory,
            placement,
            validators,
            mac_prefix,
        }
    }

    pub fn validators(&self) -> &Arc<Validators> {
        &self.validators
    }

    /// The three layers of validation, on one body, against one view of the catalog and hosts.
    async fn layers(&self, body: &Value, role: Role, world: &World) -> Layers {
        // 1. Schema.
        let (request, mut findings) = request::parse(body);
        // 2. Consistency, against the catalog.
        let resolved = request::check(
            &request,
            role,
            &CatalogView {
                staged: &world.staged,
                applications: &world.applications,
            },
        );
        findings.extend(resolved.findings.iter().cloned());
        let chosen = resolved
            .choice
            .as_ref()
            .and_then(|c| world.staged.iter().find(|s| s.id == c.chosen.staged_vm));
        // Feasibility, against the hosts.
        let mut place_request = None;
        if let Some(hw) = &resolved.hardware {
            let core = placement_request(&request, hw);
            let disk_field = (request
                .hardware
                .disks
                .as_ref()
                .is_some_and(|d| d.len() == 1))
            .then_some("hardware.disks[0].size");
            let need = Need {
                resources: slipway_core::agent::Resources {
                    vcpus: core.vcpus,
                    memory_mib: core.memory_mib,
                    disk_mib: core.disk_mib,
                },
                count: request.count,
                arch: core.arch,
                labels: &request.placement.labels,
                anti_affinity_group: request.placement.anti_affinity_group.as_deref(),
                host: request.placement.host.as_deref(),
                disk_field,
            };
            findings.extend(request::feasibility(&need, &world.rooms));
            place_request = Some(core);
        }
        // 3. The site's validators.
        let (found, validators) = self
            .validators
            .validate(
                &request,
                resolved.hardware.as_ref(),
                chosen,
                role,
                &world.staged,
            )
            .await;
        findings.extend(found);
        Layers {
            request,
            findings,
            resolved,
            place_request,
            validators,
        }
    }

    /// Makes the suggestions of error findings hold together: the body with every suggestion
    /// taken is validated again, and where a suggested value still fails (1024 vCPUs is in
    /// range but exceeds every host) the better suggestion replaces it; a problem that only the
    /// suggested values reveal is added. A few rounds at most: each usually settles one level
    /// (range, then every host, then the free room, then the count).
    async fn refine(&self, body: &Value, role: Role, world: &World, findings: &mut Vec<Finding>) {
        for _ in 0..4 {
            if !findings
                .iter()
                .any(|f| f.is_error() && f.suggestion.is_some())
            {
                return;
            }
            let mut fixed = body.clone();
            request::apply_suggestions(&mut fixed, findings);
            let again = self.layers(&fixed, role, world).await;
            let mut changed = false;
            for e in again.findings.into_iter().filter(Finding::is_error) {
                match findings
                    .iter_mut()
                    .find(|f| f.field == e.field && f.is_error())
                {
                    Some(f) if e.suggestion.is_some() && f.suggestion != e.suggestion => {
                        f.suggestion = e.suggestion;
                        changed = true;
                    }
                    Some(_) => {}
                    None => {
                        findings.push(Finding {
                            message: format!("with the other suggestions taken: {}", e.message),
                            ..e
                        });
                        changed = true;
                    }
                }
            }
            if !changed {
                return;
            }
        }
    }

    /// Plans `body` (a request's JSON) for a caller of `role`.
    pub async fn plan(&self, body: &Value, role: Role, owner: &str) -> Result<Plan, PlanError> {
        let started = Instant::now();
        let world = World {
            staged: all_staged(&self.store).await?,
            applications: all_applications(&self.store).await?,
            rooms: self.inventory.rooms(),
        };
        let Layers {
            request,
            mut findings,
            resolved,
            place_request,
            validators,
        } = self.layers(body, role, &world).await;
        if has_errors(&findings) {
            self.refine(body, role, &world, &mut findings).await;
        }
        let rooms = &world.rooms;

        // Where placement would put it: a dry run, explained, even when something above fails,
        // unless the request is pinned to a host that does not exist.
        let mut placement = None;
        if let Some(core) = &place_request {
            let exclude = match &request.placement.host {
                Some(pin) => {
                    let Some(host) = rooms.iter().find(|h| h.name == *pin || h.id == *pin) else {
                        return Ok(self.finish(
                            request,
                            findings,
                            resolved.hardware,
                            resolved.choice,
                            resolved.install,
                            None,
                            validators,
                            started,
                        ));
                    };
                    rooms
                        .iter()
                        .filter(|h| h.id != host.id)
                        .map(|h| h.id.clone())
                        .collect()
                }
                None => Vec::new(),
            };
            let options = Options {
                dry_run: true,
                exclude,
                owner: owner.to_owned(),
                ..Options::default()
            };
            match self.placement.place(core, &options).await {
                Ok(Placed {
                    host, explanation, ..
                }) => {
                    placement = Some(PlannedPlacement {
                        host: Some(host),
                        explanation,
                    })
                }
                Err(PlaceError::NoHost(explanation)) => {
                    // Feasibility names the dimension when one is short; when none is, a
                    // plugin's filter (features, a site's rule) refused every host: say so.
                    if !findings.iter().any(|f| f.source == "feasibility") {
                        findings.push(Finding::error(
                            "placement",
                            "no-host",
                            "",
                            format!("no host can take this VM: {}", explanation.summary),
                        ));
                    }
                    placement = Some(PlannedPlacement {
                        host: None,
                        explanation: *explanation,
                    });
                }
                Err(PlaceError::Plugin(e)) => return Err(PlanError::Plugin(e.to_string())),
                Err(PlaceError::Store(e)) => return Err(e.into()),
                Err(e) => return Err(PlanError::Internal(e.to_string())),
            }
        }
        Ok(self.finish(
            request,
            findings,
            resolved.hardware,
            resolved.choice,
            resolved.install,
            placement,
            validators,
            started,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        request: VmRequest,
        mut findings: Vec<Finding>,
        hardware: Option<HardwareConfig>,
        staged_vm: Option<Choice>,
        install: Vec<AppInstall>,
        placement: Option<PlannedPlacement>,
        validators: Vec<ValidatorRun>,
        started: Instant,
    ) -> Plan {
        // Errors first, then warnings, then notes; within each, in the order found.
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        let nics = hardware.as_ref().map_or(0, |h| h.nics.len());
        let identities = (1..=request.count)
            .map(|n| preview(&request, n, nics, self.mac_prefix))
            .collect();
        Plan {
            valid: !has_errors(&findings),
            findings,
            request,
            hardware,
            staged_vm,
            install,
            placement,
            identities,
            validators,
            elapsed_us: started.elapsed().as_micros().try_into().unwrap_or(u64::MAX),
        }
    }
}

/// What the VM asks of a host.
pub fn placement_request(request: &VmRequest, hw: &HardwareConfig) -> PlacementRequest {
    let mut features = Vec::new();
    if hw.firmware == Firmware::Uefi {
        features.push(HostFeature::Uefi);
    }
    PlacementRequest {
        vcpus: hw.vcpus,
        memory_mib: hw.memory_mib,
        disk_mib: hw.disks.iter().map(|d| d.size_mib).sum(),
        arch: hw.arch,
        features,
        required_labels: request.placement.labels.clone(),
        anti_affinity_group: request.placement.anti_affinity_group.clone(),
        affinity_group: request.placement.affinity_group.clone(),
    }
}

/// A fresh identity for the `n`th VM of a request.
pub fn preview(request: &VmRequest, n: u32, nics: usize, mac_prefix: [u8; 3]) -> IdentityPreview {
    let uuid = uuid::Uuid::new_v4();
    let short = &uuid.simple().to_string()[..8];
    let hostname = match (&request.hostname, &request.hostname_pattern) {
        (Some(h), _) => h.clone(),
        (None, Some(p)) => p.replace("{n}", &n.to_string()).replace("{id}", short),
        (None, None) => format!("vm-{short}"),
    };
    let macs = (0..nics)
        .map(|_| {
            let r = uuid::Uuid::new_v4();
            let b = r.as_bytes();
            format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                mac_prefix[0], mac_prefix[1], mac_prefix[2], b[0], b[1], b[2]
            )
        })
        .collect();
    IdentityPreview {
        uuid: uuid.to_string(),
        instance_id: format!("i-{}", &uuid::Uuid::new_v4().simple().to_string()[..17]),
        hostname,
        macs,
    }
}
