//! The vsock fuzz targets (see `crate::fuzzing`): packet headers and CONNECT
//! lines alone (`vsock_packet`), and the whole device (`vsock`): packets in
//! descriptor chains of the tx queue, rx buffers, the muxer and its
//! connections with real host sockets on both sides, small caps so that
//! an input can reach them. The muxer checks its books after every event.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use super::handshake::parse_connect;
use super::muxer::Limits;
use super::packet::{read_header, read_payload, Header, Op, HEADER_SIZE, MAX_PAYLOAD, TYPE_STREAM};
use super::{host_port_path, Vsock, HOST_CID, HOST_PORT_FIRST};
use crate::fuzzing::queues::{drive, Driver, Host};
use crate::fuzzing::{Chunked, Input, Scratch, Seed};

const GUEST_CID: u64 = 3;
/// The host service the guest may connect to (nothing listens elsewhere).
const SERVICE_PORT: u32 = 1024;
const MAX_PEERS: usize = 16;

/// A packet as the handler reads it from a chain that claims `available`
/// bytes (the truth, or a lie), and the bytes as a host client's CONNECT
/// line.
pub fn vsock_packet(data: &[u8]) {
    let mut input = Input::new(data);
    let claim = input.u16();
    let chunk = usize::from(input.u8() % 64) + 1;
    let bytes = input.bytes(usize::MAX);
    let available = if claim & 1 == 0 {
        bytes.len()
    } else {
        usize::from(claim >> 1)
    };
    let mut src = Chunked::new(bytes, chunk);
    if let Ok(h) = read_header(&mut src, available) {
        assert!(available >= HEADER_SIZE);
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        let mut scratch = vec![0u8; MAX_PAYLOAD];
        if let Ok(p) = read_payload(&mut src, &h, available - HEADER_SIZE, &mut scratch) {
            assert_eq!(p.len(), h.len as usize);
        }
    }
    if let Ok(port) = parse_connect(bytes) {
        assert_eq!(
            parse_connect(format!("CONNECT {port}").as_bytes()),
            Ok(port)
        );
    }
}

/// The host side: a service listening on [`SERVICE_PORT`], clients of the
/// device's socket, and what either does with its connection.
struct Sockets {
    uds: PathBuf,
    service: UnixListener,
    peers: Vec<UnixStream>,
}

const ACCEPT: u8 = 0;
const CONNECT: u8 = 1;
const WRITE: u8 = 2;
const READ: u8 = 3;
const SHUTDOWN: u8 = 4;
const CLOSE: u8 = 5;

impl Host for Sockets {
    fn op(&mut self, input: &mut Input) {
        let op = input.u8() % 6;
        let pick = usize::from(input.u8()) % self.peers.len().max(1);
        match op {
            ACCEPT => {
                while self.peers.len() < MAX_PEERS {
                    let Ok((s, _)) = self.service.accept() else {
                        break;
                    };
                    let _ = s.set_nonblocking(true);
                    self.peers.push(s);
                }
            }
            CONNECT => {
                let n = usize::from(input.u8());
                let line = input.bytes(n);
                if self.peers.len() < MAX_PEERS {
                    if let Ok(mut s) = UnixStream::connect(&self.uds) {
                        let _ = s.set_nonblocking(true);
                        let _ = s.write(line);
                        self.peers.push(s);
                    }
                }
            }
            _ if self.peers.is_empty() => {}
            WRITE => {
                let len = usize::from(input.u16() % 16384);
                let s = &mut self.peers[pick];
                let _ = s.write(&vec![b'h'; len]);
            }
            READ => {
                let s = &mut self.peers[pick];
                let mut buf = [0u8; 16384];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
            SHUTDOWN => {
                let how = match input.u8() % 3 {
                    0 => Shutdown::Read,
                    1 => Shutdown::Write,
                    _ => Shutdown::Both,
                };
                let _ = self.peers[pick].shutdown(how);
            }
            _ => {
                self.peers.swap_remove(pick);
            }
        }
    }
}

/// The whole device against arbitrary queues, packets and host sockets.
pub fn vsock(data: &[u8]) {
    let Ok(dir) = Scratch::new() else {
        return;
    };
    let uds = dir.path().join("v");
    let Ok(mut device) = Vsock::new(GUEST_CID, uds.clone()) else {
        return;
    };
    device.limits = Limits {
        connections: 8,
        guest_connections: 6,
        pool: 64 << 10,
    };
    let Ok(service) = UnixListener::bind(host_port_path(&uds, SERVICE_PORT)) else {
        return;
    };
    let _ = service.set_nonblocking(true);
    let mut host = Sockets {
        uds,
        service,
        peers: Vec::new(),
    };
    drive(data, &mut device, &mut host);
}

/// A packet from the guest, header and payload.
fn packet(op: Op, src_port: u32, dst_port: u32, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: payload.len() as u32,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 64 << 10,
        fwd_cnt: 0,
    };
    let mut b = h.to_bytes().to_vec();
    b.extend_from_slice(payload);
    b
}

const RX: u8 = 0;
const TX: u8 = 1;

fn send(d: &mut Driver, p: &[u8]) {
    d.chain(TX, &[(p.len() as u16, false)], p).kick(TX);
}

fn rx_buffers(d: &mut Driver, n: usize) {
    for _ in 0..n {
        d.chain(RX, &[(4096, true)], &[]);
    }
    d.kick(RX);
}

pub(crate) fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let hello = packet(Op::Rw, 5000, SERVICE_PORT, b"hello");
    // (claim: the chain's true length, chunk size, bytes)
    let framed = |chunk: u8, b: &[u8]| [&[0, 0, chunk][..], b].concat();
    out.push((
        "vsock_packet",
        "request",
        framed(63, &packet(Op::Request, 5000, 1024, &[])),
    ));
    out.push(("vsock_packet", "rw-split", framed(6, &hello)));
    out.push(("vsock_packet", "connect-line", framed(0, b"CONNECT 1024")));

    // The guest connects to the host's service, they talk, the guest shuts
    // down and the host closes.
    let mut d = Driver::new(0, 3, 64);
    rx_buffers(&mut d, 8);
    send(&mut d, &packet(Op::Request, 5000, SERVICE_PORT, &[]));
    d.poll().host(&[ACCEPT, 0]);
    send(&mut d, &hello);
    d.poll()
        .host(&[READ, 0])
        .host(&[WRITE, 0, 0x00, 0x10])
        .poll();
    send(&mut d, &packet(Op::CreditUpdate, 5000, SERVICE_PORT, &[]));
    let mut shut = packet(Op::Shutdown, 5000, SERVICE_PORT, &[]);
    shut[32] = 3;
    send(&mut d, &shut);
    d.poll().host(&[CLOSE, 0]);
    rx_buffers(&mut d, 4);
    d.poll();
    out.push(("vsock", "guest-connects", d.done()));

    // A host client connects to the guest's port 1024, the guest accepts
    // and both send, then the guest resets.
    let mut d = Driver::new(0, 3, 64);
    rx_buffers(&mut d, 8);
    d.host(&[CONNECT, 0, 13]).0.bytes(b"CONNECT 1024\n");
    d.poll();
    send(&mut d, &packet(Op::Response, 1024, HOST_PORT_FIRST, &[]));
    d.poll().host(&[WRITE, 0, 0x00, 0x02]).poll();
    send(
        &mut d,
        &packet(Op::Rw, 1024, HOST_PORT_FIRST, b"from the guest"),
    );
    send(
        &mut d,
        &packet(Op::CreditRequest, 1024, HOST_PORT_FIRST, &[]),
    );
    d.poll().host(&[READ, 0]);
    send(&mut d, &packet(Op::Rst, 1024, HOST_PORT_FIRST, &[]));
    d.poll();
    out.push(("vsock", "host-connects", d.done()));

    // Packets the device must answer or drop: no listener, bad type, bad
    // op, a payload longer than the chain, a short header.
    let mut d = Driver::new(0, 3, 16);
    rx_buffers(&mut d, 8);
    send(&mut d, &packet(Op::Request, 7, 4242, &[]));
    let mut bad_type = packet(Op::Request, 7, SERVICE_PORT, &[]);
    bad_type[28] = 2;
    send(&mut d, &bad_type);
    let mut bad_op = packet(Op::Rw, 7, SERVICE_PORT, &[]);
    bad_op[30] = 99;
    send(&mut d, &bad_op);
    let mut long = packet(Op::Rw, 7, SERVICE_PORT, b"xy");
    long[24] = 200;
    send(&mut d, &long);
    send(&mut d, &hello[..20]);
    d.poll();
    out.push(("vsock", "malformed", d.done()));
    out
}
