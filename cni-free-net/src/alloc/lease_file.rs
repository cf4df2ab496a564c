//! The on-disk format of the lease file: one `<ip> <owner> <pid>` line per lease,
//! `#` comments and blank lines allowed. Plain text on purpose, so that an
//! operator can see who holds which address with `cat`.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::{Lease, LineError, OwnerError};
use crate::net::Ipv4Net;

/// Leases keyed by address, so the file is written in address order and a
/// `cat` reads like a table.
pub(crate) type LeaseMap = BTreeMap<Ipv4Addr, Lease>;

/// Owner ids longer than this are refused: nothing legitimate needs more, and
/// it keeps every line of the file a sane length.
pub const MAX_OWNER_LEN: usize = 1024;

pub(crate) fn validate_owner(owner: &str) -> Result<(), OwnerError> {
    if owner.is_empty() {
        return Err(OwnerError::Empty);
    }
    if owner.len() > MAX_OWNER_LEN {
        return Err(OwnerError::TooLong { len: owner.len() });
    }
    // Whitespace separates the fields of a line; control characters (newlines
    // above all) would let one owner id forge further lines.
    if let Some(c) = owner.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(OwnerError::BadChar { c });
    }
    Ok(())
}

/// Parses the whole file. On error returns the 1-based line number with the reason.
pub(crate) fn parse(bytes: &[u8], subnet: &Ipv4Net) -> Result<LeaseMap, (usize, LineError)> {
    let mut leases = LeaseMap::new();
    // Where each address and owner was first seen, to name both lines of a duplicate.
    let mut addr_lines: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut owner_lines: HashMap<String, usize> = HashMap::new();

    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = index + 1;
        let line = std::str::from_utf8(raw).map_err(|_| (line_no, LineError::NotUtf8))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (addr, lease) = parse_line(line, subnet).map_err(|e| (line_no, e))?;

        if let Some(&first_line) = addr_lines.get(&addr) {
            return Err((line_no, LineError::DuplicateAddress { addr, first_line }));
        }
        match owner_lines.entry(lease.owner.clone()) {
            Entry::Occupied(first) => {
                return Err((
                    line_no,
                    LineError::DuplicateOwner {
                        owner: lease.owner,
                        first_line: *first.get(),
                    },
                ));
            }
            Entry::Vacant(slot) => {
                slot.insert(line_no);
            }
        }
        addr_lines.insert(addr, line_no);
        leases.insert(addr, lease);
    }
    Ok(leases)
}

fn parse_line(line: &str, subnet: &Ipv4Net) -> Result<(Ipv4Addr, Lease), LineError> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [addr, owner, pid] = fields[..] else {
        return Err(LineError::FieldCount {
            found: fields.len(),
        });
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| LineError::BadAddress {
        text: addr.to_owned(),
    })?;
    if !subnet.contains(addr) {
        return Err(LineError::OutsideSubnet {
            addr,
            subnet: *subnet,
        });
    }
    if subnet.is_reserved(addr) {
        return Err(LineError::ReservedAddress {
            addr,
            subnet: *subnet,
        });
    }
    validate_owner(owner).map_err(LineError::BadOwner)?;
    let pid = parse_pid(pid).ok_or_else(|| LineError::BadPid {
        text: pid.to_owned(),
    })?;
    Ok((
        addr,
        Lease {
            owner: owner.to_owned(),
            pid,
        },
    ))
}

/// Decimal digits only, and never 0: pid 0 is not a process, and a lease
/// pointing at it could never be judged alive or dead.
fn parse_pid(text: &str) -> Option<u32> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|pid| *pid != 0)
}

pub(crate) fn render(subnet: &Ipv4Net, leases: &LeaseMap) -> String {
    let mut out = String::with_capacity(128 + leases.len() * 48);
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        out,
        "# okvm cni-free-net leases for {subnet} (gateway {})",
        subnet.gateway()
    );
    let _ = writeln!(
        out,
        "# <ip> <owner> <pid>; rewritten whole on every change, comments are not kept"
    );
    for (addr, lease) in leases {
        let _ = writeln!(out, "{addr} {} {}", lease.owner, lease.pid);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subnet() -> Ipv4Net {
        "10.88.90.0/24".parse().expect("valid subnet")
    }

    fn parse_err(text: &str) -> (usize, LineError) {
        parse(text.as_bytes(), &subnet()).expect_err("should be refused")
    }

    /// Tells whether an error is the one a case expects.
    type IsExpected = fn(&LineError) -> bool;

    #[test]
    fn parses_leases_comments_and_blank_lines() {
        let text =
            "# header\n\n10.88.90.2 abc 17\n   \n  # indented comment\n10.88.90.9\tdef\t  4242  \n";
        let leases = parse(text.as_bytes(), &subnet()).expect("valid file");
        let got: Vec<_> = leases
            .iter()
            .map(|(a, l)| (a.to_string(), l.owner.as_str(), l.pid))
            .collect();
        assert_eq!(
            got,
            [
                ("10.88.90.2".into(), "abc", 17),
                ("10.88.90.9".into(), "def", 4242)
            ]
        );
    }

    #[test]
    fn empty_file_has_no_leases() {
        assert!(parse(b"", &subnet()).expect("empty is valid").is_empty());
    }

    #[test]
    fn reports_the_line_of_each_kind_of_corruption() {
        let cases: &[(&str, usize, IsExpected)] = &[
            ("# c\n10.88.90.2 abc\n", 2, |e| {
                matches!(e, LineError::FieldCount { found: 2 })
            }),
            ("10.88.90.2 a 1 extra\n", 1, |e| {
                matches!(e, LineError::FieldCount { found: 4 })
            }),
            ("10.88.90 a 1\n", 1, |e| {
                matches!(e, LineError::BadAddress { .. })
            }),
            ("\n\n10.88.91.2 a 1\n", 3, |e| {
                matches!(e, LineError::OutsideSubnet { .. })
            }),
            ("10.88.90.0 a 1\n", 1, |e| {
                matches!(e, LineError::ReservedAddress { .. })
            }),
            ("10.88.90.1 a 1\n", 1, |e| {
                matches!(e, LineError::ReservedAddress { .. })
            }),
            ("10.88.90.255 a 1\n", 1, |e| {
                matches!(e, LineError::ReservedAddress { .. })
            }),
            ("10.88.90.2 a 0\n", 1, |e| {
                matches!(e, LineError::BadPid { .. })
            }),
            ("10.88.90.2 a -5\n", 1, |e| {
                matches!(e, LineError::BadPid { .. })
            }),
            ("10.88.90.2 a +5\n", 1, |e| {
                matches!(e, LineError::BadPid { .. })
            }),
            ("10.88.90.2 a 99999999999\n", 1, |e| {
                matches!(e, LineError::BadPid { .. })
            }),
            ("10.88.90.2 a\u{7}b 5\n", 1, |e| {
                matches!(e, LineError::BadOwner(OwnerError::BadChar { .. }))
            }),
            ("10.88.90.2 a 1\n10.88.90.2 b 2\n", 2, |e| {
                matches!(e, LineError::DuplicateAddress { first_line: 1, .. })
            }),
            ("10.88.90.2 a 1\n#\n10.88.90.3 a 2\n", 3, |e| {
                matches!(e, LineError::DuplicateOwner { first_line: 1, .. })
            }),
        ];
        for (text, want_line, is_expected) in cases {
            let (line, err) = parse_err(text);
            assert_eq!(line, *want_line, "line number for {text:?} (got {err})");
            assert!(is_expected(&err), "unexpected error {err:?} for {text:?}");
        }
    }

    #[test]
    fn non_utf8_line_is_corruption_not_a_panic() {
        let (line, err) = parse(b"10.88.90.2 a 1\n10.88.90.3 \xff\xfe 2\n", &subnet())
            .expect_err("invalid UTF-8 is refused");
        assert_eq!(line, 2);
        assert_eq!(err, LineError::NotUtf8);
    }

    #[test]
    fn owner_validation() {
        assert_eq!(validate_owner(""), Err(OwnerError::Empty));
        assert_eq!(validate_owner("a b"), Err(OwnerError::BadChar { c: ' ' }));
        assert_eq!(validate_owner("a\nb"), Err(OwnerError::BadChar { c: '\n' }));
        assert_eq!(
            validate_owner(&"x".repeat(MAX_OWNER_LEN + 1)),
            Err(OwnerError::TooLong {
                len: MAX_OWNER_LEN + 1
            })
        );
        assert_eq!(validate_owner("#not-a-comment"), Ok(()));
        assert_eq!(validate_owner("pod_ns.name-1:ctr"), Ok(()));
    }

    fn owner_strategy() -> impl Strategy<Value = String> {
        "[!-~]{1,40}"
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(
            entries in proptest::collection::btree_map(2u8..=254, (owner_strategy(), 1u32..), 0..40)
        ) {
            let mut leases = LeaseMap::new();
            let mut seen_owners = std::collections::HashSet::new();
            for (host, (owner, pid)) in entries {
                if seen_owners.insert(owner.clone()) {
                    leases.insert(Ipv4Addr::new(10, 88, 90, host), Lease { owner, pid });
                }
            }
            let text = render(&subnet(), &leases);
            let parsed = parse(text.as_bytes(), &subnet());
            prop_assert_eq!(parsed, Ok(leases));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes, &subnet());
        }
    }
}
