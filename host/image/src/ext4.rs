//! A reader for ext2, ext3 and ext4, in Rust, that copies a file system out to a [`Sink`]
//! faithfully: owners, modes, nanosecond times, symlinks, hard links, extended attributes (POSIX
//! ACLs converted to the VFS format), device nodes, fifos, sockets, holes, and names that are not
//! UTF-8.
//!
//! No kernel mount: the image is hostile input, and a crafted ext4 is a classic way into a
//! kernel. Every structure is bounds-checked against the partition; every block a file maps must
//! lie inside the file system; a directory reached twice is a loop; data written is capped at the
//! file system's size. Checksums are not verified (e2fsck does that for the image we write).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::disk::{Extent, le16, le32};
use crate::error::{ImageError, Result};
use crate::tree::{Counts, Dir, Meta, Node, Sink, Time};

const MAGIC: u16 = 0xef53;
const ROOT_INO: u32 = 2;
/// Deeper than any real tree; bounds the walk.
const MAX_DEPTH: usize = 1024;
/// Entries in one directory.
const MAX_DIR_ENTRIES: usize = 4 << 20;
const MAX_XATTR_VALUE: usize = 64 << 10;
const MAX_SYMLINK: u64 = 4096;
/// Runs of blocks in one file: far more fragments than any real file has.
const MAX_RUNS: usize = 4 << 20;
const EA_INODE_FL: u32 = 0x20_0000;

// Feature bits (lib/ext2fs/ext2_fs.h).
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_COMPRESSION: u32 = 0x1;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_DIRDATA: u32 = 0x1000;
const INCOMPAT_ENCRYPT: u32 = 0x10000;
const INCOMPAT_CASEFOLD: u32 = 0x20000;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;

const EXTENTS_FL: u32 = 0x80000;
const HUGE_FILE_FL: u32 = 0x40000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const ENCRYPT_FL: u32 = 0x800;

/// Feature names as mke2fs spells them, by (word, bit): 0 compat, 1 incompat, 2 ro_compat.
const FEATURES: &[(u8, u32, &str)] = &[
    (0, 0x1, "dir_prealloc"),
    (0, 0x2, "imagic_inodes"),
    (0, 0x4, "has_journal"),
    (0, 0x8, "ext_attr"),
    (0, 0x10, "resize_inode"),
    (0, 0x20, "dir_index"),
    (0, 0x200, "sparse_super2"),
    (0, 0x400, "fast_commit"),
    (0, 0x800, "stable_inodes"),
    (0, 0x1000, "orphan_file"),
    (1, 0x2, "filetype"),
    (1, 0x10, "meta_bg"),
    (1, 0x40, "extent"),
    (1, 0x80, "64bit"),
    (1, 0x100, "mmp"),
    (1, 0x200, "flex_bg"),
    (1, 0x400, "ea_inode"),
    (1, 0x2000, "metadata_csum_seed"),
    (1, 0x4000, "large_dir"),
    (1, 0x8000, "inline_data"),
    (2, 0x1, "sparse_super"),
    (2, 0x2, "large_file"),
    (2, 0x8, "huge_file"),
    (2, 0x10, "uninit_bg"),
    (2, 0x20, "dir_nlink"),
    (2, 0x40, "extra_isize"),
    (2, 0x100, "quota"),
    (2, 0x200, "bigalloc"),
    (2, 0x400, "metadata_csum"),
    (2, 0x2000, "project"),
    (2, 0x8000, "verity"),
];

/// What a file system is, as needed to make an equivalent one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// `ext2`, `ext3` or `ext4`.
    pub kind: String,
    pub uuid: Uuid,
    pub label: String,
    pub block_size: u64,
    pub inode_size: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u64,
    pub free_inodes: u64,
    pub reserved_blocks: u64,
    /// The features mke2fs names, e.g. `has_journal`, `extent`, `metadata_csum`.
    pub features: Vec<String>,
    /// The directory-hash seed, so hashed directories keep their order.
    pub hash_seed: Uuid,
    /// Where it was last mounted (`/`, `/boot`), when recorded.
    pub last_mounted: String,
}

impl Info {
    pub fn size(&self) -> u64 {
        self.blocks * self.block_size
    }

    pub fn used_bytes(&self) -> u64 {
        (self.blocks - self.free_blocks) * self.block_size
    }
}

/// An opened ext2/3/4 file system.
pub struct Ext4 {
    part: Extent,
    info: Info,
    bs: u64,
    inode_size: u64,
    inodes_per_group: u32,
    inode_tables: Vec<u64>,
    ro_compat: u32,
    /// Blocks mapped so far (data and the index or indirect blocks that map them). In a sound
    /// file system every block belongs to one file, so this never exceeds its size; a hostile one
    /// that maps the same blocks again and again is stopped here, in time and in memory.
    mapped: std::cell::Cell<u64>,
}

/// One inode, as much of it as copying needs.
struct Inode {
    ino: u32,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    links: u16,
    blocks: u64,
    flags: u32,
    block: [u8; 60],
    file_acl: u64,
    atime: Time,
    mtime: Time,
    /// The in-inode extended attribute area (after `i_extra_isize`).
    extra_xattrs: Vec<u8>,
}

/// An extended attribute as stored: (name index, name without prefix, value).
type RawXattr = (u8, Vec<u8>, Vec<u8>);

/// One run of a file's blocks: `len` blocks from logical block `logical` at physical `physical`.
#[derive(Debug, Clone, Copy)]
struct Run {
    logical: u64,
    physical: u64,
    len: u64,
    /// Allocated but unwritten (reads as zeros): kept as a hole.
    unwritten: bool,
}

impl Ext4 {
    /// Checks for an ext2/3/4 superblock in `part`; `Ok(None)` when there is none.
    pub fn probe(part: &Extent) -> Result<Option<Ext4>> {
        if part.len() < 2048 {
            return Ok(None);
        }
        let sb = part.read_vec(1024, 1024)?;
        if le16(&sb, 56) != MAGIC {
            return Ok(None);
        }
        Self::open(part.clone(), &sb).map(Some)
    }

    fn corrupt(&self, detail: impl Into<String>) -> ImageError {
        corrupt(&self.part, detail)
    }

    fn open(part: Extent, sb: &[u8]) -> Result<Self> {
        let c = |d: String| corrupt(&part, d);
        let log = le32(sb, 24);
        if log > 6 {
            return Err(c(format!("block size 2^{} is out of range", 10 + log)));
        }
        let bs = 1024u64 << log;
        let (compat, incompat, ro_compat) = (le32(sb, 92), le32(sb, 96), le32(sb, 100));
        let unsupported = |d: &str| ImageError::Unsupported {
            fs: "ext4",
            at: part.name().to_string(),
            detail: d.to_string(),
        };
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Err(unsupported(
                "this is an external journal, not a file system",
            ));
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(unsupported(
                "the file system was not unmounted cleanly and its journal needs replaying; shut the model VM down cleanly (or run e2fsck on the image) and import it again",
            ));
        }
        for (bit, what) in [
            (INCOMPAT_COMPRESSION, "compression"),
            (INCOMPAT_DIRDATA, "dirdata"),
            (
                INCOMPAT_ENCRYPT,
                "encryption (file contents cannot be copied faithfully)",
            ),
            (
                INCOMPAT_CASEFOLD,
                "case-insensitive directories (the host tree cannot keep them)",
            ),
        ] {
            if incompat & bit != 0 {
                return Err(unsupported(what));
            }
        }
        let known_incompat = FEATURES.iter().filter(|f| f.0 == 1).fold(0, |a, f| a | f.1);
        if incompat & !known_incompat != 0 {
            return Err(unsupported(&format!(
                "incompatible features {:#x}",
                incompat & !known_incompat
            )));
        }
        let sixty_four = incompat & INCOMPAT_64BIT != 0;
        let blocks = u64::from(le32(sb, 4))
            | if sixty_four {
                u64::from(le32(sb, 0x150)) << 32
            } else {
                0
            };
        let reserved = u64::from(le32(sb, 8))
            | if sixty_four {
                u64::from(le32(sb, 0x154)) << 32
            } else {
                0
            };
        let free_blocks = u64::from(le32(sb, 12))
            | if sixty_four {
                u64::from(le32(sb, 0x158)) << 32
            } else {
                0
            };
        let inodes = le32(sb, 0);
        let first_data = u64::from(le32(sb, 20));
        let blocks_per_group = u64::from(le32(sb, 32));
        let inodes_per_group = le32(sb, 40);
        let rev = le32(sb, 76);
        let inode_size = if rev == 0 {
            128
        } else {
            u64::from(le16(sb, 88))
        };
        if blocks == 0 || blocks.checked_mul(bs).is_none_or(|b| b > part.len()) {
            return Err(c(format!(
                "it claims {blocks} blocks of {bs} bytes but its partition has {} bytes",
                part.len()
            )));
        }
        if blocks_per_group < 256
            || blocks_per_group > 8 * bs
            || inodes_per_group == 0
            || u64::from(inodes_per_group) > 8 * bs
        {
            return Err(c(format!(
                "{blocks_per_group} blocks and {inodes_per_group} inodes per group"
            )));
        }
        if !inode_size.is_power_of_two() || inode_size < 128 || inode_size > bs {
            return Err(c(format!("inode size {inode_size}")));
        }
        if first_data >= blocks {
            return Err(c(format!("first data block {first_data}")));
        }
        let groups = (blocks - first_data).div_ceil(blocks_per_group);
        if u64::from(inodes) > groups * u64::from(inodes_per_group) || inodes < ROOT_INO {
            return Err(c(format!(
                "{inodes} inodes in {groups} groups of {inodes_per_group}"
            )));
        }
        let desc_size = if sixty_four {
            u64::from(le16(sb, 254))
        } else {
            32
        };
        if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return Err(c(format!("group descriptor size {desc_size}")));
        }
        let per_block = bs / desc_size;
        let meta_bg = incompat & INCOMPAT_META_BG != 0;
        let first_meta_bg = u64::from(le32(sb, 260));
        let sparse = ro_compat & RO_COMPAT_SPARSE_SUPER != 0;
        let table_blocks = (u64::from(inodes_per_group) * inode_size).div_ceil(bs);
        let mut inode_tables = Vec::with_capacity(groups as usize);
        let mut desc_block = Vec::new();
        let mut loaded = u64::MAX;
        for g in 0..groups {
            let db = g / per_block;
            if db != loaded {
                let block = if !meta_bg || db < first_meta_bg {
                    first_data + 1 + db
                } else {
                    let group = db * per_block;
                    first_data + group * blocks_per_group + u64::from(has_super(group, sparse))
                };
                if block >= blocks {
                    return Err(c(format!(
                        "group descriptor block {block} is outside the file system"
                    )));
                }
                desc_block = part.read_vec(block * bs, bs as usize)?;
                loaded = db;
            }
            let d = &desc_block[((g % per_block) * desc_size) as usize..][..desc_size as usize];
            let table = u64::from(le32(d, 8))
                | if desc_size >= 64 {
                    u64::from(le32(d, 0x28)) << 32
                } else {
                    0
                };
            if table == 0 || table.saturating_add(table_blocks) > blocks {
                return Err(c(format!(
                    "group {g}'s inode table at block {table} is outside the file system"
                )));
            }
            inode_tables.push(table);
        }
        let kind =
            if incompat & !(INCOMPAT_FILETYPE | INCOMPAT_META_BG) != 0 || ro_compat & !0x7 != 0 {
                "ext4"
            } else if compat & COMPAT_HAS_JOURNAL != 0 {
                "ext3"
            } else {
                "ext2"
            };
        let words = [compat, incompat, ro_compat];
        let features = FEATURES
            .iter()
            .filter(|(w, bit, _)| words[*w as usize] & bit != 0)
            .map(|(_, _, n)| n.to_string())
            .collect();
        let text = |b: &[u8]| {
            String::from_utf8_lossy(b.split(|&x| x == 0).next().unwrap_or(&[])).into_owned()
        };
        let info = Info {
            kind: kind.into(),
            uuid: Uuid::from_slice(&sb[104..120]).expect("16 bytes"),
            label: text(&sb[120..136]),
            block_size: bs,
            inode_size,
            blocks,
            free_blocks: free_blocks.min(blocks),
            inodes: u64::from(inodes),
            free_inodes: u64::from(le32(sb, 16)).min(u64::from(inodes)),
            reserved_blocks: reserved.min(blocks),
            features,
            hash_seed: Uuid::from_slice(&sb[0xec..0xfc]).expect("16 bytes"),
            last_mounted: text(&sb[136..200]),
        };
        Ok(Self {
            part,
            info,
            bs,
            inode_size,
            inodes_per_group,
            inode_tables,
            ro_compat,
            mapped: std::cell::Cell::new(0),
        })
    }

    pub fn info(&self) -> &Info {
        &self.info
    }

    fn inode(&self, ino: u32) -> Result<Inode> {
        if ino == 0 || u64::from(ino) > self.info.inodes {
            return Err(self.corrupt(format!("inode number {ino} is out of range")));
        }
        let (group, index) = (
            (ino - 1) / self.inodes_per_group,
            (ino - 1) % self.inodes_per_group,
        );
        let at = self.inode_tables[group as usize] * self.bs + u64::from(index) * self.inode_size;
        let b = self.part.read_vec(at, self.inode_size as usize)?;
        let extra = if self.inode_size > 128 {
            u64::from(le16(&b, 128))
        } else {
            0
        };
        if extra % 4 != 0 || 128 + extra > self.inode_size {
            return Err(self.corrupt(format!("inode {ino}: extra size {extra}")));
        }
        let time = |base: usize, extra_at: u64| {
            let sec = i64::from(le32(&b, base) as i32);
            if extra >= extra_at + 4 - 128 && self.inode_size >= extra_at + 4 {
                let x = le32(&b, extra_at as usize);
                Time {
                    sec: sec + (i64::from(x & 3) << 32),
                    nsec: (x >> 2).min(999_999_999),
                }
            } else {
                Time { sec, nsec: 0 }
            }
        };
        let flags = le32(&b, 32);
        let blocks_lo = u64::from(le32(&b, 28)) | u64::from(le16(&b, 116)) << 32;
        let blocks = if self.ro_compat & RO_COMPAT_HUGE_FILE != 0 && flags & HUGE_FILE_FL != 0 {
            blocks_lo * (self.bs / 512)
        } else {
            blocks_lo
        };
        let xattr_start = (128 + extra) as usize;
        Ok(Inode {
            ino,
            mode: le16(&b, 0),
            uid: u32::from(le16(&b, 2)) | u32::from(le16(&b, 120)) << 16,
            gid: u32::from(le16(&b, 24)) | u32::from(le16(&b, 122)) << 16,
            size: u64::from(le32(&b, 4)) | u64::from(le32(&b, 108)) << 32,
            links: le16(&b, 26),
            blocks,
            flags,
            block: b[40..100].try_into().expect("60 bytes"),
            file_acl: u64::from(le32(&b, 104)) | u64::from(le16(&b, 118)) << 32,
            atime: time(8, 140),
            mtime: time(16, 136),
            extra_xattrs: b[xattr_start..].to_vec(),
        })
    }

    /// The runs of blocks a file maps, checked to lie inside the file system.
    /// Counts `n` more mapped blocks against the file system's size.
    fn account(&self, inode: &Inode, n: u64) -> Result<()> {
        let total = self.mapped.get().saturating_add(n);
        self.mapped.set(total);
        if total > self.info.blocks.saturating_mul(2) {
            return Err(self.corrupt(format!(
                "inode {} maps blocks that other files map too (more blocks mapped than the file system has)",
                inode.ino
            )));
        }
        Ok(())
    }

    fn runs(&self, inode: &Inode) -> Result<Vec<Run>> {
        let nblocks = inode.size.div_ceil(self.bs);
        let mut runs = Vec::new();
        if inode.flags & EXTENTS_FL != 0 {
            self.extent_node(inode, &inode.block, 0, &mut runs)?;
        } else {
            self.indirect(inode, nblocks, &mut runs)?;
        }
        for r in &runs {
            if r.physical
                .checked_add(r.len)
                .is_none_or(|end| end > self.info.blocks)
                || r.physical == 0
            {
                return Err(self.corrupt(format!(
                    "inode {} maps blocks {}..{} outside the file system ({} blocks)",
                    inode.ino,
                    r.physical,
                    r.physical.saturating_add(r.len),
                    self.info.blocks
                )));
            }
        }
        Ok(runs)
    }

    fn extent_node(
        &self,
        inode: &Inode,
        node: &[u8],
        depth_seen: u16,
        runs: &mut Vec<Run>,
    ) -> Result<()> {
        if le16(node, 0) != 0xf30a {
            return Err(self.corrupt(format!("inode {}: bad extent header", inode.ino)));
        }
        let (entries, depth) = (le16(node, 2) as usize, le16(node, 6));
        if 12 + entries * 12 > node.len() || depth > 5 || depth_seen > 5 {
            return Err(self.corrupt(format!(
                "inode {}: extent node with {entries} entries at depth {depth}",
                inode.ino
            )));
        }
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if depth == 0 {
                let len = u64::from(le16(e, 4));
                let (len, unwritten) = if len > 32768 {
                    (len - 32768, true)
                } else {
                    (len, false)
                };
                let physical = u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8));
                self.account(inode, len.max(1))?;
                if runs.len() >= MAX_RUNS {
                    return Err(
                        self.corrupt(format!("inode {}: more than {MAX_RUNS} extents", inode.ino))
                    );
                }
                if len > 0 {
                    runs.push(Run {
                        logical: u64::from(le32(e, 0)),
                        physical,
                        len,
                        unwritten,
                    });
                }
            } else {
                let leaf = u64::from(le16(e, 8)) << 32 | u64::from(le32(e, 4));
                if leaf == 0 || leaf >= self.info.blocks {
                    return Err(self.corrupt(format!(
                        "inode {}: extent index points to block {leaf}",
                        inode.ino
                    )));
                }
                self.account(inode, 1)?;
                let child = self.part.read_vec(leaf * self.bs, self.bs as usize)?;
                if u32::from(le16(&child, 6)) + 1 != u32::from(depth) {
                    return Err(self.corrupt(format!(
                        "inode {}: extent tree depth is inconsistent",
                        inode.ino
                    )));
                }
                self.extent_node(inode, &child, depth_seen + 1, runs)?;
            }
        }
        Ok(())
    }

    /// ext2/3 block maps: 12 direct blocks, then single, double and triple indirect blocks.
    fn indirect(&self, inode: &Inode, nblocks: u64, runs: &mut Vec<Run>) -> Result<()> {
        let mut push = |logical: u64, physical: u64| -> Result<()> {
            if physical == 0 {
                return Ok(());
            }
            self.account(inode, 1)?;
            if let Some(last) = runs.last_mut()
                && last.logical + last.len == logical
                && last.physical + last.len == physical
            {
                last.len += 1;
                return Ok(());
            }
            if runs.len() >= MAX_RUNS {
                return Err(self.corrupt(format!(
                    "inode {}: more than {MAX_RUNS} fragments",
                    inode.ino
                )));
            }
            runs.push(Run {
                logical,
                physical,
                len: 1,
                unwritten: false,
            });
            Ok(())
        };
        let direct: Vec<u64> = (0..15)
            .map(|i| u64::from(le32(&inode.block, i * 4)))
            .collect();
        for (i, &b) in direct.iter().take(12).enumerate() {
            if (i as u64) < nblocks {
                push(i as u64, b)?;
            }
        }
        let per = self.bs / 4;
        let mut logical = 12u64;
        for (level, &root) in direct[12..].iter().enumerate() {
            let span = per.pow(level as u32 + 1);
            if logical >= nblocks {
                break;
            }
            if root != 0 {
                self.walk_indirect(inode, root, level as u32, logical, nblocks, &mut push)?;
            }
            logical += span;
        }
        Ok(())
    }

    fn walk_indirect(
        &self,
        inode: &Inode,
        block: u64,
        level: u32,
        first: u64,
        nblocks: u64,
        push: &mut impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        self.account(inode, 1)?;
        if block >= self.info.blocks {
            return Err(self.corrupt(format!(
                "inode {}: indirect block {block} is outside the file system",
                inode.ino
            )));
        }
        let data = self.part.read_vec(block * self.bs, self.bs as usize)?;
        let per = self.bs / 4;
        let span = per.pow(level);
        for i in 0..per {
            let logical = first + i * span;
            if logical >= nblocks {
                break;
            }
            let b = u64::from(le32(&data, (i * 4) as usize));
            if b == 0 {
                continue;
            }
            if level == 0 {
                push(logical, b)?;
            } else {
                self.walk_indirect(inode, b, level - 1, logical, nblocks, push)?;
            }
        }
        Ok(())
    }

    /// Reads a whole small object (a symlink target, an xattr value in its own inode, a
    /// directory's inline data); `max` bounds it.
    fn read_small(&self, inode: &Inode, max: u64) -> Result<Vec<u8>> {
        if inode.size > max {
            return Err(self.corrupt(format!(
                "inode {} is {} bytes, more than the {max} expected",
                inode.ino, inode.size
            )));
        }
        let mut out = vec![0u8; inode.size as usize];
        if inode.flags & INLINE_DATA_FL != 0 {
            self.inline_data(inode, &mut out)?;
            return Ok(out);
        }
        for r in self.runs(inode)? {
            if r.unwritten {
                continue;
            }
            for i in 0..r.len {
                let at = (r.logical + i) * self.bs;
                if at >= inode.size {
                    break;
                }
                let n = (inode.size - at).min(self.bs) as usize;
                self.part.read_at(
                    (r.physical + i) * self.bs,
                    &mut out[at as usize..at as usize + n],
                )?;
            }
        }
        Ok(out)
    }

    fn inline_data(&self, inode: &Inode, out: &mut [u8]) -> Result<()> {
        let n = out.len().min(60);
        out[..n].copy_from_slice(&inode.block[..n]);
        if out.len() > 60 {
            let rest = self
                .raw_xattrs(inode)?
                .into_iter()
                .find(|(idx, name, _)| *idx == 7 && name == b"data")
                .map(|(_, _, v)| v)
                .unwrap_or_default();
            let want = out.len() - 60;
            if rest.len() < want {
                return Err(self.corrupt(format!(
                    "inode {}: inline data shorter than its size",
                    inode.ino
                )));
            }
            out[60..].copy_from_slice(&rest[..want]);
        }
        Ok(())
    }

    /// (name index, name, value) of every extended attribute, in the inode and in its block.
    fn raw_xattrs(&self, inode: &Inode) -> Result<Vec<RawXattr>> {
        let mut out = Vec::new();
        let x = &inode.extra_xattrs;
        if x.len() >= 4 && le32(x, 0) == 0xea02_0000 {
            self.xattr_entries(inode, &x[4..], &x[4..], &mut out)?;
        }
        if inode.file_acl != 0 {
            if inode.file_acl >= self.info.blocks {
                return Err(self.corrupt(format!(
                    "inode {}: attribute block {} is outside the file system",
                    inode.ino, inode.file_acl
                )));
            }
            let b = self
                .part
                .read_vec(inode.file_acl * self.bs, self.bs as usize)?;
            if le32(&b, 0) != 0xea02_0000 {
                return Err(self.corrupt(format!(
                    "inode {}: attribute block {} has a bad magic",
                    inode.ino, inode.file_acl
                )));
            }
            self.xattr_entries(inode, &b[32..], &b, &mut out)?;
        }
        Ok(out)
    }

    /// Entries start at `entries`; value offsets count from `base`.
    fn xattr_entries(
        &self,
        inode: &Inode,
        entries: &[u8],
        base: &[u8],
        out: &mut Vec<RawXattr>,
    ) -> Result<()> {
        let bad = |d: &str| self.corrupt(format!("inode {}: extended attribute {d}", inode.ino));
        let mut at = 0usize;
        while at + 4 <= entries.len() && le32(entries, at) != 0 {
            if at + 16 > entries.len() {
                return Err(bad("entry runs past its area"));
            }
            let e = &entries[at..];
            let (name_len, index) = (e[0] as usize, e[1]);
            let (offs, inum, size) = (le16(e, 2) as usize, le32(e, 4), le32(e, 8) as usize);
            if 16 + name_len > e.len() {
                return Err(bad("name runs past its area"));
            }
            let name = e[16..16 + name_len].to_vec();
            if size > MAX_XATTR_VALUE {
                return Err(bad(&format!("value of {size} bytes")));
            }
            let value = if inum != 0 {
                let vi = self.inode(inum)?;
                // A value inode is marked as one and holds its value in blocks; anything else
                // (an inline inode naming itself, say) would loop.
                if vi.flags & EA_INODE_FL == 0
                    || vi.flags & INLINE_DATA_FL != 0
                    || inum == inode.ino
                {
                    return Err(bad(&format!(
                        "value names inode {inum}, which is not an attribute value inode"
                    )));
                }
                self.read_small(&vi, size as u64)?
            } else {
                base.get(offs..offs + size)
                    .ok_or_else(|| bad("value lies outside its area"))?
                    .to_vec()
            };
            out.push((index, name, value));
            at += (16 + name_len).next_multiple_of(4);
        }
        Ok(())
    }

    /// Extended attributes with their VFS names, in VFS value format.
    fn xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for (index, name, value) in self.raw_xattrs(inode)? {
            let (prefix, value): (&[u8], Vec<u8>) = match index {
                1 => (b"user.", value),
                2 => (
                    b"system.posix_acl_access",
                    acl_to_vfs(&value).ok_or_else(|| {
                        self.corrupt(format!("inode {}: malformed ACL", inode.ino))
                    })?,
                ),
                3 => (
                    b"system.posix_acl_default",
                    acl_to_vfs(&value).ok_or_else(|| {
                        self.corrupt(format!("inode {}: malformed default ACL", inode.ino))
                    })?,
                ),
                4 => (b"trusted.", value),
                6 => (b"security.", value),
                // system.data holds inline data, which is copied as the file's content.
                7 if name == b"data" => continue,
                7 => (b"system.", value),
                other => {
                    return Err(ImageError::Unsupported {
                        fs: "ext4",
                        at: self.part.name().to_string(),
                        detail: format!(
                            "inode {}: extended attribute name index {other}",
                            inode.ino
                        ),
                    });
                }
            };
            let mut full = prefix.to_vec();
            full.extend_from_slice(&name);
            out.push((full, value));
        }
        Ok(out)
    }

    fn meta(&self, inode: &Inode) -> Result<Meta> {
        Ok(Meta {
            perm: u32::from(inode.mode & 0o7777),
            uid: inode.uid,
            gid: inode.gid,
            atime: inode.atime,
            mtime: inode.mtime,
            xattrs: self.xattrs(inode)?,
        })
    }

    /// Directory entries (name, inode), without `.` and `..`.
    fn entries(&self, dir: &Inode) -> Result<Vec<(Vec<u8>, u32)>> {
        let mut out = Vec::new();
        let parse = |block: &[u8], out: &mut Vec<(Vec<u8>, u32)>| -> Result<()> {
            let mut at = 0usize;
            while at + 8 <= block.len() {
                let ino = le32(block, at);
                // 64 KiB blocks keep bits 16-17 of the length in its low bits (rec_len_from_disk).
                let raw = le16(block, at + 4) as usize;
                let rec_len = if block.len() >= 65536 && (raw == 0 || raw == 65535) {
                    block.len()
                } else {
                    (raw & 65532) | ((raw & 3) << 16)
                };
                let rec_len = if rec_len == 0 && block.len() == 65536 {
                    65536
                } else {
                    rec_len
                };
                let name_len = block[at + 6] as usize;
                if rec_len < 8
                    || rec_len % 4 != 0
                    || at + rec_len > block.len()
                    || 8 + name_len > rec_len
                {
                    return Err(self.corrupt(format!(
                        "directory inode {}: malformed entry at byte {at}",
                        dir.ino
                    )));
                }
                let name = &block[at + 8..at + 8 + name_len];
                if ino != 0 && name != b"." && name != b".." {
                    out.push((name.to_vec(), ino));
                    if out.len() > MAX_DIR_ENTRIES {
                        return Err(self.corrupt(format!(
                            "directory inode {} has more than {MAX_DIR_ENTRIES} entries",
                            dir.ino
                        )));
                    }
                }
                at += rec_len;
            }
            Ok(())
        };
        if dir.flags & INLINE_DATA_FL != 0 {
            if dir.size < 4 || dir.size > MAX_XATTR_VALUE as u64 + 60 {
                return Err(self.corrupt(format!(
                    "directory inode {}: inline size {}",
                    dir.ino, dir.size
                )));
            }
            let mut data = vec![0u8; dir.size as usize];
            self.inline_data(dir, &mut data)?;
            let body = &data[4..];
            parse(&body[..body.len().min(56)], &mut out)?;
            if body.len() > 56 {
                parse(&body[56..], &mut out)?;
            }
            return Ok(out);
        }
        if dir.size > self.info.size() {
            return Err(self.corrupt(format!(
                "directory inode {} claims {} bytes",
                dir.ino, dir.size
            )));
        }
        let mut block = vec![0u8; self.bs as usize];
        for r in self.runs(dir)? {
            if r.unwritten {
                continue;
            }
            for i in 0..r.len {
                if (r.logical + i) * self.bs >= dir.size {
                    break;
                }
                self.part.read_at((r.physical + i) * self.bs, &mut block)?;
                parse(&block, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Visits every entry (the root as the empty path) with its inode number, access and
    /// modification times: how a written file system is checked against its tree.
    pub fn walk(&self, mut f: impl FnMut(&[u8], u32, Time, Time) -> Result<()>) -> Result<()> {
        let root = self.inode(ROOT_INO)?;
        f(b"", ROOT_INO, root.atime, root.mtime)?;
        let mut visited = HashSet::from([ROOT_INO]);
        let mut stack = vec![(root, Vec::new())];
        while let Some((dir, path)) = stack.pop() {
            for (name, ino) in self.entries(&dir)? {
                let mut child = path.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(&name);
                let inode = self.inode(ino)?;
                f(&child, ino, inode.atime, inode.mtime)?;
                if inode.mode & 0xf000 == 0x4000 {
                    if !visited.insert(ino) {
                        return Err(self.corrupt(format!(
                            "directory inode {ino} is reached twice (a directory loop)"
                        )));
                    }
                    stack.push((inode, child));
                }
            }
        }
        Ok(())
    }

    /// Copies the whole file system into `sink`.
    pub fn copy_to(&self, sink: &mut Sink) -> Result<Counts> {
        let root = self.inode(ROOT_INO)?;
        if root.mode & 0xf000 != 0x4000 {
            return Err(self.corrupt("the root inode is not a directory"));
        }
        sink.set_root(&self.meta(&root)?)?;
        let mut visited = HashSet::from([ROOT_INO]);
        let mut stack: Vec<(Inode, Entered, usize)> = vec![(root, Entered::Open(sink.root()), 0)];
        let first_ino = 11u32;
        while let Some((dir, host_dir, depth)) = stack.pop() {
            let host_dir = match host_dir {
                Entered::Open(d) => d,
                Entered::Pending(p) => sink.enter(p)?,
            };
            if depth > MAX_DEPTH {
                return Err(self.corrupt(format!(
                    "directories nest deeper than {MAX_DEPTH} at {}",
                    host_dir.path().display()
                )));
            }
            for (name, ino) in self.entries(&dir)? {
                if ino < first_ino && ino != ROOT_INO && ino != 11 {
                    return Err(self.corrupt(format!(
                        "entry {:?} names reserved inode {ino}",
                        host_dir.path().join(crate::os_name(&name))
                    )));
                }
                let inode = self.inode(ino)?;
                let kind = inode.mode & 0xf000;
                if kind == 0x4000 {
                    if !visited.insert(ino) {
                        return Err(ImageError::UnsafeEntry {
                            path: host_dir
                                .path()
                                .join(crate::os_name(&name))
                                .display()
                                .to_string(),
                            detail: format!(
                                "directory inode {ino} is reached twice (a directory loop)"
                            ),
                        });
                    }
                    let child = sink.mkdir(&host_dir, &name, &self.meta(&inode)?)?;
                    stack.push((inode, Entered::Pending(child), depth + 1));
                    continue;
                }
                if inode.links > 1
                    && let Some(first) = sink.linked(u64::from(ino)).map(|p| p.to_path_buf())
                {
                    sink.hardlink(&host_dir, &name, &first)?;
                    continue;
                }
                let path = self.copy_leaf(sink, &host_dir, &name, &inode)?;
                if inode.links > 1 {
                    sink.remember_link(u64::from(ino), path);
                }
            }
        }
        Ok(sink.counts())
    }

    fn copy_leaf(
        &self,
        sink: &mut Sink,
        dir: &Dir,
        name: &[u8],
        inode: &Inode,
    ) -> Result<std::path::PathBuf> {
        let meta = self.meta(inode)?;
        match inode.mode & 0xf000 {
            0x8000 => {
                if inode.flags & ENCRYPT_FL != 0 {
                    return Err(ImageError::Unsupported {
                        fs: "ext4",
                        at: self.part.name().to_string(),
                        detail: format!("inode {} is encrypted", inode.ino),
                    });
                }
                let runs = if inode.flags & INLINE_DATA_FL != 0 {
                    Vec::new()
                } else {
                    self.runs(inode)?
                };
                sink.file(dir, name, inode.size, &meta, |data| {
                    if inode.flags & INLINE_DATA_FL != 0 {
                        let mut buf =
                            vec![0u8; inode.size.min(MAX_XATTR_VALUE as u64 + 60) as usize];
                        self.inline_data(inode, &mut buf)?;
                        return data.write_at(0, &buf);
                    }
                    // Sized to the file: most files are small, and zeroing a 1 MiB buffer for
                    // each of them was a measurable part of staging.
                    let mut buf = vec![
                        0u8;
                        inode
                            .size
                            .min(1 << 20)
                            .next_multiple_of(self.bs)
                            .clamp(self.bs, 1 << 20) as usize
                    ];
                    let chunk = buf.len() as u64 / self.bs;
                    for r in runs.iter().filter(|r| !r.unwritten) {
                        let mut done = 0;
                        while done < r.len {
                            if (r.logical + done) * self.bs >= inode.size {
                                break;
                            }
                            let n = (r.len - done).min(chunk);
                            let b = &mut buf[..(n * self.bs) as usize];
                            self.part.read_at((r.physical + done) * self.bs, b)?;
                            data.write_at((r.logical + done) * self.bs, b)?;
                            done += n;
                        }
                    }
                    Ok(())
                })
            }
            0xa000 => {
                let ea_blocks = if inode.file_acl != 0 {
                    self.bs / 512
                } else {
                    0
                };
                let target = if inode.flags & INLINE_DATA_FL == 0
                    && inode.blocks.saturating_sub(ea_blocks) == 0
                {
                    let n = (inode.size as usize).min(60);
                    inode.block[..n].to_vec()
                } else {
                    self.read_small(inode, MAX_SYMLINK)?
                };
                sink.symlink(dir, name, &target, &meta)
            }
            0x2000 | 0x6000 => {
                let (major, minor) = device(&inode.block);
                let node = if inode.mode & 0xf000 == 0x2000 {
                    Node::Char { major, minor }
                } else {
                    Node::Block { major, minor }
                };
                sink.node(dir, name, node, &meta)
            }
            0x1000 => sink.node(dir, name, Node::Fifo, &meta),
            0xc000 => sink.node(dir, name, Node::Socket, &meta),
            other => Err(self.corrupt(format!("inode {} has file type {other:#o}", inode.ino))),
        }
    }
}

/// A directory of the walk: the root, open, or one created and entered when its turn comes.
enum Entered {
    Open(Dir),
    Pending(crate::tree::Pending),
}

fn corrupt(part: &Extent, detail: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        fs: "ext4",
        at: part.name().to_string(),
        detail: detail.into(),
    }
}

/// Whether group `g` holds a superblock backup (and so its descriptors in a meta_bg layout).
fn has_super(g: u64, sparse: bool) -> bool {
    if !sparse || g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&b| {
        let mut p = b;
        while p < g {
            p *= b;
        }
        p == g
    })
}

/// The old 16-bit encoding in the first word, or the new 32-bit one in the second.
fn device(block: &[u8]) -> (u32, u32) {
    let old = le32(block, 0);
    if old != 0 {
        return ((old >> 8) & 0xff, old & 0xff);
    }
    let new = le32(block, 4);
    ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
}

/// ext4 keeps POSIX ACLs in a compact form (4-byte entries for owner, group, mask and other);
/// the VFS wants version 2 with 8-byte entries throughout.
fn acl_to_vfs(disk: &[u8]) -> Option<Vec<u8>> {
    if disk.len() < 4 || le32(disk, 0) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut at = 4;
    while at < disk.len() {
        let tag = le16(disk.get(at..at + 4)?, 0);
        let perm = le16(disk, at + 2);
        let id = match tag {
            0x02 | 0x08 => {
                let id = le32(disk.get(at..at + 8)?, 4);
                at += 8;
                id
            }
            0x01 | 0x04 | 0x10 | 0x20 => {
                at += 4;
                u32::MAX
            }
            _ => return None,
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Some(out)
}
