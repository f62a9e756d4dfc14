use std::io;

/// What went wrong reading or writing a disk image. Messages name the byte offset, the inode or
/// the path at fault, because images are hostile input and the user needs to know which part of
/// theirs was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The partition table is malformed or unsafe to follow.
    #[error("partition table: {0}")]
    PartitionTable(String),

    /// A file system is malformed; `at` says where (a partition, an inode, a path).
    #[error("{fs} file system in {at}: {detail}")]
    Corrupt {
        fs: &'static str,
        at: String,
        detail: String,
    },

    /// The file system uses something this reader does not understand; copying it anyway would
    /// not be faithful.
    #[error("{fs} file system in {at}: unsupported: {detail}")]
    Unsupported {
        fs: &'static str,
        at: String,
        detail: String,
    },

    /// An entry that cannot be created safely on the host (a name with `/`, `.` or `..`, a
    /// duplicate, a directory that contains itself).
    #[error("unsafe entry {path:?}: {detail}")]
    UnsafeEntry { path: String, detail: String },

    /// A tree does not fit the size asked for.
    #[error("{what} needs {needed_mib} MiB but the target allows {allowed_mib} MiB")]
    TooLarge {
        what: String,
        needed_mib: u64,
        allowed_mib: u64,
    },

    /// A copy that cannot be faithful without privileges the process lacks.
    #[error(
        "copying file systems faithfully needs root (owners, device nodes, security.* attributes): {0}"
    )]
    NeedsRoot(String),

    /// An external tool (qemu-img, mke2fs, e2fsck) failed.
    #[error("{tool} failed: {detail}")]
    Tool { tool: &'static str, detail: String },

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Attaches what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ImageError::Io {
            what: what(),
            source,
        })
    }
}

impl<T> IoContext<T> for Result<T, rustix::io::Errno> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ImageError::Io {
            what: what(),
            source: e.into(),
        })
    }
}
