//! virtio devices and their MMIO transport (virtio 1.2, section 4.2).
//!
//! A device only sees its queues and config space; everything the guest's driver
//! writes to the transport registers is validated in [`mmio`] before a device
//! is activated.

pub mod mmio;

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

/// How a device interrupts the guest: a status bit, then the irqfd.
#[derive(Clone)]
pub struct Interrupt {
    pub status: Arc<AtomicU32>,
    pub irq: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irq: Arc::new(irq),
        }
    }

    pub fn signal(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irq.write(1)
    }
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
    /// The driver finished setting up: take the queues and start serving them.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Interrupt,
        acked_features: u64,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `index` (QueueNotify).
    fn queue_notify(&mut self, index: u16);
    /// The driver reset the device: stop serving and drop the queues.
    fn reset(&mut self);
}
