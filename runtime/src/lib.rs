//! okvm: the library both front ends (the runc-compatible `okvm` CLI and
//! `containerd-shim-okvm-v2`) share.

pub mod boot;
pub mod cli;
pub mod guest;
pub mod initramfs;
pub mod kvm_check;
pub mod logger;
pub mod state;
pub mod virtiofsd;
