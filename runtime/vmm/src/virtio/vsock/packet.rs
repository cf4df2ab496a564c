//! The vsock packet header (virtio 1.2, 5.10.6) and moving whole packets in and
//! out of descriptor chains.
//!
//! Everything here works on `io::Read`/`io::Write`, so a packet may be split
//! across descriptors in any way the driver likes, and the parser can be tested
//! on plain byte slices.

use std::io::{self, Read, Write};

/// Size of the little-endian header in front of every packet.
pub const HEADER_SIZE: usize = 44;
/// Largest payload accepted from or sent to the guest in one packet (Linux
/// never sends more than 64 KiB in one packet either).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The only socket type this device supports (no SEQPACKET feature).
pub const TYPE_STREAM: u16 = 1;

/// SHUTDOWN flags: the sender will receive no more, send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// What a packet asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    pub fn from_raw(op: u16) -> Option<Op> {
        Some(match op {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A packet header, fields in host order. `op` and `type_` stay raw so that a
/// header from the guest can be held (and answered) before it is validated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        let u64_at = |at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(v)
        };
        let u32_at = |at: usize| {
            let mut v = [0u8; 4];
            v.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(v)
        };
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn op(&self) -> Option<Op> {
        Op::from_raw(self.op)
    }
}

/// Why a packet from the guest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("the chain holds {0} readable bytes, too few for a {HEADER_SIZE}-byte header")]
    ShortHeader(usize),
    #[error("the header announces a {len}-byte payload, above the {MAX_PAYLOAD}-byte limit")]
    TooLong { len: u32 },
    #[error("the header announces a {len}-byte payload but the chain holds only {available}")]
    Truncated { len: u32, available: usize },
    #[error("cannot read the packet out of guest memory: {0}")]
    Read(#[source] io::Error),
}

/// Reads the header from `src`, which holds `available` readable bytes.
pub fn read_header(src: &mut impl Read, available: usize) -> Result<Header, PacketError> {
    if available < HEADER_SIZE {
        return Err(PacketError::ShortHeader(available));
    }
    let mut b = [0u8; HEADER_SIZE];
    src.read_exact(&mut b).map_err(PacketError::Read)?;
    Ok(Header::from_bytes(&b))
}

/// Reads `header.len` payload bytes into `scratch` (at least [`MAX_PAYLOAD`]
/// long) after checking the length against the limit and against the
/// `available` bytes left in the chain. Trailing bytes beyond `len` are ignored,
/// as drivers may hand over larger buffers than the packet.
pub fn read_payload<'s>(
    src: &mut impl Read,
    header: &Header,
    available: usize,
    scratch: &'s mut [u8],
) -> Result<&'s [u8], PacketError> {
    let len = header.len as usize;
    if len > MAX_PAYLOAD || len > scratch.len() {
        return Err(PacketError::TooLong { len: header.len });
    }
    if len > available {
        return Err(PacketError::Truncated {
            len: header.len,
            available,
        });
    }
    let payload = &mut scratch[..len];
    src.read_exact(payload).map_err(PacketError::Read)?;
    Ok(payload)
}

/// Writes `header` and its payload (given as up to two slices, as a ring
/// buffer hands them out). The caller checked that everything fits.
pub fn write_packet(
    dst: &mut impl Write,
    header: &Header,
    payload: (&[u8], &[u8]),
) -> io::Result<usize> {
    dst.write_all(&header.to_bytes())?;
    dst.write_all(payload.0)?;
    dst.write_all(payload.1)?;
    Ok(HEADER_SIZE + payload.0.len() + payload.1.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> impl Strategy<Value = Header> {
        (
            any::<(u64, u64, u32, u32, u32)>(),
            any::<(u16, u16, u32, u32, u32)>(),
        )
            .prop_map(
                |(
                    (src_cid, dst_cid, src_port, dst_port, len),
                    (type_, op, flags, buf_alloc, fwd_cnt),
                )| {
                    Header {
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
                    }
                },
            )
    }

    #[test]
    fn the_layout_matches_the_spec() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x0004_0000,
            fwd_cnt: 9,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[8..16], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[20..24], &[0, 4, 0, 0]);
        assert_eq!(&b[24..28], &[5, 0, 0, 0]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(&b[32..36], &[2, 0, 0, 0]);
        assert_eq!(&b[36..40], &[0, 0, 4, 0]);
        assert_eq!(&b[40..44], &[9, 0, 0, 0]);
    }

    #[test]
    fn ops_outside_the_spec_are_unknown() {
        assert_eq!(Op::from_raw(0), None);
        assert_eq!(Op::from_raw(8), None);
        for op in 1..=7 {
            assert_eq!(Op::from_raw(op).map(|o| o as u16), Some(op));
        }
    }

    #[test]
    fn lengths_are_checked_before_anything_is_read() {
        let mut scratch = vec![0u8; MAX_PAYLOAD];
        let h = Header {
            len: MAX_PAYLOAD as u32 + 1,
            ..Header::default()
        };
        let mut src: &[u8] = &[];
        assert!(matches!(
            read_payload(&mut src, &h, usize::MAX, &mut scratch),
            Err(PacketError::TooLong { .. })
        ));
        let h = Header {
            len: 10,
            ..Header::default()
        };
        assert!(matches!(
            read_payload(&mut src, &h, 9, &mut scratch),
            Err(PacketError::Truncated {
                len: 10,
                available: 9
            })
        ));
        assert!(matches!(
            read_header(&mut src, 43),
            Err(PacketError::ShortHeader(43))
        ));
    }

    proptest! {
        #[test]
        fn headers_round_trip(h in header()) {
            prop_assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        }

        #[test]
        fn packets_round_trip_through_split_buffers(
            h in header(),
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
            split in any::<prop::sample::Index>(),
        ) {
            let h = Header { len: payload.len() as u32, ..h };
            let (a, b) = payload.split_at(split.index(payload.len() + 1));
            let mut wire = Vec::new();
            let n = write_packet(&mut wire, &h, (a, b)).unwrap();
            prop_assert_eq!(n, wire.len());
            let mut src = wire.as_slice();
            let got = read_header(&mut src, wire.len()).unwrap();
            prop_assert_eq!(got, h);
            let mut scratch = vec![0u8; MAX_PAYLOAD];
            let body = read_payload(&mut src, &got, wire.len() - HEADER_SIZE, &mut scratch).unwrap();
            prop_assert_eq!(body, payload.as_slice());
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_parser(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            claimed in 0usize..300,
        ) {
            let mut scratch = vec![0u8; MAX_PAYLOAD];
            let mut src = bytes.as_slice();
            // `claimed` may lie about how much is there: reads must fail, not panic.
            if let Ok(h) = read_header(&mut src, claimed) {
                let _ = h.op();
                let _ = read_payload(&mut src, &h, claimed.saturating_sub(HEADER_SIZE), &mut scratch);
            }
        }
    }
}
