//! The guest tree as this plugin touches it: paths relative to its root, symlinks never followed by
//! the file system, every read bounded.
//!
//! Paths are `&str` relative to the root ("etc/hosts"), because that is what the `changed` list
//! reports; [`abs`] turns one into the path WASI resolves against the preopened tree. Errors are
//! strings that start with the path at fault.

use std::fs::{self, File, FileType, Metadata, OpenOptions};
use std::io::{self, Read, Write};

/// The most this plugin reads of a file it parses. Configuration files are a few KiB; anything
/// larger is refused rather than loaded, so a hostile tree cannot make the plugin allocate.
pub const MAX_TEXT: u64 = 64 * 1024;

/// Symlinks followed while resolving one path by hand, as Linux's own limit.
pub const MAX_HOPS: u32 = 40;

/// How deep a directory is walked or removed. Deeper trees are refused, not recursed into.
pub const MAX_DEPTH: usize = 128;

/// Entries read from one directory. A directory with more is refused instead of listed.
pub const MAX_ENTRIES: usize = 200_000;

/// The path WASI resolves against the tree's root.
pub fn abs(rel: &str) -> String {
    format!("/{rel}")
}

/// `dir/name`, or `name` at the root.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// The error message for `rel`, naming it and what failed.
pub fn fail(rel: &str, doing: &str, e: impl std::fmt::Display) -> String {
    format!("/{rel}: {doing}: {e}")
}

/// Whether an error only says "there is nothing there".
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// The entry itself (a symlink is not followed), or `None` if there is none.
pub fn lstat(rel: &str) -> Result<Option<Metadata>, String> {
    match fs::symlink_metadata(abs(rel)) {
        Ok(m) => Ok(Some(m)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(fail(rel, "cannot look at it", e)),
    }
}

/// How a path's directories look, checked component by component without following anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dir {
    /// Every component, `rel` included, is a real directory.
    Real,
    /// Some component does not exist, or is a file: there is nothing under it to touch.
    Missing,
    /// This component is a symlink. Its target is handled under its own name, if at all, so that
    /// a link planted by the model (`/var/tmp -> ../etc`) cannot turn a clean-up into damage.
    Link(String),
}

/// Checks that `rel` and every directory above it are real directories.
pub fn dir_state(rel: &str) -> Result<Dir, String> {
    let mut prefix = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        prefix = join(&prefix, part);
        match lstat(&prefix)? {
            None => return Ok(Dir::Missing),
            Some(m) if m.file_type().is_symlink() => return Ok(Dir::Link(prefix)),
            Some(m) if !m.is_dir() => return Ok(Dir::Missing),
            Some(_) => {}
        }
    }
    Ok(Dir::Real)
}

/// The directory part of `rel` ("" for a name at the root).
pub fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The last component of `rel`.
pub fn name(rel: &str) -> &str {
    rel.rsplit_once('/').map_or(rel, |(_, name)| name)
}

/// The entries of a real directory, sorted by name so that reports are stable.
pub fn entries(dir: &str) -> Result<Vec<(String, FileType)>, String> {
    let listing = fs::read_dir(abs(dir)).map_err(|e| fail(dir, "cannot list it", e))?;
    let mut out = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| fail(dir, "cannot list it", e))?;
        let kind = entry
            .file_type()
            .map_err(|e| fail(dir, "cannot read an entry", e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(fail(dir, "cannot list it", "an entry's name is not UTF-8"));
        };
        out.push((name, kind));
        if out.len() > MAX_ENTRIES {
            return Err(fail(
                dir,
                "cannot list it",
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads a regular file of at most [`MAX_TEXT`] bytes; `None` if `rel` is absent or not a regular
/// file (a symlink, a directory, a device). The caller has checked `rel`'s directories.
pub fn read_small(rel: &str) -> Result<Option<Vec<u8>>, String> {
    let Some(meta) = lstat(rel)? else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_TEXT {
        return Err(too_big(rel, meta.len()));
    }
    let file = File::open(abs(rel)).map_err(|e| fail(rel, "cannot open it", e))?;
    let mut bytes = Vec::new();
    // `take` as well as the size check: the size is what the file said, not a promise.
    file.take(MAX_TEXT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(rel, "cannot read it", e))?;
    if bytes.len() as u64 > MAX_TEXT {
        return Err(too_big(rel, bytes.len() as u64));
    }
    Ok(Some(bytes))
}

fn too_big(rel: &str, len: u64) -> String {
    fail(
        rel,
        "refusing to read it",
        format!(
            "it holds {len} bytes, more than the {} KiB expected of such a file",
            MAX_TEXT / 1024
        ),
    )
}

/// The first `n` bytes of a regular file (fewer if it is shorter).
pub fn read_head(rel: &str, n: u64) -> Result<Vec<u8>, String> {
    let file = File::open(abs(rel)).map_err(|e| fail(rel, "cannot open it", e))?;
    let mut bytes = Vec::new();
    file.take(n)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(rel, "cannot read it", e))?;
    Ok(bytes)
}

/// Replaces the content of an existing regular file in place. Truncating and rewriting the same
/// file, rather than writing a new one and renaming it, keeps its mode, owner, ACLs and SELinux
/// label, none of which the plugin could restore through WASI.
pub fn rewrite(rel: &str, content: &[u8]) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(abs(rel))
        .map_err(|e| fail(rel, "cannot open it for writing", e))?;
    file.write_all(content)
        .map_err(|e| fail(rel, "cannot write it", e))
}

/// Writes a file, creating it if it does not exist (an existing one is rewritten in place).
pub fn write_or_create(rel: &str, content: &[u8]) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(abs(rel))
        .map_err(|e| fail(rel, "cannot open it for writing", e))?;
    file.write_all(content)
        .map_err(|e| fail(rel, "cannot write it", e))
}

/// Empties a regular file, keeping it.
pub fn truncate(rel: &str) -> Result<(), String> {
    rewrite(rel, b"")
}

/// Removes one entry: a file or a symlink (the link itself, never its target), or a directory
/// with everything under it.
pub fn remove(rel: &str, kind: FileType) -> Result<(), String> {
    remove_at_depth(rel, kind, 0)
}

fn remove_at_depth(rel: &str, kind: FileType, depth: usize) -> Result<(), String> {
    if !kind.is_dir() {
        return fs::remove_file(abs(rel)).map_err(|e| fail(rel, "cannot remove it", e));
    }
    if depth >= MAX_DEPTH {
        return Err(fail(
            rel,
            "cannot remove it",
            format!("nested more than {MAX_DEPTH} directories deep"),
        ));
    }
    for (name, kind) in entries(rel)? {
        remove_at_depth(&join(rel, &name), kind, depth + 1)?;
    }
    fs::remove_dir(abs(rel)).map_err(|e| fail(rel, "cannot remove it", e))
}

/// What lies at a path when nothing is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Link,
    Dir,
    /// A device, FIFO or socket.
    Other,
}

/// The kind of the entry at `rel`, if there is one.
pub fn kind(rel: &str) -> Result<Option<(Kind, FileType)>, String> {
    Ok(lstat(rel)?.map(|m| {
        let t = m.file_type();
        let k = if t.is_symlink() {
            Kind::Link
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        (k, t)
    }))
}

/// Where a path leads when followed by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// To this path, every component of which is real (no symlink).
    Path(String),
    /// Nowhere: a component is missing, or a file stands where a directory should.
    Missing,
    /// Through a symlink with an absolute target, which the sandbox does not reveal: WASI's
    /// `readlink` refuses absolute targets so as not to leak host paths. `link` is the link's own
    /// (resolved) path and `len` the length of its target, which `lstat` still tells.
    Hidden { link: String, len: u64 },
}

/// Reads a relative symlink's target; `None` if the target is absolute and so hidden.
fn read_link(rel: &str) -> Result<Option<String>, String> {
    match fs::read_link(abs(rel)) {
        Ok(target) => Ok(Some(target.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(None),
        Err(e) => Err(fail(rel, "cannot read the link", e)),
    }
}

/// Resolves `rel` the way the guest's kernel would, but by hand and inside the tree: a relative
/// target is read from the link's directory, and `..` stops at the root. Following by hand
/// rather than by opening the path bounds the hops, so that a loop is an error, not a hang.
/// (Should a runtime reveal absolute targets, they are read against the tree's root.)
pub fn resolve(rel: &str) -> Result<Resolved, String> {
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    let mut pending: Vec<String> = rel.split('/').rev().map(str::to_owned).collect();
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => done.push(part),
        }
        let here = done.join("/");
        let Some(meta) = lstat(&here)? else {
            return Ok(Resolved::Missing);
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_HOPS {
                return Err(fail(
                    rel,
                    "cannot resolve it",
                    format!("more than {MAX_HOPS} symbolic links (a loop?)"),
                ));
            }
            let Some(target) = read_link(&here)? else {
                return Ok(Resolved::Hidden {
                    link: here,
                    len: meta.len(),
                });
            };
            done.pop();
            if target.starts_with('/') {
                done.clear();
            }
            pending.extend(target.split('/').rev().map(str::to_owned));
        } else if !meta.is_dir() && pending.iter().any(|p| !p.is_empty() && p != ".") {
            // A file in the middle of the path: nothing lies beneath it.
            return Ok(Resolved::Missing);
        }
    }
    Ok(Resolved::Path(done.join("/")))
}
