//! Library half of `containerd-shim-okvm-v2`, the containerd runtime v2 shim
//! that runs each sandbox (a Kubernetes pod, or a lone container) as one
//! okvm microVM.
//!
//! The ttrpc Task service is not here yet. What is here is what it will stand
//! on: the command-line contract with containerd ([`flags`]), how a container's
//! annotations place it in a VM ([`sandbox`]), and the error type whose
//! variants map onto the gRPC status codes containerd understands ([`errors`]).

pub mod errors;
pub mod flags;
pub mod sandbox;

pub use errors::{Code, ShimError};
pub use sandbox::Role;
