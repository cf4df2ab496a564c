//! okvm's virtual machine monitor: a small KVM VMM composed from rust-vmm crates
//! (vm-memory, linux-loader, and later kvm-ioctls, vm-superio, virtio-queue, vhost).
//!
//! Each module owns one concern; nothing here parses guest-controlled data yet.

pub mod boot;
pub mod layout;
pub mod legacy;
pub mod memory;
pub mod mptable;
pub mod virtio;
pub mod vm;
pub mod x86;
