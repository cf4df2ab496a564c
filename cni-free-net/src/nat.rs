//! Optional outbound masquerade for a bridge's subnet (`masquerade=yes` in
//! okvm's network.conf): an nftables table of okvm's own, `ip okvm-<bridge>`,
//! with one NAT chain on the postrouting hook and one rule,
//! `ip saddr SUBNET ip daddr != SUBNET masquerade`, and IPv4 forwarding on.
//!
//! The table is replaced atomically in one nf_tables batch (add, delete, add:
//! the add first makes the delete safe when it does not exist yet), so
//! repeated calls converge on one rule and a changed subnet replaces the old
//! one. Nothing else of the host's firewall is touched; a host whose own
//! forward policy drops packets still has to allow the bridge (docs/networking.md).

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};
use nftnl::{nft_expr, Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, ProtoFamily};
use nftnl::{Rule, Table};

use crate::{IfName, Ipv4Net};

const NETLINK_NETFILTER: isize = libc::NETLINK_NETFILTER as isize;
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// How long the kernel gets to answer a batch; it answers at once unless
/// something is badly wrong, and a missing answer must not hang a create.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("nftables: cannot open a netfilter netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("nftables: the kernel refused {what} of table ip {table}: {source}")]
    Refused {
        what: &'static str,
        table: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot turn on IPv4 forwarding ({IP_FORWARD}): {0}")]
    Forwarding(#[source] io::Error),
}

/// The table okvm keeps the masquerade rule of `bridge` in.
pub fn table_name(bridge: &IfName) -> String {
    format!("okvm-{}", bridge.as_str())
}

/// Makes guests on `bridge`'s `subnet` reach beyond the host from the host's
/// own address, and turns IPv4 forwarding on.
pub fn ensure_masquerade(bridge: &IfName, subnet: Ipv4Net) -> Result<(), NatError> {
    let name = table_name(bridge);
    let cname = CString::new(name.clone()).expect("interface names hold no NUL");
    let table = Table::new(&cname, ProtoFamily::Ipv4);
    let mut chain = Chain::new(c"postrouting", &table);
    chain.set_type(ChainType::Nat);
    chain.set_hook(Hook::PostRouting, 100);

    let mut rule = Rule::new(&chain);
    let mask = prefix_mask(subnet.prefix_len());
    rule.add_expr(&nft_expr!(payload ipv4 saddr));
    rule.add_expr(&nft_expr!(bitwise mask mask, xor Ipv4Addr::UNSPECIFIED));
    rule.add_expr(&nft_expr!(cmp == subnet.network()));
    rule.add_expr(&nft_expr!(payload ipv4 daddr));
    rule.add_expr(&nft_expr!(bitwise mask mask, xor Ipv4Addr::UNSPECIFIED));
    rule.add_expr(&nft_expr!(cmp != subnet.network()));
    rule.add_expr(&nft_expr!(masquerade));

    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    batch.add(&chain, MsgType::Add);
    batch.add(&rule, MsgType::Add);
    send(&batch.finalize()).map_err(|source| NatError::Refused {
        what: "the masquerade rule",
        table: name,
        source,
    })?;
    std::fs::write(IP_FORWARD, "1").map_err(NatError::Forwarding)
}

/// Removes what [`ensure_masquerade`] made for `bridge` (forwarding stays
/// on: other users of the host may rely on it). Absent is not an error.
pub fn remove_masquerade(bridge: &IfName) -> Result<(), NatError> {
    let name = table_name(bridge);
    let cname = CString::new(name.clone()).expect("interface names hold no NUL");
    let table = Table::new(&cname, ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(&batch.finalize()).map_err(|source| NatError::Refused {
        what: "the removal",
        table: name,
        source,
    })
}

fn prefix_mask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// Sends the batch and waits for the kernel's answer to each message: an
/// error for the first that failed (which aborts the whole batch), or one
/// acknowledgement each.
fn send(batch: &FinalizedBatch) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    set_receive_timeout(&socket, ANSWER_TIMEOUT)?;
    for part in batch {
        socket.send(part, 0)?;
    }
    let mut expected = batch.sequence_numbers();
    let mut buf = vec![0u8; 64 * 1024];
    while !expected.is_empty() {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        for answer in answers(&buf[..n]) {
            match answer {
                Answer::Ack(seq) if expected.contains(&seq) => expected.start = seq + 1,
                Answer::Ack(_) | Answer::Other => {}
                Answer::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
                Answer::Malformed => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink answer",
                    ))
                }
            }
        }
    }
    Ok(())
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a valid timeval for the whole call and its size is passed;
    // the fd belongs to `socket`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// An NLMSG_ERROR with error 0, for this sequence number.
    Ack(u32),
    /// An NLMSG_ERROR with this (positive) errno.
    Error(i32),
    Other,
    Malformed,
}

const NLMSG_HDRLEN: usize = 16;

/// The netlink messages in one datagram, read defensively: a length that
/// does not fit ends the walk with `Malformed` instead of panicking.
fn answers(mut buf: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            out.push(Answer::Malformed);
            break;
        }
        if kind == libc::NLMSG_ERROR as u16 {
            if len < NLMSG_HDRLEN + 4 {
                out.push(Answer::Malformed);
                break;
            }
            let error = i32::from_ne_bytes(
                buf[NLMSG_HDRLEN..NLMSG_HDRLEN + 4]
                    .try_into()
                    .expect("4 bytes"),
            );
            out.push(match error {
                0 => Answer::Ack(seq),
                e => Answer::Error(e.checked_neg().unwrap_or(libc::EINVAL)),
            });
        } else {
            out.push(Answer::Other);
        }
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn acks_and_errors_are_told_apart() {
        let mut buf = message(libc::NLMSG_ERROR as u16, 7, &0i32.to_ne_bytes());
        buf.extend(message(
            libc::NLMSG_ERROR as u16,
            8,
            &(-libc::ENOENT).to_ne_bytes(),
        ));
        buf.extend(message(libc::NLMSG_DONE as u16, 9, &[]));
        assert_eq!(
            answers(&buf),
            vec![Answer::Ack(7), Answer::Error(libc::ENOENT), Answer::Other]
        );
    }

    #[test]
    fn a_length_past_the_datagram_is_malformed() {
        let mut buf = message(libc::NLMSG_ERROR as u16, 1, &0i32.to_ne_bytes());
        buf[0] = 200;
        assert_eq!(answers(&buf), vec![Answer::Malformed]);
    }

    #[test]
    fn masks_match_prefixes() {
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask(30), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
    }

    proptest! {
        #[test]
        fn arbitrary_answers_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = answers(&buf);
        }
    }
}
