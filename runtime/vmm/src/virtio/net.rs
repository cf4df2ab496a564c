//! virtio-net (virtio 1.2, section 5.1): one receive/transmit queue pair
//! between the guest and a host tap.
//!
//! Frames cross with their `virtio_net_hdr_v1` as the guest wrote it (or as the
//! tap wrote it, bar `num_buffers`), so checksum and segmentation offloads go
//! straight through: a 64 KiB TCP segment is one frame each way, not forty-five.
//!
//! Everything in the queues is the guest's and may be hostile. A chain that is
//! unusable (outside guest memory, wrong direction, too short, too long) costs
//! the guest that one packet and a rate-limited warning; only what the queue
//! library refuses outright (a corrupt ring) stops the device.

use std::fmt::Display;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::errno::Errno;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{Handler, Registry, Worker};
use super::{
    ActivateError, Activation, Interrupt, VirtioDevice, INT_USED_RING, VIRTIO_F_VERSION_1,
};
use crate::ratelimit::Limited;
use crate::tap::{Tap, VNET_HDR_LEN};

/// The virtio device ID of a network card.
pub const DEVICE_TYPE: u32 = 1;

// Feature bits (virtio 1.2, 5.1.3).
pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_GUEST_ECN: u64 = 1 << 9;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;
pub const F_HOST_ECN: u64 = 1 << 13;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;

/// What the device offers. The offloads cost nothing here, the tap does the
/// work; MRG_RXBUF lets a 64 KiB frame land in page-sized buffers. No control
/// queue, no multiqueue, no EVENT_IDX (yet).
pub const FEATURES: u64 = VIRTIO_F_VERSION_1
    | F_CSUM
    | F_GUEST_CSUM
    | F_MAC
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN
    | F_MRG_RXBUF
    | F_STATUS;

/// config.status: VIRTIO_NET_S_LINK_UP.
const LINK_UP: u16 = 1;
const QUEUE_SIZE: u16 = 256;
const ETH_HLEN: usize = 14;
/// The longest frame either way: a 64 KiB GSO packet, its Ethernet header,
/// and the vnet header in front.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + ETH_HLEN + 65536;
/// Anything shorter is not an Ethernet frame.
pub const MIN_FRAME_LEN: usize = VNET_HDR_LEN + ETH_HLEN;
/// Frames per direction per wake-up, so that a flood one way cannot starve
/// the other.
const BUDGET: usize = 64;

// The worker's epoll tokens.
const RX_KICK: u64 = 0;
const TX_KICK: u64 = 1;
const HOST: u64 = 2;

/// The host side of the card: each read yields one frame and each write sends
/// one, both starting with a 12-byte `virtio_net_hdr_v1`. A [`Tap`] in
/// production; one end of a `SOCK_SEQPACKET` socketpair in tests. A zero-length
/// read means the host side is gone.
pub trait FrameEndpoint: AsFd + Send + Sync + 'static {
    /// The offloads the guest accepted, as TUN_F_* bits: what the endpoint may
    /// use in the frames it hands the device.
    fn set_offload(&self, tun_flags: u32) -> io::Result<()>;
}

impl FrameEndpoint for Tap {
    fn set_offload(&self, tun_flags: u32) -> io::Result<()> {
        Tap::set_offload(self, tun_flags).map_err(io::Error::other)
    }
}

/// A plain socket has no offloads to configure.
impl FrameEndpoint for OwnedFd {
    fn set_offload(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
}

/// The TUNSETOFFLOAD flags for what the guest said it can receive. The kernel
/// refuses segmentation without checksum offload, and so does the virtio spec
/// (GUEST_TSO* require GUEST_CSUM), so a driver that asks for it gets neither.
pub fn tun_offload(features: u64) -> u32 {
    if features & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if features & F_GUEST_TSO4 != 0 {
        flags |= libc::TUN_F_TSO4;
    }
    if features & F_GUEST_TSO6 != 0 {
        flags |= libc::TUN_F_TSO6;
    }
    if features & F_GUEST_ECN != 0 && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

/// A virtio network card backed by a host frame endpoint (a tap).
pub struct Net {
    host: Arc<dyn FrameEndpoint>,
    config: [u8; 8],
    worker: Option<Worker>,
}

impl Net {
    /// A card on `tap` (from [`Tap::open`], already non-blocking) with `mac`.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Net {
        Net::build(Arc::new(tap), mac)
    }

    /// A card on any frame endpoint; the fd is made non-blocking, since a
    /// worker stuck in read() could never be stopped.
    pub fn with_endpoint<E: FrameEndpoint>(endpoint: E, mac: [u8; 6]) -> io::Result<Net> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let fd = endpoint.as_fd().as_raw_fd();
        let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(Net::build(Arc::new(endpoint), mac))
    }

    fn build(host: Arc<dyn FrameEndpoint>, mac: [u8; 6]) -> Net {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..].copy_from_slice(&LINK_UP.to_le_bytes());
        Net {
            host,
            config,
            worker: None,
        }
    }

    /// The MAC address the guest reads from config space.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|start| self.config.get(start..))
        else {
            return;
        };
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }

    /// The MAC is only writable by legacy drivers, which the transport refuses.
    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.worker = None;
        let interrupt = activation.interrupt.clone();
        let handler = self.handler(activation)?;
        let worker =
            Worker::spawn(super::device_name(DEVICE_TYPE), handler, interrupt).map_err(|e| {
                ActivateError(format!("virtio-net: cannot start the worker thread: {e}"))
            })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        // Stops and joins the thread; frames it had pending are lost, as on a
        // real card's reset.
        self.worker = None;
    }
}

impl Net {
    /// What `activate` runs on the device's thread.
    fn handler(&mut self, activation: Activation) -> Result<NetHandler, ActivateError> {
        let Activation {
            mem,
            queues,
            queue_events,
            interrupt,
            features,
        } = activation;
        let refuse = |why: &str| ActivateError(format!("virtio-net: {why}"));
        // Queue 0 receives, queue 1 transmits (virtio 1.2, 5.1.2).
        let [rx, tx]: [Queue; 2] = queues
            .try_into()
            .map_err(|_| refuse("expected exactly two queues"))?;
        if !rx.ready() || !tx.ready() {
            return Err(refuse(
                "the driver did not set up both the receive and the transmit queue",
            ));
        }
        let [rx_event, tx_event]: [EventFd; 2] = queue_events
            .try_into()
            .map_err(|_| refuse("expected one notification eventfd per queue"))?;
        // Before the worker reads a single frame: the tap must not send what
        // this guest cannot take (the previous guest may have taken more).
        self.host
            .set_offload(tun_offload(features))
            .map_err(|e| refuse(&format!("cannot configure the host side's offloads: {e}")))?;
        Ok(NetHandler {
            dp: Datapath::new(mem, rx, tx, self.host.clone(), features, interrupt),
            rx_event,
            tx_event,
            registered: EventSet::empty(),
        })
    }
}

#[cfg(feature = "fuzzing")]
impl crate::fuzzing::Serve for Net {
    fn serve(&mut self, a: Activation) -> Result<Box<dyn Handler>, ActivateError> {
        Ok(Box::new(self.handler(a)?))
    }
}

/// The worker-thread side: eventfds and epoll interest around a [`Datapath`].
struct NetHandler {
    dp: Datapath,
    rx_event: EventFd,
    tx_event: EventFd,
    /// What the host fd is registered for (empty: not registered).
    registered: EventSet,
}

impl NetHandler {
    fn sync_interest(&mut self, registry: &Registry) -> io::Result<()> {
        let want = self.dp.interest();
        if want == self.registered {
            return Ok(());
        }
        let fd = self.dp.host.as_fd().as_raw_fd();
        if self.registered.is_empty() {
            registry.add(fd, HOST, want)?;
        } else if want.is_empty() {
            registry.remove(fd)?;
        } else {
            registry.modify(fd, HOST, want)?;
        }
        self.registered = want;
        Ok(())
    }
}

impl Handler for NetHandler {
    fn init(&mut self, registry: &Registry) -> io::Result<()> {
        registry.add(self.rx_event.as_raw_fd(), RX_KICK, EventSet::IN)?;
        registry.add(self.tx_event.as_raw_fd(), TX_KICK, EventSet::IN)?;
        // Serve whatever the driver queued before we were listening.
        self.rx_event.write(1)?;
        self.tx_event.write(1)?;
        self.sync_interest(registry)
    }

    fn ready(&mut self, registry: &Registry, token: u64, events: EventSet) -> Result<(), String> {
        match token {
            RX_KICK => {
                let _ = self.rx_event.read();
                self.dp.on_rx_kick()?;
            }
            TX_KICK => {
                let _ = self.tx_event.read();
                self.dp.on_tx_kick()?;
            }
            HOST => self.dp.on_host(events)?,
            _ => {}
        }
        if std::mem::take(&mut self.dp.tx_more) {
            let _ = self.tx_event.write(1);
        }
        self.sync_interest(registry)
            .map_err(|e| format!("cannot update the worker's epoll set: {e}"))
    }
}

/// Kinds of bad packets, each logged on its own schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    TxChainOutsideMemory,
    TxTooShort,
    TxTooLong,
    TxRefused,
    RxChainOutsideMemory,
    RxChainNotWritable,
    RxTooBigForBuffer,
    RxTooBigForRing,
    RxRunt,
    RxOversize,
}

impl Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bad::TxChainOutsideMemory => "a transmit chain points outside guest memory",
            Bad::TxTooShort => "a transmit chain is shorter than the vnet and Ethernet headers",
            Bad::TxTooLong => "a transmit chain is longer than 64 KiB plus headers",
            Bad::TxRefused => "the host refused a transmitted frame",
            Bad::RxChainOutsideMemory => "a receive chain points outside guest memory",
            Bad::RxChainNotWritable => "a receive chain has no device-writable space",
            Bad::RxTooBigForBuffer => {
                "a received frame does not fit one receive buffer (no mergeable buffers)"
            }
            Bad::RxTooBigForRing => "a received frame does not fit the whole receive ring",
            Bad::RxRunt => "the host delivered a frame shorter than the headers",
            Bad::RxOversize => "the host delivered a frame longer than 64 KiB plus headers",
        })?;
        f.write_str(", packet dropped")
    }
}

#[derive(Debug, PartialEq, Eq)]
enum TxOutcome {
    Sent,
    Dropped,
    /// The host cannot take it now; retry on EPOLLOUT.
    Blocked,
}

enum Recv {
    Frame(usize),
    /// Nothing usable this time, but there may be more to read.
    Skip,
    /// Drained (or gone): wait for the next EPOLLIN.
    Empty,
}

enum Delivery {
    /// The frame went to the guest, or was dropped for good.
    Done,
    /// The guest has not offered room enough yet; `seen` is the avail index
    /// observed, to tell whether more came meanwhile.
    NoRoom { seen: u16 },
}

/// Both directions of the card; everything here runs on the worker thread.
struct Datapath {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    host: Arc<dyn FrameEndpoint>,
    interrupt: Interrupt,
    mrg_rxbuf: bool,
    guest_csum: bool,
    /// One byte more than the longest frame, to notice longer ones.
    rx_frame: Vec<u8>,
    /// A frame read from the host that the guest has had no room for yet.
    rx_pending: Option<usize>,
    /// Waiting for the driver's rx notification; the host is not polled
    /// meanwhile, so frames queue in the tap instead of being dropped.
    rx_stalled: bool,
    tx_frame: Vec<u8>,
    /// The host's queue is full; the tx ring waits for EPOLLOUT.
    tx_blocked: bool,
    /// The tx budget ran out with chains left: the handler kicks us again.
    tx_more: bool,
    /// EPOLLHUP/EPOLLERR seen: read what is left, then stop.
    host_hung_up: bool,
    /// Reads fail for good; frames to the host are dropped.
    host_gone: bool,
    bad: Limited<Bad>,
}

fn corrupt(queue: &'static str) -> impl Fn(virtio_queue::Error) -> String {
    move |e| format!("the {queue} queue is corrupt: {e}")
}

/// The next chain the driver offers. Unlike `pop_descriptor_chain`, a corrupt
/// avail ring is an error here, not "nothing to do".
fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, virtio_queue::Error> {
    Ok(queue.iter(mem)?.next())
}

impl Datapath {
    fn new(
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        host: Arc<dyn FrameEndpoint>,
        features: u64,
        interrupt: Interrupt,
    ) -> Datapath {
        Datapath {
            mem,
            rx,
            tx,
            host,
            interrupt,
            mrg_rxbuf: features & F_MRG_RXBUF != 0,
            guest_csum: features & F_GUEST_CSUM != 0,
            rx_frame: vec![0; MAX_FRAME_LEN + 1],
            rx_pending: None,
            rx_stalled: false,
            tx_frame: vec![0; MAX_FRAME_LEN],
            tx_blocked: false,
            tx_more: false,
            host_hung_up: false,
            host_gone: false,
            bad: Limited::new("virtio-net"),
        }
    }

    /// What to poll the host fd for. Never something that stays ready while
    /// we cannot act on it: that would spin the worker.
    fn interest(&self) -> EventSet {
        let mut want = EventSet::empty();
        if self.host_gone {
            return want;
        }
        if !self.rx_stalled {
            want |= EventSet::IN;
        }
        if self.tx_blocked && !self.host_hung_up {
            want |= EventSet::OUT;
        }
        want
    }

    fn on_rx_kick(&mut self) -> Result<(), String> {
        // Kicks are only needed while we wait for buffers (see receive()).
        self.rx
            .disable_notification(&self.mem)
            .map_err(corrupt("receive"))?;
        self.rx_stalled = false;
        self.process_rx()
    }

    fn on_tx_kick(&mut self) -> Result<(), String> {
        self.process_tx()
    }

    fn on_host(&mut self, events: EventSet) -> Result<(), String> {
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            self.host_hung_up = true;
        }
        if self.tx_blocked && (events.contains(EventSet::OUT) || self.host_hung_up) {
            self.tx_blocked = false;
            self.process_tx()?;
        }
        if events.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
            self.process_rx()?;
        }
        Ok(())
    }

    fn host_is_gone(&mut self, why: impl Display) {
        if !self.host_gone {
            crate::guest_warn!("virtio-net: the host side of the card is gone ({why}); frames are dropped from now on");
            self.host_gone = true;
        }
    }

    fn process_tx(&mut self) -> Result<(), String> {
        let used_before = self.tx.next_used();
        let result = self.transmit();
        if self.tx.next_used() != used_before {
            let _ = self.interrupt.signal(INT_USED_RING);
        }
        result
    }

    fn transmit(&mut self) -> Result<(), String> {
        if self.tx_blocked {
            return Ok(());
        }
        // A handle of our own, so that chains borrowing it leave `self` free.
        let mem = self.mem.clone();
        let mut budget = BUDGET;
        loop {
            // No kicks while we are draining anyway.
            self.tx
                .disable_notification(&mem)
                .map_err(corrupt("transmit"))?;
            while let Some(chain) = next_chain(&mut self.tx, &mem).map_err(corrupt("transmit"))? {
                if budget == 0 {
                    self.tx.go_to_previous_position();
                    self.tx_more = true;
                    return Ok(());
                }
                budget -= 1;
                let head = chain.head_index();
                if self.send(&mem, chain) == TxOutcome::Blocked {
                    self.tx.go_to_previous_position();
                    self.tx_blocked = true;
                    return Ok(());
                }
                // The device writes nothing into a tx buffer.
                self.tx
                    .add_used(&mem, head, 0)
                    .map_err(corrupt("transmit"))?;
            }
            // Chains added after the ring looked empty, before kicks were back
            // on, would otherwise wait for the next kick.
            if !self
                .tx
                .enable_notification(&mem)
                .map_err(corrupt("transmit"))?
            {
                return Ok(());
            }
            // Each look costs budget too: a ring whose used flags lie on its
            // own available index "gains" a chain every time notifications
            // go on, and one that never yields one would spin here for ever,
            // where the worker cannot be stopped (found by fuzzing).
            if budget == 0 {
                self.tx_more = true;
                return Ok(());
            }
            budget -= 1;
        }
    }

    fn send(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> TxOutcome {
        let head = chain.head_index();
        let mut reader = match chain.reader(mem) {
            Ok(r) => r,
            Err(e) => {
                self.bad
                    .note(Bad::TxChainOutsideMemory, format_args!("chain {head}: {e}"));
                return TxOutcome::Dropped;
            }
        };
        let len = reader.available_bytes();
        if len < MIN_FRAME_LEN {
            self.bad
                .note(Bad::TxTooShort, format_args!("chain {head}: {len} bytes"));
            return TxOutcome::Dropped;
        }
        if len > MAX_FRAME_LEN {
            self.bad
                .note(Bad::TxTooLong, format_args!("chain {head}: {len} bytes"));
            return TxOutcome::Dropped;
        }
        let frame = &mut self.tx_frame[..len];
        if let Err(e) = reader.read_exact(frame) {
            self.bad
                .note(Bad::TxChainOutsideMemory, format_args!("chain {head}: {e}"));
            return TxOutcome::Dropped;
        }
        if self.host_gone {
            self.bad.note(Bad::TxRefused, "the host side is gone");
            return TxOutcome::Dropped;
        }
        loop {
            return match nix::unistd::write(self.host.as_fd(), frame) {
                Ok(n) if n == len => TxOutcome::Sent,
                Ok(n) => {
                    self.bad
                        .note(Bad::TxRefused, format_args!("{n} of {len} bytes written"));
                    TxOutcome::Dropped
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) if !self.host_hung_up => TxOutcome::Blocked,
                Err(e) => {
                    self.bad.note(Bad::TxRefused, e);
                    TxOutcome::Dropped
                }
            };
        }
    }

    fn process_rx(&mut self) -> Result<(), String> {
        let used_before = self.rx.next_used();
        let result = self.receive();
        if self.rx.next_used() != used_before {
            let _ = self.interrupt.signal(INT_USED_RING);
        }
        result
    }

    fn receive(&mut self) -> Result<(), String> {
        let mut budget = BUDGET;
        while !self.rx_stalled {
            let len = match self.rx_pending {
                Some(len) => len,
                None => {
                    if budget == 0 {
                        // Still polled for EPOLLIN, which is level-triggered:
                        // the rest comes on the next round.
                        return Ok(());
                    }
                    budget -= 1;
                    match self.recv() {
                        Recv::Frame(len) => len,
                        Recv::Skip => continue,
                        Recv::Empty => return Ok(()),
                    }
                }
            };
            self.rx_pending = Some(len);
            match self.deliver(len)? {
                Delivery::Done => self.rx_pending = None,
                Delivery::NoRoom { seen } => {
                    // Ask for a kick when buffers come, then look once more:
                    // they may have come just before kicks were back on.
                    self.rx
                        .enable_notification(&self.mem)
                        .map_err(corrupt("receive"))?;
                    let now = self
                        .rx
                        .avail_idx(&self.mem, Ordering::Acquire)
                        .map_err(corrupt("receive"))?;
                    if now.0 == seen {
                        self.rx_stalled = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self) -> Recv {
        if self.host_gone {
            return Recv::Empty;
        }
        match nix::unistd::read(self.host.as_fd().as_raw_fd(), &mut self.rx_frame) {
            Ok(0) => {
                self.host_is_gone("it closed");
                Recv::Empty
            }
            Ok(n) if n > MAX_FRAME_LEN => {
                self.bad
                    .note(Bad::RxOversize, format_args!("at least {n} bytes"));
                Recv::Skip
            }
            Ok(n) if n < MIN_FRAME_LEN => {
                self.bad.note(Bad::RxRunt, format_args!("{n} bytes"));
                Recv::Skip
            }
            Ok(n) => Recv::Frame(n),
            Err(Errno::EINTR) => Recv::Skip,
            // After a hang-up, "nothing now" means "nothing ever".
            Err(Errno::EAGAIN) if self.host_hung_up => {
                self.host_is_gone("it hung up");
                Recv::Empty
            }
            Err(Errno::EAGAIN) => Recv::Empty,
            Err(e) => {
                self.host_is_gone(e);
                Recv::Empty
            }
        }
    }

    /// Puts the `len`-byte frame in `rx_frame` into the guest's receive
    /// buffers: one chain, or as many as it takes with MRG_RXBUF. Chains are
    /// only consumed once the whole frame fits, so a guest briefly short of
    /// buffers loses nothing.
    fn deliver(&mut self, len: usize) -> Result<Delivery, String> {
        let mem = self.mem.clone();
        let start = self.rx.next_avail();
        let max_buffers = if self.mrg_rxbuf {
            usize::from(self.rx.size())
        } else {
            1
        };
        let mut buffers: Vec<(u16, Writer<'_>)> = Vec::new();
        let mut unusable: Vec<(u16, Bad)> = Vec::new();
        let mut room = 0usize;
        // Descriptors the driver has tied up in what we looked at: once that
        // is the whole ring it cannot offer more, and waiting is pointless.
        let mut descriptors = 0usize;
        while room < len && buffers.len() < max_buffers {
            let Some(chain) = next_chain(&mut self.rx, &mem).map_err(corrupt("receive"))? else {
                break;
            };
            descriptors += chain.clone().count().max(1);
            let head = chain.head_index();
            match chain.writer(&mem) {
                Ok(w) if w.available_bytes() > 0 => {
                    room = room.saturating_add(w.available_bytes());
                    buffers.push((head, w));
                }
                Ok(_) => unusable.push((head, Bad::RxChainNotWritable)),
                Err(_) => unusable.push((head, Bad::RxChainOutsideMemory)),
            }
        }

        if room < len {
            if !self.mrg_rxbuf && !buffers.is_empty() {
                // The one buffer a frame may use is too small. Keep it for a
                // smaller frame: only the chain popped last goes back.
                drop(buffers);
                self.rx.go_to_previous_position();
                self.bad
                    .note(Bad::RxTooBigForBuffer, format_args!("{len} bytes"));
                self.return_unused(&mem, unusable)?;
                return Ok(Delivery::Done);
            }
            if descriptors >= usize::from(self.rx.size()) {
                // Return everything, so that the driver can offer better.
                self.bad
                    .note(Bad::RxTooBigForRing, format_args!("{len} bytes"));
                for (head, _) in buffers {
                    self.rx
                        .add_used(&mem, head, 0)
                        .map_err(corrupt("receive"))?;
                }
                self.return_unused(&mem, unusable)?;
                return Ok(Delivery::Done);
            }
            let seen = self.rx.next_avail();
            self.rx.set_next_avail(start);
            return Ok(Delivery::NoRoom { seen });
        }
        self.return_unused(&mem, unusable)?;

        let frame = &mut self.rx_frame[..len];
        // At most the queue size, so it fits.
        frame[10..12].copy_from_slice(&(buffers.len() as u16).to_le_bytes());
        if !self.guest_csum {
            // Without GUEST_CSUM the flags must be zero (virtio 1.2, 5.1.6.4.1).
            frame[0] = 0;
        }
        let mut offset = 0;
        for (head, mut w) in buffers {
            let take = (len - offset).min(w.available_bytes());
            // Cannot fail: the writer's slices were checked against guest
            // memory when it was made. If it did, the guest sees a short buffer.
            let _ = w.write_all(&frame[offset..offset + take]);
            offset += take;
            self.rx
                .add_used(&mem, head, w.bytes_written() as u32)
                .map_err(corrupt("receive"))?;
        }
        Ok(Delivery::Done)
    }

    /// Hands unusable receive chains back empty, so they do not clog the ring.
    fn return_unused(
        &mut self,
        mem: &GuestMemoryMmap,
        unusable: Vec<(u16, Bad)>,
    ) -> Result<(), String> {
        for (head, bad) in unusable {
            self.bad.note(bad, format_args!("chain {head}"));
            self.rx.add_used(mem, head, 0).map_err(corrupt("receive"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};
    use proptest::prelude::*;
    use std::time::{Duration, Instant};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const MEM_SIZE: usize = 2 << 20;
    const RX_RING: u64 = 0;
    const TX_RING: u64 = 0x8000;
    /// Where test buffers go, clear of both rings.
    const BUFS: u64 = 0x10000;
    const MAC: [u8; 6] = [0x02, 0x6f, 0x6b, 0x76, 0x6d, 0x01];

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// The host side in tests: one SEQPACKET message is one frame, as on a tap.
    fn host_pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    fn irq() -> Interrupt {
        Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    /// A frame with its vnet header as a tap writes it: DATA_VALID set,
    /// num_buffers left as garbage for the device to fill in.
    fn frame(payload_len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f[0] = 2;
        f[10] = 0xee;
        f[11] = 0xee;
        f.extend((0..payload_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
        f
    }

    /// What the guest should see for `f` spread over `buffers` buffers.
    fn as_delivered(f: &[u8], buffers: u16) -> Vec<u8> {
        let mut want = f.to_vec();
        want[10..12].copy_from_slice(&buffers.to_le_bytes());
        want
    }

    fn host_send(peer: &OwnedFd, frame: &[u8]) {
        assert_eq!(nix::unistd::write(peer, frame).unwrap(), frame.len());
    }

    fn host_recv(peer: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
        match nix::unistd::read(peer.as_raw_fd(), &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(Errno::EAGAIN) => None,
            Err(e) => panic!("reading the host side: {e}"),
        }
    }

    fn read_guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// The guest driver's side of one queue, on top of MockSplitQueue.
    ///
    /// The used ring lives a page of its own: the mock computes the end of
    /// its avail ring in elements rather than bytes (virtio-queue 0.18), so
    /// its used ring overlaps the upper half of the avail ring.
    struct Driver<'a> {
        vq: MockSplitQueue<'a, GuestMemoryMmap>,
        mem: &'a GuestMemoryMmap,
        used_addr: GuestAddress,
        size: u16,
        next_desc: u16,
        avail: u16,
        seen_used: u16,
    }

    impl<'a> Driver<'a> {
        fn new(mem: &'a GuestMemoryMmap, at: u64, size: u16) -> Self {
            let used_addr = GuestAddress(at + 0x2000);
            // Flags and index: a fresh ring, also after a reset.
            mem.write_obj(0u32, used_addr).unwrap();
            Driver {
                vq: MockSplitQueue::create(mem, GuestAddress(at), size),
                mem,
                used_addr,
                size,
                next_desc: 0,
                avail: 0,
                seen_used: 0,
            }
        }

        fn queue(&self) -> Queue {
            let mut q: Queue = self.vq.create_queue().unwrap();
            let used = self.used_addr.0;
            q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
            q
        }

        /// Offers one chain of (address, length, flags) buffers; returns its head.
        fn offer(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
            let head = self.next_desc;
            for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                let at = self.next_desc;
                self.next_desc = (self.next_desc + 1) % self.size;
                let (flags, next) = if i + 1 < bufs.len() {
                    (flags | NEXT, self.next_desc)
                } else {
                    (flags & !NEXT, 0)
                };
                let desc = SplitDescriptor::new(addr, len, flags, next);
                self.vq
                    .desc_table()
                    .store(at, RawDescriptor::from(desc))
                    .unwrap();
            }
            self.publish(head);
            head
        }

        fn publish(&mut self, head: u16) {
            let slot = usize::from(self.avail % self.size);
            self.vq.avail().ring().ref_at(slot).unwrap().store(head);
            self.avail = self.avail.wrapping_add(1);
            self.vq.avail().idx().store(self.avail);
        }

        fn used_idx(&self) -> u16 {
            self.mem
                .read_obj(GuestAddress(self.used_addr.0 + 2))
                .unwrap()
        }

        /// The used entries (head, length) added since the last call.
        fn take_used(&mut self) -> Vec<(u16, u32)> {
            let idx = self.used_idx();
            let mut out = Vec::new();
            while self.seen_used != idx {
                let slot = u64::from(self.seen_used % self.size);
                let at = GuestAddress(self.used_addr.0 + 4 + slot * 8);
                let [id, len]: [u32; 2] = self.mem.read_obj(at).unwrap();
                out.push((id as u16, len));
                self.seen_used = self.seen_used.wrapping_add(1);
            }
            out
        }

        /// Whether the device asks to be notified (VRING_USED_F_NO_NOTIFY clear).
        fn kicks_wanted(&self) -> bool {
            self.mem.read_obj::<u16>(self.used_addr).unwrap() & 1 == 0
        }
    }

    /// A datapath driven synchronously: no worker thread, no timing.
    struct Rig<'a> {
        rx: Driver<'a>,
        tx: Driver<'a>,
        dp: Datapath,
        peer: OwnedFd,
        irq: Interrupt,
    }

    fn rig(mem: &GuestMemoryMmap, features: u64) -> Rig<'_> {
        rig_sized(mem, features, 16)
    }

    fn rig_sized(mem: &GuestMemoryMmap, features: u64, size: u16) -> Rig<'_> {
        let rx = Driver::new(mem, RX_RING, size);
        let tx = Driver::new(mem, TX_RING, size);
        let (ours, peer) = host_pair();
        let irq = irq();
        let dp = Datapath::new(
            mem.clone(),
            rx.queue(),
            tx.queue(),
            Arc::new(ours),
            features,
            irq.clone(),
        );
        Rig {
            rx,
            tx,
            dp,
            peer,
            irq,
        }
    }

    #[test]
    fn a_transmitted_frame_reaches_the_host_byte_exact() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        let f = frame(1000, 7);
        // Header and payload in separate buffers, as Linux sends them, and a
        // stray device-writable buffer at the end, which is not part of it.
        mem.write_slice(&f[..12], GuestAddress(BUFS)).unwrap();
        mem.write_slice(&f[12..500], GuestAddress(BUFS + 0x1000))
            .unwrap();
        mem.write_slice(&f[500..], GuestAddress(BUFS + 0x2000))
            .unwrap();
        let head = r.tx.offer(&[
            (BUFS, 12, 0),
            (BUFS + 0x1000, 488, 0),
            (BUFS + 0x2000, (f.len() - 500) as u32, 0),
            (BUFS + 0x3000, 100, WRITE),
        ]);
        r.dp.on_tx_kick().unwrap();
        assert_eq!(host_recv(&r.peer).as_deref(), Some(&f[..]));
        assert_eq!(host_recv(&r.peer), None, "exactly one frame");
        assert_eq!(r.tx.take_used(), vec![(head, 0)]);
        assert_ne!(r.irq.status.load(Ordering::SeqCst) & INT_USED_RING, 0);
        assert_eq!(r.irq.irq.read().unwrap(), 1);
        assert!(r.tx.kicks_wanted(), "kicks are back on once drained");
    }

    #[test]
    fn a_received_frame_lands_in_a_guest_buffer_with_num_buffers_1() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        let f = frame(1400, 3);
        let head = r.rx.offer(&[(BUFS, 2048, WRITE)]);
        host_send(&r.peer, &f);
        r.dp.on_host(EventSet::IN).unwrap();
        assert_eq!(r.rx.take_used(), vec![(head, f.len() as u32)]);
        assert_eq!(read_guest(&mem, BUFS, f.len()), as_delivered(&f, 1));
        assert_eq!(r.irq.irq.read().unwrap(), 1);
        assert!(r.dp.interest().contains(EventSet::IN));
    }

    #[test]
    fn a_large_frame_spans_mergeable_buffers() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        let heads: Vec<u16> = (0..4)
            .map(|i| r.rx.offer(&[(BUFS + i * 0x1000, 1500, WRITE)]))
            .collect();
        let big = frame(4000, 9);
        let small = frame(100, 1);
        host_send(&r.peer, &big);
        host_send(&r.peer, &small);
        r.dp.on_host(EventSet::IN).unwrap();
        let used = r.rx.take_used();
        assert_eq!(
            used,
            vec![
                (heads[0], 1500),
                (heads[1], 1500),
                (heads[2], (big.len() - 3000) as u32),
                (heads[3], small.len() as u32),
            ]
        );
        let mut got = Vec::new();
        for (i, &(_, len)) in used[..3].iter().enumerate() {
            got.extend(read_guest(&mem, BUFS + i as u64 * 0x1000, len as usize));
        }
        assert_eq!(got, as_delivered(&big, 3));
        assert_eq!(
            read_guest(&mem, BUFS + 0x3000, small.len()),
            as_delivered(&small, 1)
        );
    }

    #[test]
    fn reception_waits_for_buffers_without_dropping_or_polling() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(500 + i * 100, i as u8)).collect();
        for f in &frames {
            host_send(&r.peer, f);
        }
        r.dp.on_host(EventSet::IN).unwrap();
        assert!(r.rx.take_used().is_empty());
        assert!(
            !r.dp.interest().contains(EventSet::IN),
            "the host is not polled while the guest has no room"
        );
        assert!(r.rx.kicks_wanted(), "the device waits for a kick");
        // A spurious wake-up changes nothing.
        r.dp.on_host(EventSet::IN).unwrap();
        assert!(r.rx.take_used().is_empty());

        let heads: Vec<u16> = (0..3)
            .map(|i| r.rx.offer(&[(BUFS + i * 0x1000, 2048, WRITE)]))
            .collect();
        r.dp.on_rx_kick().unwrap();
        let used = r.rx.take_used();
        assert_eq!(used.len(), 3, "{used:?}");
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(used[i], (heads[i], f.len() as u32));
            assert_eq!(
                read_guest(&mem, BUFS + i as u64 * 0x1000, f.len()),
                as_delivered(f, 1)
            );
        }
        assert!(r.dp.interest().contains(EventSet::IN));
        assert!(!r.rx.kicks_wanted(), "no kicks needed while not waiting");
        assert_eq!(r.dp.bad.total(), 0, "nothing dropped");
    }

    #[test]
    fn a_frame_waits_until_the_offered_buffers_hold_all_of_it() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        let first = r.rx.offer(&[(BUFS, 1000, WRITE)]);
        let f = frame(2500, 5);
        host_send(&r.peer, &f);
        r.dp.on_host(EventSet::IN).unwrap();
        assert!(
            r.rx.take_used().is_empty(),
            "no partial frame, no buffer taken"
        );
        let more = [
            r.rx.offer(&[(BUFS + 0x1000, 1000, WRITE)]),
            r.rx.offer(&[(BUFS + 0x2000, 1000, WRITE)]),
        ];
        r.dp.on_rx_kick().unwrap();
        assert_eq!(
            r.rx.take_used(),
            vec![(first, 1000), (more[0], 1000), (more[1], 512)]
        );
    }

    #[test]
    fn without_mergeable_buffers_a_frame_too_big_for_one_buffer_is_dropped_alone() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES & !F_MRG_RXBUF);
        let head = r.rx.offer(&[(BUFS, 1500, WRITE)]);
        host_send(&r.peer, &frame(3000, 0));
        let small = frame(200, 4);
        host_send(&r.peer, &small);
        r.dp.on_host(EventSet::IN).unwrap();
        assert_eq!(r.rx.take_used(), vec![(head, small.len() as u32)]);
        assert_eq!(read_guest(&mem, BUFS, small.len()), as_delivered(&small, 1));
        assert_eq!(r.dp.bad.count(Bad::RxTooBigForBuffer), 1);
    }

    #[test]
    fn without_guest_checksum_offload_the_header_flags_are_cleared() {
        let mem = memory();
        let mut r = rig(&mem, VIRTIO_F_VERSION_1 | F_MRG_RXBUF);
        r.rx.offer(&[(BUFS, 2048, WRITE)]);
        let f = frame(100, 0);
        host_send(&r.peer, &f);
        r.dp.on_host(EventSet::IN).unwrap();
        let got = read_guest(&mem, BUFS, f.len());
        assert_eq!(got[0], 0);
        assert_eq!(got[1..], as_delivered(&f, 1)[1..]);
    }

    #[test]
    fn unusable_receive_chains_are_returned_empty() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        let read_only = r.rx.offer(&[(BUFS, 2048, 0)]);
        let empty = r.rx.offer(&[(BUFS, 0, WRITE)]);
        let outside = r.rx.offer(&[(MEM_SIZE as u64 + 0x1000, 2048, WRITE)]);
        let good = r.rx.offer(&[(BUFS + 0x1000, 2048, WRITE)]);
        let f = frame(100, 2);
        host_send(&r.peer, &f);
        r.dp.on_host(EventSet::IN).unwrap();
        assert_eq!(
            r.rx.take_used(),
            vec![
                (read_only, 0),
                (empty, 0),
                (outside, 0),
                (good, f.len() as u32)
            ]
        );
        assert_eq!(
            read_guest(&mem, BUFS + 0x1000, f.len()),
            as_delivered(&f, 1)
        );
        assert_eq!(r.dp.bad.count(Bad::RxChainNotWritable), 2);
        assert_eq!(r.dp.bad.count(Bad::RxChainOutsideMemory), 1);
    }

    #[test]
    fn a_frame_larger_than_the_whole_ring_is_dropped_and_the_ring_returned() {
        let mem = memory();
        let mut r = rig_sized(&mem, FEATURES, 4);
        let heads: Vec<u16> = (0..4)
            .map(|i| r.rx.offer(&[(BUFS + i * 0x1000, 100, WRITE)]))
            .collect();
        host_send(&r.peer, &frame(1000, 0));
        r.dp.on_host(EventSet::IN).unwrap();
        let used = r.rx.take_used();
        assert_eq!(used, heads.iter().map(|&h| (h, 0)).collect::<Vec<_>>());
        assert_eq!(r.dp.bad.count(Bad::RxTooBigForRing), 1);
        assert!(!r.dp.rx_stalled, "reception goes on");
    }

    #[test]
    fn bad_transmit_chains_are_dropped_and_returned() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        let good = frame(60, 8);
        mem.write_slice(&good, GuestAddress(BUFS + 0x8000)).unwrap();
        let heads = [
            r.tx.offer(&[(BUFS, 2048, WRITE)]),                  // write-only
            r.tx.offer(&[(BUFS, 5, 0)]),                         // shorter than the header
            r.tx.offer(&[(BUFS, 12, 0)]),                        // a header, no frame
            r.tx.offer(&[(BUFS, 0, 0)]),                         // zero-length
            r.tx.offer(&[(MEM_SIZE as u64 - 8, 100, 0)]),        // runs off guest memory
            r.tx.offer(&[(BUFS, u32::MAX, 0)]),                  // giant
            r.tx.offer(&[(BUFS, 40_000, 0), (BUFS, 40_000, 0)]), // over 64 KiB
            r.tx.offer(&[(BUFS + 0x8000, good.len() as u32, 0)]),
        ];
        r.dp.on_tx_kick().unwrap();
        assert_eq!(host_recv(&r.peer), Some(good));
        assert_eq!(host_recv(&r.peer), None);
        assert_eq!(
            r.tx.take_used(),
            heads.iter().map(|&h| (h, 0)).collect::<Vec<_>>()
        );
        assert_eq!(r.dp.bad.count(Bad::TxTooShort), 4);
        assert_eq!(r.dp.bad.count(Bad::TxChainOutsideMemory), 2);
        assert_eq!(r.dp.bad.count(Bad::TxTooLong), 1);
    }

    #[test]
    fn a_full_host_queue_pauses_transmission_until_writable() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        // Room for two of the four frames in flight.
        setsockopt(&r.dp.host.as_fd(), sockopt::SndBuf, &32768).unwrap();
        let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(30_000, i as u8)).collect();
        for (i, f) in frames.iter().enumerate() {
            let at = BUFS + i as u64 * 0x10000;
            mem.write_slice(f, GuestAddress(at)).unwrap();
            r.tx.offer(&[(at, f.len() as u32, 0)]);
        }
        r.dp.on_tx_kick().unwrap();
        assert!(r.dp.tx_blocked, "the socket's send buffer is full");
        assert!(r.dp.interest().contains(EventSet::OUT));
        let mut got = Vec::new();
        for _ in 0..10 {
            while let Some(f) = host_recv(&r.peer) {
                got.push(f);
            }
            if got.len() == frames.len() {
                break;
            }
            r.dp.on_host(EventSet::OUT).unwrap();
        }
        assert_eq!(got, frames, "all frames, in order, none dropped");
        assert_eq!(r.tx.take_used().len(), 4);
        assert!(!r.dp.interest().contains(EventSet::OUT));
        assert_eq!(r.dp.bad.total(), 0);
    }

    #[test]
    fn a_transmit_ring_on_top_of_itself_cannot_spin_the_worker() {
        // The used ring's flags on the available ring's index (the transport
        // allows any placement within guest memory): turning notifications
        // on and off flips the index, so the ring always looks non-empty
        // once notifications are on again, and never yields a chain.
        // Fuzzing found this; fuzz/corpus/net/crash-tx-ring-on-itself-spins.
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        let mut tx = Queue::new(QUEUE_SIZE).unwrap();
        tx.set_size(2);
        tx.set_desc_table_address(Some(0), Some(0));
        tx.set_avail_ring_address(Some(2), Some(0));
        tx.set_used_ring_address(Some(4), Some(0));
        tx.set_ready(true);
        assert!(tx.is_valid(&mem));
        r.dp.tx = tx;
        let (done, wait) = std::sync::mpsc::channel();
        let mut dp = r.dp;
        std::thread::spawn(move || {
            let _ = dp.on_tx_kick();
            let _ = done.send(dp.tx_more);
        });
        let more = wait
            .recv_timeout(Duration::from_secs(10))
            .expect("transmit returned to the worker's loop");
        assert!(more, "it comes back for the rest on its next round");
    }

    #[test]
    fn a_long_transmit_burst_yields_to_the_other_direction() {
        let mem = memory();
        let mut r = rig_sized(&mem, FEATURES, 256);
        let f = frame(60, 0);
        mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        for _ in 0..100 {
            r.tx.offer(&[(BUFS, f.len() as u32, 0)]);
        }
        r.dp.on_tx_kick().unwrap();
        assert_eq!(r.tx.take_used().len(), BUDGET);
        assert!(std::mem::take(&mut r.dp.tx_more), "asks to be called again");
        r.dp.on_tx_kick().unwrap();
        assert_eq!(r.tx.take_used().len(), 100 - BUDGET);
        assert!(!r.dp.tx_more);
    }

    #[test]
    fn a_corrupt_ring_breaks_the_device_instead_of_the_vmm() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        // The driver claims far more chains than the ring holds.
        r.tx.vq.avail().idx().store(1000);
        let e = r.dp.on_tx_kick().unwrap_err();
        assert!(e.contains("transmit queue is corrupt"), "{e}");

        let mut r = rig(&mem, FEATURES);
        // A head index beyond the ring cannot be returned, which is found
        // out once a frame is delivered past it.
        r.rx.publish(99);
        r.rx.offer(&[(BUFS, 2048, WRITE)]);
        host_send(&r.peer, &frame(100, 0));
        let e = r.dp.on_host(EventSet::IN).unwrap_err();
        assert!(e.contains("receive queue is corrupt"), "{e}");
    }

    #[test]
    fn a_host_side_that_goes_away_is_not_polled_any_more() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        let f = frame(60, 0);
        mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        drop(std::mem::replace(&mut r.peer, host_pair().0));
        r.dp.on_host(EventSet::IN | EventSet::HANG_UP).unwrap();
        assert!(r.dp.host_gone);
        assert!(r.dp.interest().is_empty());
        let head = r.tx.offer(&[(BUFS, f.len() as u32, 0)]);
        r.dp.on_tx_kick().unwrap();
        assert_eq!(r.tx.take_used(), vec![(head, 0)], "dropped, not stuck");
        assert_eq!(r.dp.bad.count(Bad::TxRefused), 1);
    }

    #[test]
    fn a_hang_up_while_waiting_for_buffers_does_not_spin() {
        let mem = memory();
        let mut r = rig(&mem, FEATURES);
        host_send(&r.peer, &frame(60, 0));
        r.dp.on_host(EventSet::IN).unwrap();
        assert!(r.dp.rx_stalled);
        drop(std::mem::replace(&mut r.peer, host_pair().0));
        r.dp.on_host(EventSet::HANG_UP).unwrap();
        assert!(
            r.dp.interest().is_empty(),
            "nothing to poll for: a level-triggered HUP would spin"
        );
        // The frame read before the hang-up still reaches the guest.
        let head = r.rx.offer(&[(BUFS, 2048, WRITE)]);
        r.dp.on_rx_kick().unwrap();
        assert_eq!(r.rx.take_used(), vec![(head, 72)]);
        assert!(r.dp.host_gone);
    }

    #[test]
    fn the_offloads_the_guest_accepts_become_tun_flags() {
        use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN};
        assert_eq!(
            tun_offload(FEATURES),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        );
        assert_eq!(tun_offload(VIRTIO_F_VERSION_1 | F_MRG_RXBUF), 0);
        assert_eq!(tun_offload(F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            tun_offload(F_GUEST_CSUM | F_GUEST_TSO6),
            TUN_F_CSUM | TUN_F_TSO6
        );
        // The kernel (and the spec) refuse TSO without checksum offload.
        assert_eq!(tun_offload(F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN), 0);
        assert_eq!(tun_offload(F_GUEST_CSUM | F_GUEST_ECN), TUN_F_CSUM);
        // Host-side offloads concern what the guest sends: no tap flag.
        assert_eq!(tun_offload(F_GUEST_CSUM | F_HOST_TSO4 | F_CSUM), TUN_F_CSUM);
    }

    #[test]
    fn config_space_holds_the_mac_and_link_up() {
        let net = Net::with_endpoint(host_pair().0, MAC).unwrap();
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        assert_ne!(net.features() & VIRTIO_F_VERSION_1, 0);
        assert_eq!(net.mac(), MAC);
        let mut all = [0xffu8; 8];
        net.read_config(0, &mut all);
        assert_eq!(all, [0x02, 0x6f, 0x6b, 0x76, 0x6d, 0x01, 1, 0]);
        let mut status = [0u8; 2];
        net.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), 1);
        // Reads past the end leave the transport's zero fill alone.
        let mut tail = [0u8; 4];
        net.read_config(6, &mut tail);
        assert_eq!(tail, [1, 0, 0, 0]);
        let mut beyond = [0u8; 4];
        net.read_config(u64::MAX, &mut beyond);
        assert_eq!(beyond, [0; 4]);
    }

    fn activation(
        mem: &GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: &Interrupt,
    ) -> (Activation, Vec<EventFd>) {
        let events: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let kicks = events.iter().map(|e| e.try_clone().unwrap()).collect();
        let a = Activation {
            mem: mem.clone(),
            queues,
            queue_events: events,
            interrupt: interrupt.clone(),
            features: FEATURES,
        };
        (a, kicks)
    }

    fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The worker threads named okvm-net, by thread id.
    fn net_threads() -> Vec<u32> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|tid: &u32| {
                std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                    .is_ok_and(|c| c.trim() == "okvm-net")
            })
            .collect()
    }

    /// user + system clock ticks a thread has used.
    fn cpu_ticks(tid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after comm.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    #[test]
    fn the_device_serves_both_directions_on_its_worker_thread() {
        let mem = memory();
        let mut rx = Driver::new(&mem, RX_RING, 16);
        let mut tx = Driver::new(&mem, TX_RING, 16);
        let (ours, peer) = host_pair();
        let mut net = Net::with_endpoint(ours, MAC).unwrap();
        let interrupt = irq();
        let before = net_threads();
        let (a, kicks) = activation(&mem, vec![rx.queue(), tx.queue()], &interrupt);
        net.activate(a).unwrap();
        let worker: Vec<u32> = net_threads()
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect();

        // Guest to host.
        let out = frame(1000, 1);
        mem.write_slice(&out, GuestAddress(BUFS)).unwrap();
        tx.offer(&[(BUFS, out.len() as u32, 0)]);
        kicks[1].write(1).unwrap();
        assert_eq!(wait_for("the transmitted frame", || host_recv(&peer)), out);

        // Host to guest, with the guest's buffer coming late: the worker
        // must wait without spinning and without losing the frame.
        let inbound = frame(700, 2);
        host_send(&peer, &inbound);
        std::thread::sleep(Duration::from_millis(50));
        let ticks = worker.iter().map(|&t| cpu_ticks(t)).sum::<u64>();
        std::thread::sleep(Duration::from_millis(300));
        let spent = worker.iter().map(|&t| cpu_ticks(t)).sum::<u64>() - ticks;
        assert!(
            spent <= 5,
            "the waiting worker used {spent} ticks in 300 ms"
        );
        let head = rx.offer(&[(BUFS + 0x4000, 2048, WRITE)]);
        kicks[0].write(1).unwrap();
        wait_for("the received frame", || (rx.used_idx() == 1).then_some(()));
        assert_eq!(rx.take_used(), vec![(head, inbound.len() as u32)]);
        assert_eq!(
            read_guest(&mem, BUFS + 0x4000, inbound.len()),
            as_delivered(&inbound, 1)
        );
        assert!(interrupt.broken().is_none());

        // A reset stops the worker; a new activation serves fresh queues on
        // the same host endpoint.
        net.reset();
        let mut rx = Driver::new(&mem, RX_RING, 16);
        let tx = Driver::new(&mem, TX_RING, 16);
        let (a, kicks) = activation(&mem, vec![rx.queue(), tx.queue()], &interrupt);
        net.activate(a).unwrap();
        let head = rx.offer(&[(BUFS, 2048, WRITE)]);
        kicks[0].write(1).unwrap();
        host_send(&peer, &inbound);
        wait_for("the frame after reset", || {
            (rx.used_idx() == 1).then_some(())
        });
        assert_eq!(rx.take_used(), vec![(head, inbound.len() as u32)]);
        net.reset();
    }

    #[test]
    fn activation_needs_both_queues_set_up() {
        let mem = memory();
        let rx = Driver::new(&mem, RX_RING, 16);
        let tx = Driver::new(&mem, TX_RING, 16);
        let mut net = Net::with_endpoint(host_pair().0, MAC).unwrap();
        let interrupt = irq();
        let mut unready = tx.queue();
        unready.set_ready(false);
        let (a, _) = activation(&mem, vec![rx.queue(), unready], &interrupt);
        let e = net.activate(a).unwrap_err().to_string();
        assert!(e.contains("did not set up both"), "{e}");
        let (a, _) = activation(&mem, vec![rx.queue()], &interrupt);
        let e = net.activate(a).unwrap_err().to_string();
        assert!(e.contains("two queues"), "{e}");
    }

    /// An AF_PACKET socket on `ifname`: what the host stack sees of the tap.
    fn packet_socket(ifname: &str) -> OwnedFd {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh socket that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain C data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = nix::net::if_::if_nametoindex(ifname).unwrap() as i32;
        // SAFETY: bind(2) reads `sll`, whose size we pass, from our stack.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert!(r == 0, "bind: {}", io::Error::last_os_error());
        sock
    }

    /// An Ethernet frame of the local experimental ethertype 0x88b5, which
    /// nothing in the kernel answers to.
    fn eth_frame(src: [u8; 6], payload_len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend(src);
        f.extend([0x88, 0xb5]);
        f.extend((0..payload_len).map(|i| (i as u8) ^ seed));
        f
    }

    #[test]
    fn frames_cross_a_real_tap_with_their_vnet_header() {
        let Some(()) = crate::tap::tests::in_new_netns(|| {
            crate::tap::tests::create_persistent_tap("okvm-t1");
            let tap = Tap::open("okvm-t1").expect("attach");
            crate::tap::tests::set_link_up("okvm-t1");
            let host = packet_socket("okvm-t1");

            let mem = memory();
            let mut rx = Driver::new(&mem, RX_RING, 16);
            let mut tx = Driver::new(&mem, TX_RING, 16);
            let mut net = Net::new(tap, MAC);
            let interrupt = irq();
            let (a, kicks) = activation(&mem, vec![rx.queue(), tx.queue()], &interrupt);
            // All offloads on: TUNSETOFFLOAD with TSO must be accepted.
            net.activate(a).unwrap();

            // Guest to host: the tap takes the vnet header off.
            let out = eth_frame(MAC, 200, 0x5a);
            let mut with_hdr = vec![0u8; VNET_HDR_LEN];
            with_hdr.extend(&out);
            mem.write_slice(&with_hdr, GuestAddress(BUFS)).unwrap();
            tx.offer(&[(BUFS, with_hdr.len() as u32, 0)]);
            kicks[1].write(1).unwrap();
            wait_for("the guest's frame on the host", || {
                std::iter::from_fn(|| host_recv(&host)).find(|f| *f == out)
            });

            // Host to guest: the tap puts a vnet header in front. The kernel
            // may send its own IPv6 chatter too, hence the spare buffers.
            for i in 0..15 {
                rx.offer(&[(BUFS + 0x10000 + i * 0x1000, 2048, WRITE)]);
            }
            kicks[0].write(1).unwrap();
            let inbound = eth_frame([0x02, 0, 0, 0, 0, 0x99], 300, 0xa5);
            assert_eq!(nix::unistd::write(&host, &inbound).unwrap(), inbound.len());
            let hdr = wait_for("the host's frame in the guest", || {
                rx.take_used().into_iter().find_map(|(head, len)| {
                    let got = read_guest(
                        &mem,
                        BUFS + 0x10000 + u64::from(head) * 0x1000,
                        len as usize,
                    );
                    (got.get(VNET_HDR_LEN..) == Some(&inbound[..]))
                        .then(|| got[..VNET_HDR_LEN].to_vec())
                })
            });
            assert_eq!(&hdr[10..12], &1u16.to_le_bytes(), "num_buffers");
            assert!(interrupt.broken().is_none());
            net.reset();
        }) else {
            return;
        };
    }

    /// One descriptor as a hostile driver might write it: mostly in guest
    /// memory, sometimes anywhere; any flags (NEXT, WRITE, INDIRECT); any
    /// next index, in the table or beyond it.
    fn descriptor() -> impl Strategy<Value = (u64, u32, u16, u16)> {
        let addr = prop_oneof![
            4 => BUFS..MEM_SIZE as u64,
            1 => any::<u64>(),
            1 => Just(MEM_SIZE as u64 - 8),
        ];
        let len = prop_oneof![
            4 => 0u32..4096,
            1 => 0u32..80_000,
            1 => any::<u32>(),
        ];
        (addr, len, 0u16..8, 0u16..20)
    }

    #[derive(Debug, Clone)]
    struct Layout {
        descs: Vec<(u64, u32, u16, u16)>,
        heads: Vec<u16>,
        avail_idx: Option<u16>,
        /// Bytes at BUFS, where indirect tables may point.
        noise: Vec<u8>,
    }

    fn layout() -> impl Strategy<Value = Layout> {
        (
            proptest::collection::vec(descriptor(), 16),
            proptest::collection::vec(0u16..20, 0..=16),
            proptest::option::weighted(0.1, any::<u16>()),
            proptest::collection::vec(any::<u8>(), 0..512),
        )
            .prop_map(|(descs, heads, avail_idx, noise)| Layout {
                descs,
                heads,
                avail_idx,
                noise,
            })
    }

    fn install(mem: &GuestMemoryMmap, d: &mut Driver, l: &Layout) {
        mem.write_slice(&l.noise, GuestAddress(BUFS)).unwrap();
        for (i, &(addr, len, flags, next)) in l.descs.iter().enumerate() {
            let desc = SplitDescriptor::new(addr, len, flags, next);
            d.vq.desc_table()
                .store(i as u16, RawDescriptor::from(desc))
                .unwrap();
        }
        for &h in &l.heads {
            d.publish(h);
        }
        if let Some(idx) = l.avail_idx {
            d.vq.avail().idx().store(idx);
        }
    }

    proptest! {
        #[test]
        fn hostile_transmit_chains_never_panic(l in layout(), rounds in 1usize..4) {
            let mem = memory();
            let mut r = rig(&mem, FEATURES);
            install(&mem, &mut r.tx, &l);
            for _ in 0..rounds {
                if r.dp.on_tx_kick().is_err() {
                    break; // the worker would stop serving here
                }
            }
            while let Some(f) = host_recv(&r.peer) {
                prop_assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&f.len()));
            }
            prop_assert!(r.tx.used_idx() <= 16, "more used than the ring holds");
        }

        #[test]
        fn hostile_receive_chains_never_panic(
            l in layout(),
            sizes in proptest::collection::vec(
                prop_oneof![1usize..26, 26usize..3000, Just(MAX_FRAME_LEN), Just(MAX_FRAME_LEN + 1)],
                1..4,
            ),
            mrg in any::<bool>(),
            rounds in 1usize..4,
        ) {
            let mem = memory();
            let features = if mrg { FEATURES } else { FEATURES & !F_MRG_RXBUF };
            let mut r = rig(&mem, features);
            for (i, &n) in sizes.iter().enumerate() {
                host_send(&r.peer, &vec![i as u8; n]);
            }
            install(&mem, &mut r.rx, &l);
            for round in 0..rounds {
                let result = if round % 2 == 0 {
                    r.dp.on_host(EventSet::IN)
                } else {
                    r.dp.on_rx_kick()
                };
                if result.is_err() {
                    break;
                }
            }
            prop_assert!(r.rx.used_idx() <= 16, "more used than the ring holds");
            for (_, len) in r.rx.take_used() {
                prop_assert!(len as usize <= MAX_FRAME_LEN);
            }
        }

        #[test]
        fn mergeable_buffers_carry_any_frame_intact(
            sizes in proptest::collection::vec(1u32..3000, 1..=16),
            payload in 14usize..20_000,
        ) {
            let mem = memory();
            let mut r = rig(&mem, FEATURES);
            for (i, &n) in sizes.iter().enumerate() {
                r.rx.offer(&[(BUFS + i as u64 * 0x1000, n, WRITE)]);
            }
            let f = frame(payload, 3);
            host_send(&r.peer, &f);
            r.dp.on_host(EventSet::IN).unwrap();
            let used = r.rx.take_used();
            let room: usize = sizes.iter().map(|&n| n as usize).sum();
            if room >= f.len() {
                let mut got = Vec::new();
                for &(head, len) in &used {
                    prop_assert!(len > 0 && len <= sizes[head as usize]);
                    got.extend(read_guest(&mem, BUFS + u64::from(head) * 0x1000, len as usize));
                }
                prop_assert_eq!(got, as_delivered(&f, used.len() as u16));
            } else if sizes.len() == 16 {
                // The whole ring cannot hold it: dropped, every buffer back.
                prop_assert_eq!(used.len(), 16);
                prop_assert!(used.iter().all(|&(_, len)| len == 0));
            } else {
                prop_assert!(used.is_empty(), "waits for more buffers");
                prop_assert!(r.dp.rx_stalled);
            }
        }
    }
}
