//! Writing into an untrusted guest tree without ever leaving it.
//!
//! Every path is walked one component at a time from a directory file descriptor with
//! `O_NOFOLLOW | O_DIRECTORY`, so a symlink (or a file) where a directory should be is refused, not
//! followed; files and links are created under a temporary name with `O_EXCL | O_NOFOLLOW` and
//! renamed over the target, and `rename` replaces a symlink rather than writing through it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

use super::{Action, Change, WireError};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What is at a path, not following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Missing,
    File,
    Dir,
    Symlink,
    Other,
}

/// The owner given to what is written. Staging runs as root and gives root's; without root,
/// ownership is left to whoever writes the image from the tree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner {
    pub uid: u32,
    pub gid: u32,
}

pub(crate) const ROOT: Owner = Owner { uid: 0, gid: 0 };

pub(crate) struct Tree {
    root: OwnedFd,
    chown: bool,
}

fn io(op: &'static str, path: &str, e: Errno) -> WireError {
    WireError::Io {
        op,
        path: path.to_owned(),
        source: e.into(),
    }
}

fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn kind_of(stat: &Stat) -> Kind {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

impl Tree {
    pub fn open(path: &Path) -> Result<Tree, WireError> {
        // The tree's own location comes from the caller and is trusted; what is inside it is not.
        let root = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| WireError::OpenTree {
            path: path.to_owned(),
            source: e.into(),
        })?;
        Ok(Tree {
            root,
            chown: rustix::process::geteuid().is_root(),
        })
    }

    /// Opens directory `rel` (relative, `/`-separated), refusing any component that is a symlink
    /// or not a directory. Missing components are created 0755 root:root when `create` is set
    /// (and reported in `created`); otherwise a missing one gives `Ok(None)`.
    fn dir(
        &self,
        rel: &str,
        create: bool,
        created: &mut Vec<Change>,
    ) -> Result<Option<OwnedFd>, WireError> {
        let mut fd = rfs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| io("open", ".", e))?;
        let mut walked = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            walked = join(&walked, comp);
            let next = match rfs::openat(&fd, comp, DIR_FLAGS, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(&fd, comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io("create directory", &walked, e)),
                    }
                    let next = rfs::openat(&fd, comp, DIR_FLAGS, Mode::empty())
                        .map_err(|e| self.refusal(&fd, comp, &walked, e))?;
                    // mkdirat's mode passes through the umask; the guest gets exactly 0755.
                    rfs::fchmod(&next, Mode::from_raw_mode(0o755))
                        .map_err(|e| io("chmod", &walked, e))?;
                    self.own(&next, ROOT, &walked)?;
                    created.push(Change {
                        path: walked.clone(),
                        action: Action::Created,
                        detail: "directory (0755 root:root)".into(),
                    });
                    next
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.refusal(&fd, comp, &walked, e)),
            };
            fd = next;
        }
        Ok(Some(fd))
    }

    /// Turns a failed directory open into the reason: a symlink, a non-directory, or an I/O error.
    fn refusal(&self, dir: &OwnedFd, name: &str, walked: &str, e: Errno) -> WireError {
        match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|s| kind_of(&s)) {
            Ok(Kind::Symlink) => WireError::Symlink {
                path: walked.to_owned(),
            },
            Ok(Kind::Dir) | Err(_) => io("open directory", walked, e),
            Ok(_) => WireError::NotADirectory {
                path: walked.to_owned(),
            },
        }
    }

    fn own(&self, fd: &OwnedFd, owner: Owner, path: &str) -> Result<(), WireError> {
        if self.chown {
            rfs::fchown(
                fd,
                Some(Uid::from_raw(owner.uid)),
                Some(Gid::from_raw(owner.gid)),
            )
            .map_err(|e| io("chown", path, e))?;
        }
        Ok(())
    }

    fn stat_in(dir: &OwnedFd, name: &str, path: &str) -> Result<Option<Stat>, WireError> {
        match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io("stat", path, e)),
        }
    }

    /// What is at `rel`. A missing parent makes it `Missing`; a symlinked or non-directory parent
    /// is an error.
    pub fn kind(&self, rel: &str) -> Result<Kind, WireError> {
        let (parent, name) = split(rel);
        let Some(dir) = self.dir(parent, false, &mut Vec::new())? else {
            return Ok(Kind::Missing);
        };
        Ok(Self::stat_in(&dir, name, rel)?.map_or(Kind::Missing, |s| kind_of(&s)))
    }

    /// Makes sure `rel` is a directory, creating it (and its parents) 0755 root:root if missing.
    pub fn ensure_dir(&self, rel: &str) -> Result<Vec<Change>, WireError> {
        let mut changes = Vec::new();
        self.dir(rel, true, &mut changes)?;
        if changes.last().is_none_or(|c| c.path != rel) {
            changes.push(Change {
                path: rel.to_owned(),
                action: Action::Unchanged,
                detail: "directory".into(),
            });
        }
        Ok(changes)
    }

    /// Reads a regular file of at most `limit` bytes; `None` when it does not exist.
    pub fn read_file(&self, rel: &str, limit: usize) -> Result<Option<(Vec<u8>, Stat)>, WireError> {
        let (parent, name) = split(rel);
        let Some(dir) = self.dir(parent, false, &mut Vec::new())? else {
            return Ok(None);
        };
        let Some(stat) = Self::stat_in(&dir, name, rel)? else {
            return Ok(None);
        };
        match kind_of(&stat) {
            Kind::File => {}
            Kind::Symlink => {
                return Err(WireError::Symlink {
                    path: rel.to_owned(),
                });
            }
            _ => {
                return Err(WireError::NotAFile {
                    path: rel.to_owned(),
                });
            }
        }
        let fd = rfs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open", rel, e))?;
        let mut bytes = Vec::new();
        File::from(fd)
            .take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| WireError::Io {
                op: "read",
                path: rel.to_owned(),
                source,
            })?;
        if bytes.len() > limit {
            return Err(WireError::TooLarge {
                path: rel.to_owned(),
                limit,
            });
        }
        Ok(Some((bytes, stat)))
    }

    /// Writes `contents` to `rel` with exactly `mode` and `owner`, replacing what is there unless
    /// it already is identical (so that wiring twice leaves the tree, timestamps included, as it
    /// was).
    pub fn write_file(
        &self,
        rel: &str,
        contents: &[u8],
        mode: u32,
        owner: Owner,
    ) -> Result<Vec<Change>, WireError> {
        let (parent, name) = split(rel);
        let mut changes = Vec::new();
        let dir = self
            .dir(parent, true, &mut changes)?
            .ok_or_else(|| io("open directory", parent, Errno::NOENT))?;
        let detail = format!("{} bytes, {mode:04o}", contents.len());
        let action = match Self::stat_in(&dir, name, rel)? {
            None => Action::Created,
            Some(s) => match kind_of(&s) {
                Kind::Dir => {
                    return Err(WireError::IsADirectory {
                        path: rel.to_owned(),
                    });
                }
                Kind::File if self.same_file(&dir, name, rel, &s, contents, mode, owner)? => {
                    changes.push(Change {
                        path: rel.to_owned(),
                        action: Action::Unchanged,
                        detail,
                    });
                    return Ok(changes);
                }
                _ => Action::Updated,
            },
        };
        let tmp = Self::temp_name(&dir, name, rel)?;
        let fd = rfs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| io("create", rel, e))?;
        let written = (|| {
            rfs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| io("chmod", rel, e))?;
            self.own(&fd, owner, rel)?;
            let mut file = File::from(fd);
            file.write_all(contents).map_err(|source| WireError::Io {
                op: "write",
                path: rel.to_owned(),
                source,
            })?;
            rfs::renameat(&dir, tmp.as_str(), &dir, name)
                .map_err(|e| io("rename into place", rel, e))
        })();
        if written.is_err() {
            let _ = rfs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        }
        written?;
        changes.push(Change {
            path: rel.to_owned(),
            action,
            detail,
        });
        Ok(changes)
    }

    #[allow(clippy::too_many_arguments)]
    fn same_file(
        &self,
        dir: &OwnedFd,
        name: &str,
        rel: &str,
        stat: &Stat,
        contents: &[u8],
        mode: u32,
        owner: Owner,
    ) -> Result<bool, WireError> {
        if stat.st_mode & 0o7777 != mode
            || stat.st_size as u64 != contents.len() as u64
            || (self.chown && (stat.st_uid != owner.uid || stat.st_gid != owner.gid))
        {
            return Ok(false);
        }
        let fd = rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open", rel, e))?;
        let mut bytes = Vec::with_capacity(contents.len());
        File::from(fd)
            .take(contents.len() as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| WireError::Io {
                op: "read",
                path: rel.to_owned(),
                source,
            })?;
        Ok(bytes == contents)
    }

    /// A free temporary name beside the target. A leftover from an interrupted run is removed,
    /// but only if it is not a directory (unlinkat without AT_REMOVEDIR refuses one).
    fn temp_name(dir: &OwnedFd, name: &str, rel: &str) -> Result<String, WireError> {
        let tmp = format!(".{name}.slipway-new");
        match rfs::unlinkat(dir, tmp.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(tmp),
            Err(e) => Err(io("remove the leftover temporary file for", rel, e)),
        }
    }

    /// Makes `rel` a symlink to `target` (owned by root), replacing a file or a different link.
    pub fn symlink(&self, rel: &str, target: &str) -> Result<Vec<Change>, WireError> {
        let (parent, name) = split(rel);
        let mut changes = Vec::new();
        let dir = self
            .dir(parent, true, &mut changes)?
            .ok_or_else(|| io("open directory", parent, Errno::NOENT))?;
        let detail = format!("symlink to {target}");
        let action = match Self::stat_in(&dir, name, rel)? {
            None => Action::Created,
            Some(s) => match kind_of(&s) {
                Kind::Dir => {
                    return Err(WireError::IsADirectory {
                        path: rel.to_owned(),
                    });
                }
                Kind::Symlink => {
                    let current = rfs::readlinkat(&dir, name, Vec::new())
                        .map_err(|e| io("read link", rel, e))?;
                    if current.as_bytes() == target.as_bytes() {
                        changes.push(Change {
                            path: rel.to_owned(),
                            action: Action::Unchanged,
                            detail,
                        });
                        return Ok(changes);
                    }
                    Action::Updated
                }
                _ => Action::Updated,
            },
        };
        let tmp = Self::temp_name(&dir, name, rel)?;
        rfs::symlinkat(target, &dir, tmp.as_str()).map_err(|e| io("create symlink", rel, e))?;
        let placed = (|| {
            if self.chown {
                rfs::chownat(
                    &dir,
                    tmp.as_str(),
                    Some(Uid::from_raw(0)),
                    Some(Gid::from_raw(0)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io("chown", rel, e))?;
            }
            rfs::renameat(&dir, tmp.as_str(), &dir, name)
                .map_err(|e| io("rename into place", rel, e))
        })();
        if placed.is_err() {
            let _ = rfs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        }
        placed?;
        changes.push(Change {
            path: rel.to_owned(),
            action,
            detail,
        });
        Ok(changes)
    }
}
