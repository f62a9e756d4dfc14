//! The image store: content-addressed blobs under `<data-dir>/images/blobs/sha256/`, each named by
//! the sha256 of its bytes.
//!
//! Bytes arrive (an upload's body, or an import from a path) into a temporary file under
//! `images/tmp/`, hashed as they are written. A disk image's format is then read from its header,
//! never from its name, and every header is hostile input: a qcow2 with a backing file or an
//! external data file (which would make `qemu-img` open another path, `/etc/passwd` say), an
//! encrypted one, a VMDK that is only a descriptor pointing at other files, and any image claiming
//! more than the configured virtual size are refused before `qemu-img` touches them. Raw and VMDK
//! images are converted to qcow2, the stored format. The result is renamed into place, so a blob
//! exists whole or not at all; every temporary file is removed on any failure (a `TempPath`
//! deletes itself when dropped), and whatever a crash leaves in `tmp/` is swept at the next start.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use slipway_core::resources::{ImageFormat, ImageKind};
use tempfile::TempPath;
use tokio_util::sync::CancellationToken;

/// Why an image was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the upload ended after {received} bytes, before the {expected} it declared")]
    Truncated { received: u64, expected: u64 },
    #[error("the upload failed after {received} bytes: {message}")]
    Interrupted { received: u64, message: String },
    #[error("no bytes arrived for {0:?}; the upload was abandoned")]
    Idle(Duration),
    #[error("the content's sha256 is {actual}, not the {expected} it was declared to be")]
    DigestMismatch { expected: String, actual: String },
    #[error("the image is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(
        "the image's header claims a virtual size of {claimed} bytes, more than the limit of {limit} bytes"
    )]
    VirtualSizeTooLarge { claimed: u64, limit: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("the image is damaged: {0}")]
    Corrupt(String),
    #[error("the image store's disk is full")]
    NoSpace,
    #[error("{path} is not inside an import directory (allowed: {allowed})")]
    ImportNotAllowed { path: String, allowed: String },
    #[error("cannot read {path}: {source}")]
    Source {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a regular file or block device")]
    NotAFile { path: String },
    #[error("qemu-img {action} failed: {message}")]
    QemuImg {
        action: &'static str,
        message: String,
    },
    #[error("the operation was cancelled by a shutdown")]
    Cancelled,
    #[error("the image store could not write: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for ImageError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull {
            ImageError::NoSpace
        } else {
            ImageError::Io(e)
        }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Bytes received into a temporary file, with their digest.
#[derive(Debug)]
pub struct Received {
    pub path: TempPath,
    pub sha256: String,
    pub size: u64,
}

/// What an image's header and `qemu-img info` say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspected {
    pub format: ImageFormat,
    pub virtual_size: Option<u64>,
}

/// A blob ready to be committed: its stored format, digest and size.
#[derive(Debug)]
pub struct Canonical {
    pub path: TempPath,
    pub format: ImageFormat,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_virtual_size: u64,
    pub max_image_size: u64,
    pub import_dirs: Vec<PathBuf>,
    pub import_rate: Option<u64>,
}

#[derive(Clone)]
pub struct ImageStore {
    blobs: PathBuf,
    tmp: PathBuf,
    limits: Arc<Limits>,
    /// Serialises storing and deleting: a blob's file and its record change together.
    commit_lock: Arc<tokio::sync::Mutex<()>>,
}

const CHUNK: usize = 1 << 20;

/// How often a receive asks the kernel to start writing back what it has written, so the fsync
/// at the end finds little left to do.
const WRITEBACK_STEP: u64 = 32 << 20;

/// Starts writeback of a written range without waiting for it (`sync_file_range(2)`); a hint,
/// so a failure is ignored: the fsync that follows is what makes the bytes durable.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call; the call reads no memory.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

impl ImageStore {
    /// Opens the store under `root`, removing whatever an earlier run left in `tmp/`: at start no
    /// job owns a temporary file yet.
    pub fn open(root: &Path, limits: Limits) -> io::Result<Self> {
        let blobs = root.join("blobs/sha256");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&tmp)?;
        let swept = sweep(&tmp)?;
        if swept > 0 {
            tracing::info!(files = swept, dir = %tmp.display(), "removed temporary files left by an earlier run");
        }
        Ok(Self {
            blobs,
            tmp,
            limits: Arc::new(limits),
            commit_lock: Arc::default(),
        })
    }

    /// Held while a blob and its record are added or removed together.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.commit_lock.lock().await
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    pub fn blob_path(&self, id: &str) -> PathBuf {
        self.blobs.join(id)
    }

    fn temp(&self) -> io::Result<(File, TempPath)> {
        let file = tempfile::Builder::new()
            .prefix("incoming-")
            .tempfile_in(&self.tmp)?;
        Ok(file.into_parts())
    }

    /// Streams a body into a temporary file, hashing as it goes, off the async threads.
    pub async fn receive<S, E>(
        &self,
        mut body: S,
        declared: Option<u64>,
        idle: Duration,
        progress: Arc<AtomicU64>,
    ) -> Result<Received>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let limit = self.limits.max_image_size;
        if let Some(declared) = declared
            && declared > limit
        {
            return Err(ImageError::TooLarge { limit });
        }
        let (file, path) = self.temp()?;
        // Hashing and writing each cost about as much as receiving: one thread each, fed the same
        // reference-counted chunks, so the three overlap.
        let (to_writer, mut writer_rx) = tokio::sync::mpsc::channel::<Bytes>(32);
        let (to_hasher, mut hasher_rx) = tokio::sync::mpsc::channel::<Bytes>(32);
        let writer = tokio::task::spawn_blocking(move || -> io::Result<File> {
            let mut file = file;
            let mut written = 0u64;
            let mut flushed = 0u64;
            while let Some(chunk) = writer_rx.blocking_recv() {
                file.write_all(&chunk)?;
                written += chunk.len() as u64;
                if written - flushed >= WRITEBACK_STEP {
                    start_writeback(&file, flushed, written - flushed);
                    flushed = written;
                }
            }
            Ok(file)
        });
        let hasher = tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            while let Some(chunk) = hasher_rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hex::encode(hasher.finalize())
        });
        let mut received = 0u64;
        let mut chunks = 0u64;
        let outcome: Result<()> = async {
            loop {
                let next = tokio::time::timeout(idle, body.next())
                    .await
                    .map_err(|_| ImageError::Idle(idle))?;
                let chunk = match next {
                    None => break,
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => {
                        return Err(match declared {
                            Some(expected) => ImageError::Truncated { received, expected },
                            None => ImageError::Interrupted {
                                received,
                                message: e.to_string(),
                            },
                        });
                    }
                };
                received += chunk.len() as u64;
                chunks += 1;
                if received > limit {
                    return Err(ImageError::TooLarge { limit });
                }
                progress.store(received, Ordering::Relaxed);
                if to_hasher.send(chunk.clone()).await.is_err()
                    || to_writer.send(chunk).await.is_err()
                {
                    // The writer stopped early: its error is the one to report.
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop((to_writer, to_hasher));
        let joined = |e: tokio::task::JoinError| ImageError::Io(io::Error::other(e));
        let written = writer.await.map_err(joined)?;
        let sha256 = hasher.await.map_err(joined)?;
        outcome?;
        let file = written?;
        if let Some(expected) = declared
            && received != expected
        {
            return Err(ImageError::Truncated { received, expected });
        }
        tracing::debug!(bytes = received, chunks, "upload body received");
        // The blob must be on disk before a record says it exists.
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| ImageError::Io(io::Error::other(e)))??;
        Ok(Received {
            path,
            sha256,
            size: received,
        })
    }

    /// The import directories as they really are (symlinks resolved); those that do not exist
    /// are left out.
    fn import_roots(&self) -> Vec<PathBuf> {
        self.limits
            .import_dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .collect()
    }

    fn not_importable(&self, path: &Path) -> ImageError {
        ImageError::ImportNotAllowed {
            path: path.display().to_string(),
            allowed: self
                .limits
                .import_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Resolves an import path and checks it lies in an import directory, after symlinks. A
    /// path outside every import directory is refused before the file system is asked anything
    /// about it, so the answer says nothing about what exists elsewhere.
    pub fn import_source(&self, path: &Path) -> Result<PathBuf> {
        let roots = self.import_roots();
        let lexical = lexically_normal(path);
        let configured = self.limits.import_dirs.iter().map(|d| lexically_normal(d));
        if !configured
            .chain(roots.iter().cloned())
            .any(|root| lexical.starts_with(&root))
        {
            return Err(self.not_importable(path));
        }
        let real = std::fs::canonicalize(path).map_err(|source| ImageError::Source {
            path: path.display().to_string(),
            source,
        })?;
        if !roots.iter().any(|root| real.starts_with(root)) {
            return Err(self.not_importable(path));
        }
        Ok(real)
    }

    /// Opens an import source without following a final symlink and without blocking on a FIFO,
    /// then checks what was opened: a regular file or a block device, really inside an import
    /// directory (read back from `/proc/self/fd`, so a path swapped after the check is caught).
    fn open_import(&self, source: &Path) -> Result<(File, u64)> {
        use std::io::Seek;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let shown = source.display().to_string();
        let source_err = |source| ImageError::Source {
            path: shown.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(source)
            .map_err(source_err)?;
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(source_err)?;
        if !self
            .import_roots()
            .iter()
            .any(|root| opened.starts_with(root))
        {
            return Err(self.not_importable(source));
        }
        let meta = file.metadata().map_err(source_err)?;
        let size = if meta.file_type().is_block_device() {
            let end = file.seek(io::SeekFrom::End(0)).map_err(source_err)?;
            file.seek(io::SeekFrom::Start(0)).map_err(source_err)?;
            end
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(ImageError::NotAFile { path: shown });
        };
        // Reads from here on may block, as file reads do.
        // SAFETY: plain fcntl calls on a descriptor this function owns.
        unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        Ok((file, size))
    }

    /// Copies a file (or block device) into a temporary file, hashing it, at most at the
    /// configured rate, stopping when `cancel` fires.
    pub async fn copy_in(
        &self,
        source: PathBuf,
        progress: Arc<AtomicU64>,
        total: Arc<AtomicU64>,
        cancel: CancellationToken,
    ) -> Result<Received> {
        let (file, path) = self.temp()?;
        let limit = self.limits.max_image_size;
        let rate = self.limits.import_rate;
        let store = self.clone();
        tokio::task::spawn_blocking(move || -> Result<Received> {
            let shown = source.display().to_string();
            let source_err = |source| ImageError::Source {
                path: shown.clone(),
                source,
            };
            let (mut input, size) = store.open_import(&source)?;
            if size > limit {
                return Err(ImageError::TooLarge { limit });
            }
            total.store(size, Ordering::Relaxed);
            let mut output = file;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; CHUNK];
            let mut done = 0u64;
            let started = Instant::now();
            loop {
                if cancel.is_cancelled() {
                    return Err(ImageError::Cancelled);
                }
                let n = input.read(&mut buf).map_err(source_err)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                output.write_all(&buf[..n])?;
                done += n as u64;
                if done > limit {
                    return Err(ImageError::TooLarge { limit });
                }
                progress.store(done, Ordering::Relaxed);
                if let Some(rate) = rate.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(done as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            output.sync_all()?;
            Ok(Received {
                path,
                sha256: hex::encode(hasher.finalize()),
                size: done,
            })
        })
        .await
        .map_err(|e| ImageError::Io(io::Error::other(e)))?
    }

    /// Reads the format from the header, refuses what must not be opened, and asks `qemu-img` for
    /// the rest.
    pub async fn inspect(&self, path: &Path, kind: ImageKind) -> Result<Inspected> {
        if kind == ImageKind::Artifact {
            return Ok(Inspected {
                format: ImageFormat::Blob,
                virtual_size: None,
            });
        }
        let max = self.limits.max_virtual_size;
        let owned = path.to_owned();
        let header = tokio::task::spawn_blocking(move || read_header(&owned))
            .await
            .map_err(|e| ImageError::Io(io::Error::other(e)))??;
        let claimed = check_header(&header, max)?;
        if claimed.format == ImageFormat::Raw {
            return Ok(claimed);
        }
        let info = qemu_img_info(path, claimed.format).await?;
        if info.backing.is_some() {
            return Err(ImageError::Unsupported(
                "the image names a backing file; upload a self-contained image (qemu-img convert flattens it)".into(),
            ));
        }
        if info.virtual_size > max {
            return Err(ImageError::VirtualSizeTooLarge {
                claimed: info.virtual_size,
                limit: max,
            });
        }
        Ok(Inspected {
            format: claimed.format,
            virtual_size: Some(info.virtual_size),
        })
    }

    /// Brings received bytes to the stored format: qcow2 for disks (converted from raw or VMDK),
    /// as they are for artifacts.
    pub async fn canonicalize(
        &self,
        received: Received,
        inspected: Inspected,
        cancel: CancellationToken,
    ) -> Result<Canonical> {
        match inspected.format {
            ImageFormat::Qcow2 | ImageFormat::Blob => Ok(Canonical {
                path: received.path,
                format: inspected.format,
                sha256: received.sha256,
                size: received.size,
            }),
            ImageFormat::Raw | ImageFormat::Vmdk => {
                let (_, out) = self.temp()?;
                let mut command = tokio::process::Command::new("qemu-img");
                command
                    .args(["convert", "-q", "-f", inspected.format.as_str()])
                    .args(["-O", "qcow2", "-o", "compat=1.1"])
                    .arg(&*received.path)
                    .arg(&*out)
                    .kill_on_drop(true);
                let output = tokio::select! {
                    output = command.output() => output.map_err(qemu_missing)?,
                    () = cancel.cancelled() => return Err(ImageError::Cancelled),
                };
                if !output.status.success() {
                    return Err(qemu_failed("convert", &output));
                }
                drop(received);
                let path = out.to_path_buf();
                let (sha256, size) = tokio::task::spawn_blocking(move || hash_file(&path))
                    .await
                    .map_err(|e| ImageError::Io(io::Error::other(e)))??;
                Ok(Canonical {
                    path: out,
                    format: ImageFormat::Qcow2,
                    sha256,
                    size,
                })
            }
        }
    }

    /// Moves a canonical blob into place under its digest; returns its allocated size. A blob
    /// already present (the same bytes stored before) is kept and the new copy dropped.
    pub fn commit(&self, blob: Canonical) -> Result<u64> {
        let target = self.blob_path(&blob.sha256);
        if !target.exists() {
            // qemu-img writes its output without syncing it: make every blob durable here,
            // before its rename (and the record after it) says it exists.
            File::open(&blob.path)?.sync_all()?;
            std::fs::set_permissions(&blob.path, std::fs::Permissions::from_mode(0o444))?;
            blob.path
                .persist(&target)
                .map_err(|e| ImageError::Io(e.error))?;
            // The rename is durable once the directory is.
            File::open(&self.blobs)?.sync_all()?;
        }
        Ok(std::fs::metadata(&target)?.blocks() * 512)
    }

    /// Removes a blob; a blob already gone is not an error.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        match std::fs::remove_file(self.blob_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Blob files no record names (a crash between rename and insert): removed at start.
    pub fn sweep_unreferenced(&self, known: &[String]) -> io::Result<usize> {
        let known: std::collections::HashSet<&str> = known.iter().map(String::as_str).collect();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let name = entry.file_name();
            if !known.contains(name.to_string_lossy().as_ref()) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `path` made absolute with `.` and `..` resolved by name alone, touching no file system.
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn sweep(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        removed += 1;
    }
    Ok(removed)
}

fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The first bytes of an image and its length: enough for every header we read.
pub struct Header {
    pub bytes: Vec<u8>,
    pub len: u64,
    /// The last 512 bytes, where a fixed-size VHD keeps its only header.
    pub tail: Vec<u8>,
    /// A VMDK's embedded descriptor, when the header locates one.
    pub descriptor: Option<Vec<u8>>,
}

const HEADER_BYTES: usize = 4096;
const MAX_VMDK_DESCRIPTOR: u64 = 64 << 10;

fn read_header(path: &Path) -> Result<Header> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::with_capacity(HEADER_BYTES);
    (&mut file)
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut bytes)?;
    let mut descriptor = None;
    if bytes.starts_with(b"KDMV") && bytes.len() >= 44 {
        let offset = u64_le(&bytes, 28).saturating_mul(512);
        let size = u64_le(&bytes, 36).saturating_mul(512);
        if offset > 0 && size > 0 {
            if size > MAX_VMDK_DESCRIPTOR || offset.saturating_add(size) > len {
                return Err(ImageError::Corrupt(format!(
                    "the VMDK descriptor at byte {offset} ({size} bytes) is outside the file or too large"
                )));
            }
            let mut text = vec![0u8; size as usize];
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut text)?;
            descriptor = Some(text);
        }
    }
    let mut tail = Vec::new();
    if len >= 512 {
        file.seek(SeekFrom::Start(len - 512))?;
        (&mut file).take(512).read_to_end(&mut tail)?;
    }
    Ok(Header {
        bytes,
        len,
        tail,
        descriptor,
    })
}

fn u32_be(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn u64_be(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn u64_le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Formats we recognise and do not store: refused by name rather than stored as raw.
const FOREIGN: &[(&[u8], &str)] = &[
    (b"vhdxfile", "VHDX"),
    (b"conectix", "VHD"),
    (b"QED\0", "QED"),
    (b"LUKS\xba\xbe", "LUKS-encrypted"),
    (b"<<< ", "VDI"),
    (b"# Disk DescriptorFile", "descriptor-only VMDK"),
];

/// Decides the format from the header and refuses images that would make `qemu-img` open other
/// files, or that claim more than `max` bytes of virtual size.
pub fn check_header(header: &Header, max: u64) -> Result<Inspected> {
    let b = &header.bytes;
    if b.starts_with(b"QFI\xfb") {
        if b.len() < 72 {
            return Err(ImageError::Corrupt("the qcow2 header is truncated".into()));
        }
        let version = u32_be(b, 4);
        if !(2..=3).contains(&version) {
            return Err(ImageError::Unsupported(format!(
                "qcow2 version {version} is not supported (2 and 3 are)"
            )));
        }
        if u64_be(b, 8) != 0 {
            return Err(ImageError::Unsupported(
                "the qcow2 image names a backing file; Slipway never follows the backing files of images it is given — upload a self-contained image (qemu-img convert flattens it)".into(),
            ));
        }
        if u32_be(b, 32) != 0 {
            return Err(ImageError::Unsupported(
                "the qcow2 image is encrypted".into(),
            ));
        }
        let size = u64_be(b, 24);
        if size > max {
            return Err(ImageError::VirtualSizeTooLarge {
                claimed: size,
                limit: max,
            });
        }
        if version == 3 {
            if b.len() < 104 {
                return Err(ImageError::Corrupt(
                    "the qcow2 v3 header is truncated".into(),
                ));
            }
            let incompatible = u64_be(b, 72);
            if incompatible & 0b10 != 0 {
                return Err(ImageError::Corrupt(
                    "the qcow2 image is marked corrupt".into(),
                ));
            }
            if incompatible & 0b100 != 0 {
                return Err(ImageError::Unsupported(
                    "the qcow2 image keeps its data in an external file; Slipway never opens files an image names".into(),
                ));
            }
        }
        return Ok(Inspected {
            format: ImageFormat::Qcow2,
            virtual_size: Some(size),
        });
    }
    if b.starts_with(b"KDMV") {
        if b.len() < 44 {
            return Err(ImageError::Corrupt("the VMDK header is truncated".into()));
        }
        let size = u64_le(b, 12).saturating_mul(512);
        if size == 0 {
            // With no capacity of its own, qemu reads the embedded descriptor as a descriptor
            // file and opens every extent it names: any file the server can read.
            return Err(ImageError::Unsupported(
                "the VMDK has no capacity of its own and defers to its descriptor's extents; upload a monolithicSparse or streamOptimized VMDK".into(),
            ));
        }
        if size > max {
            return Err(ImageError::VirtualSizeTooLarge {
                claimed: size,
                limit: max,
            });
        }
        if let Some(text) = &header.descriptor {
            let text = String::from_utf8_lossy(text);
            let parent = text.lines().any(|l| {
                let l = l.trim();
                l.starts_with("parentFileNameHint")
                    || (l.starts_with("parentCID") && !l.contains("ffffffff"))
            });
            if parent {
                return Err(ImageError::Unsupported(
                    "the VMDK is a delta of a parent image; upload a self-contained image".into(),
                ));
            }
            // qemu finds `createType` anywhere in the text, not only at a line's start.
            let create_type = text.find("createType").map(|at| {
                text[at + "createType".len()..]
                    .trim_start_matches([' ', '\t', '='])
                    .trim_start_matches('"')
                    .split(['"', '\n', '\r'])
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            });
            match create_type.as_deref() {
                None | Some("monolithicSparse" | "streamOptimized") => {}
                Some(other) => {
                    return Err(ImageError::Unsupported(format!(
                        "VMDK type {other} spans several files; upload a monolithicSparse or streamOptimized VMDK"
                    )));
                }
            }
        }
        return Ok(Inspected {
            format: ImageFormat::Vmdk,
            virtual_size: Some(size),
        });
    }
    if header.tail.starts_with(b"conectix") {
        return Err(ImageError::Unsupported(
            "VHD images are not supported: convert to qcow2, raw or a single-file VMDK".into(),
        ));
    }
    for (magic, name) in FOREIGN {
        if b.starts_with(magic) {
            return Err(ImageError::Unsupported(format!(
                "{name} images are not supported: convert to qcow2, raw or a single-file VMDK"
            )));
        }
    }
    if header.len > max {
        return Err(ImageError::VirtualSizeTooLarge {
            claimed: header.len,
            limit: max,
        });
    }
    if header.len == 0 {
        return Err(ImageError::Corrupt("the image is empty".into()));
    }
    Ok(Inspected {
        format: ImageFormat::Raw,
        virtual_size: Some(header.len),
    })
}

struct QemuInfo {
    virtual_size: u64,
    backing: Option<String>,
}

fn qemu_missing(e: io::Error) -> ImageError {
    ImageError::QemuImg {
        action: "start",
        message: format!("{e} (install Debian's qemu-utils)"),
    }
}

fn qemu_failed(action: &'static str, output: &std::process::Output) -> ImageError {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = stderr.trim().trim_start_matches("qemu-img: ");
    // Anything qemu-img cannot parse is, for us, a damaged image.
    ImageError::Corrupt(format!("qemu-img {action}: {}", truncate(message, 500)))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

async fn qemu_img_info(path: &Path, format: ImageFormat) -> Result<QemuInfo> {
    let mut command = tokio::process::Command::new("qemu-img");
    command
        .args(["info", "--output=json", "-f", format.as_str()])
        .arg(path)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .map_err(|_| ImageError::QemuImg {
            action: "info",
            message: "took more than 60 s".into(),
        })?
        .map_err(qemu_missing)?;
    if !output.status.success() {
        return Err(qemu_failed("info", &output));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| ImageError::QemuImg {
            action: "info",
            message: format!("unreadable output: {e}"),
        })?;
    let virtual_size = info["virtual-size"]
        .as_u64()
        .ok_or_else(|| ImageError::QemuImg {
            action: "info",
            message: "no virtual-size in its output".into(),
        })?;
    let backing = info["backing-filename"]
        .as_str()
        .or_else(|| info["full-backing-filename"].as_str())
        .map(str::to_owned);
    if info["format-specific"]["data"]["data-file"].is_string() {
        return Err(ImageError::Unsupported(
            "the image keeps its data in an external file".into(),
        ));
    }
    if format == ImageFormat::Vmdk {
        // What qemu itself opened: one extent, this file, of a single-file type.
        let data = &info["format-specific"]["data"];
        let create_type = data["create-type"].as_str().unwrap_or_default();
        let own = path.to_string_lossy();
        let extents_are_self = data["extents"].as_array().is_some_and(|extents| {
            !extents.is_empty()
                && extents
                    .iter()
                    .all(|e| e["filename"].as_str() == Some(own.as_ref()))
        });
        if !matches!(create_type, "monolithicSparse" | "streamOptimized") || !extents_are_self {
            return Err(ImageError::Unsupported(
                "the VMDK names extents in other files; upload a monolithicSparse or streamOptimized VMDK".into(),
            ));
        }
    }
    Ok(QemuInfo {
        virtual_size,
        backing,
    })
}
