//! Recognising a Linux tree: distribution and version from os-release (or the older release
//! files), architecture from a binary's ELF header, init system from what `/sbin/init` is.

use std::collections::HashMap;

use slipway_plugin_sdk::identity::{Arch, InitSystem, OsInfo};

use crate::tree::{self, Kind, Resolved};

/// Distributions, by os-release `ID` or `ID_LIKE`, whose trees this plugin strips.
const FAMILIES: &[&str] = &["debian", "ubuntu", "fedora", "rhel", "centos", "alpine"];

/// Binaries looked at, in order, for the tree's architecture: the first that is an ELF file
/// decides. Every Linux tree has a shell, but `/bin/sh` is often an absolute link the sandbox
/// cannot follow, so the shells it links to are looked at directly too.
const ARCH_WITNESSES: &[&str] = &[
    "bin/sh",
    "usr/bin/sh",
    "usr/bin/dash",
    "bin/dash",
    "usr/bin/bash",
    "bin/bash",
    "usr/bin/env",
    "bin/busybox",
    "sbin/init",
    "usr/lib/systemd/systemd",
    "lib/systemd/systemd",
    "bin/ls",
    "usr/bin/ls",
];

/// The longest `ID` or version accepted; os-release values are short tokens.
const MAX_TOKEN: usize = 64;

/// The OS in the tree, or `None` if it is not a Linux of a family this plugin handles.
pub fn inspect() -> Result<Option<OsInfo>, String> {
    let Some((distro, version)) = distribution()? else {
        return Ok(None);
    };
    Ok(Some(OsInfo {
        family: "linux".into(),
        distro,
        version,
        arch: arch()?,
        init_system: init_system()?,
    }))
}

/// Where `rel` leads, if to a path in the tree; a hidden (absolute) link counts as nowhere.
fn resolved(rel: &str) -> Result<Option<String>, String> {
    match tree::resolve(rel)? {
        Resolved::Path(path) => Ok(Some(path)),
        Resolved::Missing | Resolved::Hidden { .. } => Ok(None),
    }
}

/// Reads a small regular file at `rel`, following its symlinks inside the tree.
fn read_resolved(rel: &str) -> Result<Option<Vec<u8>>, String> {
    match resolved(rel)? {
        Some(path) => tree::read_small(&path),
        None => Ok(None),
    }
}

/// The first line of a small text file, trimmed.
fn first_line(rel: &str) -> Result<Option<String>, String> {
    Ok(read_resolved(rel)?.map(|bytes| {
        let text = String::from_utf8_lossy(&bytes);
        text.lines().next().unwrap_or("").trim().to_owned()
    }))
}

/// (distro, version) of a recognised tree.
fn distribution() -> Result<Option<(String, String)>, String> {
    // os-release(5): /etc/os-release takes precedence over /usr/lib/os-release. An absolute
    // link from the first (to the second, always) cannot be followed, and so falls back to it.
    for rel in ["etc/os-release", "usr/lib/os-release"] {
        if let Some(path) = resolved(rel)?
            && let Some(bytes) = tree::read_small(&path)?
        {
            // Errors name the file read, which may be the link's target.
            return from_os_release(&path, &parse_os_release(&bytes));
        }
    }
    from_release_files()
}

/// `KEY=value` pairs of an os-release file, values unquoted as a shell would.
pub fn parse_os_release(bytes: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if key_ok {
            out.insert(key.to_owned(), unquote(value.trim()));
        }
    }
    out
}

/// Removes one level of shell quoting: `"..."` with backslash escapes, `'...'` literally.
fn unquote(value: &str) -> String {
    let mut chars = value.chars();
    match chars.next() {
        Some('\'') => chars.take_while(|&c| c != '\'').collect(),
        Some('"') => {
            let mut out = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
        _ => value.to_owned(),
    }
}

/// Checks an identifier read from the tree before it becomes part of the answer, so that a
/// hostile file cannot smuggle a megabyte or control characters into the server's records.
fn token(rel: &str, field: &str, value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TOKEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(value.to_owned())
    } else {
        Err(tree::fail(
            rel,
            "not a usable release file",
            format!(
                "{field} {:?} is not 1 to {MAX_TOKEN} printable characters without spaces",
                value.chars().take(MAX_TOKEN).collect::<String>()
            ),
        ))
    }
}

fn from_os_release(
    rel: &str,
    fields: &HashMap<String, String>,
) -> Result<Option<(String, String)>, String> {
    // os-release(5): a missing ID means "linux".
    let id = fields.get("ID").map_or("linux", String::as_str);
    let like = fields.get("ID_LIKE").map_or("", String::as_str);
    let known = FAMILIES.contains(&id) || like.split_whitespace().any(|l| FAMILIES.contains(&l));
    if !known {
        slipway_plugin_sdk::info!("/{rel}: ID={id:?} ID_LIKE={like:?} is not a family I handle");
        return Ok(None);
    }
    let distro = token(rel, "ID", id)?;
    let version = match fields.get("VERSION_ID").filter(|v| !v.is_empty()) {
        Some(v) => token(rel, "VERSION_ID", v)?,
        // Debian testing and sid carry no VERSION_ID; debian_version says "trixie/sid".
        None => fallback_version()?.unwrap_or_default(),
    };
    Ok(Some((distro, version)))
}

/// The version from the family's own release file, for an os-release without VERSION_ID.
fn fallback_version() -> Result<Option<String>, String> {
    for rel in ["etc/debian_version", "etc/alpine-release"] {
        if let Some(line) = first_line(rel)? {
            return token(rel, "version", &line).map(Some);
        }
    }
    if let Some(line) = first_line("etc/redhat-release")? {
        return Ok(redhat_release(&line).map(|(_, version)| version));
    }
    Ok(None)
}

/// Trees too old or too small for os-release: their family's own release file.
fn from_release_files() -> Result<Option<(String, String)>, String> {
    if let Some(line) = first_line("etc/alpine-release")? {
        let version = token("etc/alpine-release", "version", &line)?;
        return Ok(Some(("alpine".into(), version)));
    }
    if let Some(line) = first_line("etc/redhat-release")? {
        return match redhat_release(&line) {
            Some(found) => Ok(Some(found)),
            None => Err(tree::fail(
                "etc/redhat-release",
                "not a usable release file",
                format!("no \"release <version>\" in {:?}", clip(&line)),
            )),
        };
    }
    if let Some(line) = first_line("etc/debian_version")? {
        let version = token("etc/debian_version", "version", &line)?;
        return Ok(Some(("debian".into(), version)));
    }
    Ok(None)
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_TOKEN).collect()
}

/// "Rocky Linux release 9.4 (Blue Onyx)" → ("rocky", "9.4").
fn redhat_release(line: &str) -> Option<(String, String)> {
    let lower = line.to_ascii_lowercase();
    let distro = [
        ("red hat", "rhel"),
        ("centos", "centos"),
        ("fedora", "fedora"),
        ("rocky", "rocky"),
        ("almalinux", "almalinux"),
    ]
    .iter()
    .find(|(prefix, _)| lower.starts_with(prefix))
    .map_or("rhel", |(_, id)| id);
    let mut words = lower.split_whitespace();
    words.find(|w| *w == "release")?;
    let version = words.next()?;
    let version = token("etc/redhat-release", "version", version).ok()?;
    Some((distro.to_owned(), version))
}

/// The architecture of the first ELF binary among [`ARCH_WITNESSES`].
fn arch() -> Result<Arch, String> {
    for rel in ARCH_WITNESSES {
        let Some(path) = resolved(rel)? else {
            continue;
        };
        if !matches!(tree::kind(&path)?, Some((Kind::File, _))) {
            continue;
        }
        let head = tree::read_head(&path, 64)?;
        match elf_arch(&head) {
            Elf::Not => continue,
            Elf::Arch(arch) => return Ok(arch),
            Elf::Unsupported(machine) => {
                return Err(tree::fail(
                    &path,
                    "cannot tell the architecture",
                    format!(
                        "an ELF binary for machine {machine:#x}, which Slipway does not run \
                         (it runs x86-64, aarch64, riscv64, ppc64le and s390x)"
                    ),
                ));
            }
        }
    }
    Err(format!(
        "cannot tell the architecture: none of /{} is an ELF binary",
        ARCH_WITNESSES.join(", /")
    ))
}

enum Elf {
    Not,
    Arch(Arch),
    /// A 32-bit class or an `e_machine` without an [`Arch`].
    Unsupported(u16),
}

/// Reads `e_ident` and `e_machine` from an ELF header.
fn elf_arch(head: &[u8]) -> Elf {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Elf::Not;
    }
    let (class, data) = (head[4], head[5]);
    let bytes = [head[18], head[19]];
    let machine = match data {
        1 => u16::from_le_bytes(bytes),
        2 => u16::from_be_bytes(bytes),
        _ => return Elf::Not,
    };
    let little = data == 1;
    let arch = match (class, machine) {
        (2, 0x3e) => Arch::X8664,
        (2, 0xb7) => Arch::Aarch64,
        (2, 0xf3) => Arch::Riscv64,
        (2, 0x15) if little => Arch::Ppc64le,
        (2, 0x16) => Arch::S390x,
        _ => return Elf::Unsupported(machine),
    };
    Elf::Arch(arch)
}

/// Absolute targets an init link may have, matched against a hidden link by length.
const INIT_TARGETS: &[&str] = &[
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
    "/bin/busybox",
    "/usr/bin/busybox",
    "/sbin/openrc-init",
    "/usr/sbin/openrc-init",
];

/// What `/sbin/init` (or `/usr/sbin/init`) is.
enum Init {
    /// There is none.
    Absent,
    /// It leads to this path in the tree.
    At(String),
    /// It is there, but leads to nothing this plugin can tell.
    Untold,
}

fn find_init() -> Result<Init, String> {
    for rel in ["sbin/init", "usr/sbin/init"] {
        match tree::resolve(rel)? {
            Resolved::Path(path) => return Ok(Init::At(path)),
            Resolved::Missing => continue,
            Resolved::Hidden { link, len } => return guess_hidden(&link, len),
        }
    }
    Ok(Init::Absent)
}

/// The sandbox hides absolute link targets (Debian, Ubuntu and Alpine all link init absolutely),
/// but not their length: a well-known init of exactly that length that exists in the tree is
/// taken to be the target.
fn guess_hidden(link: &str, len: u64) -> Result<Init, String> {
    for target in INIT_TARGETS {
        if target.len() as u64 != len {
            continue;
        }
        if let Some(path) = resolved(target)?
            && matches!(tree::kind(&path)?, Some((Kind::File, _)))
        {
            slipway_plugin_sdk::debug!("/{link}: taken to lead to {target}");
            return Ok(Init::At(path));
        }
    }
    slipway_plugin_sdk::info!("/{link}: an absolute link to no init this plugin knows");
    Ok(Init::Untold)
}

/// What starts the guest's services, judged by what `/sbin/init` is.
fn init_system() -> Result<InitSystem, String> {
    let init = find_init()?;
    let init_name = match &init {
        Init::At(path) => Some(tree::name(path)),
        Init::Absent | Init::Untold => None,
    };
    if init_name == Some("systemd") {
        return Ok(InitSystem::Systemd);
    }
    let systemd_installed = is_file("lib/systemd/systemd")? || is_file("usr/lib/systemd/systemd")?;
    if matches!(init, Init::Absent) && systemd_installed {
        return Ok(InitSystem::Systemd);
    }
    // Before busybox: Alpine's init is busybox, but it hands the services to OpenRC.
    let openrc = is_file("sbin/openrc")?
        || is_file("usr/sbin/openrc")?
        || (is_dir("etc/init.d")? && is_dir("etc/runlevels")?);
    if openrc {
        return Ok(InitSystem::Openrc);
    }
    if init_name == Some("busybox") {
        return Ok(InitSystem::Busybox);
    }
    let init_is_file = match &init {
        Init::At(path) => matches!(tree::kind(path)?, Some((Kind::File, _))),
        Init::Absent | Init::Untold => false,
    };
    if init_is_file && is_file("etc/inittab")? {
        return Ok(InitSystem::Sysvinit);
    }
    Ok(InitSystem::Unknown)
}

fn resolved_kind(rel: &str) -> Result<Option<Kind>, String> {
    match resolved(rel)? {
        Some(path) => Ok(tree::kind(&path)?.map(|(k, _)| k)),
        None => Ok(None),
    }
}

fn is_file(rel: &str) -> Result<bool, String> {
    Ok(resolved_kind(rel)? == Some(Kind::File))
}

fn is_dir(rel: &str) -> Result<bool, String> {
    Ok(resolved_kind(rel)? == Some(Kind::Dir))
}
