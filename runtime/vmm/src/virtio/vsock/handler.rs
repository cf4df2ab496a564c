//! The device thread's work: packets off the tx queue into the muxer, packets
//! from the muxer into rx buffers, and the guest interrupted when buffers were
//! used.
//!
//! Only what the queue library refuses (a corrupt available ring, a chain
//! pointing outside guest memory) stops the device; anything wrong inside a
//! packet is the muxer's to answer.

use std::os::fd::AsRawFd;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{read_header, read_payload, HEADER_SIZE, MAX_PAYLOAD};
use crate::virtio::worker::{Handler, Registry};
use crate::virtio::{Interrupt, INT_USED_RING};

const TOKEN_RX_QUEUE: u64 = 0;
const TOKEN_TX_QUEUE: u64 = 1;

pub struct VsockHandler {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    /// Never used (no events are sent), kept for the device's lifetime.
    _event_queue: Queue,
    rx_event: EventFd,
    tx_event: EventFd,
    interrupt: Interrupt,
    muxer: Muxer,
    /// One packet's payload at a time, read out of guest memory.
    scratch: Vec<u8>,
}

/// The queues and notification fds a handler serves.
pub struct Queues {
    pub rx: Queue,
    pub tx: Queue,
    pub event: Queue,
    pub rx_event: EventFd,
    pub tx_event: EventFd,
}

impl VsockHandler {
    pub fn new(mem: GuestMemoryMmap, q: Queues, interrupt: Interrupt, muxer: Muxer) -> Self {
        VsockHandler {
            mem,
            rx: q.rx,
            tx: q.tx,
            _event_queue: q.event,
            rx_event: q.rx_event,
            tx_event: q.tx_event,
            interrupt,
            muxer,
            scratch: vec![0u8; MAX_PAYLOAD],
        }
    }

    /// Takes every packet the guest queued for sending. Returns whether
    /// buffers were used.
    fn process_tx(&mut self, r: &Registry) -> Result<bool, String> {
        let mut used = false;
        for _ in 0..self.tx.size().max(1) {
            let chain = self
                .tx
                .iter(&self.mem)
                .map_err(|e| format!("tx queue: {e}"))?
                .next();
            let Some(chain) = chain else {
                return Ok(used);
            };
            let head = chain.head_index();
            let mut reader = Reader::new(&self.mem, chain)
                .map_err(|e| format!("tx queue: descriptor chain {head}: {e}"))?;
            let available = reader.available_bytes();
            match read_header(&mut reader, available) {
                Ok(h) => {
                    let payload =
                        read_payload(&mut reader, &h, available - HEADER_SIZE, &mut self.scratch);
                    self.muxer.on_guest_packet(r, &h, payload);
                }
                Err(e) => self
                    .muxer
                    .log
                    .note("dropping a tx packet it cannot read", e),
            }
            self.tx
                .add_used(&self.mem, head, 0)
                .map_err(|e| format!("tx queue: {e}"))?;
            used = true;
        }
        // A full ring's worth done: let epoll serve the others, then continue.
        let _ = self.tx_event.write(1);
        Ok(used)
    }

    /// Fills rx buffers while the muxer has packets for the guest.
    fn process_rx(&mut self, r: &Registry) -> Result<bool, String> {
        let mut used = false;
        for _ in 0..self.rx.size().max(1) {
            if !self.muxer.has_rx() {
                return Ok(used);
            }
            let chain = self
                .rx
                .iter(&self.mem)
                .map_err(|e| format!("rx queue: {e}"))?
                .next();
            let Some(chain) = chain else {
                // No buffers: the guest's next notification brings us back.
                return Ok(used);
            };
            let head = chain.head_index();
            let mut writer = Writer::new(&self.mem, chain)
                .map_err(|e| format!("rx queue: descriptor chain {head}: {e}"))?;
            let room = writer.available_bytes();
            let n = self
                .muxer
                .write_rx(r, &mut writer, room)
                .map_err(|e| format!("rx queue: descriptor chain {head}: {e}"))?;
            if n == 0 {
                self.muxer.log.note(
                    "an rx buffer is too small for the next packet",
                    format_args!("{room} bytes"),
                );
            }
            self.rx
                .add_used(&self.mem, head, n as u32)
                .map_err(|e| format!("rx queue: {e}"))?;
            used = true;
        }
        let _ = self.rx_event.write(1);
        Ok(used)
    }
}

impl Handler for VsockHandler {
    fn init(&mut self, r: &Registry) -> std::io::Result<()> {
        r.add(self.rx_event.as_raw_fd(), TOKEN_RX_QUEUE, EventSet::IN)?;
        r.add(self.tx_event.as_raw_fd(), TOKEN_TX_QUEUE, EventSet::IN)?;
        self.muxer.init(r)?;
        // Whatever the driver queued before we started is served right away.
        self.tx_event.write(1)
    }

    fn ready(&mut self, r: &Registry, token: u64, events: EventSet) -> Result<(), String> {
        let mut used = false;
        match token {
            TOKEN_RX_QUEUE => {
                let _ = self.rx_event.read();
            }
            TOKEN_TX_QUEUE => {
                let _ = self.tx_event.read();
                used |= self.process_tx(r)?;
            }
            t if Muxer::owns(t) => self.muxer.host_event(r, t, events),
            _ => {}
        }
        used |= self.process_rx(r)?;
        if used {
            if let Err(e) = self.interrupt.signal(INT_USED_RING) {
                self.muxer.log.note("cannot interrupt the guest", e);
            }
        }
        Ok(())
    }
}
