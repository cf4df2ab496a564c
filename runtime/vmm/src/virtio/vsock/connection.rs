//! One stream between a guest port and a host Unix socket: its state, the bytes
//! buffered in each direction and credit-based flow control (virtio 1.2,
//! 5.10.6.3).
//!
//! Memory is bounded both ways, per connection and, through the pool the
//! muxer passes in (`pool_free`), per VM:
//!
//! * Host bytes are read ahead into at most [`TO_GUEST_BUF`] bytes and only
//!   leave as the guest's credit allows.
//! * Guest bytes are only ever sent against credit we gave: every packet to
//!   the guest carries `buf_alloc` and `fwd_cnt`, and the guest may send until
//!   its byte count reaches their sum. That sum is the connection's *limit*;
//!   limit − `fwd_cnt` is what it *holds*: bytes buffered plus credit still
//!   open, i.e. the most it can come to buffer if the host stops reading. A
//!   guest that sends beyond the limit has broken the protocol and is reset.
//! * The limit never moves back (a guest computes its credit in wrapping
//!   u32s; a smaller one would read as a huge credit), so credit once given
//!   stays given, and new credit is given only as the pool allows: a
//!   connection grows its window from [`FIRST_WINDOW`] up to [`BUF_ALLOC`]
//!   while the guest uses it, and may hold [`FLOOR`] bytes each way whatever
//!   the pool says, so that no connection ever waits for another to give
//!   memory back.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{
    write_packet, Header, Op, HEADER_SIZE, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::HOST_CID;

/// The most credit one connection gets: guest bytes it may come to hold.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Host bytes read ahead of the guest's credit, per connection, at most.
pub const TO_GUEST_BUF: usize = 64 * 1024;
/// What a connection may hold each way without drawing on the pool.
pub const FLOOR: usize = 4 * 1024;
/// The credit a connection starts with; each time the guest has used a
/// quarter of its credit the window doubles, up to [`BUF_ALLOC`], so only
/// streams that carry data hold large credit.
pub const FIRST_WINDOW: u32 = 64 * 1024;
/// One read from the host socket.
const READ_CHUNK: usize = 16 * 1024;

/// A connection's address: our port on the host CID and the guest's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub host_port: u32,
    pub guest_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: our REQUEST is owed or sent, the guest has not answered.
    Connecting,
    Established,
    /// The guest is gone (RST or SHUTDOWN both ways): only what it sent
    /// before is still being written to the host socket.
    Draining,
}

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("the guest sent {got} bytes with only {credit} bytes of credit left")]
    CreditExceeded { got: usize, credit: usize },
    #[error("the guest sent {0:?} while the connection is {1}")]
    Unexpected(Op, &'static str),
    #[error("the guest sent data after its own SHUTDOWN(SEND)")]
    DataAfterShutdown,
    #[error("the host socket failed: {0}")]
    Host(#[source] io::Error),
}

pub struct Connection {
    stream: UnixStream,
    token: u64,
    key: ConnKey,
    guest_cid: u64,
    state: State,
    /// The guest opened it (it counts against the guest's share).
    from_guest: bool,

    // Control packets owed to the guest.
    owe_request: bool,
    owe_response: bool,
    owe_credit_update: bool,
    credit_requested: bool,
    shutdown_sent: bool,

    // Host -> guest.
    to_guest: VecDeque<u8>,
    host_eof: bool,
    /// The host closed both directions (EPOLLHUP), not just its sending side.
    host_hung_up: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,

    // Guest -> host.
    to_host: VecDeque<u8>,
    /// Leading bytes of `to_host` that are ours (the `OK <port>` line), not
    /// the guest's, and so not counted in `fwd_cnt`.
    preamble: usize,
    /// Guest bytes received.
    rx_cnt: u32,
    /// Guest bytes written to the host socket.
    fwd_cnt: u32,
    /// The `buf_alloc` and `fwd_cnt` the guest last heard from us.
    alloc_told: u32,
    fwd_told: u32,
    /// The credit we aim to give.
    window: u32,
    guest_shutdown: u32,
    host_write_shut: bool,

    /// Whether the muxer has it in its queue of connections waiting for rx buffers.
    pub queued_for_rx: bool,
    /// What epoll currently watches for (None: not registered).
    pub watched: Option<EventSet>,
}

impl Connection {
    fn new(stream: UnixStream, token: u64, key: ConnKey, guest_cid: u64, state: State) -> Self {
        Connection {
            stream,
            token,
            key,
            guest_cid,
            state,
            from_guest: false,
            owe_request: false,
            owe_response: false,
            owe_credit_update: false,
            credit_requested: false,
            shutdown_sent: false,
            to_guest: VecDeque::new(),
            host_eof: false,
            host_hung_up: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            to_host: VecDeque::new(),
            preamble: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            alloc_told: 0,
            fwd_told: 0,
            window: FIRST_WINDOW,
            guest_shutdown: 0,
            host_write_shut: false,
            queued_for_rx: false,
            watched: None,
        }
    }

    /// A host client asked for `key.guest_port`; `early_data` is what it sent
    /// after its CONNECT line.
    pub fn host_initiated(
        stream: UnixStream,
        token: u64,
        key: ConnKey,
        guest_cid: u64,
        early_data: &[u8],
    ) -> Self {
        let mut c = Connection::new(stream, token, key, guest_cid, State::Connecting);
        c.owe_request = true;
        c.to_guest.extend(early_data);
        c
    }

    /// The guest's `request` was accepted by a host listener on `stream`.
    pub fn guest_initiated(
        stream: UnixStream,
        token: u64,
        key: ConnKey,
        guest_cid: u64,
        request: &Header,
    ) -> Self {
        let mut c = Connection::new(stream, token, key, guest_cid, State::Established);
        c.from_guest = true;
        c.owe_response = true;
        c.update_peer_credit(request);
        c
    }

    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn key(&self) -> ConnKey {
        self.key
    }

    /// Whether the guest opened it.
    pub fn opened_by_guest(&self) -> bool {
        self.from_guest
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Whether the guest has heard of this connection, i.e. whether tearing it
    /// down needs an RST.
    pub fn guest_knows(&self) -> bool {
        !(self.state == State::Connecting && self.owe_request)
    }

    pub fn is_connecting(&self) -> bool {
        self.state == State::Connecting
    }

    pub fn is_draining(&self) -> bool {
        self.state == State::Draining
    }

    /// A draining connection has nothing left to do once the host has it all.
    pub fn is_finished(&self) -> bool {
        self.state == State::Draining && self.to_host.is_empty()
    }

    pub fn host_hung_up(&self) -> bool {
        self.host_hung_up
    }

    // --- Memory -----------------------------------------------------------------

    /// Whether the guest may still send: it has not closed its side.
    fn guest_may_send(&self) -> bool {
        self.state != State::Draining && self.guest_shutdown & SHUTDOWN_SEND == 0
    }

    /// Guest bytes received and not yet written to the host.
    fn buffered(&self) -> usize {
        self.to_host.len() - self.preamble
    }

    /// Guest → host bytes this connection holds or may come to hold: what is
    /// buffered plus the credit still open.
    pub fn held_from_guest(&self) -> usize {
        if !self.guest_may_send() {
            return self.buffered();
        }
        let limit = self.alloc_told.wrapping_add(self.fwd_told);
        limit.wrapping_sub(self.fwd_cnt) as usize
    }

    /// Host → guest bytes this connection holds.
    pub fn held_to_guest(&self) -> usize {
        self.to_guest.len()
    }

    /// What it holds beyond its floor each way: its share of the VM's pool.
    pub fn pool_use(&self) -> usize {
        self.held_from_guest().saturating_sub(FLOOR) + self.held_to_guest().saturating_sub(FLOOR)
    }

    /// How many more bytes the guest may send now.
    fn credit_left(&self) -> usize {
        let limit = self.alloc_told.wrapping_add(self.fwd_told);
        limit.wrapping_sub(self.rx_cnt) as usize
    }

    /// The `buf_alloc` and `fwd_cnt` to tell the guest now, given `pool_free`
    /// bytes of the VM's pool left: as much credit as the window, the floor
    /// and the pool allow, but never a limit below the one told before.
    fn credit_to_tell(&self, pool_free: usize) -> (u32, u32) {
        if !self.guest_may_send() {
            return (self.alloc_told, self.fwd_told);
        }
        // What the guest's current limit makes us hold.
        let held = self.held_from_guest();
        let room = held.max(FLOOR).saturating_add(pool_free);
        let give = (self.window as usize).min(room).max(held);
        // A smaller buf_alloc than before is fine: the limit does not shrink,
        // as fwd_cnt grew by at least as much.
        (give as u32, self.fwd_cnt)
    }

    // --- Packets from the guest -------------------------------------------

    /// Every packet from the guest carries its current credit.
    pub fn update_peer_credit(&mut self, h: &Header) {
        if (h.buf_alloc, h.fwd_cnt) != (self.peer_buf_alloc, self.peer_fwd_cnt) {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// The guest accepted our REQUEST: tell the host client which port it got.
    pub fn on_response(&mut self) -> Result<(), ConnError> {
        if self.state != State::Connecting || self.owe_request {
            return Err(ConnError::Unexpected(Op::Response, self.state_name()));
        }
        self.state = State::Established;
        let ok = format!("OK {}\n", self.key.host_port);
        self.preamble = ok.len();
        self.to_host.extend(ok.as_bytes());
        self.flush_to_host()
    }

    pub fn on_data(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.state != State::Established {
            return Err(ConnError::Unexpected(Op::Rw, self.state_name()));
        }
        if self.guest_shutdown & SHUTDOWN_SEND != 0 {
            return Err(ConnError::DataAfterShutdown);
        }
        let credit = self.credit_left();
        if data.len() > credit {
            return Err(ConnError::CreditExceeded {
                got: data.len(),
                credit,
            });
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        let mut rest = data;
        if self.to_host.is_empty() {
            // Usual case: the host keeps up, nothing needs copying.
            let n = write_some(&mut self.stream, rest).map_err(ConnError::Host)?;
            self.count_forwarded(n);
            rest = &rest[n..];
        }
        // Within what the connection holds, so the pool already counts it.
        let most = self.preamble + self.held_from_guest();
        reserve_within(&mut self.to_host, rest.len(), most);
        self.to_host.extend(rest);
        Ok(())
    }

    /// The guest will receive and/or send no more. Returns true once it has
    /// shut down both ways: the caller answers RST and lets the connection drain.
    pub fn on_shutdown(&mut self, flags: u32) -> Result<bool, ConnError> {
        if self.state != State::Established {
            return Err(ConnError::Unexpected(Op::Shutdown, self.state_name()));
        }
        self.guest_shutdown |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if self.guest_shutdown & SHUTDOWN_RCV != 0 {
            self.to_guest.clear();
            release_if_empty(&mut self.to_guest);
        }
        if self.guest_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            self.state = State::Draining;
            return Ok(true);
        }
        self.flush_to_host()?;
        Ok(false)
    }

    /// The guest reset the connection (or refused our REQUEST).
    pub fn on_rst(&mut self) {
        self.state = State::Draining;
        self.to_guest.clear();
        release_if_empty(&mut self.to_guest);
    }

    pub fn on_credit_request(&mut self) {
        self.owe_credit_update = true;
    }

    // --- The host socket ------------------------------------------------------

    /// Writes buffered guest bytes to the host socket as far as it takes them.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        while !self.to_host.is_empty() {
            let n = write_some(&mut self.stream, self.to_host.as_slices().0)
                .map_err(ConnError::Host)?;
            if n == 0 {
                break;
            }
            self.to_host.drain(..n);
            self.count_forwarded(n);
        }
        release_if_empty(&mut self.to_host);
        if self.to_host.is_empty()
            && self.guest_shutdown & SHUTDOWN_SEND != 0
            && !self.host_write_shut
        {
            // The host reads EOF: the guest has nothing more to say.
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn count_forwarded(&mut self, n: usize) {
        let ours = n.min(self.preamble);
        self.preamble -= ours;
        self.fwd_cnt = self.fwd_cnt.wrapping_add((n - ours) as u32);
        // The guest has used a quarter of the credit it got: tell it what
        // went on, before it runs dry, and let a busy stream have more.
        if self.fwd_cnt.wrapping_sub(self.fwd_told) >= (self.alloc_told / 4).max(1) {
            self.owe_credit_update = true;
            self.window = self.window.saturating_mul(2).min(BUF_ALLOC);
        }
    }

    fn reading_host(&self) -> bool {
        self.state != State::Draining && !self.host_eof && self.guest_shutdown & SHUTDOWN_RCV == 0
    }

    /// How many host bytes may wait for the guest, with `pool_free` bytes of
    /// the VM's pool left.
    fn read_ahead(&self, pool_free: usize) -> usize {
        let own = FLOOR.max(self.to_guest.len());
        TO_GUEST_BUF.min(own.saturating_add(pool_free))
    }

    /// Reads what the host sent, up to the read-ahead limit. `hung_up`: epoll
    /// reported EPOLLHUP, the host closed its end entirely.
    pub fn read_from_host(&mut self, hung_up: bool, pool_free: usize) -> Result<(), ConnError> {
        self.host_hung_up |= hung_up;
        let limit = self.read_ahead(pool_free);
        let mut chunk = [0u8; READ_CHUNK];
        while self.reading_host() && self.to_guest.len() < limit {
            let room = (limit - self.to_guest.len()).min(READ_CHUNK);
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => self.host_eof = true,
                Ok(n) => {
                    reserve_within(&mut self.to_guest, n, limit);
                    self.to_guest.extend(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Host(e)),
            }
        }
        Ok(())
    }

    /// What epoll should watch the host socket for. Nothing at all when the
    /// connection waits on the guest: a hung-up socket would otherwise report
    /// EPOLLHUP for ever.
    pub fn interest(&self, pool_free: usize) -> EventSet {
        let mut ev = EventSet::empty();
        if self.reading_host() && self.to_guest.len() < self.read_ahead(pool_free) {
            ev |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            ev |= EventSet::OUT;
        }
        ev
    }

    // --- Packets to the guest ---------------------------------------------------

    fn peer_free(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }

    fn established(&self) -> bool {
        self.state == State::Established
    }

    fn can_send_data(&self) -> bool {
        self.established() && !self.to_guest.is_empty() && self.peer_free() > 0
    }

    fn owe_shutdown(&self) -> bool {
        self.established() && self.host_eof && self.to_guest.is_empty() && !self.shutdown_sent
    }

    fn owe_credit_request(&self) -> bool {
        self.established()
            && !self.to_guest.is_empty()
            && self.peer_free() == 0
            && !self.credit_requested
    }

    /// Whether there is a packet for the guest, given a large enough buffer.
    pub fn wants_rx(&self) -> bool {
        self.owe_request
            || self.owe_response
            || self.can_send_data()
            || self.owe_shutdown()
            || (self.established() && self.owe_credit_update)
            || self.owe_credit_request()
    }

    pub fn header(&self, op: Op) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.host_port,
            dst_port: self.key.guest_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: self.alloc_told,
            fwd_cnt: self.fwd_told,
        }
    }

    /// Writes the next packet for the guest into `out`, which has `room`
    /// bytes; it carries the credit that `pool_free` bytes of the VM's pool
    /// allow. Returns the bytes written; 0 when nothing fits.
    pub fn write_rx_packet(
        &mut self,
        out: &mut impl Write,
        room: usize,
        pool_free: usize,
    ) -> io::Result<usize> {
        if room < HEADER_SIZE {
            return Ok(0);
        }
        let (buf_alloc, fwd_cnt) = self.credit_to_tell(pool_free);
        let header = |op| Header {
            buf_alloc,
            fwd_cnt,
            ..self.header(op)
        };
        let data_len = if self.can_send_data() {
            self.to_guest
                .len()
                .min(self.peer_free())
                .min(room - HEADER_SIZE)
                .min(MAX_PAYLOAD)
        } else {
            0
        };
        let h = if self.owe_request {
            header(Op::Request)
        } else if self.owe_response {
            header(Op::Response)
        } else if data_len > 0 {
            Header {
                len: data_len as u32,
                ..header(Op::Rw)
            }
        } else if self.owe_shutdown() {
            let mut flags = SHUTDOWN_SEND;
            if self.host_hung_up {
                flags |= SHUTDOWN_RCV;
            }
            Header {
                flags,
                ..header(Op::Shutdown)
            }
        } else if self.established() && self.owe_credit_update {
            header(Op::CreditUpdate)
        } else if self.owe_credit_request() {
            header(Op::CreditRequest)
        } else {
            return Ok(0);
        };
        let payload_len = h.len as usize;
        let (a, b) = self.to_guest.as_slices();
        let first = payload_len.min(a.len());
        let n = write_packet(out, &h, (&a[..first], &b[..payload_len - first]))?;

        match Op::from_raw(h.op) {
            Some(Op::Request) => self.owe_request = false,
            Some(Op::Response) => self.owe_response = false,
            Some(Op::Rw) => {
                self.to_guest.drain(..payload_len);
                release_if_empty(&mut self.to_guest);
                self.tx_cnt = self.tx_cnt.wrapping_add(payload_len as u32);
            }
            Some(Op::Shutdown) => self.shutdown_sent = true,
            Some(Op::CreditRequest) => self.credit_requested = true,
            _ => {}
        }
        // Every packet told the guest its credit.
        (self.alloc_told, self.fwd_told) = (buf_alloc, fwd_cnt);
        self.owe_credit_update = false;
        Ok(n)
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Connecting => "connecting",
            State::Established => "established",
            State::Draining => "closing",
        }
    }
}

/// Makes room for `extra` more bytes in `buf`, growing it by doubling as
/// usual but never past `most`: its capacity stays within what the pool
/// accounts for.
fn reserve_within(buf: &mut VecDeque<u8>, extra: usize, most: usize) {
    let need = buf.len() + extra;
    if need > buf.capacity() {
        let want = (buf.capacity() * 2).clamp(need, most.max(need));
        buf.reserve_exact(want - buf.len());
    }
}

/// An empty buffer gives its memory back, beyond the floor that every
/// connection may keep anyway.
fn release_if_empty(buf: &mut VecDeque<u8>) {
    if buf.is_empty() && buf.capacity() > FLOOR {
        *buf = VecDeque::new();
    }
}

/// Writes what the non-blocking socket takes now (0 if it would block).
fn write_some(stream: &mut UnixStream, buf: &[u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    loop {
        // Rust programs ignore SIGPIPE, so a closed peer is an EPIPE error here.
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::packet::{read_header, SHUTDOWN_RCV};
    use proptest::prelude::*;

    const GUEST: u64 = 3;
    const KEY: ConnKey = ConnKey {
        host_port: 1 << 30,
        guest_port: 1024,
    };
    /// A pool with room for anything.
    const PLENTY: usize = usize::MAX;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn next_with(c: &mut Connection, room: usize, pool_free: usize) -> Option<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let n = c.write_rx_packet(&mut out, room, pool_free).unwrap();
        if n == 0 {
            return None;
        }
        assert_eq!(n, out.len());
        let h = read_header(&mut out.as_slice(), n).unwrap();
        assert_eq!(h.len as usize, n - HEADER_SIZE);
        Some((h, out[HEADER_SIZE..].to_vec()))
    }

    fn next(c: &mut Connection, room: usize) -> Option<(Header, Vec<u8>)> {
        next_with(c, room, PLENTY)
    }

    /// A guest-initiated connection whose RESPONSE went out with the credit
    /// `pool_free` allows.
    fn established_with(peer_buf_alloc: u32, pool_free: usize) -> (Connection, UnixStream, Header) {
        let (dev, host) = pair();
        let req = Header {
            buf_alloc: peer_buf_alloc,
            ..Header::default()
        };
        let mut c = Connection::guest_initiated(dev, 9, KEY, GUEST, &req);
        let (resp, _) = next_with(&mut c, 4096, pool_free).unwrap();
        assert_eq!(resp.op, Op::Response as u16);
        (c, host, resp)
    }

    fn established(peer_buf_alloc: u32) -> (Connection, UnixStream) {
        let (c, host, _) = established_with(peer_buf_alloc, PLENTY);
        (c, host)
    }

    #[test]
    fn host_data_waits_for_guest_credit() {
        let (mut c, mut host) = established(10);
        host.write_all(b"0123456789abcdef").unwrap();
        c.read_from_host(false, PLENTY).unwrap();
        let (h, data) = next(&mut c, 4096).unwrap();
        assert_eq!((h.op, data.as_slice()), (Op::Rw as u16, &b"0123456789"[..]));
        // Out of credit: ask once, then stay quiet until the guest says more.
        assert_eq!(next(&mut c, 4096).unwrap().0.op, Op::CreditRequest as u16);
        assert!(!c.wants_rx());
        c.update_peer_credit(&Header {
            buf_alloc: 10,
            fwd_cnt: 4,
            ..Header::default()
        });
        let (_, data) = next(&mut c, HEADER_SIZE + 3).unwrap();
        assert_eq!(data, b"abc", "limited by the buffer");
        let (_, data) = next(&mut c, 4096).unwrap();
        assert_eq!(data, b"d", "limited by the credit");
    }

    #[test]
    fn guest_data_beyond_the_credit_told_is_refused() {
        let (mut c, host, resp) = established_with(0, PLENTY);
        assert_eq!((resp.buf_alloc, resp.fwd_cnt), (FIRST_WINDOW, 0));
        // The host does not read: everything the socket does not take stays
        // buffered, and no credit update comes.
        let chunk = vec![7u8; 4096];
        let mut sent = 0;
        let err = loop {
            match c.on_data(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => break e,
            }
            assert!(sent <= (4 << 20), "never refused");
        };
        assert!(matches!(err, ConnError::CreditExceeded { .. }), "{err}");
        // Exactly the limit told, whatever went into the socket meanwhile.
        assert_eq!(sent, FIRST_WINDOW as usize);
        assert!(c.held_from_guest() <= FIRST_WINDOW as usize);
        drop(host);
    }

    #[test]
    fn an_empty_pool_leaves_a_new_connection_its_floor_only() {
        let (mut c, mut host, resp) = established_with(0, 0);
        assert_eq!((resp.buf_alloc, resp.fwd_cnt), (FLOOR as u32, 0));
        assert!(matches!(
            c.on_data(&vec![1u8; FLOOR + 1]),
            Err(ConnError::CreditExceeded { .. })
        ));
        c.on_data(&vec![1u8; FLOOR]).unwrap();
        assert_eq!(c.pool_use(), 0);
        // The host takes it all: the floor comes back, still without the pool.
        let mut sink = vec![0u8; FLOOR];
        host.read_exact(&mut sink).unwrap();
        let (h, _) = next_with(&mut c, 4096, 0).unwrap();
        assert_eq!(h.op, Op::CreditUpdate as u16);
        assert_eq!(h.buf_alloc.wrapping_add(h.fwd_cnt), 2 * FLOOR as u32);
        // Host bytes wait for the guest up to the floor only.
        host.write_all(&vec![2u8; 3 * FLOOR]).unwrap();
        c.read_from_host(false, 0).unwrap();
        assert_eq!(c.held_to_guest(), FLOOR);
        assert!(c.interest(0).is_empty(), "reading stops at the floor");
        assert!(c.interest(PLENTY).contains(EventSet::IN));
        assert_eq!(c.pool_use(), 0);
    }

    #[test]
    fn forwarding_a_quarter_of_the_credit_earns_an_update_and_a_wider_window() {
        let (mut c, mut host) = established(0);
        let quarter = FIRST_WINDOW as usize / 4;
        c.on_data(&vec![1u8; quarter - 1]).unwrap();
        assert!(!c.wants_rx());
        c.on_data(&[1]).unwrap();
        c.flush_to_host().unwrap();
        let mut sink = vec![0u8; quarter];
        host.read_exact(&mut sink).unwrap();
        let (h, _) = next(&mut c, 4096).unwrap();
        assert_eq!(h.op, Op::CreditUpdate as u16);
        assert_eq!(h.fwd_cnt, quarter as u32);
        assert_eq!(h.buf_alloc, 2 * FIRST_WINDOW, "the window doubled");
        // It never passes BUF_ALLOC however busy the stream.
        for _ in 0..10 {
            let credit = c.credit_left().min(MAX_PAYLOAD);
            c.on_data(&vec![1u8; credit]).unwrap();
            c.flush_to_host().unwrap();
            let mut sink = vec![0u8; credit];
            host.read_exact(&mut sink).unwrap();
            let (h, _) = next(&mut c, 4096).unwrap();
            assert!(h.buf_alloc <= BUF_ALLOC);
        }
        assert_eq!(c.alloc_told, BUF_ALLOC);
    }

    #[test]
    fn host_eof_becomes_a_shutdown_after_the_data() {
        let (mut c, mut host) = established(100);
        host.write_all(b"bye").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        c.read_from_host(false, PLENTY).unwrap();
        assert_eq!(next(&mut c, 4096).unwrap().1, b"bye");
        let (h, _) = next(&mut c, 4096).unwrap();
        assert_eq!((h.op, h.flags), (Op::Shutdown as u16, SHUTDOWN_SEND));
        assert!(next(&mut c, 4096).is_none());
        assert!(c.interest(PLENTY).is_empty(), "nothing left to watch");
        // The guest closes too: both ways shut, the connection drains.
        assert!(c.on_shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND).unwrap());
        assert!(c.is_finished());
        assert_eq!((c.held_from_guest(), c.held_to_guest()), (0, 0));
    }

    #[test]
    fn the_ok_line_is_not_counted_as_guest_data() {
        let (dev, mut host) = pair();
        let mut c = Connection::host_initiated(dev, 1, KEY, GUEST, b"early");
        assert!(c.on_response().is_err(), "no REQUEST was sent yet");
        let (h, _) = next(&mut c, 4096).unwrap();
        assert_eq!((h.op, h.dst_port), (Op::Request as u16, 1024));
        assert!(c.on_data(b"x").is_err(), "data before RESPONSE");
        c.update_peer_credit(&Header {
            buf_alloc: 64,
            ..Header::default()
        });
        c.on_response().unwrap();
        c.on_data(b"hi").unwrap();
        let mut got = [0u8; 16];
        let n = host.read(&mut got).unwrap();
        assert_eq!(&got[..n], format!("OK {}\nhi", 1u32 << 30).as_bytes());
        let (h, data) = next(&mut c, 4096).unwrap();
        assert_eq!((data.as_slice(), h.fwd_cnt), (&b"early"[..], 2));
    }

    /// One step of a guest, a host and the VM's pool around a connection.
    #[derive(Debug, Clone)]
    enum Step {
        /// The guest sends this much of the credit it has (in thousandths).
        GuestSends(u16),
        /// The host reads this much from its socket.
        HostReads(u32),
        /// The device writes a packet, with this much of the pool free.
        Tell(u32),
        HostWrites(u16),
        DeviceReads(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u16..=1000).prop_map(Step::GuestSends),
            (0u32..300_000).prop_map(Step::HostReads),
            prop_oneof![Just(0u32), 0u32..8192, 0u32..2_000_000].prop_map(Step::Tell),
            (0u16..20_000).prop_map(Step::HostWrites),
            prop_oneof![Just(0u32), 0u32..100_000].prop_map(Step::DeviceReads),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the guest, the host and the pool do: the limit told never
        /// moves back, a connection never holds more than its own cap, and a
        /// packet never takes more from the pool than was free.
        #[test]
        fn credit_accounting_holds_for_any_traffic(steps in proptest::collection::vec(step(), 1..80)) {
            let (mut c, mut host, _) = established_with(1 << 20, 0);
            host.set_nonblocking(true).unwrap();
            let mut limit = c.alloc_told.wrapping_add(c.fwd_told);
            let mut sink = vec![0u8; 300_000];
            for s in steps {
                let before = c.pool_use();
                let mut pool_free = PLENTY;
                match s {
                    Step::GuestSends(m) => {
                        let n = c.credit_left() * usize::from(m) / 1000;
                        c.on_data(&vec![9u8; n]).unwrap();
                        prop_assert!(
                            c.on_data(&vec![9u8; c.credit_left() + 1]).is_err(),
                            "more than the credit was taken"
                        );
                    }
                    Step::HostReads(n) => {
                        let _ = host.read(&mut sink[..n as usize]);
                        c.flush_to_host().unwrap();
                    }
                    Step::Tell(free) => {
                        pool_free = free as usize;
                        c.owe_credit_update = true;
                        let _ = next_with(&mut c, 70_000, pool_free);
                    }
                    Step::HostWrites(n) => {
                        let _ = host.write(&vec![3u8; usize::from(n)]);
                    }
                    Step::DeviceReads(free) => {
                        pool_free = free as usize;
                        c.read_from_host(false, pool_free).unwrap();
                    }
                }
                let now = c.alloc_told.wrapping_add(c.fwd_told);
                prop_assert!(now.wrapping_sub(limit) < 1 << 31, "the limit moved back");
                limit = now;
                prop_assert!(c.alloc_told <= BUF_ALLOC);
                prop_assert!(c.fwd_cnt.wrapping_sub(c.fwd_told) <= c.alloc_told, "fwd_cnt told ahead");
                prop_assert!(c.held_from_guest() <= BUF_ALLOC as usize);
                prop_assert!(c.held_to_guest() <= TO_GUEST_BUF);
                prop_assert!(c.buffered() <= c.held_from_guest());
                prop_assert!(c.to_host.capacity() <= c.preamble + BUF_ALLOC as usize);
                prop_assert!(c.to_guest.capacity() <= TO_GUEST_BUF);
                prop_assert!(
                    c.pool_use() <= before.saturating_add(pool_free),
                    "took {} from a pool with {pool_free} free", c.pool_use() - before
                );
            }
        }
    }
}
