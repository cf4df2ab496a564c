//! okvm's virtual machine monitor: a small KVM VMM composed from rust-vmm crates
//! (kvm-ioctls, vm-memory, linux-loader, vm-superio, virtio-queue, vhost).
//!
//! Each module owns one concern. Guest-controlled data is parsed only in the
//! virtio transport and devices (`virtio/`), never on the vCPU threads' own
//! account beyond a register access.

pub mod boot;
pub mod console;
pub mod devices;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod layout;
pub mod legacy;
pub mod memory;
pub mod mptable;
pub mod ratelimit;
pub mod tap;
pub mod virtio;
pub mod vm;
pub mod x86;
