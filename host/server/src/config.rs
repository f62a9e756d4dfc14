//! The server's configuration: built-in defaults, then a TOML file, then environment variables,
//! then flags, each overriding the one before. `slipway serve --help` lists every option with its
//! variable; the file takes the same names in `snake_case`, grouped as in [`FileConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use slipway_core::agent::AllocationRatios;

/// Where the server listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7780";

/// `slipway serve`'s options. Every one may also come from the environment or the config file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file [default: <data-dir>/slipway.toml, when it exists].
    #[arg(long, env = "SLIPWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the server keeps its state: the database, the image store, the admin token
    /// [default: $XDG_DATA_HOME/slipway or ~/.local/share/slipway].
    #[arg(long, env = "SLIPWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address and port to listen on [default: 127.0.0.1:7780]; port 0 picks a free one.
    #[arg(long, env = "SLIPWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of plugin directories to load at start [default: <data-dir>/plugins].
    #[arg(long, env = "SLIPWAY_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Slipway's first-boot agent (a static binary), installed by staging in guests without
    /// cloud-init [default: none; such guests then cannot be staged].
    #[arg(long, env = "SLIPWAY_GUEST_AGENT")]
    pub guest_agent: Option<PathBuf>,
    /// Log filter, in `tracing` syntax (`info`, `slipway_server=debug,warn`) [default: info].
    #[arg(long, env = "SLIPWAY_LOG")]
    pub log: Option<String>,
    /// Log format: `text` for people, `json` for collectors [default: text].
    #[arg(long, env = "SLIPWAY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Largest virtual size a disk image may claim, in bytes [default: 2 TiB].
    #[arg(long, env = "SLIPWAY_MAX_VIRTUAL_SIZE")]
    pub max_virtual_size: Option<u64>,
    /// Largest upload or import, in bytes [default: 1 TiB].
    #[arg(long, env = "SLIPWAY_MAX_IMAGE_SIZE")]
    pub max_image_size: Option<u64>,
    /// Directories from which images may be imported by path; repeatable
    /// [default: <data-dir>/import].
    #[arg(
        long = "import-dir",
        env = "SLIPWAY_IMPORT_DIRS",
        value_delimiter = ':'
    )]
    pub import_dirs: Vec<PathBuf>,
    /// Caps the bytes per second an import copies, to spare the disks of a busy server
    /// [default: unlimited].
    #[arg(long, env = "SLIPWAY_IMPORT_RATE")]
    pub import_rate: Option<u64>,
    /// Jobs that run at once [default: 2].
    #[arg(long, env = "SLIPWAY_JOB_WORKERS")]
    pub job_workers: Option<usize>,
    /// Seconds a graceful shutdown waits for requests and jobs before parking the jobs
    /// [default: 20].
    #[arg(long, env = "SLIPWAY_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
    /// Where jobs unpack disk images into trees while staging [default: <data-dir>/work]; a
    /// fast scratch file system here makes staging several times faster.
    #[arg(long, env = "SLIPWAY_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Seconds an API call may take, uploads and event streams excepted [default: 30].
    #[arg(long, env = "SLIPWAY_REQUEST_TIMEOUT")]
    pub request_timeout: Option<u64>,
    /// Seconds an upload may go without receiving a byte before it is abandoned [default: 60].
    #[arg(long, env = "SLIPWAY_UPLOAD_IDLE_TIMEOUT")]
    pub upload_idle_timeout: Option<u64>,
    /// Largest JSON body, in bytes [default: 1 MiB].
    #[arg(long, env = "SLIPWAY_MAX_JSON_BODY")]
    pub max_json_body: Option<usize>,
    /// A `slipway-agent` binary to run on this machine as a host of this server, restarted if it
    /// exits, its state in <data-dir>/local-agent [default: none].
    #[arg(long, env = "SLIPWAY_LOCAL_AGENT")]
    pub local_agent: Option<PathBuf>,
    /// Milliseconds between an agent's heartbeats; agents follow what the server says
    /// [default: 10000].
    #[arg(long, env = "SLIPWAY_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Heartbeats a host may miss before it is unreachable and gets no placements [default: 3].
    #[arg(long, env = "SLIPWAY_MISSED_HEARTBEATS")]
    pub missed_heartbeats: Option<u32>,
    /// Seconds a placement's claim holds unless confirmed by a deployment [default: 600].
    #[arg(long, env = "SLIPWAY_CLAIM_TTL")]
    pub claim_ttl: Option<u64>,
    /// Claimable vCPUs per host CPU thread [default: 4.0].
    #[arg(long, env = "SLIPWAY_CPU_ALLOCATION_RATIO")]
    pub cpu_allocation_ratio: Option<f64>,
    /// Claimable memory per MiB a host has (less what its agent reserves) [default: 1.0].
    #[arg(long, env = "SLIPWAY_MEMORY_ALLOCATION_RATIO")]
    pub memory_allocation_ratio: Option<f64>,
    /// Claimable disk per MiB of a host's data file system [default: 1.0].
    #[arg(long, env = "SLIPWAY_DISK_ALLOCATION_RATIO")]
    pub disk_allocation_ratio: Option<f64>,
    /// The first three bytes of every MAC address given to a VM's NIC, as `52:54:00`
    /// [default: 52:54:00, QEMU's; use a locally administered prefix such as `02:xx:xx` to keep
    /// apart from other tools].
    #[arg(long, env = "SLIPWAY_MAC_PREFIX")]
    pub mac_prefix: Option<String>,
    /// Where guests reach this server's seed routes (`/v1/seed/...`) at first boot
    /// [default: http://10.0.2.2:<listen port>, this machine as QEMU's user-mode networking
    /// shows it to guests of a local agent].
    #[arg(long, env = "SLIPWAY_SEED_URL")]
    pub seed_url: Option<String>,
    /// Seconds a deployed guest has to fetch its seed and report ready before the deployment
    /// fails [default: 600].
    #[arg(long, env = "SLIPWAY_READY_TIMEOUT")]
    pub ready_timeout: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// The configuration file. Unknown keys are refused, so that a typo does not silently fall back to
/// a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub plugins: Option<PathBuf>,
    pub guest_agent: Option<PathBuf>,
    pub local_agent: Option<PathBuf>,
    pub log: Option<String>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub images: FileImages,
    #[serde(default)]
    pub jobs: FileJobs,
    #[serde(default)]
    pub http: FileHttp,
    #[serde(default)]
    pub hosts: FileHosts,
    #[serde(default)]
    pub placement: FilePlacement,
    #[serde(default)]
    pub identity: FileIdentity,
    #[serde(default)]
    pub deploy: FileDeploy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdentity {
    pub mac_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDeploy {
    pub seed_url: Option<String>,
    pub ready_timeout: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHosts {
    pub heartbeat_interval_ms: Option<u64>,
    pub missed_heartbeats: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePlacement {
    pub claim_ttl: Option<u64>,
    pub cpu_allocation_ratio: Option<f64>,
    pub memory_allocation_ratio: Option<f64>,
    pub disk_allocation_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileImages {
    pub max_virtual_size: Option<u64>,
    pub max_image_size: Option<u64>,
    pub import_dirs: Option<Vec<PathBuf>>,
    pub import_rate: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJobs {
    pub workers: Option<usize>,
    pub shutdown_grace: Option<u64>,
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    pub request_timeout: Option<u64>,
    pub upload_idle_timeout: Option<u64>,
    pub max_json_body: Option<usize>,
}

/// The configuration the server runs with, every option resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub plugins: PathBuf,
    pub guest_agent: Option<PathBuf>,
    pub local_agent: Option<PathBuf>,
    pub log: String,
    pub log_format: LogFormat,
    pub max_virtual_size: u64,
    pub max_image_size: u64,
    pub import_dirs: Vec<PathBuf>,
    pub import_rate: Option<u64>,
    pub job_workers: usize,
    pub shutdown_grace: Duration,
    pub work_dir: PathBuf,
    pub request_timeout: Duration,
    pub upload_idle_timeout: Duration,
    pub max_json_body: usize,
    pub heartbeat_interval: Duration,
    pub missed_heartbeats: u32,
    pub claim_ttl: Duration,
    pub allocation_ratios: AllocationRatios,
    pub mac_prefix: [u8; 3],
    /// Where guests reach the seed routes; `None`: from the listening port, once bound.
    pub seed_url: Option<String>,
    pub ready_timeout: Duration,
}

/// `aa:bb:cc` as three bytes; unicast only, since a multicast MAC on a NIC breaks networking.
pub fn parse_mac_prefix(s: &str) -> anyhow::Result<[u8; 3]> {
    let parts: Vec<&str> = s.split(':').collect();
    let bytes: Vec<u8> = parts
        .iter()
        .filter(|p| p.len() == 2)
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    let [a, b, c] = bytes[..] else {
        anyhow::bail!("mac_prefix {s:?} is not three hex bytes such as 52:54:00");
    };
    if parts.len() != 3 {
        anyhow::bail!("mac_prefix {s:?} is not three hex bytes such as 52:54:00");
    }
    if a & 1 == 1 {
        anyhow::bail!("mac_prefix {s:?} is a multicast prefix; its first byte must be even");
    }
    Ok([a, b, c])
}

pub const TIB: u64 = 1 << 40;

/// The per-user data directory: `$XDG_DATA_HOME/slipway`, else `~/.local/share/slipway`.
pub fn default_data_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("slipway"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/slipway")))
}

impl Config {
    /// Resolves flags and environment (already merged by clap) over the file over the defaults.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let explicit_file = args.config.clone();
        let data_dir_hint = args.data_dir.clone().or_else(default_data_dir);
        let file_path = explicit_file.clone().or_else(|| {
            data_dir_hint
                .as_ref()
                .map(|d| d.join("slipway.toml"))
                .filter(|p| p.exists())
        });
        let file = match &file_path {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .or_else(default_data_dir)
            .context("no data directory: pass --data-dir or set HOME")?;
        let import_dirs = if !args.import_dirs.is_empty() {
            args.import_dirs
        } else {
            file.images
                .import_dirs
                .unwrap_or_else(|| vec![data_dir.join("import")])
        };
        let config = Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid literal address")),
            plugins: args
                .plugins
                .or(file.plugins)
                .unwrap_or_else(|| data_dir.join("plugins")),
            guest_agent: args.guest_agent.or(file.guest_agent),
            local_agent: args.local_agent.or(file.local_agent),
            log: args.log.or(file.log).unwrap_or_else(|| "info".to_owned()),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            max_virtual_size: args
                .max_virtual_size
                .or(file.images.max_virtual_size)
                .unwrap_or(2 * TIB),
            max_image_size: args
                .max_image_size
                .or(file.images.max_image_size)
                .unwrap_or(TIB),
            import_dirs,
            import_rate: args.import_rate.or(file.images.import_rate),
            job_workers: args
                .job_workers
                .or(file.jobs.workers)
                .unwrap_or(2)
                .clamp(1, 64),
            shutdown_grace: Duration::from_secs(
                args.shutdown_grace
                    .or(file.jobs.shutdown_grace)
                    .unwrap_or(20),
            ),
            work_dir: args
                .work_dir
                .or(file.jobs.work_dir)
                .unwrap_or_else(|| data_dir.join("work")),
            request_timeout: Duration::from_secs(
                args.request_timeout
                    .or(file.http.request_timeout)
                    .unwrap_or(30)
                    .max(1),
            ),
            upload_idle_timeout: Duration::from_secs(
                args.upload_idle_timeout
                    .or(file.http.upload_idle_timeout)
                    .unwrap_or(60)
                    .max(1),
            ),
            max_json_body: args
                .max_json_body
                .or(file.http.max_json_body)
                .unwrap_or(1 << 20),
            heartbeat_interval: Duration::from_millis(
                args.heartbeat_interval_ms
                    .or(file.hosts.heartbeat_interval_ms)
                    .unwrap_or(10_000)
                    .clamp(50, 3_600_000),
            ),
            missed_heartbeats: args
                .missed_heartbeats
                .or(file.hosts.missed_heartbeats)
                .unwrap_or(3)
                .max(1),
            claim_ttl: Duration::from_secs(
                args.claim_ttl
                    .or(file.placement.claim_ttl)
                    .unwrap_or(600)
                    .max(1),
            ),
            allocation_ratios: {
                let defaults = AllocationRatios::default();
                let ratio = |name: &str, value: Option<f64>, default: f64| {
                    let value = value.unwrap_or(default);
                    if value.is_finite() && value > 0.0 && value <= 1000.0 {
                        Ok(value)
                    } else {
                        Err(anyhow::anyhow!(
                            "{name} is {value}; it must be a number above 0 and at most 1000"
                        ))
                    }
                };
                AllocationRatios {
                    cpu: ratio(
                        "cpu_allocation_ratio",
                        args.cpu_allocation_ratio
                            .or(file.placement.cpu_allocation_ratio),
                        defaults.cpu,
                    )?,
                    memory: ratio(
                        "memory_allocation_ratio",
                        args.memory_allocation_ratio
                            .or(file.placement.memory_allocation_ratio),
                        defaults.memory,
                    )?,
                    disk: ratio(
                        "disk_allocation_ratio",
                        args.disk_allocation_ratio
                            .or(file.placement.disk_allocation_ratio),
                        defaults.disk,
                    )?,
                }
            },
            mac_prefix: parse_mac_prefix(
                args.mac_prefix
                    .as_deref()
                    .or(file.identity.mac_prefix.as_deref())
                    .unwrap_or("52:54:00"),
            )?,
            seed_url: match args.seed_url.or(file.deploy.seed_url) {
                Some(url) => {
                    slipway_guest::seed::SeedUrl::parse(&format!(
                        "{}/v1/seed/x/",
                        url.trim_end_matches('/')
                    ))
                    .map_err(|e| anyhow::anyhow!("seed_url {url:?}: {e}"))?;
                    Some(url)
                }
                None => None,
            },
            ready_timeout: Duration::from_secs(
                args.ready_timeout
                    .or(file.deploy.ready_timeout)
                    .unwrap_or(600)
                    .clamp(1, 86_400),
            ),
            data_dir,
        };
        Ok(config)
    }

    /// A configuration for tests and embedding: defaults, with the data in `data_dir`.
    pub fn with_data_dir(data_dir: &Path) -> Self {
        Self::resolve(ServeArgs {
            data_dir: Some(data_dir.to_owned()),
            config: Some(PathBuf::from("/dev/null")),
            ..ServeArgs::default()
        })
        .expect("defaults resolve")
    }

    pub fn database(&self) -> PathBuf {
        self.data_dir.join("slipway.db")
    }

    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the configuration file {}", path.display()))
}
