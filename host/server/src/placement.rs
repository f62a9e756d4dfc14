//! Placement: the configured pipeline of placement plugins run over a snapshot of the inventory,
//! and the chosen host's resources claimed in the store in the same step.
//!
//! Decisions of one server are serialised: each takes the inventory as the previous one left it,
//! so two decisions never pick the last room on a host together and retry. That is the simple
//! half. The other half is the store's conditional claim ([`slipway_store::Store::claim`]): it
//! holds even when another server (sharing a PostgreSQL database) claimed since the snapshot.
//! A claim the store refuses sends the decision round again without that host, a few times.
//!
//! The pipeline is an `Arc` swapped whole when an admin changes it or replaces a plugin: a
//! decision in flight finishes on the version it started with.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use slipway_core::PlacementRequest as CoreRequest;
use slipway_core::agent::Resources;
use slipway_core::host::Claim;
use slipway_core::resources::Timestamp;
use slipway_runtime::PluginError;
use slipway_runtime::placement::{
    Decision, DetailKind, Pipeline, PipelineError, PipelineRejection, Step,
};
use slipway_store::{ClaimRefusal, NewClaim, Store, StoreError};
use utoipa::ToSchema;

use crate::inventory::{Inventory, Snapshot};
use crate::metrics::Metrics;
use crate::plugins::{Entry, Registry, RegistryError};

/// The settings key the pipeline is stored under.
const SETTING: &str = "placement.pipeline";

/// How many times a decision goes round after the store refused its claim.
const ATTEMPTS: u32 = 4;

/// The pipeline as an admin configures it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Run in order: every filter, then every scorer.
    pub steps: Vec<StepSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// A placement plugin, by name.
    pub plugin: String,
    /// How much a scorer's normalised score counts [default: 1].
    #[serde(default = "one")]
    pub weight: f64,
    /// Keys merged over the plugin manifest's `config`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// A disabled step stays configured but does not run [default: true].
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

impl PipelineSpec {
    /// What a server without a configured pipeline runs: the bundled filters and bin-packing,
    /// of those that are loaded.
    fn default_for(registry: &Registry) -> Self {
        let steps = ["capacity-filter", "label-filter", "binpack-score"]
            .into_iter()
            .filter(|name| registry.get(name).is_some())
            .map(|name| StepSpec {
                plugin: name.to_owned(),
                weight: 1.0,
                config: serde_json::Map::new(),
                enabled: true,
            })
            .collect();
        Self { steps }
    }
}

/// The pipeline a decision runs, as built from a spec.
pub struct Active {
    pub spec: PipelineSpec,
    /// The spec's revision in the store (0: the default, never set).
    pub revision: u64,
    pub pipeline: Pipeline,
    /// `name@version` of each step that runs.
    pub plugins: Vec<String>,
}

/// The pipeline as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PipelineView {
    pub revision: u64,
    pub steps: Vec<StepSpec>,
    /// `name@version` of each step that runs, in order.
    pub running: Vec<String>,
}

/// Why a spec cannot be used: each with the step it is about.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("steps[{index}].plugin: no plugin is named {name}")]
    Unknown { index: usize, name: String },
    #[error("steps[{index}].plugin: {name} is a {kind} plugin, not a placement plugin")]
    NotPlacement {
        index: usize,
        name: String,
        kind: &'static str,
    },
    #[error("steps[{index}]: {source}")]
    Plugin {
        index: usize,
        #[source]
        source: PluginError,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl SpecError {
    /// The JSON path of the field at fault.
    pub fn field(&self) -> String {
        match self {
            SpecError::Unknown { index, .. } | SpecError::NotPlacement { index, .. } => {
                format!("steps[{index}].plugin")
            }
            SpecError::Plugin { index, .. } => format!("steps[{index}].config"),
            SpecError::Pipeline(_) => "steps".to_owned(),
        }
    }
}

/// What a caller asks of one placement, beside the request.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Decide and explain, but claim nothing.
    pub dry_run: bool,
    /// Hosts not to choose (a migration's source).
    pub exclude: Vec<String>,
    /// The token that asks, by id.
    pub owner: String,
    pub purpose: Option<String>,
    /// Claim confirmed at once instead of pending for the claim TTL.
    pub confirmed: bool,
}

/// A placement's answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Placed {
    /// The claim made; absent on a dry run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    pub host: HostRef,
    pub explanation: Explanation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostRef {
    pub id: String,
    pub name: String,
}

/// Why a placement came out as it did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Explanation {
    /// One line: "3/12 hosts fit: 7 insufficient memory (capacity-filter), 2 unreachable".
    pub summary: String,
    /// Hosts in the inventory.
    pub hosts: usize,
    /// Hosts the plugins saw (the others were unreachable, drained or excluded).
    pub candidates: usize,
    /// Hosts that passed every filter.
    pub fit: usize,
    /// Hosts left out before the plugins ran, by why.
    pub left_out: BTreeMap<String, usize>,
    /// Rejections counted by plugin and reason, most first.
    pub rejections: Vec<ReasonCount>,
    /// The chosen host's score, plugin by plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<Scored>,
    /// The next best hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runners_up: Vec<Scored>,
    /// When nothing fits: the host that comes closest, and all it lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest: Option<Closest>,
    /// `name@version` of each plugin that ran, in order.
    pub pipeline: Vec<String>,
    pub pipeline_revision: u64,
    /// Hosts whose claim the store refused (claimed meanwhile elsewhere), each then left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_conflicts: Vec<String>,
    /// Time spent deciding and claiming, in microseconds.
    pub elapsed_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReasonCount {
    pub plugin: String,
    pub reason: String,
    /// Which label, group or features, for reasons that name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub hosts: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Scored {
    pub host: HostRef,
    pub total: f64,
    pub scores: Vec<ScorePart>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScorePart {
    pub plugin: String,
    /// What the plugin returned.
    pub raw: f64,
    /// Scaled to 0..1 over the hosts that fit.
    pub normalised: f64,
    pub weight: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Closest {
    pub host: HostRef,
    pub lacks: Vec<Lack>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lack {
    pub plugin: String,
    pub reason: String,
    /// How much, or which: "2048 MiB", "rack=b".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a placement did not place.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("no host can take this VM: {}", .0.summary)]
    NoHost(Box<Explanation>),
    /// A plugin failed the decision; the message names it.
    #[error("placement failed: {0}")]
    Plugin(#[from] PluginError),
    #[error("the request is not valid: {0}")]
    Invalid(String),
    /// Other servers kept claiming the hosts this one chose.
    #[error("{0}")]
    Contended(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Placement {
    store: Store,
    inventory: Arc<Inventory>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    active: RwLock<Arc<Active>>,
    /// Serialises decisions (see the module's comment) and pipeline changes.
    turn: tokio::sync::Mutex<()>,
    claim_ttl: Duration,
}

impl Placement {
    /// Builds the stored pipeline (or the default). A stored pipeline that no longer builds (a
    /// plugin it names is gone) is not fatal: the server starts with the default and says why.
    pub async fn open(
        store: Store,
        inventory: Arc<Inventory>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        claim_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let stored = store.setting(SETTING).await?;
        let active = match stored {
            Some((value, revision)) => {
                let built = serde_json::from_value::<PipelineSpec>(value)
                    .map_err(|e| e.to_string())
                    .and_then(|spec| {
                        build(&registry, &spec, revision, None).map_err(|e| e.to_string())
                    });
                match built {
                    Ok(active) => active,
                    Err(e) => {
                        tracing::error!(error = %e, "the stored placement pipeline cannot be built; using the default until an admin sets one");
                        build(
                            &registry,
                            &PipelineSpec::default_for(&registry),
                            revision,
                            None,
                        )?
                    }
                }
            }
            None => build(&registry, &PipelineSpec::default_for(&registry), 0, None)?,
        };
        Ok(Self {
            store,
            inventory,
            registry,
            metrics,
            active: RwLock::new(Arc::new(active)),
            turn: tokio::sync::Mutex::new(()),
            claim_ttl,
        })
    }

    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn swap(&self, active: Active) {
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(active);
    }

    pub fn view(&self) -> PipelineView {
        let a = self.active();
        PipelineView {
            revision: a.revision,
            steps: a.spec.steps.clone(),
            running: a.plugins.clone(),
        }
    }

    /// Replaces the pipeline, if `expected` is its revision (when given).
    pub async fn set_pipeline(
        &self,
        spec: PipelineSpec,
        expected: Option<u64>,
    ) -> Result<PipelineView, SetError> {
        let _turn = self.turn.lock().await;
        let registry = self.registry.clone();
        let checked = spec.clone();
        // Loading a configured plugin may compile: not on the async threads.
        let built = tokio::task::spawn_blocking(move || build(&registry, &checked, 0, None))
            .await
            .map_err(|e| SetError::Internal(e.to_string()))??;
        let value = serde_json::to_value(&spec).map_err(|e| SetError::Internal(e.to_string()))?;
        let revision = self.store.put_setting(SETTING, &value, expected).await?;
        self.swap(Active { revision, ..built });
        Ok(self.view())
    }

    /// Installs (or replaces) a plugin, and rebuilds the pipeline with it; refused, with
    /// nothing changed, when the pipeline would not build with the new plugin.
    pub async fn install_plugin(
        &self,
        name: String,
        manifest: String,
        component: Vec<u8>,
    ) -> Result<(Entry, Option<Entry>), SetError> {
        let _turn = self.turn.lock().await;
        let registry = self.registry.clone();
        let current = self.active();
        let (installed, rebuilt) = tokio::task::spawn_blocking(move || {
            let mut rebuilt = None;
            let installed = registry.install(&name, &manifest, component, |entry| {
                // Build against a registry view with the new entry in place of the old.
                let active = build(&registry, &current.spec, current.revision, Some(entry))
                    .map_err(|e| RegistryError::Plugin(spec_to_plugin_error(e, &name)))?;
                rebuilt = Some(active);
                Ok(())
            })?;
            Ok::<_, SetError>((installed, rebuilt))
        })
        .await
        .map_err(|e| SetError::Internal(e.to_string()))??;
        if let Some(active) = rebuilt {
            self.swap(active);
        }
        Ok(installed)
    }

    /// Removes an installed plugin; refused while an enabled step needs it and nothing of that
    /// name would remain.
    pub async fn remove_plugin(&self, name: String) -> Result<Entry, SetError> {
        let _turn = self.turn.lock().await;
        let registry = self.registry.clone();
        let current = self.active();
        let (removed, rebuilt) = tokio::task::spawn_blocking(move || {
            let mut rebuilt = None;
            let removed = registry.remove(&name, |fallback| {
                let used = current
                    .spec
                    .steps
                    .iter()
                    .any(|s| s.plugin == name && s.enabled);
                match fallback {
                    None if used => Err(RegistryError::Plugin(PluginError::Setup {
                        plugin: name.clone(),
                        detail: "the placement pipeline uses it; disable or remove its step first"
                            .into(),
                    })),
                    None => Ok(()),
                    Some(bundled) => {
                        let active =
                            build(&registry, &current.spec, current.revision, Some(bundled))
                                .map_err(|e| {
                                    RegistryError::Plugin(spec_to_plugin_error(e, &name))
                                })?;
                        rebuilt = Some(active);
                        Ok(())
                    }
                }
            })?;
            Ok::<_, SetError>((removed, rebuilt))
        })
        .await
        .map_err(|e| SetError::Internal(e.to_string()))??;
        if let Some(active) = rebuilt {
            self.swap(active);
        } else {
            // The removed plugin was not in a running step, or its step is disabled.
            let current = self.active();
            if let Ok(active) = build(&self.registry, &current.spec, current.revision, None) {
                self.swap(active);
            }
        }
        Ok(removed)
    }

    /// Decides where `request` goes and claims it there (unless a dry run).
    pub async fn place(
        &self,
        request: &CoreRequest,
        options: &Options,
    ) -> Result<Placed, PlaceError> {
        check(request)?;
        let started = Instant::now();
        let result = self.place_inner(request, options, started).await;
        let outcome = match &result {
            Ok(_) => "placed",
            Err(PlaceError::NoHost(_)) => "no_host",
            Err(_) => "error",
        };
        self.metrics.placement(outcome, started.elapsed());
        result
    }

    async fn place_inner(
        &self,
        request: &CoreRequest,
        options: &Options,
        started: Instant,
    ) -> Result<Placed, PlaceError> {
        // A dry run claims nothing, so it need not wait its turn.
        let _turn = if options.dry_run {
            None
        } else {
            Some(self.turn.lock().await)
        };
        let active = self.active();
        let mut exclude = options.exclude.clone();
        let mut conflicts = Vec::new();
        for _ in 0..ATTEMPTS {
            let inventory = self.inventory.clone();
            let core = request.clone();
            let excluded = exclude.clone();
            let pipeline = active.clone();
            let (snapshot, decided) = tokio::task::spawn_blocking(move || {
                let snapshot = inventory.snapshot(&core, &excluded);
                let decided = decide(&pipeline, &snapshot);
                (snapshot, decided)
            })
            .await
            .map_err(|e| PlaceError::Internal(format!("the decision panicked: {e}")))?;
            let (decision, all) = match decided {
                Ok(d) => d,
                Err(e) => {
                    self.metrics.plugin_failed(e.plugin());
                    return Err(e.into());
                }
            };
            self.metrics.plugin_calls(&decision);
            let mut explanation = self.explain(&active, &snapshot, &decision, all.as_deref());
            explanation.claim_conflicts = conflicts.clone();
            let Some(chosen) = decision.chosen else {
                explanation.elapsed_us = elapsed_us(started);
                return Err(PlaceError::NoHost(Box::new(explanation)));
            };
            let host_id = snapshot.ids[chosen as usize].clone();
            // Heartbeats that arrive while the claim is written would copy the fleet to keep
            // this snapshot intact: let it go first.
            drop(snapshot);
            let host_id = &host_id;
            let host = self.host_ref(host_id);
            if options.dry_run {
                explanation.elapsed_us = elapsed_us(started);
                return Ok(Placed {
                    claim: None,
                    host,
                    explanation,
                });
            }
            let claimed = self
                .store
                .claim(&NewClaim {
                    host: host_id,
                    resources: Resources {
                        vcpus: request.vcpus,
                        memory_mib: request.memory_mib,
                        disk_mib: request.disk_mib,
                    },
                    anti_affinity_group: request.anti_affinity_group.as_deref(),
                    affinity_group: request.affinity_group.as_deref(),
                    expires_at: (!options.confirmed).then(|| {
                        Timestamp(
                            Timestamp::now().0
                                + i64::try_from(self.claim_ttl.as_millis()).unwrap_or(i64::MAX / 2),
                        )
                    }),
                    owner: &options.owner,
                    purpose: options.purpose.as_deref(),
                })
                .await?;
            match claimed {
                Ok(claim) => {
                    self.inventory.claimed(&claim);
                    explanation.elapsed_us = elapsed_us(started);
                    return Ok(Placed {
                        claim: Some(claim),
                        host,
                        explanation,
                    });
                }
                Err(refusal) => {
                    tracing::info!(host = %host_id, ?refusal, "the store refused a claim the inventory allowed; deciding again without the host");
                    if let Ok(record) = self.store.host(host_id).await {
                        self.inventory.refresh(&record);
                    }
                    if refusal == ClaimRefusal::NoHost {
                        self.inventory.remove(host_id);
                    }
                    conflicts.push(host.name.clone());
                    exclude.push(host_id.clone());
                }
            }
        }
        Err(PlaceError::Contended(format!(
            "the store refused {ATTEMPTS} claims in a row ({}): other decisions took those hosts first; try again",
            conflicts.join(", ")
        )))
    }

    fn host_ref(&self, id: &str) -> HostRef {
        HostRef {
            id: id.to_owned(),
            name: self
                .inventory
                .host(id)
                .map(|h| h.name)
                .unwrap_or_else(|| id.to_owned()),
        }
    }

    fn explain(
        &self,
        active: &Active,
        snapshot: &Snapshot,
        d: &Decision,
        all: Option<&[PipelineRejection]>,
    ) -> Explanation {
        let mut counts: Vec<ReasonCount> = Vec::new();
        for r in &d.rejections {
            let plugin = d.plugin(r);
            let declared = d.reason(r);
            // "missing label rack=b" counts apart from "missing label rack=c"; amounts do not.
            let detail = match declared.detail {
                DetailKind::Symbol | DetailKind::Features => {
                    detail_text(declared.detail, r.detail, &snapshot.fleet)
                }
                _ => None,
            };
            match counts
                .iter_mut()
                .find(|c| c.plugin == plugin && c.reason == declared.message && c.detail == detail)
            {
                Some(c) => c.hosts += 1,
                None => counts.push(ReasonCount {
                    plugin: plugin.to_owned(),
                    reason: declared.message.clone(),
                    detail,
                    hosts: 1,
                }),
            }
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.hosts));
        let left_out: BTreeMap<String, usize> = snapshot
            .left_out
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let hosts = d.considered + left_out.values().sum::<usize>();
        let mut parts: Vec<String> = counts
            .iter()
            .map(|c| match &c.detail {
                Some(detail) => format!("{} {} {detail} ({})", c.hosts, c.reason, c.plugin),
                None => format!("{} {} ({})", c.hosts, c.reason, c.plugin),
            })
            .collect();
        parts.extend(left_out.iter().map(|(why, n)| format!("{n} {why}")));
        let mut summary = format!("{}/{} hosts fit", d.survivors.len(), hosts);
        if !parts.is_empty() {
            summary.push_str(": ");
            summary.push_str(&parts.join(", "));
        }
        // The best four (the chosen and three runners-up), without sorting every host that fit.
        let order = |&a: &usize, &b: &usize| d.totals[b].total_cmp(&d.totals[a]).then(a.cmp(&b));
        let mut ranked: Vec<usize> = (0..d.survivors.len()).collect();
        if ranked.len() > 4 {
            ranked.select_nth_unstable_by(3, order);
            ranked.truncate(4);
        }
        ranked.sort_by(order);
        let scored = |k: usize| Scored {
            host: self.host_ref(&snapshot.ids[d.survivors[k] as usize]),
            total: d.totals[k],
            scores: d
                .scores
                .iter()
                .map(|(step, (raw, weight))| ScorePart {
                    plugin: d.step_name(*step).to_owned(),
                    raw: raw[k],
                    normalised: normalised(raw, k),
                    weight: *weight,
                })
                .collect(),
        };
        let chosen = d
            .chosen
            .and_then(|c| d.survivors.iter().position(|&s| s == c))
            .map(scored);
        let runners_up = ranked
            .iter()
            .filter(|&&k| Some(d.survivors[k]) != d.chosen)
            .take(3)
            .map(|&k| scored(k))
            .collect();
        Explanation {
            summary,
            hosts,
            candidates: d.considered,
            fit: d.survivors.len(),
            left_out,
            rejections: counts,
            chosen,
            runners_up,
            closest: all.and_then(|all| self.closest(snapshot, d, all)),
            pipeline: active.plugins.clone(),
            pipeline_revision: active.revision,
            claim_conflicts: Vec::new(),
            elapsed_us: 0,
        }
    }

    /// The host failing the fewest filters, ties to the one lacking least (relative to what was
    /// asked), and every reason it fails.
    fn closest(
        &self,
        snapshot: &Snapshot,
        d: &Decision,
        all: &[PipelineRejection],
    ) -> Option<Closest> {
        let mut per_host: BTreeMap<u32, Vec<&PipelineRejection>> = BTreeMap::new();
        for r in all {
            per_host.entry(r.host).or_default().push(r);
        }
        let shortfall = |r: &PipelineRejection| -> f64 {
            let asked = match d.reason(r).detail {
                DetailKind::Mib => {
                    f64::from(snapshot.request.memory_mib.max(snapshot.request.disk_mib)).max(1.0)
                }
                DetailKind::Count => f64::from(snapshot.request.vcpus).max(1.0),
                _ => return 1.0,
            };
            (r.detail as f64 / asked).min(1.0)
        };
        let (&host, reasons) = per_host.iter().min_by(|a, b| {
            let cost = |rs: &Vec<&PipelineRejection>| {
                (rs.len(), rs.iter().map(|r| shortfall(r)).sum::<f64>())
            };
            let (na, sa) = cost(a.1);
            let (nb, sb) = cost(b.1);
            na.cmp(&nb).then(sa.total_cmp(&sb)).then(a.0.cmp(b.0))
        })?;
        let lacks = reasons
            .iter()
            .map(|r| Lack {
                plugin: d.plugin(r).to_owned(),
                reason: d.reason(r).message.clone(),
                detail: detail_text(d.reason(r).detail, r.detail, &snapshot.fleet),
            })
            .collect();
        Some(Closest {
            host: self.host_ref(&snapshot.ids[host as usize]),
            lacks,
        })
    }

    /// Releases a claim (a deployment failed or its VM was deleted).
    pub async fn release(&self, id: &str) -> Result<Claim, StoreError> {
        let claim = self.store.release_claim(id).await?;
        self.inventory.released(&claim);
        Ok(claim)
    }

    /// Releases the pending claims whose time ran out; returns them.
    pub async fn expire(&self) -> Result<Vec<Claim>, StoreError> {
        let claims = self.store.expire_claims(Timestamp::now()).await?;
        for claim in &claims {
            self.inventory.released(claim);
        }
        Ok(claims)
    }
}

/// Runs the pipeline; when no host fits, also every filter over every candidate, to find the
/// closest host.
fn decide(
    active: &Active,
    snapshot: &Snapshot,
) -> Result<(Decision, Option<Vec<PipelineRejection>>), PluginError> {
    let decision = active.pipeline.decide_among(
        &snapshot.request,
        &snapshot.fleet,
        snapshot.candidates.clone(),
    )?;
    let all = if decision.chosen.is_none() && !snapshot.candidates.is_empty() {
        Some(active.pipeline.all_rejections(
            &snapshot.request,
            &snapshot.fleet,
            &snapshot.candidates,
        )?)
    } else {
        None
    };
    Ok((decision, all))
}

/// The pipeline `spec` describes, with the registry's plugins — or `replacement` in place of
/// the one of its name, to check a change before making it.
fn build(
    registry: &Registry,
    spec: &PipelineSpec,
    revision: u64,
    replacement: Option<&Entry>,
) -> Result<Active, SpecError> {
    let mut steps = Vec::new();
    let mut plugins = Vec::new();
    for (index, s) in spec.steps.iter().enumerate() {
        let entry = if let Some(r) = replacement.filter(|r| r.manifest.name == s.plugin) {
            r.clone()
        } else {
            registry.get(&s.plugin).ok_or_else(|| SpecError::Unknown {
                index,
                name: s.plugin.clone(),
            })?
        };
        let kind = crate::plugins::kind_name(entry.manifest.kind);
        let plugin = entry
            .configured(registry.runtime(), &s.config)
            .map_err(|source| SpecError::Plugin { index, source })?
            .into_placement()
            .ok_or_else(|| SpecError::NotPlacement {
                index,
                name: s.plugin.clone(),
                kind,
            })?;
        if s.enabled {
            plugins.push(format!(
                "{}@{}",
                entry.manifest.name, entry.manifest.version
            ));
            steps.push(Step {
                plugin,
                weight: s.weight,
            });
        }
    }
    Ok(Active {
        spec: spec.clone(),
        revision,
        pipeline: Pipeline::new(steps)?,
        plugins,
    })
}

fn spec_to_plugin_error(e: SpecError, name: &str) -> PluginError {
    match e {
        SpecError::Plugin { source, .. } => source,
        other => PluginError::Setup {
            plugin: name.to_owned(),
            detail: format!("the placement pipeline would not build with it: {other}"),
        },
    }
}

/// Why a pipeline or plugin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

fn check(r: &CoreRequest) -> Result<(), PlaceError> {
    if r.vcpus == 0 {
        return Err(PlaceError::Invalid("vcpus must be at least 1".into()));
    }
    if r.memory_mib == 0 {
        return Err(PlaceError::Invalid("memory_mib must be at least 1".into()));
    }
    Ok(())
}

fn normalised(raw: &[f64], k: usize) -> f64 {
    let (min, max) = raw
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &s| {
            (lo.min(s), hi.max(s))
        });
    let range = max / 2.0 - min / 2.0;
    if range > 0.0 {
        (raw[k] / 2.0 - min / 2.0) / range
    } else {
        0.0
    }
}

fn detail_text(
    kind: DetailKind,
    detail: u64,
    fleet: &slipway_runtime::placement::Fleet,
) -> Option<String> {
    match kind {
        DetailKind::None => None,
        DetailKind::Mib => Some(format!("{detail} MiB")),
        DetailKind::Count => Some(detail.to_string()),
        DetailKind::Symbol => u32::try_from(detail)
            .ok()
            .filter(|&id| (id as usize) < fleet.symbol_count())
            .map(|id| fleet.symbol(id).to_owned()),
        DetailKind::Features => {
            let names: Vec<&str> = slipway_core::HostFeature::ALL
                .iter()
                .enumerate()
                .filter(|(bit, _)| detail & (1 << bit) != 0)
                .map(|(_, f)| match f {
                    slipway_core::HostFeature::Kvm => "kvm",
                    slipway_core::HostFeature::Uefi => "uefi",
                    slipway_core::HostFeature::NestedVirt => "nested_virt",
                    slipway_core::HostFeature::Hugepages => "hugepages",
                    slipway_core::HostFeature::Iommu => "iommu",
                })
                .collect();
            Some(names.join(", "))
        }
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}
