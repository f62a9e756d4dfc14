//! The first-boot agent's work, as `slipway-firstboot` runs it in a guest: find the NoCloud seed,
//! fetch it, apply it once per instance, report ready.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::http::{self, HttpError, Limits};
use crate::seed::{self, Hostname, MetaData, SeedError, SeedUrl};

/// How the agent runs; the defaults are for a real boot.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prefix of every guest path read or written (`/` in a guest; a tree in tests).
    pub root: PathBuf,
    /// Instead of reading `/sys/class/dmi/id/product_serial`.
    pub dmi_serial: Option<String>,
    /// Instead of reading `/proc/cmdline`.
    pub cmdline: Option<String>,
    /// A seed URL to use instead of looking for one.
    pub seed: Option<String>,
    /// How long to keep retrying the seed while the network or the server comes up.
    pub retry_for: Duration,
    /// How long one app's install may take.
    pub install_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            root: "/".into(),
            dmi_serial: None,
            cmdline: None,
            seed: None,
            retry_for: DEFAULT_RETRY_FOR,
            install_timeout: Duration::from_secs(600),
        }
    }
}

pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(120);
/// Once an instance has been applied, a later boot (same VM, seed server gone) should not wait
/// minutes for a seed it most likely already applied.
const RETRY_FOR_APPLIED: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const REPORT_ATTEMPTS: u32 = 5;

const STATE_INSTANCE: &str = "var/lib/slipway/instance-id";
const STATE_REPORTED: &str = "var/lib/slipway/reported";
const STATE_USER_DATA: &str = "var/lib/slipway/user-data";

/// What a run did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The seed's instance was already applied and reported: nothing done.
    AlreadyApplied { instance_id: String },
    Applied {
        instance_id: String,
        applied: Vec<String>,
        reported: bool,
    },
    /// The seed could not be fetched, but an instance was applied on an earlier boot: its
    /// identity stays.
    Kept { instance_id: String },
}

/// Why a run failed. Each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no NoCloud seed: neither the SMBIOS serial nor the kernel command line has ds=nocloud-net;s=<url>"
    )]
    NoSeed,
    #[error("{0}")]
    Seed(#[from] SeedError),
    #[error("{action} {url} failed after {attempts} attempt(s) over {elapsed:.1?}: {error}")]
    Fetch {
        action: &'static str,
        url: String,
        attempts: u32,
        elapsed: Duration,
        error: FetchError,
    },
    #[error("cannot {op} {}: {source}", path.display())]
    Apply {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl AgentError {
    /// 3: no seed; 4: the seed could not be fetched; 5: the seed was refused; 6: applying failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::NoSeed => 3,
            AgentError::Fetch {
                error: FetchError::TooLarge { .. },
                ..
            } => 5,
            AgentError::Fetch { .. } => 4,
            AgentError::Seed(_) => 5,
            AgentError::Apply { .. } => 6,
        }
    }
}

/// Why one fetch did not give a body.
#[derive(Debug)]
pub enum FetchError {
    Http(HttpError),
    Status(u16),
    TooLarge { limit: usize },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Http(e) => e.fmt(f),
            FetchError::Status(s) => write!(f, "the server answered HTTP {s}"),
            FetchError::TooLarge { limit } => {
                write!(f, "the response is larger than {limit} bytes")
            }
        }
    }
}

impl FetchError {
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Http(e) => e.is_transient(),
            // The server may be starting, overloaded, or not have the seed ready yet.
            FetchError::Status(s) => matches!(s, 408 | 429 | 500 | 502 | 503 | 504),
            FetchError::TooLarge { .. } => false,
        }
    }
}

/// Logs one line to stderr, which a service manager puts in its journal or on the console.
pub fn log(message: impl fmt::Display) {
    let _ = writeln!(io::stderr().lock(), "slipway-firstboot: {message}");
}

struct Guest<'a> {
    root: &'a Path,
}

impl Guest<'_> {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn read_optional(&self, rel: &str) -> Result<Option<String>, AgentError> {
        let path = self.path(rel);
        match fs::read(&path) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AgentError::Apply {
                op: "read",
                path,
                source,
            }),
        }
    }

    /// Replaces a file in one step (write beside it, sync, rename), so that a power cut during
    /// first boot leaves the old file or the new one, never half of one.
    fn write(&self, rel: &str, contents: &[u8], mode: u32) -> Result<(), AgentError> {
        let path = self.path(rel);
        let fail = |op, source| AgentError::Apply {
            op,
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| fail("create the directory for", e))?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.slipway-new"));
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)?;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.write_all(contents)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| fail("write", e))
    }
}

/// Runs the agent once.
pub fn run(opts: &Options) -> Result<Outcome, AgentError> {
    let guest = Guest { root: &opts.root };
    let (url, source) = locate(opts, &guest)?;
    log(format_args!("seed {url} (from {source})"));

    let state = guest
        .read_optional(STATE_INSTANCE)?
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let retry_for = if state.is_some() {
        opts.retry_for.min(RETRY_FOR_APPLIED)
    } else {
        opts.retry_for
    };
    // Unlike user-data, meta-data is required: a 404 is a failed fetch.
    let fetched = fetch(&url, "meta-data", seed::MAX_META_DATA, retry_for).and_then(|body| {
        body.ok_or_else(|| AgentError::Fetch {
            action: "fetching",
            url: format!("{url}meta-data"),
            attempts: 1,
            elapsed: Duration::ZERO,
            error: FetchError::Status(404),
        })
    });
    let meta = match fetched {
        Ok(body) => MetaData::parse(&body)?,
        Err(e) => match state {
            Some(instance_id) => {
                log(format_args!(
                    "{e}; keeping the identity of instance {instance_id}, applied on an earlier boot"
                ));
                return Ok(Outcome::Kept { instance_id });
            }
            None => return Err(e),
        },
    };
    let instance_id = meta.instance_id.clone();
    let hostname = meta.local_hostname.as_ref().map(|h| h.fqdn().to_owned());

    if state.as_deref() == Some(instance_id.as_str()) {
        if guest
            .read_optional(STATE_REPORTED)?
            .is_some_and(|r| r.trim() == instance_id)
        {
            log(format_args!(
                "instance {instance_id} is already applied; nothing to do"
            ));
            return Ok(Outcome::AlreadyApplied { instance_id });
        }
        // Applied on an earlier boot whose report never got through: report again, apply nothing.
        log(format_args!(
            "instance {instance_id} is already applied, but was not reported; reporting"
        ));
        let body = ready_json(&instance_id, hostname.as_deref(), &[], &[], &[]);
        let reported = report(&guest, &url, &instance_id, body, opts.retry_for)?;
        return Ok(Outcome::Applied {
            instance_id,
            applied: Vec::new(),
            reported,
        });
    }

    // Everything is fetched and checked before the first write, so a refused seed changes nothing.
    let user_data = fetch(&url, "user-data", seed::MAX_USER_DATA, opts.retry_for)?;
    // The apps to install; a document that does not check out installs nothing, and says why.
    let mut errors = Vec::new();
    let apps = match fetch(
        &url,
        "slipway-apps",
        crate::apps::MAX_DOCUMENT,
        opts.retry_for,
    )? {
        Some(doc) => crate::apps::parse(&doc).unwrap_or_else(|e| {
            log(format_args!("apps: {e}"));
            errors.push(format!("apps: {e}"));
            Vec::new()
        }),
        None => Vec::new(),
    };
    log(format_args!(
        "applying instance {instance_id}{}",
        state
            .as_deref()
            .map(|s| format!(" (replacing {s})"))
            .unwrap_or_default()
    ));

    let mut applied = Vec::new();
    if let Some(h) = &meta.local_hostname {
        apply_hostname(&guest, h)?;
        applied.extend(["hostname".to_owned(), "hosts".to_owned()]);
    } else {
        log("the meta-data has no local-hostname; the host name is left as it is");
    }
    if regenerate_machine_id(&guest)? {
        applied.push("machine-id".to_owned());
    }
    match ssh_host_keys(&guest) {
        Ok(true) => applied.push("ssh-host-keys".to_owned()),
        Ok(false) => {}
        // SSH is one service among others: the identity is still applied and reported, with
        // this error in the report.
        Err(e) => {
            log(format_args!("SSH host keys: {e}"));
            errors.push(format!("ssh-host-keys: {e}"));
        }
    }
    if let Some(data) = &user_data {
        // Kept for the app installation that reads it; private, as it may hold secrets.
        guest.write(STATE_USER_DATA, data, 0o600)?;
        applied.push("user-data".to_owned());
    } else {
        log("the seed has no user-data");
    }
    // Apps last: their install scripts see the VM's own identity.
    let fetch_artifact = |name: &str| -> Result<Vec<u8>, String> {
        fetch(&url, name, crate::apps::MAX_BUNDLE, opts.retry_for)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the seed has no {name}"))
    };
    let installed = crate::apps::install(
        &opts.root,
        &apps,
        &instance_id,
        &fetch_artifact,
        opts.install_timeout,
    );
    for app in &installed {
        if app.ok {
            applied.push(format!("app:{}", app.name));
        } else {
            errors.push(format!(
                "app {}: {}",
                app.name,
                app.detail.lines().next().unwrap_or_default()
            ));
        }
    }
    guest.write(STATE_INSTANCE, format!("{instance_id}\n").as_bytes(), 0o644)?;
    let body = ready_json(
        &instance_id,
        hostname.as_deref(),
        &applied,
        &errors,
        &installed,
    );
    let reported = report(&guest, &url, &instance_id, body, opts.retry_for)?;
    Ok(Outcome::Applied {
        instance_id,
        applied,
        reported,
    })
}

fn locate(opts: &Options, guest: &Guest<'_>) -> Result<(SeedUrl, String), AgentError> {
    if let Some(seed) = &opts.seed {
        return Ok((SeedUrl::parse(seed)?, "--seed".into()));
    }
    let dmi = match &opts.dmi_serial {
        Some(s) => Some(s.clone()),
        None => guest.read_optional("sys/class/dmi/id/product_serial")?,
    };
    let cmdline = match &opts.cmdline {
        Some(s) => Some(s.clone()),
        None => guest.read_optional("proc/cmdline")?,
    };
    match seed::find_seed(dmi.as_deref(), cmdline.as_deref())? {
        Some((url, source)) => Ok((url, source.name().to_owned())),
        None => Err(AgentError::NoSeed),
    }
}

/// Retries `attempt` with doubling waits while its failures are transient, within `budget`.
fn with_retries<T>(
    action: &'static str,
    url: &str,
    budget: Duration,
    max_attempts: u32,
    mut attempt: impl FnMut() -> Result<T, FetchError>,
) -> Result<T, AgentError> {
    let start = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let elapsed = start.elapsed();
        if !error.is_transient() || attempts >= max_attempts || elapsed + backoff > budget {
            return Err(AgentError::Fetch {
                action,
                url: url.to_owned(),
                attempts,
                elapsed,
                error,
            });
        }
        log(format_args!("{url}: {error}; retrying in {backoff:?}"));
        sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// GETs one file of the seed; `None` when the server has no such file (404).
fn fetch(
    url: &SeedUrl,
    name: &str,
    max_body: usize,
    budget: Duration,
) -> Result<Option<Vec<u8>>, AgentError> {
    let limits = Limits {
        connect: CONNECT_TIMEOUT,
        total: FETCH_TIMEOUT,
        max_body,
    };
    with_retries(
        "fetching",
        &format!("{url}{name}"),
        budget,
        u32::MAX,
        || match http::request(url, name, None, limits) {
            Ok(r) if r.status == 200 => Ok(Some(r.body)),
            Ok(r) if r.status == 404 => Ok(None),
            Ok(r) => Err(FetchError::Status(r.status)),
            Err(HttpError::TooLarge { limit }) => Err(FetchError::TooLarge { limit }),
            Err(e) => Err(FetchError::Http(e)),
        },
    )
}

fn apply_hostname(guest: &Guest<'_>, name: &Hostname) -> Result<(), AgentError> {
    guest.write(
        "etc/hostname",
        format!("{}\n", name.short()).as_bytes(),
        0o644,
    )?;
    let hosts = guest.read_optional("etc/hosts")?;
    guest.write(
        "etc/hosts",
        hosts_with(hosts.as_deref(), name).as_bytes(),
        0o644,
    )?;
    // The running kernel's name only when this is the guest itself, not a tree under test.
    if is_real_root(guest.root) {
        rustix::system::sethostname(name.short().as_bytes()).map_err(|e| AgentError::Apply {
            op: "set the host name to",
            path: PathBuf::from(name.short()),
            source: e.into(),
        })?;
    }
    log(format_args!("host name {}", name.fqdn()));
    Ok(())
}

fn is_real_root(root: &Path) -> bool {
    fs::canonicalize(root).is_ok_and(|p| p == Path::new("/"))
}

/// `/etc/hosts` with one `127.0.1.1` line naming this host (Debian's convention, which makes the
/// host name resolve without DNS), replacing any there; other lines are kept.
pub fn hosts_with(existing: Option<&str>, name: &Hostname) -> String {
    let entry = if name.fqdn() == name.short() {
        format!("127.0.1.1\t{}", name.short())
    } else {
        format!("127.0.1.1\t{} {}", name.fqdn(), name.short())
    };
    let existing =
        existing.unwrap_or("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let mut lines: Vec<String> = Vec::new();
    let mut placed = false;
    for line in existing.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            if !placed {
                lines.push(entry.clone());
                placed = true;
            }
            continue;
        }
        lines.push(line.to_owned());
    }
    if !placed {
        let after = lines
            .iter()
            .rposition(|l| l.split_whitespace().next() == Some("127.0.0.1"));
        lines.insert(after.map_or(lines.len(), |i| i + 1), entry);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Writes a new machine-id when `/etc/machine-id` exists and is empty (as identity stripping
/// leaves it) or `uninitialized`. A missing file is left missing: distributions without systemd
/// may not use one.
fn regenerate_machine_id(guest: &Guest<'_>) -> Result<bool, AgentError> {
    let Some(current) = guest.read_optional("etc/machine-id")? else {
        return Ok(false);
    };
    let current = current.trim();
    if !(current.is_empty() || current == "uninitialized") {
        return Ok(false);
    }
    let id = new_machine_id().map_err(|source| AgentError::Apply {
        op: "get random bytes for",
        path: guest.path("etc/machine-id"),
        source,
    })?;
    guest.write("etc/machine-id", format!("{id}\n").as_bytes(), 0o444)?;
    log("new machine-id");
    Ok(true)
}

/// 32 lowercase hex digits, random, shaped as a version 4 UUID as systemd makes them.
pub fn new_machine_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let filled = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    if !matches!(filled, Ok(16)) {
        // Kernels older than 3.17 have no getrandom(2).
        use std::io::Read;
        fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes missing SSH host keys with `ssh-keygen -A`. `Ok(false)` when there is nothing to do it
/// for (no /etc/ssh) or nothing to do it with (no ssh-keygen).
fn ssh_host_keys(guest: &Guest<'_>) -> Result<bool, String> {
    if !guest.path("etc/ssh").is_dir() {
        log("no /etc/ssh: no SSH server, no host keys to make");
        return Ok(false);
    }
    let Some(keygen) = find_program("ssh-keygen") else {
        log("notice: ssh-keygen not found; SSH host keys not made");
        return Ok(false);
    };
    let mut cmd = Command::new(&keygen);
    cmd.arg("-A");
    if !is_real_root(guest.root) {
        cmd.arg("-f").arg(guest.root);
    }
    // ssh-keygen's own progress line goes to our stderr, and so to the same log.
    let status = cmd
        .stdout(io::stderr())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", keygen.display()))?;
    if !status.success() {
        return Err(format!("{} -A failed ({status})", keygen.display()));
    }
    Ok(true)
}

/// A program on PATH or in the usual directories (an init script may run with a bare PATH).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// POSTs `ready` to the seed. A failed report is logged, not fatal: the identity is applied, and
/// the next boot reports again.
fn report(
    guest: &Guest<'_>,
    url: &SeedUrl,
    instance_id: &str,
    body: String,
    budget: Duration,
) -> Result<bool, AgentError> {
    let limits = Limits {
        connect: CONNECT_TIMEOUT,
        total: FETCH_TIMEOUT,
        max_body: 64 * 1024,
    };
    let sent = with_retries(
        "reporting to",
        &format!("{url}ready"),
        budget,
        REPORT_ATTEMPTS,
        || match http::request(url, "ready", Some(body.as_bytes()), limits) {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(FetchError::Status(r.status)),
            Err(e) => Err(FetchError::Http(e)),
        },
    );
    match sent {
        Ok(()) => {
            guest.write(STATE_REPORTED, format!("{instance_id}\n").as_bytes(), 0o644)?;
            log(format_args!("reported ready for instance {instance_id}"));
            Ok(true)
        }
        Err(e) => {
            log(format_args!("could not report ready: {e}"));
            Ok(false)
        }
    }
}

/// The `ready` report: `{"instance-id": ..., "hostname": ..., "applied": [...], "errors": [...],
/// "apps": [{"name", "version", "ok", "detail"}]}`.
pub fn ready_json(
    instance_id: &str,
    hostname: Option<&str>,
    applied: &[String],
    errors: &[String],
    apps: &[crate::apps::Outcome],
) -> String {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| json_string(s))
            .collect::<Vec<_>>()
            .join(",")
    };
    let apps = apps
        .iter()
        .map(|a| {
            format!(
                "{{\"name\":{},\"version\":{},\"ok\":{},\"detail\":{}}}",
                json_string(&a.name),
                json_string(&a.version),
                a.ok,
                json_string(&a.detail)
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{{\"instance-id\":{},\"hostname\":{},\"applied\":[{}],\"errors\":[{}],\"apps\":[{apps}]}}",
        json_string(instance_id),
        hostname.map_or("null".to_owned(), json_string),
        list(applied),
        list(errors),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file() {
        let h = Hostname::parse("vm1.example.org").unwrap();
        assert_eq!(
            hosts_with(
                Some(
                    "127.0.0.1 localhost\n127.0.1.1 old.example old\n127.0.1.1 dup\n::1 localhost\n"
                ),
                &h
            ),
            "127.0.0.1 localhost\n127.0.1.1\tvm1.example.org vm1\n::1 localhost\n"
        );
        let h = Hostname::parse("vm2").unwrap();
        assert_eq!(
            hosts_with(Some("127.0.0.1 localhost\n::1 x\n"), &h),
            "127.0.0.1 localhost\n127.0.1.1\tvm2\n::1 x\n"
        );
        assert!(hosts_with(None, &h).contains("127.0.0.1\tlocalhost\n127.0.1.1\tvm2\n"));
    }

    #[test]
    fn machine_ids_are_v4_hex() {
        let a = new_machine_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(&a[12..13], "4");
        assert_ne!(a, new_machine_id().unwrap());
    }

    #[test]
    fn ready_body_is_json() {
        let body = ready_json(
            "i-\"1\"",
            Some("vm"),
            &["hostname".into()],
            &["x\ny".into()],
            &[crate::apps::Outcome {
                name: "hello".into(),
                version: "1".into(),
                ok: true,
                detail: "done".into(),
            }],
        );
        assert_eq!(
            body,
            r#"{"instance-id":"i-\"1\"","hostname":"vm","applied":["hostname"],"errors":["x\u000ay"],"apps":[{"name":"hello","version":"1","ok":true,"detail":"done"}]}"#
        );
        assert!(ready_json("i", None, &[], &[], &[]).contains("\"hostname\":null"));
    }
}
