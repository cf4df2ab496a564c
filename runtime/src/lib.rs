//! okvm: the library both front ends (the runc-compatible `okvm` CLI and
//! `containerd-shim-okvm-v2`) share.

pub mod assets;
pub mod boot;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod guest;
pub mod initramfs;
pub mod internal;
pub mod kvm_check;
pub mod logger;
pub mod network;
pub mod pod;
pub mod procs;
pub mod relay;
pub mod sandbox;
pub mod state;
pub mod virtiofsd;
