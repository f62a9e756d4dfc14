//! Bounded, read-only views of a raw disk: the whole disk and each partition. Every read is
//! checked against the view's length, so a file system that points past its partition gets an
//! error naming the offset instead of reading its neighbour.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{ImageError, IoContext, Result};

/// A window onto a raw disk file.
#[derive(Clone)]
pub struct Extent {
    file: Arc<File>,
    start: u64,
    len: u64,
    /// For messages: "partition 3", "disk".
    name: Arc<str>,
}

impl Extent {
    /// The whole raw disk in `path`: a raw image file, or a block device (a physical disk being
    /// converted), whose size only seeking to its end tells.
    pub fn open(path: &Path) -> Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let len = file
            .seek(SeekFrom::End(0))
            .ctx(|| format!("reading the size of {}", path.display()))?;
        Ok(Self {
            file: Arc::new(file),
            start: 0,
            len,
            name: "disk".into(),
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the window starts on the disk, in bytes.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// A sub-window; fails when it does not lie inside this one.
    pub fn slice(&self, start: u64, len: u64, name: impl Into<Arc<str>>) -> Result<Self> {
        let name = name.into();
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(Self {
                file: self.file.clone(),
                start: self.start + start,
                len,
                name,
            }),
            _ => Err(ImageError::PartitionTable(format!(
                "{name} spans bytes {start}..{} but the {} has {} bytes",
                start.saturating_add(len),
                self.name,
                self.len
            ))),
        }
    }

    /// Fills `buf` from `offset` within the window.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(ImageError::Corrupt {
                fs: "disk",
                at: self.name.to_string(),
                detail: format!(
                    "read of {} bytes at offset {offset} is past its end ({} bytes)",
                    buf.len(),
                    self.len
                ),
            });
        }
        self.file
            .read_exact_at(buf, self.start + offset)
            .ctx(|| format!("reading {} at offset {offset}", self.name))
    }

    /// Reads `len` bytes at `offset` into a new buffer; `len` is the caller's to bound.
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }
}

/// Little-endian field readers for on-disk structures; callers slice within bounds they checked.
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
