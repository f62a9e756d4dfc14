//! The server's tests, in one binary: the API through its router, a real server through the
//! command line, and `slipway place`.

mod api;
mod deployments;
mod e2e;
mod hosts;
mod place;
mod plans;
mod staging;
mod support;
