//! A device's queues as a hostile driver lays them out: descriptor tables,
//! available rings and buffers written into guest memory, notifications, and
//! the device's handler served one epoll event at a time, exactly as its
//! worker thread would serve it.
//!
//! An input is a header (the features the driver accepted, then each queue's
//! size and placement) followed by operations until the bytes run out:
//!
//! | op (byte % 8) | operands | what the driver does |
//! |---|---|---|
//! | 0 | queue u8, index u16, addr u32, len u32, flags u16, next u16 | writes a raw descriptor |
//! | 1 | queue u8, head u16 | publishes a chain head in the available ring |
//! | 2 | queue u8, idx u16 | stores any available index |
//! | 3 | addr u32, len u8, bytes | writes bytes anywhere in guest memory |
//! | 4 | queue u8, count u8, (len u16, writable u8)×count, bytes | offers a well-formed chain; its readable part holds the bytes |
//! | 5 | queue u8 | notifies the queue |
//! | 6 | | lets the device thread run (serves every pending event) |
//! | 7 | device-specific | the host side does something (a frame arrives, a socket closes) |
//!
//! A net card's host side: 0 sends a frame (len u32, count u8, that many
//! bytes of it, the rest zero), 1 reads what reached it, 2 closes it.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::{Input, Script, Seed, Serve};
use crate::virtio::net::{Net, FEATURES as NET_FEATURES, MAX_FRAME_LEN, MIN_FRAME_LEN};
use crate::virtio::rng::Rng;
use crate::virtio::worker::{Handler, Registry};
use crate::virtio::{Activation, Interrupt, VIRTIO_F_VERSION_1};

/// Guest RAM of every queue target.
pub const MEM_SIZE: u64 = 1 << 20;
/// Queue q's default rings: descriptor table, available ring, used ring.
const RINGS: u64 = 0x3000;
/// Well-formed chains' buffers: one 4 KiB slot per descriptor.
const BUFFERS: u64 = 0x10000;
const SLOT: u64 = 0x1000;
const SLOTS: u64 = (MEM_SIZE - BUFFERS) / SLOT;
/// Rounds of events one op 6 serves: each round may arm more (a device
/// that yields after a ring's worth re-notifies itself), and a hang would
/// show as a round limit, never as a loop without end.
const ROUNDS: usize = 32;

pub const OP_DESC: u8 = 0;
pub const OP_PUBLISH: u8 = 1;
pub const OP_AVAIL_IDX: u8 = 2;
pub const OP_BYTES: u8 = 3;
pub const OP_CHAIN: u8 = 4;
pub const OP_KICK: u8 = 5;
pub const OP_POLL: u8 = 6;
pub const OP_HOST: u8 = 7;
/// Descriptor flags.
pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;

/// What the host side of a device does between the driver's steps.
pub(crate) trait Host {
    fn op(&mut self, input: &mut Input);
}

/// The driver's view of one queue.
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    next_avail: u16,
    next_desc: u16,
}

impl Ring {
    fn store_desc(&self, mem: &GuestMemoryMmap, i: u16, d: Descriptor) {
        let at = self.desc + u64::from(i % self.size) * 16;
        let _ = mem.write_obj(RawDescriptor::from(d), GuestAddress(at));
    }

    fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.next_avail = idx;
        let _ = mem.write_obj(idx.to_le(), GuestAddress(self.avail + 2));
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let at = self.avail + 4 + u64::from(self.next_avail % self.size) * 2;
        let _ = mem.write_obj(head.to_le(), GuestAddress(at));
        self.set_avail_idx(mem, self.next_avail.wrapping_add(1));
    }
}

/// A guest address from four fuzz bytes: mostly within guest memory, the
/// top bit for addresses just below the end of the address space.
fn address(v: u32) -> u64 {
    if v & 0x8000_0000 != 0 {
        u64::MAX - u64::from(v & 0xffff)
    } else {
        u64::from(v) % (MEM_SIZE + 0x1000)
    }
}

/// Runs `data` against `device`'s queues; `host` plays its host side.
pub(crate) fn drive(data: &[u8], device: &mut dyn Serve, host: &mut dyn Host) {
    let mut input = Input::new(data);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("guest memory for the fuzz target");
    // The transport lets the driver accept only what was offered, and
    // VERSION_1 always (virtio::mmio).
    let features = (input.u64() & device.features()) | VIRTIO_F_VERSION_1;
    let mut rings = Vec::new();
    let mut queues = Vec::new();
    for (q, &max) in device.queue_max_sizes().to_vec().iter().enumerate() {
        let c = input.u8();
        let size = (1u16 << (c % 9)).min(max);
        let base = q as u64 * RINGS;
        let (desc, avail, used) = if c & 0x80 != 0 {
            (
                (u64::from(input.u32()) % MEM_SIZE) & !0xf,
                (u64::from(input.u32()) % MEM_SIZE) & !0x1,
                (u64::from(input.u32()) % MEM_SIZE) & !0x3,
            )
        } else {
            (base, base + 0x1000, base + 0x2000)
        };
        let mut queue = Queue::new(max).expect("a queue of the device's size");
        queue.set_size(size);
        queue.set_desc_table_address(Some(desc as u32), Some(0));
        queue.set_avail_ring_address(Some(avail as u32), Some(0));
        queue.set_used_ring_address(Some(used as u32), Some(0));
        queue.set_ready(c & 0x40 == 0);
        // The transport refuses to activate with a ready queue out of place.
        if queue.ready() && !queue.is_valid(&mem) {
            return;
        }
        queues.push(queue);
        rings.push(Ring {
            size,
            desc,
            avail,
            next_avail: 0,
            next_desc: 0,
        });
    }
    let kicks: Vec<EventFd> = rings
        .iter()
        .map(|_| EventFd::new(libc::EFD_NONBLOCK))
        .collect::<Result<_, _>>()
        .expect("eventfds");
    let queue_events = kicks
        .iter()
        .map(EventFd::try_clone)
        .collect::<Result<_, _>>()
        .expect("eventfds");
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let activation = Activation {
        mem: mem.clone(),
        queues,
        queue_events,
        interrupt: Interrupt::new(irq),
        features,
    };
    let Ok(mut handler) = device.serve(activation) else {
        return;
    };
    let epoll = Epoll::new().expect("epoll");
    let registry = Registry::new(&epoll);
    if handler.init(&registry).is_err() {
        return;
    }
    let mut broken = false;
    while !input.is_empty() {
        let op = input.u8() % 8;
        let q = if matches!(op, OP_BYTES | OP_POLL | OP_HOST) {
            0
        } else {
            usize::from(input.u8()) % rings.len()
        };
        let ring = &mut rings[q];
        match op {
            OP_DESC => {
                let (i, addr, len) = (input.u16(), address(input.u32()), input.u32());
                let (flags, next) = (input.u16(), input.u16());
                ring.store_desc(&mem, i, Descriptor::new(addr, len, flags, next));
            }
            OP_PUBLISH => ring.publish(&mem, input.u16()),
            OP_AVAIL_IDX => ring.set_avail_idx(&mem, input.u16()),
            OP_BYTES => {
                let at = u64::from(input.u32()) % MEM_SIZE;
                let n = usize::from(input.u8());
                let _ = mem.write_slice(input.bytes(n), GuestAddress(at));
            }
            OP_CHAIN => chain(&mem, ring, q, &mut input),
            OP_KICK => {
                let _ = kicks[q].write(1);
            }
            OP_POLL => broken = broken || !serve(&epoll, handler.as_mut()),
            _ => host.op(&mut input),
        }
    }
    // The driver's last word: every queue notified, the thread runs.
    for k in &kicks {
        let _ = k.write(1);
    }
    if !broken {
        serve(&epoll, handler.as_mut());
    }
}

/// Offers one well-formed chain of up to four descriptors, each with its
/// own buffer slot; the readable part is filled from the input.
fn chain(mem: &GuestMemoryMmap, ring: &mut Ring, q: usize, input: &mut Input) {
    let count = input.u8() % 4 + 1;
    let segs: Vec<(u32, bool)> = (0..count)
        .map(|_| {
            (
                u32::from(input.u16()) % (SLOT as u32 + 1),
                input.u8() & 1 != 0,
            )
        })
        .collect();
    let head = ring.next_desc % ring.size;
    for (k, &(len, writable)) in segs.iter().enumerate() {
        let i = ring.next_desc % ring.size;
        ring.next_desc = ring.next_desc.wrapping_add(1);
        let slot = (q as u64 * 256 + u64::from(i)) % SLOTS;
        let addr = BUFFERS + slot * SLOT;
        if !writable {
            let _ = mem.write_slice(input.bytes(len as usize), GuestAddress(addr));
        }
        let mut flags = if writable { WRITE } else { 0 };
        if k + 1 < segs.len() {
            flags |= NEXT;
        }
        let next = ring.next_desc % ring.size;
        ring.store_desc(mem, i, Descriptor::new(addr, len, flags, next));
    }
    ring.publish(mem, head);
}

/// Serves every pending event as the worker thread would; false once the
/// handler gave up (the worker would stop: the device is broken).
fn serve(epoll: &Epoll, handler: &mut dyn Handler) -> bool {
    let registry = Registry::new(epoll);
    let mut events = vec![EpollEvent::default(); 64];
    for _ in 0..ROUNDS {
        let n = match epoll.wait(0, &mut events) {
            Ok(0) => return true,
            Ok(n) => n,
            Err(_) => return true,
        };
        for ev in &events[..n] {
            if handler.ready(&registry, ev.data(), ev.event_set()).is_err() {
                return false;
            }
        }
    }
    true
}

/// The seeds' side of the table above.
pub struct Driver(pub Script);

impl Driver {
    /// Accepts `features`; every queue at its default place, `size` long.
    pub fn new(features: u64, queues: usize, size: u16) -> Driver {
        let mut s = Script::new();
        s.u64(features);
        for _ in 0..queues {
            s.u8(size.trailing_zeros() as u8);
        }
        Driver(s)
    }

    pub fn chain(&mut self, q: u8, segs: &[(u16, bool)], readable: &[u8]) -> &mut Self {
        self.0.u8(OP_CHAIN).u8(q).u8(segs.len() as u8 - 1);
        for &(len, writable) in segs {
            self.0.u16(len).u8(u8::from(writable));
        }
        self.0.bytes(readable);
        self
    }

    pub fn desc(&mut self, q: u8, i: u16, d: (u32, u32, u16, u16)) -> &mut Self {
        self.0
            .u8(OP_DESC)
            .u8(q)
            .u16(i)
            .u32(d.0)
            .u32(d.1)
            .u16(d.2)
            .u16(d.3);
        self
    }

    pub fn publish(&mut self, q: u8, head: u16) -> &mut Self {
        self.0.u8(OP_PUBLISH).u8(q).u16(head);
        self
    }

    pub fn kick(&mut self, q: u8) -> &mut Self {
        self.0.u8(OP_KICK).u8(q);
        self
    }

    pub fn poll(&mut self) -> &mut Self {
        self.0.u8(OP_POLL);
        self
    }

    /// A host op: its operands follow.
    pub fn host(&mut self, operands: &[u8]) -> &mut Self {
        self.0.u8(OP_HOST).bytes(operands);
        self
    }

    pub fn done(&mut self) -> Vec<u8> {
        self.0.done()
    }
}

/// virtio-rng's queue: the device has no host side to play.
pub fn rng(data: &[u8]) {
    struct Nothing;
    impl Host for Nothing {
        fn op(&mut self, _: &mut Input) {}
    }
    drive(data, &mut Rng::new(), &mut Nothing);
}

/// The host side of a net card: the other end of its "tap".
struct Tap {
    peer: Option<OwnedFd>,
}

const TAP_SEND: u8 = 0;
const TAP_RECV: u8 = 1;
const TAP_CLOSE: u8 = 2;

impl Host for Tap {
    fn op(&mut self, input: &mut Input) {
        let Some(peer) = &self.peer else {
            return;
        };
        match input.u8() % 3 {
            TAP_SEND => {
                // Frames up to one byte beyond the longest, as a tap could.
                let len = input.u32() as usize % (MAX_FRAME_LEN + 2);
                let mut frame = vec![0u8; len];
                let n = usize::from(input.u8()).min(len);
                let b = input.bytes(n);
                frame[..b.len()].copy_from_slice(b);
                let _ = send(peer.as_raw_fd(), &frame, MsgFlags::MSG_DONTWAIT);
            }
            TAP_RECV => {
                let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
                while let Ok(n) = recv(peer.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                    assert!(
                        (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&n),
                        "the guest's frame of {n} bytes reached the host"
                    );
                }
            }
            _ => self.peer = None,
        }
    }
}

/// A net card on one end of a socketpair, which plays its tap, and the
/// other end.
pub(crate) fn card() -> (Net, OwnedFd) {
    let (ours, peer) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let card = Net::with_endpoint(ours, [2, 0, 0, 0, 0, 1]).expect("a card");
    (card, peer)
}

/// virtio-net's receive and transmit queues against a socketpair "tap".
pub fn net(data: &[u8]) {
    let (mut card, peer) = card();
    drive(data, &mut card, &mut Tap { peer: Some(peer) });
}

pub(crate) fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    // Two entropy requests, one split over two buffers.
    let rng = Driver::new(0, 1, 16)
        .chain(0, &[(64, true)], &[])
        .chain(0, &[(16, true), (300, true)], &[])
        .kick(0)
        .poll()
        .done();
    out.push(("rng", "two-requests", rng));
    // Raw descriptors: an indirect table and a loop.
    let raw = Driver::new(0, 1, 16)
        .desc(0, 0, (0x10000, 32, 4, 0))
        .desc(0, 1, (0x11000, 8, WRITE | NEXT, 1))
        .publish(0, 0)
        .publish(0, 1)
        .kick(0)
        .poll()
        .done();
    out.push(("rng", "indirect-and-loop", raw));

    // A frame each way: the guest transmits one, the host sends one into
    // mergeable receive buffers.
    let mut frame = vec![0u8; 12 + 14 + 50];
    frame[12..18].copy_from_slice(&[0xff; 6]);
    frame[24..26].copy_from_slice(&[0x08, 0x00]);
    let send = |len: u32| {
        let mut op = vec![TAP_SEND];
        op.extend(len.to_le_bytes());
        op.push(frame.len() as u8);
        op.extend(&frame);
        op
    };
    let net = Driver::new(NET_FEATURES, 2, 16)
        .chain(1, &[(12, false), (frame.len() as u16 - 12, false)], &frame)
        .kick(1)
        .poll()
        .host(&[TAP_RECV])
        .chain(0, &[(40, true)], &[])
        .chain(0, &[(1500, true)], &[])
        .host(&send(frame.len() as u32))
        .poll()
        .done();
    out.push(("net", "a-frame-each-way", net));
    // Without offloads or mergeable buffers, a frame too big for the buffer,
    // then the host goes away.
    let small = Driver::new(0, 2, 4)
        .chain(0, &[(100, true)], &[])
        .host(&send(5000))
        .poll()
        .host(&[TAP_CLOSE])
        .chain(1, &[(frame.len() as u16, false)], &frame)
        .kick(1)
        .poll()
        .done();
    out.push(("net", "too-big-then-host-gone", small));
    out
}
