//! The socketpair between okvm-init and a container stage: length-prefixed
//! JSON frames (4-byte big-endian length), optionally carrying one file
//! descriptor (the terminal's master), and the single start byte.
//!
//! The stage's end is close-on-exec, so a successful execve closes it: EOF
//! after the start byte means the container process runs.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{de::DeserializeOwned, Serialize};

/// No stage message comes near this; a larger length means a broken peer.
const MAX_FRAME: usize = 16 << 20;
const START: u8 = b'S';

pub struct Channel(UnixStream);

impl Channel {
    /// okvm-init's end and the stage's, both close-on-exec.
    pub fn pair() -> io::Result<(Channel, OwnedFd)> {
        let (ours, theirs) = UnixStream::pair()?;
        Ok((Channel(ours), OwnedFd::from(theirs)))
    }

    /// The stage's end, inherited as `fd`; made close-on-exec at once so the
    /// container process never sees it.
    pub fn inherited(fd: RawFd) -> io::Result<Channel> {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        // SAFETY: okvm-init passed this descriptor to us, and only this
        // function (called once, at the stage's start) takes ownership of it.
        Ok(Channel(unsafe { UnixStream::from_raw_fd(fd) }))
    }

    /// Sends `msg`, with `fd` attached when given.
    pub fn send<T: Serialize>(&self, msg: &T, fd: Option<BorrowedFd>) -> io::Result<()> {
        let payload = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        // The descriptor travels with the first byte; the rest follows plainly.
        let sent = sendmsg::<()>(
            self.0.as_raw_fd(),
            &[IoSlice::new(&frame)],
            &cmsgs,
            MsgFlags::empty(),
            None,
        )?;
        (&self.0).write_all(frame.get(sent..).unwrap_or_default())
    }

    /// The next message and the descriptor that came with it; None when the
    /// peer closed its end.
    pub fn recv<T: DeserializeOwned>(&self) -> io::Result<Option<(T, Option<OwnedFd>)>> {
        let mut len = [0u8; 4];
        let (got, fd) = self.recv_with_fd(&mut len)?;
        if got == 0 {
            return Ok(None);
        }
        (&self.0).read_exact(&mut len[got..])?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stage frame of {len} bytes"),
            ));
        }
        let mut payload = vec![0u8; len];
        (&self.0).read_exact(&mut payload)?;
        let msg = serde_json::from_slice(&payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((msg, fd)))
    }

    fn recv_with_fd(&self, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = loop {
            match recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other?,
            }
        };
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: the kernel just installed this descriptor in
                    // our table for this message; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(r) };
                    // Keep the first; any extra is closed by dropping it.
                    fd.get_or_insert(owned);
                }
            }
        }
        Ok((msg.bytes, fd))
    }

    /// okvm-init: let the stage exec.
    pub fn send_start(&self) -> io::Result<()> {
        (&self.0).write_all(&[START])
    }

    /// The stage: block until okvm-init lets us exec.
    pub fn wait_start(&self) -> io::Result<()> {
        let mut b = [0u8; 1];
        (&self.0).read_exact(&mut b)?;
        if b[0] == START {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected byte instead of the start signal",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn frames_carry_messages_and_a_descriptor() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel(UnixStream::from(b));
        let file = tempfile::tempfile().unwrap();
        a.send(&vec!["x".to_string(); 3], Some(file.as_fd()))
            .unwrap();
        a.send(&"plain", None).unwrap();
        let (msg, fd) = b.recv::<Vec<String>>().unwrap().unwrap();
        assert_eq!(msg.len(), 3);
        assert!(fd.is_some());
        let (msg, fd) = b.recv::<String>().unwrap().unwrap();
        assert_eq!((msg.as_str(), fd.is_none()), ("plain", true));
        a.send_start().unwrap();
        b.wait_start().unwrap();
        drop(a);
        assert!(b.recv::<String>().unwrap().is_none());
    }

    #[test]
    fn a_huge_length_is_refused() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel(UnixStream::from(b));
        (&a.0).write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(b.recv::<String>().is_err());
    }
}
