//! A minimal IPv4 subnet type: just what the allocator needs, so the crate does
//! not pull in a general-purpose IP library for a handful of bit operations.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet in CIDR form whose address is the network address
/// (host bits zero), e.g. `10.88.90.0/24`.
///
/// Prefixes longer than /30 are refused: they leave no room for a network
/// address, a gateway, a broadcast address *and* one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix_len: u8,
}

/// The longest prefix that still leaves one address for a guest.
pub const MAX_PREFIX_LEN: u8 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetParseError {
    #[error("{input:?} is not in CIDR form (expected e.g. 10.88.90.0/24)")]
    NotCidr { input: String },
    #[error("{input:?} is not an IPv4 address")]
    BadAddress { input: String },
    #[error("prefix length {input:?} is not a number between 0 and {MAX_PREFIX_LEN}")]
    BadPrefix { input: String },
    #[error("a /{prefix_len} subnet has no room for a guest besides network, gateway and broadcast addresses (the longest usable prefix is /{MAX_PREFIX_LEN})")]
    PrefixTooLong { prefix_len: u8 },
    #[error("{addr}/{prefix_len} has host bits set; did you mean {network}/{prefix_len}?")]
    HostBitsSet {
        addr: Ipv4Addr,
        prefix_len: u8,
        network: Ipv4Addr,
    },
}

impl Ipv4Net {
    /// Builds a subnet, refusing an address with host bits set rather than
    /// silently masking it: `10.88.90.7/24` in a config file is far more likely
    /// a typo than a deliberate way to write `10.88.90.0/24`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, NetParseError> {
        if prefix_len > MAX_PREFIX_LEN {
            return Err(NetParseError::PrefixTooLong { prefix_len });
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix_len));
        if network != addr {
            return Err(NetParseError::HostBitsSet {
                addr,
                prefix_len,
                network,
            });
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix_len))
    }

    /// The bridge's own address: by convention the first host address (`.1` in a /24).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// True for the addresses that are never handed to a guest.
    pub fn is_reserved(&self, addr: Ipv4Addr) -> bool {
        addr == self.network || addr == self.gateway() || addr == self.broadcast()
    }

    /// The addresses a guest may get, lowest first.
    pub fn guest_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        // gateway+1 ..= broadcast-1; non-empty because prefix_len <= 30.
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last).map(Ipv4Addr::from)
    }

    /// How many addresses a guest may get.
    pub fn guest_capacity(&self) -> u32 {
        // 2^(32-prefix) minus network, gateway and broadcast.
        (!mask(self.prefix_len)) - 2
    }
}

/// The netmask of an IPv4 prefix; prefixes past 32 count as 32.
pub(crate) fn mask(prefix_len: u8) -> u32 {
    // checked_shl: a shift by 32 (prefix 0) would overflow.
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0)
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = parse_cidr::<Ipv4Addr>(s, |_| 32).map_err(|e| match e {
            CidrSyntax::NotCidr => NetParseError::NotCidr {
                input: s.to_owned(),
            },
            CidrSyntax::BadAddress(input) => NetParseError::BadAddress {
                input: input.to_owned(),
            },
            CidrSyntax::BadPrefix(input, _) => NetParseError::BadPrefix {
                input: input.to_owned(),
            },
        })?;
        Self::new(addr, prefix_len)
    }
}

/// Which part of a CIDR string is wrong, for callers to put in their own
/// error type.
pub(crate) enum CidrSyntax<'a> {
    NotCidr,
    BadAddress(&'a str),
    /// The prefix, and the longest one the address allows.
    BadPrefix(&'a str, u8),
}

/// Splits `ADDR/PREFIX`, parsing the address as `A` and refusing a prefix
/// longer than `max_prefix_len` says the address allows.
pub(crate) fn parse_cidr<A: FromStr>(
    s: &str,
    max_prefix_len: impl Fn(&A) -> u8,
) -> Result<(A, u8), CidrSyntax<'_>> {
    let (addr, prefix) = s.split_once('/').ok_or(CidrSyntax::NotCidr)?;
    let addr: A = addr.parse().map_err(|_| CidrSyntax::BadAddress(addr))?;
    let max = max_prefix_len(&addr);
    let prefix_len = parse_digits::<u8>(prefix)
        .filter(|p| *p <= max)
        .ok_or(CidrSyntax::BadPrefix(prefix, max))?;
    Ok((addr, prefix_len))
}

/// A number written in decimal digits only: the integer types' `from_str`
/// also takes a leading '+', which no config file means.
pub(crate) fn parse_digits<T: FromStr>(s: &str) -> Option<T> {
    s.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| s.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid subnet in test")
    }

    #[test]
    fn slash_24_has_the_usual_reserved_addresses() {
        let n = net("10.88.90.0/24");
        assert_eq!(n.network(), Ipv4Addr::new(10, 88, 90, 0));
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 88, 90, 1));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 88, 90, 255));
        assert_eq!(n.guest_capacity(), 253);
        let guests: Vec<_> = n.guest_addresses().collect();
        assert_eq!(guests.len(), 253);
        assert_eq!(guests[0], Ipv4Addr::new(10, 88, 90, 2));
        assert_eq!(guests[252], Ipv4Addr::new(10, 88, 90, 254));
        assert!(guests.iter().all(|a| !n.is_reserved(*a)));
        assert_eq!(n.to_string(), "10.88.90.0/24");
    }

    #[test]
    fn slash_30_leaves_exactly_one_guest() {
        let n = net("192.168.7.4/30");
        assert_eq!(
            n.guest_addresses().collect::<Vec<_>>(),
            [Ipv4Addr::new(192, 168, 7, 6)]
        );
        assert_eq!(n.guest_capacity(), 1);
    }

    #[test]
    fn slash_0_does_not_overflow() {
        let n = net("0.0.0.0/0");
        assert!(n.contains(Ipv4Addr::new(203, 0, 113, 9)));
        assert_eq!(n.broadcast(), Ipv4Addr::BROADCAST);
        assert_eq!(n.guest_capacity(), u32::MAX - 2);
    }

    #[test]
    fn contains_respects_the_prefix() {
        let n = net("10.88.90.0/24");
        assert!(n.contains(Ipv4Addr::new(10, 88, 90, 77)));
        assert!(!n.contains(Ipv4Addr::new(10, 88, 91, 77)));
    }

    #[test]
    fn rejects_malformed_subnets() {
        assert!(matches!(
            "10.88.90.0".parse::<Ipv4Net>(),
            Err(NetParseError::NotCidr { .. })
        ));
        assert!(matches!(
            "10.88.900.0/24".parse::<Ipv4Net>(),
            Err(NetParseError::BadAddress { .. })
        ));
        for bad in ["", "+24", "33", "-1", "24 "] {
            assert!(
                matches!(
                    format!("10.0.0.0/{bad}").parse::<Ipv4Net>(),
                    Err(NetParseError::BadPrefix { .. })
                ),
                "prefix {bad:?} should be refused"
            );
        }
        assert_eq!(
            "10.0.0.0/31".parse::<Ipv4Net>(),
            Err(NetParseError::PrefixTooLong { prefix_len: 31 })
        );
        let err = "10.88.90.7/24".parse::<Ipv4Net>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.88.90.7/24 has host bits set; did you mean 10.88.90.0/24?"
        );
    }
}
