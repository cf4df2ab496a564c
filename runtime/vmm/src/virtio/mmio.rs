//! The virtio-mmio transport: the register window the guest's driver programs.
//!
//! Every value here comes from the guest. Bad accesses (wrong width, unknown
//! register, a queue index out of range, a status that skips a step) are ignored
//! or mark the device failed; none of them may panic the VMM.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

/// Size of one device's MMIO window.
pub const WINDOW: u64 = 0x1000;
/// Offset of the QueueNotify register, where KVM ioeventfds are attached.
pub const QUEUE_NOTIFY: u64 = 0x050;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4f4b_564d; // "OKVM"
const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// One virtio device with its MMIO register state.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    /// Which queues were ready at activation (the queues themselves are then
    /// the device's), so QueueReady keeps reading true while the device runs.
    ready_at_activation: Vec<bool>,
    queue_events: Vec<EventFd>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> std::io::Result<Self> {
        let queues = queues_for(device.as_ref());
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<_, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            ready_at_activation: Vec::new(),
            queue_events,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The transport's status, with NEEDS_RESET once the device's worker gave up.
    pub fn status(&self) -> u32 {
        if self.interrupt.broken().is_some() {
            self.status | STATUS_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// The device type, for the VMM's log and the kernel command line.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The per-queue notification eventfds, for KVM ioeventfd registration.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        // Queues can only be configured before DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A guest read at `offset` within the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            data.fill(0);
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        let v = match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR,
            0x010 => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x034 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            0x044 if self.activated => self
                .ready_at_activation
                .get(self.queue_sel as usize)
                .map_or(0, |&r| u32::from(r)),
            0x044 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            0x060 => self
                .interrupt
                .status
                .load(std::sync::atomic::Ordering::SeqCst),
            0x070 => self.status(),
            0x0fc => self.config_generation,
            _ => 0,
        };
        if data.len() == 4 {
            data.copy_from_slice(&v.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    /// A guest write at `offset` within the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return; // registers are 32-bit wide
        };
        let v = u32::from_le_bytes(bytes);
        match offset {
            0x014 => self.device_features_sel = v,
            // Features are fixed once FEATURES_OK is set.
            0x020 if self.status & STATUS_FEATURES_OK == 0 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 => {
                if let Some(q) = self.queue() {
                    q.set_size(v.min(u32::from(u16::MAX)) as u16);
                }
            }
            0x044 => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            // Only reached when no ioeventfd caught the write first.
            QUEUE_NOTIFY if self.activated => {
                if let Some(evt) = self.queue_events.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x064 => {
                self.interrupt
                    .status
                    .fetch_and(!v, std::sync::atomic::Ordering::SeqCst);
            }
            0x070 => self.set_status(v),
            // Queue addresses: low half at 0x_0, high half at 0x_4.
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                let (low, high) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                if let Some(q) = self.queue() {
                    match offset & !4 {
                        0x080 => q.set_desc_table_address(low, high),
                        0x090 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Status bits only accumulate, in the spec's order.
        if v & self.status != self.status {
            return self.fail("the driver cleared status bits without a reset");
        }
        let new = v & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                // Leave FEATURES_OK unset: the driver sees it was refused.
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if new & STATUS_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.status & STATUS_FEATURES_OK == 0 {
            return self.fail("DRIVER_OK without FEATURES_OK");
        }
        let mem = self.mem.clone();
        let valid = self.queues.iter().all(|q| !q.ready() || q.is_valid(&mem));
        if !valid {
            return self.fail("a ready queue lies outside guest memory or is misaligned");
        }
        let queue_events = match self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(e) => e,
            Err(e) => return self.fail(&format!("cannot clone a queue eventfd: {e}")),
        };
        self.ready_at_activation = self.queues.iter().map(|q| q.ready()).collect();
        let queues = std::mem::replace(&mut self.queues, queues_for(self.device.as_ref()));
        match self.device.activate(Activation {
            mem,
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        }) {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    /// Why the device stopped (refused set-up, or its worker gave up).
    pub fn broken(&self) -> Option<String> {
        self.interrupt.broken()
    }

    fn fail(&mut self, why: &str) {
        let name = super::device_name(self.device.device_type());
        self.interrupt.record_broken(name, why);
        self.status |= STATUS_NEEDS_RESET | STATUS_FAILED;
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.queues = queues_for(self.device.as_ref());
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.ready_at_activation.clear();
        self.interrupt.clear();
        // Drain notifications of the old incarnation.
        for evt in &self.queue_events {
            let _ = evt.read();
        }
    }
}

fn queues_for(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .filter_map(|&max| Queue::new(max).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::ActivateError;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Log {
        activated: Option<(usize, u64)>,
        events: Vec<EventFd>,
        resets: usize,
    }

    struct Fake(Arc<Mutex<Log>>);

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            19
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 256]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            let mut log = self.0.lock().unwrap();
            log.activated = Some((a.queues.len(), a.features));
            log.events = a.queue_events;
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (
            MmioTransport::new(Box::new(Fake(log.clone())), mem, irq).unwrap(),
            log,
        )
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// What Linux's virtio_mmio driver does, step by step.
    fn handshake(t: &mut MmioTransport, features_hi: u32) {
        wr(t, 0x070, STATUS_ACKNOWLEDGE);
        wr(t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, 0x024, 0);
        wr(t, 0x020, 1);
        wr(t, 0x024, 1);
        wr(t, 0x020, features_hi);
        wr(
            t,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for q in 0..2u32 {
            let base = 0x1000 * (q + 1) * 4;
            wr(t, 0x030, q);
            wr(t, 0x038, 256);
            wr(t, 0x080, base);
            wr(t, 0x090, base + 0x1000);
            wr(t, 0x0a0, base + 0x2000);
            wr(t, 0x044, 1);
        }
    }

    #[test]
    fn identifies_itself_like_a_modern_virtio_mmio_device() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, 0x000), 0x7472_6976);
        assert_eq!(rd(&mut t, 0x004), 2);
        assert_eq!(rd(&mut t, 0x008), 19);
        wr(&mut t, 0x014, 1);
        assert_eq!(rd(&mut t, 0x010), 1, "VERSION_1 is bit 32");
        wr(&mut t, 0x030, 1);
        assert_eq!(rd(&mut t, 0x034), 256);
        wr(&mut t, 0x030, 7);
        assert_eq!(rd(&mut t, 0x034), 0, "no such queue");
        let mut cfg = [0u8; 2];
        t.read(0x104, &mut cfg);
        assert_eq!(cfg, [4, 5]);
    }

    #[test]
    fn the_driver_handshake_activates_the_device_once() {
        let (mut t, log) = transport();
        handshake(&mut t, 1);
        assert_ne!(t.status() & STATUS_FEATURES_OK, 0);
        wr(&mut t, 0x070, 0xf);
        assert_eq!(
            log.lock().unwrap().activated,
            Some((2, VIRTIO_F_VERSION_1 | 1))
        );
        assert!(t.broken().is_none());
        wr(&mut t, 0x050, 1);
        wr(&mut t, 0x050, 9); // out of range: ignored
        {
            let log = log.lock().unwrap();
            assert!(log.events[0].read().is_err(), "queue 0 was not notified");
            assert_eq!(log.events[1].read().unwrap(), 1);
        }
        wr(&mut t, 0x030, 1);
        assert_eq!(
            rd(&mut t, 0x044),
            1,
            "QueueReady still reads 1 while running"
        );
        // Queues cannot be reprogrammed while the device runs.
        wr(&mut t, 0x030, 0);
        wr(&mut t, 0x044, 0);
        wr(&mut t, 0x070, 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn features_not_offered_or_legacy_drivers_are_refused() {
        let (mut t, log) = transport();
        handshake(&mut t, 0); // no VERSION_1
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0);
        let (mut t2, _) = transport();
        wr(&mut t2, 0x024, 0);
        wr(&mut t2, 0x020, 1 << 5); // not offered
        wr(&mut t2, 0x024, 1);
        wr(&mut t2, 0x020, 1);
        wr(
            &mut t2,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(t2.status() & STATUS_FEATURES_OK, 0);
        wr(&mut t, 0x070, 0xf & !STATUS_FEATURES_OK);
        assert!(log.lock().unwrap().activated.is_none());
    }

    #[test]
    fn a_queue_outside_guest_memory_fails_the_device_not_the_vmm() {
        let (mut t, log) = transport();
        handshake(&mut t, 1);
        wr(&mut t, 0x030, 0);
        wr(&mut t, 0x084, 0xffff); // descriptor table far above guest RAM
        wr(&mut t, 0x070, 0xf);
        assert!(log.lock().unwrap().activated.is_none());
        assert_ne!(t.status() & STATUS_FAILED, 0);
        assert!(t.broken().unwrap().contains("outside guest memory"));
    }

    proptest! {
        #[test]
        fn arbitrary_register_traffic_never_panics(
            ops in proptest::collection::vec((0u64..0x120, any::<u32>(), any::<bool>(), 0usize..6), 0..200)
        ) {
            let (mut t, _) = transport();
            for (off, v, is_write, len) in ops {
                let off = off & !3;
                if is_write {
                    let bytes = v.to_le_bytes();
                    t.write(off, &bytes[..len.min(4)]);
                } else {
                    let mut b = vec![0u8; len];
                    t.read(off, &mut b);
                }
            }
        }
    }
}
