//! FAT (the EFI system partition), through the `fatfs` crate: copied out to a tree and written
//! back from one.
//!
//! FAT keeps no owners, modes, links or extended attributes; what it keeps — names (long names
//! included), contents, the directory structure, modification times (2-second steps), the volume
//! id and label — survives the round trip. The crate is a third-party parser of hostile input, so
//! every call runs under `catch_unwind` with bounded depth and entry counts: a panic or a cluster
//! chain that loops becomes an error naming the partition.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};
use serde::{Deserialize, Serialize};

use crate::disk::Extent;
use crate::error::{ImageError, IoContext, Result};
use crate::tree::{Counts, Meta, Sink, Time};

const MAX_DEPTH: usize = 64;
/// FAT allows 65,536 entries per directory; a chain that loops would yield them forever.
const MAX_DIR_ENTRIES: usize = 65_536;

/// What a FAT volume is, as needed to make an equivalent one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// `fat12`, `fat16` or `fat32`.
    pub kind: String,
    pub volume_id: u32,
    pub label: String,
    pub cluster_size: u32,
    pub size: u64,
    pub used_bytes: u64,
}

/// A byte range of a file as a seekable stream, the way `fatfs` wants its disk.
struct Stream {
    file: Arc<File>,
    start: u64,
    len: u64,
    pos: u64,
    writable: bool,
    /// Bytes it may still read. A sound volume is read about once; a cluster chain that loops
    /// (which the `fatfs` iterator would follow forever) runs this out instead.
    budget: u64,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        self.budget = self.budget.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other("read the volume over and over: its cluster chains loop")
        })?;
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the source image is read-only",
            ));
        }
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "past the end of the partition",
            ));
        }
        self.file.write_all_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Stream {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match pos {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

fn corrupt(at: &str, detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        fs: "FAT",
        at: at.to_string(),
        detail: detail.into(),
    }
}

/// Runs `f`, turning a panic inside `fatfs` into an error.
fn guarded<T>(at: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(corrupt(
            at,
            "the FAT reader gave up on malformed structures",
        ))
    })
}

/// Whether `part` starts with a FAT boot sector.
pub fn probe(part: &Extent) -> Result<bool> {
    if part.len() < 512 {
        return Ok(false);
    }
    let b = part.read_vec(0, 512)?;
    let sig = b[510] == 0x55 && b[511] == 0xaa;
    Ok(sig && (&b[54..59] == b"FAT12" || &b[54..59] == b"FAT16" || &b[82..87] == b"FAT32"))
}

fn open(part: &Extent, file: Arc<File>) -> io::Result<FileSystem<Stream>> {
    let stream = Stream {
        file,
        start: part.start(),
        len: part.len(),
        pos: 0,
        writable: false,
        budget: part.len().saturating_mul(4).saturating_add(64 << 20),
    };
    FileSystem::new(stream, FsOptions::new().update_accessed_date(false))
}

/// Reads the volume's description.
pub fn info(part: &Extent, disk: &Path) -> Result<Info> {
    let file = Arc::new(File::open(disk).ctx(|| format!("opening {}", disk.display()))?);
    guarded(part.name(), || {
        let fs = open(part, file).map_err(|e| corrupt(part.name(), e.to_string()))?;
        let stats = fs
            .stats()
            .map_err(|e| corrupt(part.name(), e.to_string()))?;
        let kind = match fs.fat_type() {
            fatfs::FatType::Fat12 => "fat12",
            fatfs::FatType::Fat16 => "fat16",
            fatfs::FatType::Fat32 => "fat32",
        };
        Ok(Info {
            kind: kind.into(),
            volume_id: fs.volume_id(),
            label: fs.volume_label().trim_end().to_string(),
            cluster_size: stats.cluster_size(),
            size: part.len(),
            used_bytes: u64::from(stats.total_clusters() - stats.free_clusters())
                * u64::from(stats.cluster_size()),
        })
    })
}

/// Copies the volume in `part` of the raw disk `disk` into `sink`.
pub fn copy_to(part: &Extent, disk: &Path, sink: &mut Sink) -> Result<Counts> {
    let file = Arc::new(File::open(disk).ctx(|| format!("opening {}", disk.display()))?);
    guarded(part.name(), || {
        let fs = open(part, file).map_err(|e| corrupt(part.name(), e.to_string()))?;
        let dir_meta = |mtime: Time| Meta {
            perm: 0o755,
            mtime,
            atime: mtime,
            ..Meta::default()
        };
        sink.set_root(&dir_meta(Time::default()))?;
        let mut stack = vec![(fs.root_dir(), None, 0usize)];
        let root = sink.root();
        let mut budget = part.len();
        while let Some((dir, pending, depth)) = stack.pop() {
            let host = match pending {
                Some(p) => sink.enter(p)?,
                None => root.clone(),
            };
            if depth > MAX_DEPTH {
                return Err(corrupt(
                    part.name(),
                    format!(
                        "directories nest deeper than {MAX_DEPTH} (a loop?) at {}",
                        host.path().display()
                    ),
                ));
            }
            for (n, entry) in dir.iter().enumerate() {
                if n > MAX_DIR_ENTRIES {
                    return Err(corrupt(
                        part.name(),
                        format!(
                            "directory {} has more than {MAX_DIR_ENTRIES} entries (a loop?)",
                            host.path().display()
                        ),
                    ));
                }
                let entry = entry
                    .map_err(|e| corrupt(part.name(), format!("{}: {e}", host.path().display())))?;
                let name = entry.file_name();
                if name == "."
                    || name == ".."
                    || entry
                        .attributes()
                        .contains(fatfs::FileAttributes::VOLUME_ID)
                {
                    continue;
                }
                let mtime = dos_time(entry.modified());
                if entry.is_dir() {
                    let child = sink.mkdir(&host, name.as_bytes(), &dir_meta(mtime))?;
                    stack.push((entry.to_dir(), Some(child), depth + 1));
                    continue;
                }
                let len = entry.len();
                budget = budget.checked_sub(len).ok_or_else(|| {
                    corrupt(
                        part.name(),
                        "files hold more data than the volume (shared clusters)",
                    )
                })?;
                let meta = Meta {
                    perm: 0o644,
                    mtime,
                    atime: mtime,
                    ..Meta::default()
                };
                sink.file(&host, name.as_bytes(), len, &meta, |data| {
                    let mut f = entry.to_file();
                    let mut buf = vec![0u8; 1 << 20];
                    let mut at = 0u64;
                    while at < len {
                        let n = f
                            .read(&mut buf)
                            .map_err(|e| corrupt(part.name(), format!("reading {name}: {e}")))?;
                        if n == 0 {
                            return Err(corrupt(
                                part.name(),
                                format!("{name} is shorter than its size"),
                            ));
                        }
                        data.write_at(at, &buf[..n])?;
                        at += n as u64;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(sink.counts())
    })
}

/// FAT times are local wall-clock times with no zone; they are taken as UTC both ways, so a
/// round trip keeps them exactly.
fn dos_time(dt: fatfs::DateTime) -> Time {
    let (y, m, d) = (
        i64::from(dt.date.year),
        i64::from(dt.date.month),
        i64::from(dt.date.day),
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = &dt.time;
    Time {
        sec: days * 86_400 + i64::from(t.hour) * 3600 + i64::from(t.min) * 60 + i64::from(t.sec),
        nsec: u32::from(t.millis) * 1_000_000,
    }
}

fn to_dos(t: Time) -> fatfs::DateTime {
    let days = t.sec.div_euclid(86_400);
    let secs = t.sec.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // FAT cannot say anything before 1980 or after 2107.
    let (y, m, d, secs) = if y < 1980 {
        (1980, 1, 1, 0)
    } else if y > 2107 {
        (2107, 12, 31, 86_399)
    } else {
        (y, m, d, secs)
    };
    fatfs::DateTime {
        date: fatfs::Date {
            year: y as u16,
            month: m as u16,
            day: d as u16,
        },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: (t.nsec / 1_000_000).min(999) as u16,
        },
    }
}

std::thread_local! {
    /// The time the next entry the writer creates should carry.
    static STAMP: std::cell::Cell<Option<fatfs::DateTime>> = const { std::cell::Cell::new(None) };
}

/// fatfs stamps new entries with "now" from a provider; this one answers with the time of the
/// entry being copied, so directories keep their times too.
#[derive(Debug)]
struct EntryTime;

static ENTRY_TIME: EntryTime = EntryTime;

impl fatfs::TimeProvider for EntryTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        STAMP.with(|s| s.get()).unwrap_or_else(|| {
            to_dos(Time {
                sec: 315_532_800,
                nsec: 0,
            })
        })
    }
}

/// Formats `len` bytes at `start` of `disk` as FAT like `info` and copies `tree` into it.
pub fn write(disk: &Path, start: u64, len: u64, info: &Info, tree: &Path) -> Result<()> {
    let file = Arc::new(
        File::options()
            .read(true)
            .write(true)
            .open(disk)
            .ctx(|| format!("opening {}", disk.display()))?,
    );
    let at = format!("the new FAT volume at byte {start}");
    let stream = || Stream {
        file: file.clone(),
        start,
        len,
        pos: 0,
        writable: true,
        budget: u64::MAX,
    };
    let mut label = [b' '; 11];
    for (i, b) in info.label.bytes().take(11).enumerate() {
        label[i] = b;
    }
    let fat_type = match info.kind.as_str() {
        "fat12" => fatfs::FatType::Fat12,
        "fat16" => fatfs::FatType::Fat16,
        _ => fatfs::FatType::Fat32,
    };
    let options = || {
        FormatVolumeOptions::new()
            .volume_id(info.volume_id)
            .volume_label(label)
    };
    // The source's type and cluster size when they fit the new size, else the crate's choice.
    fatfs::format_volume(
        stream(),
        options()
            .fat_type(fat_type)
            .bytes_per_cluster(info.cluster_size),
    )
    .or_else(|_| fatfs::format_volume(stream(), options()))
    .map_err(|e| ImageError::Tool {
        tool: "fatfs",
        detail: format!("formatting {at}: {e}"),
    })?;
    let fs = FileSystem::new(
        stream(),
        FsOptions::new()
            .update_accessed_date(false)
            .time_provider(&ENTRY_TIME),
    )
    .map_err(|e| ImageError::Tool {
        tool: "fatfs",
        detail: format!("opening {at}: {e}"),
    })?;
    let full = |e: io::Error, what: &Path| -> ImageError {
        if e.kind() == io::ErrorKind::Other && e.to_string().contains("No space") {
            ImageError::TooLarge {
                what: format!("the FAT tree {}", tree.display()),
                needed_mib: 0,
                allowed_mib: len >> 20,
            }
        } else {
            ImageError::Tool {
                tool: "fatfs",
                detail: format!("writing {}: {e}", what.display()),
            }
        }
    };
    let mut stack = vec![(tree.to_path_buf(), String::new())];
    while let Some((host, fat_path)) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&host)
            .ctx(|| format!("listing {}", host.display()))?
            .collect::<io::Result<_>>()
            .ctx(|| format!("listing {}", host.display()))?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name();
            let name = name.to_str().ok_or_else(|| ImageError::UnsafeEntry {
                path: e.path().display().to_string(),
                detail: "FAT names must be Unicode".into(),
            })?;
            let child = if fat_path.is_empty() {
                name.to_string()
            } else {
                format!("{fat_path}/{name}")
            };
            let md = e
                .metadata()
                .ctx(|| format!("reading {}", e.path().display()))?;
            let stamp = to_dos(Time {
                sec: md.mtime(),
                nsec: md.mtime_nsec() as u32,
            });
            STAMP.with(|s| s.set(Some(stamp)));
            if md.is_dir() {
                fs.root_dir()
                    .create_dir(&child)
                    .map_err(|err| full(err, &e.path()))?;
                stack.push((e.path(), child));
            } else if md.is_file() {
                let mut f = fs
                    .root_dir()
                    .create_file(&child)
                    .map_err(|err| full(err, &e.path()))?;
                let mut src =
                    File::open(e.path()).ctx(|| format!("opening {}", e.path().display()))?;
                // Writing stamps the file with the provider's time: the source's.
                io::copy(&mut src, &mut f).map_err(|err| full(err, &e.path()))?;
                f.flush().map_err(|err| full(err, &e.path()))?;
            } else {
                return Err(ImageError::UnsafeEntry {
                    path: e.path().display().to_string(),
                    detail: "FAT holds only files and directories".into(),
                });
            }
        }
    }
    STAMP.with(|s| s.set(None));
    fs.unmount().map_err(|e| ImageError::Tool {
        tool: "fatfs",
        detail: format!("closing {at}: {e}"),
    })
}
