//! The identity plugin for Linux guests: recognises Debian, Ubuntu, Fedora, RHEL (and its
//! rebuilds, CentOS, Rocky and AlmaLinux, by `ID_LIKE`) and Alpine trees, and strips a model VM's
//! identity from them so that every VM deployed from the staged image becomes a machine of its
//! own.
//!
//! The plugin runs inside Slipway's runtime with the guest tree preopened as `/` through WASI and
//! nothing else. The tree is hostile input: symlinks are never followed by the file system (they
//! are resolved by hand, inside the tree, where `inspect` needs them, and otherwise left or
//! removed as links), every file parsed is read only up to 64 KiB (a larger one is refused),
//! directories are walked to a bounded depth, and anything unexpected is an error that names the
//! path — never a panic.
//!
//! # `inspect`
//!
//! - **Distribution and version**: `/etc/os-release`, else `/usr/lib/os-release` (each followed
//!   through symlinks inside the tree; Debian links the first to the second). `distro` is `ID`,
//!   `version` is `VERSION_ID`, or, where that is missing (Debian testing), the content of
//!   `/etc/debian_version`. Without os-release: `/etc/alpine-release`, `/etc/redhat-release`
//!   ("Rocky Linux release 9.4 (Blue Onyx)"), `/etc/debian_version`, in that order. A tree whose
//!   `ID` and `ID_LIKE` name none of debian, ubuntu, fedora, rhel, centos or alpine — or that has
//!   none of these files (an empty directory, a Windows tree) — is "not mine": `None`.
//! - **Architecture**: the ELF header's `e_machine` of the first binary found among `/bin/sh`,
//!   `/usr/bin/sh`, dash, bash, `/usr/bin/env`, `/bin/busybox`, `/sbin/init`, systemd and `ls`.
//!   A 32-bit or unknown machine is an error, as is a tree without any of them.
//! - **Init system**: systemd if `/sbin/init` (or `/usr/sbin/init`) resolves to a file named
//!   `systemd`, or there is no init but systemd is installed; else OpenRC if `/sbin/openrc`
//!   exists, or both `/etc/init.d` and `/etc/runlevels` (checked before busybox: Alpine's init is
//!   busybox, handing the services to OpenRC); else busybox if init resolves to `busybox`; else
//!   sysvinit if init is a file and `/etc/inittab` exists; else unknown.
//!
//! Symlinks are resolved by hand, relative targets from the link's directory, `..` stopping at
//! the root, at most 40 hops (more is a loop, and an error). Absolute targets are another matter:
//! the runtime's WASI refuses to reveal them (wasmtime's `readlink` hides absolute targets so as
//! not to leak host paths), though `lstat` still gives their length. So an absolute link is not
//! followed: `/etc/os-release` falls back to `/usr/lib/os-release` (its only target in practice),
//! the architecture is read from the shells themselves (`/usr/bin/dash`, `/usr/bin/bash`, ...),
//! and an absolute init link (Debian's and Ubuntu's `/lib/systemd/systemd`, Alpine's
//! `/bin/busybox`) is matched to the well-known init of the same length that exists in the tree.
//!
//! # `strip`
//!
//! The operations run in this order, each reported as an `operation` — also when it had nothing
//! to do (`changed` empty, detail "nothing to do"), so that the report is complete and always has
//! the same shape. `changed` lists paths relative to the root; a removed directory is one entry.
//! Every operation runs on every distribution: each touches only files that exist, and a file of
//! another family's tool (rpm on Debian) holds identity just the same, so branching on the
//! distribution would only add ways to miss something. The first error stops the strip.
//!
//! 1. `machine-id` — `/etc/machine-id` is emptied, not removed, as machine-id(5) advises for
//!    images: systemd makes a new ID at first boot, and on a read-only root can mount one over
//!    the empty file. (`uninitialized` is left, being that signal already.)
//!    `/var/lib/dbus/machine-id` is removed if it is a file (a copy); a symlink (to
//!    `/etc/machine-id`) is left.
//! 2. `ssh-host-keys` — `/etc/ssh/ssh_host_*_key`, `*_key.pub` and `*_key-cert.pub`: every VM
//!    must have its own host keys, or one VM can impersonate another.
//! 3. `udev-persistent-net` — `/etc/udev/rules.d/70-persistent-net.rules`, which names the
//!    interfaces by the model's MACs (new cards would become eth1, eth2, ...). The generator's
//!    switch, `75-persistent-net-generator.rules`, is the admin's and stays.
//! 4. `net-mac-pins` — MAC addresses in network configuration, which would bind the
//!    configuration to the model's cards (or give every VM the same address): ifcfg files
//!    (`HWADDR=`, `MACADDR=`; `UUID=` stays), netplan YAML (a `match:` that matches only the
//!    MAC goes, with its `set-name:`; other `macaddress:` keys go), NetworkManager keyfiles
//!    (`mac-address=`, `cloned-mac-address=` in `[ethernet]`/`[wifi]`; `uuid=` stays) and
//!    systemd-networkd files (`MACAddress=` under `[Match]`, `[Link]`, `[NetDev]`). Files are
//!    edited line by line and rewritten in place, keeping their mode, owner and label; symlinks
//!    are not edited.
//! 5. `hostname` — `/etc/hostname` (read by systemd, Debian's and Alpine's init scripts alike)
//!    is set to the configured name (`localhost`), created if missing; `/etc/hosts` loses
//!    Debian's `127.0.1.1` line for the model, and the model's name and the names under it
//!    (`model.example.com`) on other lines, a line left nameless going too (`localhost` lines
//!    stay); `/etc/sysconfig/network` loses `HOSTNAME=`.
//! 6. `dhcp-leases` — leases in `/var/lib/dhcp`, `/var/lib/dhclient`, `/var/lib/NetworkManager`,
//!    `/var/lib/udhcpc`, `/var/lib/dhcpcd` (with dhcpcd's DUID and secret): a VM would ask for
//!    the model's address, under the model's client ID.
//! 7. `logs` — under `/var/log`: the journal's machine-id-named directories are removed, rotated
//!    logs (`*.1`, `*.gz`, `*.old`, `*-YYYYMMDD`, ...) removed, and every other regular file
//!    emptied but kept, since some daemons will not start without theirs. Directories and
//!    symlinks stay.
//! 8. `shell-history` — shell, REPL, `less` and `vim` histories of root and of every
//!    `/home/*`. A history linked to `/dev/null` is a setting, and stays. `authorized_keys` and
//!    every other user file stay.
//! 9. `tmp-files` — everything in `/tmp` and `/var/tmp` (the directories stay).
//! 10. `package-caches` — downloaded `.deb`s and apt's `*.bin` caches, and the dnf, yum and apk
//!     caches. apt's package lists (`/var/lib/apt/lists`) stay: they are not identity, and they
//!     let apt resolve packages at first boot.
//! 11. `random-seed` — saved random seeds (systemd, sysvinit, Alpine's seedrng): VMs must not
//!     start from the same entropy.
//! 12. `cloud-init-state` — `/var/lib/cloud/*`, so that cloud-init treats the VM as a new
//!     instance. (Its logs were emptied by `logs`.)
//! 13. `crash-data` — `/var/crash`, systemd's coredumps and pstore, abrt's spool.
//! 14. `mail-spool` — the mailboxes in `/var/spool/mail` and `/var/mail` (the directories stay).
//! 15. `cron-spool` — pending `at` jobs, anacron's stamps and systemd timers' `stamp-*` files,
//!     so that no VM replays the model's jobs and each runs its periodic jobs on its own
//!     schedule. Users' crontabs are configuration and stay.
//! 16. `rpm-db-locks` — `/var/lib/rpm/__db.*` and rpm's lock files, stale in a copy.
//! 17. `passwd-backups` — `/etc/passwd-`, `shadow-`, `group-`, `gshadow-`, `subuid-`, `subgid-`,
//!     backups holding the model's old password hashes.
//! 18. `network-manager-state` — NetworkManager's `secret_key` (it seeds stable-privacy IPv6
//!     addresses and generated MACs), `timestamps` and `seen-bssids`.
//! 19. `rhsm-registration` — Red Hat subscription consumer and entitlement certificates and the
//!     RHN `systemid`: every VM must register as itself.
//! 20. `yum-uuid` — `/var/lib/yum/uuid`.
//!
//! What the plugin does not do: it makes no new identity (host keys, machine-id and the real
//! host name are the deployed VM's first boot's to make), changes no owner or mode (WASI cannot),
//! and never removes users' keys (`authorized_keys`) or configuration. It needs the tree writable
//! for `strip`, and files it empties or edits writable by the runtime's user.
//!
//! # Configuration
//!
//! `hostname` (default `localhost`): the name `/etc/hostname` is set to.

use serde::Deserialize;
use slipway_plugin_sdk::identity::*;

mod edit;
mod inspect;
mod strip;
mod tree;

/// `[config]` in plugin.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The host name a staged tree gets until its first boot sets the VM's own.
    pub hostname: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
        }
    }
}

/// Whether `name` is a valid host name (RFC 1123: dot-separated labels of letters, digits and
/// inner hyphens, each at most 63 characters, at most 253 in all).
fn valid_hostname(name: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label_ok)
}

pub struct IdentityLinux(Config);

impl Identity for IdentityLinux {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if !valid_hostname(&config.hostname) {
            return Err(format!(
                "hostname {:?} is not a valid host name (letters, digits, `-` and `.`, labels of \
                 at most 63 characters)",
                config.hostname
            ));
        }
        Ok(Self(config))
    }

    fn inspect(&self) -> Result<Option<OsInfo>, String> {
        inspect::inspect()
    }

    fn strip(&self, os: &OsInfo) -> Result<Vec<Operation>, String> {
        strip::strip(os, &self.0.hostname)
    }
}

slipway_plugin_sdk::export_identity!(IdentityLinux);
