//! The host's image cache: staged images received from the server, kept by sha256 digest, so
//! that a second VM from the same staged image transfers nothing.
//!
//! A transfer's body is a sequence of frames (`[offset u64 BE][len u32 BE][len bytes]`, offsets
//! increasing): only the image's allocated data travels, holes stay holes. The agent writes each
//! frame where it belongs in `<data-dir>/images/partial/<digest>`, hashing as it goes (a gap
//! between frames is hashed as zeros, never read), and records how far it got in
//! `<digest>.resume` — every 64 MiB and when a body ends early — so that a cut transfer resumes
//! there (the prefix is hashed again from disk first). When the sender has sent everything, the
//! file is cut to its size, its digest checked, fsynced and renamed into place: a cached image is
//! always whole and verified. A digest that does not match, or a full disk, removes the partial.
//!
//! The cache has a size limit; making room evicts the least recently used images no VM is based
//! on.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The largest frame accepted: a sender's 4 MiB chunks, with room to spare.
pub const MAX_FRAME: u32 = 8 << 20;
/// How often the resume point is written down.
const CHECKPOINT: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0:?} is not a sha256 digest")]
    BadDigest(String),
    #[error("{0}")]
    Frame(String),
    #[error("the image's sha256 is {actual}, not {expected}: the transfer was corrupted")]
    Mismatch { expected: String, actual: String },
    #[error("the host's disk is full: {0}")]
    NoSpace(String),
    #[error("the cache needs {needed} MiB for this image and can make only {available} MiB")]
    TooBig { needed: u64, available: u64 },
    #[error("image {0} is being received already")]
    Busy(String),
    #[error("the transfer starts at {got}, but this host has the image up to {have}")]
    WrongStart { got: u64, have: u64 },
    #[error("image {0} is used by a VM")]
    InUse(String),
    #[error("no image {0} in the cache")]
    NotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CacheError {
    let context = context.into();
    move |source| {
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) {
            CacheError::NoSpace(context)
        } else {
            CacheError::Io { context, source }
        }
    }
}

/// What the agent has of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ImageState {
    Cached { digest: String, size: u64 },
    Partial { size: u64, resume_from: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Resume {
    size: u64,
    /// Every byte below this is on disk (data, or a hole that is zeros).
    upto: u64,
}

/// A cached image, as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cached {
    pub digest: String,
    pub size: u64,
    pub used: bool,
}

pub struct Cache {
    dir: PathBuf,
    partial: PathBuf,
    max_bytes: u64,
    receiving: Mutex<Vec<String>>,
}

fn digest_ok(d: &str) -> bool {
    slipway_core::catalog::is_digest(d)
}

impl Cache {
    /// Opens `<data-dir>/images`, removing temporary files a crash left (partials with their
    /// resume point stay).
    pub fn open(data_dir: &Path, max_bytes: u64) -> Result<Arc<Self>, CacheError> {
        let dir = data_dir.join("images");
        let partial = dir.join("partial");
        std::fs::create_dir_all(&partial).map_err(io(format!("creating {}", partial.display())))?;
        for entry in std::fs::read_dir(&partial).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = digest_ok(&name) && partial.join(format!("{name}.resume")).exists()
                || name.ends_with(".resume")
                    && partial.join(name.trim_end_matches(".resume")).exists();
            if !keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Arc::new(Self {
            dir,
            partial,
            max_bytes,
            receiving: Mutex::new(Vec::new()),
        }))
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest)
    }

    fn resume_path(&self, digest: &str) -> PathBuf {
        self.partial.join(format!("{digest}.resume"))
    }

    pub fn state(&self, digest: &str) -> Result<Option<ImageState>, CacheError> {
        if !digest_ok(digest) {
            return Err(CacheError::BadDigest(digest.to_owned()));
        }
        if let Ok(m) = std::fs::metadata(self.path(digest)) {
            return Ok(Some(ImageState::Cached {
                digest: digest.to_owned(),
                size: m.len(),
            }));
        }
        Ok(self.resume(digest).map(|r| ImageState::Partial {
            size: r.size,
            resume_from: r.upto,
        }))
    }

    fn resume(&self, digest: &str) -> Option<Resume> {
        let bytes = std::fs::read(self.resume_path(digest)).ok()?;
        let r: Resume = serde_json::from_slice(&bytes).ok()?;
        self.partial.join(digest).exists().then_some(r)
    }

    fn write_resume(&self, digest: &str, r: &Resume) -> Result<(), CacheError> {
        let path = self.resume_path(digest);
        let tmp = path.with_extension("resume.tmp");
        std::fs::write(&tmp, serde_json::to_vec(r).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(io("writing the resume point"))
    }

    fn drop_partial(&self, digest: &str) {
        let _ = std::fs::remove_file(self.partial.join(digest));
        let _ = std::fs::remove_file(self.resume_path(digest));
    }

    /// Cached images, least recently used first.
    pub fn list(&self, used: impl Fn(&str) -> bool) -> Vec<Cached> {
        let mut out: Vec<(std::time::SystemTime, Cached)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if !digest_ok(&name) {
                    return None;
                }
                let m = e.metadata().ok()?;
                Some((
                    m.modified().ok()?,
                    Cached {
                        used: used(&name),
                        digest: name,
                        size: m.len(),
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, c)| c).collect()
    }

    /// Marks an image as just used (eviction goes by it).
    pub fn touch(&self, digest: &str) {
        if let Ok(f) = File::options().append(true).open(self.path(digest)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Removes an image no VM uses.
    pub fn remove(&self, digest: &str, used: bool) -> Result<(), CacheError> {
        if !digest_ok(digest) {
            return Err(CacheError::BadDigest(digest.to_owned()));
        }
        if used {
            return Err(CacheError::InUse(digest.to_owned()));
        }
        std::fs::remove_file(self.path(digest)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CacheError::NotFound(digest.to_owned())
            } else {
                CacheError::Io {
                    context: "removing an image".into(),
                    source: e,
                }
            }
        })
    }

    /// Makes room for `size` more bytes, evicting unused images least recently used first.
    fn make_room(&self, size: u64, used: &dyn Fn(&str) -> bool) -> Result<(), CacheError> {
        let images = self.list(used);
        let mut total: u64 = images.iter().map(|c| c.size).sum();
        if total.saturating_add(size) <= self.max_bytes {
            return Ok(());
        }
        let evictable: u64 = images.iter().filter(|c| !c.used).map(|c| c.size).sum();
        if (total - evictable).saturating_add(size) > self.max_bytes {
            return Err(CacheError::TooBig {
                needed: size >> 20,
                available: self.max_bytes.saturating_sub(total - evictable) >> 20,
            });
        }
        for c in images.iter().filter(|c| !c.used) {
            if total.saturating_add(size) <= self.max_bytes {
                break;
            }
            tracing::info!(image = %c.digest, bytes = c.size, "evicting an unused image from the cache");
            let _ = std::fs::remove_file(self.path(&c.digest));
            total -= c.size;
        }
        Ok(())
    }

    /// Begins (or resumes at `from`) receiving an image of `size` bytes.
    pub fn begin(
        self: &Arc<Self>,
        digest: &str,
        size: u64,
        from: u64,
        used: &dyn Fn(&str) -> bool,
    ) -> Result<Receiver, CacheError> {
        if !digest_ok(digest) {
            return Err(CacheError::BadDigest(digest.to_owned()));
        }
        {
            let mut receiving = self.receiving.lock().unwrap_or_else(|e| e.into_inner());
            if receiving.iter().any(|d| d == digest) {
                return Err(CacheError::Busy(digest.to_owned()));
            }
            receiving.push(digest.to_owned());
        }
        let guard = Busy {
            cache: self.clone(),
            digest: digest.to_owned(),
        };
        let have = match self.resume(digest) {
            Some(r) if r.size == size => r.upto,
            _ => {
                self.drop_partial(digest);
                0
            }
        };
        if from != have {
            return Err(CacheError::WrongStart { got: from, have });
        }
        if from == 0 {
            self.make_room(size, used)?;
        }
        let path = self.partial.join(digest);
        let file = File::options()
            .create(true)
            .write(true)
            .read(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening the partial image"))?;
        let mut hasher = Sha256::new();
        if from > 0 {
            // The prefix already on disk, hashed again: the hash state is not kept across cuts.
            let mut reader = File::open(&path).map_err(io("reading the partial image"))?;
            let mut left = from;
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let n = reader
                    .read(&mut buf[..left.min(1 << 20) as usize])
                    .map_err(io("reading the partial image"))?;
                if n == 0 {
                    // Shorter than recorded (a hole at the end): zeros.
                    hash_zeros(&mut hasher, left);
                    break;
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            let _ = reader.seek(SeekFrom::Start(0));
        } else {
            file.set_len(0).map_err(io("emptying the partial image"))?;
        }
        self.write_resume(digest, &Resume { size, upto: from })?;
        Ok(Receiver {
            cache: self.clone(),
            digest: digest.to_owned(),
            size,
            file,
            hasher: Hasher::new(hasher),
            hashed: from,
            committed: from,
            checkpoint: from,
            decoder: Decoder::default(),
            _busy: guard,
        })
    }
}

struct Busy {
    cache: Arc<Cache>,
    digest: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.cache
            .receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| *d != self.digest);
    }
}

/// SHA-256 on a thread of its own, fed in order — data, and runs of zeros for holes — so that
/// hashing overlaps receiving and writing (it is the largest cost of a transfer).
struct Hasher {
    tx: Option<std::sync::mpsc::SyncSender<Work>>,
    thread: Option<std::thread::JoinHandle<Sha256>>,
}

enum Work {
    Data(Bytes),
    Zeros(u64),
}

impl Hasher {
    fn new(mut sha: Sha256) -> Self {
        // A few MiB ahead at most: the chunks are the socket's.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Work>(256);
        let thread = std::thread::spawn(move || {
            for work in rx {
                match work {
                    Work::Data(b) => sha.update(&b),
                    Work::Zeros(n) => hash_zeros(&mut sha, n),
                }
            }
            sha
        });
        Self {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn send(&self, work: Work) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(work);
        }
    }

    fn finish(mut self) -> Option<Sha256> {
        self.tx.take();
        self.thread.take()?.join().ok()
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hash_zeros(hasher: &mut Sha256, mut n: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// An incremental reader of frames over arbitrary chunks: at most one 12-byte header buffered.
#[derive(Default)]
struct Decoder {
    header: Vec<u8>,
    /// The current frame: where its next byte goes, and how many are left.
    at: u64,
    left: u32,
}

pub struct Receiver {
    cache: Arc<Cache>,
    digest: String,
    size: u64,
    file: File,
    hasher: Hasher,
    /// How far the data given to the hasher (and the file) reaches.
    hashed: u64,
    /// The end of the last whole frame (or of the zeros before a frame in progress).
    committed: u64,
    checkpoint: u64,
    decoder: Decoder,
    _busy: Busy,
}

impl Receiver {
    /// Takes the next bytes of the body, wherever they cut the frames.
    pub fn feed(&mut self, mut chunk: Bytes) -> Result<(), CacheError> {
        while !chunk.is_empty() {
            if self.decoder.left == 0 {
                let need = 12 - self.decoder.header.len();
                let take = need.min(chunk.len());
                self.decoder.header.extend_from_slice(&chunk[..take]);
                chunk = chunk.slice(take..);
                if self.decoder.header.len() < 12 {
                    continue;
                }
                let h = std::mem::take(&mut self.decoder.header);
                let offset = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
                let len = u32::from_be_bytes(h[8..12].try_into().expect("4 bytes"));
                if len == 0 || len > MAX_FRAME {
                    return Err(CacheError::Frame(format!(
                        "a frame of {len} bytes at {offset}"
                    )));
                }
                if offset < self.hashed {
                    return Err(CacheError::Frame(format!(
                        "a frame at {offset} goes back before {}",
                        self.hashed
                    )));
                }
                if offset
                    .checked_add(u64::from(len))
                    .is_none_or(|end| end > self.size)
                {
                    return Err(CacheError::Frame(format!(
                        "a frame at {offset} of {len} bytes ends past the image's {} bytes",
                        self.size
                    )));
                }
                // The gap before it is a hole: zeros, hashed without reading.
                self.hasher.send(Work::Zeros(offset - self.hashed));
                self.hashed = offset;
                self.committed = offset;
                self.decoder.at = offset;
                self.decoder.left = len;
                continue;
            }
            let take = (self.decoder.left as usize).min(chunk.len());
            let data = chunk.slice(..take);
            self.file
                .write_all_at(&data, self.decoder.at)
                .map_err(io("writing the image"))?;
            self.hasher.send(Work::Data(data));
            self.decoder.at += take as u64;
            self.hashed = self.decoder.at;
            self.decoder.left -= take as u32;
            chunk = chunk.slice(take..);
            if self.decoder.left == 0 {
                self.committed = self.decoder.at;
                // Not synced first: a resume point ahead of what reached the disk (a power cut)
                // ends in a digest mismatch at the end, and the image is sent again whole.
                if self.committed - self.checkpoint >= CHECKPOINT {
                    // Start writing what came since the last checkpoint back to disk now, without
                    // waiting: the final fsync then has little left to do.
                    use std::os::unix::io::AsRawFd;
                    // SAFETY: sync_file_range on a descriptor we own, over a range we wrote; it
                    // only starts write-back, and a failure is harmless (the fsync at the end
                    // still makes the image durable).
                    unsafe {
                        libc::sync_file_range(
                            self.file.as_raw_fd(),
                            self.checkpoint as libc::off64_t,
                            (self.committed - self.checkpoint) as libc::off64_t,
                            libc::SYNC_FILE_RANGE_WRITE,
                        );
                    }
                    self.cache.write_resume(
                        &self.digest,
                        &Resume {
                            size: self.size,
                            upto: self.committed,
                        },
                    )?;
                    self.checkpoint = self.committed;
                }
            }
        }
        Ok(())
    }

    /// The body ended before the sender said it was done: keep what came, to resume there.
    pub fn interrupted(self) -> u64 {
        let upto = self.committed;
        if self.file.sync_data().is_ok() {
            let _ = self.cache.write_resume(
                &self.digest,
                &Resume {
                    size: self.size,
                    upto,
                },
            );
        }
        upto
    }

    /// Everything was sent: check the digest and put the image in place.
    pub fn finish(mut self) -> Result<u64, CacheError> {
        if self.decoder.left != 0 || !self.decoder.header.is_empty() {
            let upto = self.interrupted();
            return Err(CacheError::Frame(format!(
                "the body ended inside a frame; the image is kept up to {upto} to resume"
            )));
        }
        self.hasher.send(Work::Zeros(self.size - self.hashed));
        let hasher = std::mem::replace(&mut self.hasher, Hasher::new(Sha256::new()));
        let Some(sha) = hasher.finish() else {
            self.cache.drop_partial(&self.digest);
            return Err(CacheError::Frame("the hashing thread failed".into()));
        };
        let actual = hex::encode(sha.finalize());
        if actual != self.digest {
            self.cache.drop_partial(&self.digest);
            return Err(CacheError::Mismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        let done = (|| {
            self.file.set_len(self.size)?;
            self.file.sync_all()?;
            std::fs::rename(
                self.cache.partial.join(&self.digest),
                self.cache.path(&self.digest),
            )?;
            File::open(&self.cache.dir)?.sync_all()
        })();
        if let Err(e) = done {
            self.cache.drop_partial(&self.digest);
            return Err(io("putting the image in place")(e));
        }
        let _ = std::fs::remove_file(self.cache.resume_path(&self.digest));
        Ok(self.size)
    }

    /// The transfer failed: the partial goes (a full disk, a bad frame).
    pub fn abandon(self) {
        self.cache.drop_partial(&self.digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut f = offset.to_be_bytes().to_vec();
        f.extend_from_slice(&(data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    fn image() -> (Vec<u8>, String) {
        let mut img = vec![0u8; 3 << 20];
        img[100..200].fill(7);
        img[(2 << 20)..(2 << 20) + 5000].fill(9);
        let digest = hex::encode(Sha256::digest(&img));
        (img, digest)
    }

    #[test]
    fn frames_in_any_chunks_make_the_image_with_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 30).unwrap();
        let (img, digest) = image();
        let mut body = frame(100, &img[100..200]);
        body.extend(frame(2 << 20, &img[(2 << 20)..(2 << 20) + 5000]));
        let mut r = cache
            .begin(&digest, img.len() as u64, 0, &|_| false)
            .unwrap();
        for chunk in body.chunks(7) {
            r.feed(Bytes::copy_from_slice(chunk)).unwrap();
        }
        assert_eq!(r.finish().unwrap(), img.len() as u64);
        assert_eq!(std::fs::read(cache.path(&digest)).unwrap(), img);
        assert!(matches!(
            cache.state(&digest).unwrap(),
            Some(ImageState::Cached { .. })
        ));
    }

    #[test]
    fn a_cut_body_resumes_and_a_corrupted_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 30).unwrap();
        let (img, digest) = image();
        let mut r = cache
            .begin(&digest, img.len() as u64, 0, &|_| false)
            .unwrap();
        let first = frame(100, &img[100..200]);
        let second = frame(2 << 20, &img[(2 << 20)..(2 << 20) + 5000]);
        r.feed(Bytes::copy_from_slice(&first)).unwrap();
        r.feed(Bytes::copy_from_slice(&second[..50])).unwrap();
        // Everything before the cut frame is there: the first frame, and the hole after it.
        assert_eq!(r.interrupted(), 2 << 20);
        assert_eq!(
            cache.state(&digest).unwrap(),
            Some(ImageState::Partial {
                size: img.len() as u64,
                resume_from: 2 << 20
            })
        );
        assert!(matches!(
            cache.begin(&digest, img.len() as u64, 0, &|_| false),
            Err(CacheError::WrongStart {
                got: 0,
                have: 0x200000
            })
        ));
        let mut r = cache
            .begin(&digest, img.len() as u64, 2 << 20, &|_| false)
            .unwrap();
        r.feed(Bytes::copy_from_slice(&second)).unwrap();
        r.finish().unwrap();
        assert_eq!(std::fs::read(cache.path(&digest)).unwrap(), img);

        // A flipped byte: refused, nothing kept.
        let (mut bad, digest2) = image();
        bad[150] ^= 1;
        std::fs::remove_file(cache.path(&digest)).unwrap();
        let mut r = cache
            .begin(&digest2, bad.len() as u64, 0, &|_| false)
            .unwrap();
        r.feed(Bytes::from(frame(100, &bad[100..200]))).unwrap();
        r.feed(Bytes::from(frame(
            2 << 20,
            &bad[(2 << 20)..(2 << 20) + 5000],
        )))
        .unwrap();
        assert!(matches!(r.finish(), Err(CacheError::Mismatch { .. })));
        assert_eq!(cache.state(&digest2).unwrap(), None);
    }

    #[test]
    fn hostile_frames_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 30).unwrap();
        let d = "ab".repeat(32);
        for body in [
            frame(10, &[]),
            frame(1000, &[1; 10]), // past the size of 100
            [frame(50, &[1; 10]), frame(40, &[1; 10])].concat(),
        ] {
            let mut r = cache.begin(&d, 100, 0, &|_| false).unwrap();
            assert!(r.feed(Bytes::from(body)).is_err());
            r.abandon();
        }
        let mut huge = 0u64.to_be_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut r = cache.begin(&d, 100, 0, &|_| false).unwrap();
        assert!(r.feed(Bytes::from(huge)).is_err());
        r.abandon();
        assert!(matches!(
            cache.begin(&d, u64::MAX, 0, &|_| false),
            Err(CacheError::TooBig { .. })
        ));
    }

    #[test]
    fn room_is_made_from_unused_images_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 10 << 20).unwrap();
        let a = "aa".repeat(32);
        let b = "bb".repeat(32);
        std::fs::write(cache.path(&a), vec![1u8; 4 << 20]).unwrap();
        std::fs::write(cache.path(&b), vec![1u8; 4 << 20]).unwrap();
        // b is used: only a can go.
        let used = |d: &str| d == "bb".repeat(32);
        cache.make_room(5 << 20, &used).unwrap();
        assert!(!cache.path(&a).exists());
        assert!(cache.path(&b).exists());
        assert!(matches!(
            cache.make_room(8 << 20, &used),
            Err(CacheError::TooBig { .. })
        ));
    }
}
