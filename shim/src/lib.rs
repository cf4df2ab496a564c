//! Library half of `containerd-shim-okvm-v2`, the containerd runtime v2 shim
//! that runs each sandbox (a Kubernetes pod, or a lone container) as one
//! okvm microVM, through the okvm runtime library (never the `okvm` CLI).
//!
//! [`service`] is the shim's life as containerd drives it, [`task`] the Task
//! API, [`stdio`] the fifos, and [`errors`] the status codes containerd sees;
//! which VM a container belongs in is the library's [`okvm::pod`].

pub mod errors;
pub mod service;
pub mod stdio;
pub mod task;

pub use errors::ShimError;
pub use okvm::pod::Role;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.okvm.v2";
