//! The whole device against in-memory guest memory, no KVM: the test plays the
//! guest's driver (descriptor tables, available and used rings) and the host's
//! clients and services.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use virtio_queue::desc::{split::Descriptor, split::VirtqUsedElem, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Limits;
use super::packet::{Header, Op, HEADER_SIZE, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::unix::port_path;
use super::*;
use crate::virtio::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

const MEM_SIZE: u64 = 8 << 20;
const GUEST_CID: u64 = 3;
/// Guest buffer bytes behind each descriptor index (slot i of queue q).
const SLOT: u64 = 0x1000;
const TIMEOUT: Duration = Duration::from_secs(5);
const RX_BUFFERS: usize = 64;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// The driver's side of one split queue.
struct DriverQueue {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    buffers: u64,
    next_avail: u16,
    next_used: u16,
    free: Vec<u16>,
    /// Per outstanding chain, by head index.
    chains: HashMap<u16, Outstanding>,
}

/// A chain the device has not returned yet.
struct Outstanding {
    descriptors: Vec<u16>,
    /// (guest address, length) of each descriptor.
    segments: Vec<(u64, u32)>,
}

impl DriverQueue {
    /// Queue `q`'s rings: descriptor table, available ring and used ring each
    /// on their own page. (`MockSplitQueue` would place the used ring inside the
    /// second half of the available ring: its ring `end()` counts elements as
    /// bytes, which only shows once more than half the ring has been used.)
    fn new(mem: &GuestMemoryMmap, q: u64) -> (DriverQueue, Queue) {
        let base = q * 0x4000;
        let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
        for ring in [avail, used] {
            mem.write_slice(&[0u8; 0x1000], GuestAddress(ring)).unwrap();
        }
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(desc as u32), Some(0));
        queue.set_avail_ring_address(Some(avail as u32), Some(0));
        queue.set_used_ring_address(Some(used as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        let dq = DriverQueue {
            desc: GuestAddress(desc),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
            buffers: 0x10_0000 + q * 0x10_0000,
            next_avail: 0,
            next_used: 0,
            free: (0..QUEUE_SIZE).rev().collect(),
            chains: HashMap::new(),
        };
        (dq, queue)
    }

    fn slot(&self, index: u16) -> u64 {
        self.buffers + u64::from(index) * SLOT
    }

    /// Publishes a chain of `(addr, len, device-writable)` descriptors;
    /// `None` as address means the descriptor's own slot.
    fn add(&mut self, mem: &GuestMemoryMmap, segs: &[(Option<u64>, u32, bool)]) -> Option<u16> {
        if segs.is_empty() || segs.len() > self.free.len() {
            return None;
        }
        let idx: Vec<u16> = (0..segs.len()).map(|_| self.free.pop().unwrap()).collect();
        let mut placed = Vec::new();
        for (i, &(addr, len, writable)) in segs.iter().enumerate() {
            let addr = addr.unwrap_or_else(|| self.slot(idx[i]));
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            let mut next = 0;
            if i + 1 < segs.len() {
                flags |= DESC_F_NEXT;
                next = idx[i + 1];
            }
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            mem.write_obj(d, GuestAddress(self.desc.0 + u64::from(idx[i]) * 16))
                .unwrap();
            placed.push((addr, len));
        }
        let head = idx[0];
        let ring = self.avail.0 + 4 + u64::from(self.next_avail % QUEUE_SIZE) * 2;
        mem.write_obj(head.to_le(), GuestAddress(ring)).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.store(
            self.next_avail.to_le(),
            GuestAddress(self.avail.0 + 2),
            Ordering::Release,
        )
        .unwrap();
        self.chains.insert(
            head,
            Outstanding {
                descriptors: idx,
                segments: placed,
            },
        );
        Some(head)
    }

    /// The next chain the device returned: its segments and the used length.
    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Option<(Vec<(u64, u32)>, u32)> {
        let idx: u16 = mem
            .load(GuestAddress(self.used.0 + 2), Ordering::Acquire)
            .unwrap();
        if u16::from_le(idx) == self.next_used {
            return None;
        }
        let at = self.used.0 + 4 + u64::from(self.next_used % QUEUE_SIZE) * 8;
        let elem: VirtqUsedElem = mem.read_obj(GuestAddress(at)).unwrap();
        self.next_used = self.next_used.wrapping_add(1);
        let chain = self
            .chains
            .remove(&(elem.id() as u16))
            .expect("the device returned a chain it was not given");
        self.free.extend(chain.descriptors);
        Some((chain.segments, elem.len()))
    }
}

/// A guest driver with a running device.
struct Guest {
    mem: GuestMemoryMmap,
    rx: DriverQueue,
    tx: DriverQueue,
    kicks: Vec<EventFd>,
    interrupt: Interrupt,
    dev: Vsock,
    uds: PathBuf,
    /// Segment lengths of each rx buffer posted.
    rx_layout: Vec<u32>,
    pending: Option<(Vec<Queue>, Vec<EventFd>)>,
    _dir: tempfile::TempDir,
}

fn kick(e: &EventFd) {
    e.write(1).unwrap();
}

impl Guest {
    /// The device exists and listens, but the driver has not started it.
    fn new() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let dev = Vsock::new(GUEST_CID, uds.clone()).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let (rx, rxq) = DriverQueue::new(&mem, 0);
        let (tx, txq) = DriverQueue::new(&mem, 1);
        let (_, evq) = DriverQueue::new(&mem, 2);
        let events: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let kicks = events.iter().map(|e| e.try_clone().unwrap()).collect();
        Guest {
            mem,
            rx,
            tx,
            kicks,
            interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            dev,
            uds,
            rx_layout: vec![30, 1000, 3000],
            pending: Some((vec![rxq, txq, evq], events)),
            _dir: dir,
        }
    }

    fn activate(&mut self) {
        let (queues, queue_events) = self.pending.take().unwrap();
        self.dev
            .activate(Activation {
                mem: self.mem.clone(),
                queues,
                queue_events,
                interrupt: self.interrupt.clone(),
                features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        self.fill_rx();
    }

    fn start() -> Guest {
        let mut g = Guest::new();
        g.activate();
        g
    }

    /// A running device with caps of its own, small enough to reach.
    fn start_with(limits: Limits) -> Guest {
        let mut g = Guest::new();
        g.dev.limits = limits;
        g.activate();
        g
    }

    fn fill_rx(&mut self) {
        let segs: Vec<_> = self.rx_layout.iter().map(|&l| (None, l, true)).collect();
        let mut added = false;
        while self.rx.chains.len() < RX_BUFFERS && self.rx.add(&self.mem, &segs).is_some() {
            added = true;
        }
        if added {
            kick(&self.kicks[0]);
        }
    }

    fn reap_tx(&mut self) {
        while self.tx.take_used(&self.mem).is_some() {}
    }

    /// Sends raw bytes split into descriptors of the given sizes (the last
    /// one takes the rest, in slot-sized pieces).
    fn send_bytes(&mut self, bytes: &[u8], first: &[usize]) {
        let mut segs = Vec::new();
        let mut rest = bytes;
        for &n in first {
            let n = n.min(rest.len());
            segs.push(&rest[..n]);
            rest = &rest[n..];
        }
        while !rest.is_empty() || segs.is_empty() {
            let n = rest.len().min(SLOT as usize);
            segs.push(&rest[..n]);
            rest = &rest[n..];
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.reap_tx();
            if self.tx.free.len() >= segs.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the device does not return tx buffers"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Descriptor indices come off the free list in order: write each
        // segment into the slot its descriptor will point at.
        let n = self.tx.free.len();
        for (i, seg) in segs.iter().enumerate() {
            let index = self.tx.free[n - 1 - i];
            self.mem
                .write_slice(seg, GuestAddress(self.tx.slot(index)))
                .unwrap();
        }
        let layout: Vec<_> = segs.iter().map(|s| (None, s.len() as u32, false)).collect();
        self.tx.add(&self.mem, &layout).unwrap();
        kick(&self.kicks[1]);
    }

    /// Sends a packet whose header is split across descriptors.
    fn send(&mut self, h: Header, payload: &[u8]) {
        let h = Header {
            len: payload.len() as u32,
            ..h
        };
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_bytes(&bytes, &[17]);
    }

    /// The next packet the device put in an rx buffer, if any yet.
    fn try_recv(&mut self) -> Option<(Header, Vec<u8>)> {
        loop {
            let (segs, len) = self.rx.take_used(&self.mem)?;
            let mut bytes = Vec::new();
            for (addr, seg_len) in segs {
                let mut b = vec![0u8; seg_len as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                bytes.extend(b);
            }
            // Only now may the device reuse the buffers.
            self.fill_rx();
            if len == 0 {
                continue; // a buffer too small for the packet, handed back empty
            }
            let len = len as usize;
            assert!(
                len >= HEADER_SIZE && len <= bytes.len(),
                "used length {len}"
            );
            let h = Header::from_bytes(bytes[..HEADER_SIZE].try_into().unwrap());
            assert_eq!(h.len as usize, len - HEADER_SIZE, "{h:?}");
            return Some((h, bytes[HEADER_SIZE..len].to_vec()));
        }
    }

    fn recv(&mut self) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(p) = self.try_recv() {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no packet from the device (broken: {:?})",
                self.interrupt.broken()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn recv_op(&mut self, op: Op) -> (Header, Vec<u8>) {
        let (h, data) = self.recv();
        assert_eq!(h.op(), Some(op), "{h:?}");
        assert_eq!(
            (h.src_cid, h.dst_cid, h.type_),
            (HOST_CID, GUEST_CID, TYPE_STREAM)
        );
        (h, data)
    }

    /// Proves the device is alive and has nothing queued before: a credit
    /// request for a connection that does not exist is answered with RST.
    fn probe(&mut self) {
        self.send(pkt(Op::CreditRequest, 0xdead, 0xbeef), &[]);
        let (h, _) = self.recv_op(Op::Rst);
        assert_eq!((h.src_port, h.dst_port), (0xbeef, 0xdead), "{h:?}");
    }

    /// Drains everything up to the probe's answer; for devices fed garbage.
    fn probe_through_noise(&mut self) {
        self.send(pkt(Op::CreditRequest, 0xdead, 0xbeef), &[]);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (h, _) = self.recv();
            if h.op() == Some(Op::Rst) && (h.src_port, h.dst_port) == (0xbeef, 0xdead) {
                return;
            }
            assert!(Instant::now() < deadline);
        }
    }

    /// Opens a guest-initiated connection to a listener the test binds.
    fn connect_to_host(&mut self, guest_port: u32, host_port: u32) -> (UnixListener, UnixStream) {
        let listener = UnixListener::bind(port_path(&self.uds, host_port)).unwrap();
        self.send(pkt(Op::Request, guest_port, host_port), &[]);
        let (h, _) = self.recv_op(Op::Response);
        assert_eq!((h.src_port, h.dst_port), (host_port, guest_port));
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        (listener, s)
    }
}

/// A packet from the guest's `src_port` to the host's `dst_port`.
fn pkt(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

/// Reproducible bytes that differ at every offset of interest.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF after {line:?}");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn config_space_holds_the_guest_cid() {
    let g = Guest::new();
    let mut cfg = [0u8; 8];
    g.dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), GUEST_CID);
    let mut hi = [0xffu8; 4];
    g.dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert_eq!(g.dev.device_type(), 19);
    assert_eq!(g.dev.queue_max_sizes().len(), 3);
    assert!(
        Vsock::new(2, g.uds.with_extension("x")).is_err(),
        "CID 2 is the host's"
    );
    let err = Vsock::new(3, g.uds.clone()).err().unwrap();
    assert!(err.to_string().contains("another process"), "{err}");
}

#[test]
fn host_initiated_stream_carries_bulk_data_both_ways_within_credit() {
    // Connected before the driver is up: the client waits in the backlog.
    let mut g = Guest::new();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    g.activate();

    let (req, _) = g.recv_op(Op::Request);
    assert_eq!(req.dst_port, 1024);
    assert!(req.src_port >= HOST_PORT_FIRST);
    assert_eq!(req.buf_alloc, FIRST_WINDOW);
    let host_port = req.src_port;

    // A small guest receive buffer, so that the device runs out of credit often.
    const GUEST_BUF: u32 = 16 * 1024;
    let from_guest = |op| Header {
        buf_alloc: GUEST_BUF,
        ..pkt(op, 1024, host_port)
    };
    g.send(from_guest(Op::Response), &[]);
    assert_eq!(read_line(&mut client), format!("OK {host_port}\n"));

    let to_guest = pattern(700_000, 1);
    let to_host = pattern(500_000, 2);
    let writer = {
        let mut c = client.try_clone().unwrap();
        let data = to_guest.clone();
        std::thread::spawn(move || {
            c.write_all(&data).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        })
    };
    let reader = {
        let mut c = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            c.read_to_end(&mut v).map(|_| v)
        })
    };

    let mut got = Vec::new();
    let mut told_fwd = 0u32; // the fwd_cnt the guest last sent
    let (mut dev_buf_alloc, mut dev_fwd_cnt) = (req.buf_alloc, req.fwd_cnt);
    let mut sent = 0usize;
    let mut host_done = false;
    let mut asked = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(host_done && sent == to_host.len()) {
        assert!(
            Instant::now() < deadline,
            "stalled: got {} sent {sent}",
            got.len()
        );
        let mut progress = false;
        // Send within the credit the device gave, in uneven pieces.
        let in_flight = (sent as u32).wrapping_sub(dev_fwd_cnt);
        let credit = dev_buf_alloc.saturating_sub(in_flight) as usize;
        if sent < to_host.len() && credit > 0 {
            let n = credit.min(1 + sent % 7919).min(to_host.len() - sent);
            let h = Header {
                fwd_cnt: told_fwd,
                ..from_guest(Op::Rw)
            };
            g.send(h, &to_host[sent..sent + n]);
            sent += n;
            progress = true;
        }
        while let Some((h, data)) = g.try_recv() {
            progress = true;
            assert_eq!((h.src_port, h.dst_port), (host_port, 1024));
            (dev_buf_alloc, dev_fwd_cnt) = (h.buf_alloc, h.fwd_cnt);
            match h.op() {
                Some(Op::Rw) => {
                    got.extend_from_slice(&data);
                    assert!(
                        got.len() as u32 - told_fwd <= GUEST_BUF,
                        "the device sent beyond the guest's credit"
                    );
                }
                Some(Op::CreditUpdate) => {}
                Some(Op::CreditRequest) => asked = true,
                Some(Op::Shutdown) => {
                    assert_eq!(h.flags, SHUTDOWN_SEND);
                    host_done = true;
                }
                _ => panic!("unexpected {h:?}"),
            }
            // The guest's reader takes everything at once but reports it in
            // 4 KiB steps (or when asked).
            let fwd = got.len() as u32;
            if std::mem::take(&mut asked) || fwd - told_fwd >= 4096 {
                told_fwd = fwd;
                let h = Header {
                    fwd_cnt: fwd,
                    ..from_guest(Op::CreditUpdate)
                };
                g.send(h, &[]);
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    writer.join().unwrap();
    assert!(got == to_guest, "host -> guest bytes differ");
    // More than one window of ours went through: the device returned credit.
    assert!(to_host.len() > BUF_ALLOC as usize);
    assert!(dev_fwd_cnt as usize >= to_host.len() - BUF_ALLOC as usize);

    // The guest closes: the device answers RST and the host reads EOF after
    // every byte.
    let h = Header {
        flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
        ..from_guest(Op::Shutdown)
    };
    g.send(h, &[]);
    g.recv_op(Op::Rst);
    let received = reader.join().unwrap().unwrap();
    assert_eq!(received.len(), to_host.len());
    assert!(received == to_host, "guest -> host bytes differ");
    g.probe();
}

#[test]
fn a_guest_refusal_closes_the_host_client_and_bad_lines_are_dropped() {
    let mut g = Guest::start();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.write_all(b"CONNECT 77\n").unwrap();
    let (req, _) = g.recv_op(Op::Request);
    // Nobody listens on port 77 in the guest.
    g.send(pkt(Op::Rst, 77, req.src_port), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "closed without OK");

    for bad in [&b"CONNECT nope\n"[..], b"HELLO 1\n", &[b'9'; 64]] {
        let mut c = UnixStream::connect(&g.uds).unwrap();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.write_all(bad).unwrap();
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    }
    // None of that reached the guest.
    g.probe();

    // Two clients for the same guest port get distinct host ports.
    let mut ports = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = UnixStream::connect(&g.uds).unwrap();
        c.write_all(b"CONNECT 5\n").unwrap();
        ports.push(g.recv_op(Op::Request).0.src_port);
        clients.push(c);
    }
    assert_ne!(ports[0], ports[1]);
}

#[test]
fn guest_initiated_connections_reach_host_listeners() {
    let mut g = Guest::start();
    let (_listener, mut s) = g.connect_to_host(40000, 5000);

    s.write_all(b"ping").unwrap();
    let (h, data) = g.recv_op(Op::Rw);
    assert_eq!(
        (h.src_port, h.dst_port, data.as_slice()),
        (5000, 40000, &b"ping"[..])
    );
    g.send(pkt(Op::Rw, 40000, 5000), b"pong");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    // The guest asks for credit: the device reports what it consumed.
    g.send(pkt(Op::CreditRequest, 40000, 5000), &[]);
    let (h, _) = g.recv_op(Op::CreditUpdate);
    assert_eq!((h.fwd_cnt, h.buf_alloc), (4, FIRST_WINDOW));

    // The host service closes: the guest hears both directions are shut.
    drop(s);
    let (h, _) = g.recv_op(Op::Shutdown);
    assert_eq!(h.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.send(pkt(Op::Rst, 40000, 5000), &[]);

    // A port nobody listens on is refused.
    g.send(pkt(Op::Request, 40001, 5001), &[]);
    let (h, _) = g.recv_op(Op::Rst);
    assert_eq!((h.src_port, h.dst_port), (5001, 40001));

    // The old connection is gone: its address can be used again.
    let (_l2, mut s2) = g.connect_to_host(40000, 5002);
    g.send(pkt(Op::Rw, 40000, 5002), b"again");
    let mut buf = [0u8; 5];
    s2.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"again");
}

#[test]
fn guest_half_close_reaches_the_host_as_eof() {
    let mut g = Guest::start();
    let (_l, mut s) = g.connect_to_host(41000, 6000);
    g.send(pkt(Op::Rw, 41000, 6000), b"request");
    let h = Header {
        flags: SHUTDOWN_SEND,
        ..pkt(Op::Shutdown, 41000, 6000)
    };
    g.send(h, &[]);
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"request");
    // The reply still flows to the guest.
    s.write_all(b"reply").unwrap();
    let (_, data) = g.recv_op(Op::Rw);
    assert_eq!(data, b"reply");
}

#[test]
fn malformed_packets_are_answered_or_dropped_and_the_device_keeps_working() {
    let mut g = Guest::start();
    let (_listener, mut s) = g.connect_to_host(42000, 7000);

    // Dropped without an answer: too short for a header, a chain the device
    // cannot read, a forged source CID, an RST for nothing.
    g.send_bytes(&[1u8; 20], &[]);
    g.probe();
    g.tx.add(&g.mem, &[(None, 200, true)]).unwrap();
    kick(&g.kicks[1]);
    g.probe();
    let forged = Header {
        src_cid: 7,
        ..pkt(Op::Request, 1, 7000)
    };
    g.send(forged, &[]);
    g.probe();
    g.send(pkt(Op::Rst, 1, 2), &[]);
    g.probe();

    // Answered with RST: each case and the address it must come from.
    let wrong_dst = Header {
        dst_cid: 9,
        ..pkt(Op::Request, 10, 7000)
    };
    let seqpacket = Header {
        type_: 2,
        ..pkt(Op::Request, 11, 7000)
    };
    let unknown_op = Header {
        op: 42,
        ..pkt(Op::Rw, 12, 7000)
    };
    for (h, payload) in [
        (wrong_dst, &[][..]),
        (seqpacket, &[]),
        (unknown_op, &[]),
        (pkt(Op::Rw, 13, 7000), b"nobody"),
        (pkt(Op::Response, 14, 7000), &[]),
        (pkt(Op::Shutdown, 15, 7000), &[]),
    ] {
        g.send(h, payload);
        let (rst, _) = g.recv();
        assert_eq!(rst.op(), Some(Op::Rst), "for {h:?}");
        assert_eq!(
            (rst.src_cid, rst.src_port, rst.dst_port),
            (h.dst_cid, h.dst_port, h.src_port),
            "for {h:?}"
        );
    }

    // Lengths that lie: beyond the limit, beyond the chain.
    for len in [100_000u32, 500] {
        let h = Header {
            len,
            ..pkt(Op::Rw, 16, 7000)
        };
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend([0u8; 100]);
        g.send_bytes(&bytes, &[]);
        let (rst, _) = g.recv_op(Op::Rst);
        assert_eq!(rst.dst_port, 16);
    }

    // Through all of it the open connection kept working.
    g.send(pkt(Op::Rw, 42000, 7000), b"still here");
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    s.write_all(b"yes").unwrap();
    assert_eq!(g.recv_op(Op::Rw).1, b"yes");
    assert!(g.interrupt.broken().is_none());
}

#[test]
fn a_guest_ignoring_our_credit_is_reset_without_hurting_others() {
    let mut g = Guest::start();
    let (_l1, mut good) = g.connect_to_host(43000, 8000);
    // This host service never reads: the device buffers, up to the credit.
    let (_l2, _stuck) = g.connect_to_host(43001, 8001);
    let chunk = vec![0x5a; 64 * 1024];
    let mut sent = 0;
    // What the device let the guest send: its RESPONSE's credit, then its
    // updates'.
    let mut limit = FIRST_WINDOW as usize;
    'flood: loop {
        g.send(pkt(Op::Rw, 43001, 8001), &chunk);
        sent += chunk.len();
        assert!(sent < 64 << 20, "the device never pushed back");
        // Let the worker take the packet before looking for its answer.
        let deadline = Instant::now() + TIMEOUT;
        while !g.tx.chains.is_empty() {
            assert!(Instant::now() < deadline);
            g.reap_tx();
            std::thread::sleep(Duration::from_millis(1));
        }
        while let Some((h, _)) = g.try_recv() {
            assert_eq!(h.dst_port, 43001, "{h:?}");
            match h.op() {
                Some(Op::Rst) => break 'flood,
                Some(Op::CreditUpdate) => limit = (h.buf_alloc + h.fwd_cnt) as usize,
                _ => panic!("unexpected {h:?}"),
            }
        }
    }
    assert!(
        sent > limit,
        "reset after {sent} bytes, within the credit of {limit}"
    );

    g.send(pkt(Op::Rw, 43000, 8000), b"ok");
    let mut buf = [0u8; 2];
    good.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn rx_buffers_too_small_for_a_packet_come_back_empty() {
    let mut g = Guest::new();
    g.rx_layout = vec![10, 20];
    g.activate();
    g.send(pkt(Op::Request, 1, 9999), &[]);
    let deadline = Instant::now() + TIMEOUT;
    // Every tiny buffer is returned empty rather than hoarded.
    while g.rx.take_used(&g.mem).is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    g.rx_layout = vec![HEADER_SIZE as u32];
    g.fill_rx();
    g.recv_op(Op::Rst);
}

#[test]
fn descriptors_outside_guest_memory_break_the_device_not_the_vmm() {
    let mut g = Guest::start();
    g.tx.add(&g.mem, &[(Some(MEM_SIZE + 0x1000), 64, false)])
        .unwrap();
    kick(&g.kicks[1]);
    let deadline = Instant::now() + TIMEOUT;
    while g.interrupt.broken().is_none() {
        assert!(
            Instant::now() < deadline,
            "the device was not marked broken"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(g.interrupt.broken().unwrap().contains("tx queue"));
    // A reset and a new activation bring it back.
    g.dev.reset();
    g.interrupt.clear();
}

#[test]
fn a_reset_closes_connections_and_keeps_listening() {
    let mut g = Guest::start();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.write_all(b"CONNECT 3\n").unwrap();
    g.recv_op(Op::Request);
    g.dev.reset();
    let mut buf = [0u8; 4];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    // The listener survives the reset: new clients queue up for the next driver.
    let _waiting = UnixStream::connect(&g.uds).unwrap();
    let uds = g.uds.clone();
    drop(g);
    assert!(!uds.exists(), "the socket file goes with the device");
}

#[test]
fn the_guest_holds_only_its_share_of_connections_and_the_host_gets_through() {
    let limits = Limits {
        connections: 6,
        guest_connections: 4,
        pool: POOL,
    };
    let mut g = Guest::start_with(limits);
    let listener = UnixListener::bind(port_path(&g.uds, 9100)).unwrap();
    for port in 0..6 {
        g.send(pkt(Op::Request, 60000 + port, 9100), &[]);
        let (h, _) = g.recv();
        let want = if port < 4 { Op::Response } else { Op::Rst };
        assert_eq!(h.op(), Some(want), "connection {port}: {h:?}");
    }
    // The host still reaches the guest.
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    assert_eq!(g.recv_op(Op::Request).0.dst_port, 1024);
    // A connection the guest closes frees its place.
    g.send(pkt(Op::Rst, 60000, 9100), &[]);
    g.send(pkt(Op::Request, 60010, 9100), &[]);
    g.recv_op(Op::Response);
    drop(listener);
}

#[test]
fn a_flood_against_a_host_that_never_reads_stays_within_the_vms_budget() {
    const CONNS: u32 = 11;
    let limits = Limits {
        connections: 16,
        guest_connections: CONNS as usize + 1,
        pool: 256 * 1024,
    };
    let bound = limits.connections * 2 * FLOOR + limits.pool;
    let mut g = Guest::start_with(limits);
    let listener = UnixListener::bind(port_path(&g.uds, 9200)).unwrap();
    // The guest gives no receive credit, so the device must keep what the
    // host sends; and it sends all the credit it gets to a host service
    // that reads nothing.
    let no_room = |op, port| Header {
        buf_alloc: 0,
        ..pkt(op, port, 9200)
    };
    let mut limit = HashMap::new();
    for port in 0..CONNS {
        g.send(no_room(Op::Request, 61000 + port), &[]);
        let (h, _) = g.recv_op(Op::Response);
        limit.insert(h.dst_port, h.buf_alloc.wrapping_add(h.fwd_cnt));
    }
    let mut services = Vec::new();
    for _ in 0..CONNS {
        let (s, _) = listener.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let mut w = &s;
        while w.write(&[0x3c; 64 * 1024]).is_ok() {}
        services.push(s);
    }
    let mut sent: HashMap<u32, u32> = limit.keys().map(|&p| (p, 0)).collect();
    let chunk = vec![0xa5u8; 16 * 1024];
    let mut quiet = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while quiet < 20 {
        assert!(Instant::now() < deadline, "the flood never ended");
        let mut progress = false;
        for port in 61000..61000 + CONNS {
            let credit = limit[&port].wrapping_sub(sent[&port]) as usize;
            if credit > 0 {
                let n = credit.min(chunk.len());
                g.send(no_room(Op::Rw, port), &chunk[..n]);
                *sent.get_mut(&port).unwrap() += n as u32;
                progress = true;
            }
        }
        while let Some((h, _)) = g.try_recv() {
            progress = true;
            match h.op() {
                Some(Op::CreditUpdate | Op::CreditRequest) => {
                    limit.insert(h.dst_port, h.buf_alloc.wrapping_add(h.fwd_cnt));
                }
                _ => panic!("unexpected {h:?}"),
            }
        }
        if progress {
            quiet = 0;
        } else {
            quiet += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let held = g.dev.held.load(Ordering::Relaxed);
    assert!(
        held <= bound,
        "the connections hold {held} bytes, above {bound}"
    );
    assert!(
        held > limits.pool / 2,
        "the flood did not reach the pool: {held}"
    );
    // Every connection got at least its floor's worth of credit.
    assert!(limit.values().all(|&l| l as usize >= FLOOR), "{limit:?}");

    // The device still serves: a new connection gets at least its floor.
    let (_l, mut s) = g.connect_to_host(62000, 9300);
    g.send(pkt(Op::Rw, 62000, 9300), b"still here");
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    // Closing gives it all back.
    drop(services);
    for port in 61000..61000 + CONNS {
        g.send(pkt(Op::Rst, port, 9200), &[]);
    }
    g.send(pkt(Op::Rst, 62000, 9300), &[]);
    g.probe_through_noise();
    let deadline = Instant::now() + TIMEOUT;
    while g.dev.held.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "buffers held after every close");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One arbitrary packet as a guest might write it: fields drawn mostly from
/// meaningful values so that it gets past the first checks, raw otherwise.
fn arbitrary_packet() -> impl Strategy<Value = (Header, Vec<u8>, Vec<usize>)> {
    let cid = prop_oneof![Just(GUEST_CID), Just(HOST_CID), any::<u64>()];
    let dst_cid = prop_oneof![Just(HOST_CID), Just(HOST_CID), any::<u64>()];
    let port = prop_oneof![Just(9000u32), Just(9001), 0u32..4, any::<u32>()];
    let op = prop_oneof![0u16..9, any::<u16>()];
    let type_ = prop_oneof![Just(TYPE_STREAM), Just(TYPE_STREAM), any::<u16>()];
    let small = prop_oneof![0u32..300, Just(0), any::<u32>()];
    (
        (cid, dst_cid, port.clone(), port, op, type_),
        (small.clone(), small.clone(), any::<u32>(), small),
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec(0usize..100, 0..6),
    )
        .prop_map(
            |(
                (src_cid, dst_cid, src_port, dst_port, op, type_),
                (len, flags, buf_alloc, fwd_cnt),
                payload,
                split,
            )| {
                let h = Header {
                    src_cid,
                    dst_cid,
                    src_port,
                    dst_port,
                    len,
                    type_,
                    op,
                    flags,
                    buf_alloc,
                    fwd_cnt,
                };
                (h, payload, split)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Arbitrary headers, lengths and splits on the tx queue, with a live
    /// guest connection and host listener to aim at: the device answers or
    /// drops each one and is still serving afterwards.
    #[test]
    fn arbitrary_tx_packets_never_stop_the_device(
        packets in proptest::collection::vec(arbitrary_packet(), 1..12),
        raw in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let mut g = Guest::start();
        let (_l, mut s) = g.connect_to_host(9001, 9000);
        let _other = UnixListener::bind(port_path(&g.uds, 9001)).unwrap();
        g.send_bytes(&raw, &[3]);
        for (h, payload, split) in &packets {
            let mut bytes = h.to_bytes().to_vec();
            bytes.extend_from_slice(payload);
            g.send_bytes(&bytes, split);
        }
        g.probe_through_noise();
        prop_assert!(g.interrupt.broken().is_none());
        // The host side of the connection is either still usable or was
        // closed by a reset; either way writing to it must not hang the test.
        let _ = s.set_nonblocking(true);
        let _ = s.write(b"x");
    }

    /// Arbitrary descriptor layouts, possibly outside guest memory, possibly
    /// device-writable, on the tx queue: no panic, no hang; the device either
    /// still answers or marked itself broken.
    #[test]
    fn arbitrary_tx_chains_are_survived(
        chains in proptest::collection::vec(
            proptest::collection::vec(
                (prop_oneof![Just(None), (0u64..MEM_SIZE + 0x10000).prop_map(Some), any::<u64>().prop_map(Some)],
                 prop_oneof![0u32..200, Just(SLOT as u32), any::<u32>()],
                 any::<bool>()),
                1..5),
            1..6),
        bytes in proptest::collection::vec(any::<u8>(), HEADER_SIZE..200),
    ) {
        let mut g = Guest::start();
        for segs in &chains {
            // Whatever lands in the descriptors' own slots is a packet-ish header.
            for &i in g.tx.free.iter().rev().take(segs.len()) {
                g.mem.write_slice(&bytes, GuestAddress(g.tx.slot(i))).unwrap();
            }
            g.tx.add(&g.mem, segs).unwrap();
        }
        kick(&g.kicks[1]);
        let deadline = Instant::now() + TIMEOUT;
        // Either broken, or all chains consumed and the device still answers.
        loop {
            if g.interrupt.broken().is_some() {
                break;
            }
            g.reap_tx();
            if g.tx.chains.is_empty() {
                g.probe_through_noise();
                break;
            }
            prop_assert!(Instant::now() < deadline, "the device neither served nor gave up");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whatever shape the driver gives its rx buffers, the bytes arrive intact.
    #[test]
    fn arbitrary_rx_layouts_deliver_intact_streams(
        layout in proptest::collection::vec(1u32..700, 1..6)
            .prop_filter("room for a header and a byte", |l| l.iter().sum::<u32>() > HEADER_SIZE as u32),
        len in 1usize..20_000,
    ) {
        let mut g = Guest::new();
        g.rx_layout = layout;
        g.activate();
        let (_l, mut s) = g.connect_to_host(9100, 9200);
        let data = pattern(len, len as u32);
        s.write_all(&data).unwrap();
        let mut got = Vec::new();
        while got.len() < data.len() {
            let (h, d) = g.recv();
            match h.op() {
                Some(Op::Rw) => got.extend(d),
                Some(Op::CreditRequest) => {
                    let h = Header { fwd_cnt: got.len() as u32, ..pkt(Op::CreditUpdate, 9100, 9200) };
                    g.send(h, &[]);
                }
                _ => prop_assert!(false, "unexpected {:?}", h),
            }
        }
        prop_assert!(got == data);
    }
}
