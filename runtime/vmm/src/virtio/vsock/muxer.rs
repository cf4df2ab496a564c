//! The connection table: routes the guest's packets and the host sockets'
//! events to connections, and decides what goes into the next rx buffer.
//!
//! Nothing the guest sends may grow it without bound: connections are capped
//! at [`MAX_CONNECTIONS`] (of which the guest may open
//! [`MAX_GUEST_CONNECTIONS`], so the host can always still reach it), RSTs
//! waiting for rx buffers at [`MAX_QUEUED_RSTS`], host clients still in their
//! CONNECT line at [`MAX_HANDSHAKES`], and the connections' buffers at
//! [`MAX_BUFFERED`] per VM: each may hold [`FLOOR`] bytes each way, and
//! beyond that they share a pool of [`POOL`] bytes (see `connection`).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use log::debug;
use vmm_sys_util::epoll::EventSet;

use super::connection::{ConnError, ConnKey, Connection, FLOOR};
use super::handshake::{Connect, HandshakeError, PendingClient};
use super::packet::{write_packet, Header, Op, PacketError, HEADER_SIZE, TYPE_STREAM};
use super::unix::{connect_nonblocking, port_path};
use super::HOST_CID;
use crate::ratelimit::Limited;
use crate::virtio::worker::Registry;

/// Live connections (host- and guest-initiated, draining ones included).
pub const MAX_CONNECTIONS: usize = 1024;
/// Of those, the ones the guest opened: the rest stay free for the host.
pub const MAX_GUEST_CONNECTIONS: usize = 768;
/// The buffer bytes all connections of a VM share beyond their floors.
pub const POOL: usize = 24 << 20;
/// The most the VM's connections hold in buffers: 32 MiB.
pub const MAX_BUFFERED: usize = MAX_CONNECTIONS * 2 * FLOOR + POOL;
/// Host clients accepted but still sending their CONNECT line.
pub const MAX_HANDSHAKES: usize = 64;
/// RSTs waiting for rx buffers; beyond this the guest is not reading its
/// rx queue and further RSTs are dropped.
pub const MAX_QUEUED_RSTS: usize = 1024;
/// First of the host-side ports given to host-initiated connections; they
/// count upwards from here and wrap around, skipping ports in use.
pub const HOST_PORT_FIRST: u32 = 1 << 30;
/// u32::MAX is VMADDR_PORT_ANY, never a real port.
const HOST_PORT_LAST: u32 = u32::MAX - 1;
/// Accepting is bounded per event so that a flood of clients cannot keep the
/// device thread from its queues; epoll reports the rest again.
const ACCEPTS_PER_EVENT: usize = 64;

/// The token of the device's listening socket.
const TOKEN_LISTENER: u64 = 2;
/// Host sockets get tokens from here on, never reused, so that an event
/// still pending for a closed socket cannot reach a new one.
const FIRST_SOCKET_TOKEN: u64 = 16;

/// What one device allows; [`Limits::DEFAULT`] but in tests.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connections: usize,
    pub guest_connections: usize,
    pub pool: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        connections: MAX_CONNECTIONS,
        guest_connections: MAX_GUEST_CONNECTIONS,
        pool: POOL,
    };
}

pub struct Muxer {
    guest_cid: u64,
    limits: Limits,
    uds_path: PathBuf,
    listener: UnixListener,
    /// The listener is out of epoll after accept() failed (e.g. out of fds)
    /// until a socket closes.
    listener_paused: bool,
    next_token: u64,
    next_host_port: u32,
    handshakes: HashMap<u64, PendingClient>,
    conns: HashMap<u64, Connection>,
    by_key: HashMap<ConnKey, u64>,
    /// How many keyed connections use each host port.
    host_ports: HashMap<u32, usize>,
    /// Connections with something for the guest, served round robin.
    rx_queue: VecDeque<u64>,
    rsts: VecDeque<Header>,
    /// Open connections the guest initiated.
    guest_conns: usize,
    /// The pool bytes the connections hold ([`Connection::pool_use`] summed).
    pool_used: usize,
    /// Every warning the device logs (the handler's too).
    pub log: Limited<&'static str>,
    /// What the connections hold in all, for whoever watches the VM.
    held: Arc<AtomicUsize>,
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        limits: Limits,
        held: Arc<AtomicUsize>,
    ) -> Self {
        Muxer {
            guest_cid,
            limits,
            uds_path,
            listener,
            listener_paused: false,
            next_token: FIRST_SOCKET_TOKEN,
            next_host_port: HOST_PORT_FIRST,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_key: HashMap::new(),
            host_ports: HashMap::new(),
            rx_queue: VecDeque::new(),
            rsts: VecDeque::new(),
            guest_conns: 0,
            pool_used: 0,
            log: Limited::new("vsock"),
            held,
        }
    }

    fn pool_free(&self) -> usize {
        self.limits.pool.saturating_sub(self.pool_used)
    }

    /// Runs `f` on connection `token` with the pool's free bytes, and charges
    /// the pool with what that changed in the connection's holdings. Every
    /// change to a connection's buffers or credit goes through here.
    fn with_conn<R>(
        &mut self,
        token: u64,
        f: impl FnOnce(&mut Connection, usize) -> R,
    ) -> Option<R> {
        let free = self.pool_free();
        let conn = self.conns.get_mut(&token)?;
        let before = (conn.pool_use(), held(conn));
        let r = f(conn, free);
        let after = (conn.pool_use(), held(conn));
        self.pool_used = self.pool_used.saturating_sub(before.0) + after.0;
        self.count_held(before.1, after.1);
        Some(r)
    }

    fn count_held(&self, before: usize, after: usize) {
        if after >= before {
            self.held.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.held.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// The pool's books against the connections themselves (tests and fuzz
    /// targets only: it visits every connection).
    #[cfg(any(test, feature = "fuzzing"))]
    fn check_books(&self) {
        let pool: usize = self.conns.values().map(Connection::pool_use).sum();
        let all: usize = self.conns.values().map(held).sum();
        assert_eq!(self.pool_used, pool, "pool books");
        assert_eq!(self.held.load(Ordering::Relaxed), all, "held books");
        assert!(self.pool_used <= self.limits.pool, "pool overdrawn");
        let guest = self.conns.values().filter(|c| c.opened_by_guest()).count();
        assert_eq!(self.guest_conns, guest, "guest connection count");
    }

    pub fn init(&mut self, r: &Registry) -> io::Result<()> {
        r.add(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN)
    }

    /// Whether `token` belongs to the muxer (or did: events may still arrive
    /// for sockets closed earlier in the same epoll batch).
    pub fn owns(token: u64) -> bool {
        token == TOKEN_LISTENER || token >= FIRST_SOCKET_TOKEN
    }

    // --- Host sockets -----------------------------------------------------------

    pub fn host_event(&mut self, r: &Registry, token: u64, events: EventSet) {
        if token == TOKEN_LISTENER {
            self.accept(r);
        } else if self.handshakes.contains_key(&token) {
            self.handshake(r, token);
        } else if self.conns.contains_key(&token) {
            self.socket_event(r, token, events);
        }
        #[cfg(any(test, feature = "fuzzing"))]
        self.check_books();
    }

    fn accept(&mut self, r: &Registry) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // The client stays in the backlog and epoll would report
                    // it again at once: wait for a socket to close instead.
                    self.log.note(
                        "cannot accept a host client (will retry when a connection closes)",
                        e,
                    );
                    if r.remove(self.listener.as_raw_fd()).is_ok() {
                        self.listener_paused = true;
                    }
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES {
                self.log.note(
                    "too many host clients are sending CONNECT lines; closing a new one",
                    MAX_HANDSHAKES,
                );
                continue;
            }
            let token = self.new_token();
            if let Err(e) = stream
                .set_nonblocking(true)
                .and_then(|()| r.add(stream.as_raw_fd(), token, EventSet::IN))
            {
                self.log.note("cannot serve a host client", e);
                continue;
            }
            self.handshakes.insert(token, PendingClient::new(stream));
        }
    }

    fn resume_listener(&mut self, r: &Registry) {
        if self.listener_paused
            && r.add(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN)
                .is_ok()
        {
            self.listener_paused = false;
        }
    }

    fn handshake(&mut self, r: &Registry, token: u64) {
        let Some(client) = self.handshakes.get_mut(&token) else {
            return;
        };
        let Connect { port, early_data } = match client.read() {
            Ok(None) => return,
            Ok(Some(c)) => c,
            Err(e) => {
                match e {
                    HandshakeError::Closed => debug!("vsock: host client: {e}"),
                    _ => self.log.note("closing a host client", e),
                }
                self.drop_handshake(r, token);
                return;
            }
        };
        if self.conns.len() >= self.limits.connections {
            self.log.note(
                "all connections are in use; refusing a host client",
                format_args!("port {port}"),
            );
            return self.drop_handshake(r, token);
        }
        let Some(host_port) = self.allocate_host_port() else {
            self.log.note(
                "no free host port; refusing a host client",
                format_args!("port {port}"),
            );
            return self.drop_handshake(r, token);
        };
        let Some(client) = self.handshakes.remove(&token) else {
            return;
        };
        let key = ConnKey {
            host_port,
            guest_port: port,
        };
        // The socket keeps its token: epoll already knows it by that.
        let mut conn =
            Connection::host_initiated(client.stream, token, key, self.guest_cid, &early_data);
        conn.watched = Some(EventSet::IN);
        self.insert(conn);
        self.refresh(r, token);
    }

    fn drop_handshake(&mut self, r: &Registry, token: u64) {
        if let Some(client) = self.handshakes.remove(&token) {
            let _ = r.remove(client.stream.as_raw_fd());
        }
        self.resume_listener(r);
    }

    fn allocate_host_port(&mut self) -> Option<u32> {
        // At most `connections` ports are taken, so this finds one quickly.
        for _ in 0..=self.limits.connections {
            let port = self.next_host_port;
            self.next_host_port = if port >= HOST_PORT_LAST {
                HOST_PORT_FIRST
            } else {
                port + 1
            };
            if !self.host_ports.contains_key(&port) {
                return Some(port);
            }
        }
        None
    }

    fn socket_event(&mut self, r: &Registry, token: u64, events: EventSet) {
        let hung_up = events.contains(EventSet::HANG_UP);
        let Some(result) = self.with_conn(token, |conn, pool_free| {
            let mut result = Ok(());
            if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
                result = conn.flush_to_host();
            }
            if result.is_ok()
                && events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
            {
                result = conn.read_from_host(hung_up, pool_free);
            }
            result
        }) else {
            return;
        };
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        match result {
            Err(e) => self.reset(r, token, &e),
            Ok(()) if conn.is_connecting() && conn.host_hung_up() => {
                debug!("vsock: a host client left before the guest answered");
                self.reset_quietly(r, token);
            }
            Ok(()) => self.refresh(r, token),
        }
    }

    // --- Connection bookkeeping ---------------------------------------------

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn insert(&mut self, conn: Connection) {
        let key = conn.key();
        *self.host_ports.entry(key.host_port).or_default() += 1;
        self.by_key.insert(key, conn.token());
        self.pool_used += conn.pool_use();
        self.count_held(0, held(&conn));
        self.guest_conns += usize::from(conn.opened_by_guest());
        self.conns.insert(conn.token(), conn);
    }

    /// Frees a connection's address (the guest considers it closed) while it
    /// may still be draining.
    fn detach(&mut self, token: u64) {
        let Some(key) = self.conns.get(&token).map(Connection::key) else {
            return;
        };
        if self.by_key.get(&key) != Some(&token) {
            return;
        }
        self.by_key.remove(&key);
        if let Some(n) = self.host_ports.get_mut(&key.host_port) {
            *n -= 1;
            if *n == 0 {
                self.host_ports.remove(&key.host_port);
            }
        }
    }

    fn remove(&mut self, r: &Registry, token: u64) {
        self.detach(token);
        if let Some(conn) = self.conns.remove(&token) {
            if conn.watched.is_some() {
                let _ = r.remove(conn.stream().as_raw_fd());
            }
            self.pool_used = self.pool_used.saturating_sub(conn.pool_use());
            self.count_held(held(&conn), 0);
            self.guest_conns -= usize::from(conn.opened_by_guest());
        }
        self.resume_listener(r);
    }

    /// Tears a connection down, telling the guest if it knows of it. What the
    /// guest did wrong is a warning; a host socket failing (usually a service
    /// that closed early) is routine.
    fn reset(&mut self, r: &Registry, token: u64, why: &ConnError) {
        if let Some(conn) = self.conns.get(&token) {
            let k = conn.key();
            let detail = format_args!(
                "host port {} <-> guest port {}: {why}",
                k.host_port, k.guest_port
            );
            match why {
                ConnError::Host(_) => debug!("vsock: resetting {detail}"),
                _ => self
                    .log
                    .note("resetting a connection the guest misused", detail),
            }
        }
        self.reset_quietly(r, token);
    }

    fn reset_quietly(&mut self, r: &Registry, token: u64) {
        if let Some(conn) = self.conns.get(&token) {
            if conn.guest_knows() && !conn.is_draining() {
                let rst = conn.header(Op::Rst);
                self.queue_rst(rst);
            }
        }
        self.remove(r, token);
    }

    fn queue_rst(&mut self, rst: Header) {
        if self.rsts.len() >= MAX_QUEUED_RSTS {
            self.log.note(
                "the guest is not taking rx buffers; dropping an RST",
                format_args!("{MAX_QUEUED_RSTS} queued"),
            );
            return;
        }
        self.rsts.push_back(rst);
    }

    /// After anything changed on a connection: retire it if it is done, make
    /// epoll watch what it now waits for, and queue it if it has something
    /// for the guest.
    fn refresh(&mut self, r: &Registry, token: u64) {
        let pool_free = self.pool_free();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.is_finished() {
            return self.remove(r, token);
        }
        let want = conn.interest(pool_free);
        let fd = conn.stream().as_raw_fd();
        let result = match conn.watched {
            None if want.is_empty() => Ok(()),
            None => r.add(fd, token, want),
            Some(_) if want.is_empty() => r.remove(fd),
            Some(w) if w == want => Ok(()),
            Some(_) => r.modify(fd, token, want),
        };
        if let Err(e) = result {
            return self.reset(r, token, &ConnError::Host(e));
        }
        conn.watched = (!want.is_empty()).then_some(want);
        if conn.wants_rx() && !conn.queued_for_rx {
            conn.queued_for_rx = true;
            self.rx_queue.push_back(token);
        }
    }

    // --- Packets from the guest ---------------------------------------------

    /// Handles one packet from the tx queue. `payload` is the payload, or why
    /// it could not be read.
    pub fn on_guest_packet(
        &mut self,
        r: &Registry,
        h: &Header,
        payload: Result<&[u8], PacketError>,
    ) {
        self.guest_packet(r, h, payload);
        #[cfg(any(test, feature = "fuzzing"))]
        self.check_books();
    }

    fn guest_packet(&mut self, r: &Registry, h: &Header, payload: Result<&[u8], PacketError>) {
        if h.src_cid != self.guest_cid {
            self.log.note(
                "dropping a packet from a CID that is not the guest's",
                format_args!("CID {}, the guest is {}", h.src_cid, self.guest_cid),
            );
            return;
        }
        if h.dst_cid != HOST_CID {
            debug!("vsock: packet for CID {}: nobody there", h.dst_cid);
            return self.refuse(h);
        }
        let key = ConnKey {
            host_port: h.dst_port,
            guest_port: h.src_port,
        };
        let token = self.by_key.get(&key).copied();
        let op = h.op();
        let problem = match (h.type_, op, &payload) {
            (t, _, _) if t != TYPE_STREAM => Some(format!("socket type {t} is not supported")),
            (_, None, _) => Some(format!("unknown op {}", h.op)),
            (_, _, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        if let Some(why) = problem {
            self.log.note(
                "dropping a bad packet",
                format_args!(
                    "guest port {} to host port {}: {why}",
                    h.src_port, h.dst_port
                ),
            );
            return match token {
                Some(t) => self.reset_quietly(r, t),
                None => self.refuse(h),
            };
        }
        let (Some(op), Ok(payload)) = (op, payload) else {
            return;
        };
        let Some(token) = token else {
            return match op {
                Op::Request => self.guest_connect(r, h),
                // Nothing to reset, and an RST must never answer an RST.
                Op::Rst => {}
                _ => {
                    debug!(
                        "vsock: {op:?} for unknown connection host port {} <-> guest port {}",
                        h.dst_port, h.src_port
                    );
                    self.refuse(h)
                }
            };
        };
        let Some((result, closed)) = self.with_conn(token, |conn, _| {
            conn.update_peer_credit(h);
            let mut closed = None;
            let result = match op {
                Op::Request => Err(ConnError::Unexpected(Op::Request, "open")),
                Op::Response => conn.on_response(),
                Op::Rst => {
                    conn.on_rst();
                    closed = Some(None);
                    Ok(())
                }
                Op::Shutdown => match conn.on_shutdown(h.flags) {
                    Ok(true) => {
                        // Both ways shut: the guest waits for our RST to close.
                        closed = Some(Some(conn.header(Op::Rst)));
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                },
                Op::Rw => conn.on_data(payload),
                Op::CreditUpdate => Ok(()),
                Op::CreditRequest => {
                    conn.on_credit_request();
                    Ok(())
                }
            };
            (result, closed)
        }) else {
            return;
        };
        if let Some(rst) = closed {
            if let Some(rst) = rst {
                self.queue_rst(rst);
            }
            self.detach(token);
        }
        match result {
            Ok(()) => self.refresh(r, token),
            Err(e) => self.reset(r, token, &e),
        }
    }

    /// Answers a packet that belongs to no connection with an RST, as Linux
    /// does, unless it is an RST itself.
    fn refuse(&mut self, h: &Header) {
        if h.op == Op::Rst as u16 {
            return;
        }
        self.queue_rst(Header {
            src_cid: h.dst_cid,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: h.type_,
            op: Op::Rst as u16,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    /// The guest connects to host port P: `<uds_path>_P` must be listening.
    fn guest_connect(&mut self, r: &Registry, h: &Header) {
        if self.conns.len() >= self.limits.connections
            || self.guest_conns >= self.limits.guest_connections
        {
            self.log.note(
                "the guest holds all the connections it may; refusing another",
                format_args!("to port {}", h.dst_port),
            );
            return self.refuse(h);
        }
        let path = port_path(&self.uds_path, h.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                debug!(
                    "vsock: guest connection to port {} refused: {}: {e}",
                    h.dst_port,
                    path.display()
                );
                return self.refuse(h);
            }
        };
        let token = self.new_token();
        let key = ConnKey {
            host_port: h.dst_port,
            guest_port: h.src_port,
        };
        self.insert(Connection::guest_initiated(
            stream,
            token,
            key,
            self.guest_cid,
            h,
        ));
        self.refresh(r, token);
    }

    // --- Packets to the guest ------------------------------------------------

    /// Whether there is a packet for the guest (given a large enough buffer).
    pub fn has_rx(&mut self) -> bool {
        if !self.rsts.is_empty() {
            return true;
        }
        while let Some(&token) = self.rx_queue.front() {
            match self.conns.get_mut(&token) {
                Some(c) if c.wants_rx() => return true,
                Some(c) => c.queued_for_rx = false,
                None => {}
            }
            self.rx_queue.pop_front();
        }
        false
    }

    /// Writes the next packet into an rx buffer of `room` bytes and returns
    /// its size, 0 if it does not fit (the caller checked [`Self::has_rx`]).
    pub fn write_rx(
        &mut self,
        r: &Registry,
        out: &mut impl Write,
        room: usize,
    ) -> io::Result<usize> {
        if room < HEADER_SIZE {
            return Ok(0);
        }
        if let Some(rst) = self.rsts.pop_front() {
            return write_packet(out, &rst, (&[], &[]));
        }
        let Some(&token) = self.rx_queue.front() else {
            return Ok(0);
        };
        let Some(written) = self.with_conn(token, |conn, pool_free| {
            let n = conn.write_rx_packet(out, room, pool_free)?;
            if n > 0 {
                conn.queued_for_rx = false;
            }
            Ok::<_, io::Error>(n)
        }) else {
            self.rx_queue.pop_front();
            return Ok(0);
        };
        let n = written?;
        if n > 0 {
            self.rx_queue.pop_front();
            // Back of the queue if it has more; its socket may be readable again.
            self.refresh(r, token);
        }
        #[cfg(any(test, feature = "fuzzing"))]
        self.check_books();
        Ok(n)
    }
}

/// Everything a connection holds, both ways.
fn held(c: &Connection) -> usize {
    c.held_from_guest() + c.held_to_guest()
}
