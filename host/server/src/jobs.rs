//! Durable jobs: every long operation is a row in the store with ordered steps, progress, events,
//! and a result or the error of the step that failed.
//!
//! A job's work runs on a task tracked by the runner, at most `workers` at once. On a graceful
//! shutdown the runner waits for the grace period, then cancels what still runs: each job's work
//! stops at its next check and is *parked* (queued again, to resume at the next start) if its kind
//! can resume, or failed, naming the step, if it cannot. After a crash, [`Jobs::recover`] does the
//! same with whatever the store still calls queued or running, so no job stays "running" forever.
//! Temporary files never outlive their job: they are `TempPath`s, dropped when the work ends, and
//! the image store sweeps its `tmp/` at start.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slipway_core::resources::{Image, ImageFormat, ImageKind, Job, JobError, JobState, Timestamp};
use slipway_store::{NewJob, Store, StoreError};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::EventBus;
use crate::images::{ImageError, ImageStore, Received};

pub const IMAGE_IMPORT: &str = "image.import";
/// Starts of one job before recovery gives up on it.
const MAX_ATTEMPTS: u32 = 3;
pub const IMAGE_UPLOAD: &str = "image.upload";
pub const IMPORT_STEPS: &[&str] = &["copy", "inspect", "convert", "store"];
pub const UPLOAD_STEPS: &[&str] = &["receive", "inspect", "convert", "store"];

/// The input of an image import, as kept in the job's params (enough to start it again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportParams {
    pub source: PathBuf,
    pub name: String,
    pub kind: ImageKind,
}

/// The input of an upload, as kept in the job's params (the bytes themselves are not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadParams {
    pub name: String,
    pub kind: ImageKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The input of staging, as kept in the job's params.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageParams {
    /// The model VM's id, and the revision that was asked for.
    pub model_vm: String,
    pub model_revision: u64,
    /// The staged VM's name.
    pub name: String,
    #[serde(default)]
    pub sizing: slipway_image::layout::Sizing,
}

/// What staging needs besides the store: the identity plugins, the first-boot agent to install
/// in guests without cloud-init, and where working directories go.
#[derive(Clone, Default)]
pub struct StagingConfig {
    pub identity: Vec<slipway_runtime::identity::IdentityPlugin>,
    pub guest_agent: Option<PathBuf>,
    pub work_root: PathBuf,
}

/// What a finished job reports: its result and the event that announces it.
struct Done {
    result: serde_json::Value,
    event: serde_json::Value,
}

impl Done {
    fn image(image: Image) -> Self {
        Self {
            event: serde_json::json!({ "image": image.id }),
            result: serde_json::to_value(&image).unwrap_or_default(),
        }
    }
}

/// What a job does, with whatever it needs in memory.
pub enum Work {
    Import(ImportParams),
    Stage(StageParams),
    /// The steps after `receive`: the bytes already sit in a temporary file.
    StoreUpload {
        params: UploadParams,
        received: Received,
    },
    Deploy(crate::deploy::DeployParams),
}

#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    events: EventBus,
    images: ImageStore,
    staging: StagingConfig,
    workers: Semaphore,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Set once the server has placement: deploy jobs need it, and it needs the jobs.
    deployer: std::sync::OnceLock<Arc<crate::deploy::Deployer>>,
}

/// The running job's handle on its own row: step changes, progress counters sampled by a
/// reporter, and the runner's cancellation.
pub struct JobCtx {
    id: String,
    steps: Vec<String>,
    step: usize,
    store: Store,
    events: EventBus,
    pub done: Arc<AtomicU64>,
    pub total: Arc<AtomicU64>,
    pub cancel: CancellationToken,
}

/// A step's failure: the message, or a cancellation by shutdown.
enum StepError {
    Failed(String),
    Cancelled,
}

impl From<ImageError> for StepError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Cancelled => StepError::Cancelled,
            // The server's own failures: their text (paths, system errors) stays in the log.
            e @ (ImageError::Io(_) | ImageError::QemuImg { .. }) => StepError::Failed(internal(&e)),
            other => StepError::Failed(other.to_string()),
        }
    }
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        match e {
            // What the user can act on is said; the database's own failures stay in the log.
            StoreError::NotFound { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::InUse { .. }
            | StoreError::Gone(_) => StepError::Failed(e.to_string()),
            _ => StepError::Failed(internal(&e)),
        }
    }
}

fn internal(e: &dyn std::error::Error) -> String {
    log_internal(&error_chain(e))
}

/// Logs an internal error with an id, and returns the message a client sees instead: the
/// server's insides (paths, system errors) stay in its log.
pub fn log_internal(message: &str) -> String {
    let id = uuid::Uuid::now_v7();
    tracing::error!(error_id = %id, error = %message, "internal error");
    format!("internal error {id}; the server's log has the details")
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl JobCtx {
    async fn enter(&mut self, step: usize) -> Result<(), StepError> {
        if self.cancel.is_cancelled() {
            return Err(StepError::Cancelled);
        }
        self.step = step;
        self.done.store(0, Ordering::Relaxed);
        self.total.store(0, Ordering::Relaxed);
        self.store.set_job_step(&self.id, step, None).await?;
        self.events
            .notify(
                "job",
                &self.id,
                "step_started",
                serde_json::json!({ "step": self.steps[step], "index": step }),
            )
            .await;
        Ok(())
    }
}

impl Jobs {
    pub fn new(
        store: Store,
        events: EventBus,
        images: ImageStore,
        staging: StagingConfig,
        workers: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                events,
                images,
                staging,
                workers: Semaphore::new(workers),
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
                deployer: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn set_deployer(&self, deployer: Arc<crate::deploy::Deployer>) {
        let _ = self.inner.deployer.set(deployer);
    }

    pub async fn create(
        &self,
        kind: &str,
        params: serde_json::Value,
        steps: &[&str],
        owner: &str,
    ) -> Result<Job, StoreError> {
        let job = self
            .inner
            .store
            .create_job(NewJob {
                kind,
                params,
                steps,
                owner,
            })
            .await?;
        self.inner
            .events
            .notify(
                "job",
                &job.id,
                "created",
                serde_json::json!({ "kind": kind }),
            )
            .await;
        Ok(job)
    }

    /// Marks a job running now: for work that starts inside a request (an upload's `receive`).
    pub async fn start_now(&self, job: &Job) -> Result<(), StoreError> {
        self.inner.store.start_job(&job.id).await?;
        self.inner
            .events
            .notify(
                "job",
                &job.id,
                "step_started",
                serde_json::json!({ "step": job.steps[0], "index": 0 }),
            )
            .await;
        Ok(())
    }

    /// Fails a job at `step` with `message`.
    pub async fn fail(&self, id: &str, step: &str, message: String) -> Result<Job, StoreError> {
        let job = self
            .inner
            .store
            .finish_job(
                id,
                Err(JobError {
                    step: step.to_owned(),
                    message: message.clone(),
                }),
            )
            .await?;
        tracing::warn!(job = id, step, error = %message, "job failed");
        self.inner
            .events
            .notify(
                "job",
                id,
                "failed",
                serde_json::json!({ "step": step, "message": message }),
            )
            .await;
        Ok(job)
    }

    /// Fails a job at whatever step it is in; for paths that lost track of it. Logs rather than
    /// returns an error: the next start fails it anyway if this cannot.
    pub async fn fail_where_it_is(&self, id: &str, message: &str) {
        let step = match self.inner.store.job(id).await {
            Ok(job) if job.state.is_finished() => return,
            Ok(job) => job.steps.get(job.step).cloned().unwrap_or_default(),
            Err(error) => {
                tracing::error!(job = id, error = %error, "cannot read a job to fail it");
                return;
            }
        };
        if let Err(error) = self.fail(id, &step, message.to_owned()).await {
            tracing::error!(job = id, error = %error, "cannot fail a job; the next start will");
        }
    }

    /// Runs `work` on a tracked task, from `first_step`.
    pub fn spawn(&self, job: Job, first_step: usize, work: Work) {
        let jobs = self.clone();
        self.inner.tracker.spawn(async move {
            let id = job.id.clone();
            if let Err(e) = jobs.run(job, first_step, work).await {
                tracing::error!(job = %id, error = %error_chain(&e), "job bookkeeping failed");
                jobs.fail_where_it_is(&id, "internal error; the server's log has the details")
                    .await;
            }
        });
    }

    async fn run(&self, job: Job, first_step: usize, work: Work) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _permit = tokio::select! {
            permit = inner.workers.acquire() => permit.ok(),
            () = inner.cancel.cancelled() => None,
        };
        if first_step == 0 {
            if inner.cancel.is_cancelled() {
                // Never started: it stays queued for the next start.
                return Ok(());
            }
            inner.store.start_job(&job.id).await?;
        }
        let mut ctx = JobCtx {
            id: job.id.clone(),
            steps: job.steps.clone(),
            step: first_step,
            store: inner.store.clone(),
            events: inner.events.clone(),
            done: Arc::new(AtomicU64::new(0)),
            total: Arc::new(AtomicU64::new(0)),
            cancel: inner.cancel.clone(),
        };
        let reporter = self.report_progress(&ctx.id, ctx.done.clone(), ctx.total.clone());
        // Both start again from their input: an import from its source, staging from the model.
        // A deployment too: each of its steps can run again (a cached image is not sent twice, the
        // agent takes the same VM again as the one it has).
        let resumable = job.kind == IMAGE_IMPORT
            || job.kind == crate::staging::STAGE
            || job.kind == crate::deploy::VM_DEPLOY;
        let outcome = match work {
            Work::Import(params) => self.import(&mut ctx, params).await.map(Done::image),
            Work::StoreUpload { params, received } => self
                .store_image(&mut ctx, params.name, params.kind, received)
                .await
                .map(Done::image),
            Work::Stage(params) => self.stage(&mut ctx, params).await,
            Work::Deploy(params) => self.deploy(&mut ctx, params).await,
        };
        drop(reporter);
        match outcome {
            Ok(done) => {
                inner.store.finish_job(&job.id, Ok(done.result)).await?;
                tracing::info!(job = %job.id, kind = %job.kind, result = %done.event, "job succeeded");
                inner
                    .events
                    .notify("job", &job.id, "succeeded", done.event)
                    .await;
            }
            Err(StepError::Cancelled) if resumable => {
                inner.store.park_job(&job.id).await?;
                tracing::info!(job = %job.id, step = %ctx.steps[ctx.step], "job parked by shutdown; it resumes at the next start");
                inner
                    .events
                    .notify(
                        "job",
                        &job.id,
                        "parked",
                        serde_json::json!({ "step": ctx.steps[ctx.step] }),
                    )
                    .await;
            }
            Err(StepError::Cancelled) => {
                self.fail(
                    &job.id,
                    &ctx.steps[ctx.step],
                    "the server shut down before the job finished; start it again".into(),
                )
                .await?;
            }
            Err(StepError::Failed(message)) => {
                self.fail(&job.id, &ctx.steps[ctx.step], message).await?;
            }
        }
        Ok(())
    }

    /// Writes the progress counters to the job's row and the event stream twice a second, while
    /// they move.
    /// Reporting stops when the returned guard is dropped.
    pub fn report_progress(
        &self,
        id: &str,
        done: Arc<AtomicU64>,
        total: Arc<AtomicU64>,
    ) -> tokio_util::sync::DropGuard {
        let stop = CancellationToken::new();
        let (store, events, id) = (
            self.inner.store.clone(),
            self.inner.events.clone(),
            id.to_owned(),
        );
        let guard = stop.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    () = guard.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = done.load(Ordering::Relaxed);
                if now == last {
                    continue;
                }
                last = now;
                let total = Some(total.load(Ordering::Relaxed)).filter(|t| *t > 0);
                if store.set_job_progress(&id, now, total).await.is_ok() {
                    events
                        .notify(
                            "job",
                            &id,
                            "progress",
                            serde_json::json!({ "done_bytes": now, "total_bytes": total }),
                        )
                        .await;
                }
            }
        });
        stop.drop_guard()
    }

    /// Moves a canonical blob into the image store (the caller holds its lock until the record
    /// is written) and describes it.
    async fn commit(
        &self,
        canonical: crate::images::Canonical,
        name: String,
        kind: ImageKind,
        source: crate::images::Inspected,
        source_sha256: Option<String>,
    ) -> Result<Image, StepError> {
        let (id, format, stored_size) =
            (canonical.sha256.clone(), canonical.format, canonical.size);
        let committer = self.inner.images.clone();
        let allocated = tokio::task::spawn_blocking(move || committer.commit(canonical))
            .await
            .map_err(|e| StepError::Failed(e.to_string()))??;
        Ok(Image {
            id,
            name,
            kind,
            format,
            source_format: source.format,
            source_sha256,
            virtual_size: source.virtual_size,
            stored_size,
            allocated_size: allocated,
            created_at: Timestamp::now(),
        })
    }

    /// Deploys one VM: see [`crate::deploy`] for the steps. A failed step gives everything back.
    async fn deploy(
        &self,
        ctx: &mut JobCtx,
        params: crate::deploy::DeployParams,
    ) -> Result<Done, StepError> {
        let Some(deployer) = self.inner.deployer.get().cloned() else {
            return Err(StepError::Failed("this server cannot deploy".into()));
        };
        let mut vm = self.inner.store.vm(&params.vm).await?;
        let failed = |e: crate::deploy::StepFailure| StepError::Failed(e.0);
        let result: Result<(), StepError> = async {
            ctx.enter(0).await?;
            let (done, total) = (ctx.done.clone(), ctx.total.clone());
            deployer
                .transfer(&mut vm, move |d, t| {
                    done.store(d, Ordering::Relaxed);
                    total.store(t, Ordering::Relaxed);
                })
                .await
                .map_err(failed)?;
            ctx.enter(1).await?;
            deployer.create(&vm).await.map_err(failed)?;
            ctx.enter(2).await?;
            deployer.boot(&vm).await.map_err(failed)?;
            ctx.enter(3).await?;
            tokio::select! {
                r = deployer.ready(&mut vm) => r.map_err(failed),
                () = ctx.cancel.cancelled() => Err(StepError::Cancelled),
            }
        }
        .await;
        match result {
            Ok(()) => {
                self.inner
                    .events
                    .notify(
                        "vm",
                        &vm.id,
                        "ready",
                        serde_json::json!({ "host": vm.host_name }),
                    )
                    .await;
                Ok(Done {
                    event: serde_json::json!({ "vm": vm.id, "host": vm.host_name }),
                    result: serde_json::to_value(&vm).unwrap_or_default(),
                })
            }
            // Parked by a shutdown: the VM and its claim stay for the job to go on with.
            Err(StepError::Cancelled) => Err(StepError::Cancelled),
            Err(StepError::Failed(message)) => {
                let step = ctx.steps[ctx.step].clone();
                deployer
                    .give_back(&mut vm, format!("step {step} failed: {message}"))
                    .await;
                Err(StepError::Failed(message))
            }
        }
    }

    /// Stages a model VM: see [`crate::staging`] for the steps.
    async fn stage(&self, ctx: &mut JobCtx, params: StageParams) -> Result<Done, StepError> {
        use crate::staging::{self, StageError, Work as Dir};
        let inner = &self.inner;
        let staged_done = |staged: &slipway_core::resources::StagedVm| Done {
            event: serde_json::json!({ "staged_vm": staged.id, "image": staged.image }),
            result: serde_json::to_value(staged).unwrap_or_default(),
        };
        match inner.store.staged_vm(&params.name).await {
            // A restart between recording and finishing: the work is done.
            Ok(existing) if existing.job == ctx.id => return Ok(staged_done(&existing)),
            Ok(_) => {
                return Err(StepError::Failed(format!(
                    "staged VM {} already exists",
                    params.name
                )));
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let model = inner.store.model_vm(&params.model_vm).await?;
        if model.revision != params.model_revision {
            return Err(StepError::Failed(format!(
                "model VM {} changed (revision {} → {}) after staging was asked for; stage it again",
                model.spec.name, params.model_revision, model.revision
            )));
        }
        let Some(boot) = model
            .spec
            .hardware
            .disks
            .first()
            .and_then(|d| d.image.clone())
        else {
            return Err(StepError::Failed(format!(
                "model VM {} has no boot disk image",
                model.spec.name
            )));
        };
        if let Err(StoreError::NotFound { .. }) = inner.store.image(&boot).await {
            return Err(StepError::Failed(format!(
                "the boot image {boot} of model VM {} was deleted",
                model.spec.name
            )));
        }
        std::fs::create_dir_all(&inner.staging.work_root)
            .map_err(|e| StepError::Failed(internal(&e)))?;
        // Removed when the last holder lets go: this future, or a blocking step still running
        // after a shutdown dropped it. No tree outlives its job, and none vanishes under a step.
        let work_dir = Arc::new(
            tempfile::Builder::new()
                .prefix(&format!("stage-{}-", ctx.id))
                .tempdir_in(&inner.staging.work_root)
                .map_err(|e| StepError::Failed(internal(&e)))?,
        );
        let work = Arc::new(Dir {
            dir: work_dir.path().to_path_buf(),
        });
        let blob = inner.images.blob_path(&boot);
        let fail = |e: StageError| match e {
            StageError::Image(
                slipway_image::ImageError::Io { .. } | slipway_image::ImageError::Tool { .. },
            ) => StepError::Failed(internal(&e)),
            other => StepError::Failed(other.to_string()),
        };
        /// Runs a step on the blocking pool, holding the working directory until it ends.
        async fn blocking<T: Send + 'static>(
            hold: Arc<tempfile::TempDir>,
            f: impl FnOnce() -> Result<T, StageError> + Send + 'static,
        ) -> Result<Result<T, StageError>, StepError> {
            tokio::task::spawn_blocking(move || {
                let out = f();
                drop(hold);
                out
            })
            .await
            .map_err(|e| StepError::Failed(internal(&e)))
        }

        ctx.enter(0).await?;
        let w = work.clone();
        let layout = blocking(work_dir.clone(), move || staging::copy_out(&w, &blob))
            .await?
            .map_err(fail)?;
        let layout = Arc::new(layout);

        ctx.enter(1).await?;
        let (w, l, plugins, os) = (
            work.clone(),
            layout.clone(),
            inner.staging.identity.clone(),
            model.spec.os.clone(),
        );
        let found = blocking(work_dir.clone(), move || {
            staging::inspect(&w, &l, &plugins, &os)
        })
        .await?
        .map_err(fail)?;
        let found = Arc::new(found);

        ctx.enter(2).await?;
        let (w, l, f) = (work.clone(), layout.clone(), found.clone());
        let mut operations = blocking(work_dir.clone(), move || staging::strip(&w, &l, &f))
            .await?
            .map_err(fail)?;

        ctx.enter(3).await?;
        let (w, l, f, agent) = (
            work.clone(),
            layout.clone(),
            found.clone(),
            inner.staging.guest_agent.clone(),
        );
        let (method, wired) = blocking(work_dir.clone(), move || {
            staging::first_boot(&w, &l, &f, agent.as_deref())
        })
        .await?
        .map_err(fail)?;
        operations.extend(wired);

        ctx.enter(4).await?;
        let (w, l, sizing) = (work.clone(), layout.clone(), params.sizing);
        blocking(work_dir.clone(), move || {
            staging::write_image(&w, &l, sizing)
        })
        .await?
        .map_err(fail)?;

        ctx.enter(5).await?;
        let images = &inner.images;
        // Converted to qcow2 where it lies (the work directory may be another file system).
        let staged_raw = tempfile::TempPath::try_from_path(work.staged())
            .map_err(|e| StepError::Failed(internal(&e)))?;
        let size = std::fs::metadata(&staged_raw).map(|m| m.len()).unwrap_or(0);
        let received = Received {
            path: staged_raw,
            sha256: String::new(),
            size,
        };
        let inspected = crate::images::Inspected {
            format: ImageFormat::Raw,
            virtual_size: Some(size),
        };
        let canonical = images
            .canonicalize(received, inspected, ctx.cancel.clone())
            .await?;
        let id = canonical.sha256.clone();
        let _guard = images.lock().await;
        let existed = match inner.store.image(&id).await {
            Ok(existing) if existing.kind != ImageKind::Disk => {
                return Err(StepError::Failed(format!(
                    "the staged image's bytes are already stored as artifact {}",
                    existing.id
                )));
            }
            Ok(_) => true,
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        let image = self
            .commit(
                canonical,
                format!("{}.qcow2", params.name),
                ImageKind::Disk,
                inspected,
                None,
            )
            .await?;
        let mut hardware = model.spec.hardware.clone();
        if let Some(disk) = hardware.disks.first_mut() {
            disk.image = Some(image.id.clone());
            disk.size_mib = disk.size_mib.max(size.div_ceil(1 << 20));
        }
        let staged = slipway_core::resources::StagedVm {
            id: slipway_store::new_id(),
            name: params.name.clone(),
            job: ctx.id.clone(),
            model_vm: model.id.clone(),
            model_revision: model.revision,
            image: image.id.clone(),
            hardware,
            os: staging::found_os(&found.os),
            first_boot: method,
            plugin: format!(
                "{}@{}",
                found.plugin.name(),
                found.plugin.manifest().version
            ),
            operations,
            applications: model.spec.applications.clone(),
            created_at: Timestamp::now(),
        };
        let added = match inner.store.insert_staged_vm(&image, &staged).await {
            Ok(added) => added,
            Err(e) => {
                // Nothing names the new blob: it goes, so that a failed job leaves no image.
                if !existed {
                    let _ = images.remove(&id);
                }
                return Err(e.into());
            }
        };
        if added {
            inner
                .events
                .notify(
                    "image",
                    &image.id,
                    "created",
                    serde_json::json!({ "name": image.name, "kind": image.kind }),
                )
                .await;
        }
        inner
            .events
            .notify(
                "staged_vm",
                &staged.id,
                "created",
                serde_json::json!({ "name": staged.name, "model_vm": model.id, "image": image.id }),
            )
            .await;
        Ok(staged_done(&staged))
    }

    async fn import(&self, ctx: &mut JobCtx, params: ImportParams) -> Result<Image, StepError> {
        let images = &self.inner.images;
        ctx.enter(0).await?;
        let source = images.import_source(&params.source)?;
        let received = images
            .copy_in(
                source,
                ctx.done.clone(),
                ctx.total.clone(),
                ctx.cancel.clone(),
            )
            .await?;
        self.store_image(ctx, params.name, params.kind, received)
            .await
    }

    /// The steps every image shares once its bytes are in a temporary file: inspect, convert,
    /// store.
    async fn store_image(
        &self,
        ctx: &mut JobCtx,
        name: String,
        kind: ImageKind,
        received: Received,
    ) -> Result<Image, StepError> {
        let images = &self.inner.images;
        ctx.enter(1).await?;
        let inspected = images.inspect(&received.path, kind).await?;
        ctx.enter(2).await?;
        let source_sha256 = received.sha256.clone();
        let canonical = images
            .canonicalize(received, inspected, ctx.cancel.clone())
            .await?;
        ctx.enter(3).await?;
        let _guard = images.lock().await;
        let image = self
            .commit(canonical, name, kind, inspected, Some(source_sha256))
            .await?;
        let (image, added) = self.inner.store.insert_image(&image).await?;
        if image.kind != kind {
            return Err(StepError::Failed(format!(
                "these bytes are already stored as {} {} ({}), not as a{}",
                if image.kind == ImageKind::Disk {
                    "disk image"
                } else {
                    "artifact"
                },
                image.id,
                image.name,
                if kind == ImageKind::Disk {
                    " disk image"
                } else {
                    "n artifact"
                },
            )));
        }
        if added {
            self.inner
                .events
                .notify(
                    "image",
                    &image.id,
                    "created",
                    serde_json::json!({ "name": image.name, "kind": image.kind }),
                )
                .await;
        }
        Ok(image)
    }

    /// Brings back the jobs a previous run left unfinished: imports start again from their first
    /// step; the others are failed, naming the step they were in.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let unfinished = self.inner.store.unfinished_jobs().await?;
        let count = unfinished.len();
        for job in unfinished {
            let step = job.steps.get(job.step).cloned().unwrap_or_default();
            // A job that keeps dying with the server (a hostile image that exhausts memory, say)
            // must not take it down at every start.
            if job.attempts >= MAX_ATTEMPTS {
                self.fail(
                    &job.id,
                    &step,
                    format!(
                        "gave up after {} attempts, each interrupted by a server restart",
                        job.attempts
                    ),
                )
                .await?;
                continue;
            }
            // Imports start again from their source, staging from the model's image (its working
            // directory went with the restart, and nothing was recorded before its last step).
            let work = match job.kind.as_str() {
                IMAGE_IMPORT => serde_json::from_value(job.params.clone())
                    .ok()
                    .map(Work::Import),
                crate::staging::STAGE => serde_json::from_value(job.params.clone())
                    .ok()
                    .map(Work::Stage),
                crate::deploy::VM_DEPLOY => serde_json::from_value(job.params.clone())
                    .ok()
                    .map(Work::Deploy),
                _ => None,
            };
            match work {
                Some(work) => {
                    if matches!(work, Work::Import(_)) {
                        tracing::info!(job = %job.id, step, attempt = job.attempts + 1, "resuming an import interrupted by a restart");
                    } else {
                        tracing::info!(job = %job.id, step, attempt = job.attempts + 1, "staging again after a restart");
                    }
                    self.inner
                        .events
                        .notify(
                            "job",
                            &job.id,
                            "resumed",
                            serde_json::json!({ "after_step": step }),
                        )
                        .await;
                    self.spawn(job, 0, work);
                }
                None => {
                    let message = if job.state == JobState::Running {
                        "interrupted by a server restart; its partial results were removed — start it again"
                    } else {
                        "the server restarted before the job could start; start it again"
                    };
                    self.fail(&job.id, &step, message.to_owned()).await?;
                }
            }
        }
        Ok(count)
    }

    /// Waits for a job to finish.
    pub async fn wait(&self, id: &str) -> Result<Job, StoreError> {
        let mut live = self.inner.events.subscribe();
        loop {
            let job = self.inner.store.job(id).await?;
            if job.state.is_finished() {
                return Ok(job);
            }
            // Any event (or a lag) is a cue to look again; a timeout guards against a missed one.
            let _ = tokio::time::timeout(Duration::from_secs(1), live.recv()).await;
        }
    }

    /// Stops accepting work, lets running jobs finish for up to `grace`, then cancels the rest
    /// (each parks or fails at its next check) and waits for them to record it.
    pub async fn shutdown(&self, grace: Duration) {
        let tracker = &self.inner.tracker;
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::info!(
                running = tracker.len(),
                "grace period over: parking the jobs still running"
            );
            self.inner.cancel.cancel();
            // Work checks for cancellation at least every chunk; should one still not stop, the
            // process ends anyway and the next start recovers the job from the store.
            if tokio::time::timeout(grace.max(Duration::from_secs(5)), tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    running = tracker.len(),
                    "jobs did not stop after cancellation; the next start recovers them"
                );
            }
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }
}
