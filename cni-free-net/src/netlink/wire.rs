//! The few kernel bytes parsed by hand rather than by netlink-packet-*: how a
//! datagram splits into messages, and the kernel's own explanation of a
//! refused request (extended ACK), such as "Invalid prefix for given prefix
//! length", since the errno alone (EINVAL) rarely says what was wrong.

use netlink_packet_core::{NetlinkBuffer, NlasIterator, NLM_F_ACK_TLVS, NLM_F_CAPPED};

/// The next netlink message of a datagram, and what follows it. A datagram
/// may hold several messages (a dump packs them), each 4-byte aligned.
pub(crate) fn split_message(datagram: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let raw = NetlinkBuffer::new_checked(datagram).map_err(|e| e.to_string())?;
    // new_checked made sure the length is within the datagram and covers
    // at least a header.
    let len = raw.length() as usize;
    let rest = datagram.get(align4(len).unwrap_or(len)..).unwrap_or(&[]);
    Ok((&datagram[..len], rest))
}

/// NLMSGERR_ATTR_MSG: a NUL-terminated string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// sizeof(struct nlmsghdr).
const NLMSG_HDRLEN: usize = 16;

/// The message in an NLMSG_ERROR's payload after the error code, which echoes
/// the request (only its header when the ack is capped) and then carries the
/// TLVs if NLM_F_ACK_TLVS is set.
pub(crate) fn error_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        // The echoed request's own nlmsg_len says how much of it there is.
        let len = payload.get(..4)?;
        usize::try_from(u32::from_ne_bytes(len.try_into().ok()?)).ok()?
    };
    tlv_message(payload.get(align4(echoed)?..)?)
}

/// The message among TLVs, as in an NLMSG_DONE that ends a failed dump.
pub(crate) fn tlv_message(tlvs: &[u8]) -> Option<String> {
    let nla = NlasIterator::new(tlvs)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)?;
    let value = nla.value();
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    let message = String::from_utf8_lossy(&value[..end]).trim().to_owned();
    (!message.is_empty()).then_some(message)
}

fn align4(len: usize) -> Option<usize> {
    Some(len.checked_add(3)? & !3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + value.len()).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()).unwrap(), 0);
        out
    }

    /// An echoed request of `len` bytes (header included).
    fn echoed_request(len: u32) -> Vec<u8> {
        let mut out = len.to_ne_bytes().to_vec();
        out.resize(len as usize, 0xaa);
        out.resize(align4(out.len()).unwrap(), 0);
        out
    }

    #[test]
    fn finds_the_message_after_a_capped_echo() {
        let mut payload = echoed_request(48);
        payload.truncate(NLMSG_HDRLEN);
        payload.extend(tlv(4, &[1, 2, 3, 4])); // NLMSGERR_ATTR_OFFS first
        payload.extend(tlv(
            NLMSGERR_ATTR_MSG,
            b"Invalid prefix for given prefix length\0",
        ));
        assert_eq!(
            error_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload).as_deref(),
            Some("Invalid prefix for given prefix length")
        );
        // Without the flag there are no TLVs to look at.
        assert_eq!(error_message(NLM_F_CAPPED, &payload), None);
    }

    #[test]
    fn skips_a_full_echo() {
        let mut payload = echoed_request(37);
        payload.extend(tlv(NLMSGERR_ATTR_MSG, b"Unknown device type\0"));
        assert_eq!(
            error_message(NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("Unknown device type")
        );
    }

    #[test]
    fn tolerates_truncated_and_empty_input() {
        assert_eq!(error_message(NLM_F_ACK_TLVS, &[]), None);
        assert_eq!(error_message(NLM_F_ACK_TLVS, &[0xff; 3]), None);
        assert_eq!(error_message(NLM_F_ACK_TLVS, &u32::MAX.to_ne_bytes()), None);
        assert_eq!(tlv_message(&tlv(NLMSGERR_ATTR_MSG, b"\0")), None);
        let mut cut = tlv(NLMSGERR_ATTR_MSG, b"a message\0");
        cut.truncate(8);
        assert_eq!(tlv_message(&cut), None);
    }

    /// A netlink message of `len` bytes (header included) with sequence `seq`.
    fn message(len: u32, seq: u32) -> Vec<u8> {
        let mut out = len.to_ne_bytes().to_vec();
        out.extend_from_slice(&[0x10, 0, 0x02, 0]); // RTM_NEWLINK, NLM_F_MULTI
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&[0; 4]);
        out.resize(len as usize, 0x5a);
        out
    }

    #[test]
    fn splits_a_datagram_into_its_messages() {
        let mut datagram = message(21, 1);
        datagram.resize(24, 0);
        datagram.extend(message(16, 2));
        let (first, rest) = split_message(&datagram).unwrap();
        assert_eq!(first.len(), 21);
        let (second, rest) = split_message(rest).unwrap();
        assert_eq!(second, &message(16, 2)[..]);
        assert!(rest.is_empty());
        // A last message without its padding is complete all the same.
        let unpadded = message(21, 3);
        let (only, rest) = split_message(&unpadded).unwrap();
        assert_eq!(only.len(), 21);
        assert!(rest.is_empty());
        assert!(split_message(&message(16, 1)[..15]).is_err());
        assert!(split_message(&message(32, 1)[..31]).is_err());
        assert!(split_message(&message(16, 1).iter().map(|_| 0).collect::<Vec<_>>()).is_err());
    }

    proptest! {
        #[test]
        fn split_never_panics_and_always_advances(datagram in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut rest = &datagram[..];
            while !rest.is_empty() {
                match split_message(rest) {
                    Ok((m, next)) => {
                        prop_assert!(m.len() >= 16);
                        prop_assert!(next.len() < rest.len());
                        rest = next;
                    }
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn split_gives_back_what_was_packed(lens in proptest::collection::vec(16u32..80, 1..6)) {
            let mut datagram = Vec::new();
            for (seq, len) in lens.iter().enumerate() {
                datagram.extend(message(*len, seq as u32));
                datagram.resize(align4(datagram.len()).unwrap(), 0);
            }
            let mut rest = &datagram[..];
            for (seq, len) in lens.iter().enumerate() {
                let (m, next) = split_message(rest).unwrap();
                prop_assert_eq!(m, &message(*len, seq as u32)[..]);
                rest = next;
            }
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(flags in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = error_message(flags, &payload);
            let _ = tlv_message(&payload);
        }

        #[test]
        fn a_well_formed_message_is_found(
            echo_len in 16u32..64,
            capped in any::<bool>(),
            before in proptest::collection::vec((2u16..16, proptest::collection::vec(any::<u8>(), 0..12)), 0..3),
            message in "[ -~]{1,60}",
        ) {
            let mut payload = echoed_request(echo_len);
            if capped {
                payload.truncate(NLMSG_HDRLEN);
            }
            for (kind, value) in &before {
                payload.extend(tlv(*kind, value));
            }
            let mut value = message.clone().into_bytes();
            value.push(0);
            payload.extend(tlv(NLMSGERR_ATTR_MSG, &value));
            let flags = NLM_F_ACK_TLVS | if capped { NLM_F_CAPPED } else { 0 };
            let expected = Some(message.trim().to_owned()).filter(|m| !m.is_empty());
            prop_assert_eq!(error_message(flags, &payload), expected);
        }
    }
}
