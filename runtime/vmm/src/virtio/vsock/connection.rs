//! One stream between a guest port and a host Unix socket: its state, the bytes
//! buffered in each direction and credit-based flow control (virtio 1.2,
//! 5.10.6.3).
//!
//! Memory is bounded both ways. Host bytes are read ahead into at most
//! [`TO_GUEST_BUF`] bytes and only leave as the guest's credit allows. Guest
//! bytes that the host socket cannot take yet are kept, at most [`BUF_ALLOC`]
//! of them: that is the credit we advertise, so a guest that sends more has
//! broken the protocol and the connection is reset.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{
    write_packet, Header, Op, HEADER_SIZE, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::HOST_CID;

/// Receive buffer we advertise to the guest for each connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Host bytes read ahead of the guest's credit, per connection.
pub const TO_GUEST_BUF: usize = 64 * 1024;
/// Forwarding this much without telling the guest may leave it waiting for
/// credit; a quarter of the buffer keeps updates rare but timely.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
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
    fwd_cnt: u32,
    fwd_cnt_told: u32,
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
            fwd_cnt: 0,
            fwd_cnt_told: 0,
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
        let buffered = self.to_host.len() - self.preamble;
        let credit = (BUF_ALLOC as usize).saturating_sub(buffered);
        if data.len() > credit {
            return Err(ConnError::CreditExceeded {
                got: data.len(),
                credit,
            });
        }
        let mut rest = data;
        if self.to_host.is_empty() {
            // Usual case: the host keeps up, nothing needs copying.
            let n = write_some(&mut self.stream, rest).map_err(ConnError::Host)?;
            self.count_forwarded(n);
            rest = &rest[n..];
        }
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
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= CREDIT_UPDATE_THRESHOLD {
            self.owe_credit_update = true;
        }
    }

    fn reading_host(&self) -> bool {
        self.state != State::Draining && !self.host_eof && self.guest_shutdown & SHUTDOWN_RCV == 0
    }

    /// Reads what the host sent, up to the read-ahead limit. `hung_up`: epoll
    /// reported EPOLLHUP, the host closed its end entirely.
    pub fn read_from_host(&mut self, hung_up: bool) -> Result<(), ConnError> {
        self.host_hung_up |= hung_up;
        let mut chunk = [0u8; READ_CHUNK];
        while self.reading_host() && self.to_guest.len() < TO_GUEST_BUF {
            let room = (TO_GUEST_BUF - self.to_guest.len()).min(READ_CHUNK);
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => self.host_eof = true,
                Ok(n) => self.to_guest.extend(&chunk[..n]),
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
    pub fn interest(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.reading_host() && self.to_guest.len() < TO_GUEST_BUF {
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
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Writes the next packet for the guest into `out`, which has `room`
    /// bytes. Returns the bytes written; 0 when nothing fits.
    pub fn write_rx_packet(&mut self, out: &mut impl Write, room: usize) -> io::Result<usize> {
        if room < HEADER_SIZE {
            return Ok(0);
        }
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
            self.header(Op::Request)
        } else if self.owe_response {
            self.header(Op::Response)
        } else if data_len > 0 {
            Header {
                len: data_len as u32,
                ..self.header(Op::Rw)
            }
        } else if self.owe_shutdown() {
            let mut flags = SHUTDOWN_SEND;
            if self.host_hung_up {
                flags |= SHUTDOWN_RCV;
            }
            Header {
                flags,
                ..self.header(Op::Shutdown)
            }
        } else if self.established() && self.owe_credit_update {
            self.header(Op::CreditUpdate)
        } else if self.owe_credit_request() {
            self.header(Op::CreditRequest)
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
                self.tx_cnt = self.tx_cnt.wrapping_add(payload_len as u32);
            }
            Some(Op::Shutdown) => self.shutdown_sent = true,
            Some(Op::CreditRequest) => self.credit_requested = true,
            _ => {}
        }
        // Every packet told the guest our fwd_cnt.
        self.fwd_cnt_told = h.fwd_cnt;
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

    const GUEST: u64 = 3;
    const KEY: ConnKey = ConnKey {
        host_port: 1 << 30,
        guest_port: 1024,
    };

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn next(c: &mut Connection, room: usize) -> Option<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let n = c.write_rx_packet(&mut out, room).unwrap();
        if n == 0 {
            return None;
        }
        assert_eq!(n, out.len());
        let h = read_header(&mut out.as_slice(), n).unwrap();
        assert_eq!(h.len as usize, n - HEADER_SIZE);
        Some((h, out[HEADER_SIZE..].to_vec()))
    }

    fn established(peer_buf_alloc: u32) -> (Connection, UnixStream) {
        let (dev, host) = pair();
        let req = Header {
            buf_alloc: peer_buf_alloc,
            ..Header::default()
        };
        let mut c = Connection::guest_initiated(dev, 9, KEY, GUEST, &req);
        assert_eq!(next(&mut c, 4096).unwrap().0.op, Op::Response as u16);
        (c, host)
    }

    #[test]
    fn host_data_waits_for_guest_credit() {
        let (mut c, mut host) = established(10);
        host.write_all(b"0123456789abcdef").unwrap();
        c.read_from_host(false).unwrap();
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
    fn guest_data_beyond_our_buffer_is_refused() {
        let (mut c, host) = established(0);
        // The host does not read: everything stays buffered.
        let chunk = vec![7u8; MAX_PAYLOAD];
        let mut sent = 0;
        let err = loop {
            match c.on_data(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => break e,
            }
            assert!(sent <= BUF_ALLOC as usize + (4 << 20), "never refused");
        };
        assert!(matches!(err, ConnError::CreditExceeded { .. }), "{err}");
        drop(host);
    }

    #[test]
    fn consuming_a_quarter_of_the_buffer_earns_a_credit_update() {
        let (mut c, mut host) = established(0);
        c.on_data(&vec![1u8; CREDIT_UPDATE_THRESHOLD as usize - 1])
            .unwrap();
        assert!(!c.wants_rx());
        c.on_data(&[1]).unwrap();
        c.flush_to_host().unwrap();
        let mut sink = vec![0u8; CREDIT_UPDATE_THRESHOLD as usize];
        host.read_exact(&mut sink).unwrap();
        let (h, _) = next(&mut c, 4096).unwrap();
        assert_eq!(h.op, Op::CreditUpdate as u16);
        assert_eq!(h.fwd_cnt, CREDIT_UPDATE_THRESHOLD);
        assert_eq!(h.buf_alloc, BUF_ALLOC);
    }

    #[test]
    fn host_eof_becomes_a_shutdown_after_the_data() {
        let (mut c, mut host) = established(100);
        host.write_all(b"bye").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        c.read_from_host(false).unwrap();
        assert_eq!(next(&mut c, 4096).unwrap().1, b"bye");
        let (h, _) = next(&mut c, 4096).unwrap();
        assert_eq!((h.op, h.flags), (Op::Shutdown as u16, SHUTDOWN_SEND));
        assert!(next(&mut c, 4096).is_none());
        assert!(c.interest().is_empty(), "nothing left to watch");
        // The guest closes too: both ways shut, the connection drains.
        assert!(c.on_shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND).unwrap());
        assert!(c.is_finished());
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
}
