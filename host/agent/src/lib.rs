//! `slipway-agent`: runs on each host. It joins a Slipway server with a join token, then
//! heartbeats what it reads from the machine ([`metrics`]) and what it found it can run VMs
//! with ([`probe`]), and serves the server's calls ([`api`]): images received into its cache
//! ([`cache`]) and VMs run with QEMU ([`vm`]). [`run`] ties them together.

pub mod api;
pub mod cache;
pub mod client;
pub mod config;
pub mod metrics;
pub mod probe;
pub mod run;
pub mod state;
pub mod vm;
