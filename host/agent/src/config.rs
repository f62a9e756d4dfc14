//! The agent's configuration: flags over `SLIPWAY_AGENT_*` environment variables over a TOML
//! file (`--config`, or `<data-dir>/agent.toml`) over defaults. The file's unknown keys are errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the agent listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7781";

#[derive(Debug, Default, Clone, clap::Args)]
pub struct AgentArgs {
    /// TOML configuration file [default: <data-dir>/agent.toml, when it exists].
    #[arg(long, env = "SLIPWAY_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The server's URL, e.g. http://slipway:7780.
    #[arg(long, env = "SLIPWAY_AGENT_SERVER")]
    pub server: Option<String>,
    /// A join token's secret (`slipway host join-token create`); needed only to join.
    #[arg(long, env = "SLIPWAY_AGENT_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file holding the join token's secret.
    #[arg(long, env = "SLIPWAY_AGENT_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Where the agent keeps its identity, images and VMs [default: $XDG_DATA_HOME/slipway-agent
    /// or ~/.local/share/slipway-agent].
    #[arg(long, env = "SLIPWAY_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the agent's API [default: 127.0.0.1:7781]; port 0 picks a free one.
    #[arg(long, env = "SLIPWAY_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The URL the server calls the agent at [default: http://<the address it listens on>].
    #[arg(long, env = "SLIPWAY_AGENT_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The host's name in the inventory [default: the hostname].
    #[arg(long, env = "SLIPWAY_AGENT_NAME")]
    pub name: Option<String>,
    /// A label placement can require, key=value; repeatable (comma-separated in the environment).
    #[arg(long = "label", env = "SLIPWAY_AGENT_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Memory kept for the host itself, never claimed by VMs, in MiB [default: 0].
    #[arg(long, env = "SLIPWAY_AGENT_RESERVED_MEMORY_MIB")]
    pub reserved_memory_mib: Option<u64>,
    /// The QEMU binary [default: qemu-system-<arch> on the PATH].
    #[arg(long, env = "SLIPWAY_AGENT_QEMU")]
    pub qemu: Option<PathBuf>,
    /// The most the image cache may hold, in MiB; unused images are evicted to stay under it
    /// [default: half the data directory's file system].
    #[arg(long, env = "SLIPWAY_AGENT_CACHE_MAX_MIB")]
    pub cache_max_mib: Option<u64>,
    /// Log filter in `tracing` syntax [default: info].
    #[arg(long, env = "SLIPWAY_AGENT_LOG")]
    pub log: Option<String>,
    /// `text` or `json` [default: text].
    #[arg(long, env = "SLIPWAY_AGENT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} must be written key=value"))?;
    Ok((k.to_owned(), v.to_owned()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    join_token_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise_url: Option<String>,
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    reserved_memory_mib: Option<u64>,
    qemu: Option<PathBuf>,
    cache_max_mib: Option<u64>,
    log: Option<String>,
    log_format: Option<LogFormat>,
}

/// Why the options do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("in the configuration file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("no data directory: pass --data-dir, or set HOME")]
    NoDataDir,
    #[error("{path} holds no join token")]
    EmptyToken { path: PathBuf },
}

/// Every option resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Option<String>,
    pub join_token: Option<String>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertise_url: Option<String>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub reserved_memory_mib: u64,
    pub qemu: Option<PathBuf>,
    /// `None`: half the data directory's file system, measured at start.
    pub cache_max_mib: Option<u64>,
    pub log: String,
    pub log_format: LogFormat,
}

pub fn default_data_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("slipway-agent"))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/slipway-agent"))
        })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Config {
    pub fn resolve(args: AgentArgs) -> Result<Self, ConfigError> {
        let hint = args.data_dir.clone().or_else(default_data_dir);
        let file_path = args.config.clone().or_else(|| {
            hint.as_ref()
                .map(|d| d.join("agent.toml"))
                .filter(|p| p.exists())
        });
        let file = match &file_path {
            Some(path) => {
                toml::from_str::<FileConfig>(&read(path)?).map_err(|source| ConfigError::File {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .or_else(default_data_dir)
            .ok_or(ConfigError::NoDataDir)?;
        let join_token = match (
            args.join_token,
            args.join_token_file.or(file.join_token_file),
        ) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => Some(read_token(&path)?),
            (None, None) => None,
        };
        let mut labels = file.labels.unwrap_or_default();
        labels.extend(args.labels);
        Ok(Self {
            server: args.server.or(file.server),
            join_token,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid literal address")),
            advertise_url: args.advertise_url.or(file.advertise_url),
            name: args.name.or(file.name).unwrap_or_else(hostname),
            labels,
            reserved_memory_mib: args
                .reserved_memory_mib
                .or(file.reserved_memory_mib)
                .unwrap_or(0),
            qemu: args.qemu.or(file.qemu),
            cache_max_mib: args.cache_max_mib.or(file.cache_max_mib),
            log: args.log.or(file.log).unwrap_or_else(|| "info".to_owned()),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            data_dir,
        })
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_token(path: &Path) -> Result<String, ConfigError> {
    let text = read(path)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// Creates the data directory if need be, private to the agent's user: it holds the agent's
/// secret and credential.
pub fn create_data_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_labels_merge() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "server = \"http://file:1\"\nname = \"from-file\"\nreserved_memory_mib = 64\n[labels]\nrack = \"r1\"\nzone = \"a\"\n",
        )
        .unwrap();
        let token = dir.path().join("join.token");
        std::fs::write(&token, "slj_secret\n").unwrap();
        let c = Config::resolve(AgentArgs {
            config: Some(file),
            data_dir: Some(dir.path().to_owned()),
            name: Some("from-flag".into()),
            labels: vec![("zone".into(), "b".into())],
            join_token_file: Some(token),
            ..AgentArgs::default()
        })
        .unwrap();
        assert_eq!(c.server.as_deref(), Some("http://file:1"));
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.reserved_memory_mib, 64);
        assert_eq!(c.labels["rack"], "r1");
        assert_eq!(c.labels["zone"], "b", "the flag's label wins");
        assert_eq!(c.join_token.as_deref(), Some("slj_secret"));
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "servr = \"x\"\n").unwrap();
        let err = Config::resolve(AgentArgs {
            config: Some(file),
            data_dir: Some(dir.path().to_owned()),
            ..AgentArgs::default()
        })
        .unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("servr"), "{chain}");
    }
}
