//! Slipway's domain types: the words of `DESIGN.md` as Rust types, shared by the server, the agent,
//! the plugin runtime and the command line. Nothing here does I/O; everything serialises with serde
//! in the JSON shape the HTTP API uses (snake_case fields, lower-case enum values).

pub mod agent;
pub mod catalog;
pub mod hardware;
pub mod host;
pub mod placement;
pub mod request;
pub mod resources;
pub mod sample;
pub mod vm;

pub use catalog::{ApplicationSpec, FieldError, ModelVmSpec};
pub use hardware::{Arch, Firmware, HostFeature};
pub use host::HostSnapshot;
pub use placement::PlacementRequest;
