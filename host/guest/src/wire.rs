//! Wiring first-boot software into a guest tree at staging.
//!
//! A tree with cloud-init gets only a NoCloud datasource setting; cloud-init then reads the seed
//! location the host agent puts in the SMBIOS serial. A tree without it gets Slipway's own agent,
//! `slipway-firstboot`, and whatever its init system needs to run that once per boot.
//!
//! The tree is hostile input: nothing here follows a symlink found in it (see [`tree`]), and every
//! path is checked before the first byte is written, so a refused tree is left as it was.

mod tree;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use tree::{Kind, Owner, ROOT, Tree};

/// Where the agent is installed in the guest.
pub const AGENT_PATH: &str = "/usr/local/sbin/slipway-firstboot";
/// The agent's state directory in the guest (instance-id, user-data).
pub const STATE_DIR: &str = "/var/lib/slipway";
/// The cloud-init setting written into trees that have cloud-init.
pub const CLOUD_CFG_PATH: &str = "/etc/cloud/cloud.cfg.d/99_slipway.cfg";

const SYSTEMD_UNIT_PATH: &str = "etc/systemd/system/slipway-firstboot.service";
const SYSTEMD_WANTS_PATH: &str =
    "etc/systemd/system/multi-user.target.wants/slipway-firstboot.service";
const INIT_SCRIPT_PATH: &str = "etc/init.d/slipway-firstboot";
const OPENRC_LINK_PATH: &str = "etc/runlevels/default/slipway-firstboot";
const INITTAB_PATH: &str = "etc/inittab";
const RCS_PATH: &str = "etc/init.d/rcS";
/// Existing inittab and rcS files are read whole to add a line; real ones are a few KiB.
const MAX_EDITED_FILE: usize = 1024 * 1024;

/// The guest's init system, as the identity plugin's `inspect` reports it (the WIT `init-system`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitSystem {
    Systemd,
    Openrc,
    Sysvinit,
    Busybox,
    Unknown,
}

impl InitSystem {
    /// The name reports use, the same as the serialised one.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Openrc => "openrc",
            Self::Sysvinit => "sysvinit",
            Self::Busybox => "busybox",
            Self::Unknown => "unknown",
        }
    }
}

/// The agent binary to install: the static `x86_64-unknown-linux-musl` build of
/// `slipway-firstboot`.
#[derive(Debug, Clone)]
pub enum AgentBinary {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// What staging asks for.
#[derive(Debug, Clone)]
pub struct FirstBoot {
    pub init_system: InitSystem,
    /// Read only when the tree has no cloud-init.
    pub agent: AgentBinary,
}

/// One path the wiring wrote or checked, for the staging report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Relative to the tree's root, without a leading `/`.
    pub path: String,
    pub action: Action,
    /// What the path is now, e.g. `"742 bytes, 0644"` or
    /// `"symlink to /etc/init.d/slipway-firstboot"`.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    /// Already as wiring wants it (a second wiring reports only these).
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot open the guest tree {path}: {source}")]
    OpenTree { path: PathBuf, source: io::Error },
    #[error(
        "refusing to use /{path} in the guest tree: it is a symlink, and the tree is untrusted"
    )]
    Symlink { path: String },
    #[error("/{path} in the guest tree is not a directory")]
    NotADirectory { path: String },
    #[error("/{path} in the guest tree is a directory where a file or symlink must go")]
    IsADirectory { path: String },
    #[error("/{path} in the guest tree is not a regular file")]
    NotAFile { path: String },
    #[error("/{path} in the guest tree is larger than {limit} bytes")]
    TooLarge { path: String, limit: usize },
    #[error("cannot {op} /{path} in the guest tree: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("cannot read the first-boot agent binary {path}: {source}")]
    AgentRead { path: PathBuf, source: io::Error },
    #[error("the first-boot agent binary ({what}) is not an ELF executable")]
    AgentNotElf { what: String },
    #[error(
        "cannot wire first boot: the tree has no cloud-init and its init system is unknown \
         (Slipway's agent can be started by systemd, OpenRC, sysvinit or busybox init)"
    )]
    UnknownInitSystem,
}

/// Whether the tree has cloud-init (`/usr/bin/cloud-init` or `/etc/cloud/cloud.cfg`). A path
/// through a symlinked directory counts as absent: detection never follows the tree's links.
pub fn has_cloud_init(tree: &Path) -> Result<bool, WireError> {
    cloud_init_in(&Tree::open(tree)?)
}

fn cloud_init_in(t: &Tree) -> Result<bool, WireError> {
    for path in ["usr/bin/cloud-init", "etc/cloud/cloud.cfg"] {
        match t.kind(path) {
            Ok(Kind::Missing)
            | Err(WireError::Symlink { .. } | WireError::NotADirectory { .. }) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// What one wiring step does.
enum Op {
    Dir(&'static str),
    File {
        path: &'static str,
        contents: Vec<u8>,
        mode: u32,
    },
    Symlink {
        path: &'static str,
        target: &'static str,
    },
    /// Add `line` (after a comment) to an existing file unless a line equal to it is there;
    /// `create` makes a missing file with this header and 0755.
    AddLine {
        path: &'static str,
        line: &'static str,
        comment: &'static str,
        create: Option<&'static str>,
    },
}

impl Op {
    fn path(&self) -> &'static str {
        match self {
            Op::Dir(p) => p,
            Op::File { path, .. } | Op::Symlink { path, .. } | Op::AddLine { path, .. } => path,
        }
    }
}

/// Wires first-boot software into the guest tree at `tree` and returns what it wrote (or found
/// already right). Idempotent: a second call changes nothing and reports every path `Unchanged`.
/// A tree that would make wiring write through a symlink, or over a directory, is refused before
/// anything is written.
pub fn wire_first_boot(tree: &Path, plan: &FirstBoot) -> Result<Vec<Change>, WireError> {
    let t = Tree::open(tree)?;
    let ops = if cloud_init_in(&t)? {
        vec![Op::File {
            path: &CLOUD_CFG_PATH[1..],
            contents: CLOUD_CFG.as_bytes().to_vec(),
            mode: 0o644,
        }]
    } else {
        let mut ops = match plan.init_system {
            InitSystem::Unknown => return Err(WireError::UnknownInitSystem),
            InitSystem::Systemd => vec![
                Op::File {
                    path: SYSTEMD_UNIT_PATH,
                    contents: SYSTEMD_UNIT.as_bytes().to_vec(),
                    mode: 0o644,
                },
                Op::Symlink {
                    path: SYSTEMD_WANTS_PATH,
                    target: "/etc/systemd/system/slipway-firstboot.service",
                },
            ],
            InitSystem::Openrc => vec![
                Op::File {
                    path: INIT_SCRIPT_PATH,
                    contents: OPENRC_SCRIPT.as_bytes().to_vec(),
                    mode: 0o755,
                },
                // Absolute, as `rc-update add` makes it.
                Op::Symlink {
                    path: OPENRC_LINK_PATH,
                    target: "/etc/init.d/slipway-firstboot",
                },
            ],
            InitSystem::Sysvinit => {
                let mut ops = vec![Op::File {
                    path: INIT_SCRIPT_PATH,
                    contents: SYSVINIT_SCRIPT.as_bytes().to_vec(),
                    mode: 0o755,
                }];
                // Relative, as `update-rc.d` makes them.
                for link in SYSVINIT_LINKS {
                    ops.push(Op::Symlink {
                        path: link,
                        target: "../init.d/slipway-firstboot",
                    });
                }
                ops
            }
            InitSystem::Busybox => match t.kind(INITTAB_PATH)? {
                // `once` runs after the `sysinit` entries (which bring up the network) and is not
                // waited for, so a slow seed does not hold up the console.
                Kind::File => vec![Op::AddLine {
                    path: INITTAB_PATH,
                    line: "::once:/usr/local/sbin/slipway-firstboot",
                    comment: "# Slipway first boot: identity from the deployment seed, once per instance.",
                    create: None,
                }],
                // Without an inittab, busybox init runs /etc/init.d/rcS; in the background there,
                // because rcS is waited for and the agent may retry for minutes.
                Kind::Missing => vec![Op::AddLine {
                    path: RCS_PATH,
                    line: "/usr/local/sbin/slipway-firstboot &",
                    comment: "# Slipway first boot: identity from the deployment seed (in the background: it may wait for the network).",
                    create: Some(RCS_HEADER),
                }],
                Kind::Symlink => {
                    return Err(WireError::Symlink {
                        path: INITTAB_PATH.into(),
                    });
                }
                _ => {
                    return Err(WireError::NotAFile {
                        path: INITTAB_PATH.into(),
                    });
                }
            },
        };
        let agent = load_agent(&plan.agent)?;
        ops.insert(
            0,
            Op::File {
                path: &AGENT_PATH[1..],
                contents: agent,
                mode: 0o755,
            },
        );
        ops.insert(1, Op::Dir(&STATE_DIR[1..]));
        ops
    };

    for op in &ops {
        preflight(&t, op)?;
    }
    let mut changes = Vec::new();
    for op in ops {
        changes.extend(apply(&t, op)?);
    }
    Ok(changes)
}

fn load_agent(agent: &AgentBinary) -> Result<Vec<u8>, WireError> {
    let (bytes, what) = match agent {
        AgentBinary::Bytes(b) => (b.clone(), "given as bytes".to_owned()),
        AgentBinary::Path(p) => (
            std::fs::read(p).map_err(|source| WireError::AgentRead {
                path: p.clone(),
                source,
            })?,
            p.display().to_string(),
        ),
    };
    if !bytes.starts_with(b"\x7fELF") {
        return Err(WireError::AgentNotElf { what });
    }
    Ok(bytes)
}

/// Checks that an op can be done without following a link or replacing a directory: every
/// existing parent is a real directory, and what is at the path is of a replaceable kind.
fn preflight(t: &Tree, op: &Op) -> Result<(), WireError> {
    let path = op.path();
    let kind = t.kind(path)?;
    let refuse = match (op, kind) {
        (_, Kind::Missing) => None,
        (Op::Dir(_), Kind::Dir) => None,
        (Op::Dir(_), Kind::Symlink) | (Op::AddLine { .. }, Kind::Symlink) => {
            Some(WireError::Symlink { path: path.into() })
        }
        (Op::Dir(_), _) => Some(WireError::NotADirectory { path: path.into() }),
        (Op::File { .. } | Op::Symlink { .. }, Kind::Dir) => {
            Some(WireError::IsADirectory { path: path.into() })
        }
        (Op::File { .. } | Op::Symlink { .. }, _) => None,
        (Op::AddLine { .. }, Kind::File) => None,
        (Op::AddLine { .. }, _) => Some(WireError::NotAFile { path: path.into() }),
    };
    refuse.map_or(Ok(()), Err)
}

fn apply(t: &Tree, op: Op) -> Result<Vec<Change>, WireError> {
    match op {
        Op::Dir(path) => t.ensure_dir(path),
        Op::File {
            path,
            contents,
            mode,
        } => t.write_file(path, &contents, mode, ROOT),
        Op::Symlink { path, target } => t.symlink(path, target),
        Op::AddLine {
            path,
            line,
            comment,
            create,
        } => {
            let (text, mode, owner) = match t.read_file(path, MAX_EDITED_FILE)? {
                Some((existing, stat)) => {
                    if existing
                        .split(|&b| b == b'\n')
                        .any(|l| l.trim_ascii() == line.as_bytes())
                    {
                        let detail = format!("already has {line:?}");
                        return Ok(vec![Change {
                            path: path.into(),
                            action: Action::Unchanged,
                            detail,
                        }]);
                    }
                    let owner = Owner {
                        uid: stat.st_uid,
                        gid: stat.st_gid,
                    };
                    (
                        with_line(&existing, comment, line),
                        stat.st_mode & 0o7777,
                        owner,
                    )
                }
                None => match create {
                    Some(header) => (
                        format!("{header}{comment}\n{line}\n").into_bytes(),
                        0o755,
                        ROOT,
                    ),
                    None => return Err(WireError::NotAFile { path: path.into() }),
                },
            };
            let mut changes = t.write_file(path, &text, mode, owner)?;
            if let Some(last) = changes.last_mut() {
                last.detail = format!("{} with {line:?}", last.detail);
            }
            Ok(changes)
        }
    }
}

/// `existing` with `comment` and `line` added at the end, or before a final `exit` (an `rcS`
/// ending in `exit 0` would never reach a line after it).
fn with_line(existing: &[u8], comment: &str, line: &str) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = existing.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let last_code = lines.iter().rposition(|l| {
        let l = l.trim_ascii();
        !l.is_empty() && !l.starts_with(b"#")
    });
    let at = match last_code {
        Some(i)
            if lines[i].trim_ascii() == b"exit" || lines[i].trim_ascii().starts_with(b"exit ") =>
        {
            i
        }
        _ => lines.len(),
    };
    let mut out = Vec::with_capacity(existing.len() + comment.len() + line.len() + 3);
    for l in &lines[..at] {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    for added in [comment, line] {
        out.extend_from_slice(added.as_bytes());
        out.push(b'\n');
    }
    for l in &lines[at..] {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

const SYSVINIT_LINKS: [&str; 4] = [
    "etc/rc2.d/S01slipway-firstboot",
    "etc/rc3.d/S01slipway-firstboot",
    "etc/rc4.d/S01slipway-firstboot",
    "etc/rc5.d/S01slipway-firstboot",
];

const CLOUD_CFG: &str = "\
# Written by Slipway when this image was staged.
#
# Only NoCloud (then None): when Slipway deploys this image, its host agent puts the seed
# location in the VM's SMBIOS system serial as `ds=nocloud-net;s=http://<server>/.../`, which
# NoCloud reads at boot. No other datasource is probed, so boot does not wait on metadata
# services that are not there.
#
# The seed is given in the `nocloud-net` form on purpose: Debian bookworm's cloud-init 22.4
# fetches a seed given as `ds=nocloud;s=<url>` and then discards it (the instance ends on no
# datasource, with hostname `localhost`).
#
# The file name sorts after the distribution's own settings (Debian's 90_dpkg.cfg also sets
# datasource_list; the last file read wins), so this list is the one cloud-init and ds-identify use.
datasource_list: [ NoCloud, None ]
";

const SYSTEMD_UNIT: &str = "\
# Written by Slipway when this image was staged.
[Unit]
Description=Slipway first boot: hostname, machine-id and SSH host keys from the deployment seed
Wants=network-online.target
After=network-online.target
# The agent makes the SSH host keys that staging removed: the SSH server must wait for them.
Before=ssh.service sshd.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/slipway-firstboot
RemainAfterExit=yes
# The agent retries for up to two minutes while the network and the seed server come up.
TimeoutStartSec=5min
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

const OPENRC_SCRIPT: &str = "\
#!/sbin/openrc-run
# Written by Slipway when this image was staged.

description=\"Slipway first boot: hostname, machine-id and SSH host keys from the deployment seed\"

depend() {
\tneed net
\t# The agent makes the SSH host keys that staging removed.
\tbefore sshd
}

start() {
\tebegin \"Applying the Slipway deployment seed\"
\t/usr/local/sbin/slipway-firstboot
\teend $?
}
";

// S01 in rc2..5, not S99: on Debian-style sysvinit the network is brought up in rcS.d, before
// any runlevel script, and the SSH server (in rc2..5) needs the host keys the agent makes. The
// LSB header lets insserv order it the same way if it renumbers.
const SYSVINIT_SCRIPT: &str = "\
#!/bin/sh
# Written by Slipway when this image was staged.
### BEGIN INIT INFO
# Provides:          slipway-firstboot
# Required-Start:    $network $remote_fs $syslog
# Required-Stop:
# X-Start-Before:    ssh sshd
# Default-Start:     2 3 4 5
# Default-Stop:
# Short-Description: Slipway first boot
# Description:       Hostname, machine-id and SSH host keys from the deployment seed.
### END INIT INFO

case \"$1\" in
  start)
    /usr/local/sbin/slipway-firstboot
    ;;
  stop|restart|force-reload|status)
    # A one-shot at boot: nothing runs afterwards.
    ;;
  *)
    echo \"Usage: $0 start\" >&2
    exit 3
    ;;
esac
";

const RCS_HEADER: &str = "\
#!/bin/sh
# Written by Slipway when this image was staged: busybox init runs this file when there is no
# /etc/inittab. The agent reads the seed location from /sys and /proc.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
";

#[cfg(test)]
mod tests {
    use super::with_line;

    #[test]
    fn lines_go_before_a_final_exit() {
        let got = with_line(b"#!/bin/sh\nmount -a\nexit 0\n# end\n", "# c", "agent &");
        assert_eq!(got, b"#!/bin/sh\nmount -a\n# c\nagent &\nexit 0\n# end\n");
        let got = with_line(b"#!/bin/sh\nmount -a", "# c", "agent &");
        assert_eq!(got, b"#!/bin/sh\nmount -a\n# c\nagent &\n");
        let got = with_line(b"", "# c", "x");
        assert_eq!(got, b"# c\nx\n");
        let got = with_line(b"exiting=1\n", "# c", "x");
        assert_eq!(got, b"exiting=1\n# c\nx\n");
    }
}
