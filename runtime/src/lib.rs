//! okvm: the library both front ends (the runc-compatible `okvm` CLI and
//! `containerd-shim-okvm-v2`) share.

pub mod initramfs;
pub mod kvm_check;
