//! Starting and stopping the server: the data directory, the store, the image store, the plugins,
//! the job runner, and the HTTP listener, in that order; and a graceful shutdown in reverse.

use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use slipway_runtime::{Runtime, RuntimeConfig};
use slipway_store::Store;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::Config;
use crate::deploy::Deployer;
use crate::events::EventBus;
use crate::images::{ImageStore, Limits};
use crate::inventory::{Inventory, Policy};
use crate::jobs::{Jobs, StagingConfig};
use crate::metrics::Metrics;
use crate::placement::Placement;
use crate::plan::Planner;
use crate::plugins::Registry;
use crate::validators::Validators;

/// Everything a request handler can reach.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub images: ImageStore,
    pub jobs: Jobs,
    pub events: EventBus,
    /// Every plugin: bundled, and installed through the API.
    pub plugins: Arc<Registry>,
    /// The hosts, live.
    pub inventory: Arc<Inventory>,
    pub placement: Arc<Placement>,
    /// Requests: validated, matched to a staged VM, placed (dry run), explained.
    pub planner: Arc<Planner>,
    /// Deployments: claims, identities, the deploy jobs' steps, the seed.
    pub deployer: Arc<Deployer>,
    pub metrics: Arc<Metrics>,
    /// Fires when a shutdown begins: streams end, waits give up.
    pub shutdown: CancellationToken,
    /// A token created at first start, when the store had none: its secret is in `admin.token`.
    pub first_admin_token: bool,
    /// Uploads hold two threads each while they receive: a bounded number at once.
    pub upload_slots: Arc<tokio::sync::Semaphore>,
}

/// Creates the jobs' working directory (0700: trees hold the guests' secrets until stripped) and
/// removes what jobs a crash interrupted left in it — only theirs, since it may be shared scratch
/// space.
fn sweep_work_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the work directory {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("stage-") {
            let path = entry.path();
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing the leftover {}", path.display()))?;
            tracing::info!(path = %path.display(), "removed a working directory a crash left");
        }
    }
    Ok(())
}

/// How many uploads may receive at once; more are refused with 503.
pub const MAX_CONCURRENT_UPLOADS: usize = 16;

impl App {
    /// Opens (or creates) everything under the data directory and brings back unfinished jobs.
    pub async fn open(config: Config) -> anyhow::Result<Arc<App>> {
        let data = &config.data_dir;
        create_private_dir(data)?;
        let store = Store::open(&config.database())
            .await
            .with_context(|| format!("opening the database {}", config.database().display()))?;
        let first_admin_token = ensure_admin_token(&store, &config.admin_token_file()).await?;
        // The default import directory exists from the start, so imports work out of the box.
        let default_import = data.join("import");
        if config.import_dirs.contains(&default_import) {
            std::fs::create_dir_all(&default_import)
                .with_context(|| format!("creating {}", default_import.display()))?;
        }
        let images = ImageStore::open(
            &data.join("images"),
            Limits {
                max_virtual_size: config.max_virtual_size,
                max_image_size: config.max_image_size,
                import_dirs: config.import_dirs.clone(),
                import_rate: config.import_rate,
            },
        )
        .with_context(|| format!("opening the image store in {}", data.display()))?;
        let swept = images.sweep_unreferenced(&store.image_ids().await?)?;
        if swept > 0 {
            tracing::info!(
                blobs = swept,
                "removed image files no record names (a crash between storing and recording)"
            );
        }
        let plugins = Arc::new(load_plugins(&config).await?);
        let events = EventBus::new(store.clone());
        // A first-boot agent that cannot be installed is found now, not at the first staging.
        if let Some(agent) = &config.guest_agent {
            crate::staging::elf_arch(agent)
                .map_err(|e| anyhow::anyhow!("the first-boot agent {}: {e}", agent.display()))?;
        }
        let staging = StagingConfig {
            identity: plugins
                .all()
                .into_iter()
                .filter_map(|e| e.plugin.into_identity())
                .collect(),
            guest_agent: config.guest_agent.clone(),
            work_root: config.work_dir.clone(),
        };
        sweep_work_dir(&staging.work_root)?;
        let jobs = Jobs::new(
            store.clone(),
            events.clone(),
            images.clone(),
            staging,
            config.job_workers,
        );
        let inventory = Arc::new(Inventory::new(
            Policy {
                heartbeat_interval: config.heartbeat_interval,
                missed_heartbeats: config.missed_heartbeats,
                ratios: config.allocation_ratios,
            },
            store.hosts().await?,
            store.all_claims().await?,
        ));
        let metrics = Arc::new(Metrics::new());
        let placement = Arc::new(
            Placement::open(
                store.clone(),
                inventory.clone(),
                plugins.clone(),
                metrics.clone(),
                config.claim_ttl,
            )
            .await?,
        );
        let validators = Arc::new(Validators::open(store.clone(), plugins.clone()).await?);
        let planner = Arc::new(Planner::new(
            store.clone(),
            inventory.clone(),
            placement.clone(),
            validators,
            config.mac_prefix,
        ));
        let deployer = Arc::new(Deployer::new(
            store.clone(),
            inventory.clone(),
            placement.clone(),
            images.clone(),
            events.clone(),
            config
                .seed_url
                .clone()
                .unwrap_or_else(|| format!("http://10.0.2.2:{}", config.listen.port())),
            crate::deploy::seed_key(&data.join("seed.key"))?,
            config.ready_timeout,
        ));
        jobs.set_deployer(deployer.clone());
        let app = Arc::new(App {
            planner,
            deployer,
            config,
            store,
            images,
            jobs,
            events,
            plugins,
            inventory,
            placement,
            metrics,
            shutdown: CancellationToken::new(),
            first_admin_token,
            upload_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_UPLOADS)),
        });
        let recovered = app.jobs.recover().await?;
        if recovered > 0 {
            tracing::info!(
                jobs = recovered,
                "recovered jobs left unfinished by the last run"
            );
        }
        Ok(app)
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    // The data directory holds the database and the admin token: its owner's alone.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    Ok(())
}

/// At first start there is no token at all: make an admin token and leave its secret in a file
/// only the server's user can read. Returns whether one was made.
async fn ensure_admin_token(store: &Store, file: &Path) -> anyhow::Result<bool> {
    if !store.list_tokens().await?.is_empty() {
        return Ok(false);
    }
    let (token, secret) = store
        .create_token("admin", slipway_core::resources::Role::Admin)
        .await?;
    write_secret(file, &secret)?;
    tracing::info!(token = %token.id, file = %file.display(), "created the first admin token");
    Ok(true)
}

pub fn write_secret(file: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(file);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("writing {}", file.display()))?;
    writeln!(out, "{secret}")?;
    Ok(())
}

async fn load_plugins(config: &Config) -> anyhow::Result<Registry> {
    let bundled = config.plugins.clone();
    let installed = config.data_dir.join("plugins-installed");
    let cache = config.data_dir.join("cache/compiled-plugins");
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache),
            ..RuntimeConfig::default()
        })?;
        Registry::open(runtime, &bundled, installed)
    })
    .await?
}

/// A running server: where it listens, and the handle to stop it.
pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Opens the app and starts listening; returns once the socket is bound.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let listen = config.listen;
        let app = App::open(config).await?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        if app.config.seed_url.is_none() {
            // Guests of a local agent under QEMU's user-mode networking see this machine as
            // 10.0.2.2: the seed is there, on the port actually bound.
            app.deployer
                .set_seed_url(format!("http://10.0.2.2:{}", addr.port()));
        }
        let router = api::router(app.clone());
        let shutdown = app.shutdown.clone();
        let grace = app.config.shutdown_grace;
        let jobs = app.jobs.clone();
        let monitor = tokio::spawn(crate::monitor::run(app.clone()));
        let local_agent = app.config.local_agent.clone().map(|binary| {
            // Listening on every address, the server is reached on loopback.
            let ip = if addr.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                addr.ip()
            };
            let url = format!("http://{}", SocketAddr::new(ip, addr.port()));
            tokio::spawn(crate::local_agent::run(app.clone(), binary, url))
        });
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned());
            let serving = tokio::spawn(async move { serve.await });
            shutdown.cancelled().await;
            tracing::info!(
                grace_s = grace.as_secs(),
                "shutting down: finishing requests and jobs"
            );
            // Requests still open after the grace period (a slow upload) are cut; their jobs are
            // failed by the upload's guard (or, if the process ends first, at the next start),
            // and their temporary files go with them.
            let abort = serving.abort_handle();
            let requests = tokio::time::timeout(grace, serving);
            let (requests, ()) = tokio::join!(requests, jobs.shutdown(grace));
            if requests.is_err() {
                abort.abort();
            }
            // The monitor writes the last heartbeats before it ends.
            let _ = monitor.await;
            if let Some(agent) = local_agent {
                let _ = agent.await;
            }
            Ok(())
        });
        Ok(Server { addr, app, task })
    }

    /// Begins a graceful shutdown and waits for it to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.app.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server has stopped (after its shutdown token fires).
    pub async fn wait(self) -> anyhow::Result<()> {
        let result = self.task.await.context("the server task panicked")?;
        self.app.store.close().await;
        tracing::info!("stopped");
        result
    }
}

/// `slipway serve`: runs until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    let app = server.app.clone();
    let url = format!("http://{}", server.addr);
    let plugins = app.plugins.list();
    tracing::info!(url = %url, data_dir = %app.config.data_dir.display(), plugins = plugins.len(), "listening");
    eprintln!("slipway {} listening on {url}", env!("CARGO_PKG_VERSION"));
    eprintln!("  data directory: {}", app.config.data_dir.display());
    eprintln!(
        "  plugins: {}",
        if plugins.is_empty() {
            "none".to_owned()
        } else {
            plugins
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let token_file = app.config.admin_token_file();
    if app.first_admin_token {
        eprintln!("  admin token (created now): {}", token_file.display());
    } else if token_file.exists() {
        eprintln!("  admin token: {}", token_file.display());
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "slipway".to_owned());
    eprintln!(
        "  try: SLIPWAY_SERVER={url} SLIPWAY_TOKEN=$(cat {}) {exe} image list",
        token_file.display()
    );
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    server.wait().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
