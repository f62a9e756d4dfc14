//! Trees on the host: the directory a file system is copied out to, where plugins work, and
//! from which a new file system is built.
//!
//! [`Sink`] creates a tree from a file system reader. It only ever creates one name at a time
//! inside a directory it holds open (the `*at` system calls), with `O_NOFOLLOW` and `O_EXCL`, so
//! an entry in a hostile image — a symlink to the host's `/etc` followed by a file of the same
//! name, a name with `/` or `..` — cannot make it write outside the tree.
//!
//! [`Listing`] describes a tree in every attribute a copy must keep, so that two trees can be
//! compared: the round-trip proof, and the check that a conversion is logically equivalent.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{
    self as rfs, AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoContext, Result};

/// A point in time, as file systems keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    fn spec(self) -> Timespec {
        Timespec {
            tv_sec: self.sec,
            tv_nsec: i64::from(self.nsec.min(999_999_999)),
        }
    }
}

/// The attributes of one entry, other than its content.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Time,
    pub mtime: Time,
    /// Extended attributes as the Linux VFS names them (`security.capability`), values in VFS
    /// format (POSIX ACLs already converted from their on-disk form).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A special file.
#[derive(Debug, Clone, Copy)]
pub enum Node {
    Fifo,
    Socket,
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
}

/// A directory of the tree being created.
#[derive(Clone)]
pub struct Dir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

impl Dir {
    /// `/proc/self/fd/N/name`: the entry `name` of this directory, for the calls that have no
    /// fd-relative form (`lsetxattr`, `lremovexattr`); their final component is not followed.
    fn entry_path(&self, name: &[u8]) -> PathBuf {
        PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&*self.fd)
        ))
        .join(OsStr::from_bytes(name))
    }

    /// The directory's path relative to the tree's root, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A directory created but not yet entered: its parent stays open, not itself.
pub struct Pending {
    parent: Dir,
    name: Vec<u8>,
}

/// What a copy created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
    pub hardlinks: u64,
    /// File data written (holes not counted).
    pub bytes: u64,
}

/// Creates a tree under an empty directory.
pub struct Sink {
    root: Dir,
    /// Directories whose times are set last, deepest first: adding entries changes them.
    dir_times: Vec<(PathBuf, Time, Time)>,
    /// First path created for each multiply-linked inode, keyed by the reader's inode number.
    links: HashMap<u64, PathBuf>,
    counts: Counts,
    /// The most data the copy may write: a file system cannot hold more than its own size, so a
    /// hostile one that maps the same blocks into many files is stopped here.
    budget: u64,
}

/// Whether `name` can be created as one entry of a directory.
pub fn check_name(parent: &Path, name: &[u8]) -> Result<()> {
    let bad = |detail: &str| ImageError::UnsafeEntry {
        path: parent.join(OsStr::from_bytes(name)).display().to_string(),
        detail: detail.to_string(),
    };
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    if name == b"." || name == b".." {
        return Err(bad("a `.` or `..` entry where a name belongs"));
    }
    if name.contains(&b'/') {
        return Err(bad("name contains `/`"));
    }
    if name.contains(&0) {
        return Err(bad("name contains a NUL byte"));
    }
    if name.len() > 255 {
        return Err(bad("name longer than 255 bytes"));
    }
    Ok(())
}

fn errno_ctx(e: rustix::io::Errno, what: String) -> ImageError {
    ImageError::Io {
        what,
        source: e.into(),
    }
}

impl Sink {
    /// Starts a tree in `root`, which must exist and be empty. `budget` bounds the data written.
    pub fn new(root: &Path, budget: u64) -> Result<Self> {
        if !rustix::process::geteuid().is_root() {
            return Err(ImageError::NeedsRoot(format!(
                "creating {} as uid {}",
                root.display(),
                rustix::process::geteuid().as_raw()
            )));
        }
        let fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("opening {}", root.display()))?;
        if std::fs::read_dir(root)
            .ctx(|| format!("listing {}", root.display()))?
            .next()
            .is_some()
        {
            return Err(ImageError::Invalid(format!(
                "{} is not empty",
                root.display()
            )));
        }
        Ok(Self {
            root: Dir {
                fd: Arc::new(fd),
                path: PathBuf::new(),
            },
            dir_times: Vec::new(),
            links: HashMap::new(),
            counts: Counts::default(),
            budget,
        })
    }

    pub fn root(&self) -> Dir {
        self.root.clone()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Gives the root directory its attributes.
    pub fn set_root(&mut self, meta: &Meta) -> Result<()> {
        let root = self.root.clone();
        self.apply_fd(&root.fd, Path::new("/"), meta)?;
        self.dir_times
            .push((PathBuf::new(), meta.atime, meta.mtime));
        Ok(())
    }

    /// Creates a directory with its attributes. It is entered later, with [`Sink::enter`]: a
    /// walk holds many created directories at once (a thousand under `/usr/share/doc`), and an
    /// open descriptor for each would run into the process's limit.
    pub fn mkdir(&mut self, parent: &Dir, name: &[u8], meta: &Meta) -> Result<Pending> {
        check_name(&parent.path, name)?;
        let path = parent.path.join(OsStr::from_bytes(name));
        rfs::mkdirat(&*parent.fd, name, Mode::from_raw_mode(0o700))
            .map_err(|e| self.exists_or(e, &path))?;
        let fd = rfs::openat(
            &*parent.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno_ctx(e, format!("opening {}", path.display())))?;
        self.apply_fd(&fd, &path, meta)?;
        self.dir_times.push((path.clone(), meta.atime, meta.mtime));
        self.counts.dirs += 1;
        Ok(Pending {
            parent: parent.clone(),
            name: name.to_vec(),
        })
    }

    /// Opens a directory [`Sink::mkdir`] created, to create its entries.
    pub fn enter(&self, pending: Pending) -> Result<Dir> {
        let path = pending.parent.path.join(OsStr::from_bytes(&pending.name));
        let fd = rfs::openat(
            &*pending.parent.fd,
            pending.name.as_slice(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno_ctx(e, format!("opening {}", path.display())))?;
        Ok(Dir {
            fd: Arc::new(fd),
            path,
        })
    }

    fn exists_or(&self, e: rustix::io::Errno, path: &Path) -> ImageError {
        if e == rustix::io::Errno::EXIST {
            ImageError::UnsafeEntry {
                path: path.display().to_string(),
                detail: "the directory holds this name twice".into(),
            }
        } else {
            errno_ctx(e, format!("creating {}", path.display()))
        }
    }

    /// Creates a regular file; `fill` writes its data through the [`FileData`] (holes are left
    /// unwritten, so sparse files stay sparse), then the attributes are applied.
    pub fn file(
        &mut self,
        parent: &Dir,
        name: &[u8],
        size: u64,
        meta: &Meta,
        fill: impl FnOnce(&mut FileData) -> Result<()>,
    ) -> Result<PathBuf> {
        check_name(&parent.path, name)?;
        let path = parent.path.join(OsStr::from_bytes(name));
        let fd = rfs::openat(
            &*parent.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.exists_or(e, &path))?;
        let file = File::from(fd);
        let mut data = FileData {
            file: &file,
            path: &path,
            size,
            written: 0,
            budget: self.budget.saturating_sub(self.counts.bytes),
        };
        fill(&mut data)?;
        let written = data.written;
        file.set_len(size)
            .ctx(|| format!("setting the size of {}", path.display()))?;
        self.counts.bytes += written;
        self.apply_fd(file.as_fd(), &path, meta)?;
        self.counts.files += 1;
        Ok(path)
    }

    pub fn symlink(
        &mut self,
        parent: &Dir,
        name: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> Result<PathBuf> {
        check_name(&parent.path, name)?;
        let path = parent.path.join(OsStr::from_bytes(name));
        if target.is_empty() || target.contains(&0) {
            return Err(ImageError::UnsafeEntry {
                path: path.display().to_string(),
                detail: "symlink target is empty or contains NUL".into(),
            });
        }
        // The target is stored, never resolved on the host: a link to /etc/shadow stays a link.
        rfs::symlinkat(target, &*parent.fd, name).map_err(|e| self.exists_or(e, &path))?;
        self.apply_at(parent, name, &path, meta, true)?;
        self.counts.symlinks += 1;
        Ok(path)
    }

    pub fn node(&mut self, parent: &Dir, name: &[u8], node: Node, meta: &Meta) -> Result<PathBuf> {
        check_name(&parent.path, name)?;
        let path = parent.path.join(OsStr::from_bytes(name));
        let (ftype, dev) = match node {
            Node::Fifo => (rfs::FileType::Fifo, 0),
            Node::Socket => (rfs::FileType::Socket, 0),
            Node::Char { major, minor } => {
                (rfs::FileType::CharacterDevice, rfs::makedev(major, minor))
            }
            Node::Block { major, minor } => {
                (rfs::FileType::BlockDevice, rfs::makedev(major, minor))
            }
        };
        rfs::mknodat(&*parent.fd, name, ftype, Mode::from_raw_mode(0o600), dev)
            .map_err(|e| self.exists_or(e, &path))?;
        self.apply_at(parent, name, &path, meta, false)?;
        self.counts.specials += 1;
        Ok(path)
    }

    /// The first path created for `key` (an inode of the source), if any.
    pub fn linked(&self, key: u64) -> Option<&Path> {
        self.links.get(&key).map(PathBuf::as_path)
    }

    /// Remembers `path` as the first name of the multiply-linked `key`.
    pub fn remember_link(&mut self, key: u64, path: PathBuf) {
        self.links.insert(key, path);
    }

    /// Adds `name` as another name of the already created `existing`.
    pub fn hardlink(&mut self, parent: &Dir, name: &[u8], existing: &Path) -> Result<()> {
        check_name(&parent.path, name)?;
        let path = parent.path.join(OsStr::from_bytes(name));
        // `existing` is a path this sink created, made only of directories it created, inside a
        // tree nobody else writes to; linkat does not follow a final symlink.
        rfs::linkat(
            &*self.root.fd,
            existing,
            &*parent.fd,
            name,
            AtFlags::empty(),
        )
        .map_err(|e| self.exists_or(e, &path))?;
        self.counts.hardlinks += 1;
        Ok(())
    }

    /// Sets directory times, deepest first, and returns what was created.
    pub fn finish(mut self) -> Result<Counts> {
        for (path, atime, mtime) in self.dir_times.drain(..).rev() {
            let fd = if path.as_os_str().is_empty() {
                rfs::openat(
                    &*self.root.fd,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    Mode::empty(),
                )
            } else {
                rfs::openat2(
                    &*self.root.fd,
                    &path,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                )
            }
            .map_err(|e| errno_ctx(e, format!("opening {}", path.display())))?;
            rfs::futimens(&fd, &times(atime, mtime))
                .map_err(|e| errno_ctx(e, format!("setting the times of {}", path.display())))?;
        }
        Ok(self.counts)
    }

    /// Owner, then mode (chown clears setuid), then xattrs (chown clears security.capability),
    /// then times (every other change updates them).
    fn apply_fd(&self, fd: impl AsFd, path: &Path, meta: &Meta) -> Result<()> {
        let fd = fd.as_fd();
        let at = |what: &str| format!("setting the {what} of {}", path.display());
        rfs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )
        .map_err(|e| errno_ctx(e, at("owner")))?;
        // A new entry inherits its directory's default ACL; the source's own ACLs (if any)
        // come back with the other attributes.
        for acl in ["system.posix_acl_access", "system.posix_acl_default"] {
            match rfs::fremovexattr(fd, acl) {
                Ok(()) | Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(errno_ctx(e, at("inherited ACL"))),
            }
        }
        rfs::fchmod(fd, Mode::from_raw_mode(meta.perm & 0o7777))
            .map_err(|e| errno_ctx(e, at("mode")))?;
        for (name, value) in &meta.xattrs {
            rfs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty()).map_err(|e| {
                errno_ctx(
                    e,
                    at(&format!("attribute {}", String::from_utf8_lossy(name))),
                )
            })?;
        }
        rfs::futimens(fd, &times(meta.atime, meta.mtime)).map_err(|e| errno_ctx(e, at("times")))
    }

    /// The same for entries that cannot be opened (symlinks, devices, fifos).
    fn apply_at(
        &self,
        parent: &Dir,
        name: &[u8],
        path: &Path,
        meta: &Meta,
        symlink: bool,
    ) -> Result<()> {
        let at = |what: &str| format!("setting the {what} of {}", path.display());
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        rfs::chownat(
            &*parent.fd,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            nofollow,
        )
        .map_err(|e| errno_ctx(e, at("owner")))?;
        if !symlink {
            let proc = parent.entry_path(name);
            match rfs::lremovexattr(&proc, "system.posix_acl_access") {
                Ok(()) | Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(errno_ctx(e, at("inherited ACL"))),
            }
            // Not a symlink (the sink just made it), so chmod cannot follow anything.
            rfs::chmodat(
                &*parent.fd,
                name,
                Mode::from_raw_mode(meta.perm & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| errno_ctx(e, at("mode")))?;
        }
        if !meta.xattrs.is_empty() {
            let proc = parent.entry_path(name);
            for (xname, value) in &meta.xattrs {
                rfs::lsetxattr(&proc, xname.as_slice(), value, XattrFlags::empty()).map_err(
                    |e| {
                        errno_ctx(
                            e,
                            at(&format!("attribute {}", String::from_utf8_lossy(xname))),
                        )
                    },
                )?;
            }
        }
        rfs::utimensat(&*parent.fd, name, &times(meta.atime, meta.mtime), nofollow)
            .map_err(|e| errno_ctx(e, at("times")))
    }
}

fn times(atime: Time, mtime: Time) -> Timestamps {
    Timestamps {
        last_access: atime.spec(),
        last_modification: mtime.spec(),
    }
}

/// Writes one file's data at the offsets the source has it.
pub struct FileData<'a> {
    file: &'a File,
    path: &'a Path,
    size: u64,
    written: u64,
    budget: u64,
}

impl FileData<'_> {
    /// Writes `data` at `offset`; data past the file's size is dropped (a file system may
    /// allocate blocks beyond it).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset >= self.size {
            return Ok(());
        }
        let n = (data.len() as u64).min(self.size - offset) as usize;
        self.written += n as u64;
        if self.written > self.budget {
            return Err(ImageError::Corrupt {
                fs: "file system",
                at: self.path.display().to_string(),
                detail: "its files hold more data than the file system has blocks (blocks shared between files)".into(),
            });
        }
        self.file
            .write_all_at(&data[..n], offset)
            .ctx(|| format!("writing {}", self.path.display()))
    }
}

/// One entry of a [`Listing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// `d`, `f`, `l`, `p`, `s`, `c`, `b`.
    pub kind: char,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Time,
    pub atime: Time,
    /// Device numbers of `c` and `b` entries.
    pub rdev: Option<(u32, u32)>,
    /// sha256 of a file's data, or a symlink's target.
    pub content: String,
    /// Whether the file has holes (fewer bytes allocated than its size).
    pub sparse: bool,
    pub xattrs: BTreeMap<String, String>,
    /// For an entry with more than one name: the first of its names, in path order.
    pub link_of: Option<String>,
}

/// Every attribute of every entry of a tree, keyed by path (non-UTF-8 bytes escaped).
pub type Listing = BTreeMap<String, Entry>;

/// Lists `root`, without following symlinks.
pub fn list(root: &Path) -> Result<Listing> {
    let mut out = Listing::new();
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let md = std::fs::symlink_metadata(&abs).ctx(|| format!("reading {}", abs.display()))?;
        let key = escape(rel.as_os_str().as_bytes());
        let ft = md.file_type();
        let kind = kind_of(&md);
        let mut entry = Entry {
            kind,
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if kind == 'f' || kind == 'l' {
                md.size()
            } else {
                0
            },
            mtime: Time {
                sec: md.mtime(),
                nsec: md.mtime_nsec() as u32,
            },
            atime: Time {
                sec: md.atime(),
                nsec: md.atime_nsec() as u32,
            },
            rdev: matches!(kind, 'c' | 'b')
                .then(|| (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))),
            content: String::new(),
            sparse: kind == 'f' && md.blocks() * 512 < md.size(),
            xattrs: xattrs(&abs)?,
            link_of: None,
        };
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&abs)
                .ctx(|| format!("listing {}", abs.display()))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()
                .ctx(|| format!("listing {}", abs.display()))?;
            names.sort();
            for n in names.into_iter().rev() {
                stack.push(rel.join(n));
            }
        } else {
            if md.nlink() > 1 {
                match inodes.get(&(md.dev(), md.ino())) {
                    Some(first) => entry.link_of = Some(first.clone()),
                    None => {
                        inodes.insert((md.dev(), md.ino()), key.clone());
                    }
                }
            }
            if ft.is_symlink() {
                let t = std::fs::read_link(&abs).ctx(|| format!("reading {}", abs.display()))?;
                entry.content = escape(t.as_os_str().as_bytes());
            } else if ft.is_file() {
                entry.content = sha256_file(&abs)?;
            }
        }
        out.insert(key, entry);
    }
    Ok(out)
}

fn kind_of(md: &std::fs::Metadata) -> char {
    use std::os::unix::fs::FileTypeExt;
    let ft = md.file_type();
    if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else if ft.is_char_device() {
        'c'
    } else {
        'b'
    }
}

fn xattrs(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut names = vec![0u8; 65536];
    let n = rfs::llistxattr(path, &mut names[..])
        .ctx(|| format!("listing the attributes of {}", path.display()))?;
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 65536];
        let m = rfs::lgetxattr(path, name, &mut value[..]).ctx(|| {
            format!(
                "reading attribute {} of {}",
                String::from_utf8_lossy(name),
                path.display()
            )
        })?;
        out.insert(escape(name), hex::encode(&value[..m]));
    }
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .ctx(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Bytes as text: UTF-8 as is, other bytes as `\xNN`.
pub fn escape(b: &[u8]) -> String {
    b.utf8_chunks()
        .flat_map(|c| {
            let valid = c.valid().to_string();
            let invalid: String = c.invalid().iter().map(|b| format!("\\x{b:02x}")).collect();
            [valid, invalid]
        })
        .collect()
}

/// The differences between two listings, one line each; empty when they are equivalent.
/// `atime` is compared only when asked: reading a tree (to build an image from it) may update it.
pub fn diff(a: &Listing, b: &Listing, with_atime: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (path, ea) in a {
        let Some(eb) = b.get(path) else {
            out.push(format!("{path:?}: only in the first tree"));
            continue;
        };
        let mut ea = ea.clone();
        let mut eb = eb.clone();
        if !with_atime {
            ea.atime = Time::default();
            eb.atime = Time::default();
        }
        if ea != eb {
            out.push(format!("{path:?}: {ea:?} != {eb:?}"));
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("{path:?}: only in the second tree"));
    }
    out
}

/// Bytes a tree needs: data rounded up to `block` per file, one block per directory and long
/// symlink, and the number of inodes.
pub fn usage(root: &Path, block: u64) -> Result<(u64, u64)> {
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).ctx(|| format!("reading {}", p.display()))?;
        if md.nlink() > 1 && !md.is_dir() && !seen.insert(md.ino()) {
            continue;
        }
        inodes += 1;
        let alloc = (md.blocks() * 512).min(md.size().next_multiple_of(block));
        bytes += alloc
            .next_multiple_of(block)
            .max(if md.is_dir() { block } else { 0 });
        if md.is_dir() {
            for e in std::fs::read_dir(&p).ctx(|| format!("listing {}", p.display()))? {
                stack.push(e.ctx(|| format!("listing {}", p.display()))?.path());
            }
        }
    }
    Ok((bytes, inodes))
}
