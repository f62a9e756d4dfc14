//! The strip operations, in their documented order (see the crate documentation for what each
//! does and why).

use slipway_plugin_sdk::identity::{Operation, OsInfo};

use crate::edit::{self, Edit};
use crate::tree::{self, Dir, Kind};

/// One operation: its stable name, what it did when it changed something, and its code.
pub struct Spec {
    pub name: &'static str,
    pub what: &'static str,
    run: fn(&mut Ctx) -> Result<(), String>,
}

/// Every operation, in the order `strip` runs them.
pub const OPERATIONS: &[Spec] = &[
    Spec {
        name: "machine-id",
        what: "emptied /etc/machine-id so that systemd makes a new one at first boot, and removed \
               D-Bus's own copy",
        run: machine_id,
    },
    Spec {
        name: "ssh-host-keys",
        what: "removed the SSH host keys and certificates; each VM must make its own before sshd \
               starts",
        run: ssh_host_keys,
    },
    Spec {
        name: "udev-persistent-net",
        what: "removed udev's generated rules that tie interface names to the model's MACs",
        run: udev_persistent_net,
    },
    Spec {
        name: "net-mac-pins",
        what: "removed the model's MAC addresses from network configuration",
        run: net_mac_pins,
    },
    Spec {
        name: "hostname",
        what: "reset the host name and removed the model's name from /etc/hosts",
        run: hostname,
    },
    Spec {
        name: "dhcp-leases",
        what: "removed DHCP leases and client identifiers",
        run: dhcp_leases,
    },
    Spec {
        name: "logs",
        what: "removed rotated logs and the journal, and emptied the other log files",
        run: logs,
    },
    Spec {
        name: "shell-history",
        what: "removed shell and tool histories of root and the users",
        run: shell_history,
    },
    Spec {
        name: "tmp-files",
        what: "removed the contents of /tmp and /var/tmp",
        run: tmp_files,
    },
    Spec {
        name: "package-caches",
        what: "removed downloaded packages and package-manager caches",
        run: package_caches,
    },
    Spec {
        name: "random-seed",
        what: "removed saved random seeds, so that VMs do not start from the same entropy",
        run: random_seed,
    },
    Spec {
        name: "cloud-init-state",
        what: "removed cloud-init's state, so that it runs as on a new instance",
        run: cloud_init_state,
    },
    Spec {
        name: "crash-data",
        what: "removed crash dumps and core files",
        run: crash_data,
    },
    Spec {
        name: "mail-spool",
        what: "removed local mailboxes",
        run: mail_spool,
    },
    Spec {
        name: "cron-spool",
        what: "removed pending at jobs and the run stamps of anacron and systemd timers",
        run: cron_spool,
    },
    Spec {
        name: "rpm-db-locks",
        what: "removed the RPM database's lock and environment files",
        run: rpm_db_locks,
    },
    Spec {
        name: "passwd-backups",
        what: "removed the backup copies of the account files",
        run: passwd_backups,
    },
    Spec {
        name: "network-manager-state",
        what: "removed NetworkManager's per-machine secret key and connection history",
        run: network_manager_state,
    },
    Spec {
        name: "rhsm-registration",
        what: "removed the Red Hat subscription registration (consumer identity and \
               entitlements)",
        run: rhsm_registration,
    },
    Spec {
        name: "yum-uuid",
        what: "removed yum's per-machine UUID",
        run: yum_uuid,
    },
];

/// Runs every operation in order. Any error stops the strip: a half-stripped tree must not be
/// staged, and the error names the path at fault.
pub fn strip(os: &OsInfo, new_hostname: &str) -> Result<Vec<Operation>, String> {
    if os.family != "linux" {
        return Err(format!(
            "this plugin strips Linux trees; it was given a {} tree",
            os.family
        ));
    }
    let mut done = Vec::with_capacity(OPERATIONS.len());
    for spec in OPERATIONS {
        let mut ctx = Ctx {
            hostname: new_hostname,
            changed: Vec::new(),
            notes: Vec::new(),
        };
        (spec.run)(&mut ctx).map_err(|e| format!("{}: {e}", spec.name))?;
        done.push(ctx.finish(spec));
    }
    Ok(done)
}

/// The state of one running operation.
struct Ctx<'a> {
    hostname: &'a str,
    changed: Vec<String>,
    notes: Vec<String>,
}

/// Which entries of a directory an operation removes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    /// Everything: files, links (as links) and directories with their contents.
    All,
    /// Files and links, not directories.
    NonDirs,
}

impl Ctx<'_> {
    /// Records a note once, however many paths run into the same thing.
    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn finish(self, spec: &Spec) -> Operation {
        let mut detail = if self.changed.is_empty() {
            "nothing to do".to_owned()
        } else {
            spec.what.to_owned()
        };
        for note in &self.notes {
            detail.push_str("; ");
            detail.push_str(note);
        }
        Operation {
            name: spec.name.into(),
            changed: self.changed,
            detail,
        }
    }

    /// Whether `dir` can be worked in; a symlink on the way is noted and not followed.
    fn usable_dir(&mut self, dir: &str) -> Result<bool, String> {
        match tree::dir_state(dir)? {
            Dir::Real => Ok(true),
            Dir::Missing => Ok(false),
            Dir::Link(at) => {
                self.note(format!("/{at} is a symlink and was not followed"));
                Ok(false)
            }
        }
    }

    /// Removes the entries of `dir` whose name `wanted` accepts; `dir` itself stays.
    fn clear(
        &mut self,
        dir: &str,
        take: Take,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        if !self.usable_dir(dir)? {
            return Ok(());
        }
        for (name, kind) in tree::entries(dir)? {
            if (take == Take::NonDirs && kind.is_dir()) || !wanted(&name) {
                continue;
            }
            let rel = tree::join(dir, &name);
            tree::remove(&rel, kind)?;
            self.changed.push(rel);
        }
        Ok(())
    }

    /// Removes one file. With `links`, a symlink there is removed as a link; without, it is left
    /// (a history file linked to /dev/null is a choice, not data). Directories are left.
    fn remove_file(&mut self, rel: &str, links: bool) -> Result<(), String> {
        if !self.usable_dir(tree::parent(rel))? {
            return Ok(());
        }
        match tree::kind(rel)? {
            Some((Kind::File, t)) => tree::remove(rel, t)?,
            Some((Kind::Link, t)) if links => tree::remove(rel, t)?,
            _ => return Ok(()),
        }
        self.changed.push(rel.to_owned());
        Ok(())
    }

    /// Applies `edit` to the regular file `rel`, rewriting it in place if it changes.
    fn edit_file(
        &mut self,
        rel: &str,
        edit: impl Fn(&[u8]) -> Result<Edit, String>,
    ) -> Result<(), String> {
        match tree::kind(rel)? {
            Some((Kind::File, _)) => {}
            Some((Kind::Link, _)) => {
                self.note(format!("/{rel} is a symlink and was not edited"));
                return Ok(());
            }
            _ => return Ok(()),
        }
        let Some(text) = tree::read_small(rel)? else {
            return Ok(());
        };
        let result = edit(&text).map_err(|e| format!("/{rel}: {e}"))?;
        for note in result.notes {
            self.note(format!("/{rel}: {note}"));
        }
        if let Some(content) = result.content {
            tree::rewrite(rel, &content)?;
            self.changed.push(rel.to_owned());
        }
        Ok(())
    }

    /// Applies `edit` to every file of `dir` whose name `wanted` accepts.
    fn edit_dir(
        &mut self,
        dir: &str,
        wanted: impl Fn(&str) -> bool,
        edit: impl Fn(&[u8]) -> Result<Edit, String>,
    ) -> Result<(), String> {
        if !self.usable_dir(dir)? {
            return Ok(());
        }
        for (name, kind) in tree::entries(dir)? {
            if !kind.is_dir() && wanted(&name) {
                self.edit_file(&tree::join(dir, &name), &edit)?;
            }
        }
        Ok(())
    }
}

fn any(_: &str) -> bool {
    true
}

fn machine_id(ctx: &mut Ctx) -> Result<(), String> {
    const ETC: &str = "etc/machine-id";
    if ctx.usable_dir("etc")? {
        match tree::lstat(ETC)? {
            // "uninitialized" is already systemd's first-boot marker, not an identity.
            Some(m) if m.is_file() && m.len() > 0 => {
                let first = tree::read_head(ETC, 32)?;
                if first.trim_ascii() != b"uninitialized" {
                    tree::truncate(ETC)?;
                    ctx.changed.push(ETC.into());
                }
            }
            Some(m) if m.file_type().is_symlink() => {
                ctx.note(format!("/{ETC} is a symlink and was not emptied"));
            }
            _ => {}
        }
    }
    // A link (usually to /etc/machine-id) holds no identity of its own; a file is a copy.
    ctx.remove_file("var/lib/dbus/machine-id", false)
}

fn ssh_host_keys(ctx: &mut Ctx) -> Result<(), String> {
    // ssh_host_key (SSH 1), ssh_host_<type>_key, their .pub halves and -cert.pub certificates.
    ctx.clear("etc/ssh", Take::NonDirs, |name| {
        name.starts_with("ssh_host_")
            && (name.ends_with("_key")
                || name.ends_with("_key.pub")
                || name.ends_with("_key-cert.pub"))
    })
}

fn udev_persistent_net(ctx: &mut Ctx) -> Result<(), String> {
    // Only the generated rules; 75-persistent-net-generator.rules is the admin's switch for the
    // generator and stays as it is.
    ctx.remove_file("etc/udev/rules.d/70-persistent-net.rules", true)
}

fn net_mac_pins(ctx: &mut Ctx) -> Result<(), String> {
    ctx.edit_dir(
        "etc/sysconfig/network-scripts",
        |n| n.starts_with("ifcfg-"),
        |t| Ok(edit::ifcfg(t)),
    )?;
    ctx.edit_dir("etc/netplan", |n| n.ends_with(".yaml"), edit::netplan)?;
    // NetworkManager reads every file there; editor backups hold no profile that loads.
    ctx.edit_dir(
        "etc/NetworkManager/system-connections",
        |n| !(n.ends_with('~') || n.starts_with('.')),
        |t| Ok(edit::nm_keyfile(t)),
    )?;
    ctx.edit_dir(
        "etc/systemd/network",
        |n| n.ends_with(".link") || n.ends_with(".network") || n.ends_with(".netdev"),
        |t| Ok(edit::networkd(t)),
    )
}

fn hostname(ctx: &mut Ctx) -> Result<(), String> {
    if !ctx.usable_dir("etc")? {
        return Ok(());
    }
    let old = old_hostnames()?;
    set_hostname(ctx)?;
    ctx.edit_file("etc/hosts", |t| Ok(edit::hosts(t, &old)))?;
    if ctx.usable_dir("etc/sysconfig")? {
        ctx.edit_file("etc/sysconfig/network", |t| {
            Ok(edit::drop_assignments(t, &["HOSTNAME"]))
        })?;
    }
    Ok(())
}

/// The model's names, lower-case: the full name in /etc/hostname and its first label. Never
/// `localhost`, whose lines stay.
fn old_hostnames() -> Result<Vec<String>, String> {
    let Some(bytes) = tree::read_small("etc/hostname")? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    let Some(full) = text.split_whitespace().next() else {
        return Ok(Vec::new());
    };
    let short = full.split('.').next().unwrap_or(full);
    let mut names = vec![full.to_owned()];
    if short != full && !short.is_empty() {
        names.push(short.to_owned());
    }
    names.retain(|n| !n.starts_with("localhost"));
    Ok(names)
}

fn set_hostname(ctx: &mut Ctx) -> Result<(), String> {
    const HOSTNAME: &str = "etc/hostname";
    let wanted = format!("{}\n", ctx.hostname);
    match tree::kind(HOSTNAME)? {
        None => tree::write_or_create(HOSTNAME, wanted.as_bytes())?,
        Some((Kind::File, _)) => {
            if tree::read_small(HOSTNAME)?.as_deref() == Some(wanted.as_bytes()) {
                return Ok(());
            }
            tree::rewrite(HOSTNAME, wanted.as_bytes())?;
        }
        Some(_) => {
            ctx.note(format!("/{HOSTNAME} is not a regular file and was not set"));
            return Ok(());
        }
    }
    ctx.changed.push(HOSTNAME.into());
    Ok(())
}

fn is_lease(name: &str) -> bool {
    name.ends_with(".lease") || name.ends_with(".leases")
}

fn dhcp_leases(ctx: &mut Ctx) -> Result<(), String> {
    // ISC dhclient (Debian, Ubuntu; RHEL 7 in dhclient/), NetworkManager's internal client,
    // busybox udhcpc, dhcpcd (whose directory also holds its DUID and secret).
    ctx.clear("var/lib/dhcp", Take::NonDirs, is_lease)?;
    ctx.clear("var/lib/dhclient", Take::All, any)?;
    ctx.clear("var/lib/NetworkManager", Take::NonDirs, is_lease)?;
    ctx.clear("var/lib/udhcpc", Take::All, any)?;
    ctx.clear("var/lib/dhcpcd", Take::All, any)?;
    ctx.remove_file("etc/dhcpcd.duid", true)?;
    ctx.remove_file("etc/dhcpcd.secret", true)
}

/// A rotated log: `syslog.1`, `messages.2.gz`, `dmesg.old`, `messages-20240101`.
fn is_rotated(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[".gz", ".xz", ".bz2", ".zst", ".lz4", ".old"];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return true;
    }
    let numbered = |sep: char, lens: &[usize]| {
        name.rsplit_once(sep).is_some_and(|(stem, tail)| {
            !stem.is_empty()
                && lens.contains(&tail.len())
                && tail.bytes().all(|b| b.is_ascii_digit())
        })
    };
    numbered('.', &[1, 2, 3]) || numbered('-', &[8, 10])
}

fn logs(ctx: &mut Ctx) -> Result<(), String> {
    // The journal's directories are named by machine-id: the whole journal is the model's.
    ctx.clear("var/log/journal", Take::All, any)?;
    if ctx.usable_dir("var/log")? {
        walk_logs(ctx, "var/log", 0)?;
    }
    Ok(())
}

/// Removes rotated logs and empties the others, keeping files and directories: some daemons
/// will not start without their log file, and the file's mode and owner are theirs. Symlinks are
/// left (Debian links a README there).
fn walk_logs(ctx: &mut Ctx, dir: &str, depth: usize) -> Result<(), String> {
    if depth >= tree::MAX_DEPTH {
        return Err(tree::fail(
            dir,
            "cannot clean it",
            format!("nested more than {} directories deep", tree::MAX_DEPTH),
        ));
    }
    for (name, kind) in tree::entries(dir)? {
        let rel = tree::join(dir, &name);
        if kind.is_dir() {
            if rel != "var/log/journal" {
                walk_logs(ctx, &rel, depth + 1)?;
            }
        } else if kind.is_file() {
            if is_rotated(&name) {
                tree::remove(&rel, kind)?;
                ctx.changed.push(rel);
            } else if tree::lstat(&rel)?.is_some_and(|m| m.len() > 0) {
                tree::truncate(&rel)?;
                ctx.changed.push(rel);
            }
        }
    }
    Ok(())
}

/// Histories kept in a home directory.
const HISTORIES: &[&str] = &[
    ".bash_history",
    ".ash_history",
    ".sh_history",
    ".zsh_history",
    ".python_history",
    ".lesshst",
    ".viminfo",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".node_repl_history",
    ".local/share/fish/fish_history",
];

fn shell_history(ctx: &mut Ctx) -> Result<(), String> {
    let mut homes = vec!["root".to_owned()];
    if ctx.usable_dir("home")? {
        for (name, kind) in tree::entries("home")? {
            if kind.is_dir() {
                homes.push(tree::join("home", &name));
            }
        }
    }
    for home in homes {
        for file in HISTORIES {
            ctx.remove_file(&tree::join(&home, file), false)?;
        }
    }
    Ok(())
}

fn tmp_files(ctx: &mut Ctx) -> Result<(), String> {
    ctx.clear("tmp", Take::All, any)?;
    ctx.clear("var/tmp", Take::All, any)
}

fn package_caches(ctx: &mut Ctx) -> Result<(), String> {
    // apt's lists (/var/lib/apt/lists) stay: they are not identity, and with them apt can
    // resolve packages at first boot before its first update. The cache's lock files stay.
    ctx.clear("var/cache/apt/archives", Take::NonDirs, |n| {
        n.ends_with(".deb")
    })?;
    ctx.clear("var/cache/apt/archives/partial", Take::All, any)?;
    ctx.clear("var/cache/apt", Take::NonDirs, |n| n.ends_with(".bin"))?;
    ctx.clear("var/cache/dnf", Take::All, any)?;
    ctx.clear("var/cache/yum", Take::All, any)?;
    ctx.clear("var/cache/apk", Take::All, any)
}

fn random_seed(ctx: &mut Ctx) -> Result<(), String> {
    ctx.remove_file("var/lib/systemd/random-seed", true)?;
    ctx.remove_file("var/lib/urandom/random-seed", true)?;
    ctx.remove_file("var/lib/random-seed", true)?;
    // Alpine's seedrng; its credited seed must never be shared.
    ctx.clear("var/lib/seedrng", Take::NonDirs, any)
}

fn cloud_init_state(ctx: &mut Ctx) -> Result<(), String> {
    // Its logs are emptied by `logs`.
    ctx.clear("var/lib/cloud", Take::All, any)
}

fn crash_data(ctx: &mut Ctx) -> Result<(), String> {
    ctx.clear("var/crash", Take::All, any)?;
    ctx.clear("var/lib/systemd/coredump", Take::All, any)?;
    ctx.clear("var/lib/systemd/pstore", Take::All, any)?;
    ctx.clear("var/spool/abrt", Take::All, any)
}

fn mail_spool(ctx: &mut Ctx) -> Result<(), String> {
    // One of the two is usually a symlink to the other; that one is noted and not followed.
    ctx.clear("var/spool/mail", Take::NonDirs, any)?;
    ctx.clear("var/mail", Take::NonDirs, any)
}

fn cron_spool(ctx: &mut Ctx) -> Result<(), String> {
    // Users' crontabs (/var/spool/cron/crontabs, /var/spool/cron/<user>) are configuration and
    // stay. Pending at jobs would run again in every VM; removed run stamps make anacron and
    // persistent timers run their jobs at first boot, on the VM's own schedule.
    ctx.clear("var/spool/cron/atjobs", Take::NonDirs, any)?;
    ctx.clear("var/spool/cron/atspool", Take::NonDirs, any)?;
    ctx.clear("var/spool/at", Take::NonDirs, any)?;
    ctx.clear("var/spool/at/spool", Take::NonDirs, any)?;
    ctx.clear("var/spool/anacron", Take::NonDirs, any)?;
    ctx.clear("var/lib/systemd/timers", Take::NonDirs, |n| {
        n.starts_with("stamp-")
    })
}

fn rpm_db_locks(ctx: &mut Ctx) -> Result<(), String> {
    // Berkeley DB environment files and rpm's locks. The sqlite database's -wal and -shm files
    // may hold committed transactions and stay.
    ctx.clear("var/lib/rpm", Take::NonDirs, |n| {
        n.starts_with("__db.") || n == ".rpm.lock" || n == ".dbenv.lock"
    })
}

fn passwd_backups(ctx: &mut Ctx) -> Result<(), String> {
    // Copies shadow-utils leaves behind, with the model's old password hashes.
    for file in [
        "passwd-", "group-", "shadow-", "gshadow-", "subuid-", "subgid-",
    ] {
        ctx.remove_file(&tree::join("etc", file), false)?;
    }
    Ok(())
}

fn network_manager_state(ctx: &mut Ctx) -> Result<(), String> {
    // secret_key seeds stable-privacy IPv6 addresses and generated MACs: shared, it would give
    // every VM the same addresses. NetworkManager makes a new one when it is missing.
    for file in ["secret_key", "timestamps", "seen-bssids"] {
        ctx.remove_file(&tree::join("var/lib/NetworkManager", file), true)?;
    }
    Ok(())
}

fn rhsm_registration(ctx: &mut Ctx) -> Result<(), String> {
    // A cloned registration makes every VM the same consumer to Red Hat; each must register.
    ctx.clear("etc/pki/consumer", Take::NonDirs, |n| n.ends_with(".pem"))?;
    ctx.clear("etc/pki/entitlement", Take::NonDirs, |n| {
        n.ends_with(".pem")
    })?;
    ctx.remove_file("etc/sysconfig/rhn/systemid", true)
}

fn yum_uuid(ctx: &mut Ctx) -> Result<(), String> {
    ctx.remove_file("var/lib/yum/uuid", true)
}
