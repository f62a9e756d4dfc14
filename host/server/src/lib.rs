//! The Slipway provisioning server and its command-line client.
//!
//! `serve` wires the parts together: the [`config`], the state [`Store`](slipway_store::Store), the
//! content-addressed [`images`] store, the durable [`jobs`] runner, the [`events`] bus, and the
//! HTTP [`api`]. The [`client`] module is the other side: the `slipway` commands that talk to a
//! server over HTTP.

pub mod api;
pub mod client;
pub mod config;
pub mod events;
pub mod images;
pub mod jobs;
pub mod serve;

pub use serve::{App, Server};
