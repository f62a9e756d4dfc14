//! A disk's layout: its partition table and what each partition holds. [`copy_out`] turns a raw
//! disk into a layout and one tree per file system; [`copy_in`] writes a new raw disk from a
//! layout and its trees — a new sector layout (every partition 1 MiB-aligned, each file system
//! sized as asked) with logically equivalent file systems that keep their identity (UUIDs,
//! labels, partition numbers, types and GUIDs, MBR boot code), so `/etc/fstab`, `root=` and
//! bootloaders that name them still find them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::disk::Extent;
use crate::error::{ImageError, IoContext, Result};
use crate::partition::{self, Partition, Scheme, Table};
use crate::tree::{Counts, Sink};
use crate::{ext4, fat};

const MIB: u64 = 1 << 20;

/// What one partition (or the whole disk) holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "fs")]
pub enum Content {
    /// ext2/3/4, copied file by file into `tree`.
    Ext { info: ext4::Info, tree: PathBuf },
    /// FAT (an EFI system partition), copied file by file into `tree`.
    Fat { info: fat::Info, tree: PathBuf },
    /// Anything else (a BIOS boot partition, swap, a file system this crate does not read),
    /// copied byte for byte into `file`, holes kept.
    Raw { file: PathBuf },
}

/// One partition and its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// `None` for a file system on the whole disk.
    pub partition: Option<Partition>,
    pub content: Content,
    /// What the copy created (file systems only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
}

impl Volume {
    pub fn size(&self) -> u64 {
        match (&self.partition, &self.content) {
            (Some(p), _) => p.size,
            (None, Content::Ext { info, .. }) => info.size(),
            (None, Content::Fat { info, .. }) => info.size,
            (None, Content::Raw { .. }) => 0,
        }
    }

    /// The tree of a file system, if this volume has one.
    pub fn tree(&self) -> Option<&Path> {
        match &self.content {
            Content::Ext { tree, .. } | Content::Fat { tree, .. } => Some(tree),
            Content::Raw { .. } => None,
        }
    }

    /// `partition 3` or `disk`, for messages.
    pub fn name(&self) -> String {
        match &self.partition {
            Some(p) => format!("partition {}", p.number),
            None => "disk".into(),
        }
    }
}

/// A disk: its table and volumes. Paths are relative to the working directory of the copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub disk_size: u64,
    pub table: Table,
    pub volumes: Vec<Volume>,
}

/// How big the new file systems are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Sizing {
    /// Every partition keeps its size.
    #[default]
    Same,
    /// ext file systems shrink (or grow) to what their trees use plus `margin_mib`.
    Fit { margin_mib: u64 },
    /// The disk becomes `disk_mib`; the last ext file system takes the difference.
    Disk { disk_mib: u64 },
}

/// Copies every volume of the raw disk `disk` out under `work` (which must exist and be empty
/// except for `disk` itself).
pub fn copy_out(disk: &Path, work: &Path) -> Result<Layout> {
    let whole = Extent::open(disk)?;
    let table = partition::read(&whole)?;
    let mut volumes = Vec::new();
    let parts: Vec<Option<Partition>> = if table.scheme == Scheme::None {
        vec![None]
    } else {
        table.partitions.iter().cloned().map(Some).collect()
    };
    for p in parts {
        let (extent, name) = match &p {
            Some(p) => (
                whole.slice(p.start, p.size, format!("partition {}", p.number))?,
                format!("p{}", p.number),
            ),
            None => (whole.clone(), "disk".to_string()),
        };
        let volume = copy_volume(disk, &extent, work, &name, p)?;
        volumes.push(volume);
    }
    Ok(Layout {
        disk_size: whole.len(),
        table,
        volumes,
    })
}

fn copy_volume(
    disk: &Path,
    extent: &Extent,
    work: &Path,
    name: &str,
    p: Option<Partition>,
) -> Result<Volume> {
    if let Some(fs) = ext4::Ext4::probe(extent)? {
        let tree = PathBuf::from(name);
        std::fs::create_dir(work.join(&tree))
            .ctx(|| format!("creating {}", work.join(&tree).display()))?;
        let mut sink = Sink::new(&work.join(&tree), fs.info().size())?;
        fs.copy_to(&mut sink)?;
        let counts = sink.finish()?;
        return Ok(Volume {
            partition: p,
            content: Content::Ext {
                info: fs.info().clone(),
                tree,
            },
            counts: Some(counts),
        });
    }
    if fat::probe(extent)? {
        let info = fat::info(extent, disk)?;
        let tree = PathBuf::from(name);
        std::fs::create_dir(work.join(&tree))
            .ctx(|| format!("creating {}", work.join(&tree).display()))?;
        let mut sink = Sink::new(&work.join(&tree), extent.len())?;
        fat::copy_to(extent, disk, &mut sink)?;
        let counts = sink.finish()?;
        return Ok(Volume {
            partition: p,
            content: Content::Fat { info, tree },
            counts: Some(counts),
        });
    }
    if p.is_none() {
        return Err(ImageError::Unsupported {
            fs: "disk",
            at: "disk".into(),
            detail: "no partition table and no file system this reader knows (ext2/3/4, FAT)"
                .into(),
        });
    }
    let file = PathBuf::from(format!("{name}.raw"));
    copy_raw(extent, &work.join(&file))?;
    Ok(Volume {
        partition: p,
        content: Content::Raw { file },
        counts: None,
    })
}

/// Copies a partition byte for byte, leaving all-zero stretches as holes.
fn copy_raw(extent: &Extent, to: &Path) -> Result<()> {
    let out = File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .ctx(|| format!("creating {}", to.display()))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < extent.len() {
        let n = (extent.len() - at).min(MIB) as usize;
        extent.read_at(at, &mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..n], at)
                .ctx(|| format!("writing {}", to.display()))?;
        }
        at += n as u64;
    }
    out.set_len(extent.len())
        .ctx(|| format!("sizing {}", to.display()))
}

/// The size an ext file system needs for `tree`: its data and inodes, the journal, and room
/// for the metadata mke2fs lays out.
fn ext_needed(tree: &Path, info: &ext4::Info) -> Result<u64> {
    let (data, inodes) = crate::tree::usage(tree, info.block_size)?;
    let journal = if info.features.iter().any(|f| f == "has_journal") {
        64 * MIB
    } else {
        0
    };
    let metadata = inodes * 2 * info.inode_size + data / 32;
    Ok((data + metadata + journal + 16 * MIB).next_multiple_of(MIB))
}

/// Writes a new raw disk at `out` (created, must not exist) from `layout`, whose trees and raw
/// files are under `work`. Returns the new layout.
pub fn copy_in(layout: &Layout, work: &Path, out: &Path, sizing: Sizing) -> Result<Layout> {
    if out.symlink_metadata().is_ok() {
        return Err(ImageError::Invalid(format!(
            "{} already exists",
            out.display()
        )));
    }
    let result = write_disk(layout, work, out, sizing);
    if result.is_err() {
        // Nothing half-written stays (the file systems being built are temporary files).
        let _ = std::fs::remove_file(out);
    }
    result
}

fn write_disk(layout: &Layout, work: &Path, out: &Path, sizing: Sizing) -> Result<Layout> {
    let mut sizes = Vec::new();
    for v in &layout.volumes {
        let size = match (&v.content, sizing) {
            (Content::Ext { info, tree }, Sizing::Fit { margin_mib }) => {
                ext_needed(&work.join(tree), info)?.saturating_add(margin_mib.saturating_mul(MIB))
            }
            _ => v.size().next_multiple_of(MIB),
        };
        sizes.push(size);
    }
    let whole_disk = layout.table.scheme == Scheme::None;
    let first = if whole_disk { 0 } else { MIB };
    let tail = match layout.table.scheme {
        Scheme::Gpt { .. } => MIB,
        _ => 0,
    };
    let total = |sizes: &[u64]| {
        sizes
            .iter()
            .try_fold(first + tail, |a, &b| a.checked_add(b))
            .ok_or_else(|| {
                ImageError::Invalid("the disk's partitions add up to more than 16 EiB".into())
            })
    };
    let used = total(&sizes)?;
    if let Sizing::Disk { disk_mib } = sizing {
        let target = disk_mib
            .checked_mul(MIB)
            .ok_or_else(|| ImageError::Invalid(format!("a disk of {disk_mib} MiB is too large")))?;
        let Some(last_ext) = layout
            .volumes
            .iter()
            .rposition(|v| matches!(v.content, Content::Ext { .. }))
        else {
            return Err(ImageError::Invalid(
                "resizing the disk needs an ext file system to take the difference".into(),
            ));
        };
        if target < used {
            let needed = ext_needed(
                &work.join(layout.volumes[last_ext].tree().expect("ext has a tree")),
                match &layout.volumes[last_ext].content {
                    Content::Ext { info, .. } => info,
                    _ => unreachable!(),
                },
            )?;
            let shrink = used - target;
            if sizes[last_ext] < shrink || sizes[last_ext] - shrink < needed {
                return Err(ImageError::TooLarge {
                    what: format!("the disk's {}", layout.volumes[last_ext].name()),
                    needed_mib: (used - sizes[last_ext] + needed).div_ceil(MIB),
                    allowed_mib: disk_mib,
                });
            }
            sizes[last_ext] -= shrink;
        } else {
            sizes[last_ext] += target - used;
        }
    }
    let disk_size = total(&sizes)?;

    // Partitions in their old order, each 1 MiB-aligned after the previous one.
    let mut order: Vec<usize> = (0..layout.volumes.len()).collect();
    order.sort_by_key(|&i| layout.volumes[i].partition.as_ref().map_or(0, |p| p.start));
    let mut volumes = layout.volumes.clone();
    let mut at = first;
    for &i in &order {
        if let Some(p) = volumes[i].partition.as_mut() {
            p.start = at;
            p.size = sizes[i];
        }
        at += sizes[i];
    }
    let table = Table {
        partitions: volumes.iter().filter_map(|v| v.partition.clone()).collect(),
        ..layout.table.clone()
    };

    let file = File::options()
        .write(true)
        .create_new(true)
        .open(out)
        .ctx(|| format!("creating {}", out.display()))?;
    file.set_len(disk_size)
        .ctx(|| format!("sizing {}", out.display()))?;
    for (offset, bytes) in partition::encode(&table, disk_size)? {
        file.write_all_at(&bytes, offset)
            .ctx(|| format!("writing the partition table of {}", out.display()))?;
    }
    drop(file);
    for (i, v) in volumes.iter_mut().enumerate() {
        let start = v.partition.as_ref().map_or(0, |p| p.start);
        let size = sizes[i];
        let name = v.name();
        match &mut v.content {
            Content::Ext { info, tree } => {
                // Removed when dropped, on success and on every error.
                let fs = tempfile::Builder::new()
                    .prefix("fs-")
                    .suffix(".ext")
                    .tempfile_in(work)
                    .ctx(|| format!("creating a file system in {}", work.display()))?
                    .into_temp_path();
                let same = matches!(sizing, Sizing::Same);
                build_ext(info, &work.join(&*tree), &fs, size, same)?;
                splice(&fs, out, start)?;
                drop(fs);
                let new = ext4::Ext4::probe(&Extent::open(out)?.slice(start, size, name)?)?
                    .ok_or_else(|| ImageError::Tool {
                        tool: "mke2fs",
                        detail: "no file system where it was written".into(),
                    })?;
                *info = new.info().clone();
            }
            Content::Fat { info, tree } => {
                fat::write(out, start, size, info, &work.join(&*tree))?;
                info.size = size;
            }
            Content::Raw { file } => splice(&work.join(&*file), out, start)?,
        }
    }
    Ok(Layout {
        disk_size,
        table,
        volumes,
    })
}

/// Makes an ext file system of `size` bytes in the new file `fs` from `tree`, like `info`
/// (kind, block and inode size, features, UUID, label, hash seed), and checks it with
/// `e2fsck -fn`.
fn build_ext(info: &ext4::Info, tree: &Path, fs: &Path, size: u64, same_size: bool) -> Result<()> {
    File::options()
        .write(true)
        .open(fs)
        .ctx(|| format!("opening {}", fs.display()))?
        .set_len(size)
        .ctx(|| format!("sizing {}", fs.display()))?;
    // Inodes: as many as the source had when the size is the same, and always room for the tree
    // (many small files can run out of inodes long before blocks).
    let (data, tree_inodes) = crate::tree::usage(tree, info.block_size)?;
    let inodes =
        (tree_inodes + tree_inodes / 4 + 1024).max(if same_size { info.inodes } else { 0 });
    let root = std::fs::symlink_metadata(tree).ctx(|| format!("reading {}", tree.display()))?;
    // Features the kernel or mke2fs sets by itself, or that cannot be asked for.
    let skip = ["needs_recovery", "orphan_present", "mmp", "stable_inodes"];
    let features: Vec<&str> = info
        .features
        .iter()
        .map(String::as_str)
        .filter(|f| !skip.contains(f))
        .collect();
    let reserved = if info.blocks > 0 {
        info.reserved_blocks as f64 * 100.0 / info.blocks as f64
    } else {
        5.0
    };
    let out = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            &info.kind,
            "-b",
            &info.block_size.to_string(),
            "-I",
            &info.inode_size.to_string(),
        ])
        .args([
            "-U",
            &info.uuid.to_string(),
            "-L",
            &info.label,
            "-M",
            &info.last_mounted,
        ])
        .args(["-m", &format!("{reserved:.2}")])
        .arg("-O")
        .arg(format!("none,{}", features.join(",")))
        .args(["-N", &inodes.to_string()])
        .arg("-E")
        .arg(format!(
            "hash_seed={},nodiscard,root_owner={}:{}",
            info.hash_seed,
            std::os::unix::fs::MetadataExt::uid(&root),
            std::os::unix::fs::MetadataExt::gid(&root)
        ))
        .arg("-d")
        .arg(tree)
        .arg(fs)
        .output()
        .ctx(|| "running mke2fs".into())?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Could not allocate block")
            || stderr.contains("No space left")
            || stderr.contains("Could not allocate inode")
        {
            return Err(ImageError::TooLarge {
                what: format!(
                    "the tree {} ({tree_inodes} files and directories)",
                    tree.display()
                ),
                needed_mib: data.div_ceil(MIB),
                allowed_mib: size / MIB,
            });
        }
        return Err(ImageError::Tool {
            tool: "mke2fs",
            detail: stderr.trim().to_string(),
        });
    }
    fix_times(tree, fs)?;
    let check = Command::new("e2fsck")
        .arg("-fn")
        .arg(fs)
        .output()
        .ctx(|| "running e2fsck".into())?;
    if !check.status.success() {
        return Err(ImageError::Tool {
            tool: "e2fsck",
            detail: format!(
                "the new file system is not clean: {}",
                String::from_utf8_lossy(&check.stdout).trim()
            ),
        });
    }
    Ok(())
}

/// mke2fs 1.47.0 copies times in whole seconds, without the epoch bits that carry dates past
/// 2038, and leaves the root directory's alone. Where the new file system differs from the tree,
/// debugfs sets the raw fields (it recomputes the inode checksums).
fn fix_times(tree: &Path, fs: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let new = ext4::Ext4::probe(&Extent::open(fs)?)?.ok_or_else(|| ImageError::Tool {
        tool: "mke2fs",
        detail: "wrote no file system".into(),
    })?;
    let extra = new.info().inode_size > 128;
    // mke2fs gives the root directory 0755 whatever the tree's says (Fedora's is 0555).
    let root_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::symlink_metadata(tree)
            .ctx(|| format!("reading {}", tree.display()))?
            .permissions(),
    );
    let mut script = format!("sif <2> mode 0{:o}\n", 0o040000 | (root_mode & 0o7777));
    new.walk(|path, ino, atime, mtime| {
        let p = tree.join(std::ffi::OsStr::from_bytes(path));
        // mke2fs adds lost+found when the tree has none (e2fsck insists on one).
        let md = match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == b"lost+found" => {
                return Ok(());
            }
            r => r.ctx(|| format!("reading {}", p.display()))?,
        };
        let want = [
            (
                "atime",
                crate::tree::Time {
                    sec: md.atime(),
                    nsec: md.atime_nsec() as u32,
                },
                atime,
            ),
            (
                "mtime",
                crate::tree::Time {
                    sec: md.mtime(),
                    nsec: md.mtime_nsec() as u32,
                },
                mtime,
            ),
        ];
        for (field, want, have) in want {
            if want == have || (!extra && want.sec == have.sec) {
                continue;
            }
            let lo = want.sec as i32;
            script.push_str(&format!("sif <{ino}> {field} {:#x}\n", lo as u32));
            if extra {
                let epoch = ((want.sec - i64::from(lo)) >> 32) as u32 & 3;
                script.push_str(&format!(
                    "sif <{ino}> {field}_extra {:#x}\n",
                    epoch | (want.nsec << 2)
                ));
            }
        }
        Ok(())
    })?;
    let script_file = fs.with_extension("times");
    std::fs::write(&script_file, &script).ctx(|| format!("writing {}", script_file.display()))?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_file)
        .arg(fs)
        .output();
    let _ = std::fs::remove_file(&script_file);
    let out = out.ctx(|| "running debugfs".into())?;
    let errors: Vec<_> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(ImageError::Tool {
            tool: "debugfs",
            detail: format!("setting times: {}", errors.join("; ")),
        });
    }
    Ok(())
}

/// Copies the data of `from` into `to` at `offset`, skipping holes.
fn splice(from: &Path, to: &Path, offset: u64) -> Result<()> {
    let src = File::open(from).ctx(|| format!("opening {}", from.display()))?;
    let dst = File::options()
        .write(true)
        .open(to)
        .ctx(|| format!("opening {}", to.display()))?;
    let len = src
        .metadata()
        .ctx(|| format!("reading {}", from.display()))?
        .len();
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(&src, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => {
                return Err(ImageError::Io {
                    what: format!("seeking in {}", from.display()),
                    source: e.into(),
                });
            }
        };
        let hole = rustix::fs::seek(&src, rustix::fs::SeekFrom::Hole(data)).map_err(|e| {
            ImageError::Io {
                what: format!("seeking in {}", from.display()),
                source: e.into(),
            }
        })?;
        // In the kernel, without a round trip through user space.
        let (mut at, mut out) = (data, offset + data);
        while at < hole {
            let want = (hole - at).min(1 << 30) as usize;
            let n = rustix::fs::copy_file_range(&src, Some(&mut at), &dst, Some(&mut out), want)
                .map_err(|e| ImageError::Io {
                    what: format!("copying {} into {}", from.display(), to.display()),
                    source: e.into(),
                })?;
            if n == 0 {
                return Err(ImageError::Io {
                    what: format!("copying {} into {}", from.display(), to.display()),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
        }
        pos = hole;
    }
    Ok(())
}

/// Converts an image to a raw file with `qemu-img` (holes kept).
pub fn to_raw(image: &Path, format: &str, raw: &Path) -> Result<()> {
    run_qemu_img(&["convert", "-q", "-f", format, "-O", "raw"], image, raw)
}

/// Converts a raw disk to qcow2 with `qemu-img`.
pub fn to_qcow2(raw: &Path, qcow2: &Path) -> Result<()> {
    run_qemu_img(
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
        ],
        raw,
        qcow2,
    )
}

fn run_qemu_img(args: &[&str], from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(from)
        .arg(to)
        .output()
        .ctx(|| "running qemu-img".into())?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool: "qemu-img",
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
