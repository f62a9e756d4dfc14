//! First-boot software for staged Linux guests.
//!
//! Two sides of one contract:
//! - [`wire`]: at staging, on the host, wire first boot into a guest tree — cloud-init's NoCloud
//!   datasource where the tree has cloud-init, Slipway's own agent and an init hook otherwise.
//! - [`agent`], [`seed`], [`http`]: the agent itself, `slipway-firstboot`, a small static binary
//!   that reads the same NoCloud seed as cloud-init would, applies it once per instance and
//!   reports ready. The server renders the seed with [`seed::MetaData`] and
//!   [`seed::SeedUrl::smbios_serial`], so both sides agree on its format.
//!
//! The seed, served by the deploy step at `http://<server>/<path>/` (the SMBIOS serial says where):
//! - `GET meta-data`: `instance-id: ...` and `local-hostname: ...` lines (required; at most
//!   64 KiB);
//! - `GET user-data`: optional (404 when there is none; 1 MiB at most), kept in the guest at
//!   `/var/lib/slipway/user-data`;
//! - `GET slipway-apps`: optional, the apps to install at first boot ([`apps`]), at most 256 KiB;
//!   `GET artifacts/<sha256>` the bundles it names;
//! - `POST ready`: the agent's report, JSON `{"instance-id", "hostname", "applied": [...],
//!   "errors": [...], "apps": [{"name", "version", "ok", "detail"}]}`; any 2xx accepts it.

pub mod agent;
pub mod apps;
pub mod http;
pub mod seed;
pub mod wire;

pub use wire::{
    Action, AgentBinary, Change, FirstBoot, InitSystem, WireError, has_cloud_init, wire_first_boot,
};
