//! The virtio-mmio transport's registers: any access (offset, width, value)
//! in any order, on a real device (rng, net or vsock), so that feature
//! negotiation, queue set-up and activation see what a hostile driver
//! writes. Activation builds the device's handler without its thread and
//! checks what the transport let through.

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{Input, Scratch, Script, Seed, Serve};
use crate::virtio::mmio::{MmioTransport, WINDOW};
use crate::virtio::rng::Rng;
use crate::virtio::vsock::Vsock;
use crate::virtio::{ActivateError, Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

/// Hands everything to the device but checks activation first.
struct Checked(Box<dyn Serve>);

impl VirtioDevice for Checked {
    fn device_type(&self) -> u32 {
        self.0.device_type()
    }
    fn features(&self) -> u64 {
        self.0.features()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.0.queue_max_sizes()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.0.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0.write_config(offset, data)
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let offered = self.0.features();
        assert_eq!(a.features & !offered, 0, "features not offered");
        assert_ne!(a.features & VIRTIO_F_VERSION_1, 0, "a legacy driver");
        assert_eq!(a.queues.len(), self.0.queue_max_sizes().len());
        assert_eq!(a.queue_events.len(), a.queues.len());
        for q in &a.queues {
            assert!(
                !q.ready() || q.is_valid(&a.mem),
                "a ready queue out of place"
            );
        }
        self.0.serve(a).map(drop)
    }
    fn reset(&mut self) {
        self.0.reset()
    }
}

pub fn mmio(data: &[u8]) {
    let mut input = Input::new(data);
    // Only a vsock device needs a directory, for its socket.
    let (device, _dir): (Box<dyn Serve>, _) = match input.u8() % 3 {
        0 => (Box::new(Rng::new()), None),
        1 => (Box::new(super::queues::card().0), None),
        _ => match Scratch::new().and_then(|d| Ok((Vsock::new(3, d.path().join("v"))?, d))) {
            Ok((v, d)) => (Box::new(v), Some(d)),
            Err(_) => return,
        },
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])
        .expect("guest memory for the fuzz target");
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let Ok(mut t) = MmioTransport::new(Box::new(Checked(device)), mem, Interrupt::new(irq)) else {
        return;
    };
    while !input.is_empty() {
        // Bit 0: write; bits 1-4: the access's width, 0 to 8 bytes (KVM's).
        let op = input.u8();
        let len = usize::from(op >> 1) % 9;
        let offset = u64::from(input.u16()) % WINDOW;
        let value = input.u64().to_le_bytes();
        if op & 1 != 0 {
            t.write(offset, &value[..len]);
        } else {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..len]);
        }
    }
}

/// What Linux's virtio_mmio driver writes to bring `device` (0 rng, 1 net,
/// 2 vsock) up with `queues` queues.
fn driver(device: u8, queues: u32, features_lo: u32) -> Vec<u8> {
    let mut s = Script::new();
    s.u8(device);
    let mut w = |offset: u16, v: u32| {
        s.u8(9).u16(offset).u64(u64::from(v));
    };
    w(0x070, 1);
    w(0x070, 3);
    w(0x024, 0);
    w(0x020, features_lo);
    w(0x024, 1);
    w(0x020, 1);
    w(0x070, 0xb);
    for q in 0..queues {
        let base = 0x4000 * (q + 1);
        w(0x030, q);
        w(0x038, 64);
        w(0x080, base);
        w(0x090, base + 0x1000);
        w(0x0a0, base + 0x2000);
        w(0x044, 1);
    }
    w(0x070, 0xf);
    w(0x050, 0);
    w(0x064, 1);
    w(0x070, 0);
    let mut bytes = s.done();
    // A read of each register the driver reads.
    for offset in [
        0x000u16, 0x004, 0x008, 0x010, 0x034, 0x044, 0x060, 0x070, 0x0fc, 0x100,
    ] {
        bytes.push(8);
        bytes.extend(offset.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
    }
    bytes
}

pub(crate) fn seeds() -> Vec<Seed> {
    vec![
        ("mmio", "rng-up-and-reset", driver(0, 1, 0)),
        ("mmio", "net-up-and-reset", driver(1, 2, 0x1_8000 | 0x1a3)),
        ("mmio", "vsock-up-and-reset", driver(2, 3, 0)),
    ]
}
