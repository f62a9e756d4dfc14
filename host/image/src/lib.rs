//! Disk images: partition tables, file systems copied out to trees and back in.
//!
//! This is the machinery under staging (a model VM's image → a tree a plugin strips → a new
//! image) and under physical-to-virtual conversion (a physical disk → trees → an image with a new
//! layout). It reads in Rust, without mounting anything: images are hostile input. It writes
//! with the tools that define the formats: `mke2fs -d` for ext2/3/4, `qemu-img` for qcow2.

pub mod disk;
pub mod error;
pub mod ext4;
pub mod fat;
pub mod layout;
pub mod partition;
pub mod tree;

pub use error::{ImageError, Result};

/// A name from an image as a host path component (bytes kept, not decoded).
pub(crate) fn os_name(b: &[u8]) -> &std::ffi::OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(b)
}
