//! Writing [`Table`]s to the kernel over NETLINK_NETFILTER (messages built
//! by libnftnl through the `nftnl` crate), deleting them, and listing what
//! tables exist. No `nft` command is run.

use std::ffi::CString;
use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Counter, LLHeaderField, Masquerade, Meta, NetworkHeaderField,
    Payload, TransportHeaderField, Verdict,
};
use nftnl::{Batch, FinalizedBatch, MsgType, ProtoFamily};

use super::table::{self, Action, Base, ChainKind, Family, Hook, Load, MetaKey, Op, Table};

const NETLINK_NETFILTER: isize = libc::NETLINK_NETFILTER as isize;
/// How long the kernel gets to answer; it answers at once unless something
/// is badly wrong, and a missing answer must not hang a create.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("nftables: cannot open a netfilter netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("nftables: the kernel refused {what} (table {table}): {error}{}", missing_family(.error))]
    Refused {
        what: String,
        table: String,
        error: io::Error,
    },
    #[error("nftables: cannot list the tables: {0}")]
    List(#[source] io::Error),
    #[error("cannot turn on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward): {0}")]
    Forwarding(#[source] io::Error),
}

/// What the kernel says when it was built without a family or chain type.
fn missing_family(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EAFNOSUPPORT) => {
            " (is nf_tables with this family, e.g. CONFIG_NF_TABLES_NETDEV, in the kernel?)"
        }
        _ => "",
    }
}

/// Replaces `table` (what it held before, if anything, goes) in one batch:
/// the kernel applies all of it or none.
pub(crate) fn apply(table: &Table, what: &str) -> Result<(), FilterError> {
    let name = CString::new(table.name.as_str()).expect("table names are interface names");
    let nft_table = nftnl::Table::new(&name, proto(table.family));
    let mut batch = Batch::new();
    // Adding first makes the delete valid when there is nothing yet.
    batch.add(&nft_table, MsgType::Add);
    batch.add(&nft_table, MsgType::Del);
    batch.add(&nft_table, MsgType::Add);
    for chain in &table.chains {
        let cname = CString::new(chain.name).expect("chain names are literals");
        let mut nft_chain = nftnl::Chain::new(&cname, &nft_table);
        let (hook, device) = match &chain.hook {
            // nftnl's `Ingress` is the inet family's (NF_INET_INGRESS, 5);
            // a netdev chain's ingress is NF_NETDEV_INGRESS, 0, the number
            // nftnl calls `PreRouting`.
            Hook::Ingress { device } => (nftnl::Hook::PreRouting, Some(device)),
            Hook::Input => (nftnl::Hook::In, None),
            Hook::Forward => (nftnl::Hook::Forward, None),
            Hook::PostRouting => (nftnl::Hook::PostRouting, None),
        };
        nft_chain.set_hook(hook, chain.priority);
        if let Some(device) = device {
            nft_chain
                .set_device(CString::new(device.as_str()).expect("interface names hold no NUL"));
        }
        nft_chain.set_type(match chain.kind {
            ChainKind::Filter => nftnl::ChainType::Filter,
            ChainKind::Nat => nftnl::ChainType::Nat,
        });
        nft_chain.set_policy(match chain.policy {
            table::Policy::Accept => nftnl::Policy::Accept,
            table::Policy::Drop => nftnl::Policy::Drop,
        });
        batch.add(&nft_chain, MsgType::Add);
        for rule in &chain.rules {
            let mut nft_rule = nftnl::Rule::new(&nft_chain);
            for test in rule.matches.iter().flat_map(|m| m.tests()) {
                add_load(&mut nft_rule, test.load);
                if let Some(mask) = &test.mask {
                    let zero = vec![0u8; mask.len()];
                    nft_rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
                }
                let op = match test.op {
                    Op::Eq => CmpOp::Eq,
                    Op::Ne => CmpOp::Neq,
                };
                nft_rule.add_expr(&Cmp::new(op, test.value.as_slice()));
            }
            if rule.counter {
                nft_rule.add_expr(&Counter);
            }
            match rule.action {
                Action::Accept => nft_rule.add_expr(&Verdict::Accept),
                Action::Drop => nft_rule.add_expr(&Verdict::Drop),
                Action::Masquerade => nft_rule.add_expr(&Masquerade),
            }
            batch.add(&nft_rule, MsgType::Add);
        }
    }
    send(&batch.finalize()).map_err(|error| FilterError::Refused {
        what: what.to_owned(),
        table: format!("{} {}", table.family, table.name),
        error,
    })
}

fn add_load(rule: &mut nftnl::Rule<'_>, load: Load) {
    match load {
        Load::Meta(key) => rule.add_expr(&match key {
            MetaKey::IifName => Meta::IifName,
            MetaKey::OifName => Meta::OifName,
            MetaKey::L4Proto => Meta::L4Proto,
        }),
        // nftnl's `Raw` fields are named in bits but carry bytes, which is
        // what the kernel's payload expression takes.
        Load::Payload { base, offset, len } => rule.add_expr(&match base {
            Base::Link => Payload::LinkLayer(LLHeaderField::Raw {
                offset_bits: offset,
                length_bits: len,
            }),
            Base::Network => Payload::Network(NetworkHeaderField::Raw {
                offset_bits: offset,
                length_bits: len,
            }),
            Base::Transport => Payload::Transport(TransportHeaderField::Raw {
                offset_bits: offset,
                length_bits: len,
            }),
        }),
        Load::CtState => rule.add_expr(&Conntrack::State),
    }
}

/// Deletes table `name` of `family`; absent is not an error.
pub(crate) fn delete(family: Family, name: &str) -> Result<(), FilterError> {
    let cname = CString::new(name).expect("table names are interface names");
    let table = nftnl::Table::new(&cname, proto(family));
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(&batch.finalize()).map_err(|error| FilterError::Refused {
        what: "the removal".into(),
        table: format!("{family} {name}"),
        error,
    })
}

/// Every nftables table of the calling thread's network namespace, as
/// `nft list tables` names them (`ip okvm-okvm0`, `netdev okvm-okt…`).
pub fn tables() -> Result<Vec<String>, FilterError> {
    let socket = open().map_err(FilterError::List)?;
    // nlmsghdr, then nfgenmsg: family AF_UNSPEC (every family), version 0.
    let mut request = Vec::with_capacity(NLMSG_HDRLEN + 4);
    let len = (NLMSG_HDRLEN + 4) as u32;
    request.extend_from_slice(&len.to_ne_bytes());
    request.extend_from_slice(&NFT_GETTABLE.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request.extend_from_slice(&flags.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    socket.send(&request, 0).map_err(FilterError::List)?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(FilterError::List)?;
        for answer in answers(&buf[..n]) {
            match answer {
                Answer::Table { family, name } => found.push(format!("{family} {name}")),
                Answer::Done => return Ok(found),
                Answer::Error(errno) => {
                    return Err(FilterError::List(io::Error::from_raw_os_error(errno)))
                }
                Answer::Malformed => {
                    return Err(FilterError::List(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink answer",
                    )))
                }
                Answer::Ack(_) | Answer::Other => {}
            }
        }
    }
}

fn proto(family: Family) -> ProtoFamily {
    match family {
        Family::Ip => ProtoFamily::Ipv4,
        Family::NetDev => ProtoFamily::NetDev,
    }
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    set_receive_timeout(&socket, ANSWER_TIMEOUT)?;
    Ok(socket)
}

/// Sends the batch and waits for the kernel's answer to each message: an
/// error for the first that failed (which aborts the whole batch), or one
/// acknowledgement each.
fn send(batch: &FinalizedBatch) -> io::Result<()> {
    let socket = open()?;
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
                Answer::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
                Answer::Malformed => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink answer",
                    ))
                }
                Answer::Ack(_) | Answer::Table { .. } | Answer::Done | Answer::Other => {}
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

const NLMSG_HDRLEN: usize = 16;
/// The nfgenmsg after the netlink header of every nf_tables message.
const NFGENMSG_LEN: usize = 4;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_GETTABLE: u16 = NFNL_SUBSYS_NFTABLES << 8 | libc::NFT_MSG_GETTABLE as u16;
const NFT_NEWTABLE: u16 = NFNL_SUBSYS_NFTABLES << 8 | libc::NFT_MSG_NEWTABLE as u16;
const NFTA_TABLE_NAME: u16 = 1;
/// The attribute type bits, without NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = 0x3fff;

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// An NLMSG_ERROR with error 0, for this sequence number.
    Ack(u32),
    /// An NLMSG_ERROR with this (positive) errno.
    Error(i32),
    /// One table of a dump.
    Table {
        family: &'static str,
        name: String,
    },
    /// The end of a dump.
    Done,
    Other,
    Malformed,
}

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
        let body = &buf[NLMSG_HDRLEN..len];
        out.push(match kind {
            k if k == libc::NLMSG_ERROR as u16 => match body.get(..4) {
                Some(error) => match i32::from_ne_bytes(error.try_into().expect("4 bytes")) {
                    0 => Answer::Ack(seq),
                    e => Answer::Error(e.checked_neg().unwrap_or(libc::EINVAL)),
                },
                None => Answer::Malformed,
            },
            k if k == libc::NLMSG_DONE as u16 => Answer::Done,
            NFT_NEWTABLE => table_of(body).unwrap_or(Answer::Malformed),
            _ => Answer::Other,
        });
        if out.last() == Some(&Answer::Malformed) {
            break;
        }
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    out
}

/// A NEWTABLE message's family and NFTA_TABLE_NAME.
fn table_of(body: &[u8]) -> Option<Answer> {
    let family = family_name(*body.first()?);
    let mut attrs = body.get(NFGENMSG_LEN..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes(attrs[0..2].try_into().expect("2 bytes")));
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().expect("2 bytes")) & NLA_TYPE_MASK;
        let value = attrs.get(4..len)?;
        if kind == NFTA_TABLE_NAME {
            let name = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(Answer::Table {
                family,
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

fn family_name(family: u8) -> &'static str {
    match i32::from(family) {
        libc::NFPROTO_INET => "inet",
        libc::NFPROTO_IPV4 => "ip",
        libc::NFPROTO_ARP => "arp",
        libc::NFPROTO_NETDEV => "netdev",
        libc::NFPROTO_BRIDGE => "bridge",
        libc::NFPROTO_IPV6 => "ip6",
        _ => "unknown",
    }
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
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn new_table(family: u8, name: &str) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        // An attribute before the name, as the kernel's NFTA_TABLE_FLAGS.
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&2u16.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        let value = [name.as_bytes(), &[0]].concat();
        body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
        body.extend_from_slice(&value);
        message(NFT_NEWTABLE, 1, &body)
    }

    #[test]
    fn acks_and_errors_are_told_apart() {
        let mut buf = message(libc::NLMSG_ERROR as u16, 7, &0i32.to_ne_bytes());
        buf.extend(message(
            libc::NLMSG_ERROR as u16,
            8,
            &(-libc::ENOENT).to_ne_bytes(),
        ));
        buf.extend(message(0x1234, 9, &[]));
        assert_eq!(
            answers(&buf),
            vec![Answer::Ack(7), Answer::Error(libc::ENOENT), Answer::Other]
        );
    }

    #[test]
    fn a_table_dump_names_family_and_table() {
        let mut buf = new_table(libc::NFPROTO_NETDEV as u8, "okvm-okt0123456789ab");
        buf.extend(new_table(libc::NFPROTO_IPV4 as u8, "okvm-okvm0"));
        buf.extend(message(libc::NLMSG_DONE as u16, 1, &0i32.to_ne_bytes()));
        assert_eq!(
            answers(&buf),
            vec![
                Answer::Table {
                    family: "netdev",
                    name: "okvm-okt0123456789ab".into()
                },
                Answer::Table {
                    family: "ip",
                    name: "okvm-okvm0".into()
                },
                Answer::Done,
            ]
        );
    }

    #[test]
    fn a_length_past_the_datagram_is_malformed() {
        let mut buf = message(libc::NLMSG_ERROR as u16, 1, &0i32.to_ne_bytes());
        buf[0] = 200;
        assert_eq!(answers(&buf), vec![Answer::Malformed]);
        let mut table = new_table(libc::NFPROTO_IPV4 as u8, "t");
        // The name attribute claims more than the message holds.
        table[NLMSG_HDRLEN + NFGENMSG_LEN + 8] = 0xff;
        assert_eq!(answers(&table), vec![Answer::Malformed]);
    }

    proptest! {
        #[test]
        fn arbitrary_answers_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = answers(&buf);
        }
    }
}
