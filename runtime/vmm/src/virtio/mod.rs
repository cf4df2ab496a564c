//! virtio devices and their MMIO transport (virtio 1.2, section 4.2).
//!
//! A device only sees its queues and config space; everything the guest's driver
//! writes to the transport registers is validated in [`mmio`] before a device
//! is activated.

pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: every okvm device is a modern (non-legacy) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits (InterruptStatus register).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// How a device interrupts the guest: a status bit, then the irqfd. It also
/// carries the device's "broken" flag, so that a worker thread that gives up on
/// a misbehaving driver can say so through the transport's status register.
#[derive(Clone)]
pub struct Interrupt {
    pub status: Arc<AtomicU32>,
    pub irq: Arc<EventFd>,
    broken: Arc<std::sync::Mutex<Option<String>>>,
}

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irq: Arc::new(irq),
            broken: Arc::default(),
        }
    }

    pub fn signal(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// The device stops serving because of what the driver did: record why,
    /// log it once, and tell the driver (NEEDS_RESET, config interrupt).
    pub fn fail(&self, device: &str, why: &str) {
        self.record_broken(device, why);
        let _ = self.signal(INT_CONFIG);
    }

    /// Records (and logs, the first time) why the device stopped, without
    /// interrupting the guest: for refusals the driver sees in the status it
    /// is reading anyway.
    pub fn record_broken(&self, device: &str, why: &str) {
        let mut broken = self.broken.lock().unwrap_or_else(|e| e.into_inner());
        if broken.is_none() {
            // Once per driver reset, which the guest may repeat at will.
            crate::ratelimit::log(
                log::Level::Error,
                format_args!("virtio-{device}: device marked broken: {why}"),
            );
            *broken = Some(why.to_string());
        }
    }

    /// Why the device broke, if it did.
    pub fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A driver reset clears the broken state and pending interrupt bits.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A device type's short name, as its worker thread and log lines use it.
pub fn device_name(device_type: u32) -> &'static str {
    match device_type {
        1 => "net",
        4 => "rng",
        19 => "vsock",
        26 => "fs",
        _ => "device",
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// The queues the driver made ready, in index order (unready ones included,
    /// so that indices match the device's queue numbering).
    pub queues: Vec<Queue>,
    /// One eventfd per queue, readable when the driver notified that queue
    /// (KVM ioeventfd, or the transport's QueueNotify fallback).
    pub queue_events: Vec<EventFd>,
    pub interrupt: Interrupt,
    /// The feature bits the driver accepted.
    pub features: u64,
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
#[error("cannot activate the virtio device: {0}")]
pub struct ActivateError(pub String);

/// One virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (e.g. 19 for vsock, 26 for fs).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver; VERSION_1 must be among them.
    fn features(&self) -> u64;
    /// Maximum size of each queue, one entry per queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads from the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to it; most devices ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver finished setting up: take the queues and start serving them
    /// (usually on a [`worker::Worker`] thread).
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: stop serving and drop the queues.
    fn reset(&mut self);
}

/// Copies the part of a device's config space at `offset` into `data`; bytes
/// past its end read as zero. Guest offsets are untrusted.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::read_config_bytes;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
