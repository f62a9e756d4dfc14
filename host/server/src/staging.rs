//! Staging: a model VM's boot disk becomes a staged image. Each step is a blocking function the
//! job runs off the async threads, in a working directory of its own that is removed when the
//! job ends, however it ends.
//!
//! 1. `copy-out`: the stored qcow2 becomes a raw file; its file systems are copied out to trees
//!    (`slipway-image`, in Rust, no mount).
//! 2. `inspect`: the root file system is the one with an `os-release`; the identity plugins whose
//!    manifests apply to the model's declared OS are asked in turn, and the first that
//!    recognises the tree strips it.
//! 3. `strip`: the plugin removes the model's identity; it sees only that tree.
//! 4. `first-boot`: cloud-init is pointed at the NoCloud seed the hypervisor names at deploy
//!    time, or Slipway's own first-boot agent is installed for the guest's init system.
//! 5. `write-image`: a new disk from the trees (new layout, same file-system identities).
//! 6. `store`: the job converts it to qcow2 and records the staged VM.

use std::path::{Path, PathBuf};

use slipway_core::catalog::OsSpec;
use slipway_core::resources::{FoundOs, StageOperation};
use slipway_image::layout::{self, Content, Layout, Sizing};
use slipway_runtime::identity::IdentityPlugin;
use slipway_runtime::types::{Arch, InitSystem, OsInfo};

pub const STAGE: &str = "staged_vm.create";
pub const STAGE_STEPS: &[&str] = &[
    "copy-out",
    "inspect",
    "strip",
    "first-boot",
    "write-image",
    "store",
];

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Image(#[from] slipway_image::ImageError),
    #[error(
        "no file system of the image holds an operating system (no etc/os-release or usr/lib/os-release)"
    )]
    NoRoot,
    #[error("no identity plugin recognises the operating system in {volume} (asked: {})", if asked.is_empty() { "none apply to the model's OS".to_string() } else { asked.join(", ") })]
    NoPlugin { volume: String, asked: Vec<String> },
    #[error("identity plugin {plugin}: {error}")]
    Plugin { plugin: String, error: String },
    #[error("the model VM says {declared} but its image holds {found}; correct the model VM")]
    Mismatch { declared: String, found: String },
    #[error("first-boot software: {0}")]
    FirstBoot(String),
}

/// The work directory's layout: `source.raw`, `trees/`, `staged.raw`.
pub struct Work {
    pub dir: PathBuf,
}

impl Work {
    fn trees(&self) -> PathBuf {
        self.dir.join("trees")
    }
    pub fn staged(&self) -> PathBuf {
        self.dir.join("staged.raw")
    }
}

/// Step 1: the model's stored qcow2 → trees.
pub fn copy_out(work: &Work, blob: &Path) -> Result<Layout, StageError> {
    let raw = work.dir.join("source.raw");
    layout::to_raw(blob, "qcow2", &raw)?;
    std::fs::create_dir(work.trees()).map_err(|e| slipway_image::ImageError::Io {
        what: "creating the trees directory".into(),
        source: e,
    })?;
    let layout = layout::copy_out(&raw, &work.trees())?;
    // The raw copy is as large as the disk's data: gone as soon as it is read.
    let _ = std::fs::remove_file(&raw);
    Ok(layout)
}

/// What `inspect` found.
pub struct Found {
    pub volume: usize,
    pub plugin: IdentityPlugin,
    pub os: OsInfo,
}

/// Whether `rel` exists in `tree` through real directories only: the tree is the guest's, and an
/// `etc` that links to the host's `/etc` must not make the host's files count.
fn exists_inside(tree: &Path, rel: &str) -> bool {
    let mut at = tree.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        match at.symlink_metadata() {
            Ok(md) if i + 1 == parts.len() => return md.is_file() || md.is_symlink(),
            Ok(md) if md.is_dir() => {}
            _ => return false,
        }
    }
    false
}

fn root_volume(layout: &Layout, trees: &Path) -> Option<usize> {
    layout.volumes.iter().position(|v| match &v.content {
        Content::Ext { tree, .. } => ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .any(|f| exists_inside(&trees.join(tree), f)),
        _ => false,
    })
}

/// Whether a plugin's manifest applies to the declared OS.
fn applies(plugin: &IdentityPlugin, os: &OsSpec) -> bool {
    let family = os.family.as_str();
    let m = plugin.manifest();
    m.applies_to.is_empty()
        || m.applies_to.iter().any(|a| {
            a.family == family
                && a.distro.as_ref().is_none_or(|d| *d == os.distro)
                && a.version.as_ref().is_none_or(|v| *v == os.version)
        })
}

/// Step 2: the root tree, and the plugin that recognises it.
pub fn inspect(
    work: &Work,
    layout: &Layout,
    plugins: &[IdentityPlugin],
    declared: &OsSpec,
) -> Result<Found, StageError> {
    let volume = root_volume(layout, &work.trees()).ok_or(StageError::NoRoot)?;
    let tree = work
        .trees()
        .join(layout.volumes[volume].tree().expect("a file system"));
    let mut asked = Vec::new();
    for plugin in plugins.iter().filter(|p| applies(p, declared)) {
        asked.push(plugin.name().to_string());
        let found = plugin.inspect(&tree).map_err(|e| StageError::Plugin {
            plugin: plugin.name().into(),
            error: e.to_string(),
        })?;
        if let Some(os) = found {
            if os.distro != declared.distro || core_arch(os.arch) != declared.arch {
                return Err(StageError::Mismatch {
                    declared: format!(
                        "{} {} ({})",
                        declared.distro, declared.version, declared.arch
                    ),
                    found: format!("{} {} ({})", os.distro, os.version, core_arch(os.arch)),
                });
            }
            return Ok(Found {
                volume,
                plugin: plugin.clone(),
                os,
            });
        }
    }
    Err(StageError::NoPlugin {
        volume: layout.volumes[volume].name(),
        asked,
    })
}

/// Step 3: the plugin strips the tree.
pub fn strip(
    work: &Work,
    layout: &Layout,
    found: &Found,
) -> Result<Vec<StageOperation>, StageError> {
    let tree = work
        .trees()
        .join(layout.volumes[found.volume].tree().expect("a file system"));
    let ops = found
        .plugin
        .strip(&tree, &found.os)
        .map_err(|e| StageError::Plugin {
            plugin: found.plugin.name().into(),
            error: e.to_string(),
        })?;
    Ok(ops
        .into_iter()
        .map(|o| StageOperation {
            by: found.plugin.name().into(),
            name: o.name,
            changed: o.changed,
            detail: o.detail,
        })
        .collect())
}

/// Step 4: first-boot software. Returns how the guest will find its seed, and what changed.
pub fn first_boot(
    work: &Work,
    layout: &Layout,
    found: &Found,
    agent: Option<&Path>,
) -> Result<(String, Vec<StageOperation>), StageError> {
    use slipway_guest::{AgentBinary, FirstBoot};
    let tree = work
        .trees()
        .join(layout.volumes[found.volume].tree().expect("a file system"));
    let init_system = init(found.os.init_system);
    let fail = |e: slipway_guest::WireError| StageError::FirstBoot(e.to_string());
    let cloud_init = slipway_guest::has_cloud_init(&tree).map_err(fail)?;
    let agent = match (cloud_init, agent) {
        (true, _) => AgentBinary::Bytes(Vec::new()),
        (false, Some(path)) => {
            let built_for = elf_arch(path).map_err(|e| {
                StageError::FirstBoot(format!("the server's first-boot agent cannot be read: {e}"))
            })?;
            if built_for != core_arch(found.os.arch) {
                return Err(StageError::FirstBoot(format!(
                    "the guest is {} but the server's first-boot agent is built for {}",
                    core_arch(found.os.arch),
                    built_for
                )));
            }
            AgentBinary::Path(path.to_path_buf())
        }
        (false, None) => {
            return Err(StageError::FirstBoot(
                "the guest has no cloud-init and the server has no first-boot agent to install (start it with --guest-agent)".into(),
            ));
        }
    };
    let changes =
        slipway_guest::wire_first_boot(&tree, &FirstBoot { init_system, agent }).map_err(fail)?;
    let (method, detail) = if cloud_init {
        ("cloud-init", "cloud-init's NoCloud datasource reads the seed location the hypervisor puts in the SMBIOS serial (ds=nocloud-net;s=...)".to_string())
    } else {
        (
            "slipway-firstboot",
            format!(
                "Slipway's first-boot agent, started by {}, reads the seed location from the SMBIOS serial",
                init_system.as_str()
            ),
        )
    };
    let op = StageOperation {
        by: "slipway".into(),
        name: "first-boot".into(),
        changed: changes.iter().map(|c| c.path.clone()).collect(),
        detail: format!(
            "{detail}; {}",
            changes
                .iter()
                .map(|c| format!("{}: {}", c.path, c.detail))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Ok((method.to_string(), vec![op]))
}

/// Step 5: the new disk.
pub fn write_image(work: &Work, layout: &Layout, sizing: Sizing) -> Result<Layout, StageError> {
    Ok(layout::copy_in(
        layout,
        &work.trees(),
        &work.staged(),
        sizing,
    )?)
}

/// The instruction set an ELF executable is built for.
pub fn elf_arch(path: &Path) -> std::io::Result<slipway_core::Arch> {
    use slipway_core::Arch;
    use std::io::Read;
    let mut header = [0u8; 20];
    std::fs::File::open(path)?.read_exact(&mut header)?;
    if &header[..4] != b"\x7fELF" {
        return Err(std::io::Error::other("not an ELF executable"));
    }
    match u16::from_le_bytes([header[18], header[19]]) {
        0x3e => Ok(Arch::X86_64),
        0xb7 => Ok(Arch::Aarch64),
        0xf3 => Ok(Arch::Riscv64),
        0x15 => Ok(Arch::Ppc64le),
        0x16 => Ok(Arch::S390x),
        other => Err(std::io::Error::other(format!(
            "an ELF executable for machine {other:#x}"
        ))),
    }
}

/// The contract's architecture as the catalog names it.
fn core_arch(a: Arch) -> slipway_core::Arch {
    use slipway_core::Arch as A;
    match a {
        Arch::X8664 => A::X86_64,
        Arch::Aarch64 => A::Aarch64,
        Arch::Riscv64 => A::Riscv64,
        Arch::Ppc64le => A::Ppc64le,
        Arch::S390x => A::S390x,
    }
}

fn init(i: InitSystem) -> slipway_guest::InitSystem {
    use slipway_guest::InitSystem as I;
    match i {
        InitSystem::Systemd => I::Systemd,
        InitSystem::Openrc => I::Openrc,
        InitSystem::Sysvinit => I::Sysvinit,
        InitSystem::Busybox => I::Busybox,
        InitSystem::Unknown => I::Unknown,
    }
}

pub fn found_os(os: &OsInfo) -> FoundOs {
    FoundOs {
        family: os.family.clone(),
        distro: os.distro.clone(),
        version: os.version.clone(),
        arch: core_arch(os.arch).to_string(),
        init_system: init(os.init_system).as_str().into(),
    }
}
