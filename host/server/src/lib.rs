//! The Slipway provisioning server and its command-line client.
//!
//! `serve` wires the parts together: the [`config`], the state [`Store`](slipway_store::Store), the
//! content-addressed [`images`] store, the durable [`jobs`] runner, the [`events`] bus, and the
//! HTTP [`api`]. The [`client`] module is the other side: the `slipway` commands that talk to a
//! server over HTTP.

pub mod api;
pub mod client;
pub mod config;
pub mod deploy;
pub mod events;
pub mod images;
pub mod inventory;
pub mod jobs;
pub mod local_agent;
pub mod metrics;
pub mod monitor;
pub mod placement;
pub mod plan;
pub mod plugins;
pub mod serve;
pub mod staging;
pub mod transfer;
pub mod validators;

pub use serve::{App, Server};

/// glibc serves every allocation above 128 KiB with its own mmap and returns it at free: for a
/// server whose socket reads land in ~400 KiB buffers, that is a page fault per page of every
/// chunk uploaded (10% of an upload's CPU, measured). Keep such buffers in the heap instead, and
/// let the heap keep 64 MiB before giving memory back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}
