//! The host side of a host-initiated connection before it reaches the guest:
//! Firecracker's hybrid vsock convention, where a client connects to the
//! device's Unix socket and names the guest port with one `CONNECT <port>\n`.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;

/// Longest CONNECT line accepted, newline included; "CONNECT 4294967294\n"
/// needs 19 bytes, the rest leaves room for stray spaces or a '\r'.
pub const MAX_LINE: usize = 32;

/// Why a client's CONNECT line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("no newline within the first {MAX_LINE} bytes")]
    TooLong,
    #[error("expected `CONNECT <port>`, got {0:?}")]
    Malformed(String),
    #[error("the client closed before sending a CONNECT line")]
    Closed,
    #[error("cannot read the CONNECT line: {0}")]
    Io(String),
}

/// Parses one line (without its '\n') into the guest port it names.
pub fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    let malformed = || HandshakeError::Malformed(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let mut words = text.split_ascii_whitespace();
    let (Some("CONNECT"), Some(port), None) = (words.next(), words.next(), words.next()) else {
        return Err(malformed());
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    // u32::MAX is VMADDR_PORT_ANY: not a port one can connect to.
    match port.parse::<u32>() {
        Ok(p) if p != u32::MAX => Ok(p),
        _ => Err(malformed()),
    }
}

/// A client that connected but has not finished its CONNECT line yet.
pub struct PendingClient {
    pub stream: UnixStream,
    line: Vec<u8>,
}

/// A complete CONNECT line.
#[derive(Debug, PartialEq, Eq)]
pub struct Connect {
    pub port: u32,
    /// Bytes the client sent after the newline without waiting for `OK`:
    /// they are the start of its stream to the guest.
    pub early_data: Vec<u8>,
}

impl PendingClient {
    pub fn new(stream: UnixStream) -> Self {
        PendingClient {
            stream,
            line: Vec::with_capacity(MAX_LINE),
        }
    }

    /// Reads what the (non-blocking) client sent so far: `Ok(None)` until
    /// the line is complete.
    pub fn read(&mut self) -> Result<Option<Connect>, HandshakeError> {
        read_line(&mut self.stream, &mut self.line)
    }
}

/// Reads from `src` into `line` until a newline, at most [`MAX_LINE`] bytes in
/// all, so that a client can neither grow memory nor hide its data in the line.
fn read_line(src: &mut impl Read, line: &mut Vec<u8>) -> Result<Option<Connect>, HandshakeError> {
    let mut chunk = [0u8; MAX_LINE];
    loop {
        let room = MAX_LINE - line.len();
        if room == 0 {
            return Err(HandshakeError::TooLong);
        }
        match src.read(&mut chunk[..room]) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(n) => line.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HandshakeError::Io(e.to_string())),
        }
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            let port = parse_connect(&line[..end])?;
            return Ok(Some(Connect {
                port,
                early_data: line[end + 1..].to_vec(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Hands out its bytes in the given chunk sizes, then would block.
    struct Trickle {
        data: Vec<u8>,
        chunks: Vec<usize>,
        closed: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return if self.closed {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let want = self.chunks.pop().unwrap_or(usize::MAX).max(1);
            let n = want.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data.drain(..n);
            Ok(n)
        }
    }

    fn feed(data: &[u8], chunks: Vec<usize>) -> Result<Option<Connect>, HandshakeError> {
        let mut src = Trickle {
            data: data.to_vec(),
            chunks,
            closed: false,
        };
        let mut line = Vec::new();
        loop {
            match read_line(&mut src, &mut line)? {
                Some(c) => return Ok(Some(c)),
                None if src.data.is_empty() => return Ok(None),
                None => {}
            }
        }
    }

    #[test]
    fn well_formed_lines_name_a_port() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect(b"CONNECT 0"), Ok(0));
        assert_eq!(parse_connect(b"CONNECT  52\r"), Ok(52));
        assert_eq!(parse_connect(b"CONNECT 4294967294"), Ok(u32::MAX - 1));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b""[..],
            b"CONNECT",
            b"connect 5",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 4294967295",
            b"CONNECT 99999999999",
            b"CONNECT 1 2",
            b"CONNECT 0x10",
            b"CONNECT \xff",
        ] {
            assert!(parse_connect(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn data_after_the_newline_is_kept_for_the_guest() {
        let got = feed(b"CONNECT 7\nhello", vec![3, 1, 100]).unwrap().unwrap();
        assert_eq!(got.port, 7);
        assert!(b"hello".starts_with(&got.early_data));
        assert_eq!(feed(b"CONN", vec![]), Ok(None));
    }

    #[test]
    fn an_endless_line_or_an_early_close_is_an_error() {
        assert_eq!(feed(&[b'A'; 100], vec![]), Err(HandshakeError::TooLong));
        let mut src = Trickle {
            data: b"CONNECT 1".to_vec(),
            chunks: vec![],
            closed: true,
        };
        let mut line = Vec::new();
        assert_eq!(read_line(&mut src, &mut line), Err(HandshakeError::Closed));
    }

    proptest! {
        #[test]
        fn arbitrary_client_bytes_never_panic_nor_grow_the_line(
            data in proptest::collection::vec(any::<u8>(), 0..100),
            chunks in proptest::collection::vec(1usize..40, 0..10),
        ) {
            let mut src = Trickle { data, chunks, closed: true };
            let mut line = Vec::new();
            for _ in 0..200 {
                match read_line(&mut src, &mut line) {
                    Ok(None) => {}
                    Ok(Some(c)) => { prop_assert!(c.early_data.len() < MAX_LINE); break; }
                    Err(_) => break,
                }
                prop_assert!(line.len() <= MAX_LINE);
            }
        }
    }
}
