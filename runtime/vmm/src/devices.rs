//! The virtio-mmio bus: where each device's register window and interrupt
//! line are, and how the guest learns of them (the kernel command line).

use std::sync::Mutex;

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::layout::MMIO_GAP_START;
use crate::virtio::mmio::{MmioTransport, QUEUE_NOTIFY, WINDOW};
use crate::virtio::{Interrupt, VirtioDevice};

/// The first interrupt line for virtio devices (4 is the serial port).
pub const FIRST_IRQ: u32 = 5;
/// The I/O APIC has 24 pins; the MP table routes each one.
pub const LAST_IRQ: u32 = 23;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("too many virtio devices: okvm has {} interrupt lines for them", LAST_IRQ - FIRST_IRQ + 1)]
    TooMany,
    #[error("cannot {what} for virtio device type {device}: {err}")]
    Host {
        what: &'static str,
        device: u32,
        err: std::io::Error,
    },
    #[error("KVM: cannot {what} for virtio device type {device}: {err}")]
    Kvm {
        what: &'static str,
        device: u32,
        err: kvm_ioctls::Error,
    },
}

struct Slot {
    base: u64,
    irq: u32,
    transport: Mutex<MmioTransport>,
}

/// Every virtio device of one VM.
#[derive(Default)]
pub struct MmioBus {
    slots: Vec<Slot>,
}

impl MmioBus {
    /// Places `device` in the next window, wires its interrupt through an
    /// irqfd, and its queue notifications through ioeventfds so that a notify
    /// never leaves the kernel.
    pub fn add(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(), Error> {
        let index = self.slots.len() as u32;
        let irq = FIRST_IRQ + index;
        if irq > LAST_IRQ {
            return Err(Error::TooMany);
        }
        let base = MMIO_GAP_START + u64::from(index) * WINDOW;
        let kind = device.device_type();
        let host = |what| {
            move |err| Error::Host {
                what,
                device: kind,
                err,
            }
        };
        let kvm = |what| {
            move |err| Error::Kvm {
                what,
                device: kind,
                err,
            }
        };
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(host("create an irqfd"))?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(kvm("register the irqfd"))?;
        let transport = MmioTransport::new(device, mem.clone(), Interrupt::new(irqfd))
            .map_err(host("create queue eventfds"))?;
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY),
                queue as u32,
            )
            .map_err(kvm("register a queue ioeventfd"))?;
        }
        self.slots.push(Slot {
            base,
            irq,
            transport: Mutex::new(transport),
        });
        Ok(())
    }

    /// What Linux's virtio_mmio driver needs on its command line to find the devices.
    pub fn cmdline(&self) -> String {
        self.slots
            .iter()
            .map(|s| format!(" virtio_mmio.device=4K@{:#x}:{}", s.base, s.irq))
            .collect()
    }

    fn find(&self, addr: u64) -> Option<(&Slot, u64)> {
        let index = addr.checked_sub(MMIO_GAP_START)? / WINDOW;
        let slot = self.slots.get(usize::try_from(index).ok()?)?;
        Some((slot, addr - slot.base))
    }

    /// A guest read of MMIO at `addr`; returns false if no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((slot, offset)) => {
                lock(&slot.transport).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// A guest write of MMIO at `addr`; returns false if no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((slot, offset)) => {
                lock(&slot.transport).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A device thread that panicked must not take the vCPUs with it.
fn lock(m: &Mutex<MmioTransport>) -> std::sync::MutexGuard<'_, MmioTransport> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_outside_any_window_belong_to_nobody() {
        let bus = MmioBus::default();
        let mut b = [0u8; 4];
        assert!(!bus.read(MMIO_GAP_START, &mut b));
        assert!(!bus.read(0, &mut b));
        assert!(!bus.write(u64::MAX, &b));
        assert_eq!(bus.cmdline(), "");
    }
}
